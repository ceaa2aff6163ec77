#!/usr/bin/env bash
# Release part `crates`: every publishable crate as `cargo publish` would upload it.
#
#   bash ci/release/crates.sh        (or from ci/release.sh, which sets the variables below)
#
# Runs `cargo publish --dry-run --workspace`: packages each crate that is not `publish = false`
# (machnet-core, machnet-channel, machnet-client, machnet-dpdk-sys, machnet-sidecar,
# machnet-ffi), resolves each against the others' packages through a local registry overlay (so
# dependents verify before their dependencies are on crates.io), builds each from its package
# alone, and uploads nothing. Fails if the set of published crates changes without this list.
#
# Knobs: CRATES_VERIFY=0 packages without building them (`cargo package --no-verify`).
# Output: $DIST/crates/<crate>-$VERSION.crate, one per crate. Env (ci/lib/release.sh sets
# defaults): ROOT, TARGET (the verification builds go to $TARGET/debug, packages to
# $TARGET/package), DIST, VERSION. Takes ~2 CPU-minutes (the six crates built from their packages).
set -euo pipefail
# shellcheck source=ci/lib/release.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/release.sh"

CRATES=(machnet-core machnet-channel machnet-client machnet-dpdk-sys machnet-sidecar machnet-ffi)
OUT=$DIST/crates

# The workspace members cargo would publish (those without `publish = false`), sorted.
publishable() {
    (cd "$ROOT" && cargo metadata --no-deps --format-version 1 --locked) | python3 -c '
import json, sys
ws = json.load(sys.stdin)
members = set(ws["workspace_members"])
print("\n".join(sorted(p["name"] for p in ws["packages"]
                       if p["id"] in members and p["publish"] != [])))'
}

check_crate_list() {
    local want
    want=$(printf '%s\n' "${CRATES[@]}" | sort)
    if [ "$(publishable)" != "$want" ]; then
        echo "crates: publishable workspace members changed: $(publishable | tr '\n' ' ')" \
            "(this script lists: ${CRATES[*]})" >&2
        return 1
    fi
}

# --allow-dirty: a release may run from a checkout with local changes (CI's is clean); a real
# `cargo publish` from a clean tree records the commit in .cargo_vcs_info.json.
package_crates() {
    local pkgs=() c
    for c in "${CRATES[@]}"; do pkgs+=(-p "$c"); done
    if [ "${CRATES_VERIFY:-1}" = 1 ]; then
        (cd "$ROOT" && cargo publish --dry-run --locked --allow-dirty "${pkgs[@]}" >&2)
    else
        (cd "$ROOT" && cargo package --no-verify --locked --allow-dirty "${pkgs[@]}" >&2)
    fi
}

main() {
    check_crate_list
    rm -rf "$OUT" "$TARGET/package/tmp-crate"
    mkdir -p "$OUT"
    package_crates
    local c f
    for c in "${CRATES[@]}"; do
        # `cargo publish --dry-run` leaves its packages in package/tmp-crate/, `cargo package`
        # in package/.
        f=$TARGET/package/tmp-crate/$c-$VERSION.crate
        [ "${CRATES_VERIFY:-1}" = 1 ] || f=$TARGET/package/$c-$VERSION.crate
        [ -f "$f" ] || { echo "crates: $f was not made" >&2; return 1; }
        cp "$f" "$OUT/"
        artifact "$OUT/$c-$VERSION.crate"
    done
}

main "$@"
