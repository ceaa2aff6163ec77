# Shared by the scripts that run real sidecars on loopback (source it; bash only).
#
#   free_udp_pool [count] [ips...]   prints a base port B such that B..B+count-1 are free UDP
#                                    ports on every ip (default 8 ports, 127.0.0.1-3)
#   start_sidecar NAME IP BIN DIR POOL [extra machnet args...]
#                                    starts BIN on IP with control socket DIR/NAME.sock and log
#                                    DIR/NAME.log, appends its pid to PIDS, waits for the socket
#                                    With MACHNET_BENCH_ENCRYPT=1, the sidecar encrypts
#                                    (encryption_args): compare encrypted and plaintext runs
#   encryption_args BIN DIR IP       sets ENCRYPTION_ARGS for a sidecar on IP: a key per host
#                                    127.0.0.1-3 (made once with `BIN keygen` in DIR/keys) and an
#                                    allow-list of the other two (docs/CHANNEL.md §7)
#   wait_for_line FILE PATTERN       waits (10 s) until FILE contains PATTERN
#   start_test_apps BIN DIR ECHO_PORT KV_PORT [raft]
#                                    the binding suites' set-up: sets POOL (free on 127.0.0.1-3),
#                                    starts sidecars a (127.0.0.1) and b (127.0.0.2), then
#                                    `machnet-echo server` and `machnet-kv server` on a; BIN holds
#                                    the binaries. With `raft`, also builds raft-node into DIR
#                                    (build_raft_node) and starts the conformance Raft cluster on
#                                    a (start_raft_cluster, base port RAFT_BASE_PORT).
#                                    Prints what failed and returns 1 on failure
#   build_raft_node REL OUT          builds examples/raft's `raft-node` (Go, cgo) into OUT,
#                                    linking REL/libmachnet.a (`cargo build --release -p
#                                    machnet-ffi` first); Go from PATH or /usr/local/go/bin
#   start_raft_cluster NODE_BIN DIR SOCKET IP BASE_PORT
#                                    starts three `raft-node` processes (examples/raft; ids
#                                    n1..n3) on the one sidecar SOCKET at IP: raft transport on
#                                    ports BASE_PORT+1..3, KV front end (--kv-port) on
#                                    BASE_PORT+11..13; waits (60 s) until all three agree on a
#                                    leader, then exports MACHNET_CONFORMANCE_RAFT_PORT (the
#                                    leader's KV port). Logs in DIR/raft-n*.log. Returns 1 (and
#                                    prints why) on failure
#   export_c_abi_test_env BIN DIR ECHO_PORT KV_PORT
#                                    after start_test_apps: exports what the C ABI suites (C, Go
#                                    in ci/ffi.sh; C# in ci/csharp.sh) read: MACHNET_TEST_* (client
#                                    sidecar b, peer a, echo port, sidecar binary, UDP pool, work
#                                    dir, uid) and MACHNET_CONFORMANCE_* (conformance/README.md)
#   bench_workspace PREFIX           a benchmark's set-up: OUT (kept, default a new
#                                    mktemp -d -t PREFIX.XXXXXX) with logs/ and an empty
#                                    RESULTS=OUT/results.jsonl; DIR (control sockets, removed on
#                                    exit, its *.log copied to OUT/logs); PIDS, every one killed on
#                                    exit; POOL (8 free UDP ports on 127.0.0.1 and .2)
#   print_echo_pair NAME JSON RUST_JSON
#                                    prints a binding's echo client report next to the Rust
#                                    client's (both JSON); fails unless both echoed everything
#
# Other jobs may share the machine, so never assume the default port pool is free.

# Machnet ports of the conformance Raft cluster: transport BASE+1..3, KV front ends BASE+11..13
# (clear of the echo and KV apps and of the port ranges the binding tests pick from).
RAFT_BASE_PORT=30000

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

encryption_args() {
    local bin=$1 dir=$2 ip=$3 host
    local hosts=(127.0.0.1 127.0.0.2 127.0.0.3)
    mkdir -p "$dir/keys" || return 1
    for host in "${hosts[@]}"; do
        [ -f "$dir/keys/$host.key" ] ||
            "$bin" keygen --out "$dir/keys/$host.key" >"$dir/keys/$host.pub" || return 1
    done
    : >"$dir/keys/$ip.peers"
    for host in "${hosts[@]}"; do
        [ "$host" = "$ip" ] || echo "$host $(cat "$dir/keys/$host.pub")" >>"$dir/keys/$ip.peers"
    done
    chmod 644 "$dir/keys/$ip.peers" # only its owner may write an allow-list
    ENCRYPTION_ARGS=(--encryption-key "$dir/keys/$ip.key" --peer-keys "$dir/keys/$ip.peers")
}

start_sidecar() {
    local name=$1 ip=$2 bin=$3 dir=$4 pool=$5
    shift 5
    local enc=()
    if [ "${MACHNET_BENCH_ENCRYPT:-0}" = 1 ]; then
        encryption_args "$bin" "$dir" "$ip" || return 1
        enc=("${ENCRYPTION_ARGS[@]}")
    fi
    "$bin" --local-ip "$ip" --control-socket "$dir/$name.sock" --allow-user "$(id -u)" \
        --udp-port-base "$pool" --udp-port-count 8 --stats-interval 0 "${enc[@]}" "$@" \
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

export_c_abi_test_env() {
    local bin=$1 dir=$2 echo_port=$3 kv_port=$4
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    export MACHNET_TEST_SOCK=$dir/b.sock MACHNET_TEST_PEER_SOCK=$dir/a.sock \
        MACHNET_TEST_LOCAL_IP=127.0.0.2 MACHNET_TEST_PEER_IP=127.0.0.1 \
        MACHNET_TEST_ECHO_PORT=$echo_port MACHNET_TEST_BIN=$bin/machnet \
        MACHNET_TEST_UDP_BASE=$POOL MACHNET_TEST_DIR=$dir MACHNET_TEST_UID=$(id -u) \
        MACHNET_CONFORMANCE_CASES=${MACHNET_CONFORMANCE_CASES:-$root/conformance/cases.json} \
        MACHNET_CONFORMANCE_SERVER_IP=127.0.0.1 MACHNET_CONFORMANCE_ECHO_PORT=$echo_port \
        MACHNET_CONFORMANCE_KV_PORT=$kv_port
}

print_echo_pair() {
    python3 - "$@" <<'PY'
import json, sys
name = sys.argv[1]
for label, raw in ((name, sys.argv[2]), ("rust", sys.argv[3])):
    r = json.loads(raw)
    t = r["rtt_us"]
    assert r["mismatches"] == 0 and r["messages"] > 0, r
    print(f"echo 64 B window 1, {label:12}: {r['msgs_per_sec']:9.0f} msg/s  "
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
    wait_for_line "$dir/kv.log" "listening on" || return 1
    # The Raft app of the conformance cases (examples/raft), if asked for.
    [ "${5:-}" = raft ] || return 0
    if ! build_raft_node "$bin" "$dir/raft-node"; then
        echo "raft-node build (examples/raft, Go) failed" >&2
        return 1
    fi
    start_raft_cluster "$dir/raft-node" "$dir" "$dir/a.sock" 127.0.0.1 "$RAFT_BASE_PORT"
}

build_raft_node() {
    local rel=$1 out=$2
    (
        cd "$(dirname "${BASH_SOURCE[0]}")/../../examples/raft" &&
            PATH="$PATH:/usr/local/go/bin" CGO_ENABLED=1 CGO_LDFLAGS="-L$rel" \
                go build -o "$out" ./cmd/raft-node
    )
}

start_raft_cluster() {
    local node_bin=$1 dir=$2 socket=$3 ip=$4 base=$5 i peers=""
    for i in 1 2 3; do peers+="${peers:+,}n$i=$ip:$((base + i))"; done
    for i in 1 2 3; do
        "$node_bin" --id "n$i" --socket "$socket" --ip "$ip" --port $((base + i)) \
            --kv-port $((base + 10 + i)) --peers "$peers" --http 127.0.0.1:0 --election-timeout 2s \
            >"$dir/raft-n$i.out" 2>"$dir/raft-n$i.log" &
        PIDS+=($!)
    done
    for i in 1 2 3; do wait_for_line "$dir/raft-n$i.out" "^READY" || return 1; done
    local port
    port=$(python3 - "$dir" <<'PY'
import json, sys, time, urllib.request
d = sys.argv[1]
urls = [open(f"{d}/raft-n{i}.out").readline().split()[1] for i in (1, 2, 3)]
deadline = time.time() + 60
while time.time() < deadline:
    try:
        st = [json.load(urllib.request.urlopen(f"http://{u}/status", timeout=2)) for u in urls]
    except OSError:
        st = []
    leaders = [s for s in st if s["state"] == "Leader"]
    if len(leaders) == 1 and all(s["leader"] == leaders[0]["id"] for s in st):
        print(leaders[0]["kv_port"])
        sys.exit(0)
    time.sleep(0.1)
print("no agreed raft leader after 60 s", file=sys.stderr)
sys.exit(1)
PY
    ) || {
        tail -n 20 "$dir"/raft-n*.log >&2
        return 1
    }
    export MACHNET_CONFORMANCE_RAFT_PORT=$port
    echo "raft cluster: leader's KV port $port" >&2
}

bench_workspace() {
    OUT=${OUT:-$(mktemp -d -t "$1.XXXXXX")}
    mkdir -p "$OUT/logs"
    OUT=$(cd "$OUT" && pwd)
    RESULTS=$OUT/results.jsonl
    : >"$RESULTS"
    echo "output: $OUT" >&2
    DIR=$(mktemp -d) # control sockets (short paths) and logs
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    POOL=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
    [ -n "$POOL" ] || { echo "no free UDP port range on 127.0.0.1/.2" >&2; return 1; }
}

# shellcheck disable=SC2317 # run by the EXIT trap of bench_workspace
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    cp "$DIR"/*.log "$OUT/logs/" 2>/dev/null || true
    rm -rf "$DIR"
}
