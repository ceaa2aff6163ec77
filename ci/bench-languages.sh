#!/usr/bin/env bash
# Echo RTT from every language binding against the same server in one run (issue 9): two
# sidecars on kernel UDP (127.0.0.1 / 127.0.0.2, private control sockets in a temp dir, no root),
# `machnet-echo server` on the first, and each language's echo client (64 B, window 1) on the
# second. Prints per language the median over rounds of p50 / p99 and their ratio to Rust.
#
#   ci/bench-languages.sh                 # table on stdout
#   ci/bench-languages.sh --json          # raw reports (JSON lines, plus "lang" and "round") on
#                                         # stdout, the table on stderr
#   JSON=raw.jsonl ci/bench-languages.sh  # raw reports into a file, the table on stdout
#
# DURATION (s per client, default 3), WARMUP (default 0.5), ROUNDS (default 2; each round runs
# every language once, starting with a different one each round). KEEP_LOGS=1 keeps the temp dir.
# Builds what is missing (niced), into $CARGO_TARGET_DIR (default target/): the release sidecar,
# machnet-echo and machnet-ffi; $TARGET/bench-go; the venv $TARGET/bench-venv with the wheel
# (reused if present: delete it to pick up Python changes); the Node addon if node/*.node is
# missing; $TARGET/bench-csharp; the JVM jar (`mvn -DskipTests install` in jvm/, into ~/.m2, if it
# is missing or older than jvm/ sources) and $TARGET/bench-jvm (jvm/bench/EchoClient.java).
# A language whose toolchain is missing is "skipped"; a build or
# client that fails, or an echo that differs, makes the script exit non-zero. No timing checks.
set -euo pipefail
JSON=${JSON:+$(realpath -m "$JSON")}  # relative to the caller's directory
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TARGET=$CARGO_TARGET_DIR REL=$CARGO_TARGET_DIR/release
DURATION=${DURATION:-3} WARMUP=${WARMUP:-0.5} ROUNDS=${ROUNDS:-2}
PORT=888
case ${1:-} in --json) JSON=/dev/stdout ;; "") ;; *) sed -n 2,20p "$0" >&2; exit 2 ;; esac
# Each binding in its default wait mode, plus the alternatives the goals name: go-thread (the Go
# client with --wait thread), python-asyncio (the Python client with --asyncio: await recv_async()).
LANGS=(rust go go-thread python python-asyncio node csharp jvm)
declare -A SKIP=()  # language -> "skipped (why)" or "FAILED (why)"
FAILED=0

DIR=$(mktemp -d "${TMPDIR:-/tmp}/machnet-bench-lang.XXXXXX")
PIDS=()
CLIENT=  # the running client (timeout forwards the signal to it)
cleanup() {
    for p in $CLIENT "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs in $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "bench-languages: $*" >&2; }
broken() { log "FAILED: $1: $2"; SKIP[$1]="FAILED ($2)"; FAILED=1; }
build() { nice -n 10 "$@" >>"$DIR/build.log" 2>&1 || { tail -20 "$DIR/build.log" >&2; return 1; }; }

# ----- builds -----
log "cargo build --release (sidecar, echo, ffi) into $TARGET"
nice -n 10 cargo build --quiet --release -p machnet-sidecar -p machnet-echo -p machnet-ffi

if ! command -v go >/dev/null; then SKIP[go]="skipped (no go)"
else
    log "go build"
    (cd go && CGO_LDFLAGS="-L$REL" build go build -o "$TARGET/bench-go/machnet-echo-go" ./cmd/machnet-echo-go) ||
        broken go "go build"
fi
[ -z "${SKIP[go]:-}" ] || SKIP[go-thread]=${SKIP[go]}

VENV=$TARGET/bench-venv
if ! command -v python3 >/dev/null; then SKIP[python]="skipped (no python3)"
elif ! "$VENV/bin/python" -c 'import machnet' 2>/dev/null; then
    log "python venv with the wheel: $VENV"
    if ! { [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"; } ||
        ! build "$VENV/bin/pip" install -q --disable-pip-version-check maturin==1.16.0; then
        rm -rf "$VENV"; SKIP[python]="skipped (no python3 venv / pip install maturin failed)"
    elif ! (cd python && PATH="$VENV/bin:$PATH" build maturin build --release -i "$VENV/bin/python" -o "$DIR/wheels") ||
        ! build "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall "$DIR"/wheels/machnet-*.whl; then
        rm -rf "$VENV"; broken python "wheel build / install"
    fi
fi
[ -z "${SKIP[python]:-}" ] || SKIP[python-asyncio]=${SKIP[python]}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then SKIP[node]="skipped (no node/npm)"
elif ! ls node/*.node >/dev/null 2>&1; then
    log "node addon (npm ci && npm run build)"
    (cd node && build npm ci --no-audit --no-fund --loglevel=error && build npm run --silent build) ||
        broken node "addon build"
fi

CS=$TARGET/bench-csharp
if ! command -v mcs >/dev/null || ! command -v mono >/dev/null; then SKIP[csharp]="skipped (no mcs/mono)"
elif [ ! -f "$CS/machnet-echo-cs.exe" ] || [ -n "$(find csharp/src csharp/examples/echo -newer "$CS/machnet-echo-cs.exe")" ]; then
    log "mcs -> $CS"
    mkdir -p "$CS"
    MCS=(mcs -langversion:7.2 -nowarn:1691 -debug- -optimize+)
    { build "${MCS[@]}" -unsafe -target:library -out:"$CS/Machnet.dll" csharp/src/*.cs &&
        build "${MCS[@]}" -out:"$CS/machnet-echo-cs.exe" -r:"$CS/Machnet.dll" csharp/examples/echo/*.cs; } ||
        broken csharp "mcs"
fi

M2=$HOME/.m2/repository
JVM_JAR=$M2/io/github/machnet-rs/machnet/0.1.0/machnet-0.1.0.jar
JVM_CP=$JVM_JAR:$M2/org/jetbrains/kotlin/kotlin-stdlib/2.4.21/kotlin-stdlib-2.4.21.jar:$M2/net/java/dev/jna/jna/5.19.1/jna-5.19.1.jar
if ! command -v mvn >/dev/null || ! command -v javac >/dev/null; then SKIP[jvm]="skipped (no mvn/javac)"
else
    if [ ! -f "$JVM_JAR" ] || [ -n "$(find jvm/src jvm/pom.xml jvm/Cargo.toml -newer "$JVM_JAR")" ]; then
        log "jvm jar (mvn -DskipTests install in jvm/)"
        (cd jvm && build mvn -B -q -DskipTests install) || broken jvm "mvn install"
    fi
    if [ -z "${SKIP[jvm]:-}" ] && { [ ! -f "$TARGET/bench-jvm/EchoClient.class" ] ||
        [ -n "$(find jvm/bench "$JVM_JAR" -newer "$TARGET/bench-jvm/EchoClient.class")" ]; }; then
        log "javac -> $TARGET/bench-jvm"
        mkdir -p "$TARGET/bench-jvm"
        build javac -d "$TARGET/bench-jvm" -cp "$JVM_CP" jvm/bench/EchoClient.java || broken jvm "javac"
    fi
fi

# ----- sidecars and the echo server -----
. ci/lib/sidecars.sh
POOL=$(free_udp_pool 8 127.0.0.1 127.0.0.2)
[ -n "$POOL" ] || { log "no free UDP port range on 127.0.0.1/.2"; exit 1; }
start_sidecar a 127.0.0.1 "$REL/machnet" "$DIR" "$POOL"
start_sidecar b 127.0.0.2 "$REL/machnet" "$DIR" "$POOL"
"$REL/machnet-echo" server --socket "$DIR/a.sock" --port "$PORT" 2>"$DIR/server.log" &
PIDS+=($!)
wait_for_line "$DIR/server.log" "listening on"

# ----- clients, interleaved (each round starts with the next language) -----
client() { # lang args...: runs (execs) that language's echo client under a time limit
    local lang=$1 t=(timeout "$LIMIT")
    shift
    case $lang in
        rust) exec "${t[@]}" "$REL/machnet-echo" client "$@" ;;
        go) exec "${t[@]}" "$TARGET/bench-go/machnet-echo-go" "$@" ;;
        go-thread) exec "${t[@]}" "$TARGET/bench-go/machnet-echo-go" --wait thread "$@" ;;
        python) exec "${t[@]}" "$VENV/bin/python" python/bench/echo_client.py "$@" ;;
        python-asyncio) exec "${t[@]}" "$VENV/bin/python" python/bench/echo_client.py --asyncio "$@" ;;
        node) exec "${t[@]}" node node/bench/echo-client.js "$@" ;;
        jvm) exec "${t[@]}" java -cp "$TARGET/bench-jvm:$JVM_CP" EchoClient "$@" ;;
        csharp) LD_LIBRARY_PATH=$REL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec "${t[@]}" mono "$CS/machnet-echo-cs.exe" "$@" ;;
    esac
}
LIMIT=$(awk "BEGIN{print int($DURATION + $WARMUP + 60)}")
for round in $(seq "$ROUNDS"); do
    for i in "${!LANGS[@]}"; do
        lang=${LANGS[$(( (i + round - 1) % ${#LANGS[@]} ))]}
        [ -z "${SKIP[$lang]:-}" ] || continue
        log "round $round: $lang"
        out=$DIR/$lang.$round
        # In the background (a subshell that execs the client), so that a signal runs the trap at once.
        (client "$lang" --socket "$DIR/b.sock" --remote 127.0.0.1 --port "$PORT" \
            --size 64 --window 1 --duration "$DURATION" --warmup "$WARMUP" --json) >"$out.json" 2>"$out.err" &
        CLIENT=$!
        rc=0; wait "$CLIENT" || rc=$?; CLIENT=
        [ "$rc" -eq 0 ] || { cat "$out.err" >&2; broken "$lang" "client exited $rc in round $round"; }
    done
done

# ----- report (a client that exited 0 but printed no report, or a mismatch, is a failure too) -----
ARGS=()
for lang in "${LANGS[@]}"; do ARGS+=("$lang=${SKIP[$lang]:-}"); done
python3 - "$DIR" "$ROUNDS" "$JSON" "${ARGS[@]}" <<'PY' || FAILED=1
import json, statistics, sys
d, rounds, raw_path, langs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
raw, rows, bad = [], {}, False
for lang, skip in (a.split("=", 1) for a in langs):
    reps = []
    for n in range(1, rounds + 1):
        try:
            r = dict(json.loads(open(f"{d}/{lang}.{n}.json").read().splitlines()[-1]), lang=lang, round=n)
        except (OSError, IndexError, ValueError):
            continue
        raw.append(r)  # Node's report has no "mismatches" (its client throws on one instead)
        if r.get("mismatches", 0) or not r.get("messages"):
            skip = skip or f"FAILED ({r.get('mismatches')} mismatches, {r.get('messages')} messages)"
        reps.append(r)
    skip = skip or ("" if reps else "FAILED (no report)")
    bad = bad or skip.startswith("FAILED")
    rows[lang] = skip or [statistics.median(r["rtt_us"][q] for r in reps) for q in ("p50", "p99")]
if raw_path:
    with open(raw_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in raw)
out = sys.stderr if raw_path == "/dev/stdout" else sys.stdout
base = rows["rust"] if isinstance(rows["rust"], list) else None
print(f"echo RTT, 64 B, window 1, median of {rounds} round(s)", file=out)
print(f"{'language':14} {'p50 us':>8} {'p99 us':>8} {'p50/rust':>9} {'p99/rust':>9}", file=out)
for lang, v in rows.items():
    if isinstance(v, str):
        print(f"{lang:14} {v}", file=out)
    else:
        ratio = [f"{a / b:.2f}x" if base else "n/a" for a, b in zip(v, base or v)]
        print(f"{lang:14} {v[0]:8.1f} {v[1]:8.1f} {ratio[0]:>9} {ratio[1]:>9}", file=out)
sys.exit(1 if bad else 0)
PY
exit "$FAILED"
