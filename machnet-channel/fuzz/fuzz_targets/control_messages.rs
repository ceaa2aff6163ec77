//! Fuzzes the control-socket messages (docs/CHANNEL.md §2) with arbitrary packets.
//!
//! Invariants: `Request::decode` and `Response::decode` never panic, whatever the bytes (the
//! sidecar decodes every packet an application sends; the client decodes the sidecar's); and a
//! message that decodes re-encodes to bytes that decode to the same value, within the size limit
//! (the larger one of statistics answers for `Stats`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use machnet_channel::control::{Request, Response, MAX_CONTROL_MESSAGE, MAX_STATS_RESPONSE};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let again = req.encode();
        assert!(
            again.len() <= MAX_CONTROL_MESSAGE,
            "re-encoded request too long"
        );
        assert_eq!(
            Request::decode(&again),
            Ok(req),
            "request re-decodes differently"
        );
    }
    if let Ok(resp) = Response::decode(data) {
        let again = resp.encode();
        // A `Stats` document is free-form JSON: re-encoding may lengthen it (`1E9` becomes
        // `1000000000.0`), within the larger limit of statistics answers.
        let (limit, redecoded) = match resp {
            Response::Stats { .. } => (MAX_STATS_RESPONSE, Response::decode_stats(&again)),
            _ => (MAX_CONTROL_MESSAGE, Response::decode(&again)),
        };
        assert!(again.len() <= limit, "re-encoded response too long");
        assert_eq!(redecoded, Ok(resp), "response re-decodes differently");
    }
});
