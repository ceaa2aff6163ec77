//! The application half against a test "engine" that writes notification records and reads
//! request records directly, over channel memory in a heap buffer (no sidecar, no syscalls).

use std::sync::atomic::Ordering;

use super::*;
use crate::test_memory::Region;
use crate::{ChannelLayout, Peeked, RECORD_HEADER_LEN};

const MAX_MSG: u32 = 1000;

/// One channel: the app half under test and the engine's ends of both rings.
struct Harness {
    app: AppChannel,
    /// Engine → app (notifications).
    tx: Producer,
    /// App → engine (requests).
    rx: Consumer,
    views: ChannelViews,
    layout: ChannelLayout,
    // Dropped last: everything above points into it.
    mem: Region,
}

impl Harness {
    fn new() -> Self {
        let layout = ChannelLayout::new(8192, 8192, MAX_MSG).unwrap();
        let mut mem = Region::zeroed(layout.total_len);
        let ptr = mem.as_mut_ptr();
        // SAFETY: `mem` holds `total_len` zeroed bytes, page-aligned, and outlives the views
        // (field order).
        let views = unsafe {
            layout.init(ptr);
            layout.views(ptr)
        };
        Harness {
            app: AppChannel::new(&layout, views).unwrap(),
            tx: Producer::new(views.to_app, 0),
            rx: Consumer::new(views.to_sidecar, 0, MAX_MSG),
            views,
            layout,
            mem,
        }
    }

    fn notify(&mut self, kind: RecordKind, flow: u32, aux: u32, flags: u8, payload: &[u8]) {
        let mut h = RecordHeader::new(kind, flow);
        h.aux = aux;
        h.flags = flags;
        self.tx.push(h, &[payload]).unwrap();
    }

    fn info(handle: u32) -> FlowInfo {
        FlowInfo {
            local_ip: [10, 0, 0, 1].into(),
            local_port: 1000 + handle as u16,
            remote_ip: [10, 0, 0, 2].into(),
            remote_port: 888,
        }
    }

    fn accept(&mut self, handle: u32) -> Flow {
        self.notify(
            RecordKind::Accepted,
            handle,
            888,
            0,
            &Self::info(handle).encode(),
        );
        match self.app.poll(&mut Want::Event).unwrap() {
            Some(Got::Event(Event::Accepted { flow, port: 888 })) => flow,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    /// Writes raw bytes as the next notification record (header included) and publishes them,
    /// bypassing the producer's validation; `footprint` is how far the tail moves.
    fn notify_raw(&mut self, bytes: &[u8], footprint: u64) {
        let pos = self.tx.position();
        let cap = self.layout.to_app_capacity;
        assert!(
            pos % cap + bytes.len() as u64 <= cap,
            "test writes do not wrap"
        );
        // SAFETY: inside the notification ring's data area of the test region.
        unsafe {
            let dst = self
                .mem
                .as_mut_ptr()
                .add((self.layout.to_app_offset + pos % cap) as usize);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
        self.views
            .to_app
            .control()
            .tail
            .store(pos + footprint, Ordering::Release);
        self.tx = Producer::new(self.views.to_app, pos + footprint);
    }

    /// The next request the app wrote, if any.
    fn request(&mut self) -> Option<(RecordHeader, Vec<u8>)> {
        let rec: Peeked = self.rx.peek().unwrap()?;
        let payload = self.rx.payload_to_vec(&rec);
        self.rx.consume(&rec);
        Some((rec.header, payload))
    }

    fn requests(&mut self) -> Vec<(RecordKind, u32)> {
        std::iter::from_fn(|| self.request())
            .map(|(h, _)| (h.kind, h.flow))
            .collect()
    }

    fn is_corrupt(&mut self) -> bool {
        matches!(
            self.app.poll(&mut Want::Event),
            Err(PollError::Fault(ChannelFault::Corrupt(_)))
        )
    }
}

#[test]
fn events_and_messages_come_in_ring_order() {
    let mut h = Harness::new();
    let flow = h.accept(5);
    h.notify(RecordKind::Message, 5, 0, 0, b"one");
    h.notify(RecordKind::Message, 5, 0, 0, b"two");
    h.notify(RecordKind::PeerClosed, 5, 0, 0, &[]);
    h.notify(RecordKind::Closed, 5, 0, CloseCode::Graceful as u8, &[]);
    let mut got = Vec::new();
    while let Some(Got::Event(ev)) = h.app.poll(&mut Want::Event).unwrap() {
        got.push(ev);
    }
    assert_eq!(
        got,
        vec![
            Event::Message {
                flow,
                data: b"one".to_vec()
            },
            Event::Message {
                flow,
                data: b"two".to_vec()
            },
            Event::PeerClosed { flow },
            Event::Closed {
                flow,
                reason: Some(CloseCode::Graceful)
            },
        ]
    );
    assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
}

#[test]
fn into_or_event_copies_messages_once_and_passes_no_event_over() {
    let mut h = Harness::new();
    let flow = h.accept(5);
    h.notify(RecordKind::Message, 5, 0, 0, b"one");
    h.notify(RecordKind::Message, 5, 0, 0, b"a longer message");
    h.notify(RecordKind::PeerClosed, 5, 0, 0, &[]);
    h.notify(RecordKind::Closed, 5, 0, CloseCode::Reset as u8, &[]);
    let mut buf = [0u8; 8];
    assert_eq!(
        h.app.poll(&mut Want::IntoOrEvent(&mut buf)).unwrap(),
        Some(Got::Into(flow, 3))
    );
    assert_eq!(&buf[..3], b"one");
    // Too long for the buffer: left first in line, nothing behind it is taken.
    assert_eq!(
        h.app.poll(&mut Want::IntoOrEvent(&mut buf)),
        Err(PollError::BufferTooSmall {
            needed: 16,
            available: 8
        })
    );
    let mut big = [0u8; 32];
    assert_eq!(
        h.app.poll(&mut Want::IntoOrEvent(&mut big)).unwrap(),
        Some(Got::Into(flow, 16))
    );
    assert_eq!(&big[..16], b"a longer message");
    assert_eq!(
        h.app.poll(&mut Want::IntoOrEvent(&mut buf)).unwrap(),
        Some(Got::Event(Event::PeerClosed { flow }))
    );
    assert_eq!(
        h.app.poll(&mut Want::IntoOrEvent(&mut buf)).unwrap(),
        Some(Got::Event(Event::Closed {
            flow,
            reason: Some(CloseCode::Reset)
        }))
    );
    assert_eq!(h.app.poll(&mut Want::IntoOrEvent(&mut buf)).unwrap(), None);
}

#[test]
fn message_only_receives_apply_events_and_auto_close() {
    let mut h = Harness::new();
    let flow = h.accept(7);
    h.notify(RecordKind::PeerClosed, 7, 0, 0, &[]);
    h.notify(RecordKind::Message, 7, 0, 0, b"late");
    assert_eq!(
        h.app.poll(&mut Want::Message).unwrap(),
        Some(Got::Message(flow, b"late".to_vec()))
    );
    assert_eq!(h.app.flow_status(&flow), FlowStatus::Closing);
    // The close is written on the next step.
    assert_eq!(h.app.poll(&mut Want::Message).unwrap(), None);
    assert_eq!(h.requests(), vec![(RecordKind::Close, 7)]);

    let mut h = Harness::new();
    h.app.set_auto_close(false);
    let flow = h.accept(7);
    h.notify(RecordKind::PeerClosed, 7, 0, 0, &[]);
    assert_eq!(h.app.poll(&mut Want::Message).unwrap(), None);
    assert_eq!(h.app.flow_status(&flow), FlowStatus::PeerClosed);
    assert!(h.requests().is_empty());
}

#[test]
fn a_message_too_big_for_the_buffer_is_not_consumed() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    let msg: Vec<u8> = (0..100u8).collect();
    h.notify(RecordKind::Message, 1, 0, 0, &msg);
    let mut small = [0u8; 10];
    assert_eq!(
        h.app.poll(&mut Want::Into(&mut small)),
        Err(PollError::BufferTooSmall {
            needed: 100,
            available: 10
        })
    );
    let mut big = [0u8; 200];
    assert_eq!(
        h.app.poll(&mut Want::Into(&mut big)).unwrap(),
        Some(Got::Into(flow, 100))
    );
    assert_eq!(&big[..100], &msg[..]);

    // The same for a message buffered while a connect was polled.
    let t = h.app.start_connect([10, 0, 0, 9].into(), 9).unwrap();
    h.notify(RecordKind::Message, 1, 0, 0, &msg);
    assert_eq!(h.app.poll_connect(t).unwrap(), None);
    assert!(h.app.has_pending());
    assert!(matches!(
        h.app.poll(&mut Want::Into(&mut small)),
        Err(PollError::BufferTooSmall { needed: 100, .. })
    ));
    assert_eq!(
        h.app.poll(&mut Want::Into(&mut big)).unwrap(),
        Some(Got::Into(flow, 100))
    );
}

fn connected(h: &mut Harness, id: u32, handle: u32) {
    h.notify(
        RecordKind::Connected,
        handle,
        id,
        0,
        &Harness::info(handle).encode(),
    );
}

#[test]
fn connect_answered_and_refused() {
    let mut h = Harness::new();
    let t = h.app.start_connect([10, 0, 0, 2].into(), 888).unwrap();
    let (hdr, payload) = h.request().unwrap();
    assert_eq!((hdr.kind, hdr.aux), (RecordKind::Connect, t.id()));
    assert_eq!(
        ConnectRequest::decode(&payload),
        Some(ConnectRequest {
            remote_ip: [10, 0, 0, 2].into(),
            remote_port: 888
        })
    );
    assert_eq!(h.app.poll_connect(t).unwrap(), None);
    connected(&mut h, t.id(), 3);
    let flow = h.app.poll_connect(t).unwrap().unwrap();
    assert_eq!((flow.handle(), flow.info()), (3, Harness::info(3)));
    assert_eq!(h.app.flow_status(&flow), FlowStatus::Open);
    assert_eq!(
        h.app.flow_by_addrs(flow.local_addr(), flow.remote_addr()),
        Some(flow)
    );
    assert_eq!(h.app.connects_tracked(), 0);

    let t = h.app.start_connect([10, 0, 0, 3].into(), 888).unwrap();
    h.notify(
        RecordKind::ConnectFailed,
        0,
        t.id(),
        CloseCode::Refused as u8,
        &[],
    );
    assert_eq!(
        h.app.poll_connect(t),
        Err(ConnectError::Failed(Some(CloseCode::Refused)))
    );
    assert_eq!(h.app.connects_tracked(), 0);
}

#[test]
fn answers_to_other_tickets_are_kept_for_them() {
    let mut h = Harness::new();
    let t1 = h.app.start_connect([10, 0, 0, 2].into(), 1).unwrap();
    let t2 = h.app.start_connect([10, 0, 0, 2].into(), 2).unwrap();
    assert_ne!(t1, t2);
    connected(&mut h, t2.id(), 20);
    h.notify(RecordKind::Message, 20, 0, 0, b"early");
    connected(&mut h, t1.id(), 10);
    assert_eq!(h.app.poll_connect(t1).unwrap().unwrap().handle(), 10);
    // A receive in between does not eat t2's answer.
    let (flow2, data) = match h.app.poll(&mut Want::Message).unwrap() {
        Some(Got::Message(f, d)) => (f, d),
        other => panic!("{other:?}"),
    };
    assert_eq!((flow2.handle(), &data[..]), (20, &b"early"[..]));
    assert_eq!(h.app.poll_connect(t2).unwrap(), Some(flow2));
    assert_eq!(h.app.connects_tracked(), 0);
    assert!(h.requests().iter().all(|(k, _)| *k == RecordKind::Connect));
}

#[test]
fn an_answer_after_abandon_is_aborted_and_forgotten() {
    let mut h = Harness::new();
    let t = h.app.start_connect([10, 0, 0, 2].into(), 888).unwrap();
    h.request();
    h.app.abandon_connect(t);
    assert_eq!(h.app.connects_tracked(), 0);
    connected(&mut h, t.id(), 4);
    assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
    assert_eq!(h.requests(), vec![(RecordKind::Abort, 4)]);
    assert_eq!(h.app.connects_tracked(), 0);

    // Abandoning after the answer arrived (unclaimed) aborts the flow too.
    let t = h.app.start_connect([10, 0, 0, 2].into(), 888).unwrap();
    h.request();
    connected(&mut h, t.id(), 6);
    assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
    assert_eq!(h.app.connects_tracked(), 1);
    h.app.abandon_connect(t);
    assert_eq!(h.app.connects_tracked(), 0);
    assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
    assert_eq!(h.requests(), vec![(RecordKind::Abort, 6)]);
}

#[test]
fn forged_answer_ids_leave_nothing_behind() {
    let mut h = Harness::new();
    // Answers to ids never issued: a flow nobody asked for is aborted, a failure ignored.
    connected(&mut h, 999, 8);
    h.notify(
        RecordKind::ConnectFailed,
        0,
        1000,
        CloseCode::Refused as u8,
        &[],
    );
    assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
    assert_eq!(h.requests(), vec![(RecordKind::Abort, 8)]);
    // Abandoning forged or already answered tickets records nothing.
    h.app.abandon_connect(ConnectTicket::from_id(12345));
    let t = h.app.start_connect([10, 0, 0, 2].into(), 888).unwrap();
    h.notify(
        RecordKind::ConnectFailed,
        0,
        t.id(),
        CloseCode::TimedOut as u8,
        &[],
    );
    assert!(h.app.poll_connect(t).is_err());
    h.app.abandon_connect(t);
    assert_eq!(h.app.connects_tracked(), 0);
    // A second answer to the same id is a flow nobody asked for.
    connected(&mut h, t.id(), 9);
    assert_eq!(h.app.poll_connect(t).unwrap(), None);
    assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
    assert_eq!(h.requests().last(), Some(&(RecordKind::Abort, 9)));
    assert_eq!(h.app.connects_tracked(), 0);
}

#[test]
fn unclaimed_answers_are_bounded() {
    let mut h = Harness::new();
    let n = UNCLAIMED_ANSWERS as u32 + 50;
    let mut aborts = 0;
    for i in 0..n {
        let t = h.app.start_connect([10, 0, 0, 2].into(), 888).unwrap();
        for (kind, _) in h.requests() {
            aborts += usize::from(kind == RecordKind::Abort);
        }
        connected(&mut h, t.id(), i + 1);
        assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
    }
    h.app.poll(&mut Want::Event).unwrap();
    for (kind, handle) in h.requests() {
        assert!(handle <= 50, "the oldest answers are given up first");
        aborts += usize::from(kind == RecordKind::Abort);
    }
    assert_eq!(h.app.connects_tracked(), UNCLAIMED_ANSWERS);
    assert_eq!(aborts, 50);
}

#[test]
fn flow_status_follows_the_notifications_and_requests() {
    let mut h = Harness::new();
    let flow = h.accept(2);
    assert_eq!(h.app.flow_status(&flow), FlowStatus::Open);
    h.app.send(&flow, &[b"hi"]).unwrap();
    h.notify(RecordKind::PeerClosed, 2, 0, 0, &[]);
    h.app.poll(&mut Want::Event).unwrap();
    assert_eq!(h.app.flow_status(&flow), FlowStatus::PeerClosed);
    h.app.end_flow(&flow, false).unwrap();
    assert_eq!(h.app.flow_status(&flow), FlowStatus::Closing);
    assert_eq!(h.app.send(&flow, &[b"x"]), Err(SubmitError::FlowClosing));
    h.app.end_flow(&flow, false).unwrap(); // no second Close record
    assert_eq!(
        h.requests(),
        vec![(RecordKind::Send, 2), (RecordKind::Close, 2)]
    );
    h.notify(RecordKind::Closed, 2, 0, CloseCode::Graceful as u8, &[]);
    h.app.poll(&mut Want::Event).unwrap();
    assert_eq!(
        h.app.flow_status(&flow),
        FlowStatus::Closed(Some(CloseCode::Graceful))
    );
    assert_eq!(
        h.app.send(&flow, &[b"x"]),
        Err(SubmitError::FlowClosed(Some(CloseCode::Graceful)))
    );
    assert_eq!(h.app.flows().count(), 0);
    assert_eq!(
        h.app.flow_by_addrs(flow.local_addr(), flow.remote_addr()),
        None
    );
    h.app.end_flow(&flow, true).unwrap(); // closed: nothing to do
    assert!(h.requests().is_empty());

    // Flows of other channels and invalid sends.
    let mut other = Harness::new();
    let foreign = other.accept(2);
    assert_eq!(h.app.flow_status(&foreign), FlowStatus::Closed(None));
    assert_eq!(
        h.app.send(&foreign, &[b"x"]),
        Err(SubmitError::WrongChannel)
    );
    assert_eq!(
        h.app.end_flow(&foreign, false),
        Err(SubmitError::WrongChannel)
    );
    assert_eq!(other.app.send(&foreign, &[]), Err(SubmitError::Empty));
    assert_eq!(
        other.app.send(&foreign, &[&[0u8; MAX_MSG as usize + 1]]),
        Err(SubmitError::TooLarge {
            len: MAX_MSG as usize + 1,
            max: MAX_MSG
        })
    );
}

#[test]
fn a_full_request_ring_reports_the_space_needed() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    let msg = vec![7u8; MAX_MSG as usize];
    let need = AppChannel::footprint(msg.len());
    let mut sent = 0;
    let full = loop {
        match h.app.send(&flow, &[&msg[..500], &msg[500..]]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(full, SubmitError::Full { need });
    assert_eq!(sent, h.layout.to_sidecar_capacity / need);
    // A small message may still fit.
    let small_fits = h.layout.to_sidecar_capacity - sent * need >= AppChannel::footprint(1);
    assert_eq!(h.app.send(&flow, &[b"x"]).is_ok(), small_fits);
    let space_waiting = |h: &Harness| {
        h.views
            .to_sidecar
            .control()
            .space_waiting
            .load(Ordering::SeqCst)
    };
    assert!(!h.app.arm(WaitFor::Space(need)).unwrap());
    assert_eq!(space_waiting(&h), 1);
    // The engine consumes one record and sees the flag.
    let rec = h.rx.peek().unwrap().unwrap();
    h.rx.consume(&rec);
    assert!(h.rx.producer_needs_wakeup());
    h.app.disarm(WaitFor::Space(need));
    assert!(h.app.arm(WaitFor::Space(need)).unwrap(), "room now");
    assert_eq!(
        space_waiting(&h),
        0,
        "flag withdrawn when the condition holds"
    );
    h.app.send(&flow, &[&msg]).unwrap();
}

#[test]
fn arming_for_data_rechecks_and_the_sidecar_is_woken_when_asked() {
    let mut h = Harness::new();
    let data_waiting = |h: &Harness| h.views.to_app.control().data_waiting.load(Ordering::SeqCst);
    assert!(!h.app.arm(WaitFor::Data).unwrap());
    assert_eq!(data_waiting(&h), 1);
    assert!(!h.app.is_ready(WaitFor::Data).unwrap());
    let flow_info = Harness::info(3).encode();
    h.notify(RecordKind::Accepted, 3, 1, 0, &flow_info);
    assert!(h.tx.consumer_needs_wakeup(), "the engine sees the flag");
    h.app.disarm(WaitFor::Data);
    assert!(h.app.is_ready(WaitFor::Data).unwrap());
    assert!(h.app.arm(WaitFor::Data).unwrap(), "already holds");
    assert_eq!(data_waiting(&h), 0);

    // The engine sleeps on the request ring: a push asks for a wake-up, once.
    let flow = h.accept_pending();
    assert!(!h.app.take_sidecar_wakeup());
    assert!(!h.rx.prepare_wait().unwrap());
    h.app.send(&flow, &[b"wake"]).unwrap();
    assert!(h.app.take_sidecar_wakeup());
    assert!(!h.app.take_sidecar_wakeup());
}

impl Harness {
    /// The Accepted already in the ring.
    fn accept_pending(&mut self) -> Flow {
        match self.app.poll(&mut Want::Event).unwrap() {
            Some(Got::Event(Event::Accepted { flow, .. })) => flow,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_closed_channel_fails_waits_and_unconsumed_publications() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    h.views
        .closed()
        .store(CloseCode::Shutdown as u32, Ordering::SeqCst);
    assert_eq!(
        h.app.arm(WaitFor::Data),
        Err(ChannelFault::Closed(Some(CloseCode::Shutdown)))
    );
    assert_eq!(
        h.views.to_app.control().data_waiting.load(Ordering::SeqCst),
        0
    );
    assert_eq!(
        h.app.send(&flow, &[b"x"]),
        Err(SubmitError::Fault(ChannelFault::Closed(Some(
            CloseCode::Shutdown
        ))))
    );
    // Published before: consumed, so promised.
    h.views.closed().store(0, Ordering::SeqCst);
    h.app.send(&flow, &[b"y"]).unwrap();
    h.requests();
    h.views
        .closed()
        .store(CloseCode::Shutdown as u32, Ordering::SeqCst);
    assert_eq!(h.app.check_published(), Ok(()));
    // Unknown codes are reported as such.
    h.views.closed().store(200, Ordering::SeqCst);
    assert_eq!(h.app.check_closed(), Err(ChannelFault::Closed(None)));
}

fn raw_header(len: u32, kind: u8, flags: u8, flow: u32, aux: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut b = [0u8; RECORD_HEADER_LEN];
    b[0..4].copy_from_slice(&len.to_le_bytes());
    b[4] = kind;
    b[5] = flags;
    b[8..12].copy_from_slice(&flow.to_le_bytes());
    b[12..16].copy_from_slice(&aux.to_le_bytes());
    b
}

/// Writes one hostile notification (or ring state) into a fresh channel.
type HostileWrite<'a> = dyn Fn(&mut Harness) + 'a;

#[test]
fn hostile_notification_records_poison_the_channel_without_panicking() {
    let info = Harness::info(1).encode();
    let cases: Vec<(&str, Box<HostileWrite<'_>>)> = vec![
        (
            "unknown kind",
            Box::new(|h| h.notify_raw(&raw_header(0, 99, 0, 1, 0), 16)),
        ),
        (
            "reserved bytes set",
            Box::new(|h| {
                let mut b = raw_header(0, RecordKind::PeerClosed as u8, 0, 1, 0);
                b[6] = 1;
                h.notify_raw(&b, 16)
            }),
        ),
        (
            "length beyond the largest message",
            Box::new(|h| {
                h.notify_raw(&raw_header(1 << 30, RecordKind::Message as u8, 0, 1, 0), 16)
            }),
        ),
        (
            "Accepted with a short 4-tuple",
            Box::new(|h| h.notify(RecordKind::Accepted, 3, 0, 0, &info[..5])),
        ),
        (
            "Accepted with handle 0",
            Box::new(|h| h.notify(RecordKind::Accepted, 0, 0, 0, &info)),
        ),
        (
            "Connected reusing a live handle",
            Box::new(|h| {
                h.accept(3);
                h.notify(RecordKind::Connected, 3, 1, 0, &info)
            }),
        ),
        (
            "a request kind",
            Box::new(|h| h.notify(RecordKind::Send, 1, 0, 0, b"x")),
        ),
        (
            "a tail behind the head",
            Box::new(|h| {
                h.notify(RecordKind::Closed, 1, 0, 0, &[]);
                h.app.poll(&mut Want::Event).unwrap();
                h.views.to_app.control().tail.store(0, Ordering::SeqCst);
            }),
        ),
    ];
    for (name, write) in cases {
        let mut h = Harness::new();
        write(&mut h);
        assert!(h.is_corrupt(), "{name}: accepted");
        assert!(h.is_corrupt(), "{name}: not remembered");
        let t = ConnectTicket::from_id(1);
        assert!(
            matches!(h.app.poll_connect(t), Err(ConnectError::Fault(_))),
            "{name}"
        );
        assert!(
            matches!(
                h.app.start_connect([1, 1, 1, 1].into(), 1),
                Err(SubmitError::Fault(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn notifications_about_unknown_flows_are_skipped() {
    let mut h = Harness::new();
    let flow = h.accept(1);
    h.notify(RecordKind::Message, 77, 0, 0, b"stray");
    h.notify(RecordKind::PeerClosed, 78, 0, 0, &[]);
    h.notify(RecordKind::Closed, 79, 0, 3, &[]);
    h.notify(RecordKind::RequestFailed, 80, 2, 3, &[]);
    h.notify(RecordKind::RequestFailed, 1, 250, 200, &[]);
    assert_eq!(
        h.app.poll(&mut Want::Event).unwrap(),
        Some(Got::Event(Event::RequestFailed {
            flow,
            request: RequestKind::Other(250),
            reason: None
        }))
    );
    assert_eq!(h.app.poll(&mut Want::Event).unwrap(), None);
    assert_eq!(h.app.flow_status(&flow), FlowStatus::Open);
}

/// Random bytes as notification records: whatever they decode to, no panic, and once the
/// channel reports a fault it keeps reporting it.
#[test]
fn random_notification_records_never_panic() {
    let seed: u64 = std::env::var("APP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let mut h = Harness::new();
        h.accept(1);
        let mut rec = raw_header(
            (next() % 24) as u32,
            [64u8, 65, 66, 67, 68, 69, 70, 1, 2, 200][(next() % 10) as usize],
            next() as u8,
            (next() % 4) as u32,
            (next() % 4) as u32,
        )
        .to_vec();
        let len = u32::from_le_bytes(rec[0..4].try_into().unwrap()) as u64;
        rec.extend((0..len).map(|_| next() as u8));
        h.notify_raw(&rec, crate::ring::record_footprint(len));
        let mut faulted = false;
        for _ in 0..3 {
            let mut buf = [0u8; 8];
            let r = match next() % 3 {
                0 => h.app.poll(&mut Want::Event),
                1 => h.app.poll(&mut Want::Message),
                _ => h.app.poll(&mut Want::Into(&mut buf)),
            };
            let fault = matches!(r, Err(PollError::Fault(_)));
            assert!(
                !faulted || fault,
                "round {round}: fault forgotten (seed {seed}, APP_FUZZ_SEED to replay)"
            );
            faulted |= fault;
        }
    }
}
