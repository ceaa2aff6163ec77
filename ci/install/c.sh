#!/usr/bin/env bash
# Install test `c`: the C SDK as a user gets it, without Rust. Runs the install-and-build
# commands of machnet-ffi/README.md on the release tarball in a fresh project ($WORK), with the
# README's example program (echo_client.c) extracted from the README; builds it shared (rpath)
# and static (no libmachnet.so at run time), checks both binaries' dynamic sections and runs
# both against the sidecar at $MACHNET_SOCK and the echo server at $ECHO_IP:$ECHO_PORT (each
# checks three echoes byte for byte).
#
# Env (from ci/install-test.sh; see ci/lib/install.sh): DIST (holds c/machnet-c-sdk-*.tar.gz),
# WORK, MACHNET_SOCK, ECHO_IP, ECHO_PORT, ROOT (only the README is read from it).
# Output: `install-c: ok - ...` / `install-c: FAIL - ...` lines; exit status 1 on any failure.
# ci/install/deb.sh sources this file for `prepare` and `install_and_build` (its echo client).
set -uo pipefail
# shellcheck source=ci/lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/install.sh"
PART=c
README=$ROOT/machnet-ffi/README.md
PROJECT=$WORK/project # the user's project: echo_client.c, the README's commands, the tarball

# extract_block LANG MARKER: prints README's first ```LANG block whose text contains MARKER.
extract_block() {
    awk -v lang="$1" -v mark="$2" '
        $0 == "```" lang { inb = 1; buf = ""; next }
        inb && $0 == "```" { inb = 0; if (index(buf, mark)) { printf "%s", buf; found = 1; exit } next }
        inb { buf = buf $0 "\n" }
        END { exit !found }' "$README"
}

# Puts the README's program and commands and the release tarball (under the README's name for
# it) into $PROJECT.
prepare() {
    local tarballs named
    tarballs=("$DIST"/c/machnet-c-sdk-*-linux-x86_64.tar.gz)
    if [ ${#tarballs[@]} -ne 1 ] || [ ! -f "${tarballs[0]}" ]; then
        bad "expected one $DIST/c/machnet-c-sdk-*-linux-x86_64.tar.gz (release part c)"
        return 1
    fi
    mkdir -p "$PROJECT" "$WORK/home"
    extract_block c "echo_client.c:" >"$PROJECT/echo_client.c" ||
        { bad "no echo_client.c example in $README"; return 1; }
    extract_block sh "machnet-c-sdk-" >"$PROJECT/install.sh" ||
        { bad "no install commands in $README"; return 1; }
    named=$(grep -o 'machnet-c-sdk-[^ ]*\.tar\.gz' "$PROJECT/install.sh" | head -1)
    [ "$named" = "$(basename "${tarballs[0]}")" ] ||
        { bad "README installs $named, the release made $(basename "${tarballs[0]}")"; return 1; }
    cp "${tarballs[0]}" "$PROJECT/"
}

# Runs the README's commands in $PROJECT with HOME=$WORK/home (they unpack into ~/machnet).
install_and_build() {
    if (cd "$PROJECT" && env -u PKG_CONFIG_PATH HOME="$WORK/home" bash -euo pipefail install.sh) \
        >"$WORK/build.log" 2>&1; then
        ok "README commands: SDK unpacked into a prefix, echo_client built shared and static with pkg-config"
    else
        bad "README commands failed: $(tail -n 5 "$WORK/build.log")"
        return 1
    fi
}

# Checks the two binaries' dynamic sections: the shared one needs the SDK's soname, found
# through its rpath; the static one has no libmachnet dependency.
check_linkage() {
    local soname needed
    soname=$(readelf -d "$WORK/home/machnet/lib/libmachnet.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    needed=$(readelf -d "$PROJECT/echo_client" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
    if [ -n "$soname" ] && [[ " $needed" == *" $soname "* ]] &&
        env -u LD_LIBRARY_PATH ldd "$PROJECT/echo_client" | grep -q "$soname => $WORK/home/machnet/lib/"; then
        ok "echo_client needs $soname and finds it in the prefix (rpath)"
    else
        bad "echo_client: soname '$soname', needs '$needed', ldd: $(ldd "$PROJECT/echo_client" | grep machnet)"
    fi
    needed=$(readelf -d "$PROJECT/echo_client_static" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
    if [ -n "$needed" ] && [[ "$needed" != *libmachnet* ]]; then
        ok "echo_client_static has no libmachnet dependency (needs: $needed)"
    else
        bad "echo_client_static needs: '$needed'"
    fi
}

# run_echo BINARY: runs it against the echo server; it checks the three echoes itself.
run_echo() {
    local bin=$1 out
    if out=$(cd "$PROJECT" && env -u LD_LIBRARY_PATH MACHNET_SOCKET="$MACHNET_SOCK" \
        timeout 60 "./$bin" "$ECHO_IP" "$ECHO_PORT" 2>&1) && [[ "$out" == "3 echoes ok"* ]]; then
        ok "$bin: $out"
    else
        bad "$bin against $ECHO_IP:$ECHO_PORT via $MACHNET_SOCK: $out"
    fi
}

main() {
    require_no_rust || { bad "Rust is reachable: an install test must not build Rust"; exit 1; }
    prepare || exit 1
    install_and_build || exit 1
    check_linkage
    run_echo echo_client
    run_echo echo_client_static
    [ "$INSTALL_FAILED" -eq 0 ]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
