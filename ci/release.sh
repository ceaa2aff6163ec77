#!/usr/bin/env bash
# Builds every artifact a user installs into dist/ (DIST overrides; see docs/INSTALL.md):
#
#   ci/release.sh                 every part
#   ci/release.sh python node     only these parts (ci/release/<part>.sh)
#
# Parts (each writes only under $DIST/<part>/ and prints one `artifact` line per file it made):
#   c        C SDK made with cargo-c: machnet.h, libmachnet.so with a soname, libmachnet.a, machnet.pc
#   deb      the sidecar as a Debian package (cargo-deb) with a systemd unit and a default config
#   crates   every publishable crate packaged (`cargo package`, what `cargo publish` uploads)
#   python   abi3 manylinux wheel and sdist
#   node     npm tarballs in napi-rs's per-platform layout
#   go       the Go module with the static library for linux/amd64, in GOPROXY file layout
#   nuget    Machnet.nupkg (netstandard2.0, runtimes/linux-x64/native)
#
# Builds the shared Rust binaries once first (release profile, $CARGO_TARGET_DIR or target/).
# Exits non-zero if any part failed (the others still run); the last line says which.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/release.sh
. ci/lib/release.sh

ALL_PARTS=(c deb crates python node go nuget)
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=("${ALL_PARTS[@]}")

echo "release: version $VERSION into $DIST" >&2
if ! cargo build --release -p machnet-ffi -p machnet-sidecar -p machnet-echo; then
    echo "release: cargo build failed" >&2
    exit 1
fi

failed=()
for part in "${parts[@]}"; do
    script=ci/release/$part.sh
    if [ ! -f "$script" ]; then
        echo "release: no such part: $part (parts: ${ALL_PARTS[*]})" >&2
        failed+=("$part")
        continue
    fi
    start=$(date +%s)
    rm -rf "${DIST:?}/$part"
    mkdir -p "$DIST/$part"
    if bash "$script"; then
        echo "release: $part done in $(($(date +%s) - start)) s" >&2
    else
        echo "release: $part FAILED" >&2
        failed+=("$part")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "release: failed parts: ${failed[*]}"
    exit 1
fi
echo "release: all ${#parts[@]} parts in $DIST"
