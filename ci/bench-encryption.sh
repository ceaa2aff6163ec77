#!/usr/bin/env bash
# Encrypted against plaintext goodput (docs/PERFORMANCE.md §22): two sidecar pairs on loopback
# (127.0.0.1 ↔ 127.0.0.2, 1 engine each, kernel UDP), one plaintext and one with encryption
# (MACHNET_BENCH_ENCRYPT=1: keys and mutual allow-lists, docs/PROTOCOL.md §12), each with a
# `machnet-echo server`; the echo client runs against one pair, then the other, ROUNDS times
# (interleaved, so machine noise hits both alike). Prints every round, the median msgs/s of each
# side and their ratio.
#
#   ci/bench-encryption.sh                      # SIZE=65536 WINDOW=8 ROUNDS=8 DURATION=3
#   SIZE=1048576 WINDOW=4 ci/bench-encryption.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ROUNDS=${ROUNDS:-8} DURATION=${DURATION:-3} SIZE=${SIZE:-65536} WINDOW=${WINDOW:-8}
cargo build --release -q -p machnet-sidecar -p machnet-echo
BIN=target/release

# shellcheck source=lib/sidecars.sh
. ci/lib/sidecars.sh
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

plain=$(mktemp -d) enc=$(mktemp -d)
pool=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
start_sidecar a 127.0.0.1 $BIN/machnet "$plain" "$pool"
start_sidecar b 127.0.0.2 $BIN/machnet "$plain" "$pool"
pool=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
MACHNET_BENCH_ENCRYPT=1 start_sidecar a 127.0.0.1 $BIN/machnet "$enc" "$pool"
MACHNET_BENCH_ENCRYPT=1 start_sidecar b 127.0.0.2 $BIN/machnet "$enc" "$pool"
for d in "$plain" "$enc"; do
    $BIN/machnet-echo server --socket "$d/a.sock" --port 888 2>"$d/server.log" &
    PIDS+=($!)
    wait_for_line "$d/server.log" "listening on"
done
grep -q "encryption on" "$enc/a.log" || { echo "the encrypted pair is not encrypted" >&2; exit 1; }

results=$(mktemp)
for r in $(seq "$ROUNDS"); do
    for side in plain enc; do
        d=$plain
        [ "$side" = enc ] && d=$enc
        rate=$($BIN/machnet-echo client --socket "$d/b.sock" --remote 127.0.0.1 --port 888 \
            --size "$SIZE" --window "$WINDOW" --duration "$DURATION" --warmup 0.5 --json |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["msgs_per_sec"])')
        echo "$side $rate" | tee -a "$results"
    done
done
python3 - "$results" "$SIZE" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
size = int(sys.argv[2])
plain = [float(v) for s, v in rows if s == "plain"]
enc = [float(v) for s, v in rows if s == "enc"]
mp, me = statistics.median(plain), statistics.median(enc)
per_round = [e / p for p, e in zip(plain, enc)]
gbit = lambda m: m * size * 8 / 1e9
print(f"size {size} B: plaintext median {mp:,.0f} msgs/s ({gbit(mp):.2f} Gbit/s), "
      f"encrypted median {me:,.0f} msgs/s ({gbit(me):.2f} Gbit/s), ratio {me / mp:.2f}x; "
      f"per round {min(per_round):.2f}-{max(per_round):.2f}x")
PY
