#!/usr/bin/env bash
# Install test: the NuGet package from the release artifacts, as a mono user gets it, without
# Rust. In a fresh program directory in $WORK: `nuget install Machnet -Source $DIST/nuget
# -OutputDirectory packages` (Debian's nuget 2.8.7, the local feed only, no cache), compiles the
# csharp/README.md example (taken from $ROOT/csharp/README.md, only socket/address/port
# replaced) with mcs against the package's lib/netstandard2.0/Machnet.dll, runs it with mono
# on the package in place (MONO_PATH; nothing copied, no LD_LIBRARY_PATH: the package's
# Machnet.dll.config maps the native library) against MACHNET_SOCK -> ECHO_IP:ECHO_PORT, and
# checks its report of the echoes.
#
# Env (ci/install-test.sh): DIST, WORK, MACHNET_SOCK, ECHO_IP, ECHO_PORT, ROOT (README only);
# VERSION (default 0.1.0). Needs mono, mcs and nuget (Debian's mono-runtime, mono-mcs, nuget,
# libmono-system-core4.0-cil; installed with apt-get if missing). Prints `install-nuget: ok -
# ...` / `install-nuget: FAIL - ...` lines and exits non-zero on failure.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/install.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/install.sh"
# shellcheck disable=SC2034 # read by ok/bad (ci/lib/install.sh)
PART=nuget

VERSION=${VERSION:-0.1.0}
APP=$WORK/app
LIBDIR=packages/Machnet.$VERSION/lib/netstandard2.0
# What the README example prints when every echo matched.
EXPECTED='echoed 5 bytes: hello
echoed 7 bytes: machnet
echoed 100000 bytes: 0123456789'

mono_toolchain() {
    command -v mono >/dev/null && command -v mcs >/dev/null && command -v nuget >/dev/null &&
        return 0
    apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            mono-mcs mono-runtime libmono-system-core4.0-cil nuget >"$WORK/apt.log" 2>&1
}

# The fenced csharp block after the `<!-- install-test: ci/install/nuget.sh -->` marker, with
# the example's socket, address and port replaced by ours (each must occur exactly once).
readme_example() { # out
    local src lit
    src=$(awk '/<!-- install-test: ci\/install\/nuget.sh -->/ {m=1; next}
        m && /^```csharp$/ {p=1; next} p && /^```$/ {exit} p' "$ROOT/csharp/README.md")
    for lit in '"/run/machnet/machnet.sock"' '"10.0.0.1"' 'Port = 888;'; do
        [ "$(grep -cF "$lit" <<<"$src")" = 1 ] || return 1
    done
    src=${src/'"/run/machnet/machnet.sock"'/"\"$MACHNET_SOCK\""}
    src=${src/'"10.0.0.1"'/"\"$ECHO_IP\""}
    src=${src/'Port = 888;'/"Port = $ECHO_PORT;"}
    printf '%s\n' "$src" >"$1"
}

main() {
    rustless_path
    require_no_rust || { bad "Rust toolchain reachable"; exit 1; }
    mono_toolchain || { bad "mono/mcs/nuget missing and apt-get install failed"; exit 1; }
    mkdir -p "$APP" && cd "$APP" || exit 1
    readme_example Program.cs || { bad "no example (with socket/address/port) in csharp/README.md"; exit 1; }
    if nuget install Machnet -Version "$VERSION" -Source "$DIST/nuget" -OutputDirectory packages \
        -NonInteractive -NoCache >"$WORK/nuget.log" 2>&1 && [ -f "$LIBDIR/Machnet.dll" ]; then
        ok "nuget install Machnet $VERSION from the local feed $DIST/nuget"
    else
        bad "nuget install: $(cat "$WORK/nuget.log")"
        exit 1
    fi
    if mcs -langversion:7.2 -out:Echo.exe -r:"$LIBDIR/Machnet.dll" Program.cs >"$WORK/mcs.log" 2>&1; then
        ok "mcs (C# 7.2) compiled the README example against $LIBDIR/Machnet.dll"
    else
        bad "mcs: $(cat "$WORK/mcs.log")"
        exit 1
    fi
    local out
    if ! out=$(env -u LD_LIBRARY_PATH MONO_PATH="$LIBDIR" timeout 60 mono Echo.exe 2>&1); then
        bad "the example failed: $out"
    elif [ "$out" != "$EXPECTED" ]; then
        bad "unexpected report: $out"
    elif [ -n "$(find . -name 'libmachnet.so*' -not -path './packages/Machnet.*/runtimes/*')" ]; then
        bad "a libmachnet.so outside the package's runtimes/: $(find . -name 'libmachnet.so*')"
    else
        ok "mono ran it on the package in place (dllmap to runtimes/linux-x64/native): 3 messages (5 B, 7 B, 100000 B) echoed byte for byte"
    fi
    [ "$INSTALL_FAILED" -eq 0 ]
}

main "$@"
