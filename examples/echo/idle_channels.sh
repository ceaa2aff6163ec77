#!/usr/bin/env bash
# Echo rate (64 B, window 1) while the client's sidecar engine carries N idle channels
# (docs/PERFORMANCE.md §13). Two sidecars with one engine each (127.0.0.1: echo server,
# 127.0.0.2: client), fresh for every run; `machnet-echo idle --channels N` opens N channels on
# the client's sidecar and holds them while `machnet-echo client` measures.
#
#   examples/echo/idle_channels.sh SIDECAR_BIN [SIDECAR_BIN...]
#
# With several sidecar binaries (A/B), runs are interleaved: for each round, for each N, each
# binary. Env: ECHO (machnet-echo binary, default target/release/machnet-echo), CHANNELS
# ("0 1024 4096"), ROUNDS (3), DURATION (3), WARMUP (0.5). Prints one line per run:
#   <binary> <channels> <msgs/s> <p50 us> <p99 us>
set -euo pipefail
cd "$(dirname "$0")/../.."

[ $# -ge 1 ] || { echo "usage: $0 SIDECAR_BIN [SIDECAR_BIN...]" >&2; exit 2; }
ECHO=${ECHO:-target/release/machnet-echo}
CHANNELS=${CHANNELS:-"0 1024 4096"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
PORT=888

DIR=$(mktemp -d)
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$DIR"' EXIT

# shellcheck source=../../ci/lib/sidecars.sh
. ci/lib/sidecars.sh

one_run() { # bin channels
    local bin=$1 n=$2 pool
    rm -f "$DIR"/*.sock
    pool=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
    start_sidecar a 127.0.0.1 "$bin" "$DIR" "$pool" --engines 1
    start_sidecar b 127.0.0.2 "$bin" "$DIR" "$pool" --engines 1
    "$ECHO" server --socket "$DIR/a.sock" --port "$PORT" 2>"$DIR/server.log" &
    PIDS+=($!)
    if [ "$n" -gt 0 ]; then
        "$ECHO" idle --socket "$DIR/b.sock" --channels "$n" 2>"$DIR/idle.log" &
        PIDS+=($!)
        wait_for_line "$DIR/idle.log" "holding" >/dev/null
    fi
    sleep 0.3
    local json
    json=$("$ECHO" client --socket "$DIR/b.sock" --remote 127.0.0.1 --port "$PORT" \
        --size 64 --window 1 --duration "$DURATION" --warmup "$WARMUP" --json)
    python3 -c '
import json, sys
r = json.loads(sys.argv[3]); t = r["rtt_us"]
assert r["mismatches"] == 0 and r["messages"] > 0, r
print("%s %s %.0f %.1f %.1f" % (sys.argv[1], sys.argv[2], r["msgs_per_sec"], t["p50"], t["p99"]))
' "$bin" "$n" "$json"
    stop_all
}

for _ in $(seq "$ROUNDS"); do
    for n in $CHANNELS; do
        for bin in "$@"; do
            one_run "$bin" "$n"
        done
    done
done
