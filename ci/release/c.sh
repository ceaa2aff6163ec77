#!/usr/bin/env bash
# Release part `c`: the C SDK, built with cargo-c (`cargo cinstall`) from machnet-ffi.
#
#   bash ci/release/c.sh          (or from ci/release.sh, which sets the variables below)
#
# Output: $DIST/c/machnet-c-sdk-$VERSION-linux-x86_64.tar.gz, one directory of that name holding
# an installable prefix:
#   include/machnet.h
#   lib/libmachnet.so -> libmachnet.so.0.1 -> libmachnet.so.0.1.0   (soname libmachnet.so.0.1)
#   lib/libmachnet.a
#   lib/pkgconfig/machnet.pc   (Libs.private: the system libraries libmachnet.a needs)
#   share/doc/machnet/README.md
# machnet.pc says prefix=${pcfiledir}/../.., so the prefix works wherever it is unpacked
# (PKG_CONFIG_PATH=<dir>/lib/pkgconfig), e.g. `tar -xzf ... -C /usr/local --strip-components=1`.
#
# Env (ci/lib/release.sh sets defaults): ROOT, TARGET (cargo-c builds into
# $TARGET/x86_64-unknown-linux-gnu/release), DIST, VERSION. Needs cargo-c (`cargo cinstall`):
# .ci/run installs it.
set -euo pipefail
# shellcheck source=ci/lib/release.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/release.sh"

NAME=machnet-c-sdk-$VERSION-linux-x86_64
OUT=$DIST/c

require_cargo_c() {
    if ! cargo cinstall --version >/dev/null 2>&1; then
        echo "c: cargo-c is not installed: cargo install cargo-c@0.10.24 --locked" >&2
        return 1
    fi
}

# Builds and installs machnet-ffi into STAGE/usr/local with cargo-c.
cinstall() {
    local stage=$1
    (cd "$ROOT" && cargo cinstall --release --locked -p machnet-ffi \
        --prefix=/usr/local --libdir=lib --destdir="$stage" >&2)
}

# Makes the pkg-config file relocatable: the prefix is two levels above the .pc file.
relocate_pc() {
    local pc=$1
    # shellcheck disable=SC2016 # ${pcfiledir} is pkg-config's variable, not the shell's
    local line='prefix=${pcfiledir}/../..'
    sed -i "s|^prefix=.*|$line|" "$pc"
    grep -qxF "$line" "$pc"
}

# Fails unless the prefix holds what the SDK promises.
check_prefix() {
    local p=$1 soname
    local f
    for f in include/machnet.h lib/libmachnet.a lib/pkgconfig/machnet.pc; do
        [ -f "$p/$f" ] || { echo "c: $f missing" >&2; return 1; }
    done
    [ -L "$p/lib/libmachnet.so" ] || { echo "c: lib/libmachnet.so is not a symlink" >&2; return 1; }
    soname=$(readelf -d "$p/lib/libmachnet.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    if [ -z "$soname" ] || [ ! -L "$p/lib/$soname" ]; then
        echo "c: soname '$soname' has no symlink in lib/" >&2
        return 1
    fi
    grep -q '^Libs.private: .*-l' "$p/lib/pkgconfig/machnet.pc" || {
        echo "c: machnet.pc has no Libs.private" >&2
        return 1
    }
}

main() {
    require_cargo_c
    local stage sdk
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    cinstall "$stage"
    sdk=$stage/$NAME
    mv "$stage/usr/local" "$sdk"
    relocate_pc "$sdk/lib/pkgconfig/machnet.pc"
    install -Dm644 "$ROOT/machnet-ffi/README.md" "$sdk/share/doc/machnet/README.md"
    check_prefix "$sdk"
    rm -rf "$OUT"
    mkdir -p "$OUT"
    tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$OUT/$NAME.tar.gz" "$NAME"
    artifact "$OUT/$NAME.tar.gz"
}

main "$@"
