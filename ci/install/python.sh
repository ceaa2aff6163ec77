#!/usr/bin/env bash
# Install test `python` (ci/install-test.sh runs it, without Rust on PATH): installs the wheel from
# $DIST/python into a fresh virtualenv the way python/README.md says (`pip install --no-index
# --find-links <dir> machnet`, a local index directory), then runs python/README.md's examples as
# they are written there, extracted from the README:
#   - echo_client.py against the Rust echo server ($ECHO_IP:$ECHO_PORT, on the other sidecar): its
#     three messages (5 B, 256 B, 100 kB) must come back byte for byte;
#   - echo_server.py on the sidecar at $MACHNET_SOCK, and echo_client.py against it;
#   - echo_client.py against a port nobody listens on must fail (the example can fail);
# and checks the wheel's sidecar entry points (`python -m machnet sidecar --help`,
# `machnet-sidecar --help`).
#
# Env (ci/install-test.sh sets it; ci/lib/install.sh): DIST, WORK, MACHNET_SOCK, ECHO_IP,
# ECHO_PORT, ROOT (the README is read from there, nothing is built). SERVER_PORT (default 5701) is
# the Machnet port of the README's server. PYTHON (default python3) makes the venv.
# Prints `install-python: ok - ...` / `install-python: FAIL - ...`; exits non-zero on a failure.
set -uo pipefail
export PART=python # ok/bad (ci/lib/install.sh)
# shellcheck source=../lib/install.sh
. "$ROOT/ci/lib/install.sh"
# shellcheck source=../lib/readme.sh
. "$ROOT/ci/lib/readme.sh"
SERVER_PORT=${SERVER_PORT:-5701}
README=$ROOT/python/README.md
VENV=$WORK/venv
SERVER_PID=

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=
    fi
}
trap stop_server EXIT

install_wheel() {
    "${PYTHON:-python3}" -m venv "$VENV" || return 1
    # As python/README.md says, with dist/python as the local index directory.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$DIST/python" \
        machnet || return 1
    # The wheel, not the sdist (which would need Rust): the extension module is there.
    (cd "$WORK" && "$VENV/bin/python" -c '
import machnet, machnet._machnet, sys
assert "site-packages" in machnet.__file__, machnet.__file__
print("machnet", machnet.__version__, "from", machnet._machnet.__file__)')
}

extract_examples() {
    readme_block "$README" python "# echo_client.py" >"$WORK/echo_client.py" &&
        readme_block "$README" python "# echo_server.py" >"$WORK/echo_server.py"
}

# The README's client against HOST PORT; its last line must be the success line.
run_client() { # host port
    local out
    out=$(cd "$WORK" && MACHNET_SOCKET=$MACHNET_SOCK timeout 60 "$VENV/bin/python" echo_client.py "$1" "$2" 2>&1)
    local rc=$?
    echo "$out"
    [ "$rc" -eq 0 ] && [ "$(tail -1 <<<"$out")" = "3 messages echoed by $1:$2" ]
}

# Starts the README's server on the sidecar at MACHNET_SOCK; sets SERVER_ADDR (ip:port it prints).
start_server() {
    (cd "$WORK" && MACHNET_SOCKET=$MACHNET_SOCK exec "$VENV/bin/python" echo_server.py "$SERVER_PORT") \
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
    install_wheel && ok "pip install --no-index --find-links \$DIST/python machnet (fresh venv)" ||
        { bad "pip install of the wheel"; exit 1; }
    extract_examples && ok "python/README.md: echo_client.py and echo_server.py extracted" ||
        { bad "README examples not found"; exit 1; }

    run_client "$ECHO_IP" "$ECHO_PORT" &&
        ok "README echo_client.py: 3 messages echoed byte for byte by machnet-echo at $ECHO_IP:$ECHO_PORT" ||
        bad "README echo_client.py against machnet-echo at $ECHO_IP:$ECHO_PORT"

    if start_server; then
        ok "README echo_server.py listening on $SERVER_ADDR"
        run_client "${SERVER_ADDR%:*}" "${SERVER_ADDR##*:}" &&
            ok "README echo_client.py: 3 messages echoed byte for byte by echo_server.py" ||
            bad "README echo_client.py against echo_server.py at $SERVER_ADDR"
        stop_server
    else
        bad "README echo_server.py did not start"
    fi

    if run_client "$ECHO_IP" $((ECHO_PORT + 1)) >"$WORK/refused.log"; then
        bad "README echo_client.py succeeded against $ECHO_IP:$((ECHO_PORT + 1)), where nothing listens"
    else
        ok "README echo_client.py fails against a port nobody listens on ($(tail -1 "$WORK/refused.log"))"
    fi

    "$VENV/bin/python" -m machnet sidecar --help >/dev/null && "$VENV/bin/machnet-sidecar" --help >/dev/null &&
        ok "the wheel's sidecar: python -m machnet sidecar --help, machnet-sidecar --help" ||
        bad "the wheel's sidecar entry points"
    [ "$INSTALL_FAILED" -eq 0 ]
}

main "$@"
