#!/usr/bin/env bash
# The Python package (python/): builds the abi3 wheel with maturin, installs it with pip into a
# fresh virtualenv, builds the sidecar, echo and KV binaries and examples/raft's `raft-node` (Go),
# then runs mypy, the pytest suite against real sidecars (kernel UDP on 127.0.0.1 / 127.0.0.2,
# private sockets in a temp dir, no root; the pytest fixtures start and stop them, the echo and
# KV servers and the Raft cluster; the suite includes
# the cross-language conformance cases of conformance/cases.json, tests/test_conformance.py),
# fmt + clippy on the extension crate, and a short Python-vs-Rust echo benchmark (informational).
#
#   ci/python.sh                  # MANYLINUX=2014 (default, via `pip install ziglang`) or MANYLINUX=native
#
# Respects CARGO_TARGET_DIR (default: target/ of the checkout), where it also keeps the build venv
# (maturin, ziglang); the venv the wheel is tested in is new each run. Ends with exactly one line
# `RESULT: <P> passed, <F> failed` and exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
PY=${PYTHON:-python3}
# Pinned test tools (the build tools: ci/lib/python-wheel.sh).
PYTEST=pytest==9.2.0
MYPY=mypy==2.4.1

PYTEST_PGID=
# pytest runs in its own process group (setsid): stop it and the sidecars it started.
suite_on_exit() {
    if [ -n "$PYTEST_PGID" ]; then kill -TERM -- "-$PYTEST_PGID" 2>/dev/null || true; fi
}
SUITE=python
# shellcheck source=lib/suite.sh
. ci/lib/suite.sh
WORK=$DIR

# The wheel build, shared with ci/release/python.sh: maturin (+ zig for manylinux2014) from a
# build venv kept in the target dir.
# shellcheck source=lib/python-wheel.sh
. ci/lib/python-wheel.sh

echo "== tools (build venv, kept in the target dir between runs)"
python_build_tools || die "build tools"

echo "== wheel"
WHEEL=$(python_build_wheel "$WORK/wheels" | tail -1) && [ -f "$WHEEL" ] || die "maturin build"
echo "built $(basename "$WHEEL")"
pass "wheel built"

echo "== fresh virtualenv with the wheel (a new temporary directory each run)"
"$PY" -m venv "$WORK/venv" || die "venv"
V=$WORK/venv/bin
"$V/pip" install -q --disable-pip-version-check "$WHEEL" "$PYTEST" "$MYPY" || die "pip install wheel"
(cd "$WORK" && "$V/python" -c 'import machnet, sys; assert "site-packages" in machnet.__file__, machnet.__file__; print("machnet", machnet.__version__, "from", machnet.__file__)') \
    && pass "wheel installs and imports" || fail "wheel import"

echo "== sidecar, echo and KV binaries"
cargo build --quiet --release -p machnet-sidecar -p machnet-echo -p machnet-kv -p machnet-ffi || die "cargo build"
export MACHNET_BIN_DIR=$TARGET/release
# The conformance cases' Raft app (examples/raft, Go; the raft_cluster fixture starts it).
# shellcheck source=lib/sidecars.sh
. ci/lib/sidecars.sh
build_raft_node "$TARGET/release" "$WORK/raft-node" || die "raft-node build (examples/raft, Go)"
export MACHNET_RAFT_NODE_BIN=$WORK/raft-node
# tests/test_conformance.py: the cases (the fixtures start `machnet-kv server` on sidecar a).
export MACHNET_CONFORMANCE_CASES=$ROOT/conformance/cases.json

echo "== mypy (strict) on the package, tests and benchmark"
(cd python && "$V/mypy" --cache-dir "$WORK/mypy-cache") && pass "mypy" || fail "mypy"

echo "== rustfmt + clippy on the extension crate"
cargo fmt --manifest-path python/Cargo.toml -- --check && pass "rustfmt" || fail "rustfmt"
PYO3_PYTHON="$V/python" cargo clippy --quiet --release --manifest-path python/Cargo.toml \
    --all-targets -- -D warnings && pass "clippy" || fail "clippy"

echo "== pytest"
TESTS_START=$(date +%s)
# From tests/ so that the checkout's machnet/ sources do not shadow the installed wheel.
(cd python/tests && exec setsid "$V/python" -m pytest -q -p no:cacheprovider \
    --junitxml="$WORK/junit.xml" -o junit_family=xunit2) &
PYTEST_PGID=$!
wait "$PYTEST_PGID"
PYTEST_RC=$?
PYTEST_PGID=
if [ -f "$WORK/junit.xml" ]; then
    read -r T F <<<"$("$V/python" - "$WORK/junit.xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tests = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(tests - bad - skipped, bad)
PYEOF
)"
    PASSED=$((PASSED + T))
    FAILED=$((FAILED + F))
fi
if [ "$PYTEST_RC" -ne 0 ] && [ "${F:-0}" -eq 0 ]; then fail "pytest exited $PYTEST_RC"; fi
echo "pytest took $(( $(date +%s) - TESTS_START )) s"

echo "== benchmark: Python vs Rust echo client, 64 B, window 1 (informational)"
(cd python/tests && "$V/python" ../bench/compare.py --duration "${BENCH_DURATION:-2}" \
    --warmup 0.5 --rounds "${BENCH_ROUNDS:-3}" --asyncio) && pass "benchmark ran, every echo verified" \
    || fail "benchmark"

finish
