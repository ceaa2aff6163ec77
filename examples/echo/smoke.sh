#!/usr/bin/env bash
# End-to-end smoke benchmark on one machine: two sidecars (127.0.0.1 and 127.0.0.2, private
# control sockets), the echo server attached to the first, the client to the second, then the
# kernel UDP ping-pong baseline between the same two addresses.
#
#   examples/echo/smoke.sh [--json]        # DURATION=3 WARMUP=0.5 PROFILE=release by default
#
# Without --json it ends with a table and the RTT ratio against raw UDP (docs/PERFORMANCE.md).
#
# Exits non-zero if any run fails or an echo differs from what was sent.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=${PROFILE:-release}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
JSON=${1:-}
PORT=888
UDP_PORT=19999

cargo build --quiet --profile "$PROFILE" -p machnet-sidecar -p machnet-echo
case "$PROFILE" in dev) BIN=target/debug ;; *) BIN=target/$PROFILE ;; esac

DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs in $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

# shellcheck source=../../ci/lib/sidecars.sh
. ci/lib/sidecars.sh
POOL=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
[ -n "$POOL" ] || { echo "no free UDP port range on 127.0.0.1/.2" >&2; exit 1; }
start_sidecar a 127.0.0.1 "$BIN/machnet" "$DIR" "$POOL"
start_sidecar b 127.0.0.2 "$BIN/machnet" "$DIR" "$POOL"

"$BIN/machnet-echo" server --socket "$DIR/a.sock" --port "$PORT" 2>"$DIR/server.log" &
PIDS+=($!)
sleep 0.3

run() { # label command...
    echo "== $1" >&2
    shift
    "$@"
}

RESULTS="$DIR/results.jsonl"
emit() { # JSON lines go to the results file, and to stdout with --json
    if [ -n "$JSON" ]; then tee -a "$RESULTS"; else cat >>"$RESULTS"; fi
}
# The issue's benchmark set: RTT at 64 B / window 1 (against raw UDP below), throughput at
# 64 B / window 32, 8 KiB and 1 MiB.
for cfg in "64 1 1" "64 32 1" "8192 32 1" "1048576 4 1"; do
    read -r size window flows <<<"$cfg"
    run "machnet size=$size window=$window flows=$flows" \
        "$BIN/machnet-echo" client --socket "$DIR/b.sock" --remote 127.0.0.1 --port "$PORT" \
        --size "$size" --window "$window" --flows "$flows" \
        --duration "$DURATION" --warmup "$WARMUP" --json | emit
done

"$BIN/machnet-echo" udp-baseline server --bind "127.0.0.1:$UDP_PORT" 2>/dev/null &
PIDS+=($!)
sleep 0.2
for cfg in "64 1" "64 32" "8192 32"; do
    read -r size window <<<"$cfg"
    run "udp size=$size window=$window" \
        "$BIN/machnet-echo" udp-baseline client --bind 127.0.0.2:0 \
        --remote "127.0.0.1:$UDP_PORT" --size "$size" --window "$window" \
        --duration "$DURATION" --warmup "$WARMUP" --json | emit
done

if [ -z "$JSON" ]; then
    python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'mode':8} {'size':>8} {'win':>4} {'msgs/s':>10} {'Gbit/s':>8} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9}")
for r in rows:
    t = r["rtt_us"]
    print(f"{r['mode']:8} {r['size']:>8} {r['window']:>4} {r['msgs_per_sec']:>10.0f} {r['gbit_per_sec']:>8.3f} {t['p50']:>8.1f} {t['p99']:>8.1f} {t['p999']:>9.1f}")
def pick(mode):
    return next(r for r in rows if r["mode"] == mode and r["size"] == 64 and r["window"] == 1)
m, u = pick("machnet"), pick("udp")
print(f"RTT ratio machnet/udp at 64 B, window 1: p50 {m['rtt_us']['p50'] / u['rtt_us']['p50']:.2f}x, "
      f"p99 {m['rtt_us']['p99'] / u['rtt_us']['p99']:.2f}x (goal <= 1.3x)")
PY
fi
