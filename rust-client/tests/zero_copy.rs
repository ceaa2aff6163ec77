//! Loaned sends and borrowed receives against the fake sidecar (tests/support): `Channel`
//! (lifetimes) and `SharedChannel` (one loan and one view per channel, many threads).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use machnet::{Channel, Event, Flow, Machnet, SendError, SharedChannel, SharedError};
use machnet_channel::{ChannelLayout, RecordKind};
use support::{Config, Fake, FakeChannel};

const T: Duration = Duration::from_secs(10);

fn small_rings() -> Config {
    Config {
        layout: ChannelLayout::new(8192, 8192, 3000).unwrap(),
        ..Config::default()
    }
}

fn open(cfg: Config) -> (Machnet, Fake, Channel, FakeChannel) {
    let (m, fake) = Fake::attach(cfg);
    let ch = m.open_channel(Some(0)).expect("open channel");
    let side = fake.channel();
    (m, fake, ch, side)
}

fn accept(ch: &mut Channel, side: &mut FakeChannel, handle: u32) -> Flow {
    side.accept(handle, 5000 + handle as u16, 80);
    match ch.next_event(Some(T)).unwrap() {
        Some(Event::Accepted { flow, .. }) => flow,
        other => panic!("{other:?}"),
    }
}

fn pattern(len: usize, salt: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + salt) as u8).collect()
}

#[test]
fn a_channel_loans_commits_partially_cancels_and_borrows_across_the_wrap() {
    let (_m, _fake, mut ch, mut side) = open(small_rings());
    let flow = accept(&mut ch, &mut side, 1);
    for i in 0..200 {
        let len = 1 + (i * 397) % 3000;
        let msg = pattern(len, i);
        // Loan more than needed, commit exactly the message.
        let mut loan = ch.loan(&flow, 3000).unwrap();
        assert_eq!(loan.len(), 3000);
        loan[..len].copy_from_slice(&msg);
        loan.commit(len).unwrap();
        // A loan dropped without commit sends nothing.
        let mut dropped = ch.try_loan(&flow, 100).unwrap();
        dropped.fill(0xff);
        drop(dropped);
        let (h, got) = side.request(T).expect("the committed message");
        assert_eq!((h.kind, h.flow), (RecordKind::Send, 1));
        assert!(got == msg, "request {i}");
        assert!(
            side.request(Duration::ZERO).is_none(),
            "a dropped loan sends nothing"
        );

        side.message(1, &msg);
        let (f, view) = ch.recv_zc_timeout(T).unwrap().expect("a message");
        assert_eq!(f, flow);
        assert!(*view == msg[..], "message {i}");
        drop(view);
    }
    assert!(ch.try_recv_zc().unwrap().is_none());
    assert!(matches!(ch.loan(&flow, 0), Err(SendError::Empty)));
    assert!(matches!(
        ch.loan(&flow, 3001),
        Err(SendError::TooLarge { .. })
    ));
    let loan = ch.loan(&flow, 10).unwrap();
    assert!(matches!(
        loan.commit(11),
        Err(SendError::BadCommitLength {
            used: 11,
            loaned: 10
        })
    ));
    assert!(
        side.request(Duration::ZERO).is_none(),
        "a refused commit sends nothing"
    );
    ch.send(&flow, b"still works").unwrap();
    assert_eq!(side.request(T).unwrap().1, b"still works");
}

#[test]
fn a_full_ring_makes_try_loan_would_block_and_loan_wait_for_room() {
    let (_m, _fake, mut ch, mut side) = open(small_rings());
    let flow = accept(&mut ch, &mut side, 1);
    // Fill the request ring.
    while ch.try_send(&flow, &[1u8; 3000]).is_ok() {}
    assert!(matches!(
        ch.try_loan(&flow, 3000),
        Err(SendError::WouldBlock)
    ));
    assert!(matches!(
        ch.loan_timeout(&flow, 3000, Duration::from_millis(1)),
        Err(SendError::WouldBlock)
    ));
    let engine = std::thread::spawn(move || {
        let mut n = 0;
        while side.request(Duration::from_secs(2)).is_some() {
            n += 1;
        }
        n
    });
    let mut loan = ch.loan(&flow, 3000).expect("room after the engine drained");
    loan.fill(2);
    loan.commit(3000).unwrap();
    assert!(engine.join().unwrap() >= 2);
}

fn shared(cfg: Config) -> (Machnet, Fake, Arc<SharedChannel>, FakeChannel, Flow) {
    let (m, fake, mut ch, mut side) = open(cfg);
    let flow = accept(&mut ch, &mut side, 1);
    (
        m,
        fake,
        Arc::new(SharedChannel::new(ch).unwrap()),
        side,
        flow,
    )
}

#[test]
fn a_shared_loan_holds_back_other_threads_sends_until_it_is_committed() {
    let (_m, _fake, sh, mut side, flow) = shared(small_rings());
    let buf = sh.loan(&flow, 16, None).unwrap();
    assert_eq!(buf.len, 16);
    // The thread that holds the loan may not wait for itself.
    assert!(matches!(
        sh.send(&flow, &[b"x"], None),
        Err(SharedError::Busy)
    ));
    assert!(matches!(sh.loan(&flow, 1, None), Err(SharedError::Busy)));
    let sender = {
        let sh = sh.clone();
        std::thread::spawn(move || {
            // A try from another thread reports busy; a blocking send waits.
            assert!(matches!(
                sh.loan(&flow, 1, Some(Instant::now())),
                Err(SharedError::Busy)
            ));
            sh.send(&flow, &[b"after"], None).unwrap();
        })
    };
    // Whatever the scheduling, the sender cannot have overtaken the loan.
    std::thread::sleep(Duration::from_millis(50));
    assert!(side.request(Duration::ZERO).is_none());
    // SAFETY: the loan's 16 bytes, written by this thread only, before commit.
    unsafe { std::ptr::copy_nonoverlapping(b"loaned".as_ptr(), buf.ptr, 6) };
    sh.commit(6).unwrap();
    sender.join().unwrap();
    assert_eq!(side.request(T).unwrap().1, b"loaned");
    assert_eq!(side.request(T).unwrap().1, b"after");
    assert!(matches!(sh.commit(1), Err(SharedError::NoneOutstanding)));
    assert!(matches!(
        sh.cancel_loan(),
        Err(SharedError::NoneOutstanding)
    ));
    // Cancel: nothing sent, the next send goes out.
    sh.loan(&flow, 8, None).unwrap();
    sh.cancel_loan().unwrap();
    sh.send(&flow, &[b"next"], None).unwrap();
    assert_eq!(side.request(T).unwrap().1, b"next");
    assert!(side.request(Duration::ZERO).is_none());
}

#[test]
fn a_shared_view_lets_other_receives_go_on_and_is_released_once() {
    let (_m, _fake, sh, mut side, flow) = shared(small_rings());
    side.message(1, b"first");
    side.message(1, b"second");
    side.message(1, b"third");
    let v = sh.recv_zc(Some(Instant::now())).unwrap().expect("first");
    assert_eq!(v.flow, flow);
    // SAFETY: the view is out until released below.
    assert_eq!(
        unsafe { std::slice::from_raw_parts(v.ptr, v.len) },
        b"first"
    );
    // A copying receive takes the next message meanwhile; a second view is refused.
    let (_, data) = sh.recv(Some(Instant::now())).unwrap().unwrap();
    assert_eq!(data, b"second");
    assert!(matches!(
        sh.recv_zc(Some(Instant::now())),
        Err(SharedError::Busy)
    ));
    assert!(matches!(sh.recv_zc(None), Err(SharedError::Busy)));
    // Another thread's timed recv_zc that expires before the release times out (no error).
    {
        let sh = sh.clone();
        let timed = std::thread::spawn(move || {
            let got = sh.recv_zc(Some(Instant::now() + Duration::from_millis(20)));
            matches!(got, Ok(None))
        });
        assert!(timed.join().unwrap(), "timed out without an error");
    }
    // Another thread's blocking recv_zc waits for the release.
    let other = {
        let sh = sh.clone();
        std::thread::spawn(move || {
            let v = sh
                .recv_zc(Some(Instant::now() + T))
                .unwrap()
                .expect("third");
            // SAFETY: out until released below.
            let got = unsafe { std::slice::from_raw_parts(v.ptr, v.len) }.to_vec();
            sh.release().unwrap();
            got
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: still out (the other thread waits for it).
    assert_eq!(
        unsafe { std::slice::from_raw_parts(v.ptr, v.len) },
        b"first"
    );
    sh.release().unwrap();
    assert!(matches!(sh.release(), Err(SharedError::NoneOutstanding)));
    assert_eq!(other.join().unwrap(), b"third");
    assert!(sh.recv_zc(Some(Instant::now())).unwrap().is_none());
}

#[test]
fn the_engine_blocked_on_a_borrowed_message_resumes_when_it_is_released() {
    let (_m, _fake, sh, mut side, _flow) = shared(small_rings());
    let engine = std::thread::spawn(move || {
        for i in 0..40 {
            side.notify_blocking(RecordKind::Message, 1, &pattern(2500, i));
        }
        side
    });
    for i in 0..40 {
        let v = sh
            .recv_zc(Some(Instant::now() + T))
            .unwrap()
            .expect("message");
        // SAFETY: out until released.
        assert!(unsafe { std::slice::from_raw_parts(v.ptr, v.len) } == pattern(2500, i));
        sh.release().unwrap();
    }
    engine.join().unwrap();
}

#[test]
fn loans_and_views_outstanding_at_detach_stay_mapped() {
    let (_m, _fake, sh, mut side, flow) = shared(small_rings());
    side.message(1, b"kept");
    let v = sh.recv_zc(None).unwrap().unwrap();
    let buf = sh.loan(&flow, 100, None).unwrap();
    drop(sh.detach());
    // SAFETY: the shared channel keeps the memory mapped until it is dropped.
    unsafe {
        std::ptr::write_bytes(buf.ptr, 1, buf.len);
        assert_eq!(std::slice::from_raw_parts(v.ptr, v.len), b"kept");
    }
    assert!(matches!(sh.commit(100), Err(SharedError::Detached)));
    sh.release().unwrap();
}

#[test]
fn many_threads_loan_send_borrow_and_receive_exactly_once_in_order() {
    const SENDERS: u32 = 3;
    const PER_SENDER: u32 = 300;
    const RECEIVERS: u32 = 3;
    const MESSAGES: u32 = 900;
    let (_m, _fake, sh, mut side, flow) = shared(small_rings());
    let engine = std::thread::spawn(move || {
        let mut next = 0u32;
        let mut stops = 0;
        let mut expect = [0u32; SENDERS as usize];
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while next < MESSAGES || stops < RECEIVERS || received < SENDERS * PER_SENDER {
            assert!(Instant::now() < deadline, "engine stalled");
            loop {
                let data = if next < MESSAGES {
                    next.to_le_bytes().repeat(1 + (next % 300) as usize)
                } else if stops < RECEIVERS {
                    b"stop".to_vec()
                } else {
                    break;
                };
                match side.try_notify(RecordKind::Message, 1, 0, 0, &data) {
                    Ok(()) if next < MESSAGES => next += 1,
                    Ok(()) => stops += 1,
                    Err(_) => break,
                }
            }
            while let Some((h, d)) = side.request(Duration::from_millis(1)) {
                assert_eq!(h.kind, RecordKind::Send);
                let sender = u32::from_le_bytes(d[..4].try_into().unwrap());
                let seq = u32::from_le_bytes(d[4..8].try_into().unwrap());
                assert_eq!(seq, expect[sender as usize], "sender {sender}");
                assert!(
                    d[8..].iter().all(|&b| b == seq as u8),
                    "payload of {sender}/{seq}"
                );
                expect[sender as usize] += 1;
                received += 1;
            }
        }
    });
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let sh = sh.clone();
            std::thread::spawn(move || {
                for seq in 0..PER_SENDER {
                    let mut msg = [s.to_le_bytes(), seq.to_le_bytes()].concat();
                    msg.resize(8 + (seq as usize * 7) % 2000, seq as u8);
                    if seq % 2 == 0 {
                        let b = sh.loan(&flow, msg.len() + 100, None).unwrap();
                        // SAFETY: the loan's bytes, ours until commit.
                        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), b.ptr, msg.len()) };
                        sh.commit(msg.len()).unwrap();
                    } else {
                        sh.send(&flow, &[&msg], None).unwrap();
                    }
                }
            })
        })
        .collect();
    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|r| {
            let sh = sh.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let data = if r == 0 {
                        sh.recv(None).unwrap().unwrap().1
                    } else {
                        let v = sh.recv_zc(None).unwrap().unwrap();
                        // SAFETY: the view is ours until released.
                        let d = unsafe { std::slice::from_raw_parts(v.ptr, v.len) }.to_vec();
                        sh.release().unwrap();
                        d
                    };
                    if data == b"stop" {
                        return got;
                    }
                    let n = u32::from_le_bytes(data[..4].try_into().unwrap());
                    assert_eq!(data, n.to_le_bytes().repeat(1 + (n % 300) as usize));
                    got.push(n);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut all: Vec<u32> = receivers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    engine.join().unwrap();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..MESSAGES).collect::<Vec<_>>(),
        "each message exactly once"
    );
}

#[test]
fn a_commit_after_the_sidecar_died_fails_and_publishes_nothing() {
    let (_m, mut fake, mut ch, mut side) = open(small_rings());
    let flow = accept(&mut ch, &mut side, 1);
    let mut loan = ch.loan(&flow, 4).unwrap();
    loan.copy_from_slice(b"lost");
    fake.kill();
    assert!(matches!(loan.commit(4), Err(SendError::SidecarGone)));
    assert!(
        side.request(Duration::ZERO).is_none(),
        "nothing was published"
    );
    // As for a send: every later call reports it.
    assert!(matches!(ch.send(&flow, b"x"), Err(SendError::SidecarGone)));
}
