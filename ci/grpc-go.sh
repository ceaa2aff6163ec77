#!/usr/bin/env bash
# gRPC over Machnet with grpc-go (examples/grpc-go): the machnet.echo.v1.Echo service served
# with grpc.Server.Serve(machnetListener) and dialed with grpc.WithContextDialer (the Go
# binding's net.Conn adapter, go/netconn.go).
#
#   ci/grpc-go.sh            build, start two sidecars (127.0.0.1 server side, 127.0.0.2 client
#                            side; kernel UDP, private control sockets, no root), go vet, go test
#                            -race (unary, streaming in order, a deadline and a cancellation
#                            crossing Machnet, a 5 MiB message), then one short benchmark round
#   ci/grpc-go.sh --bench    the benchmark only, longer: unary p50/p99 over Machnet vs the same
#                            server over kernel TCP, interleaved rounds (ROUNDS, CALLS, SIZE;
#                            SIDECAR_ARGS adds sidecar options, e.g. "--busy-poll-us 1000")
#
# Ends with `RESULT: <P> passed, <F> failed` (Go tests counted individually). KEEP_LOGS=1 keeps
# the sidecar logs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$TARGET/release

SUITE=grpc-go
# shellcheck source=lib/suite.sh
. ci/lib/suite.sh

export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/go/bin"
command -v go >/dev/null || die "go toolchain missing"

echo "grpc-go: building (release) into $TARGET" >&2
cargo build --release -p machnet-sidecar -p machnet-ffi || die "cargo build"
export CGO_ENABLED=1 CGO_LDFLAGS="-L$REL"
(cd examples/grpc-go && go build -o "$DIR/grpc-echo" .) || die "go build examples/grpc-go"

. ci/lib/sidecars.sh
POOL=$(free_udp_pool 8 127.0.0.1 127.0.0.2 127.0.0.3)
[ -n "$POOL" ] || die "no free UDP port range on 127.0.0.1-3"
# SIDECAR_ARGS: extra sidecar options for a benchmark variant (e.g. "--idle-mode busy").
# shellcheck disable=SC2086
start_sidecar a 127.0.0.1 "$REL/machnet" "$DIR" "$POOL" ${SIDECAR_ARGS:-} || die "sidecar a"
# shellcheck disable=SC2086
start_sidecar b 127.0.0.2 "$REL/machnet" "$DIR" "$POOL" ${SIDECAR_ARGS:-} || die "sidecar b"
export MACHNET_TEST_SOCK=$DIR/b.sock MACHNET_TEST_PEER_SOCK=$DIR/a.sock \
    MACHNET_TEST_LOCAL_IP=127.0.0.2 MACHNET_TEST_PEER_IP=127.0.0.1

bench() { # rounds calls
    "$DIR/grpc-echo" bench --server-socket "$DIR/a.sock" --client-socket "$DIR/b.sock" \
        --server-ip 127.0.0.1 --rounds "$1" --calls "$2" --size "${SIZE:-64}"
}

if [ "${1:-}" = "--bench" ]; then
    if bench "${ROUNDS:-6}" "${CALLS:-5000}"; then pass "benchmark"; else fail "benchmark"; fi
    finish
fi

if (cd examples/grpc-go && go vet ./...); then pass "go vet"; else fail "go vet"; fi
(cd examples/grpc-go && timeout 600 go test -race -count=1 -v ./... 2>&1) | tee "$DIR/go.out"
PASSED=$((PASSED + $(grep -cE '^\s*--- PASS' "$DIR/go.out")))
gofail=$(grep -cE '^\s*--- FAIL' "$DIR/go.out")
FAILED=$((FAILED + gofail))
while read -r line; do FAILURES+=("Go: $line"); done < <(grep -E '^\s*--- FAIL' "$DIR/go.out")
if ! grep -q '^ok' "$DIR/go.out" && [ "$gofail" -eq 0 ]; then
    fail "go test (failed outside a test: build error, panic or timeout)"
fi
# The benchmark runs (every echo checked); its figures are not a pass criterion.
if bench 2 500; then pass "benchmark runs (2 rounds)"; else fail "benchmark runs"; fi
finish
