#!/usr/bin/env bash
# End-to-end smoke benchmark on one machine: two sidecars (127.0.0.1 and 127.0.0.2, private
# control sockets), the echo server attached to the first, the client to the second, then the
# kernel UDP ping-pong baseline between the same two addresses.
#
#   examples/echo/smoke.sh [--json]        # DURATION=3 WARMUP=0.5 PROFILE=release by default
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

start_sidecar() { # name ip
    "$BIN/machnet" --local-ip "$2" --control-socket "$DIR/$1.sock" --allow-user "$(id -u)" \
        --stats-interval 0 >"$DIR/$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        [ -S "$DIR/$1.sock" ] && return 0
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "sidecar $1 did not start:" >&2
    cat "$DIR/$1.log" >&2
    return 1
}

start_sidecar a 127.0.0.1
start_sidecar b 127.0.0.2

"$BIN/machnet-echo" server --socket "$DIR/a.sock" --port "$PORT" 2>"$DIR/server.log" &
PIDS+=($!)
sleep 0.3

run() { # label command...
    echo "== $1" >&2
    shift
    "$@"
}

for cfg in "64 1 1" "1024 32 1" "1024 8 4" "65536 4 1"; do
    read -r size window flows <<<"$cfg"
    run "machnet size=$size window=$window flows=$flows" \
        "$BIN/machnet-echo" client --socket "$DIR/b.sock" --remote 127.0.0.1 --port "$PORT" \
        --size "$size" --window "$window" --flows "$flows" \
        --duration "$DURATION" --warmup "$WARMUP" $JSON
done

"$BIN/machnet-echo" udp-baseline server --bind "127.0.0.1:$UDP_PORT" 2>/dev/null &
PIDS+=($!)
sleep 0.2
for cfg in "64 1" "1024 32" "65507 4"; do
    read -r size window <<<"$cfg"
    run "udp size=$size window=$window" \
        "$BIN/machnet-echo" udp-baseline client --bind 127.0.0.2:0 \
        --remote "127.0.0.1:$UDP_PORT" --size "$size" --window "$window" \
        --duration "$DURATION" --warmup "$WARMUP" $JSON
done
