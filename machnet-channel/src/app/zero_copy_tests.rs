//! Loaned sends and borrowed receives over a channel mapped with mirrored rings (a memfd
//! mapped by `crate::mirror`, as the client maps it), against a test "engine" that sees the
//! same memory as plain rings (as the sidecar does).

use super::*;
use crate::test_memory::Region;
use crate::{ChannelLayout, RECORD_HEADER_LEN};

const MAX_MSG: u32 = 3000;
/// Small rings (one page each) so that records wrap often.
const RING: u64 = 4096;

struct Harness {
    app: AppChannel,
    /// Engine → app (notifications), on the plain view.
    tx: Producer,
    /// App → engine (requests), on the plain view.
    rx: Consumer,
    // Dropped last: everything above points into it.
    _mem: Region,
}

impl Harness {
    fn new() -> Self {
        let layout = ChannelLayout::new(RING, RING, MAX_MSG).unwrap();
        let mut mem = Region::mirrored(&layout);
        let views = mem.views(&layout);
        assert!(views.is_mirrored());
        let engine = views.unmirrored();
        Harness {
            app: AppChannel::new(&layout, views).unwrap(),
            tx: Producer::new(engine.to_app, 0),
            rx: Consumer::new(engine.to_sidecar, 0, MAX_MSG),
            _mem: mem,
        }
    }

    fn notify(&mut self, kind: RecordKind, flow: u32, aux: u32, payload: &[u8]) {
        let mut h = RecordHeader::new(kind, flow);
        h.aux = aux;
        self.tx.push(h, &[payload]).unwrap();
    }

    fn accept(&mut self, handle: u32) -> Flow {
        let info = FlowInfo {
            local_ip: [10, 0, 0, 1].into(),
            local_port: 1000 + handle as u16,
            remote_ip: [10, 0, 0, 2].into(),
            remote_port: 888,
        };
        self.notify(RecordKind::Accepted, handle, 888, &info.encode());
        match self.app.poll(&mut Want::Event).unwrap() {
            Some(Got::Event(Event::Accepted { flow, .. })) => flow,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    /// The next request as the engine reads it (two-part copy across the wrap).
    fn request(&mut self) -> Option<(RecordHeader, Vec<u8>)> {
        let rec = self.rx.peek().unwrap()?;
        let payload = self.rx.payload_to_vec(&rec);
        self.rx.consume(&rec);
        Some((rec.header, payload))
    }

    /// Ring positions: request tail (app), request head (engine), notification head (app).
    fn positions(&self) -> (u64, u64, u64) {
        (
            self.app.tx.position(),
            self.rx.position(),
            self.app.views.to_app.control().head.load(Ordering::Acquire),
        )
    }
}

/// A xorshift generator from `ZC_SEED` (or a fixed seed), printed so a failure can be replayed.
fn rng() -> (u64, impl FnMut() -> u64) {
    let seed: u64 = std::env::var("ZC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x2c0f_fee5_eed0_0016);
    println!("seed {seed} (ZC_SEED to replay)");
    let mut x = seed | 1;
    (seed, move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

fn pattern(len: usize, salt: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(131).wrapping_add(salt) as u8)
        .collect()
}

#[test]
fn loans_at_every_wrap_position_reach_the_engine_byte_identical() {
    let (seed, mut next) = rng();
    let mut h = Harness::new();
    let flow = h.accept(3);
    // Advance the tail by 8 bytes at a time over two full laps with seeded sizes, so loans
    // start at every 8-byte position of the ring and many of them wrap.
    for i in 0..2000u64 {
        let len = 1 + (next() % u64::from(MAX_MSG)) as usize;
        let used = 1 + (next() % len as u64) as usize;
        let msg = pattern(used, i);
        let mut loan = h
            .app
            .loan(&flow, len)
            .unwrap_or_else(|e| panic!("loan {i}: {e} (seed {seed})"));
        assert_eq!(loan.len(), len);
        h.app.loan_bytes(&loan)[..used].copy_from_slice(&msg);
        // Scribble past `used`: given back, never sent.
        h.app.loan_bytes(&loan)[used..].fill(0xee);
        loan = {
            let l = loan;
            assert_eq!(l.flow(), &flow);
            l
        };
        h.app.commit(loan, used).unwrap();
        let (hdr, payload) = h.request().expect("committed record");
        assert_eq!(
            (hdr.kind, hdr.flow, hdr.len as usize),
            (RecordKind::Send, 3, used),
            "record {i} (seed {seed})"
        );
        assert!(payload == msg, "record {i} differs (seed {seed})");
        assert!(h.request().is_none());
        let (tail, head, _) = h.positions();
        assert_eq!(tail, head);
        // An empty record moves the tail by 16 bytes; pad by 8 now and then to hit odd slots.
        if next() % 2 == 0 {
            h.app.send(&flow, &[&[0u8; 8]]).unwrap();
            h.request().unwrap();
        }
    }
    assert!(h.app.tx.position() > 2 * RING, "the test lapped the ring");
}

#[test]
fn a_partial_commit_gives_the_rest_back() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    let loan = h.app.loan(&flow, 1000).unwrap();
    h.app.loan_bytes(&loan)[..5].copy_from_slice(b"hello");
    h.app.commit(loan, 5).unwrap();
    assert_eq!(h.app.tx.position(), AppChannel::footprint(5));
    let (hdr, payload) = h.request().unwrap();
    assert_eq!((hdr.len, payload.as_slice()), (5, &b"hello"[..]));
}

#[test]
fn a_cancelled_loan_publishes_nothing_and_the_next_send_works() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    let before = h.positions();
    let loan = h.app.loan(&flow, 200).unwrap();
    h.app.loan_bytes(&loan).fill(0xab);
    // While it is out: sends and connects are refused, closes are queued behind it.
    assert_eq!(
        h.app.send(&flow, &[b"x"]),
        Err(SubmitError::LoanOutstanding)
    );
    assert_eq!(
        h.app.start_connect([10, 0, 0, 9].into(), 1).unwrap_err(),
        SubmitError::LoanOutstanding
    );
    assert!(matches!(
        h.app.loan(&flow, 10),
        Err(SubmitError::LoanOutstanding)
    ));
    assert!(h.request().is_none());
    h.app.cancel(loan);
    assert_eq!(h.positions(), before, "nothing published, nothing taken");
    assert_eq!(
        h.app
            .views
            .to_sidecar
            .control()
            .tail
            .load(Ordering::Acquire),
        before.0
    );
    h.app.send(&flow, &[b"after"]).unwrap();
    let (hdr, payload) = h.request().unwrap();
    assert_eq!(
        (hdr.kind, payload.as_slice()),
        (RecordKind::Send, &b"after"[..])
    );
}

#[test]
fn a_close_during_a_loan_follows_the_loaned_message() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    let other = h.accept(2);
    let loan = h.app.loan(&flow, 4).unwrap();
    h.app.end_flow(&other, false).unwrap();
    assert!(h.request().is_none(), "nothing overtakes the loan");
    h.app.loan_bytes(&loan).copy_from_slice(b"data");
    h.app.commit(loan, 4).unwrap();
    let kinds: Vec<_> = std::iter::from_fn(|| h.request())
        .map(|(hdr, _)| (hdr.kind, hdr.flow))
        .collect();
    assert_eq!(kinds, vec![(RecordKind::Send, 1), (RecordKind::Close, 2)]);
}

#[test]
fn bad_loan_and_commit_lengths_are_refused_and_publish_nothing() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    assert_eq!(h.app.loan(&flow, 0).unwrap_err(), SubmitError::Empty);
    assert!(matches!(
        h.app.loan(&flow, MAX_MSG as usize + 1),
        Err(SubmitError::TooLarge { .. })
    ));
    for bad in [0usize, 11] {
        let loan = h.app.loan(&flow, 10).unwrap();
        assert_eq!(
            h.app.commit(loan, bad),
            Err(SubmitError::BadCommitLength {
                used: bad,
                loaned: 10
            })
        );
        assert!(h.request().is_none(), "a refused commit publishes nothing");
        assert_eq!(h.app.tx.position(), 0);
        assert!(!h.app.has_loan(), "a refused commit ends the loan");
    }
    h.app.send(&flow, &[b"ok"]).unwrap();
    assert_eq!(h.request().unwrap().1, b"ok");
}

#[test]
fn a_commit_on_a_flow_that_closed_meanwhile_publishes_nothing() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    let loan = h.app.loan(&flow, 8).unwrap();
    h.notify(RecordKind::Closed, 1, 0, &[]);
    assert!(h.app.poll(&mut Want::Event).unwrap().is_some());
    assert!(matches!(
        h.app.commit(loan, 8),
        Err(SubmitError::FlowClosed(_))
    ));
    assert!(h.request().is_none());
}

#[test]
fn a_full_ring_refuses_a_loan_with_the_space_needed() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    h.app.send(&flow, &[&[1u8; 3000]]).unwrap();
    assert_eq!(
        h.app.loan(&flow, 2000).unwrap_err(),
        SubmitError::Full {
            need: AppChannel::footprint(2000)
        }
    );
    h.request().unwrap();
    let loan = h.app.loan(&flow, 2000).unwrap();
    h.app.cancel(loan);
}

#[test]
fn loans_need_mirrored_rings() {
    let layout = ChannelLayout::new(RING, RING, MAX_MSG).unwrap();
    let mut mem = Region::mirrored(&layout);
    let views = mem.views(&layout).unmirrored();
    let mut app = AppChannel::new(&layout, views).unwrap();
    let mut tx = Producer::new(views.to_app, 0);
    let info = FlowInfo {
        local_ip: [10, 0, 0, 1].into(),
        local_port: 1,
        remote_ip: [10, 0, 0, 2].into(),
        remote_port: 2,
    };
    tx.push(
        RecordHeader::new(RecordKind::Accepted, 1),
        &[&info.encode()],
    )
    .unwrap();
    let Some(Got::Event(Event::Accepted { flow, .. })) = app.poll(&mut Want::Event).unwrap() else {
        panic!("accept")
    };
    assert_eq!(app.loan(&flow, 8).unwrap_err(), SubmitError::NotMirrored);
}

#[test]
fn views_across_the_wrap_equal_the_bytes_sent_and_release_advances_the_head() {
    let (seed, mut next) = rng();
    let mut h = Harness::new();
    let flow = h.accept(7);
    let mut wrapped = 0;
    for i in 0..1500u64 {
        let len = 1 + (next() % u64::from(MAX_MSG)) as usize;
        let msg = pattern(len, i);
        let start = h.tx.position();
        h.notify(RecordKind::Message, 7, 0, &msg);
        let off = (start + RECORD_HEADER_LEN as u64) % RING;
        wrapped += usize::from(off + len as u64 > RING);
        let head_before = h.positions().2;
        let (f, view) = h.app.poll_view().unwrap().expect("a message");
        assert_eq!(f, flow);
        assert!(view.is_in_place(), "mirrored: never copied");
        assert!(
            h.app.view_bytes(&view) == msg.as_slice(),
            "message {i} differs (seed {seed})"
        );
        assert_eq!(
            h.positions().2,
            head_before,
            "the head stays while the view is out"
        );
        assert_eq!(
            h.app.poll_view().unwrap_err(),
            PollError::ViewOutstanding,
            "one view at a time"
        );
        h.app.release(view);
        assert_eq!(
            h.positions().2,
            h.tx.position(),
            "release gives the space back"
        );
    }
    assert!(
        wrapped > 100,
        "only {wrapped} messages wrapped (seed {seed})"
    );
}

#[test]
fn other_receives_go_on_while_a_view_is_out_and_keep_its_bytes_safe() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    h.notify(RecordKind::Message, 1, 0, b"first");
    h.notify(RecordKind::Message, 1, 0, b"second");
    let (_, view) = h.app.poll_view().unwrap().unwrap();
    let held_at = h.positions().2;
    assert_eq!(
        h.app.poll(&mut Want::Message).unwrap(),
        Some(Got::Message(flow, b"second".to_vec()))
    );
    assert_eq!(
        h.positions().2,
        held_at,
        "the published head stops at the view"
    );
    // The producer sees only the space before the view as free: fill the ring up to it.
    let free = h.tx.free().unwrap();
    assert_eq!(free, RING - (h.tx.position() - held_at));
    assert_eq!(h.app.view_bytes(&view), b"first");
    h.app.release(view);
    assert_eq!(h.positions().2, h.tx.position());
}

#[test]
fn a_wake_up_is_asked_for_when_a_release_frees_space_the_engine_waits_for() {
    let mut h = Harness::new();
    h.accept(1);
    h.notify(RecordKind::Message, 1, 0, &[9u8; 3000]);
    let (_, view) = h.app.poll_view().unwrap().unwrap();
    assert!(h.tx.prepare_wait().unwrap() < AppChannel::footprint(3000));
    assert!(!h.app.take_sidecar_wakeup(), "nothing freed yet");
    h.app.release(view);
    assert!(h.app.take_sidecar_wakeup());
}

#[test]
fn views_of_events_and_messages_read_during_a_connect_are_handled() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    let ticket = h.app.start_connect([10, 0, 0, 2].into(), 9).unwrap();
    h.notify(RecordKind::Message, 1, 0, b"early");
    h.notify(RecordKind::PeerClosed, 1, 0, &[]);
    assert_eq!(h.app.poll_connect(ticket).unwrap(), None);
    // The message was copied out while looking for the answer: a view of the copy.
    let (f, view) = h.app.poll_view().unwrap().unwrap();
    assert_eq!((f, h.app.view_bytes(&view)), (flow, &b"early"[..]));
    assert!(!view.is_in_place());
    h.app.release(view);
    // The peer-closed event is passed over with auto-close: a Close request goes out.
    assert!(h.app.poll_view().unwrap().is_none());
    let kinds: Vec<_> = std::iter::from_fn(|| h.request())
        .map(|(r, _)| r.kind)
        .collect();
    assert_eq!(kinds, vec![RecordKind::Connect, RecordKind::Close]);
}

#[test]
fn a_committed_header_the_app_scribbles_over_is_rejected_by_the_engine() {
    // The app owns the memory around its loan: after a commit it can rewrite the record's
    // header (16 bytes before the payload). The engine's reader validates it like any other.
    for (at, value) in [(0usize, 4000u32), (0, 1 << 31), (4, 200), (6, 1)] {
        let mut h = Harness::new();
        let flow = h.accept(1);
        // Put the record across the wrap point: the header at the end, the payload after it.
        for len in [2000usize, 2032] {
            h.app.send(&flow, &[&vec![0u8; len]]).unwrap();
            h.request().unwrap();
        }
        assert_eq!(h.app.tx.position() % RING, RING - 32);
        let loan = h.app.loan(&flow, 64).unwrap();
        let header = loan.as_mut_ptr().wrapping_sub(RECORD_HEADER_LEN);
        h.app.commit(loan, 64).unwrap();
        // SAFETY: the header slot lies inside the mirrored request ring.
        unsafe {
            let p = header.add(at);
            if at == 0 {
                p.cast::<[u8; 4]>().write_volatile(value.to_le_bytes());
            } else {
                p.write_volatile(value as u8);
            }
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        assert!(
            matches!(h.rx.peek(), Err(crate::RingError::BadRecord(_))),
            "scribbled byte {at} = {value}"
        );
    }
}
