#!/usr/bin/env bash
# Send, then exit (docs/CHANNEL.md §5, docs/PERFORMANCE.md §15): RUNS processes each connect,
# send one tagged message and return from main at once — the original Machnet hello_world
# client, original C API only (machnet-ffi/tests/c/send_then_exit.c) — against
# `machnet-echo sink` on a second sidecar, which counts what arrived exactly once and intact.
#
#   examples/echo/send_then_exit.sh [LINGER...]
#
# One line of JSON per LINGER value (the sidecars' --close-linger, default "30"; "0" aborts a
# detached channel's flows at once, i.e. the behaviour before close-on-exit). Env: RUNS (10000),
# SIZE (bytes per message, 1000), PARALLEL (processes at once, 8), SIDECAR, ECHO (binaries,
# default target/release/...), CC. Exits non-zero if a run with a non-zero linger lost a message.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-10000}
SIZE=${SIZE:-1000}
PARALLEL=${PARALLEL:-8}
SIDECAR=${SIDECAR:-target/release/machnet}
ECHO=${ECHO:-target/release/machnet-echo}
CC=${CC:-cc}
PORT=777
LINGERS=("$@")
[ ${#LINGERS[@]} -gt 0 ] || LINGERS=(30)

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

REL=$(dirname "$SIDECAR")
$CC -std=c11 -Wall -Wextra -Werror -O2 -I machnet-ffi/include \
    machnet-ffi/tests/c/send_then_exit.c -L "$REL" -Wl,-rpath,"$(cd "$REL" && pwd)" -lmachnet \
    -o "$DIR/send_then_exit"

status=0
for linger in "${LINGERS[@]}"; do
    rm -f "$DIR"/*.sock
    pool=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
    start_sidecar a 127.0.0.1 "$SIDECAR" "$DIR" "$pool" --close-linger "$linger"
    start_sidecar b 127.0.0.2 "$SIDECAR" "$DIR" "$pool" --close-linger "$linger"
    "$ECHO" sink --socket "$DIR/b.sock" --port "$PORT" --expect "$RUNS" --idle-exit 10 \
        >"$DIR/sink.json" 2>"$DIR/sink.log" &
    sink=$!
    wait_for_line "$DIR/sink.log" "listening" >/dev/null
    start=$(date +%s.%N)
    # shellcheck disable=SC2016 # $1..$3 are expanded by the inner sh
    failed=$(seq 1 "$RUNS" | MACHNET_SOCKET=$DIR/a.sock xargs -P "$PARALLEL" -I{} \
        sh -c '"$1" 127.0.0.1 127.0.0.2 "$2" {} "$3" >/dev/null 2>&1 || echo x' _ \
        "$DIR/send_then_exit" "$PORT" "$SIZE" | wc -l)
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    wait "$sink" || true
    python3 - "$linger" "$RUNS" "$SIZE" "$failed" "$secs" "$DIR/sink.json" <<'PY' || status=1
import json, sys
linger, runs, size, failed, secs, path = sys.argv[1:]
r = json.load(open(path))
r.update(close_linger_s=float(linger), runs=int(runs), size=int(size),
         senders_failed=int(failed), seconds=round(float(secs), 1))
print(json.dumps(r))
lost = r["missing"] + r["corrupt"] + r["duplicates"]
sys.exit(1 if float(linger) > 0 and (lost > 0 or r["senders_failed"] > 0) else 0)
PY
    stop_all
done
exit $status
