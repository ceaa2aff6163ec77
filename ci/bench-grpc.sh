#!/usr/bin/env bash
# gRPC unary RTT over Machnet vs TCP loopback (issue 18, goal: Machnet p50 ≤ 0.8 × TCP p50).
#
#   ci/bench-grpc.sh                         # ROUNDS=3 REQUESTS=5000 PAYLOAD=64
#   ROUNDS=1 REQUESTS=1000 ci/bench-grpc.sh  # quick check
#   BIN=/path/to/target/release ci/bench-grpc.sh
#
# Set-up: sidecar a (127.0.0.1, `--same-host-flows true`) serves the tonic echo service
# (examples/grpc) on Machnet; sidecar b (127.0.0.2) carries the remote client. One
# `machnet-grpc-bench` process holds the Machnet server, a TCP server (127.0.0.1, TCP_NODELAY)
# and three clients, and runs each round as: machnet-remote (client on b: transport + loopback
# UDP), machnet-same-host (client on a: a same-host flow), tcp — sequential unary calls,
# window 1, on a 2-worker tokio runtime. Nobody busy-polls but the sidecars' engines.
# Each round then runs a reference: plain Machnet messages (`machnet-echo`, 64 B, window 1,
# client on b, server on a) for ECHO_SECONDS, to show what the stream adapter, HTTP/2 and gRPC
# add to a Machnet round trip.
# Figures: per path the median over rounds of each round's p50/p99, and p50 ÷ TCP p50 (also
# per round). Results: OUT/results.jsonl (one line per round and path), OUT/table.md.
#
# Knobs (environment): BIN (directory with `machnet` and `machnet-grpc-bench`; default: build
# target/release), ROUNDS (3), REQUESTS (5000), WARMUP (500), PAYLOAD (64), ENGINES (1),
# ECHO_SECONDS (2; 0 skips the reference),
# SIDECAR_ARGS (extra arguments for both sidecars, word-split), OUT (output directory).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-5000}
WARMUP=${WARMUP:-500}
PAYLOAD=${PAYLOAD:-64}
ENGINES=${ENGINES:-1}
SIDECAR_ARGS=${SIDECAR_ARGS:-}
ECHO_SECONDS=${ECHO_SECONDS:-2}

if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release -p machnet-sidecar -p machnet-grpc-example -p machnet-echo
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
BIN=$(cd "$BIN" && pwd)
for b in machnet machnet-grpc-bench machnet-echo; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b (set BIN or build first)" >&2; exit 1; }
done

# shellcheck source=SCRIPTDIR/lib/sidecars.sh
. ci/lib/sidecars.sh
bench_workspace machnet-bench-grpc
# shellcheck disable=SC2086 # SIDECAR_ARGS is a list of words
start_sidecar a 127.0.0.1 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" \
    --same-host-flows true $SIDECAR_ARGS
# shellcheck disable=SC2086
start_sidecar b 127.0.0.2 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" $SIDECAR_ARGS

"$BIN/machnet-echo" server --socket "$DIR/a.sock" --port 888 2>"$DIR/echo-server.log" &
PIDS+=($!)
wait_for_line "$DIR/echo-server.log" "listening on"

for round in $(seq 0 $((ROUNDS - 1))); do
    timeout 1800 "$BIN/machnet-grpc-bench" --server-socket "$DIR/a.sock" \
        --client-socket "$DIR/b.sock" --port $((5051 + round)) --rounds 1 \
        --requests "$REQUESTS" --warmup "$WARMUP" --payload "$PAYLOAD" \
        2>>"$DIR/grpc-bench.log" | sed "s/\"round\":0/\"round\":$round/" >>"$RESULTS"
    if [ "$ECHO_SECONDS" != 0 ]; then
        timeout 120 "$BIN/machnet-echo" client --socket "$DIR/b.sock" --remote 127.0.0.1 \
            --port 888 --size 64 --window 1 --duration "$ECHO_SECONDS" --warmup 0.5 --json |
            python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"round": '"$round"', "path": "machnet-echo-64B", "p50_us": r["rtt_us"]["p50"], "p99_us": r["rtt_us"]["p99"]}))' \
                >>"$RESULTS"
    fi
done

python3 - "$RESULTS" >"$OUT/table.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
paths = []
for r in rows:
    if r["path"] not in paths:
        paths.append(r["path"])
def med(v):
    v = sorted(v)
    return v[(len(v) - 1) // 2]
by = {p: [r for r in rows if r["path"] == p] for p in paths}
tcp = {r["round"]: r["p50_us"] for r in by.get("tcp", [])}
cpu_tcp = {r["round"]: r.get("app_cpu_us_per_call") for r in by.get("tcp", [])}
print("gRPC unary RTT (µs): median over rounds of each round's p50 / p99; app CPU µs per call")
print("(the bench process: client + server; sidecars excluded) and its ratio to TCP")
print("| path | p50 | p99 | p50 ÷ TCP | per-round p50 ÷ TCP | app CPU µs/call | CPU ÷ TCP |")
print("|---|---|---|---|---|---|---|")
for p in paths:
    rs = by[p]
    ratios = [r["p50_us"] / tcp[r["round"]] for r in rs if r["round"] in tcp and p != "tcp"]
    cpus = [r["app_cpu_us_per_call"] for r in rs if "app_cpu_us_per_call" in r]
    cpu_ratios = [r["app_cpu_us_per_call"] / cpu_tcp[r["round"]] for r in rs
                  if "app_cpu_us_per_call" in r and cpu_tcp.get(r["round"]) and p != "tcp"]
    print("| %s | %s | %s | %s | %s | %s | %s |" % (
        p, med([r["p50_us"] for r in rs]), med([r["p99_us"] for r in rs]),
        "%.2f" % med(ratios) if ratios else "-",
        " ".join("%.2f" % x for x in ratios) if ratios else "-",
        "%.1f" % med(cpus) if cpus else "-",
        "%.2f" % med(cpu_ratios) if cpu_ratios else "-"))
PY
cat "$OUT/table.md"
