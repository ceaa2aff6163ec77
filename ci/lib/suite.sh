# Scaffolding shared by the binding suites (ci/ffi.sh, ci/csharp.sh, ci/raft.sh, ci/python.sh,
# ci/node.sh). Set SUITE to the suite's label, then source this file. It provides:
#
#   pass MSG / fail MSG   count one check (printed as "<SUITE>: ok - MSG" / "... FAIL - MSG")
#   finish                prints the failures, the wall time and `RESULT: <P> passed, <F> failed`,
#                         then exits non-zero if anything failed or nothing passed
#   die MSG               fail MSG, then finish
#   suite_on_exit         if the script defines it, runs first on exit (before PIDS are killed)
#   DIR                   a fresh work directory, removed on exit (kept with KEEP_LOGS=1)
#   PIDS                  processes to kill on exit (append the ones you start)

PASSED=0
FAILED=0
FAILURES=()
SUITE_START=$(date +%s)
pass() { PASSED=$((PASSED + 1)); echo "$SUITE: ok - $1"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$1"); echo "$SUITE: FAIL - $1" >&2; }
finish() {
    [ ${#FAILURES[@]} -gt 0 ] && printf 'failed: %s\n' "${FAILURES[@]}" >&2
    echo "$SUITE: wall time $(($(date +%s) - SUITE_START)) s"
    echo "RESULT: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
    exit
}
die() {
    fail "$*"
    finish
}

DIR=$(mktemp -d "${TMPDIR:-/tmp}/machnet-$SUITE.XXXXXX")
PIDS=()
suite_cleanup() {
    if declare -F suite_on_exit >/dev/null; then suite_on_exit; fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs in $DIR" >&2; else rm -rf "$DIR"; fi
}
trap suite_cleanup EXIT
trap 'exit 130' INT TERM
