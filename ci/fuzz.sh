#!/usr/bin/env bash
# Fuzz the untrusted-input parsers and the channel (cargo-fuzz, libFuzzer), one target after the
# other:
#   parse_packet      machnet-core/fuzz      the wire-format parser (datagrams from the network)
#   engine_sequence   machnet-core/fuzz      the whole sans-IO engine: two engines, a hostile
#                                            network, an attacker and simulated time, driven by
#                                            structure-aware step sequences (interpreter and
#                                            checks: machnet-sim/src/engine_sequence)
#   engine_sequence_encrypted                the same with both engines encrypted (PROTOCOL.md
#                     machnet-core/fuzz      §12); starts from engine_sequence's seeds
#   ring_consumer     machnet-channel/fuzz   a channel ring's consumer over hostile ring memory,
#                                            indices and records (AddressSanitizer by default:
#                                            the ring code uses raw pointers)
#   control_messages  machnet-channel/fuzz   control-socket requests and responses (decode never
#                                            panics; what decodes re-encodes to the same value)
#   channel_engine    machnet-sidecar/fuzz   the sidecar's half of a channel (`Chan` over real
#                                            channel memory and a real engine) driven by a hostile
#                                            application: records, lengths, indices, flags, detach
#
# Usage:
#   ci/fuzz.sh                          # every target, 30 seconds each
#   FUZZ_SECONDS=600 ci/fuzz.sh         # longer runs; FUZZ_SECONDS=0 only replays the corpora
#   FUZZ_TARGETS="ring_consumer" ci/fuzz.sh
#   FUZZ_SANITIZER=address ci/fuzz.sh   # AddressSanitizer for every target (about 7x slower)
#
# Environment:
#   FUZZ_SECONDS    fuzzing time per target in seconds (default 30; builds are not counted)
#   FUZZ_TARGETS    targets to run, space-separated (default: all five, in the order above)
#   FUZZ_SANITIZER  none | address | leak | memory | thread; default: address for ring_consumer,
#                   none for the others (safe Rust, where speed buys more than ASan)
#   FUZZ_JOBS       parallel fuzzing processes (default 1)
#   FUZZ_ARGS       extra libFuzzer arguments, e.g. "-max_len=2048"
#
# Stable toolchain (this repository must not need nightly). cargo-fuzz's default build passes
# `-Zsanitizer=address` to rustc, which stable rejects with "the option `Z` is only accepted on the
# nightly compiler". Checked on rustc 1.95.0 (stable) with cargo-fuzz 0.13.2:
#   * `cargo fuzz run --sanitizer none` passes no -Z flag at all (only stable -C flags: sancov
#     instrumentation, --cfg fuzzing, debug assertions) and works on plain stable. ~1.5M exec/s
#     for parse_packet here.
#   * With a sanitizer, `RUSTC_BOOTSTRAP=1` makes stable rustc accept the -Z flag: ASan works,
#     ~170k exec/s for parse_packet. The script sets it only for such a build (it can change what
#     some build scripts detect), and builds each sanitizer in its own target directory
#     (target/sanitizer-<name>) so that switching does not rebuild everything.
# Nothing here needs a nightly toolchain or a download other than `cargo install` from crates.io.
#
# Inputs and outputs (relative to each target's fuzz project directory):
#   seeds/               parse_packet's committed seed packets (kept current by
#                        wire::tests::fuzz_seeds_are_current; regenerate with
#                        `MACHNET_REGEN_FUZZ_SEEDS=1 cargo test -p machnet-core --lib fuzz_seeds`)
#   seeds-<target>/      the other targets' committed seeds (written by `python3 ci/fuzz-seeds.py`;
#                        engine_sequence's by `MACHNET_REGEN_FUZZ_SEEDS=1 cargo test -p machnet-sim
#                        --test engine_sequence seeds_are_current`)
#   <target>.dict        libFuzzer dictionary, where there is one
#   corpus/<target>/     working corpus, grows across runs (gitignored)
#   artifacts/<target>/  crashing inputs (gitignored); reproduce one with
#                        `cargo fuzz run --sanitizer <s> --target-dir target/sanitizer-<s> <target> <file>`
#                        in the project directory
#
# Exit status: 0 if no crash was found, non-zero otherwise (every target runs regardless).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-30}"
targets="${FUZZ_TARGETS:-parse_packet engine_sequence engine_sequence_encrypted ring_consumer control_messages channel_engine}"
jobs="${FUZZ_JOBS:-1}"

case "$seconds" in '' | *[!0-9]*) echo "FUZZ_SECONDS must be a whole number" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# fuzz_one TARGET: builds and runs one target; returns libFuzzer's status.
fuzz_one() {
    local target="$1" fuzz_dir sanitizer
    case "$target" in
        parse_packet) fuzz_dir="$root/machnet-core/fuzz" sanitizer=none ;;
        engine_sequence | engine_sequence_encrypted) fuzz_dir="$root/machnet-core/fuzz" sanitizer=none ;;
        control_messages) fuzz_dir="$root/machnet-channel/fuzz" sanitizer=none ;;
        ring_consumer) fuzz_dir="$root/machnet-channel/fuzz" sanitizer=address ;;
        channel_engine) fuzz_dir="$root/machnet-sidecar/fuzz" sanitizer=none ;;
        *) echo "unknown fuzz target: $target" >&2; return 2 ;;
    esac
    sanitizer="${FUZZ_SANITIZER:-$sanitizer}"
    local seeds="$fuzz_dir/seeds-${target%_encrypted}"
    [ -d "$seeds" ] || seeds="$fuzz_dir/seeds"
    local dict=()
    [ -f "$fuzz_dir/$target.dict" ] && dict=(-dict="$fuzz_dir/$target.dict")
    local corpus="$fuzz_dir/corpus/$target" artifacts="$fuzz_dir/artifacts/$target"
    local target_dir="$fuzz_dir/target/sanitizer-$sanitizer"
    local log="$fuzz_dir/target/fuzz-$target.log"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    local bootstrap=()
    [ "$sanitizer" != none ] && bootstrap=(env RUSTC_BOOTSTRAP=1)

    cd "$fuzz_dir"
    echo "==> $target: $(cargo fuzz --version), $(rustc --version), sanitizer=$sanitizer"
    "${bootstrap[@]}" cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" "$target"

    local limit=(-max_total_time="$seconds")
    [ "$seconds" -eq 0 ] && limit=(-runs=0)
    echo "==> fuzzing $target for ${seconds}s (corpus: $corpus, seeds: $seeds)"
    local status=0
    # The first corpus directory receives new inputs; the seeds are only read.
    # shellcheck disable=SC2086  # FUZZ_ARGS is a list of arguments
    "${bootstrap[@]}" cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" \
        --jobs "$jobs" "$target" "$corpus" "$seeds" -- \
        "${limit[@]}" \
        "${dict[@]}" \
        -artifact_prefix="$artifacts/" \
        -timeout=10 \
        -print_final_stats=1 \
        ${FUZZ_ARGS:-} 2>&1 | tee "$log" || status=$?

    local runs rate
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    summary+=("$target: ${runs:-?} executions, ${rate:-?} exec/s, corpus $(find "$corpus" -type f | wc -l) files, $( [ "$status" -eq 0 ] && echo "no crash" || echo "FAILED (exit $status)")")
    if [ "$status" -ne 0 ]; then
        echo "==> $target FAILED (exit $status); crashing inputs in $artifacts:" >&2
        ls -l "$artifacts" >&2 || true
    fi
    return "$status"
}

summary=()
failed=0
for target in $targets; do
    fuzz_one "$target" || failed=1
done
echo "==> fuzzing summary"
printf '    %s\n' "${summary[@]}"
exit "$failed"
