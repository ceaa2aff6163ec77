#!/usr/bin/env bash
# The Node.js package (node/): `npm ci`, builds the napi-rs addon, packs it as a release does (the
# main package and the platform package with the .node, ci/lib/node-package.sh), installs both
# tarballs into a fresh project (no Rust needed there), type-checks a usage file with
# `tsc --strict`, builds the sidecar, echo and KV binaries, starts two real sidecars (kernel UDP
# on 127.0.0.1 / 127.0.0.2, private control sockets in a temp dir, no root), the Rust echo server,
# `machnet-kv server` and a 3-node Raft cluster (examples/raft `raft-node --kv-port`, built with
# Go), runs the `node --test` suite from the installed package (including the
# cross-language conformance cases of conformance/cases.json, test/conformance.test.js),
# fmt + clippy on the addon crate, and a short Node-vs-Rust echo RTT comparison (64 B, window 1;
# informational).
#
#   ci/node.sh                      # BENCH_DURATION=3 (seconds per client), 0 skips the benchmark
#
# Respects CARGO_TARGET_DIR (default: target/ of the checkout). Ends with exactly one line
# `RESULT: <P> passed, <F> failed` and exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
BENCH_DURATION=${BENCH_DURATION:-3}
ECHO_PORT=888
KV_PORT=900

SUITE=node
# shellcheck source=lib/suite.sh
. ci/lib/suite.sh
WORK=$DIR

# The build and the packing, shared with ci/release/node.sh.
# shellcheck source=lib/node-package.sh
. ci/lib/node-package.sh

echo "== npm ci, addon (napi build --release)"
node_build_addon || die "npm ci / napi build"
pass "addon built"

echo "== pack (napi-rs per-platform layout, as ci/release/node.sh)"
mapfile -t TARBALLS < <(node_pack "$WORK/pack")
[ ${#TARBALLS[@]} -eq 2 ] || die "packing: expected 2 tarballs, got ${TARBALLS[*]}"
for t in "${TARBALLS[@]}"; do echo "packed $(basename "$t") ($(du -k "$t" | cut -f1) KiB)"; done

echo "== fresh project with the tarballs"
APP=$WORK/app
mkdir -p "$APP"
(cd "$APP" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error "${TARBALLS[@]}") \
    || die "npm install of the tarballs"
# Loads from the fresh project, with no cargo or rustc on PATH.
(cd "$APP" && PATH=$(dirname "$(command -v node)") node -e '
    const m = require("machnet")
    if (!require.resolve("machnet").startsWith(process.cwd() + "/node_modules/")) throw new Error("not the installed copy")
    if (!require.resolve("@machnet-rs/machnet-linux-x64-gnu").startsWith(process.cwd() + "/node_modules/@machnet-rs/")) throw new Error("no platform package")
    if (typeof m.attach !== "function" || typeof m.Channel.prototype[Symbol.asyncIterator] !== "function") throw new Error("API missing")
    console.log("machnet", require("machnet/package.json").version, "loads from", require.resolve("machnet"))') \
    && pass "tarball installs and loads without Rust" || fail "tarball load"

echo "== tsc --strict on the usage file"
mkdir -p "$APP/ts"
cp node/test/usage.ts "$APP/ts/"
cat >"$APP/ts/tsconfig.json" <<JSON
{
  "compilerOptions": {
    "strict": true, "noEmit": true, "target": "es2022", "module": "commonjs",
    "moduleResolution": "node", "types": ["node"], "typeRoots": ["$ROOT/node/node_modules/@types"]
  },
  "files": ["usage.ts"]
}
JSON
(cd "$APP/ts" && "$ROOT/node/node_modules/.bin/tsc" -p tsconfig.json) && pass "tsc --strict" || fail "tsc --strict"

echo "== rustfmt + clippy on the addon crate"
cargo fmt --manifest-path node/Cargo.toml -- --check && pass "rustfmt" || fail "rustfmt"
cargo clippy --quiet --release --manifest-path node/Cargo.toml --all-targets -- -D warnings \
    && pass "clippy" || fail "clippy"

echo "== sidecar, echo and KV binaries"
cargo build --quiet --release -p machnet-sidecar -p machnet-echo -p machnet-kv -p machnet-ffi || die "cargo build"
BIN=$TARGET/release

# Shared with the other scripts: sidecars on a free UDP port pool, the echo and KV apps.
# shellcheck source=lib/sidecars.sh
. ci/lib/sidecars.sh
# With the Raft app of the conformance cases (examples/raft, Go; links libmachnet.a):
# start_test_apps exports MACHNET_CONFORMANCE_RAFT_PORT.
start_test_apps "$BIN" "$WORK" "$ECHO_PORT" "$KV_PORT" raft ||
    die "sidecars, echo, kv servers and raft cluster start"

echo "== node --test (the installed package)"
mkdir -p "$APP/test"
cp node/test/*.test.js node/test/helpers.js "$APP/test/"
export MACHNET_TEST_SOCKET_A=$WORK/a.sock MACHNET_TEST_SOCKET_B=$WORK/b.sock
export MACHNET_TEST_ECHO_IP=127.0.0.1 MACHNET_TEST_ECHO_PORT=$ECHO_PORT MACHNET_TEST_SIDECAR=$BIN/machnet
export MACHNET_TEST_SIDECAR_ARGS="--udp-port-base $POOL --udp-port-count 8"
# test/conformance.test.js (conformance/README.md); the client sidecar is MACHNET_TEST_SOCKET_B,
# the server sidecar MACHNET_TEST_SOCKET_A.
export MACHNET_CONFORMANCE_CASES=$ROOT/conformance/cases.json MACHNET_CONFORMANCE_SERVER_IP=127.0.0.1
export MACHNET_CONFORMANCE_ECHO_PORT=$ECHO_PORT MACHNET_CONFORMANCE_KV_PORT=$KV_PORT
(cd "$APP" && node --test --test-concurrency=1 --test-timeout=120000 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$WORK/tap.txt" test/*.test.js)
NODE_RC=$?
TP=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$WORK/tap.txt" | tail -1)
TF=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$WORK/tap.txt" | tail -1)
TP=${TP:-0}
TF=${TF:-0}
echo "node --test: $TP passed, $TF failed (exit $NODE_RC)"
PASSED=$((PASSED + TP))
FAILED=$((FAILED + TF))
if [ "$NODE_RC" -ne 0 ] && [ "$TF" -eq 0 ]; then fail "node --test exited $NODE_RC"; fi
[ "$TP" -gt 0 ] || fail "node --test ran no test"

if [ "$BENCH_DURATION" != 0 ]; then
    echo "== echo RTT, 64 B, window 1: Node client vs Rust client (same sidecars and server)"
    cp -r node/bench "$APP/"
    (cd "$APP" && node bench/echo-client.js --socket "$WORK/b.sock" --remote 127.0.0.1 \
        --port "$ECHO_PORT" --size 64 --window 1 --duration "$BENCH_DURATION" --warmup 0.5 --json) \
        >"$WORK/bench.jsonl" || fail "node echo client"
    "$BIN/machnet-echo" client --socket "$WORK/b.sock" --remote 127.0.0.1 --port "$ECHO_PORT" \
        --size 64 --window 1 --duration "$BENCH_DURATION" --warmup 0.5 --json \
        >>"$WORK/bench.jsonl" || fail "rust echo client"
    node -e '
        const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse)
        const pick = (m) => rows.find((r) => r.mode === m)
        for (const r of rows) console.log(`${r.mode.padEnd(13)} ${String(r.size).padStart(5)} B win ${r.window}: ${r.msgs_per_sec.toFixed(0).padStart(7)} msgs/s  RTT p50 ${r.rtt_us.p50.toFixed(1).padStart(6)} us  p99 ${r.rtt_us.p99.toFixed(1).padStart(6)} us  p99.9 ${r.rtt_us.p999.toFixed(1).padStart(6)} us`)
        const n = pick("machnet-node"), r = rows.find((x) => x.mode !== "machnet-node")
        const diff = (a, b) => `${a >= b ? "+" : ""}${(a - b).toFixed(1)} us`
        if (n && r) console.log(`Node/Rust RTT at 64 B, window 1: p50 ${(n.rtt_us.p50 / r.rtt_us.p50).toFixed(2)}x (${diff(n.rtt_us.p50, r.rtt_us.p50)}), p99 ${(n.rtt_us.p99 / r.rtt_us.p99).toFixed(2)}x (${diff(n.rtt_us.p99, r.rtt_us.p99)})`)
    ' "$WORK/bench.jsonl" && pass "echo benchmark (Node vs Rust)" || fail "benchmark report"
fi

finish
