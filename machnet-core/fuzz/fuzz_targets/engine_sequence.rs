//! Fuzzes the whole sans-IO engine: two engines, a hostile network and an attacker, driven by a
//! structure-aware sequence of steps (network delivery, drop, duplication and reordering;
//! simulated time; app connect/send/recv/close/abort/discard; forged and raw attacker packets).
//!
//! The input grammar, the step interpreter and every check live in
//! `machnet_sim::engine_sequence`, where the normal test suite replays this target's committed
//! seeds (`seeds-engine_sequence/`). A panic is a finding: a crash in the engine, a message
//! delivered that was never sent this way (or duplicated, reordered, skipped), an event for an
//! unknown or closed flow, memory above its configured bound, a timer that does not move time
//! forward, or endless output.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    machnet_sim::engine_sequence::run(data);
});
