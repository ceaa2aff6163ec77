#!/usr/bin/env bash
# Install test: the Go module from the release artifacts, as a user gets it, without Rust.
# In a fresh module in $WORK: `go get github.com/machnet-rs/machnet-rs/go@v$VERSION` through
# GOPROXY=file://$DIST/go/proxy (fresh module cache, no network, no CGO_LDFLAGS), builds the
# go/README.md example (taken from $ROOT/go/README.md, only socket/address/port replaced), runs
# it against MACHNET_SOCK -> ECHO_IP:ECHO_PORT and checks its report of the echoes; then
# `go mod vendor` and the same program built with -mod=vendor (proxy off) and run again.
#
# Env (ci/install-test.sh): DIST, WORK, MACHNET_SOCK, ECHO_IP, ECHO_PORT, ROOT (README only);
# VERSION (default 0.1.0). Prints `install-go: ok - ...` / `install-go: FAIL - ...` lines and
# exits non-zero on failure.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/install.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/install.sh"
# shellcheck disable=SC2034 # read by ok/bad (ci/lib/install.sh)
PART=go

MODULE=github.com/machnet-rs/machnet-rs/go
MODVER=v${VERSION:-0.1.0}
APP=$WORK/app
# What the README example prints when every echo matched.
EXPECTED='echoed 5 bytes: hello
echoed 7 bytes: machnet
echoed 100000 bytes: 0123456789'

# A user's Go environment with nothing from the clone: own GOPATH, module and build caches.
go_env() {
    export PATH="$PATH:/usr/local/go/bin"
    export GOPATH=$WORK/gopath GOMODCACHE=$WORK/gopath/pkg/mod GOCACHE=$WORK/gocache
    export GOPROXY=file://$DIST/go/proxy GONOSUMDB=$MODULE GOFLAGS=-modcacherw
    export GOTOOLCHAIN=local CGO_ENABLED=1
    unset CGO_LDFLAGS CGO_CFLAGS CGO_CPPFLAGS GOWORK
}

# The fenced go block after the `<!-- install-test: ci/install/go.sh -->` marker, with the
# example's socket, address and port replaced by ours.
readme_example() { # out
    local src
    src=$(awk '/<!-- install-test: ci\/install\/go.sh -->/ {m=1; next}
        m && /^```go$/ {p=1; next} p && /^```$/ {exit} p' "$ROOT/go/README.md")
    grep -qF '"/run/machnet/machnet.sock", "10.0.0.1", 888' <<<"$src" || return 1
    printf '%s\n' "${src//'"/run/machnet/machnet.sock", "10.0.0.1", 888'/"\"$MACHNET_SOCK\", \"$ECHO_IP\", $ECHO_PORT"}" >"$1"
}

run_and_check() { # binary label
    local out
    if ! out=$(timeout 60 "$1" 2>&1); then
        bad "$2: the example failed: $out"
        return 1
    fi
    if [ "$out" != "$EXPECTED" ]; then
        bad "$2: unexpected report: $out"
        return 1
    fi
    ok "$2: 3 messages (5 B, 7 B, 100000 B) echoed byte for byte"
}

main() {
    rustless_path
    require_no_rust || { bad "Rust toolchain reachable"; exit 1; }
    go_env
    command -v go >/dev/null || { bad "go not found"; exit 1; }
    mkdir -p "$APP" && cd "$APP" || exit 1
    go mod init example.com/machnet-echo-user >/dev/null 2>&1 || { bad "go mod init"; exit 1; }
    readme_example main.go || { bad "no example (with the socket/address/port line) in go/README.md"; exit 1; }
    if go get "$MODULE@$MODVER" 2>"$WORK/get.log"; then
        ok "go get $MODULE@$MODVER from file://$DIST/go/proxy"
    else
        bad "go get: $(cat "$WORK/get.log")"
        exit 1
    fi
    if go build -o echo-user . 2>"$WORK/build.log"; then
        ok "go build of the README example (CGO_ENABLED=1, no CGO_LDFLAGS, no Rust)"
    else
        bad "go build: $(cat "$WORK/build.log")"
        exit 1
    fi
    if ldd echo-user 2>&1 | grep -q libmachnet; then
        bad "the binary depends on libmachnet.so: $(ldd echo-user)"
    fi
    # Which libmachnet.a the linker took (not one installed elsewhere, e.g. by the C SDK's .deb).
    local lib=$GOMODCACHE/$MODULE@$MODVER/lib/linux_amd64/libmachnet.a trace
    trace=$(go build -ldflags=-extldflags=-Wl,--trace -o /dev/null . 2>&1)
    if grep -qxF "$lib" <<<"$trace"; then
        ok "linked the module's own lib/linux_amd64/libmachnet.a"
    else
        bad "the linker did not take $lib"
    fi
    run_and_check ./echo-user "module from the proxy"

    if GOPROXY=off go mod vendor 2>"$WORK/vendor.log" &&
        [ -f "vendor/$MODULE/lib/linux_amd64/libmachnet.a" ] &&
        GOPROXY=off go build -mod=vendor -o echo-vendored . 2>>"$WORK/vendor.log"; then
        ok "go mod vendor keeps lib/linux_amd64/libmachnet.a; go build -mod=vendor (proxy off)"
        run_and_check ./echo-vendored "vendored module"
    else
        bad "go mod vendor / -mod=vendor build: $(cat "$WORK/vendor.log")"
    fi
    [ "$INSTALL_FAILED" -eq 0 ]
}

main "$@"
