#!/usr/bin/env bash
# Same-host echo (issue 16): two apps on one sidecar against a Unix-domain-socket ping-pong and
# kernel TCP loopback, in one run, rounds interleaved.
#
#   ci/bench-same-host.sh                          # ROUNDS=3 DURATION=2 WARMUP=0.5
#   ROUNDS=1 DURATION=1 ci/bench-same-host.sh      # quick check
#   BIN=/path/to/target/release ci/bench-same-host.sh
#
# Set-up: sidecar L (127.0.0.1, `--same-host-flows true`) with `machnet-echo server` attached:
# a client attached to L connecting to 127.0.0.1 gets a same-host flow (shared memory only).
# Sidecar T (127.0.0.2, `--same-host-flows false`) with its own echo server: the same
# client/server pair on one sidecar, but the flow goes through the transport and loopback UDP
# (the "through the transport" row). If the sidecar has no `--same-host-flows` flag (a build
# before same-host flows), only T runs, without the flag. `machnet-echo uds-baseline server`
# (SOCK_STREAM, blocking) and `machnet-echo tcp-baseline server` (127.0.0.1, TCP_NODELAY).
#
# Each round runs, in this order: RTT (64 B, window 1) for local, transport, uds, tcp; then
# goodput (1 MiB, window 4, as ci/bench-throughput.sh) for local, transport, tcp (the blocking
# UDS client cannot keep 1 MiB in flight; see examples/echo/src/uds.rs). Clients sleep while
# waiting (blocking receive / poll / blocking read); nobody busy-polls but the sidecars'
# engines for their default 50 µs after work.
#
# Figures: the run with the median msgs/s of each (test, side) over the rounds (lower middle
# for an even ROUNDS). RTT p50/p99 from the client's histogram; Gbit/s = msgs/s × size × 8 / 1e9
# (payload one way); CPU s/GB = CPU seconds of the side's processes (utime+stime from
# /proc/PID/stat over the client run: sidecar + echo server for Machnet, the echo server for
# UDS/TCP) plus the client's own, per GB moved (total_messages × size × 2).
# Ratios: local p50 ÷ UDS p50 (goal ≤ 0.5), local Gbit/s ÷ TCP Gbit/s (goal ≥ 2); the same for
# the transport row; "per round" lists the ratio within each round (same-round pairs).
# On a small VM the scheduler's placement dominates blocking RTTs (a UDS ping-pong whose two
# ends share a CPU: ~4 µs p50; on two CPUs: 30-40 µs): read the per-round ratios, and use
# ROUNDS of 5 or more before quoting a median.
#
# Knobs (environment):
#   BIN           directory with `machnet` and `machnet-echo` (default: build target/release)
#   ROUNDS        rounds (default 3); DURATION measured seconds per run (2); WARMUP (0.5)
#   ENGINES       engines per sidecar (default 1)
#   RTT_SIZE      bytes of the RTT test (default 64)
#   BULK_SIZE     bytes of the goodput test (default 1048576); BULK_WINDOW (default 4)
#   SIDECAR_ARGS  extra arguments for both sidecars (word-split)
#   MACHNET_ARGS  extra arguments for the Machnet clients (word-split), e.g. "--busy-poll-us 50"
#   SERVER_ARGS   extra arguments for the Machnet echo servers (word-split), e.g.
#                 "--busy-poll-us 50" (with the same in MACHNET_ARGS: both apps spin before sleeping)
#   TCP_ARGS      TCP client arguments (default "--per-message-io", as ci/bench-throughput.sh)
#   OUT           output directory (default: a new mktemp -d); results.jsonl, table.md, logs/
#
# Exits non-zero if a run failed or an echo differed (the table is printed anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
ENGINES=${ENGINES:-1}
RTT_SIZE=${RTT_SIZE:-64}
BULK_SIZE=${BULK_SIZE:-1048576}
BULK_WINDOW=${BULK_WINDOW:-4}
SIDECAR_ARGS=${SIDECAR_ARGS:-}
MACHNET_ARGS=${MACHNET_ARGS:-}
SERVER_ARGS=${SERVER_ARGS:-}
TCP_ARGS=${TCP_ARGS---per-message-io}

if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release -p machnet-sidecar -p machnet-echo
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
BIN=$(cd "$BIN" && pwd)
for b in machnet machnet-echo; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b (set BIN or build first)" >&2; exit 1; }
done
"$BIN/machnet-echo" uds-baseline --help >/dev/null 2>&1 ||
    { echo "$BIN/machnet-echo has no uds-baseline mode (too old a build)" >&2; exit 1; }
HAVE_LOCAL=0
"$BIN/machnet" --help 2>/dev/null | grep -q -- --same-host-flows && HAVE_LOCAL=1
[ "$HAVE_LOCAL" = 1 ] ||
    echo "note: $BIN/machnet has no --same-host-flows: only the transport row runs" >&2

RECORD=$ROOT/ci/lib/bench_throughput.py
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=SCRIPTDIR/lib/sidecars.sh
. ci/lib/sidecars.sh
bench_workspace machnet-bench-same-host
PORT=888
declare -A SIDECAR SERVER
declare -A IP=([local]=127.0.0.1 [transport]=127.0.0.2)
start_echo() { # name ip [sidecar args...]
    local name=$1 ip=$2
    shift 2
    # shellcheck disable=SC2086 # SIDECAR_ARGS is a list of words
    start_sidecar "$name" "$ip" "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" \
        $SIDECAR_ARGS "$@"
    SIDECAR[$name]=${PIDS[-1]}
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of words
    "$BIN/machnet-echo" server --socket "$DIR/$name.sock" --port "$PORT" $SERVER_ARGS \
        2>"$DIR/$name-server.log" &
    PIDS+=($!)
    SERVER[$name]=$!
    wait_for_line "$DIR/$name-server.log" "listening on"
}
SIDES_RTT="transport uds tcp"
SIDES_BULK="transport tcp"
if [ "$HAVE_LOCAL" = 1 ]; then
    start_echo local "${IP[local]}" --same-host-flows true
    start_echo transport "${IP[transport]}" --same-host-flows false
    SIDES_RTT="local $SIDES_RTT"
    SIDES_BULK="local $SIDES_BULK"
else
    start_echo transport "${IP[transport]}"
fi

"$BIN/machnet-echo" uds-baseline server --path "$DIR/uds.sock" 2>"$DIR/uds-server.log" &
PIDS+=($!)
UDS_SERVER=$!
wait_for_line "$DIR/uds-server.log" "UDS echo on"
TCP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/machnet-echo" tcp-baseline server --bind "127.0.0.1:$TCP_PORT" 2>"$DIR/tcp-server.log" &
PIDS+=($!)
TCP_SERVER=$!
wait_for_line "$DIR/tcp-server.log" "TCP echo on"

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

# run SIDE ROUND SIZE WINDOW: one client run, appended to results.jsonl.
run() {
    local side=$1 round=$2 size=$3 window=$4 rc=0 before after sc_before=0 sc_after=0
    local procs=() sidecars=() cmd
    local out=$DIR/client.out limit
    limit=$(python3 -c "print(int($DURATION + $WARMUP + 30))")
    case $side in
    local | transport)
        procs=("${SIDECAR[$side]}" "${SERVER[$side]}")
        sidecars=("${SIDECAR[$side]}")
        # shellcheck disable=SC2206 # MACHNET_ARGS is a list of words
        cmd=("$BIN/machnet-echo" client --socket "$DIR/$side.sock" --remote "${IP[$side]}"
            --port "$PORT" $MACHNET_ARGS)
        ;;
    uds)
        procs=("$UDS_SERVER")
        cmd=("$BIN/machnet-echo" uds-baseline client --path "$DIR/uds.sock")
        ;;
    tcp)
        procs=("$TCP_SERVER")
        # shellcheck disable=SC2206 # TCP_ARGS is a list of words
        cmd=("$BIN/machnet-echo" tcp-baseline client --remote "127.0.0.1:$TCP_PORT" $TCP_ARGS)
        ;;
    esac
    echo "== $side size=$size window=$window round $round/$ROUNDS" >&2
    before=$(cpu_ticks "${procs[@]}")
    [ ${#sidecars[@]} -eq 0 ] || sc_before=$(cpu_ticks "${sidecars[@]}")
    timeout "$limit" "${cmd[@]}" --size "$size" --window "$window" --duration "$DURATION" \
        --warmup "$WARMUP" --json >"$out" 2>>"$DIR/clients.log" || rc=$?
    after=$(cpu_ticks "${procs[@]}")
    [ ${#sidecars[@]} -eq 0 ] || sc_after=$(cpu_ticks "${sidecars[@]}")
    python3 "$RECORD" record "$RESULTS" "$side" "$round" "$size" "$window" "$rc" "$CLK_TCK" \
        "$before" "$after" "$sc_before" "$sc_after" "$out"
}

for round in $(seq "$ROUNDS"); do
    for side in $SIDES_RTT; do run "$side" "$round" "$RTT_SIZE" 1; done
    for side in $SIDES_BULK; do run "$side" "$round" "$BULK_SIZE" "$BULK_WINDOW"; done
done

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
status=0
python3 - "$RESULTS" "$RTT_SIZE" "$BULK_SIZE" "$COMMIT" "$ROUNDS" "$DURATION" "$ENGINES" "$BIN" \
    <<'PY' | tee "$OUT/table.md" || status=1
import json, sys
bindir = sys.argv.pop()
results, rtt_size, bulk_size, commit, rounds, duration, engines = sys.argv[1:]
rows = [json.loads(l) for l in open(results) if l.strip()]
rtt_size, bulk_size = int(rtt_size), int(bulk_size)
failed = [r for r in rows if "error" in r]

def runs(side, size):
    return [r for r in rows if r["side"] == side and r["size"] == size and "error" not in r]

def median(side, size):
    ok = sorted(runs(side, size), key=lambda r: r["msgs_per_sec"])
    return ok[(len(ok) - 1) // 2] if ok else None

def per_round(side, base, size, key):
    out = []
    for a in runs(side, size):
        b = [r for r in runs(base, size) if r["repeat"] == a["repeat"]]
        if b and key(b[0]):
            out.append(key(a) / key(b[0]))
    return out

def f(v, spec):
    return "-" if v is None else format(v, spec)

label = {"local": "Machnet same-host flow", "transport": "Machnet via transport (UDP)",
         "uds": "Unix socket (blocking)", "tcp": "TCP loopback"}
print(f"commit {commit} (script; binaries: {bindir}), {rounds} round(s) x {duration} s, {engines} engine(s); medians\n")
print(f"| path | {rtt_size} B RTT p50 / p99 µs | p50 ÷ UDS p50 (per round) "
      f"| {bulk_size >> 20} MiB Gbit/s | ÷ TCP Gbit/s (per round) | CPU s/GB |")
print("|---|---|---|---|---|---|")
uds = median("uds", rtt_size)
tcp = median("tcp", bulk_size)
for side in ("local", "transport", "uds", "tcp"):
    r, b = median(side, rtt_size), median(side, bulk_size)
    if r is None and b is None:
        continue
    rtt = f"{r['rtt_us']['p50']:.1f} / {r['rtt_us']['p99']:.1f}" if r else "-"
    rr = "-"
    if r and uds and side != "uds":
        pr = per_round(side, "uds", rtt_size, lambda x: x["rtt_us"]["p50"])
        rr = (f"{r['rtt_us']['p50'] / uds['rtt_us']['p50']:.2f}× ("
              + ", ".join(f"{x:.2f}" for x in pr) + ")")
    gb = f(b["gbit_per_sec"], ".2f") if b else "-"
    gr = "-"
    if b and tcp and side != "tcp":
        pr = per_round(side, "tcp", bulk_size, lambda x: x["gbit_per_sec"])
        gr = (f"{b['gbit_per_sec'] / tcp['gbit_per_sec']:.2f}× ("
              + ", ".join(f"{x:.2f}" for x in pr) + ")")
    cpu = f(b.get("cpu_s_per_gb"), ".2f") if b else "-"
    print(f"| {label[side]} | {rtt} | {rr} | {gb} | {gr} | {cpu} |")
if failed:
    print(f"\n{len(failed)} run(s) failed: see {results} (\"error\")")
    for r in failed:
        print(f"  {r['side']} size {r['size']} round {r['repeat']}: {r['error'][:200]}")
sys.exit(1 if failed else 0)
PY
echo "results: $OUT" >&2
exit "$status"
