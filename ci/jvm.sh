#!/usr/bin/env bash
# The JVM binding (jvm/): the uniffi crate machnet-jvm, its generated Kotlin (JNA) layer, the
# Java/Kotlin facade, the JUnit suite and the Maven artifact io.github.machnet-rs:machnet.
#
#   ci/jvm.sh          # BENCH_DURATION=2 (seconds per echo client), 0 skips the comparison
#
# Steps: rustfmt + clippy on the crate; `cargo build --release` of the crate (with the crate's
# own `uniffi-bindgen` bin) and of the sidecar, echo, KV and C ABI binaries; two real sidecars
# (kernel UDP on 127.0.0.1 / 127.0.0.2, private control sockets in a temp dir, no root) with
# `machnet-echo server`, `machnet-kv server` and a 3-node Raft cluster (examples/raft, Go) on
# the first (ci/lib/sidecars.sh); `mvn -B -q install` in jvm/ (generates the Kotlin with
# uniffi-bindgen, compiles, runs the JUnit suite against the sidecars, including every case of
# conformance/cases.json, and installs the jar into ~/.m2); checks the README's Kotlin example is
# the one the suite runs; then a throwaway Maven project in a temp dir with ONE dependency line
# compiles and runs the README's Java example (extracted from jvm/README.md) against the echo
# server, with nothing but Maven's copy of the jar (no LD_LIBRARY_PATH); last, the JVM echo
# client (jvm/bench/EchoClient.java) next to the Rust one (64 B, window 1; informational).
#
# Maven downloads go to ~/.m2 (the first run on a fresh machine fetches the Kotlin compiler,
# JNA, JUnit and the plugins: ~100 MB). Respects CARGO_TARGET_DIR (default: target/ of the
# checkout). KEEP_LOGS=1 keeps the temp dir. Ends with exactly one line
# `RESULT: <P> passed, <F> failed` (JUnit tests + checks) and exits non-zero if anything failed.
# shellcheck source-path=SCRIPTDIR
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
REL=$TARGET/release
BENCH_DURATION=${BENCH_DURATION:-2}
ECHO_PORT=888
KV_PORT=900
VERSION=0.1.0
M2=${MAVEN_REPO:-$HOME/.m2/repository}
JAR=$M2/io/github/machnet-rs/machnet/$VERSION/machnet-$VERSION.jar

SUITE=jvm
# shellcheck source=lib/suite.sh
. ci/lib/suite.sh

# ----- the crate -----
crate_checks() {
    if cargo fmt --manifest-path jvm/Cargo.toml -- --check; then pass "rustfmt"; else fail "rustfmt (jvm/)"; fi
    if cargo clippy --quiet --release --locked --manifest-path jvm/Cargo.toml --all-targets --features bindgen \
        -- -D warnings; then pass "clippy"; else fail "clippy (jvm/)"; fi
}

build_all() {
    echo "== cargo build --release: machnet-jvm (+ uniffi-bindgen), sidecar, echo, kv, ffi" >&2
    cargo build --quiet --release --locked --manifest-path jvm/Cargo.toml --features bindgen ||
        die "cargo build (jvm/)"
    cargo build --quiet --release -p machnet-sidecar -p machnet-echo -p machnet-kv -p machnet-ffi ||
        die "cargo build (sidecar, echo, kv, ffi)"
    pass "cargo build --release (libmachnet_jvm.so $(du -k "$REL/libmachnet_jvm.so" | cut -f1) KiB)"
}

# ----- Maven: generate, compile, test, install -----
# Adds the Surefire reports' counts to the suite's (every JUnit test is one pass or fail).
count_junit() { # reports dir
    local counts np nf
    counts=$(python3 - "$1" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
passed = failed = 0
for f in sorted(glob.glob(sys.argv[1] + "/TEST-*.xml")):
    for case in ET.parse(f).getroot().iter("testcase"):
        name = case.get("classname", "").rsplit(".", 1)[-1] + "." + case.get("name")
        if case.find("skipped") is not None:
            print("jvm: skipped - " + name, file=sys.stderr)
        elif case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            print("jvm: FAIL - " + name, file=sys.stderr)
        else:
            passed += 1
            print("jvm: ok - " + name, file=sys.stderr)
print(passed, failed)
PY
    )
    read -r np nf <<<"$counts"
    echo "junit: $np passed, $nf failed"
    PASSED=$((PASSED + np))
    FAILED=$((FAILED + nf))
    [ "$nf" -eq 0 ] || FAILURES+=("JUnit: $nf tests (see above)")
    [ "$np" -gt 0 ] || fail "JUnit ran no test"
}

mvn_install() {
    echo "== mvn -B -q install (jvm/: uniffi-bindgen, kotlinc, JUnit against the sidecars)" >&2
    local t0=$SECONDS rc
    rm -rf jvm/target/surefire-reports
    (cd jvm && mvn -B -q -Dstyle.color=never install) >"$DIR/mvn.log" 2>&1
    rc=$?
    grep -v '^\s*at \|^\[INFO\]' "$DIR/mvn.log" | tail -60
    echo "mvn install: exit $rc in $((SECONDS - t0)) s"
    if [ -d jvm/target/surefire-reports ]; then count_junit jvm/target/surefire-reports; fi
    [ $rc -eq 0 ] || fail "mvn install (exit $rc; log above)"
    local names
    names=$(jar tf "$JAR" 2>/dev/null)
    if grep -qx 'linux-x86-64/libmachnet_jvm.so' <<<"$names"; then
        pass "installed $JAR ($(du -k "$JAR" | cut -f1) KiB, carries linux-x86-64/libmachnet_jvm.so)"
    else
        fail "no installed jar with linux-x86-64/libmachnet_jvm.so at $JAR"
    fi
}

# ----- README examples -----
readme_block() { # language: prints the first ```<language> block of jvm/README.md
    awk -v lang="$1" '$0 == "```" lang { on = 1; next } on && $0 == "```" { exit } on { print }' jvm/README.md
}

kotlin_example_matches() {
    if diff -u <(readme_block kotlin) <(tail -n +6 jvm/src/test/kotlin/io/github/machnetrs/machnet/test/KotlinExample.kt); then
        pass "README Kotlin example is the one ReadmeExamplesTest runs"
    else
        fail "README Kotlin example differs from jvm/src/test/kotlin/.../KotlinExample.kt"
    fi
}

# A fresh Maven project whose pom names the binding in ONE dependency (the README's snippet),
# running the README's Java example against the echo server on sidecar a, via sidecar b.
throwaway_project() {
    echo "== a throwaway Maven project with one dependency line runs the README's Java example" >&2
    local app=$DIR/app dep out
    mkdir -p "$app/src/main/java"
    dep=$(awk '$0 == "```xml" { on = 1; next } on && $0 == "```" { exit } on { print }' jvm/README.md)
    [ "$(grep -c '<dependency>' <<<"$dep")" = 1 ] || { fail "README's Maven snippet is not one <dependency>"; return; }
    cat >"$app/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>example</groupId>
  <artifactId>echo-example</artifactId>
  <version>1</version>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
$dep
  </dependencies>
  <build>
    <plugins>
      <plugin><groupId>org.apache.maven.plugins</groupId><artifactId>maven-compiler-plugin</artifactId><version>3.14.1</version></plugin>
      <plugin><groupId>org.apache.maven.plugins</groupId><artifactId>maven-resources-plugin</artifactId><version>3.3.1</version></plugin>
      <plugin><groupId>org.codehaus.mojo</groupId><artifactId>exec-maven-plugin</artifactId><version>3.6.3</version></plugin>
    </plugins>
  </build>
</project>
POM
    readme_block java >"$app/src/main/java/EchoExample.java"
    if (cd "$app" && env -u LD_LIBRARY_PATH mvn -B -q -Dstyle.color=never compile exec:java \
        -Dexec.mainClass=EchoExample -Dexec.args="$DIR/b.sock 127.0.0.1 $ECHO_PORT") >"$DIR/app.log" 2>&1 &&
        out=$(grep -o 'echoed [0-9]* and [0-9]* bytes' "$DIR/app.log") && [ "$out" = "echoed 5 and 1048576 bytes" ]; then
        pass "one-dependency Maven project ran the README Java example: $out"
    else
        cat "$DIR/app.log" >&2
        fail "throwaway Maven project (README Java example)"
    fi
}

# ----- JVM echo client next to the Rust one -----
echo_comparison() {
    [ "$BENCH_DURATION" != 0 ] || return 0
    echo "== echo RTT, 64 B, window 1: JVM client vs Rust client (same sidecars and server)" >&2
    local cp=$JAR:$M2/org/jetbrains/kotlin/kotlin-stdlib/2.4.21/kotlin-stdlib-2.4.21.jar:$M2/net/java/dev/jna/jna/5.19.1/jna-5.19.1.jar
    local args=(--socket "$DIR/b.sock" --remote 127.0.0.1 --port "$ECHO_PORT" --size 64 --window 1
        --duration "$BENCH_DURATION" --warmup 0.5 --json)
    local jvm_json rust_json
    if mkdir -p "$DIR/bench" && javac -d "$DIR/bench" -cp "$cp" jvm/bench/EchoClient.java &&
        jvm_json=$(timeout 120 java -cp "$DIR/bench:$cp" EchoClient "${args[@]}") &&
        rust_json=$(timeout 120 "$REL/machnet-echo" client "${args[@]}") &&
        print_echo_pair "jvm" "$jvm_json" "$rust_json"; then
        pass "jvm_echo_client (RTT report, every echo verified)"
    else
        fail "jvm_echo_client"
    fi
}

{ command -v mvn && command -v java && command -v javac; } >/dev/null || die "needs java (JDK >= 11) and mvn on PATH"
crate_checks
build_all
# shellcheck source=lib/sidecars.sh
. ci/lib/sidecars.sh
# With the Raft app of the conformance cases: exports MACHNET_CONFORMANCE_RAFT_PORT.
start_test_apps "$REL" "$DIR" "$ECHO_PORT" "$KV_PORT" raft ||
    die "sidecars, echo, kv servers and raft cluster start"
export_c_abi_test_env "$REL" "$DIR" "$ECHO_PORT" "$KV_PORT"
mvn_install
kotlin_example_matches
throwaway_project
echo_comparison
finish
