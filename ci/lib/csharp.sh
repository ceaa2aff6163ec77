# shellcheck shell=bash
# Shared by ci/csharp.sh and ci/release/nuget.sh (source it; bash only): the C# toolchain, the
# library build and the NuGet package.
#
#   csharp_toolchain LOG      installs Debian's mono (mcs, C# <= 7.2), NUnit 2.6 and nuget 2.8.7
#                             with apt-get if any is missing (output to LOG); sets NUNIT_FW
#   MCS                       the compiler command: C# 7.2 exactly, warnings as errors
#   csharp_build_lib ROOT OUT compiles csharp/src into OUT/Machnet.dll (+ OUT/Machnet.xml docs)
#   csharp_pack ROOT DLLDIR SO VERSION STAGE OUTDIR
#                             packs OUT/Machnet.$VERSION.nupkg from csharp/Machnet.nuspec:
#                             DLLDIR's Machnet.dll/.xml, csharp/pack's Machnet.dll.config and
#                             Machnet.targets, and the native library SO (debug info stripped),
#                             staged in STAGE; pack log in STAGE/pack.log
#   csharp_check_nupkg NUPKG  fails (and says what is missing) unless the package has the layout

NUNIT_FW=/usr/lib/cli/nunit.framework-2.6.3/nunit.framework.dll
# C# 7.2 exactly (what a current SDK also accepts); warnings are errors (CS1691: the generated
# file disables warnings mcs does not know).
MCS=(mcs -langversion:7.2 -warnaserror+ -nowarn:1691 -debug- -optimize+)

csharp_toolchain() {
    local log=$1 sudo=
    if ! command -v mcs >/dev/null || ! command -v mono >/dev/null ||
        ! command -v nunit-console >/dev/null || ! command -v nuget >/dev/null ||
        [ ! -f "$NUNIT_FW" ] || [ ! -f /usr/lib/mono/4.5/System.Runtime.Serialization.dll ]; then
        echo "csharp: installing mono-mcs, mono-runtime, nunit-console, libnunit-cil-dev, nuget," \
            "libmono-system-runtime-serialization4.0-cil" >&2
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        if ! { $sudo apt-get update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
                mono-mcs mono-runtime libmono-system-core4.0-cil nunit-console libnunit-cil-dev \
                nuget libmono-system-runtime-serialization4.0-cil libmono-system-xml4.0-cil \
                >"$log" 2>&1; }; then
            tail -20 "$log" >&2
            return 1
        fi
    fi
    if [ ! -f "$NUNIT_FW" ]; then
        NUNIT_FW=$(find /usr/lib/cli -path '*/nunit.framework-2.6*/nunit.framework.dll' | head -1)
    fi
}

# The assembly is built by mono's mcs against its 4.5 profile (mscorlib, System, System.Core):
# mono has no netstandard reference assembly (its Facades/netstandard.dll only forwards types),
# and NuGet's NETStandard.Library is out of reach here. The package lists it as
# lib/netstandard2.0 (what csharp/src/Machnet.csproj targets with the same sources); .NET and
# netstandard2.0 consumers resolve mscorlib/System/System.Core through their facades.
csharp_build_lib() { # root out
    mkdir -p "$2" &&
        "${MCS[@]}" -unsafe -target:library -doc:"$2/Machnet.xml" -out:"$2/Machnet.dll" \
            "$1"/csharp/src/*.cs
}

csharp_pack() { # root dlldir so version stage outdir
    local root=$1 dlldir=$2 so=$3 version=$4 stage=$5 outdir=$6
    # nuget 2.8.7 on mono mangles absolute paths in <file src>: stage the files under -BasePath.
    mkdir -p "$stage/bin" "$stage/build" "$stage/native" "$outdir" || return 1
    cp "$dlldir/Machnet.dll" "$dlldir/Machnet.xml" "$root/csharp/pack/Machnet.dll.config" \
        "$stage/bin/" || return 1
    cp "$root/csharp/pack/Machnet.targets" "$stage/build/" || return 1
    cp "$so" "$stage/native/libmachnet.so" || return 1
    strip --strip-debug "$stage/native/libmachnet.so" || return 1
    if ! (cd "$stage" && nuget pack "$root/csharp/Machnet.nuspec" -Version "$version" \
        -NoPackageAnalysis -BasePath "$stage" -OutputDirectory "$outdir" -NonInteractive) \
        >"$stage/pack.log" 2>&1; then
        cat "$stage/pack.log" >&2
        return 1
    fi
}

csharp_check_nupkg() { # nupkg
    python3 - "$1" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = {"Machnet.nuspec", "lib/netstandard2.0/Machnet.dll", "lib/netstandard2.0/Machnet.xml",
        "lib/netstandard2.0/Machnet.dll.config", "build/Machnet.targets",
        "runtimes/linux-x64/native/libmachnet.so"}
missing = need - names
extra = {n for n in names if n.startswith("lib/") and not n.startswith("lib/netstandard2.0/")}
if missing or extra:
    sys.exit(f"{sys.argv[1]}: missing {sorted(missing)}, unexpected {sorted(extra)} (has {sorted(names)})")
PY
}
