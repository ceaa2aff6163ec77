#!/usr/bin/env bash
# Release part `python` (ci/release.sh runs it; it also runs standalone): the PyPI package
# `machnet` into $DIST/python/:
#
#   machnet-<version>-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
#       the abi3 wheel (maturin + zig, manylinux2014; the client API and the sidecar)
#   machnet-<version>.tar.gz
#       the sdist (maturin sdist: python/ plus the workspace crates it depends on by path)
#
# Then checks both with `twine check --strict` (metadata and README rendering) and the wheel's
# metadata fields: name, version, license and project URLs.
#
#   bash ci/release/python.sh        # env: see ci/lib/release.sh (ROOT, TARGET, DIST, VERSION);
#                                    # MANYLINUX=native for this machine's glibc only
#
# The build venv (maturin, ziglang, twine) and the cargo build stay in $TARGET: after
# ci/python.sh the wheel is only re-packed. Prints one `artifact` line per file; exits non-zero
# on failure.
#
# The sdist builds the same wheel from itself (`pip wheel machnet-<version>.tar.gz` in a clean
# directory with an empty target dir; a full Rust build, ~5 min on 2 cores: checked by hand,
# not here).
set -uo pipefail
# shellcheck source=../lib/release.sh
. "$(dirname "$0")/../lib/release.sh"
# shellcheck source=../lib/python-wheel.sh
. "$ROOT/ci/lib/python-wheel.sh"
TWINE=twine==7.0.0
REPO_URL=https://github.com/machnet-rs/machnet-rs
OUT=$DIST/python

die() {
    echo "release/python: $*" >&2
    exit 1
}

# Checks the wheel's METADATA: name, version, license and the repository among the project URLs.
check_wheel_metadata() { # wheel
    "$PY_BUILD_VENV/bin/python" - "$1" "$VERSION" "$REPO_URL" <<'PYEOF'
import email, sys, zipfile
wheel, version, repo = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(z.read(name))
problems = []
def expect(field, want):
    if meta.get(field) != want:
        problems.append(f"{field}: {meta.get(field)!r}, expected {want!r}")
expect("Name", "machnet")
expect("Version", version)
expect("License-Expression", "MIT")
urls = meta.get_all("Project-URL") or []
if not any(u.split(",", 1)[-1].strip() == repo for u in urls):
    problems.append(f"Project-URL: {urls}, none is {repo}")
if problems:
    sys.exit("wheel metadata: " + "; ".join(problems))
print(f"wheel metadata: {meta['Name']} {meta['Version']}, license {meta['License-Expression']}, "
      f"{len(urls)} project URLs")
PYEOF
}

main() {
    mkdir -p "$OUT"
    python_build_tools || die "build tools"
    "$PY_BUILD_VENV/bin/pip" install -q --disable-pip-version-check "$TWINE" || die "pip install $TWINE"
    local wheel sdist
    wheel=$(python_build_wheel "$OUT" | tail -1) && [ -f "$wheel" ] || die "maturin build"
    sdist=$(python_build_sdist "$OUT" | tail -1) && [ -f "$sdist" ] || die "maturin sdist"
    case $(basename "$wheel") in
        "machnet-$VERSION-"*) ;;
        *) die "wheel $(basename "$wheel") is not version $VERSION" ;;
    esac
    "$PY_BUILD_VENV/bin/twine" check --strict "$wheel" "$sdist" >&2 || die "twine check"
    check_wheel_metadata "$wheel" >&2 || die "wheel metadata"
    artifact "$wheel" "$sdist"
}

main "$@"
