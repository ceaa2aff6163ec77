#!/usr/bin/env bash
# Echo RTT of two builds, alternated in one run: each build gets its own two sidecars (kernel
# UDP, 127.0.0.1 / 127.0.0.2), `machnet-echo server` and `machnet-echo client` (64 B, window 1),
# so the machine's drift between runs cancels out of the comparison.
#
#   ci/bench-ab.sh OLD_DIR NEW_DIR      # directories holding `machnet` and `machnet-echo`
#
# Example (the build of another commit next to this one):
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p machnet-sidecar -p machnet-echo)
#   ci/bench-ab.sh /tmp/old/target/release target/release
#
# ROUNDS (default 3) pairs, DURATION seconds per client (default 3). Prints one line per run:
# p50 and p99 in µs, round trips, and the client's CPU time per round trip. No timing checks.
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,12p "$0" >&2; exit 2; }
OLD=$(realpath "$1") NEW=$(realpath "$2")
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-3}
. ci/lib/sidecars.sh
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
run() { # label bindir
    local label=$1 bin=$2 dir pool out
    dir=$(mktemp -d "${TMPDIR:-/tmp}/machnet-bench-ab.XXXXXX")
    pool=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
    start_sidecar a 127.0.0.1 "$bin/machnet" "$dir" "$pool"
    start_sidecar b 127.0.0.2 "$bin/machnet" "$dir" "$pool"
    "$bin/machnet-echo" server --socket "$dir/a.sock" --port 888 2>"$dir/server.log" &
    PIDS+=($!)
    wait_for_line "$dir/server.log" "listening on"
    out=$("$bin/machnet-echo" client --socket "$dir/b.sock" --remote 127.0.0.1 --port 888 \
        --size 64 --window 1 --duration "$DURATION" --warmup 0.5 --json)
    python3 - "$label" "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
n = r["messages"]
cpu = f'{r["cpu_s"] * 1e6 / n:.2f}' if r.get("cpu_s") and n else "?"
print(f'{sys.argv[1]}: p50 {r["rtt_us"]["p50"]:.1f} us  p99 {r["rtt_us"]["p99"]:.1f} us  '
      f'round trips {n}  client cpu {cpu} us/round trip')
PY
    cleanup
    rm -rf "$dir"
}
for _ in $(seq "$ROUNDS"); do
    run old "$OLD"
    run new "$NEW"
done
