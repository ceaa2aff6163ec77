#!/usr/bin/env bash
# Install test `node` (ci/install-test.sh runs it, without Rust on PATH): installs the two npm
# tarballs from $DIST/node into a fresh project (`npm init -y`, then `npm install` of both
# tarballs as node/README.md says, --offline with an empty cache: no registry involved), checks
# that `machnet` loads its addon from the platform package @machnet-rs/machnet-linux-x64-gnu, then
# runs node/README.md's examples as they are written there, extracted from the README:
#   - echo-client.mjs against the Rust echo server ($ECHO_IP:$ECHO_PORT, on the other sidecar):
#     its three messages (5 B, 256 B, 100 kB) must come back byte for byte;
#   - echo-server.mjs on the sidecar at $MACHNET_SOCK, and echo-client.mjs against it;
#   - echo-client.mjs against a port nobody listens on must fail (the example can fail).
# (node/README.md has no TypeScript example; ci/node.sh type-checks test/usage.ts with tsc.)
#
# Env (ci/install-test.sh sets it; ci/lib/install.sh): DIST, WORK, MACHNET_SOCK, ECHO_IP,
# ECHO_PORT, ROOT (the README is read from there, nothing is built). SERVER_PORT (default 5702) is
# the Machnet port of the README's server.
# Prints `install-node: ok - ...` / `install-node: FAIL - ...`; exits non-zero on a failure.
set -uo pipefail
export PART=node # ok/bad (ci/lib/install.sh)
# shellcheck source=../lib/install.sh
. "$ROOT/ci/lib/install.sh"
# shellcheck source=../lib/readme.sh
. "$ROOT/ci/lib/readme.sh"
SERVER_PORT=${SERVER_PORT:-5702}
README=$ROOT/node/README.md
APP=$WORK/app
SERVER_PID=

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=
    fi
}
trap stop_server EXIT

install_tarballs() {
    local main platform
    main=$(compgen -G "$DIST/node/machnet-[0-9]*.tgz") &&
        platform=$(compgen -G "$DIST/node/machnet-rs-machnet-linux-x64-gnu-*.tgz") || {
        echo "no machnet-<version>.tgz / machnet-rs-machnet-linux-x64-gnu-<version>.tgz in $DIST/node" >&2
        return 1
    }
    mkdir -p "$APP" && cd "$APP" && npm init -y >/dev/null || return 1
    npm install --offline --cache "$WORK/npm-cache" --no-audit --no-fund --loglevel=error \
        "$main" "$platform"
}

# `machnet` loads (CommonJS and ES module), with the addon of the platform package.
check_load() {
    (cd "$APP" && node -e '
const path = require("node:path"), fs = require("node:fs")
const m = require("machnet")
const addon = require.resolve("@machnet-rs/machnet-linux-x64-gnu")
if (!addon.startsWith(path.join(process.cwd(), "node_modules", "@machnet-rs") + path.sep)) throw new Error(`addon at ${addon}`)
const main = path.dirname(require.resolve("machnet"))
if (fs.readdirSync(main).some((f) => f.endsWith(".node"))) throw new Error(`a .node in ${main}`)
if (typeof m.attach !== "function") throw new Error("attach missing")
console.log("machnet", require("machnet/package.json").version, "loads", path.relative(process.cwd(), addon))' &&
        node --input-type=module -e 'import { attach } from "machnet"; if (typeof attach !== "function") process.exit(1)')
}

extract_examples() {
    readme_block "$README" js "// echo-client.mjs" >"$APP/echo-client.mjs" &&
        readme_block "$README" js "// echo-server.mjs" >"$APP/echo-server.mjs"
}

# The README's client against HOST PORT; its last line must be the success line.
run_client() { # host port
    local out
    out=$(cd "$APP" && MACHNET_SOCKET=$MACHNET_SOCK timeout 60 node echo-client.mjs "$1" "$2" 2>&1)
    local rc=$?
    echo "$out"
    [ "$rc" -eq 0 ] && [ "$(tail -1 <<<"$out")" = "3 messages echoed by $1:$2" ]
}

# Starts the README's server on the sidecar at MACHNET_SOCK; sets SERVER_ADDR (ip:port it prints).
start_server() {
    (cd "$APP" && MACHNET_SOCKET=$MACHNET_SOCK exec node echo-server.mjs "$SERVER_PORT") \
        >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local _
    for _ in $(seq 100); do
        SERVER_ADDR=$(sed -n 's/^listening on \(.*\)$/\1/p' "$WORK/server.log")
        [ -z "$SERVER_ADDR" ] || return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/server.log" >&2
    return 1
}

main() {
    install_tarballs && ok "npm install of both tarballs into a fresh project (offline, empty cache)" ||
        { bad "npm install of the tarballs"; exit 1; }
    check_load && ok "machnet loads (require and import) with the addon of @machnet-rs/machnet-linux-x64-gnu" ||
        bad "machnet does not load from the installed packages"
    extract_examples && ok "node/README.md: echo-client.mjs and echo-server.mjs extracted" ||
        { bad "README examples not found"; exit 1; }

    run_client "$ECHO_IP" "$ECHO_PORT" &&
        ok "README echo-client.mjs: 3 messages echoed byte for byte by machnet-echo at $ECHO_IP:$ECHO_PORT" ||
        bad "README echo-client.mjs against machnet-echo at $ECHO_IP:$ECHO_PORT"

    if start_server; then
        ok "README echo-server.mjs listening on $SERVER_ADDR"
        run_client "${SERVER_ADDR%:*}" "${SERVER_ADDR##*:}" &&
            ok "README echo-client.mjs: 3 messages echoed byte for byte by echo-server.mjs" ||
            bad "README echo-client.mjs against echo-server.mjs at $SERVER_ADDR"
        stop_server
    else
        bad "README echo-server.mjs did not start"
    fi

    if run_client "$ECHO_IP" $((ECHO_PORT + 1)) >"$WORK/refused.log"; then
        bad "README echo-client.mjs succeeded against $ECHO_IP:$((ECHO_PORT + 1)), where nothing listens"
    else
        ok "README echo-client.mjs fails against a port nobody listens on ($(grep -m1 -o 'ERR_MACHNET_[A-Z_]*' "$WORK/refused.log" || tail -1 "$WORK/refused.log"))"
    fi
    [ "$INSTALL_FAILED" -eq 0 ]
}

main "$@"
