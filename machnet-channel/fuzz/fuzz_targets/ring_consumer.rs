//! Fuzzes the consuming end of a channel ring against a hostile producer.
//!
//! The input becomes the ring's shared memory as a hostile application would write it: the
//! capacity, the consumer's starting position and payload limit, the data area, then a sequence
//! of steps that scribble over data bytes and publish arbitrary `tail` values, each followed by
//! draining the ring with `peek` / `read_payload` / `payload_to_vec` / `consume` until it stops.
//!
//! Invariants: no panic; no access outside the data area (the data area is a heap allocation of
//! exactly `capacity` bytes, so an AddressSanitizer build (`ci/fuzz.sh` builds this target with
//! it) catches any stray read of the raw-pointer code); every record returned is exactly the
//! bytes at its position (decoded header, wrapped payload); the consumer never passes the
//! published tail and every drain ends (each record moves it at least one header forward).
#![no_main]

use std::sync::atomic::Ordering;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use machnet_channel::ring::record_footprint;
use machnet_channel::{Consumer, RecordHeader, RingControl, RingView, RECORD_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    // 8..=1024 bytes, a multiple of 8 as `RingView::new` requires.
    let capacity = 8 * (u.int_in_range(1u64..=128)?);
    // Positions only ever grow by consumed bytes, so they stay far from u64::MAX in practice.
    let start = u64::from(u.arbitrary::<u32>()?);
    let max_payload = u.int_in_range(0u32..=2048)?;
    // Exactly `capacity` bytes on the heap: one byte past the end is an ASan report.
    let mut area = vec![0u8; capacity as usize];
    u.fill_buffer(&mut area)?;
    // SAFETY: RingControl is atomics and padding; all-zero is a valid state.
    let ctrl: Box<RingControl> = Box::new(unsafe { std::mem::zeroed() });
    ctrl.tail.store(start, Ordering::SeqCst);
    ctrl.head.store(start, Ordering::SeqCst);
    // SAFETY: `ctrl` and `area` outlive every use of the view (dropped at the end of `run`, after
    // the consumer); `capacity` is a non-zero multiple of 8.
    let view = unsafe { RingView::new(&*ctrl, area.as_mut_ptr(), capacity) };
    let mut consumer = Consumer::new(view, start, max_payload);
    // The highest tail published within one capacity of a position the consumer reached: the
    // consumer may only ever read up to such a tail.
    let mut bound = start;

    while !u.is_empty() {
        match u.int_in_range(0u8..=3)? {
            // Scribble over a data byte (a hostile app may rewrite anything at any time).
            0 => {
                let at = u.choose_index(area.len())?;
                // SAFETY: single-threaded; the view's raw pointer aliases `area`, written only here.
                unsafe { *area.as_mut_ptr().add(at) = u.arbitrary()? };
            }
            // Publish a tail near the consumer's position (mostly plausible values).
            1 => {
                let ahead = u64::from(u.int_in_range(0u16..=2 * capacity as u16)?);
                ctrl.tail
                    .store(consumer.position() + ahead, Ordering::Release);
            }
            // Publish any tail at all (behind the consumer, far ahead, near u64::MAX).
            2 => ctrl.tail.store(u.arbitrary()?, Ordering::Release),
            // Scribble over the consumer's own published head (only the consumer reads it back
            // through its private copy, so this must change nothing).
            _ => ctrl.head.store(u.arbitrary()?, Ordering::Release),
        }
        drain(&mut consumer, &area, capacity, &mut bound, &ctrl);
    }
    Ok(())
}

/// Reads records until the consumer reports none or an error, checking each one.
fn drain(consumer: &mut Consumer, area: &[u8], capacity: u64, bound: &mut u64, ctrl: &RingControl) {
    // Each record is at least one header long, and one drain reads at most the rest of the tail
    // the consumer held plus one re-read tail (each within a capacity of where it was read):
    // more iterations than this is a loop.
    let most = 2 * capacity / RECORD_HEADER_LEN as u64 + 1;
    for _ in 0..=most {
        let head = consumer.position();
        // The consumer may (re)read the tail at any position it reaches.
        let published = ctrl.tail.load(Ordering::Acquire);
        if published.wrapping_sub(head) <= capacity {
            *bound = (*bound).max(published);
        }
        let rec = match consumer.peek() {
            Ok(Some(rec)) => rec,
            Ok(None) | Err(_) => return,
        };
        let at = |pos: u64| area[(pos % capacity) as usize];
        // The header is the one stored at the consumer's position.
        let raw: [u8; RECORD_HEADER_LEN] = std::array::from_fn(|i| at(head + i as u64));
        assert_eq!(
            RecordHeader::decode(&raw),
            Ok(rec.header),
            "header at {head}"
        );
        let len = rec.header.len as usize;
        let footprint = record_footprint(len as u64);
        assert!(footprint <= capacity, "record longer than the ring");
        assert!(
            head + footprint <= *bound,
            "record passes the published tail"
        );
        // Both copies are the wrapped bytes after the header.
        let expected: Vec<u8> = (0..len as u64)
            .map(|i| at(head + RECORD_HEADER_LEN as u64 + i))
            .collect();
        let mut copy = vec![0u8; len];
        consumer.read_payload(&rec, &mut copy);
        assert_eq!(copy, expected, "read_payload at {head}");
        assert_eq!(
            consumer.payload_to_vec(&rec),
            expected,
            "payload_to_vec at {head}"
        );
        consumer.consume(&rec);
        assert_eq!(consumer.position(), head + footprint);
        assert_eq!(ctrl.head.load(Ordering::Acquire), head + footprint);
    }
    panic!("the consumer returned more records than the ring can hold");
}
