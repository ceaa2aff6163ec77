#!/usr/bin/env bash
# Install tests without Rust: builds every artifact (ci/release.sh), copies dist/ out of the clone,
# starts two real sidecars (kernel UDP on 127.0.0.1 / 127.0.0.2, private control sockets, no root)
# and `machnet-echo server` on the first, then runs every ci/install/<part>.sh: each installs its
# artifact into a fresh project the way a user would (pip from a local index, npm from the
# tarballs, Go through a file-based module proxy, NuGet from a local feed with mono, C through
# pkg-config, the .deb with dpkg -i) with no cargo or rustc on PATH, and runs its README's example
# against the sidecar, checking every echo byte for byte.
#
#   ci/install-test.sh                 release, then every part
#   ci/install-test.sh go nuget        release and test only these parts
#   SKIP_RELEASE=1 DIST=dir ci/install-test.sh   test artifacts already in DIR
#
# Prints each part's time from the start of its install to its last check (the goal: first echo
# within 2 minutes) and ends with `RESULT: <P> passed, <F> failed` (every `ok` / `FAIL` line of
# the parts, plus a failure for a part that exits non-zero without saying why).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$TARGET/release
ECHO_PORT=888
KV_PORT=900

SUITE=install
# shellcheck source=lib/suite.sh
. ci/lib/suite.sh
# shellcheck source=lib/sidecars.sh
. ci/lib/sidecars.sh

ALL_PARTS=(c deb python node go nuget)
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=("${ALL_PARTS[@]}")
# The deb part echoes through the C SDK's example client: building deb builds c.
release_parts=("${parts[@]}")
if [[ " ${parts[*]} " == *" deb "* && " ${parts[*]} " != *" c "* ]]; then
    release_parts+=(c)
fi

# ----- artifacts -----
if [ "${SKIP_RELEASE:-0}" != 1 ]; then
    export DIST=${DIST:-$DIR/dist-build}
    [ $# -gt 0 ] || release_parts=() # no arguments: every release part, crates included
    if bash ci/release.sh "${release_parts[@]}"; then
        pass "release (ci/release.sh ${release_parts[*]:-every part})"
    else
        fail "release (ci/release.sh): see above"
    fi
fi
[ -n "${DIST:-}" ] && [ -d "$DIST" ] || die "no artifacts: set DIST (and SKIP_RELEASE=1) or let ci/release.sh build them"
# The install tests see a copy outside the clone.
cp -a "$DIST" "$DIR/dist" || die "copy $DIST"

# ----- sidecars and the echo server -----
cargo build --release -q -p machnet-sidecar -p machnet-echo -p machnet-kv || die "cargo build (test tools)"
start_test_apps "$REL" "$DIR" "$ECHO_PORT" "$KV_PORT" || die "starting the sidecars and the echo server"

# ----- the parts -----
TIMES=()
run_part() { # part
    local part=$1 log=$DIR/install-$1.log start rc
    local work=$DIR/work-$part
    mkdir -p "$work"
    start=$(date +%s%3N)
    (
        . ci/lib/install.sh
        rustless_path
        require_no_rust || exit 1
        cd "$work" || exit 1
        DIST=$DIR/dist WORK=$work MACHNET_SOCK=$DIR/b.sock ECHO_IP=127.0.0.1 ECHO_PORT=$ECHO_PORT \
            MACHNET_UDP_PORT_BASE=$POOL MACHNET_UDP_PORT_COUNT=8 ROOT=$ROOT \
            bash "$ROOT/ci/install/$part.sh"
    ) 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    local ms=$(($(date +%s%3N) - start))
    TIMES+=("$(printf '%-8s %4d.%d s' "$part" $((ms / 1000)) $((ms % 1000 / 100)))")
    local oks fails skips
    oks=$(grep -c "^install-$part: ok - " "$log")
    fails=$(grep -c "^install-$part: FAIL - " "$log")
    skips=$(grep -c "^install-$part: SKIP - " "$log")
    PASSED=$((PASSED + oks))
    FAILED=$((FAILED + fails))
    for _ in $(seq "$fails"); do FAILURES+=("$part: $(grep -m1 "^install-$part: FAIL - " "$log")"); done
    if [ "$rc" -ne 0 ] && [ "$fails" -eq 0 ]; then
        fail "$part: ci/install/$part.sh exited $rc without a FAIL line"
    elif [ "$oks" -eq 0 ] && [ "$fails" -eq 0 ] && [ "$skips" -eq 0 ]; then
        fail "$part: ci/install/$part.sh checked nothing"
    fi
}
for part in "${parts[@]}"; do
    if [ -f "ci/install/$part.sh" ]; then
        echo "== install test: $part"
        run_part "$part"
    else
        fail "no install test ci/install/$part.sh"
    fi
done

echo "install: time from install to the last check, per part (goal: first echo within 120 s)"
printf '  %s\n' "${TIMES[@]}"
finish
