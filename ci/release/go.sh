#!/usr/bin/env bash
# Release part: the Go module github.com/machnet-rs/machnet-rs/go, version v$VERSION, carrying
# the static library for linux/amd64 (lib/linux_amd64/libmachnet.a, debug info stripped) next
# to its sources and its copy of machnet.h, so that `go get` + `go build` need no Rust and no
# clone. Written in the GOPROXY file layout:
#
#   $DIST/go/proxy/github.com/machnet-rs/machnet-rs/go/@v/{list,v$VERSION.info,.mod,.zip}
#
# served by GOPROXY=file://$DIST/go/proxy (go/README.md). The zip is made by golang.org/x/mod/zip
# (ci/release/gomodproxy, the go command's own rules), then fetched back with `go mod download`
# into a scratch module cache as a check. The repository's go/ differs from the module only by
# the .a: in the repository the linker does not find lib/linux_amd64/libmachnet.a and goes on
# to ../target/release (see the cgo flags in go/machnet.go).
#
# Env (defaults from ci/lib/release.sh): ROOT, TARGET, REL, DIST, VERSION. Builds
# `cargo build --release -p machnet-ffi` (a no-op after ci/release.sh). Prints one `artifact`
# line per file and exits non-zero on failure.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/release.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/release.sh"

MODULE=github.com/machnet-rs/machnet-rs/go
MODVER=v$VERSION
OUT=$DIST/go
export GOTOOLCHAIN=local GOFLAGS=

die() {
    echo "release-go: $*" >&2
    exit 1
}

# The module's files as the repository tracks them (go/ minus go/nettest, a module of its own),
# copied into $1.
stage_sources() { # dest
    local dest=$1 f
    mkdir -p "$dest"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$ROOT/go" ls-files -z -- . ':!nettest' | while IFS= read -r -d '' f; do
            install -D -m 0644 "$ROOT/go/$f" "$dest/$f" || exit 1
        done
    else
        cp -a "$ROOT/go/." "$dest/" && rm -rf "$dest/nettest"
    fi
}

# The prebuilt static library, debug info stripped (34 MB -> 17 MB; symbols stay).
stage_library() { # dest module dir
    local lib=$1/lib/linux_amd64
    [ -f "$lib/lib.go" ] || die "go/lib/linux_amd64/lib.go missing (the directory must be a package)"
    cp "$REL/libmachnet.a" "$lib/libmachnet.a" && strip --strip-debug "$lib/libmachnet.a"
}

# The version's time: the commit's (reproducible), else now.
version_time() {
    local ts
    ts=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null) || ts=${SOURCE_DATE_EPOCH:-$(date +%s)}
    date -u -d "@$ts" +%Y-%m-%dT%H:%M:%SZ
}

# Fetches the module back through the file proxy, as `go get` would, and checks what came.
check_proxy() { # scratch dir
    local scratch=$1 dir
    dir=$(cd "$scratch" && GOPATH=$scratch/gopath GOMODCACHE=$scratch/modcache \
        GOPROXY=file://$OUT/proxy GONOSUMDB=$MODULE GOFLAGS=-modcacherw \
        go mod download -json "$MODULE@$MODVER" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
    [ -n "$dir" ] && [ -f "$dir/lib/linux_amd64/libmachnet.a" ] && [ -f "$dir/machnet.h" ] &&
        [ -f "$dir/lib/linux_amd64/lib.go" ] && [ ! -e "$dir/nettest" ]
}

main() {
    command -v go >/dev/null || die "go not found"
    cargo build --release -p machnet-ffi >&2 || die "cargo build -p machnet-ffi"
    cmp -s "$ROOT/go/machnet.h" "$ROOT/machnet-ffi/include/machnet.h" ||
        die "go/machnet.h differs from machnet-ffi/include/machnet.h (ci/ffi.sh --update-header)"
    local work
    work=$(mktemp -d -t release-go.XXXXXX) || die "mktemp"
    # shellcheck disable=SC2064
    trap "chmod -R u+w '$work' 2>/dev/null; rm -rf '$work'" EXIT
    stage_sources "$work/mod" || die "staging go/"
    stage_library "$work/mod" || die "staging libmachnet.a"
    (cd "$ROOT/ci/release/gomodproxy" && go build -o "$work/gomodproxy" .) ||
        die "building ci/release/gomodproxy"
    rm -rf "$OUT"
    "$work/gomodproxy" -module "$MODULE" -version "$MODVER" -dir "$work/mod" \
        -out "$OUT/proxy" -time "$(version_time)" || die "gomodproxy"
    check_proxy "$work" || die "go mod download from file://$OUT/proxy did not give the module"
    artifact "$OUT/proxy/$MODULE/@v/"{list,"$MODVER.info","$MODVER.mod","$MODVER.zip"}
}

main "$@"
