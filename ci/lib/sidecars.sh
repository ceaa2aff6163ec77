# Shared by the scripts that run real sidecars on loopback (source it; bash only).
#
#   free_udp_pool [count] [ips...]   prints a base port B such that B..B+count-1 are free UDP
#                                    ports on every ip (default 8 ports, 127.0.0.1-3)
#   start_sidecar NAME IP BIN DIR POOL [extra machnet args...]
#                                    starts BIN on IP with control socket DIR/NAME.sock and log
#                                    DIR/NAME.log, appends its pid to PIDS, waits for the socket
#   wait_for_line FILE PATTERN       waits (10 s) until FILE contains PATTERN
#   start_test_apps BIN DIR ECHO_PORT KV_PORT
#                                    the binding suites' set-up: sets POOL (free on 127.0.0.1-3),
#                                    starts sidecars a (127.0.0.1) and b (127.0.0.2), then
#                                    `machnet-echo server` and `machnet-kv server` on a; BIN holds
#                                    the binaries. Prints what failed and returns 1 on failure
#   print_echo_pair NAME JSON RUST_JSON
#                                    prints a binding's echo client report next to the Rust
#                                    client's (both JSON); fails unless both echoed everything
#
# Other jobs may share the machine, so never assume the default port pool is free.

free_udp_pool() {
    local count=${1:-8}
    shift || true
    local ips=("$@")
    [ ${#ips[@]} -gt 0 ] || ips=(127.0.0.1 127.0.0.2 127.0.0.3)
    python3 - "$count" "${ips[@]}" <<'PY'
import random, socket, sys
count, ips = int(sys.argv[1]), sys.argv[2:]
for _ in range(200):
    base = random.randrange(20000, 45000)
    socks = []
    try:
        for ip in ips:
            for p in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((ip, p))
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
PY
}

start_sidecar() {
    local name=$1 ip=$2 bin=$3 dir=$4 pool=$5
    shift 5
    "$bin" --local-ip "$ip" --control-socket "$dir/$name.sock" --allow-user "$(id -u)" \
        --udp-port-base "$pool" --udp-port-count 8 --stats-interval 0 "$@" \
        >"$dir/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do
        [ -S "$dir/$name.sock" ] && return 0
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "sidecar $name did not start:" >&2
    cat "$dir/$name.log" >&2
    return 1
}

wait_for_line() {
    for _ in $(seq 200); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "timed out waiting for '$2' in $1:" >&2
    cat "$1" >&2
    return 1
}

print_echo_pair() {
    python3 - "$@" <<'PY'
import json, sys
name = sys.argv[1]
for label, raw in ((name, sys.argv[2]), ("rust", sys.argv[3])):
    r = json.loads(raw)
    t = r["rtt_us"]
    assert r["mismatches"] == 0 and r["messages"] > 0, r
    print(f"echo 64 B window 1, {label:4}: {r['msgs_per_sec']:9.0f} msg/s  "
          f"p50 {t['p50']:7.1f} us  p99 {t['p99']:7.1f} us  p99.9 {t['p999']:7.1f} us")
PY
}

start_test_apps() {
    local bin=$1 dir=$2 echo_port=$3 kv_port=$4
    POOL=$(free_udp_pool 8 127.0.0.1 127.0.0.2 127.0.0.3) # .3: for a sidecar a test starts
    if [ -z "$POOL" ]; then
        echo "no free UDP port range on 127.0.0.1-3" >&2
        return 1
    fi
    start_sidecar a 127.0.0.1 "$bin/machnet" "$dir" "$POOL" || return 1
    start_sidecar b 127.0.0.2 "$bin/machnet" "$dir" "$POOL" || return 1
    "$bin/machnet-echo" server --socket "$dir/a.sock" --port "$echo_port" 2>"$dir/echo.log" &
    PIDS+=($!)
    wait_for_line "$dir/echo.log" "listening on" || return 1
    # The KV app of the conformance cases (in-memory store).
    "$bin/machnet-kv" server --socket "$dir/a.sock" --port "$kv_port" 2>"$dir/kv.log" &
    PIDS+=($!)
    wait_for_line "$dir/kv.log" "listening on"
}
