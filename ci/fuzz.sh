#!/usr/bin/env bash
# Fuzz the machnet-core wire-format parser (cargo-fuzz target `parse_packet`, libFuzzer).
#
# Usage:
#   ci/fuzz.sh                          # 30 seconds
#   FUZZ_SECONDS=600 ci/fuzz.sh         # longer run; FUZZ_SECONDS=0 only replays the corpus
#   FUZZ_SANITIZER=address ci/fuzz.sh   # AddressSanitizer build (about 7x slower)
#
# Environment:
#   FUZZ_SECONDS    fuzzing time in seconds (default 30; the build before it is not counted)
#   FUZZ_SANITIZER  none (default) | address | leak | memory | thread
#   FUZZ_JOBS       parallel fuzzing processes (default 1)
#   FUZZ_ARGS       extra libFuzzer arguments, e.g. "-max_len=2048"
#
# Stable toolchain (this repository must not need nightly). cargo-fuzz's default build passes
# `-Zsanitizer=address` to rustc, which stable rejects with "the option `Z` is only accepted on the
# nightly compiler". Checked on rustc 1.95.0 (stable) with cargo-fuzz 0.13.2:
#   * `cargo fuzz run --sanitizer none` passes no -Z flag at all (only stable -C flags: sancov
#     instrumentation, --cfg fuzzing, debug assertions) and works on plain stable. ~1.5M exec/s
#     here. This is the default: the wire code is safe Rust, so speed buys more than ASan.
#   * With a sanitizer, `RUSTC_BOOTSTRAP=1` makes stable rustc accept the -Z flag: ASan works,
#     ~170k exec/s. The script sets it only in that case (it can change what some build scripts
#     detect, so it is not set for the default build).
# Nothing here needs a nightly toolchain or a download other than `cargo install` from crates.io.
#
# Inputs and outputs (relative to machnet-core/fuzz/):
#   seeds/               committed seed packets (kept current by wire::tests::fuzz_seeds_are_current;
#                        regenerate with `MACHNET_REGEN_FUZZ_SEEDS=1 cargo test -p machnet-core --lib
#                        fuzz_seeds`)
#   parse_packet.dict    libFuzzer dictionary
#   corpus/parse_packet/ working corpus, grows across runs (gitignored)
#   artifacts/parse_packet/  crashing inputs (gitignored); reproduce one with
#                        `cargo fuzz run --sanitizer none parse_packet <file>` in machnet-core/fuzz
#
# Exit status: 0 if no crash was found, non-zero otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/machnet-core/fuzz"
target=parse_packet
seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-1}"

case "$seconds" in '' | *[!0-9]*) echo "FUZZ_SECONDS must be a whole number" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

corpus="$fuzz_dir/corpus/$target"
artifacts="$fuzz_dir/artifacts/$target"
mkdir -p "$corpus" "$artifacts"
log="$fuzz_dir/target/fuzz-$target.log"
mkdir -p "$(dirname "$log")"

cd "$fuzz_dir"
echo "==> $(cargo fuzz --version), $(rustc --version), sanitizer=$sanitizer"
echo "==> building $target"
cargo fuzz build --sanitizer "$sanitizer" "$target"

if [ "$seconds" -eq 0 ]; then
    limit=(-runs=0)
else
    limit=(-max_total_time="$seconds")
fi
echo "==> fuzzing $target for ${seconds}s (corpus: $corpus, seeds: $fuzz_dir/seeds)"
status=0
# The first corpus directory receives new inputs; seeds/ is only read.
# shellcheck disable=SC2086  # FUZZ_ARGS is a list of arguments
cargo fuzz run --sanitizer "$sanitizer" --jobs "$jobs" "$target" "$corpus" "$fuzz_dir/seeds" -- \
    "${limit[@]}" \
    -dict="$fuzz_dir/$target.dict" \
    -artifact_prefix="$artifacts/" \
    -timeout=10 \
    -print_final_stats=1 \
    ${FUZZ_ARGS:-} 2>&1 | tee "$log" || status=$?

runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
echo "==> $target: ${runs:-?} executions, ${rate:-?} exec/s, corpus $(find "$corpus" -type f | wc -l) files"
if [ "$status" -ne 0 ]; then
    echo "==> FAILED (exit $status); crashing inputs in $artifacts:" >&2
    ls -l "$artifacts" >&2 || true
    exit "$status"
fi
echo "==> $target: no crash"
