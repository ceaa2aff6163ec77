#!/usr/bin/env bash
# Install test `deb`: the Debian package as an administrator installs it (root only).
#   1. dpkg -i $DIST/deb/machnet_*_amd64.deb (refuses to run if a `machnet` package is already
#      installed); checks /usr/bin/machnet, the conffile /etc/machnet/machnet.toml, the user and
#      group `machnet` (sysusers.d), the unit (systemd-analyze verify, and its key settings)
#      and, where systemd runs, that the service is active
#   2. starts /usr/bin/machnet from the unit's own ExecStart line (the installed default
#      config) as the unit's user, with only what a loopback test needs on top: --local-ip
#      127.0.0.3, a private control socket, and the UDP port pool of the test sidecars
#   3. echoes through it to $ECHO_IP:$ECHO_PORT with the C SDK's README example (built from
#      $DIST/c as ci/install/c.sh does, statically) and reads `machnet stat --json`
#   4. stops it (SIGTERM, exit status 0) and purges the package (and the `machnet` user and
#      group, which Debian keeps on purge, if this test created them): the machine is left as
#      it was
# Not root: prints `install-deb: SKIP - ...` and counts nothing.
#
# Env (from ci/install-test.sh; see ci/lib/install.sh): DIST (deb/ and c/), WORK, ECHO_IP,
# ECHO_PORT, ROOT (READMEs only); MACHNET_SOCK (the test sidecar whose UDP port pool this one
# must share: MACHNET_UDP_PORT_BASE / MACHNET_UDP_PORT_COUNT if set, else read from that
# sidecar's command line).
# Output: `install-deb: ok - ...` / `install-deb: FAIL - ...` lines; exit status 1 on failure.
set -uo pipefail
# shellcheck source=ci/install/c.sh
source "$(dirname "${BASH_SOURCE[0]}")/c.sh" # prepare, install_and_build; ci/lib/install.sh
PART=deb
PROJECT=$WORK/c-client
RUNDIR=""       # the test sidecar's control socket directory (owned by the unit's user)
SIDECAR_PID=""
INSTALLED=0     # 1 while this test's package is installed
CREATED_USER=0  # 1 if the package created the `machnet` user during this test
UNIT=""

# Sets POOL_BASE / POOL_COUNT: the UDP port pool of the sidecar at $MACHNET_SOCK.
peer_pool() {
    POOL_BASE=${MACHNET_UDP_PORT_BASE:-}
    POOL_COUNT=${MACHNET_UDP_PORT_COUNT:-}
    [ -z "$POOL_BASE" ] || { POOL_COUNT=${POOL_COUNT:-16}; return 0; }
    local pid
    for pid in $(pgrep -x machnet); do
        pool_of_pid "$pid" && return 0
    done
    bad "cannot tell the UDP port pool of the sidecar at $MACHNET_SOCK (set MACHNET_UDP_PORT_BASE)"
    return 1
}

# pool_of_pid PID: if PID's command line has `--control-socket $MACHNET_SOCK`, sets POOL_BASE /
# POOL_COUNT from its arguments (the sidecar's defaults where absent) and returns 0.
pool_of_pid() {
    local args=() i found=0 base=31580 count=16
    mapfile -d '' args <"/proc/$1/cmdline" 2>/dev/null || return 1
    for ((i = 0; i + 1 < ${#args[@]}; i++)); do
        case ${args[i]} in
        --control-socket) [ "${args[i + 1]}" != "$MACHNET_SOCK" ] || found=1 ;;
        --udp-port-base) base=${args[i + 1]} ;;
        --udp-port-count) count=${args[i + 1]} ;;
        esac
    done
    [ "$found" = 1 ] || return 1
    POOL_BASE=$base POOL_COUNT=$count
}

install_deb() {
    local debs=("$DIST"/deb/machnet_*_amd64.deb)
    if [ ${#debs[@]} -ne 1 ] || [ ! -f "${debs[0]}" ]; then
        bad "expected one $DIST/deb/machnet_*_amd64.deb"
        return 1
    fi
    if dpkg-query -W -f '${Status}' machnet 2>/dev/null | grep -q installed; then
        bad "a machnet package is already installed on this machine; not touching it"
        return 1
    fi
    getent passwd machnet >/dev/null || CREATED_USER=1
    if dpkg -i "${debs[0]}" >"$WORK/dpkg-i.log" 2>&1; then
        INSTALLED=1
        ok "dpkg -i $(basename "${debs[0]}")"
    else
        bad "dpkg -i: $(tail -n 5 "$WORK/dpkg-i.log")"
        return 1
    fi
}

check_installed_files() {
    local conffiles
    UNIT=$(dpkg -L machnet | grep -E '/systemd/system/machnet\.service$')
    conffiles=$(dpkg-query -W -f '${Conffiles}' machnet)
    if [ -x /usr/bin/machnet ] && [ -f "$UNIT" ] && [ -f /etc/machnet/machnet.toml ] &&
        grep -q '^ /etc/machnet/machnet.toml ' <<<"$conffiles"; then
        ok "installed /usr/bin/machnet, $UNIT, /etc/machnet/machnet.toml (conffile)"
    else
        bad "installed files: unit '$UNIT', conffiles '$conffiles', $(ls -l /usr/bin/machnet /etc/machnet 2>&1)"
        return 1
    fi
    if getent passwd machnet >/dev/null && getent group machnet >/dev/null; then
        ok "user and group machnet exist (sysusers.d)"
    else
        bad "no user or group machnet after install"
    fi
}

# `unit_value KEY`: the unit's value for KEY (the last one given).
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }

check_unit() {
    local out
    if command -v systemd-analyze >/dev/null; then
        if out=$(systemd-analyze verify "$UNIT" 2>&1); then
            ok "systemd-analyze verify machnet.service${out:+ ($out)}"
        else
            bad "systemd-analyze verify machnet.service: $out"
        fi
    fi
    if [ "$(unit_value ExecStart)" = "/usr/bin/machnet --config /etc/machnet/machnet.toml" ] &&
        [ "$(unit_value RuntimeDirectory)" = machnet ] && [ "$(unit_value User)" = machnet ] &&
        [ "$(unit_value Restart)" = on-failure ] && [ "$(unit_value NoNewPrivileges)" = yes ]; then
        ok "unit runs the default config as user machnet, RuntimeDirectory=machnet, Restart=on-failure, hardened"
    else
        bad "unit settings: $(grep -E '^(ExecStart|RuntimeDirectory|User|Restart|NoNewPrivileges)=' "$UNIT" | tr '\n' ' ')"
    fi
    if [ -d /run/systemd/system ]; then
        if systemctl is-active --quiet machnet; then
            ok "machnet.service is active (started by the package)"
        else
            bad "machnet.service is not active: $(systemctl status machnet 2>&1 | tail -n 5)"
        fi
    else
        echo "install-deb: note - systemd is not running here: the service itself is not started"
    fi
}

# Starts the unit's ExecStart command as the unit's user, with the loopback test's overrides.
start_installed_sidecar() {
    local exec_start cmd=()
    exec_start=$(unit_value ExecStart)
    read -r -a cmd <<<"$exec_start"
    if ! RUNDIR=$(mktemp -d /run/machnet-install-test.XXXXXX) || ! chown machnet:machnet "$RUNDIR"; then
        bad "cannot make a control socket directory in /run"
        return 1
    fi
    setpriv --reuid machnet --regid machnet --init-groups -- "${cmd[@]}" \
        --local-ip 127.0.0.3 --control-socket "$RUNDIR/machnet.sock" \
        --udp-port-base "$POOL_BASE" --udp-port-count "$POOL_COUNT" >"$WORK/sidecar.log" 2>&1 &
    SIDECAR_PID=$!
    for _ in $(seq 200); do
        if [ -S "$RUNDIR/machnet.sock" ]; then
            ok "/usr/bin/machnet runs the installed config as user machnet (127.0.0.3, pool $POOL_BASE+$POOL_COUNT)"
            return 0
        fi
        kill -0 "$SIDECAR_PID" 2>/dev/null || break
        sleep 0.05
    done
    bad "installed sidecar did not start: $(tail -n 5 "$WORK/sidecar.log")"
    return 1
}

echo_through_it() {
    local out
    prepare && install_and_build || return 1
    if out=$(cd "$PROJECT" && MACHNET_SOCKET=$RUNDIR/machnet.sock \
        timeout 60 ./echo_client_static "$ECHO_IP" "$ECHO_PORT" 2>&1) && [[ "$out" == "3 echoes ok"* ]]; then
        ok "echo through the installed sidecar to $ECHO_IP:$ECHO_PORT: $out"
    else
        bad "echo through the installed sidecar to $ECHO_IP:$ECHO_PORT: $out"
    fi
}

check_stat() {
    local json
    if json=$(/usr/bin/machnet stat --control-socket "$RUNDIR/machnet.sock" --json 2>&1) &&
        python3 -c '
import json, sys
d = json.loads(sys.argv[1])
assert d["version"] == 1 and d["sidecar"]["local_ip"] == "127.0.0.3", d["sidecar"]
assert sum(e["connects"] for e in d["engines"]) == 1, d["engines"]
' "$json" 2>"$WORK/stat.err"; then
        ok "machnet stat --json: local_ip 127.0.0.3, 1 connect"
    else
        bad "machnet stat --json: $(tail -n 3 "$WORK/stat.err") ${json:0:300}"
    fi
}

stop_sidecar() {
    local rc
    kill -TERM "$SIDECAR_PID"
    wait "$SIDECAR_PID"
    rc=$?
    SIDECAR_PID=""
    if [ "$rc" -eq 0 ]; then
        ok "installed sidecar stopped on SIGTERM (exit status 0)"
    else
        bad "installed sidecar exited $rc on SIGTERM: $(tail -n 5 "$WORK/sidecar.log")"
    fi
}

purge() {
    if dpkg --purge machnet >"$WORK/dpkg-purge.log" 2>&1; then
        INSTALLED=0
    else
        bad "dpkg --purge machnet: $(tail -n 5 "$WORK/dpkg-purge.log")"
        return 1
    fi
    if [ "$CREATED_USER" = 1 ]; then
        userdel machnet 2>/dev/null
        ! getent group machnet >/dev/null || groupdel machnet
    fi
    if [ ! -e /usr/bin/machnet ] && [ ! -e /etc/machnet ] && [ ! -e "$UNIT" ] &&
        ! ls /etc/systemd/system/*.wants/machnet.service >/dev/null 2>&1; then
        ok "dpkg --purge machnet removed the binary, the config and the unit"
    else
        bad "left after purge: $(find /usr/bin/machnet /etc/machnet "$UNIT" /etc/systemd/system/*.wants/machnet.service -maxdepth 0 2>/dev/null | tr '\n' ' ')"
    fi
}

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    [ -z "$SIDECAR_PID" ] || { kill "$SIDECAR_PID" 2>/dev/null; wait "$SIDECAR_PID" 2>/dev/null; }
    [ "$INSTALLED" = 0 ] || purge
    [ -z "$RUNDIR" ] || rm -rf "$RUNDIR"
}

main() {
    if [ "$(id -u)" != 0 ]; then
        echo "install-deb: SKIP - not root: dpkg -i needs root (nothing counted)"
        exit 0
    fi
    require_no_rust || { bad "Rust is reachable: an install test must not build Rust"; exit 1; }
    trap cleanup EXIT
    peer_pool || exit 1
    install_deb || exit 1
    check_installed_files || exit 1
    check_unit
    start_installed_sidecar || exit 1
    echo_through_it
    check_stat
    stop_sidecar
    purge
    [ "$INSTALL_FAILED" -eq 0 ]
}

main "$@"
