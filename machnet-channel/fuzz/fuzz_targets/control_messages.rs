//! Fuzzes the control-socket messages (docs/CHANNEL.md §2) with arbitrary packets.
//!
//! Invariants: `Request::decode` and `Response::decode` never panic, whatever the bytes (the
//! sidecar decodes every packet an application sends; the client decodes the sidecar's); and a
//! message that decodes re-encodes to bytes that decode to the same value, within the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machnet_channel::control::{Request, Response, MAX_CONTROL_MESSAGE};

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
        assert!(
            again.len() <= MAX_CONTROL_MESSAGE,
            "re-encoded response too long"
        );
        assert_eq!(
            Response::decode(&again),
            Ok(resp),
            "response re-decodes differently"
        );
    }
});
