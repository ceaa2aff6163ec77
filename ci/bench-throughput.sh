#!/usr/bin/env bash
# Throughput of Machnet against kernel TCP on one machine, in one run, with the CPU it costs.
#
#   ci/bench-throughput.sh                       # REPEAT=3 DURATION=2 WARMUP=0.5
#   REPEAT=1 DURATION=1 ci/bench-throughput.sh   # quick smoke check
#   BIN=/path/to/old/target/release OUT=/tmp/old ci/bench-throughput.sh
#
# Set-up: two `machnet` sidecars (127.0.0.1 = a and 127.0.0.2 = b, ENGINES engines each,
# kernel-UDP datapath, private control sockets and a free UDP port pool, as in
# examples/echo/smoke.sh), `machnet-echo server` attached to a, and `machnet-echo tcp-baseline
# server` listening on 127.0.0.1. For each configuration (message size, window) the Machnet
# client (`machnet-echo client`, attached to b, one flow) and the TCP client (`machnet-echo
# tcp-baseline client --bind 127.0.0.2:0`, one connection to 127.0.0.1, TCP_NODELAY) run
# interleaved: machnet, tcp, machnet, tcp, ... REPEAT times each. Both clients sleep while
# waiting (Machnet: blocking receive on the channel's eventfd; TCP: poll(2)); nobody busy-polls
# except the sidecars' engines for their default 50 µs after work. Each client keeps WINDOW
# messages outstanding, verifies every echo and reports msgs/s and RTT over DURATION seconds
# after WARMUP seconds.
#
# CPU: for every client run, the CPU seconds of every process of that side: utime+stime of the
# long-lived processes from /proc/PID/stat (fields 14 and 15, in clock ticks, `getconf CLK_TCK`,
# usually 10 ms) sampled just before the client starts and just after it exits — for Machnet
# both sidecars and the echo server, for TCP the echo server (the kernel's TCP work is charged
# to the processes whose system calls do it) — plus the client's own user+system CPU over its
# whole life (`cpu_s` in its report, from getrusage). Sidecar a is idle-ish during TCP runs and
# is not charged to TCP.
#
# Definitions:
#   msgs/s          round trips completed per second in the measured interval (client report)
#   Gbit/s          goodput: msgs/s x size x 8 / 1e9, payload in one direction (as
#                   machnet-echo and docs/PERFORMANCE.md report it)
#   bytes moved     total_messages x size x 2, total_messages = every echo completed over the
#                   client's whole run (warm-up and final drain included): each message crosses
#                   twice, out and back
#   CPU s/GB        CPU seconds of the side (above) / (bytes moved / 1e9)
#   CPU s/M msgs    CPU seconds of the side / (total_messages / 1e6)
#   ratio           Machnet / TCP (msgs/s; CPU per GB, which equals the ratio per message)
#   median          for each side and configuration the run with the median msgs/s (lower
#                   middle for an even REPEAT); all figures of a row come from that one run
#
# Knobs (environment):
#   BIN           directory holding `machnet` and `machnet-echo` (default: target/release,
#                 after `cargo build --release -p machnet-sidecar -p machnet-echo`; with BIN
#                 set nothing is built, e.g. to benchmark an older build)
#   CONFIGS       "SIZE:WINDOW ..." (default "64:32 1024:32 8192:32 65536:8 1048576:4
#                 8388608:2 64:1"; the last one is the RTT run)
#   SIZES         "SIZE ..." keeps only the default configurations of these sizes; a size not
#                 in the default set runs with window WINDOW (default 8). Ignored with CONFIGS
#   REPEAT        runs per side and configuration (default 3)
#   DURATION      measured seconds per run (default 2)
#   WARMUP        seconds before measuring (default 0.5)
#   ENGINES       engines per sidecar (default 1)
#   SIDECAR_ARGS  extra arguments for both sidecars (word-split), e.g. "--idle-mode busy"
#   TCP_ARGS      arguments for the TCP client (word-split; default "--per-message-io": one
#                 write per message and no read crossing a message boundary, as a Machnet app
#                 sends and receives one message per call, and as the issue's baseline did).
#                 TCP_ARGS= (empty) lets the client coalesce: reads of up to 256 KiB and
#                 everything queued in one write, a streaming TCP app's best case
#   MACHNET_ARGS  extra arguments for the Machnet client (word-split), e.g. "--busy-poll-us 50"
#   OUT           output directory (default: a new mktemp -d, printed)
#   PLOT          0: no plot (default 1)
#
# Output in OUT: results.jsonl (one JSON line per client run: the client's report plus side,
# repeat, side_cpu_s, sidecars_cpu_s, client_cpu_s, cpu_s, bytes_moved, cpu_s_per_gb,
# cpu_s_per_mmsg, error if it failed), summary.json (median runs, ratios, the run's settings and
# commit), meta.json (those settings), table.md (the table printed on stdout), goodput.png
# (goodput against size, log-log; matplotlib from a venv in ${XDG_CACHE_HOME:-$HOME/.cache}/machnet-bench-venv, created with
# `pip install matplotlib` on first use; without it the plot is skipped), logs/.
#
# Exits non-zero if a client run failed or an echo differed (the table is printed anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REPEAT=${REPEAT:-3}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
ENGINES=${ENGINES:-1}
SIDECAR_ARGS=${SIDECAR_ARGS:-}
TCP_ARGS=${TCP_ARGS---per-message-io}
MACHNET_ARGS=${MACHNET_ARGS:-}
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
PLOT=${PLOT:-1}
DEFAULT_CONFIGS="64:32 1024:32 8192:32 65536:8 1048576:4 8388608:2 64:1"
if [ -z "${CONFIGS:-}" ] && [ -n "${SIZES:-}" ]; then
    CONFIGS=""
    for s in $SIZES; do
        found=""
        for c in $DEFAULT_CONFIGS; do
            if [ "${c%%:*}" = "$s" ]; then
                CONFIGS+=" $c"
                found=1
            fi
        done
        [ -n "$found" ] || CONFIGS+=" $s:${WINDOW:-8}"
    done
fi
CONFIGS=${CONFIGS:-$DEFAULT_CONFIGS}

if [ -z "${BIN:-}" ]; then
    cargo build --quiet --release -p machnet-sidecar -p machnet-echo
    BIN=$ROOT/target/release
fi
BIN=$(cd "$BIN" && pwd)
for b in machnet machnet-echo; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b" >&2; exit 1; }
done
HELPER=$ROOT/ci/lib/bench_throughput.py
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=SCRIPTDIR/lib/sidecars.sh
. ci/lib/sidecars.sh
bench_workspace machnet-bench
# shellcheck disable=SC2086 # SIDECAR_ARGS is a list of words
start_sidecar a 127.0.0.1 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" $SIDECAR_ARGS
SIDECAR_A=${PIDS[-1]}
# shellcheck disable=SC2086
start_sidecar b 127.0.0.2 "$BIN/machnet" "$DIR" "$POOL" --engines "$ENGINES" $SIDECAR_ARGS
SIDECAR_B=${PIDS[-1]}

MACHNET_PORT=888
"$BIN/machnet-echo" server --socket "$DIR/a.sock" --port "$MACHNET_PORT" 2>"$DIR/machnet-server.log" &
PIDS+=($!)
MACHNET_SERVER=$!
wait_for_line "$DIR/machnet-server.log" "listening on"

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

# run SIDE REPEAT SIZE WINDOW: one client run, appended to results.jsonl.
run() {
    local side=$1 rep=$2 size=$3 window=$4 rc=0 before after sc_before=0 sc_after=0
    local procs cmd
    local out=$DIR/client.out limit
    limit=$(python3 -c "print(int($DURATION + $WARMUP + 30))")
    if [ "$side" = machnet ]; then
        procs=("$SIDECAR_A" "$SIDECAR_B" "$MACHNET_SERVER")
        # shellcheck disable=SC2206 # MACHNET_ARGS is a list of words
        cmd=("$BIN/machnet-echo" client --socket "$DIR/b.sock" --remote 127.0.0.1
            --port "$MACHNET_PORT" $MACHNET_ARGS)
    else
        procs=("$TCP_SERVER")
        # shellcheck disable=SC2206 # TCP_ARGS is a list of words
        cmd=("$BIN/machnet-echo" tcp-baseline client --bind 127.0.0.2:0
            --remote "127.0.0.1:$TCP_PORT" $TCP_ARGS)
    fi
    echo "== $side size=$size window=$window run $rep/$REPEAT" >&2
    before=$(cpu_ticks "${procs[@]}")
    [ "$side" = machnet ] && sc_before=$(cpu_ticks "$SIDECAR_A" "$SIDECAR_B")
    timeout "$limit" "${cmd[@]}" --size "$size" --window "$window" --duration "$DURATION" \
        --warmup "$WARMUP" --json >"$out" 2>>"$DIR/clients.log" || rc=$?
    after=$(cpu_ticks "${procs[@]}")
    [ "$side" = machnet ] && sc_after=$(cpu_ticks "$SIDECAR_A" "$SIDECAR_B")
    python3 "$HELPER" record "$RESULTS" "$side" "$rep" "$size" "$window" "$rc" "$CLK_TCK" \
        "$before" "$after" "$sc_before" "$sc_after" "$out"
}

for cfg in $CONFIGS; do
    size=${cfg%%:*}
    window=${cfg##*:}
    for rep in $(seq "$REPEAT"); do
        run machnet "$rep" "$size" "$window"
        run tcp "$rep" "$size" "$window"
    done
done

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -c1)
COMMIT="$COMMIT${DIRTY:+-dirty}" BIN="$BIN" REPEAT="$REPEAT" DURATION="$DURATION" \
    WARMUP="$WARMUP" ENGINES="$ENGINES" SIDECAR_ARGS="$SIDECAR_ARGS" TCP_ARGS="$TCP_ARGS" \
    MACHNET_ARGS="$MACHNET_ARGS" LOADAVG_START="$LOADAVG_START" CONFIGS="$CONFIGS" \
    CLK_TCK="$CLK_TCK" python3 - "$OUT/meta.json" <<'PY'
import json, os, sys
e = os.environ
json.dump({"commit": e["COMMIT"], "bin": e["BIN"], "repeat": int(e["REPEAT"]),
           "duration": float(e["DURATION"]), "warmup": float(e["WARMUP"]),
           "engines": int(e["ENGINES"]), "sidecar_args": e["SIDECAR_ARGS"],
           "tcp_args": e["TCP_ARGS"], "machnet_args": e["MACHNET_ARGS"],
           "loadavg_start": e["LOADAVG_START"].split(),
           "configs": e["CONFIGS"].split(), "clk_tck": int(e["CLK_TCK"]),
           "nproc": os.cpu_count(), "loadavg_end": open("/proc/loadavg").read().split()[:3]},
          open(sys.argv[1], "w"))
PY
status=0
python3 "$HELPER" summary "$RESULTS" "$OUT/summary.json" "$OUT/meta.json" | tee "$OUT/table.md" ||
    status=1

if [ "$PLOT" != 0 ]; then
    VENV=${XDG_CACHE_HOME:-$HOME/.cache}/machnet-bench-venv
    if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        echo "setting up matplotlib in $VENV (once)" >&2
        { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet matplotlib; } >&2 ||
            true
    fi
    if "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        "$VENV/bin/python" ci/lib/plot_throughput.py "$OUT/summary.json" "$OUT/goodput.png" ||
            echo "plot failed; results are in $OUT" >&2
    else
        echo "matplotlib not available (venv $VENV): no plot" >&2
    fi
fi
echo "results: $OUT" >&2
exit "$status"
