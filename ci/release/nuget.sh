#!/usr/bin/env bash
# Release part: the NuGet package Machnet.$VERSION.nupkg in $DIST/nuget/ (a local feed: `nuget
# install Machnet -Source $DIST/nuget`, `dotnet add package Machnet --source $DIST/nuget`):
#
#   lib/netstandard2.0/Machnet.dll, .xml   the C# binding (mono's mcs, C# 7.2; ci/lib/csharp.sh
#                                          says why it is built against mono's 4.5 profile)
#   lib/netstandard2.0/Machnet.dll.config  mono: maps [DllImport("machnet")] to the package's
#                                          runtimes/linux-x64/native/libmachnet.so
#   build/Machnet.targets                  packages.config / non-SDK msbuild projects: copies
#                                          libmachnet.so next to the output
#   runtimes/linux-x64/native/libmachnet.so  .NET (Core) finds it there by itself
#
# Same package as ci/csharp.sh tests (csharp_build_lib, csharp_pack in ci/lib/csharp.sh; the
# nuspec is csharp/Machnet.nuspec). Env (defaults from ci/lib/release.sh): ROOT, TARGET, REL,
# DIST, VERSION. Installs mono/nuget with apt-get if missing; builds `cargo build --release -p
# machnet-ffi` (a no-op after ci/release.sh). Prints one `artifact` line and exits non-zero on
# failure.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/release.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/release.sh"
# shellcheck source-path=SCRIPTDIR source=../lib/csharp.sh
. "$ROOT/ci/lib/csharp.sh"

OUT=$DIST/nuget

die() {
    echo "release-nuget: $*" >&2
    exit 1
}

main() {
    local work nupkg=$OUT/Machnet.$VERSION.nupkg
    work=$(mktemp -d -t release-nuget.XXXXXX) || die "mktemp"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    csharp_toolchain "$work/apt.log" || die "installing mono/nuget"
    cargo build --release -p machnet-ffi >&2 || die "cargo build -p machnet-ffi"
    csharp_build_lib "$ROOT" "$work/bin" || die "mcs (csharp/src)"
    rm -rf "$OUT"
    csharp_pack "$ROOT" "$work/bin" "$REL/libmachnet.so" "$VERSION" "$work/stage" "$OUT" ||
        die "nuget pack"
    csharp_check_nupkg "$nupkg" || die "package layout"
    artifact "$nupkg"
}

main "$@"
