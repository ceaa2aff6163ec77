//! `engine_sequence` with both engines encrypted (PROTOCOL.md §12): the same input grammar and
//! checks (`machnet_sim::engine_sequence::run_encrypted`), so every forged packet meets sealed
//! flows, stateless resets and the Noise handshake. Starts from `seeds-engine_sequence/`; the
//! normal test suite replays those seeds encrypted too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    machnet_sim::engine_sequence::run_encrypted(data);
});
