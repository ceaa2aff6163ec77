//! Fuzzes the wire-format parser with arbitrary datagrams.
//!
//! For every input: `Packet::new_checked` must not panic; on success the accessors,
//! `verify_checksum` and `Repr::parse` must not panic; and a packet that parses must re-emit to a
//! packet that parses to the same `Repr`, with the same payload, a valid checksum, and the same
//! bytes as the input apart from the checksum field and the handshake block's reserved bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machnet_core::wire::{
    verify_checksum, ChecksumStatus, Packet, Repr, HANDSHAKE_LEN, HEADER_LEN, SACK_BLOCK_LEN,
};

/// The checksum field in the fixed header (the `token` follows it, PROTOCOL.md §2).
const CHECKSUM: core::ops::Range<usize> = 36..40;
/// Reserved bytes inside the handshake block, written as zero and ignored on read (byte 17, and
/// bytes 36..40 after `token` and `isn`; bytes 18..20 carry `max_datagram`).
const HANDSHAKE_RESERVED: [core::ops::Range<usize>; 2] = [17..18, 36..40];

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let status = verify_checksum(packet.as_bytes());
    let payload = packet.payload();
    let handshake = packet.handshake();
    for i in 0..packet.sack_count() {
        let _ = packet.sack_block(i);
    }
    assert_eq!(handshake.is_some(), packet.has_handshake());
    assert_eq!(packet.header_len() + payload.len(), data.len());

    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert_eq!(repr.buffer_len(), data.len());
    assert_eq!(repr.header_len(), packet.header_len());
    assert_eq!(repr.handshake, handshake);

    // Where the handshake block's reserved bytes are, if there is one.
    let reserved: Vec<core::ops::Range<usize>> = match repr.handshake {
        Some(_) => {
            let at = HEADER_LEN + repr.sack.len() * SACK_BLOCK_LEN;
            assert!(at + HANDSHAKE_LEN <= data.len());
            HANDSHAKE_RESERVED
                .iter()
                .map(|r| at + r.start..at + r.end)
                .collect()
        }
        None => Vec::new(),
    };
    let reserved_zero = reserved
        .iter()
        .all(|r| data[r.clone()].iter().all(|&b| b == 0));

    for with_checksum in [false, true] {
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf, payload, with_checksum);
        assert_eq!(n, data.len());
        let again = Packet::new_checked(&buf[..]).expect("re-emitted packet is structurally valid");
        assert_eq!(Repr::parse(&again), Ok(repr), "re-parse differs");
        assert_eq!(again.payload(), payload);
        let expected_status = if with_checksum {
            ChecksumStatus::Valid
        } else {
            ChecksumStatus::Absent
        };
        assert_eq!(verify_checksum(&buf), expected_status);

        // Canonical form: identical to the input except checksum and reserved bytes.
        let mut canonical = data.to_vec();
        let mut emitted = buf.clone();
        canonical[CHECKSUM].fill(0);
        emitted[CHECKSUM].fill(0);
        for r in &reserved {
            canonical[r.clone()].fill(0);
        }
        assert_eq!(emitted, canonical, "re-emission is not canonical");
        // An input that was already canonical and carried a valid checksum is reproduced exactly.
        if with_checksum && status == ChecksumStatus::Valid && reserved_zero {
            assert_eq!(buf[..], data[..]);
        }
    }
});
