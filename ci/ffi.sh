#!/usr/bin/env bash
# The C ABI (machnet-ffi: libmachnet.so/.a, include/machnet.h) and the Go module (go/), tested
# against real sidecars:
#
#   ci/ffi.sh                   build, check the header is fresh, run the C/C++ and Go tests,
#                               and build and run the original Machnet's examples/hello_world.cc
#                               (machnet-ffi/tests/c/original/) against the header and
#                               libmachnet_shim.so (a link to libmachnet.so made here)
#   ci/ffi.sh --update-header   regenerate machnet-ffi/include/machnet.h (cbindgen 0.29) and its
#                               copy go/machnet.h (the Go package's, so that `go mod vendor`
#                               carries it), and exit
#
# Starts two `machnet` sidecars on the kernel-UDP datapath (127.0.0.1 and 127.0.0.2, private
# control sockets in a temp dir, no root), and `machnet-echo server`, `machnet-kv server` and a
# 3-node Raft cluster (examples/raft `raft-node --kv-port`, built with Go) on the first; the
# tests attach to the second. The Go suite includes the cross-language
# conformance cases (conformance/cases.json, go/conformance_test.go) and the net.Conn adapter's
# tests (go/netconn_test.go; go/nettest runs x/net's nettest.TestConn on it). Builds into $CARGO_TARGET_DIR (default target/). Ends with one line
# `RESULT: <P> passed, <F> failed` (C cases + Go tests + checks) and exits non-zero if anything
# failed. Set KEEP_LOGS=1 to keep the sidecar logs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$TARGET/release
HEADER=machnet-ffi/include/machnet.h
GO_HEADER=go/machnet.h
CC=${CC:-cc}
CXX=${CXX:-c++}
ECHO_PORT=888
KV_PORT=900

SUITE=ffi
# shellcheck source=lib/suite.sh
. ci/lib/suite.sh

# Toolchains installed in their usual places but not on PATH (e.g. a bare CI environment).
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/go/bin"

# ----- cbindgen 0.29 and the header -----
gen_header() { # output path
    if ! cbindgen --version 2>/dev/null | grep -q '^cbindgen 0\.29\.'; then
        echo "ffi: installing cbindgen 0.29" >&2
        cargo install --locked 'cbindgen@^0.29' >&2 || return 1
    fi
    (cd machnet-ffi && cbindgen --quiet --config cbindgen.toml --crate machnet-ffi --output "$1" .)
}
if [ "${1:-}" = "--update-header" ]; then
    gen_header "$ROOT/$HEADER" && cp "$ROOT/$HEADER" "$ROOT/$GO_HEADER" &&
        echo "regenerated $HEADER and $GO_HEADER"
    exit
fi

# ----- build -----
echo "ffi: building (release) into $TARGET" >&2
if ! cargo build --release -p machnet-ffi -p machnet-sidecar -p machnet-echo -p machnet-kv; then
    fail "cargo build"
    finish
fi
# The original Machnet's name for the library (its Rust, JS and C# bindings load it, its
# examples link -lmachnet_shim): the same file under a second name.
ln -sfn libmachnet.so "$REL/libmachnet_shim.so"
if gen_header "$DIR/machnet.h" && diff -u "$HEADER" "$DIR/machnet.h" &&
    diff -u "$GO_HEADER" "$DIR/machnet.h"; then
    pass "header_fresh ($HEADER and its copy $GO_HEADER match cbindgen's output)"
else
    fail "header_fresh: $HEADER is stale; run ci/ffi.sh --update-header"
fi

FLAGS=(-Wall -Wextra -Werror -O2 -g -I machnet-ffi/include)
NATIVE=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)
CDIR=machnet-ffi/tests/c
if $CC -std=c11 "${FLAGS[@]}" -c "$CDIR/test_machnet.c" -o "$DIR/test_machnet.o" &&
    $CXX -std=c++17 "${FLAGS[@]}" -c "$CDIR/header_check.cpp" -o "$DIR/header_check.o" &&
    $CXX "$DIR/test_machnet.o" "$DIR/header_check.o" -L "$REL" -Wl,-rpath,"$REL" -lmachnet \
        -lpthread -o "$DIR/test_machnet"; then
    pass "c_build (C11 and C++17 with -Wall -Wextra -Werror against libmachnet.so)"
else
    fail "c_build"
fi
# machnet.h is self-contained like the original's (tests/c/self_contained.c uses only it).
if $CC -x c -std=c11 "${FLAGS[@]}" -c "$CDIR/self_contained.c" -o "$DIR/self_contained.o" &&
    $CXX -x c++ -std=c++17 "${FLAGS[@]}" -c "$CDIR/self_contained.c" -o "$DIR/self_contained_cxx.o"; then
    pass "header_self_contained (standard declarations through machnet.h alone, C11 and C++17)"
else
    fail "header_self_contained"
fi
if $CC -std=c11 "${FLAGS[@]}" "$CDIR/init_paths.c" -L "$REL" -Wl,-rpath,"$REL" -lmachnet \
    -o "$DIR/init_paths" &&
    $CC -std=c11 "${FLAGS[@]}" "$CDIR/test_events.c" -L "$REL" -Wl,-rpath,"$REL" -lmachnet \
        -lpthread -o "$DIR/test_events" &&
    $CC -std=c11 "${FLAGS[@]}" "$CDIR/test_zero_copy.c" -L "$REL" -Wl,-rpath,"$REL" -lmachnet \
        -lpthread -o "$DIR/test_zero_copy" &&
    $CC -std=c11 "${FLAGS[@]}" "$CDIR/shim_dlopen.c" -ldl -o "$DIR/shim_dlopen"; then
    pass "c_build_extra (init_paths.c, shim_dlopen.c, test_events.c, test_zero_copy.c)"
else
    fail "c_build_extra"
fi
# The original Machnet's examples/hello_world.cc, unmodified (the part after the vendoring note
# must hash to the original's git blob), built as its examples/Makefile does: -lmachnet_shim.
ORIG=$CDIR/original
ORIG_BLOB=ed34735227a65333ccfe05172b76d5ea987e60f0
if [ "$(sed '1,/^\/\* ===== end of the vendoring note/d' "$ORIG/hello_world.cc" |
    git hash-object --stdin)" = $ORIG_BLOB ]; then
    pass "original_hello_world_unmodified (git blob $ORIG_BLOB)"
else
    fail "original_hello_world_unmodified: $ORIG/hello_world.cc differs from the original"
fi
if $CXX -std=c++17 -Wall -Wextra -Werror -O2 -I machnet-ffi/include -I "$ORIG/shim" \
    "$ORIG/hello_world.cc" -o "$DIR/hello_world" -L "$REL" -lmachnet_shim -lrt \
    -Wl,-rpath,"$REL"; then
    pass "original_hello_world_build (C++17 -Wall -Wextra -Werror, -lmachnet_shim)"
else
    fail "original_hello_world_build"
fi
if $CXX "$DIR/test_machnet.o" "$DIR/header_check.o" "$REL/libmachnet.a" "${NATIVE[@]}" \
    -o "$DIR/test_machnet_static" && ! ldd "$DIR/test_machnet_static" | grep -q libmachnet; then
    pass "c_static_link (libmachnet.a, no .so dependency)"
else
    fail "c_static_link"
fi

# ----- sidecars and apps (helpers shared with the other scripts: ci/lib/sidecars.sh) -----
. ci/lib/sidecars.sh
# With the Raft app of the conformance cases: exports MACHNET_CONFORMANCE_RAFT_PORT.
if ! start_test_apps "$REL" "$DIR" "$ECHO_PORT" "$KV_PORT" raft; then
    fail "sidecars, echo, kv servers and raft cluster start"
    finish
fi
export_c_abi_test_env "$REL" "$DIR" "$ECHO_PORT" "$KV_PORT"

# ----- C and C++ tests -----
count_c() { # log
    PASSED=$((PASSED + $(grep -c '^ok - ' "$1")))
    local f
    f=$(grep -c '^not ok - ' "$1")
    FAILED=$((FAILED + f))
    while read -r line; do FAILURES+=("C: $line"); done < <(grep '^not ok - ' "$1")
}
for variant in test_machnet test_machnet_static; do
    [ -x "$DIR/$variant" ] || continue
    echo "ffi: running $variant" >&2
    # C_REPEAT=N runs the cases N times (hunting flakes); every run counts.
    rc=0
    : >"$DIR/$variant.out"
    for _ in $(seq "${C_REPEAT:-1}"); do
        timeout 300 "$DIR/$variant" >>"$DIR/$variant.out" || rc=$?
    done
    cat "$DIR/$variant.out"
    if ! grep -q '^c-tests: ' "$DIR/$variant.out"; then
        fail "$variant did not finish (exit $rc)"
    elif [ $variant = test_machnet ]; then
        count_c "$DIR/$variant.out"
    elif [ $rc -eq 0 ]; then
        pass "c_tests_static (the same cases against libmachnet.a)"
    else
        fail "c_tests_static"
    fi
done

# ----- flow events (machnet_next_event) -----
if [ -x "$DIR/test_events" ]; then
    echo "ffi: running test_events" >&2
    timeout 300 "$DIR/test_events" >"$DIR/test_events.out"
    cat "$DIR/test_events.out"
    count_c "$DIR/test_events.out"
    grep -q '^c-tests: ' "$DIR/test_events.out" || fail "test_events did not finish"
fi

# ----- zero-copy (machnet_loan / machnet_commit, machnet_recv_zc / machnet_release) -----
if [ -x "$DIR/test_zero_copy" ]; then
    echo "ffi: running test_zero_copy" >&2
    timeout 300 "$DIR/test_zero_copy" >"$DIR/test_zero_copy.out"
    cat "$DIR/test_zero_copy.out"
    count_c "$DIR/test_zero_copy.out"
    grep -q '^c-tests: ' "$DIR/test_zero_copy.out" || fail "test_zero_copy did not finish"
fi

# ----- the library under the original's name; machnet_init's choice of socket -----
if [ -x "$DIR/shim_dlopen" ]; then
    LD_LIBRARY_PATH=$REL MACHNET_SOCKET=$DIR/b.sock timeout 60 "$DIR/shim_dlopen" \
        >"$DIR/shim_dlopen.out"
    cat "$DIR/shim_dlopen.out"
    count_c "$DIR/shim_dlopen.out"
    grep -q '^c-tests: ' "$DIR/shim_dlopen.out" || fail "shim_dlopen did not finish"
fi
# init_paths links the default socket paths to sidecar b, so it needs a private /run: a user and
# mount namespace (unshare -rm, no root needed) with a tmpfs there.
if [ -x "$DIR/init_paths" ]; then
    if unshare -rm true 2>/dev/null; then
        MACHNET_TEST_PRIVATE_RUN=1 timeout 120 unshare -rm sh -c \
            'mount -t tmpfs tmpfs /run && exec "$0" "$1"' "$DIR/init_paths" "$DIR/b.sock" \
            >"$DIR/init_paths.out"
        cat "$DIR/init_paths.out"
        count_c "$DIR/init_paths.out"
        grep -q '^c-tests: ' "$DIR/init_paths.out" || fail "init_paths did not finish"
    else
        fail "init_paths: needs user namespaces (unshare -rm) for a private /run"
    fi
fi

# ----- the original's hello_world, unmodified: a server on a, two clients on b -----
if [ -x "$DIR/hello_world" ]; then
    MACHNET_SOCKET=$DIR/a.sock stdbuf -oL "$DIR/hello_world" --local=127.0.0.1 \
        >"$DIR/hello_server.out" 2>&1 &
    PIDS+=($!)
    hw_ok=1
    wait_for_line "$DIR/hello_server.out" "Waiting for message from client" || hw_ok=0
    for n in 0 1; do
        [ $hw_ok = 1 ] || break
        MACHNET_SOCKET=$DIR/b.sock timeout 60 "$DIR/hello_world" --local=127.0.0.2 \
            --remote=127.0.0.1 >"$DIR/hello_client.out" 2>&1 || hw_ok=0
        grep -q "Sending message to 127.0.0.1:31580" "$DIR/hello_client.out" || hw_ok=0
        wait_for_line "$DIR/hello_server.out" "Received message: Hello World!, count = $n" ||
            hw_ok=0
    done
    kill "${PIDS[-1]}" 2>/dev/null
    cat "$DIR/hello_server.out" "$DIR/hello_client.out"
    if [ $hw_ok = 1 ]; then
        pass "original_hello_world_runs (server on a, two clients on b: both messages arrive)"
    else
        fail "original_hello_world_runs"
    fi
fi

# ----- send, then exit (docs/CHANNEL.md §5): the original hello_world client pattern -----
# 1,000 processes each connect, send one message and return from main; every message must arrive
# exactly once and intact (the full 10,000-run measurement: docs/PERFORMANCE.md §15).
if ste=$(RUNS=${STE_RUNS:-1000} SIDECAR=$REL/machnet ECHO=$REL/machnet-echo \
    examples/echo/send_then_exit.sh 30); then
    pass "send_then_exit: $ste"
else
    fail "send_then_exit: $ste"
fi

# ----- Go -----
if command -v go >/dev/null; then
    export CGO_ENABLED=1 CGO_LDFLAGS="-L$REL"
    (cd go && go vet ./...) && pass "go vet" || fail "go vet"
    echo "ffi: go test -race" >&2
    (cd go && timeout 600 go test -race -count=1 -v ./... 2>&1) | tee "$DIR/go.out"
    PASSED=$((PASSED + $(grep -cE '^\s*--- PASS' "$DIR/go.out")))
    gofail=$(grep -cE '^\s*--- FAIL' "$DIR/go.out")
    FAILED=$((FAILED + gofail))
    while read -r line; do FAILURES+=("Go: $line"); done < <(grep -E '^\s*--- FAIL' "$DIR/go.out")
    if grep -qE '^(FAIL|panic:)' "$DIR/go.out" && [ "$gofail" -eq 0 ]; then
        fail "go test (failed outside a test: build error, panic or timeout)"
    fi
    # golang.org/x/net/nettest.TestConn (the net.Conn conformance suite) against Machnet Conns:
    # a module of its own (go/nettest: x/net needs a newer Go than the binding's minimum).
    echo "ffi: go test -race (go/nettest: net.Conn conformance)" >&2
    (cd go/nettest && go vet ./... && timeout 600 go test -race -count=1 -v ./... 2>&1) |
        tee "$DIR/go-nettest.out"
    PASSED=$((PASSED + $(grep -cE '^\s*--- PASS' "$DIR/go-nettest.out")))
    ntfail=$(grep -cE '^\s*--- FAIL' "$DIR/go-nettest.out")
    FAILED=$((FAILED + ntfail))
    while read -r line; do FAILURES+=("Go nettest: $line"); done < <(grep -E '^\s*--- FAIL' "$DIR/go-nettest.out")
    if ! grep -q '^ok' "$DIR/go-nettest.out" && [ "$ntfail" -eq 0 ]; then
        fail "go/nettest (failed outside a test: vet, build error, panic or timeout)"
    fi
    # A program using the module through `go mod vendor` (the module replaced by this
    # directory) builds: the vendored package carries its header (go/machnet.h).
    VEND=$DIR/go-vendor-user
    mkdir -p "$VEND"
    printf 'module example.invalid/vendoruser\n\ngo 1.19\n\nrequire github.com/machnet-rs/machnet-rs/go v0.0.0\n\nreplace github.com/machnet-rs/machnet-rs/go => %s/go\n' \
        "$ROOT" >"$VEND/go.mod"
    printf 'package main\n\nimport (\n\t"fmt"\n\n\tmachnet "github.com/machnet-rs/machnet-rs/go"\n)\n\nfunc main() { fmt.Println(machnet.Version()) }\n' \
        >"$VEND/main.go"
    if (cd "$VEND" && go mod vendor && go build -mod=vendor -o vendoruser . && ./vendoruser |
        grep -q '^machnet-rs '); then
        pass "go_mod_vendor_build (a program vendoring the module builds and runs)"
    else
        fail "go_mod_vendor_build"
    fi
    if (cd go && go build -o "$DIR/machnet-echo-go" ./cmd/machnet-echo-go) &&
        ! ldd "$DIR/machnet-echo-go" 2>&1 | grep -q libmachnet; then
        pass "go_static_binary (no libmachnet.so dependency)"
    else
        fail "go_static_binary"
    fi
    # The Go echo client against the Rust echo server, next to the Rust client (same run),
    # once per Recv wait mode.
    DUR=${BENCH_DURATION:-2}
    for wait in netpoll thread; do
        if go_json=$("$DIR/machnet-echo-go" --socket "$DIR/b.sock" --remote 127.0.0.1 \
            --port "$ECHO_PORT" --size 64 --duration "$DUR" --warmup 0.5 --wait "$wait" --json) &&
            rust_json=$("$REL/machnet-echo" client --socket "$DIR/b.sock" --remote 127.0.0.1 \
                --port "$ECHO_PORT" --size 64 --duration "$DUR" --warmup 0.5 --json) &&
            print_echo_pair "go ($wait)" "$go_json" "$rust_json"
        then
            pass "go_echo_client --wait $wait (RTT report, every echo verified)"
        else
            fail "go_echo_client --wait $wait"
        fi
    done
else
    fail "go toolchain missing"
fi

finish
