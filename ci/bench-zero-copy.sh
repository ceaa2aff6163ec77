#!/usr/bin/env bash
# Zero-copy send and receive against copying send and receive (issue 16): goodput and CPU per GB
# of the Machnet echo client, `--zero-copy` (loan/commit + recv_zc) against the default
# (a message buffer of the app's own + send, recv_into another), alternating in one run.
#
#   ci/bench-zero-copy.sh                          # ROUNDS=3 DURATION=2 WARMUP=0.5
#   ROUNDS=1 DURATION=1 ci/bench-zero-copy.sh      # quick check
#   TOPOLOGY=same-host ci/bench-zero-copy.sh       # client and server on one sidecar
#
# Set-up (TOPOLOGY=two-sidecars, the default): sidecars a (127.0.0.1) and b (127.0.0.2), kernel
# UDP, ENGINES engines each; `machnet-echo server` (copying) on a; the client on b. With
# TOPOLOGY=same-host the client is attached to a as well and connects to 127.0.0.1 (a same-host
# flow where the sidecar has them). Both client modes fill every message with the same
# generated contents (the app "produces" the message: into its own buffer, or straight into the
# loan) and verify every echo byte for byte (in its own buffer, or in place).
#
# Each round runs every configuration (SIZE:WINDOW) in both modes, copy first in odd rounds and
# zero-copy first in even ones. Per configuration and mode the table shows the run with the
# median goodput over the rounds (lower middle for an even ROUNDS).
#
# Definitions:
#   Gbit/s        goodput: msgs/s × size × 8 / 1e9 (payload one way, the client's report)
#   GB moved      total_messages × size × 2 / 1e9 (each message out and back, warm-up and final
#                 drain included: everything the CPU time below paid for)
#   client s/GB   the client's user+system CPU over its life (getrusage) per GB moved
#   +sidecar s/GB the client's CPU plus its sidecar's (utime+stime from /proc/PID/stat over the
#                 client run) per GB moved: what the zero-copy API can change
#   all s/GB      every process of the set-up (both sidecars, echo server, client) per GB moved
#   ratio         zero-copy ÷ copy of the medians (goodput; client+sidecar CPU per GB)
#
# Knobs (environment):
#   BIN           directory with `machnet` and `machnet-echo` (default: build target/release)
#   CONFIGS       "SIZE:WINDOW ..." (default "8192:32 65536:8 1048576:4 8388608:2", the windows
#                 of ci/bench-throughput.sh)
#   ROUNDS (3), DURATION (2), WARMUP (0.5), ENGINES (1)
#   TOPOLOGY      two-sidecars (default) or same-host
#   SIDECAR_ARGS  extra arguments for the sidecars (word-split)
#   MACHNET_ARGS  extra arguments for both clients (word-split), e.g. "--flows 2"
#   OUT           output directory (default: a new mktemp -d): results.jsonl, table.md, logs/
#
# Exits non-zero if a run failed or an echo differed (the table is printed anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CONFIGS=${CONFIGS:-"8192:32 65536:8 1048576:4 8388608:2"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
ENGINES=${ENGINES:-1}
TOPOLOGY=${TOPOLOGY:-two-sidecars}
SIDECAR_ARGS=${SIDECAR_ARGS:-}
MACHNET_ARGS=${MACHNET_ARGS:-}
case $TOPOLOGY in
two-sidecars | same-host) ;;
*) echo "TOPOLOGY must be two-sidecars or same-host, not '$TOPOLOGY'" >&2; exit 2 ;;
esac

if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release -p machnet-sidecar -p machnet-echo
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
BIN=$(cd "$BIN" && pwd)
for b in machnet machnet-echo; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b (set BIN or build first)" >&2; exit 1; }
done
"$BIN/machnet-echo" client --help | grep -q -- --zero-copy ||
    { echo "$BIN/machnet-echo client has no --zero-copy (too old a build)" >&2; exit 1; }

RECORD=$ROOT/ci/lib/bench_throughput.py
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=SCRIPTDIR/lib/sidecars.sh
. ci/lib/sidecars.sh
bench_workspace machnet-bench-zero-copy
# shellcheck disable=SC2086 # SIDECAR_ARGS is a list of words
start_sidecar a 127.0.0.1 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" $SIDECAR_ARGS
SIDECAR_A=${PIDS[-1]}
if [ "$TOPOLOGY" = two-sidecars ]; then
    # shellcheck disable=SC2086
    start_sidecar b 127.0.0.2 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" $SIDECAR_ARGS
    CLIENT_SIDECAR=${PIDS[-1]}
    CLIENT_SOCK=$DIR/b.sock
    ALL=("$SIDECAR_A" "$CLIENT_SIDECAR")
else
    CLIENT_SIDECAR=$SIDECAR_A
    CLIENT_SOCK=$DIR/a.sock
    ALL=("$SIDECAR_A")
fi
PORT=888
"$BIN/machnet-echo" server --socket "$DIR/a.sock" --port "$PORT" 2>"$DIR/server.log" &
PIDS+=($!)
ALL+=($!)
wait_for_line "$DIR/server.log" "listening on"

# utime+stime clock ticks summed over the given pids (all threads, exited ones included).
cpu_ticks() {
    local total=0 p stat fields
    for p in "$@"; do
        stat=$(<"/proc/$p/stat")
        read -ra fields <<<"${stat##*) }" # fields[0] is field 3 (state)
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# run MODE ROUND SIZE WINDOW: one client run (MODE copy or zero-copy), appended to results.jsonl.
run() {
    local mode=$1 round=$2 size=$3 window=$4 rc=0 before after sc_before sc_after limit
    local out=$DIR/client.out zc=()
    [ "$mode" = zero-copy ] && zc=(--zero-copy)
    limit=$(python3 -c "print(int($DURATION + $WARMUP + 30))")
    echo "== $mode size=$size window=$window round $round/$ROUNDS" >&2
    before=$(cpu_ticks "${ALL[@]}")
    sc_before=$(cpu_ticks "$CLIENT_SIDECAR")
    # shellcheck disable=SC2086 # MACHNET_ARGS is a list of words
    timeout "$limit" "$BIN/machnet-echo" client --socket "$CLIENT_SOCK" --remote 127.0.0.1 \
        --port "$PORT" "${zc[@]}" $MACHNET_ARGS --size "$size" --window "$window" \
        --duration "$DURATION" --warmup "$WARMUP" --json >"$out" 2>>"$DIR/clients.log" || rc=$?
    after=$(cpu_ticks "${ALL[@]}")
    sc_after=$(cpu_ticks "$CLIENT_SIDECAR")
    python3 "$RECORD" record "$RESULTS" "$mode" "$round" "$size" "$window" "$rc" "$CLK_TCK" \
        "$before" "$after" "$sc_before" "$sc_after" "$out"
}

for round in $(seq "$ROUNDS"); do
    for cfg in $CONFIGS; do
        size=${cfg%%:*}
        window=${cfg##*:}
        if [ $((round % 2)) = 1 ]; then
            run copy "$round" "$size" "$window"
            run zero-copy "$round" "$size" "$window"
        else
            run zero-copy "$round" "$size" "$window"
            run copy "$round" "$size" "$window"
        fi
    done
done

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
status=0
python3 - "$RESULTS" "$COMMIT" "$ROUNDS" "$DURATION" "$ENGINES" "$TOPOLOGY" "$BIN" \
    <<'PY' | tee "$OUT/table.md" || status=1
import json, sys
bindir = sys.argv.pop()
results, commit, rounds, duration, engines, topology = sys.argv[1:]
rows = [json.loads(l) for l in open(results) if l.strip()]
ok = [r for r in rows if "error" not in r]
configs = []
for r in rows:
    if (r["size"], r["window"]) not in configs:
        configs.append((r["size"], r["window"]))

def median(mode, size, window):
    rs = sorted((r for r in ok if r["side"] == mode and r["size"] == size
                 and r["window"] == window), key=lambda r: r["gbit_per_sec"])
    return rs[(len(rs) - 1) // 2] if rs else None

def per_gb(r, cpu):
    return cpu / (r["bytes_moved"] / 1e9) if r and r["bytes_moved"] else None

def human(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"

def f(v, spec):
    return "-" if v is None else format(v, spec)

print(f"commit {commit} (script; binaries: {bindir}); {topology}; {engines} engine(s); {rounds} round(s) x {duration} s; "
      f"medians\n")
print("| size | window | mode | Gbit/s | client CPU s/GB | client+sidecar CPU s/GB "
      "| all CPU s/GB | zero-copy ÷ copy: Gbit/s, client+sidecar CPU/GB |")
print("|---|---|---|---|---|---|---|---|")
for size, window in configs:
    m = {mode: median(mode, size, window) for mode in ("copy", "zero-copy")}
    cs = {k: per_gb(r, r["client_cpu_s"] + r["sidecars_cpu_s"]) if r else None
          for k, r in m.items()}
    for mode, r in m.items():
        ratio = ""
        if mode == "zero-copy" and m["copy"] and r and m["copy"]["gbit_per_sec"]:
            cr = (cs["zero-copy"] / cs["copy"]) if cs["copy"] else None
            ratio = f"{r['gbit_per_sec'] / m['copy']['gbit_per_sec']:.2f}×, {f(cr, '.2f')}×"
        print(f"| {human(size)} | {window} | {mode} | {f(r and r['gbit_per_sec'], '.2f')} "
              f"| {f(per_gb(r, r['client_cpu_s']) if r else None, '.3f')} "
              f"| {f(cs[mode], '.3f')} | {f(r and r['cpu_s_per_gb'], '.3f')} | {ratio} |")
bad = [r for r in rows if "error" in r]
if bad:
    print(f"\n{len(bad)} run(s) failed:")
    for r in bad:
        print(f"  {r['side']} {r['size']} B round {r['repeat']}: {r['error'][:200]}")
sys.exit(1 if bad else 0)
PY
echo "results: $OUT" >&2
exit "$status"
