#!/usr/bin/env bash
# The paper's key-value experiment on one machine: two sidecars on loopback (127.0.0.1 and
# 127.0.0.2, ENGINES engines each), `machnet-kv server` attached to the first and also serving
# the same store over kernel TCP, then the load generator (100 % GETs of random preloaded keys,
# every answer verified) with rising connections and outstanding requests, over Machnet and over
# TCP, alternating per combination and round so the machine's drift hits both alike.
#
#   examples/kv/bench.sh          # ENGINES=2 CONNECTIONS="1 2 4 8" DEPTH="1 8 32" ROUNDS=3
#                                 # DURATION=3 WARMUP=0.5 KEYS=10000 VALUE=64
#   ROUNDS=1 DURATION=1 examples/kv/bench.sh                # quick check
#   SERVER_THREADS=1 examples/kv/bench.sh                   # the single-threaded server
#
# Each round runs every (connections, depth) combination once per transport, Machnet first in
# odd rounds and TCP first in even ones. One `machnet-kv bench` process per run; the keys are
# preloaded once before (the TCP side serves the same store). Per combination the table shows the
# run with the median req/s over the rounds (lower middle for an even ROUNDS) and its latency
# p50/p99 (µs), the ratio Machnet ÷ TCP of those medians, and the ratio within each round.
#
# Knobs (environment):
#   BIN             directory with `machnet` and `machnet-kv` (default: build target/release)
#   ENGINES         engines per sidecar (default 2)
#   SERVER_THREADS  `machnet-kv server --threads N` (default: unset, the server's own default,
#                   one thread per engine where supported)
#   CONNECTIONS, DEPTH, ROUNDS, DURATION, WARMUP, KEYS, VALUE   as above
#   SIDECAR_ARGS    extra arguments for both sidecars (word-split)
#   SERVER_BUSY_POLL_US, CLIENT_BUSY_POLL_US
#                   `--busy-poll-us` of the server's and the load generator's Machnet channels
#                   (default 0: sleep at once)
#   TOPOLOGY        two-sidecars (default: the load generator on sidecar b, flows through the
#                   transport and UDP) or same-host (the load generator on the server's sidecar
#                   a: same-host flows, docs/CHANNEL.md §6; sidecar b is not started)
#   OUT             output directory (default: a new mktemp -d): results.jsonl, table.md, logs/
#
# Exits non-zero if any run fails or an answer is wrong (the table is printed anyway).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ENGINES=${ENGINES:-2}
CONNECTIONS=${CONNECTIONS:-"1 2 4 8"}
DEPTH=${DEPTH:-"1 8 32"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
KEYS=${KEYS:-10000}
VALUE=${VALUE:-64}
SERVER_THREADS=${SERVER_THREADS:-}
SIDECAR_ARGS=${SIDECAR_ARGS:-}
TOPOLOGY=${TOPOLOGY:-two-sidecars}
SERVER_BUSY_POLL_US=${SERVER_BUSY_POLL_US:-0}
CLIENT_BUSY_POLL_US=${CLIENT_BUSY_POLL_US:-0}
case "$TOPOLOGY" in
    two-sidecars) CLIENT_SIDECAR=b ;;
    same-host) CLIENT_SIDECAR=a ;;
    *) echo "TOPOLOGY must be two-sidecars or same-host, not $TOPOLOGY" >&2; exit 1 ;;
esac
PORT=900

if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release -p machnet-sidecar -p machnet-kv
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
BIN=$(cd "$BIN" && pwd)
for b in machnet machnet-kv; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b (set BIN or build first)" >&2; exit 1; }
done
server_args=()
client_args=()
# Passed only when set, so that binaries from before the flag still run.
[ "$SERVER_BUSY_POLL_US" = 0 ] || server_args+=(--busy-poll-us "$SERVER_BUSY_POLL_US")
[ "$CLIENT_BUSY_POLL_US" = 0 ] || client_args+=(--busy-poll-us "$CLIENT_BUSY_POLL_US")
if [ -n "$SERVER_THREADS" ]; then
    "$BIN/machnet-kv" server --help | grep -q -- --threads || {
        echo "SERVER_THREADS is set but $BIN/machnet-kv server has no --threads" >&2
        exit 1
    }
    server_args+=(--threads "$SERVER_THREADS")
fi

# shellcheck source=SCRIPTDIR/../../ci/lib/sidecars.sh
. ci/lib/sidecars.sh
bench_workspace machnet-kv-bench
# shellcheck disable=SC2086 # SIDECAR_ARGS is a list of words
start_sidecar a 127.0.0.1 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" $SIDECAR_ARGS
if [ "$CLIENT_SIDECAR" = b ]; then
    # shellcheck disable=SC2086
    start_sidecar b 127.0.0.2 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" $SIDECAR_ARGS
fi
TCP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/machnet-kv" server --socket "$DIR/a.sock" --port "$PORT" --db "$DIR/kv.redb" \
    --tcp "127.0.0.1:$TCP_PORT" "${server_args[@]}" 2>"$DIR/server.log" &
PIDS+=($!)
wait_for_line "$DIR/server.log" "listening on"

failed=0
# run TRANSPORT ROUND CONNECTIONS DEPTH: one `machnet-kv bench`, appended to results.jsonl.
run() {
    local transport=$1 round=$2 conns=$3 depth=$4 rc=0 target limit
    if [ "$transport" = machnet ]; then
        target=(--socket "$DIR/$CLIENT_SIDECAR.sock" --remote 127.0.0.1 --port "$PORT"
            "${client_args[@]}")
    else
        target=(--tcp "127.0.0.1:$TCP_PORT")
    fi
    limit=$(python3 -c "print(int($DURATION + $WARMUP + 60))")
    echo "== $transport connections=$conns depth=$depth round $round/$ROUNDS" >&2
    timeout "$limit" "$BIN/machnet-kv" bench "${target[@]}" --no-preload --keys "$KEYS" \
        --value-size "$VALUE" --duration "$DURATION" --warmup "$WARMUP" --json \
        --connections "$conns" --depth "$depth" >"$DIR/run.out" 2>>"$DIR/bench.log" || rc=$?
    python3 - "$RESULTS" "$transport" "$round" "$conns" "$depth" "$rc" "$DIR/run.out" <<'PY'
import json, sys
results, transport, rnd, conns, depth, rc, out = sys.argv[1:]
text = open(out).read().strip()
row = {"transport": transport, "round": int(rnd), "connections": int(conns),
       "depth": int(depth), "rc": int(rc)}
try:
    row.update(json.loads(text.splitlines()[-1]))
except (IndexError, json.JSONDecodeError):
    pass
if int(rc) != 0 or "requests_per_sec" not in row:
    row["error"] = f"exit {rc}: {text[-300:]}"
open(results, "a").write(json.dumps(row, sort_keys=True) + "\n")
PY
    if [ "$rc" != 0 ]; then
        failed=$((failed + 1))
        echo "   failed (exit $rc): see $OUT/logs/bench.log" >&2
    fi
}

# Load the keys once, over Machnet (the TCP side serves the same store).
"$BIN/machnet-kv" bench --socket "$DIR/$CLIENT_SIDECAR.sock" --remote 127.0.0.1 --port "$PORT" \
    --keys "$KEYS" --value-size "$VALUE" --duration 0 --warmup 0 --json >/dev/null \
    2>>"$DIR/bench.log" || { echo "preloading the keys failed: see $OUT/logs/bench.log" >&2; exit 1; }

for round in $(seq "$ROUNDS"); do
    for conns in $CONNECTIONS; do
        for depth in $DEPTH; do
            if [ $((round % 2)) = 1 ]; then
                run machnet "$round" "$conns" "$depth"
                run tcp "$round" "$conns" "$depth"
            else
                run tcp "$round" "$conns" "$depth"
                run machnet "$round" "$conns" "$depth"
            fi
        done
    done
done

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$RESULTS" "$COMMIT" "$ENGINES" "${SERVER_THREADS:-default}" "$ROUNDS" "$DURATION" \
    "$VALUE" "$BIN" "$TOPOLOGY" <<'PY' | tee "$OUT/table.md"
import json, sys
topology = sys.argv.pop()
bindir = sys.argv.pop()
results, commit, engines, threads, rounds, duration, value = sys.argv[1:]
rows = [json.loads(l) for l in open(results) if l.strip()]
ok = [r for r in rows if "error" not in r]
combos = []
for r in rows:
    k = (r["connections"], r["depth"])
    if k not in combos:
        combos.append(k)

def median(t, c, d):
    rs = sorted((r for r in ok if r["transport"] == t and r["connections"] == c
                 and r["depth"] == d), key=lambda r: r["requests_per_sec"])
    return rs[(len(rs) - 1) // 2] if rs else None

print(f"commit {commit} (script; binaries: {bindir}); {topology}; {engines} engines per sidecar; server threads {threads}; "
      f"{rounds} round(s) x {duration} s; {value} B values, GETs; medians\n")
print("| connections × depth | Machnet req/s | TCP req/s | ratio | per round "
      "| Machnet p50 / p99 µs | TCP p50 / p99 µs |")
print("|---|---|---|---|---|---|---|")
for c, d in combos:
    m, t = median("machnet", c, d), median("tcp", c, d)
    per = []
    for a in (r for r in ok if r["transport"] == "machnet" and r["connections"] == c
              and r["depth"] == d):
        b = [r for r in ok if r["transport"] == "tcp" and r["connections"] == c
             and r["depth"] == d and r["round"] == a["round"]]
        if b and b[0]["requests_per_sec"]:
            per.append(a["requests_per_sec"] / b[0]["requests_per_sec"])
    lat = lambda r: (f"{r['latency_us']['p50']:.1f} / {r['latency_us']['p99']:.1f}"
                     if r else "-")
    rps = lambda r: f"{r['requests_per_sec']:,.0f}" if r else "-"
    ratio = (f"{m['requests_per_sec'] / t['requests_per_sec']:.2f}×"
             if m and t and t["requests_per_sec"] else "-")
    print(f"| {c} × {d} | {rps(m)} | {rps(t)} | {ratio} | "
          + ", ".join(f"{x:.2f}" for x in per) + f" | {lat(m)} | {lat(t)} |")
bad = [r for r in rows if "error" in r]
if bad:
    print(f"\n{len(bad)} run(s) failed:")
    for r in bad:
        print(f"  {r['transport']} {r['connections']} × {r['depth']} round {r['round']}: "
              f"{r['error'][:200]}")
PY
echo "results: $OUT" >&2
[ "$failed" = 0 ]
