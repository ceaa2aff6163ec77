#!/usr/bin/env bash
# Release part `c`: the C SDK of machnet-ffi, as an installable prefix in a tarball.
#
#   bash ci/release/c.sh          (or from ci/release.sh, which sets the variables below)
#
# Output: $DIST/c/machnet-c-sdk-$VERSION-linux-x86_64.tar.gz, one directory of that name:
#   include/machnet.h                 the checked-in header (ci/ffi.sh keeps it current)
#   lib/libmachnet.so.0.1.0           soname libmachnet.so.0.1 (0.x.y: ABI changes with x)
#   lib/libmachnet.so.0.1 -> libmachnet.so.0.1.0, lib/libmachnet.so -> libmachnet.so.0.1
#   lib/libmachnet.a
#   lib/pkgconfig/machnet.pc          Libs.private: the system libraries libmachnet.a needs
#   share/doc/machnet/README.md
# The layout, names and .pc fields are cargo-c's (`cargo cinstall`, configured by
# [package.metadata.capi] in machnet-ffi/Cargo.toml), but cargo-c itself is not used: it
# compiles Cargo and took ~15 CPU-minutes to install here, over CI's budget. Instead this
# script packages $REL/libmachnet.{so,a} from the release build, sets the soname with
# patchelf, and writes machnet.pc; the install test (ci/install/c.sh) links both libraries
# through the .pc file and runs the programs.
# machnet.pc says prefix=${pcfiledir}/../..: the prefix works wherever it is unpacked
# (PKG_CONFIG_PATH=<dir>/lib/pkgconfig), e.g. `tar -xzf ... -C /usr/local --strip-components=1`.
#
# Env (ci/lib/release.sh sets defaults): ROOT, REL, DIST, VERSION. Needs patchelf (Debian
# package; .ci/run installs it).
set -euo pipefail
# shellcheck source=ci/lib/release.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/release.sh"

NAME=machnet-c-sdk-$VERSION-linux-x86_64
OUT=$DIST/c
# The system libraries Rust's std needs in a static library on x86_64-unknown-linux-gnu
# (rustc --print native-static-libs; machnet-ffi's dependencies add none). ci/install/c.sh
# links a program with exactly these.
NATIVE_STATIC_LIBS="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
DESCRIPTION="Machnet C API: attach to the machnet sidecar and exchange messages over shared memory"

# The soname: major.minor while the major version is 0 (semver: 0.1 -> 0.2 may break), as cargo-c.
soname_version() {
    local major minor
    IFS=. read -r major minor _ <<<"$VERSION"
    if [ "$major" = 0 ]; then echo "$major.$minor"; else echo "$major"; fi
}

# Nothing to do after ci/release.sh's build (same command there); standalone, builds it.
build_ffi() {
    (cd "$ROOT" && cargo build --release --locked -p machnet-ffi -p machnet-sidecar -p machnet-echo >&2)
}

# install_libs LIBDIR: the shared library under its full version with the soname set, its two
# symlinks, and the static library; both without the release profile's debug line tables
# (archive 34 -> 17 MB, shared library 8.6 -> 1 MB).
install_libs() {
    local lib=$1 so
    so=libmachnet.so.$(soname_version)
    install -Dm755 "$REL/libmachnet.so" "$lib/libmachnet.so.$VERSION"
    strip --strip-debug "$lib/libmachnet.so.$VERSION"
    patchelf --set-soname "$so" "$lib/libmachnet.so.$VERSION"
    ln -s "libmachnet.so.$VERSION" "$lib/$so"
    ln -s "$so" "$lib/libmachnet.so"
    install -m644 "$REL/libmachnet.a" "$lib/libmachnet.a"
    strip --strip-debug "$lib/libmachnet.a"
}

# write_pc FILE: pkg-config file of a relocatable prefix (two levels above the .pc file).
write_pc() {
    # shellcheck disable=SC2016 # ${...} below are pkg-config's variables
    printf '%s\n' \
        'prefix=${pcfiledir}/../..' \
        'exec_prefix=${prefix}' \
        'libdir=${exec_prefix}/lib' \
        'includedir=${prefix}/include' \
        '' \
        'Name: machnet' \
        "Description: $DESCRIPTION" \
        "Version: $VERSION" \
        'Libs: -L${libdir} -lmachnet' \
        "Libs.private: $NATIVE_STATIC_LIBS" \
        'Cflags: -I${includedir}' >"$1"
}

# Fails unless the prefix holds what the SDK promises.
check_prefix() {
    local p=$1 so f
    so=libmachnet.so.$(soname_version)
    for f in include/machnet.h lib/libmachnet.a lib/pkgconfig/machnet.pc; do
        [ -f "$p/$f" ] || { echo "c: $f missing" >&2; return 1; }
    done
    if [ "$(readelf -d "$p/lib/libmachnet.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')" != "$so" ] ||
        [ "$(readlink -f "$p/lib/libmachnet.so")" != "$(readlink -f "$p/lib/libmachnet.so.$VERSION")" ]; then
        echo "c: lib/libmachnet.so: no soname $so or broken symlinks" >&2
        return 1
    fi
    if [ "$(PKG_CONFIG_PATH=$p/lib/pkgconfig pkg-config --modversion machnet)" != "$VERSION" ]; then
        echo "c: pkg-config does not read machnet.pc" >&2
        return 1
    fi
}

main() {
    command -v patchelf >/dev/null || { echo "c: patchelf is not installed (apt-get install patchelf)" >&2; return 1; }
    build_ffi
    local sdk
    STAGE=$(mktemp -d)
    trap 'rm -rf "$STAGE"' EXIT
    sdk=$STAGE/$NAME
    install_libs "$sdk/lib"
    install -Dm644 "$ROOT/machnet-ffi/include/machnet.h" "$sdk/include/machnet.h"
    mkdir -p "$sdk/lib/pkgconfig"
    write_pc "$sdk/lib/pkgconfig/machnet.pc"
    install -Dm644 "$ROOT/machnet-ffi/README.md" "$sdk/share/doc/machnet/README.md"
    check_prefix "$sdk"
    rm -rf "$OUT"
    mkdir -p "$OUT"
    tar -C "$STAGE" --owner=0 --group=0 --numeric-owner --sort=name -czf "$OUT/$NAME.tar.gz" "$NAME"
    artifact "$OUT/$NAME.tar.gz"
}

main "$@"
