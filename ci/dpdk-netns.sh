#!/usr/bin/env bash
# DPDK <-> kernel-UDP interop test (issue 4), needs root and DPDK >= 22.11.
#
# Two network namespaces joined by a veth pair:
#   mn-a: veth mn-va, NO kernel IP; sidecar A runs the DPDK datapath on it through
#         --vdev=net_af_packet0,iface=mn-va with --local-ip 10.77.0.1 (A answers ARP itself);
#         the echo server attaches to A.
#   mn-b: veth mn-vb with 10.77.0.2/24 and TX checksum offload off (otherwise frames reach
#         af_packet with partial checksums); sidecar B runs the kernel-UDP datapath on
#         10.77.0.2; the echo client attaches to B and runs verified echoes of 64 B, 64 KiB
#         and 1 MiB messages.
# Exits non-zero on any failure (printing both sidecars' logs). The namespaces are always
# removed.
#
# Environment: SKIP_BUILD=1 (use existing binaries), DURATION (seconds per size, default 2),
# SIZES (default "64 65536 1048576"), IDLE_MODE (sidecar B's --idle-mode, default sleep;
# sidecar A uses its datapath's default, busy for DPDK, unless A_IDLE_MODE is set),
# KEEP_LOGS=1 (keep the work directory), LOSS_PERMILLE=N (drop N/1000 packets each way with the
# tc BPF filter ci/bpf/drop.c; the echoes must still all verify), A_DATAPATH=kernel-udp (baseline: sidecar A on kernel
# UDP too, its veth then gets 10.77.0.1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MACHNET_BIN:-$ROOT/target/release/machnet}
ECHO=${MACHNET_ECHO_BIN:-$ROOT/target/release/machnet-echo}
DURATION=${DURATION:-2}
SIZES=${SIZES:-"64 65536 1048576"}
IDLE_MODE=${IDLE_MODE:-sleep}
A_DATAPATH=${A_DATAPATH:-dpdk}
A_IDLE=()
[ -z "${A_IDLE_MODE:-}" ] || A_IDLE=(--idle-mode "$A_IDLE_MODE")
NS_A=mn-a
NS_B=mn-b
VETH_A=mn-va
VETH_B=mn-vb
IP_A=10.77.0.1
IP_B=10.77.0.2
PORT=888

if [ "$(id -u)" != 0 ]; then
    echo "dpdk-netns.sh: needs root (network namespaces, af_packet)" >&2
    exit 1
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p machnet-sidecar --features dpdk -p machnet-echo)
fi

WORK=$(mktemp -d /tmp/mn-dpdk-netns.XXXXXX)
PIDS=()
FAILED=1

dump_logs() {
    for f in "$WORK"/sidecar-a.log "$WORK"/sidecar-b.log "$WORK"/echo-server.log; do
        [ -f "$f" ] || continue
        echo "===== $(basename "$f") =====" >&2
        cat "$f" >&2
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

# Stale namespaces from an interrupted run.
ip netns del "$NS_A" 2>/dev/null || true
ip netns del "$NS_B" 2>/dev/null || true

ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "$VETH_A" type veth peer name "$VETH_B"
ip link set "$VETH_A" netns "$NS_A"
ip link set "$VETH_B" netns "$NS_B"
ip -n "$NS_A" link set lo up
ip -n "$NS_A" link set "$VETH_A" up
ip -n "$NS_B" link set lo up
ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B"
ip -n "$NS_B" link set "$VETH_B" up
ip netns exec "$NS_B" ethtool -K "$VETH_B" tx off >/dev/null
ip netns exec "$NS_A" ethtool -K "$VETH_A" tx off >/dev/null

# Random loss (this kernel has no netem): a tc BPF filter dropping LOSS_PERMILLE / 1000 of the
# packets in both directions on the kernel side's veth. (Not on the DPDK side: af_packet taps
# frames before tc ingress runs.)
if [ "${LOSS_PERMILLE:-0}" != 0 ]; then
    clang -O2 -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -DDROP_PERMILLE="$LOSS_PERMILLE" \
        -c "$ROOT/ci/bpf/drop.c" -o "$WORK/drop.o"
    ip netns exec "$NS_B" tc qdisc add dev "$VETH_B" clsact
    for dir in ingress egress; do
        ip netns exec "$NS_B" tc filter add dev "$VETH_B" "$dir" bpf direct-action \
            obj "$WORK/drop.o" sec tc
    done
    echo "dpdk-netns.sh: dropping ${LOSS_PERMILLE}/1000 of the packets on $VETH_B"
fi

EAL="--no-pci --no-huge -m 256 --no-shconf --no-telemetry -l 0 --file-prefix=mn-a-$$ \
--vdev=net_af_packet0,iface=$VETH_A"

if [ "$A_DATAPATH" = dpdk ]; then
    A_ARGS=(--datapath dpdk --dpdk-args "$EAL" --dpdk-port net_af_packet0)
else
    ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A"
    A_ARGS=(--datapath kernel-udp)
fi
ip netns exec "$NS_A" "$BIN" "${A_ARGS[@]}" --local-ip "$IP_A" \
    --control-socket "$WORK/a.sock" "${A_IDLE[@]}" --stats-interval 5 \
    >"$WORK/sidecar-a.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS_B" "$BIN" --datapath kernel-udp --local-ip "$IP_B" \
    --control-socket "$WORK/b.sock" --idle-mode "$IDLE_MODE" --stats-interval 5 \
    >"$WORK/sidecar-b.log" 2>&1 &
PIDS+=($!)

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
wait_socket "$WORK/a.sock" "${PIDS[0]}"
wait_socket "$WORK/b.sock" "${PIDS[1]}"

ip netns exec "$NS_A" "$ECHO" server --port "$PORT" --socket "$WORK/a.sock" \
    >"$WORK/echo-server.log" 2>&1 &
PIDS+=($!)
sleep 0.5

echo "size_bytes messages msgs_per_sec gbit_per_sec rtt_p50_us rtt_p99_us mismatches"
for size in $SIZES; do
    out=$(ip netns exec "$NS_B" timeout 60 "$ECHO" client --remote "$IP_A" --port "$PORT" \
        --socket "$WORK/b.sock" --size "$size" --window 1 --duration "$DURATION" \
        --warmup 0.5 --json)
    echo "$out" | jq -r '[.size, .messages, (.msgs_per_sec|floor), .gbit_per_sec, .rtt_us.p50,
        .rtt_us.p99, .mismatches] | map(tostring) | join(" ")'
    if [ "$(echo "$out" | jq '.messages > 0 and .mismatches == 0')" != true ]; then
        echo "size $size: bad result: $out" >&2
        exit 1
    fi
done

for i in 0 1 2; do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
        echo "process ${PIDS[i]} died during the test" >&2
        exit 1
    fi
done
FAILED=0
echo "dpdk-netns.sh: OK ($A_DATAPATH sidecar $IP_A <-> kernel-UDP sidecar $IP_B)"
