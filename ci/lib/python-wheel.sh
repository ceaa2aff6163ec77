# shellcheck shell=bash
# Building the Python package (python/) with maturin; shared by ci/python.sh (tests the wheel) and
# ci/release/python.sh (the wheel and sdist of a release). Source it (bash only) with ROOT and
# TARGET set; both callers use the same target dir, so the second wheel build is only maturin
# re-packing what cargo already built.
#
#   python_build_tools          the build venv $TARGET/python-build-venv (kept between runs) with
#                               the pinned maturin and, for MANYLINUX=2014, ziglang
#   python_build_wheel OUTDIR   the abi3 wheel into OUTDIR; prints its path last
#   python_build_sdist OUTDIR   the sdist (maturin sdist) into OUTDIR; prints its path last
#
# Knobs: MANYLINUX=2014 (default: portable manylinux2014 tag through zig) or native (this
# machine's glibc); PYTHON (default python3) creates the build venv.

# Pinned tool versions (the test tools are pinned in ci/python.sh).
MATURIN=maturin==1.16.0
ZIGLANG=ziglang==0.17.1
MANYLINUX=${MANYLINUX:-2014}
PY_BUILD_VENV=$TARGET/python-build-venv

python_build_tools() {
    local bv=$PY_BUILD_VENV/bin
    if [ ! -x "$bv/pip" ]; then
        "${PYTHON:-python3}" -m venv "$PY_BUILD_VENV" || {
            echo "cannot create a virtualenv with ${PYTHON:-python3}" >&2
            return 1
        }
    fi
    local tools=("$MATURIN")
    [ "$MANYLINUX" != 2014 ] || tools+=("$ZIGLANG")
    "$bv/pip" install -q --disable-pip-version-check "${tools[@]}" || {
        echo "pip install ${tools[*]} failed" >&2
        return 1
    }
}

# maturin with the build venv first on PATH (zig comes from ziglang there).
_maturin() {
    (cd "$ROOT/python" && PATH="$PY_BUILD_VENV/bin:$PATH" "$PY_BUILD_VENV/bin/maturin" "$@")
}

# Prints the one file in DIR matching GLOB (fails unless there is exactly one).
_only_file() { # dir glob
    local found
    mapfile -t found < <(compgen -G "$1/$2")
    if [ ${#found[@]} -ne 1 ]; then
        echo "expected exactly one $2 in $1, found: ${found[*]}" >&2
        return 1
    fi
    echo "${found[0]}"
}

python_build_wheel() { # outdir
    local out=$1 zig=()
    [ "$MANYLINUX" != 2014 ] || zig=(--zig --compatibility manylinux2014)
    rm -f "$out"/machnet-*.whl
    _maturin build --release "${zig[@]}" -i "$PY_BUILD_VENV/bin/python" -o "$out" >&2 || return 1
    _only_file "$out" 'machnet-*.whl'
}

python_build_sdist() { # outdir
    local out=$1
    rm -f "$out"/machnet-*.tar.gz
    _maturin sdist -o "$out" >&2 || return 1
    _only_file "$out" 'machnet-*.tar.gz'
}
