# Shared by ci/release.sh and its parts ci/release/<part>.sh (source it; bash only). Sets, unless
# already set: ROOT (the clone), TARGET (cargo's target dir, CARGO_TARGET_DIR or $ROOT/target),
# REL ($TARGET/release), DIST (where artifacts go, absolute; default $ROOT/dist) and VERSION (the
# workspace version). A part writes only under $DIST/<part>/ and prints one line per artifact
# (`artifact` does it).

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TARGET=${TARGET:-${CARGO_TARGET_DIR:-$ROOT/target}}
REL=${REL:-$TARGET/release}
DIST=${DIST:-$ROOT/dist}
mkdir -p "$DIST"
DIST=$(cd "$DIST" && pwd)
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/rust-client/Cargo.toml" | head -1)}
export ROOT TARGET REL DIST VERSION
export CARGO_TARGET_DIR=$TARGET
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# Toolchains installed in their usual places but not on PATH (e.g. a bare CI environment).
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/go/bin"

artifact() { # path...: prints each artifact with its size
    local f
    for f in "$@"; do
        printf 'artifact %-60s %10s B\n' "${f#"$DIST"/}" "$(stat -c %s "$f")"
    done
}
