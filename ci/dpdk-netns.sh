#!/usr/bin/env bash
# Sidecars on DPDK and kernel UDP across a veth pair in two network namespaces (issue 4). Needs
# root and DPDK >= 22.11.
#
#   mn-a-PID (10.77.0.1, veth mn-va-PID): sidecar A + the echo server
#   mn-b-PID (10.77.0.2, veth mn-vb-PID): sidecar B + the echo client (verified echoes of each size)
#
# Each side runs either the DPDK datapath on its veth (no kernel IP there: the sidecar answers
# ARP itself) or the kernel-UDP datapath (the veth gets the IP). Exits non-zero on any failure
# (printing the logs); the namespaces are always removed.
#
# Environment:
#   A_DATAPATH   dpdk (default) | kernel-udp       B_DATAPATH   kernel-udp (default) | dpdk
#   A_ENGINES    engines = DPDK queues of A (1)    B_ENGINES    the same for B (1)
#   A_PMD/B_PMD  af_packet (default) | af_xdp      DPDK poll-mode driver on the veth (af_xdp: one
#                engine only: veths have no combined channels; copy mode; the sidecar gives
#                net_af_xdp a packed mbuf pool, as its UMEM must be: docs/PERFORMANCE.md §7)
#   SIZES        message sizes ("64 65536 1048576")   FLOWS  flows per size (1)
#   DURATION     seconds per size (2)              IDLE_MODE  --idle-mode of kernel-UDP sidecars
#   LOSS_PERMILLE=N  drop N/1000 of the packets each way with the tc BPF filter ci/bpf/drop.c
#                on both veths' egress (af_packet then runs with qdisc_bypass=0 so its frames
#                pass the filter; af_xdp bypasses tc and is refused)
#   BENCH=1      instead of the echo suite: kernel TCP (TCP_NODELAY, busy-polling) between the
#                namespaces first, then the same through the sidecars: RTT at 64 B / window 1
#                and msgs/s at window 32, with the ratio (docs/PERFORMANCE.md §7); BENCH_JSON=F
#                appends the JSON reports to F
#   APP_BUSY_US  --busy-poll-us of the echo server and client (default 0: they sleep)
#   SKIP_BUILD=1 (use existing binaries), KEEP_LOGS=1 (keep the work directory)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MACHNET_BIN:-$ROOT/target/release/machnet}
ECHO=${MACHNET_ECHO_BIN:-$ROOT/target/release/machnet-echo}
DURATION=${DURATION:-2}
SIZES=${SIZES:-"64 65536 1048576"}
FLOWS=${FLOWS:-1}
IDLE_MODE=${IDLE_MODE:-sleep}
A_DATAPATH=${A_DATAPATH:-dpdk}
B_DATAPATH=${B_DATAPATH:-kernel-udp}
A_ENGINES=${A_ENGINES:-1}
B_ENGINES=${B_ENGINES:-1}
A_PMD=${A_PMD:-af_packet}
B_PMD=${B_PMD:-af_packet}
LOSS_PERMILLE=${LOSS_PERMILLE:-0}
BENCH=${BENCH:-0}
# Names unique to this run: runs on a shared machine (another worktree's CI) must not delete or
# reuse each other's namespaces and veths.
NS_A=mn-a-$$
NS_B=mn-b-$$
VETH_A=mn-va-$$
VETH_B=mn-vb-$$
IP_A=10.77.0.1
IP_B=10.77.0.2
PORT=888
TCP_PORT=18888

if [ "$(id -u)" != 0 ]; then
    echo "dpdk-netns.sh: needs root (network namespaces, af_packet)" >&2
    exit 1
fi
for side in A B; do
    dp_var=${side}_DATAPATH pmd_var=${side}_PMD
    case "${!dp_var}" in dpdk | kernel-udp) ;; *)
        echo "${side}_DATAPATH must be dpdk or kernel-udp" >&2
        exit 2
        ;;
    esac
    case "${!pmd_var}" in af_packet | af_xdp) ;; *)
        echo "${side}_PMD must be af_packet or af_xdp" >&2
        exit 2
        ;;
    esac
    eng_var=${side}_ENGINES
    if [ "${!dp_var}" = dpdk ] && [ "${!pmd_var}" = af_xdp ] && [ "${!eng_var}" != 1 ]; then
        # net_af_xdp (22.11) takes the queue count from ethtool's "combined" channels, which a
        # veth reports as 0 (it has separate RX and TX channels): probing fails for > 1 queue.
        echo "${side}_PMD=af_xdp runs one engine on a veth (net_af_xdp needs combined channels)" >&2
        exit 2
    fi
    if [ "$LOSS_PERMILLE" != 0 ] && [ "${!dp_var}" = dpdk ] && [ "${!pmd_var}" = af_xdp ]; then
        echo "LOSS_PERMILLE needs af_packet: af_xdp frames bypass the tc filter" >&2
        exit 2
    fi
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p machnet-sidecar --features dpdk -p machnet-echo)
fi

WORK=$(mktemp -d /tmp/mn-dpdk-netns.XXXXXX)
PIDS=()
FAILED=1

dump_logs() {
    for f in "$WORK"/*.log; do
        [ -f "$f" ] || continue
        echo "===== $(basename "$f") =====" >&2
        tail -n 200 "$f" >&2
    done
}

cleanup() {
    local rc=$?
    # Stop what we started, by pid, in reverse order (the sidecars last).
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$FAILED" != 0 ] || [ "$rc" != 0 ]; then
        dump_logs
        echo "dpdk-netns.sh: FAILED" >&2
        [ "$rc" != 0 ] || rc=1
    fi
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Queues of each veth end: af_packet's queues are fanout sockets on any netdev (one queue
# does); af_xdp binds one socket per netdev queue, so its end gets one per engine. (A veth
# delivers what was sent on TX queue i to RX queue i of the peer: no RSS between af_xdp queues.)
veth_queues() { # side
    local dp_var=${1}_DATAPATH pmd_var=${1}_PMD eng_var=${1}_ENGINES
    if [ "${!dp_var}" = dpdk ] && [ "${!pmd_var}" = af_xdp ]; then echo "${!eng_var}"; else echo 1; fi
}
QA=$(veth_queues A)
QB=$(veth_queues B)
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "$VETH_A" numtxqueues "$QA" numrxqueues "$QA" type veth \
    peer name "$VETH_B" numtxqueues "$QB" numrxqueues "$QB"
ip link set "$VETH_A" netns "$NS_A"
ip link set "$VETH_B" netns "$NS_B"
for side in A B; do
    ns_var=NS_$side veth_var=VETH_$side
    ns=${!ns_var} veth=${!veth_var}
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$veth" up
    # A kernel stack would hand af_packet/af_xdp frames with partial checksums otherwise.
    ip netns exec "$ns" ethtool -K "$veth" tx off >/dev/null
done

# Random loss (this kernel has no netem): the tc BPF filter on both veths' egress, so each
# direction loses LOSS_PERMILLE / 1000 once. (Ingress would not do: af_packet taps frames
# before tc ingress runs.)
QDISC_BYPASS=1
if [ "$LOSS_PERMILLE" != 0 ]; then
    QDISC_BYPASS=0
    clang -O2 -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -DDROP_PERMILLE="$LOSS_PERMILLE" \
        -c "$ROOT/ci/bpf/drop.c" -o "$WORK/drop.o"
    for side in A B; do
        ns_var=NS_$side veth_var=VETH_$side
        ip netns exec "${!ns_var}" tc qdisc add dev "${!veth_var}" clsact
        ip netns exec "${!ns_var}" tc filter add dev "${!veth_var}" egress bpf direct-action \
            obj "$WORK/drop.o" sec tc
    done
    echo "dpdk-netns.sh: dropping ${LOSS_PERMILLE}/1000 of the packets on each veth's egress"
fi

wait_socket() {
    local sock=$1 pid=$2
    for _ in $(seq 100); do
        [ -S "$sock" ] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "sidecar for $sock exited" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "timeout waiting for $sock" >&2
    return 1
}

# Kernel TCP between the namespaces, before any sidecar owns the veths (they get kernel IPs
# for the duration, then lose them again).
tcp_baseline() {
    ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A"
    ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B"
    ip netns exec "$NS_A" "$ECHO" tcp-baseline server --bind "$IP_A:$TCP_PORT" --busy-poll \
        >"$WORK/tcp-server.log" 2>&1 &
    local server=$!
    sleep 0.3
    for window in 1 32; do
        ip netns exec "$NS_B" timeout 120 "$ECHO" tcp-baseline client --busy-poll \
            --remote "$IP_A:$TCP_PORT" --size 64 --window "$window" --duration "$DURATION" \
            --warmup 0.5 --json >"$WORK/tcp-w$window.json"
    done
    kill "$server"
    wait "$server" 2>/dev/null || true
    ip -n "$NS_A" addr flush dev "$VETH_A"
    ip -n "$NS_B" addr flush dev "$VETH_B"
    ip -n "$NS_A" neigh flush dev "$VETH_A" 2>/dev/null || true
    ip -n "$NS_B" neigh flush dev "$VETH_B" 2>/dev/null || true
}
[ "$BENCH" != 1 ] || tcp_baseline

start_sidecar() { # side
    local side=$1
    local ns_var=NS_$side veth_var=VETH_$side ip_var=IP_$side
    local dp_var=${side}_DATAPATH eng_var=${side}_ENGINES pmd_var=${side}_PMD
    local ns=${!ns_var} veth=${!veth_var} ip=${!ip_var} engines=${!eng_var}
    local lower
    lower=$(echo "$side" | tr 'AB' 'ab')
    local args=(--engines "$engines")
    if [ "${!dp_var}" = dpdk ]; then
        local vdev
        if [ "${!pmd_var}" = af_xdp ]; then
            vdev="net_af_xdp0,iface=$veth,start_queue=0,queue_count=$engines"
        else
            vdev="net_af_packet0,iface=$veth,qpairs=$engines,qdisc_bypass=$QDISC_BYPASS"
        fi
        local eal="--no-pci --no-huge -m 512 --no-shconf --no-telemetry -l 0 \
--file-prefix=mn-$lower-$$ --vdev=$vdev"
        args+=(--datapath dpdk --dpdk-args "$eal")
    else
        ip -n "$ns" addr add "$ip/24" dev "$veth"
        args+=(--datapath kernel-udp --idle-mode "$IDLE_MODE")
    fi
    ip netns exec "$ns" "$BIN" "${args[@]}" --local-ip "$ip" \
        --control-socket "$WORK/$lower.sock" --stats-interval 5 \
        >"$WORK/sidecar-$lower.log" 2>&1 &
    PIDS+=($!)
    wait_socket "$WORK/$lower.sock" "$!"
}
start_sidecar A
start_sidecar B

# One echo server per engine of A (port PORT + engine): a listener's flows live on its engine.
for ((e = 0; e < A_ENGINES; e++)); do
    ip netns exec "$NS_A" "$ECHO" server --port $((PORT + e)) --engine "$e" \
        --busy-poll-us "${APP_BUSY_US:-0}" --socket "$WORK/a.sock" \
        >"$WORK/echo-server-$e.log" 2>&1 &
    PIDS+=($!)
done
sleep 0.5

echo_client() { # size window flows [server engine] -> JSON report on stdout
    ip netns exec "$NS_B" timeout 120 "$ECHO" client --remote "$IP_A" --port $((PORT + ${4:-0})) \
        --socket "$WORK/b.sock" --size "$1" --window "$2" --flows "$3" \
        --busy-poll-us "${APP_BUSY_US:-0}" --duration "$DURATION" --warmup 0.5 --json
}

check() { # label json
    if [ "$(echo "$2" | jq '.messages > 0 and .mismatches == 0')" != true ]; then
        echo "$1: bad result: $2" >&2
        exit 1
    fi
}

if [ "$BENCH" = 1 ]; then
    for window in 1 32; do
        out=$(echo_client 64 "$window" 1)
        check "machnet window $window" "$out"
        echo "$out" >"$WORK/machnet-w$window.json"
    done
    if [ -n "${BENCH_JSON:-}" ]; then
        cat "$WORK"/tcp-w*.json "$WORK"/machnet-w*.json >>"$BENCH_JSON"
    fi
    echo "path window rtt_p50_us rtt_p99_us msgs_per_sec"
    for f in tcp-w1 machnet-w1 tcp-w32 machnet-w32; do
        jq -r --arg f "$f" '[$f, .window, .rtt_us.p50, .rtt_us.p99, (.msgs_per_sec|floor)]
            | map(tostring) | join(" ")' "$WORK/$f.json"
    done
    jq -rn --slurpfile t "$WORK/tcp-w1.json" --slurpfile m "$WORK/machnet-w1.json" \
        --slurpfile t32 "$WORK/tcp-w32.json" --slurpfile m32 "$WORK/machnet-w32.json" '
        "ratio machnet/tcp: RTT p50 \(($m[0].rtt_us.p50 / $t[0].rtt_us.p50) * 1000 | round / 1000)"
        + ", p99 \(($m[0].rtt_us.p99 / $t[0].rtt_us.p99) * 1000 | round / 1000)"
        + ", msgs/s at window 32: \(($m32[0].msgs_per_sec / $t32[0].msgs_per_sec) * 1000 | round / 1000)"'
else
    echo "server_engine size_bytes flows messages msgs_per_sec gbit_per_sec rtt_p50_us rtt_p99_us mismatches"
    for size in $SIZES; do
        # One client per server (each on its own channel, so B's engines share the work too),
        # all at once.
        clients=()
        for ((e = 0; e < A_ENGINES; e++)); do
            echo_client "$size" 1 "$FLOWS" "$e" >"$WORK/client-$size-$e.json" &
            clients+=($!)
        done
        for ((e = 0; e < A_ENGINES; e++)); do
            wait "${clients[e]}" || true
            out=$(cat "$WORK/client-$size-$e.json")
            echo "$out" | jq -r --arg e "$e" '[$e, .size, .flows, .messages,
                (.msgs_per_sec|floor), .gbit_per_sec, .rtt_us.p50, .rtt_us.p99, .mismatches]
                | map(tostring) | join(" ")'
            check "size $size, server on engine $e" "$out"
        done
    done
fi

for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "process $pid died during the test" >&2
        exit 1
    fi
done
# The filter must really have dropped packets both ways (else this run proved nothing).
if [ "$LOSS_PERMILLE" != 0 ]; then
    for side in A B; do
        ns_var=NS_$side veth_var=VETH_$side
        dropped=$(ip netns exec "${!ns_var}" tc -s qdisc show dev "${!veth_var}" |
            awk '/clsact/ { q = 1 } q && /dropped/ { sub(",", "", $7); print $7; exit }')
        echo "dpdk-netns.sh: the filter on ${!veth_var} dropped ${dropped:-?} packets"
        if [ -z "$dropped" ] || [ "$dropped" = 0 ]; then
            echo "the loss filter on ${!veth_var} dropped nothing" >&2
            exit 1
        fi
    done
fi
FAILED=0
echo "dpdk-netns.sh: OK ($A_DATAPATH sidecar $IP_A [$A_ENGINES engine(s)] <->" \
    "$B_DATAPATH sidecar $IP_B [$B_ENGINES engine(s)])"
