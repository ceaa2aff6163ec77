#!/usr/bin/env bash
# Release part `deb`: the sidecar as the Debian package `machnet`, made by cargo-deb from
# [package.metadata.deb] in machnet-sidecar/Cargo.toml and machnet-sidecar/debian/:
#   /usr/bin/machnet (stripped), /usr/lib/systemd/system/machnet.service (enabled and started
#   on install where systemd runs), /usr/lib/sysusers.d/machnet.conf (user and group machnet),
#   /etc/machnet/machnet.toml (conffile), /usr/share/doc/machnet/{README,CONFIG,STATS}.md
#
#   bash ci/release/deb.sh          (or from ci/release.sh, which sets the variables below)
#
# Output: $DIST/deb/machnet_$VERSION_amd64.deb. Env (ci/lib/release.sh sets defaults): ROOT,
# TARGET, DIST, VERSION. Needs cargo-deb (`cargo deb`): .ci/run installs it.
set -euo pipefail
# shellcheck source=ci/lib/release.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/release.sh"

OUT=$DIST/deb
DEB=$OUT/machnet_${VERSION}_amd64.deb

require_cargo_deb() {
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "deb: cargo-deb is not installed: cargo install cargo-deb@3.8.0 --locked" >&2
        return 1
    fi
}

# Builds the package from the binary ci/release.sh builds (the same `cargo build` here is a
# no-op then); cargo-deb strips it (the release profile keeps debug line tables). cargo-deb's
# own build of the sidecar alone would unify features differently and rebuild (~1.5 min).
build_deb() {
    (cd "$ROOT" && cargo build --release --locked -p machnet-ffi -p machnet-sidecar -p machnet-echo >&2 &&
        cargo deb -p machnet-sidecar --locked --no-build --strip --output "$DEB" >&2)
}

# Fails unless the package holds what it promises, with the conffile marked.
check_deb() {
    local contents f
    contents=$(dpkg-deb --contents "$DEB" | awk '{print $NF}')
    for f in ./usr/bin/machnet ./etc/machnet/machnet.toml ./usr/share/doc/machnet/CONFIG.md; do
        grep -qx "$f" <<<"$contents" || { echo "deb: $f missing from $DEB" >&2; return 1; }
    done
    grep -Eq '/systemd/system/machnet\.service$' <<<"$contents" ||
        { echo "deb: no machnet.service in $DEB" >&2; return 1; }
    grep -Eq '/sysusers\.d/machnet\.conf$' <<<"$contents" ||
        { echo "deb: no sysusers.d/machnet.conf in $DEB" >&2; return 1; }
    dpkg-deb --ctrl-tarfile "$DEB" | tar -xOf - ./conffiles | grep -qx /etc/machnet/machnet.toml ||
        { echo "deb: /etc/machnet/machnet.toml is not a conffile" >&2; return 1; }
    [ "$(dpkg-deb --field "$DEB" Package Version Architecture | tr '\n' ' ')" = \
        "Package: machnet Version: $VERSION Architecture: amd64 " ] ||
        { echo "deb: unexpected control fields: $(dpkg-deb --field "$DEB")" >&2; return 1; }
}

main() {
    require_cargo_deb
    rm -rf "$OUT"
    mkdir -p "$OUT"
    build_deb
    check_deb
    artifact "$DEB"
}

main "$@"
