# Shared by ci/install-test.sh and its parts ci/install/<part>.sh (source it; bash only).
#
#   rustless_path      removes cargo, rustc and rustup from PATH (every directory holding one of
#                      them) and unsets CARGO_* / RUSTUP_*: an install test must not build Rust
#   require_no_rust    fails (returns 1, says why) if cargo or rustc is still reachable
#   ok MSG / bad MSG   print `install-<PART>: ok - MSG` / `install-<PART>: FAIL - MSG` (bad also
#                      counts a failure in INSTALL_FAILED); set PART first
#
# Env a part gets from ci/install-test.sh: DIST (a copy of the artifacts, outside the clone), WORK
# (an empty directory for this part), MACHNET_SOCK (control socket of the sidecar to attach to),
# ECHO_IP / ECHO_PORT (a `machnet-echo server` reachable from that sidecar), ROOT (the clone:
# read README examples from it, never build from it).

INSTALL_FAILED=0
ok() { echo "install-${PART:-?}: ok - $*"; }
bad() {
    INSTALL_FAILED=$((INSTALL_FAILED + 1))
    echo "install-${PART:-?}: FAIL - $*" >&2
}

rustless_path() {
    local dir kept=()
    local IFS=:
    for dir in $PATH; do
        [ -n "$dir" ] || continue
        if [ -x "$dir/cargo" ] || [ -x "$dir/rustc" ] || [ -x "$dir/rustup" ]; then
            continue
        fi
        kept+=("$dir")
    done
    PATH="${kept[*]}"
    export PATH
    IFS=$' \t\n'
    local v
    for v in $(compgen -e | grep -E '^(CARGO|RUSTUP)_' || true); do
        unset "$v"
    done
}

require_no_rust() {
    if command -v cargo >/dev/null 2>&1 || command -v rustc >/dev/null 2>&1; then
        echo "cargo or rustc is still on PATH ($(command -v cargo rustc | tr '\n' ' '))" >&2
        return 1
    fi
}
