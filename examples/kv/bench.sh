#!/usr/bin/env bash
# The paper's key-value experiment on one machine: two sidecars on loopback (127.0.0.1 and
# 127.0.0.2), `machnet-kv server` attached to the first and also serving the same store over
# kernel TCP, then the load generator (100 % GETs of random preloaded keys, every answer
# verified) with rising connections and outstanding requests, over Machnet and over TCP.
#
#   examples/kv/bench.sh          # CONNECTIONS="1 2 4" DEPTH="1 8 32" DURATION=3 KEYS=10000 VALUE=64
#
# Prints one table (requests/s and latency p50/p99 per transport and combination) and the
# Machnet/TCP ratios. Exits non-zero if any run fails or an answer is wrong.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNECTIONS=${CONNECTIONS:-"1 2 4"}
DEPTH=${DEPTH:-"1 8 32"}
DURATION=${DURATION:-3}
KEYS=${KEYS:-10000}
VALUE=${VALUE:-64}
PORT=900

cargo build --quiet --release -p machnet-sidecar -p machnet-kv
BIN=${CARGO_TARGET_DIR:-target}/release

DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

# shellcheck source=../../ci/lib/sidecars.sh
. ci/lib/sidecars.sh
POOL=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
start_sidecar a 127.0.0.1 "$BIN/machnet" "$DIR" "$POOL"
start_sidecar b 127.0.0.2 "$BIN/machnet" "$DIR" "$POOL"
TCP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/machnet-kv" server --socket "$DIR/a.sock" --port "$PORT" --db "$DIR/kv.redb" \
    --tcp "127.0.0.1:$TCP_PORT" 2>"$DIR/server.log" &
PIDS+=($!)
wait_for_line "$DIR/server.log" "listening on"

common=(--keys "$KEYS" --value-size "$VALUE" --duration "$DURATION" --json
    --connections "$(echo "$CONNECTIONS" | tr ' ' ,)" --depth "$(echo "$DEPTH" | tr ' ' ,)")
"$BIN/machnet-kv" bench --socket "$DIR/b.sock" --remote 127.0.0.1 --port "$PORT" "${common[@]}" \
    >"$DIR/machnet.jsonl"
"$BIN/machnet-kv" bench --tcp "127.0.0.1:$TCP_PORT" --no-preload "${common[@]}" >"$DIR/tcp.jsonl"

echo "conns depth | machnet req/s  p50 us  p99 us | tcp req/s  p50 us  p99 us | req/s ratio  p50 ratio"
jq -rn --slurpfile m "$DIR/machnet.jsonl" --slurpfile t "$DIR/tcp.jsonl" '
    range(0; $m | length) as $i | $m[$i] as $a | $t[$i] as $b |
    "\($a.connections) \($a.depth) | \($a.requests_per_sec | floor) \($a.latency_us.p50) \($a.latency_us.p99)"
    + " | \($b.requests_per_sec | floor) \($b.latency_us.p50) \($b.latency_us.p99)"
    + " | \(($a.requests_per_sec / $b.requests_per_sec) * 100 | round / 100)"
    + " \(($a.latency_us.p50 / $b.latency_us.p50) * 100 | round / 100)"'
