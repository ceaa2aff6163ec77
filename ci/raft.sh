#!/usr/bin/env bash
# Raft over Machnet (examples/raft): hashicorp/raft with a Machnet raft.Transport.
#
#   ci/raft.sh
#
# Builds the sidecar and libmachnet.a (release, into $CARGO_TARGET_DIR, default target/),
# starts three `machnet` sidecars on the kernel-UDP datapath (127.0.0.1, 127.0.0.2, 127.0.0.3,
# private control sockets in a temp dir, no root), runs `go vet` and `go test -race` in
# examples/raft (transport RPCs; raft's own transport test cases with InmemTransport / TCP
# NetworkTransport controls; RPCs failing at once when a peer process is SIGKILLed or its
# transport closes, and soon (ICMP port unreachable) when the peer's whole sidecar is SIGKILLed
# (a fourth sidecar on 127.0.0.4 that the test starts); WithPeers, CloseStreams; 3-node cluster: election, replication, leader
# killed -> new leader, no committed entry lost; leadership transfer; membership change;
# snapshot install, also to a follower lagging behind a partition; leader process SIGKILLed;
# the lines `TIME-TO-FAIL` report how fast pending RPCs failed), then the latency
# comparison (Apply -> committed on the leader of an 80 B command, Machnet transport vs raft's
# TCP transport, same run), then the Rust runner of the conformance cases of app `raft`
# (conformance/cases.json) against three `raft-node --kv-port` processes on sidecar a. Ends with one line `RESULT: <P> passed, <F> failed` (Go tests
# counted individually) and exits non-zero on failure. KEEP_LOGS=1 keeps the logs;
# MACHNET_RAFT_SEED=N repeats the test data; LAT_COUNT (default 2000) sets the measured applies.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$TARGET/release

SUITE=raft
# shellcheck source=lib/suite.sh
. ci/lib/suite.sh

export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/go/bin"
if ! command -v go >/dev/null; then
    fail "go toolchain missing"
    finish
fi

# ----- build -----
echo "raft: building (release) into $TARGET" >&2
if ! cargo build --release -p machnet-sidecar -p machnet-ffi; then
    fail "cargo build"
    finish
fi
export CGO_ENABLED=1 CGO_LDFLAGS="-L$REL"
cd examples/raft
if go build -o "$DIR/raft-node" ./cmd/raft-node && go build -o "$DIR/raft-latency" ./cmd/raft-latency; then
    pass "go build"
else
    fail "go build"
    finish
fi
go vet ./... && pass "go vet" || fail "go vet"
if [ -z "$(gofmt -l .)" ]; then pass "gofmt"; else fail "gofmt: $(gofmt -l . | tr '\n' ' ')"; fi

# ----- sidecars -----
# shellcheck source=lib/sidecars.sh
source "$ROOT/ci/lib/sidecars.sh"
POOL=$(free_udp_pool 8 127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4)
if [ -z "$POOL" ] || ! start_sidecar a 127.0.0.1 "$REL/machnet" "$DIR" "$POOL" ||
    ! start_sidecar b 127.0.0.2 "$REL/machnet" "$DIR" "$POOL" ||
    ! start_sidecar c 127.0.0.3 "$REL/machnet" "$DIR" "$POOL"; then
    fail "sidecars start"
    finish
fi
export MACHNET_RAFT_SOCKETS="$DIR/a.sock,$DIR/b.sock,$DIR/c.sock" \
    MACHNET_RAFT_IPS="127.0.0.1,127.0.0.2,127.0.0.3" MACHNET_RAFT_NODE_BIN="$DIR/raft-node"
# For tests that start (and kill) a sidecar of their own, on 127.0.0.4 with the same ports.
export MACHNET_RAFT_SIDECAR_BIN="$REL/machnet" MACHNET_RAFT_UDP_BASE="$POOL"

# ----- go test -----
echo "raft: go test -race" >&2
timeout 600 go test -race -count=1 -v -timeout 540s ./... 2>&1 | tee "$DIR/go.out"
PASSED=$((PASSED + $(grep -cE '^\s*--- PASS' "$DIR/go.out")))
gofail=$(grep -cE '^\s*--- FAIL' "$DIR/go.out")
FAILED=$((FAILED + gofail))
while read -r line; do FAILURES+=("Go: $line"); done < <(grep -E '^\s*--- FAIL' "$DIR/go.out")
if grep -qE '^(FAIL|panic:)' "$DIR/go.out" && [ "$gofail" -eq 0 ]; then
    fail "go test (failed outside a test: build error, panic or timeout)"
fi
if ! grep -qE '^\s*--- (PASS|FAIL)' "$DIR/go.out"; then
    fail "go test ran no test"
fi

# ----- latency: Machnet transport vs raft's TCP transport, same run -----
echo "raft: latency comparison" >&2
if timeout 300 "$DIR/raft-latency" --sockets "$MACHNET_RAFT_SOCKETS" --ips "$MACHNET_RAFT_IPS" \
    --count "${LAT_COUNT:-2000}" --warmup 200 --size 80 2>"$DIR/latency.err"; then
    pass "latency comparison (every command committed on all 3 nodes, both transports)"
else
    tail -20 "$DIR/latency.err" >&2
    fail "latency comparison"
fi

# ----- conformance cases of app `raft`, Rust runner, against a raft-node cluster -----
echo "raft: conformance cases (Rust runner) against a 3-node raft-node cluster" >&2
cd "$ROOT"
if ! start_raft_cluster "$DIR/raft-node" "$DIR" "$DIR/a.sock" 127.0.0.1 "$RAFT_BASE_PORT"; then
    fail "raft-node cluster with KV front ends start"
    finish
fi
MACHNET_CONFORMANCE_SERVER_IP=127.0.0.1 MACHNET_CONFORMANCE_CLIENT_SOCKET=$DIR/b.sock \
    timeout 900 cargo test -p machnet-conformance --test conformance raft_cases -- --exact \
    --nocapture 2>&1 | tee "$DIR/conformance.out"
# The runner skips (passing) without a cluster: count it only if it ran the cases.
if grep -q '^test raft_cases \.\.\. ok' "$DIR/conformance.out" &&
    grep -q '^conformance: ran [1-9][0-9]* raft cases' "$DIR/conformance.out"; then
    pass "conformance: $(grep -c '^conformance: "raft_' "$DIR/conformance.out") raft cases (Rust runner)"
else
    fail "conformance: raft cases (Rust runner)"
fi

finish
