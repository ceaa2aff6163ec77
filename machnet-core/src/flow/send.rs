//! The sending half of a flow (PROTOCOL.md §6): messages accepted from the application,
//! fragmentation, the in-flight scoreboard, SACK processing and loss detection.

use std::collections::VecDeque;

use bytes::Bytes;

use std::time::Duration;

use crate::seq;
use crate::time::Instant;
use crate::wire::{flags, SackBlock};

/// A packet is deemed lost once this many packets sent after it have been acknowledged
/// (PROTOCOL.md §6.2).
pub(crate) const DUP_THRESHOLD: u32 = 3;

/// What a sequenced packet carries.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Data {
        bytes: Bytes,
        flags: u8,
        msg_len: u32,
    },
    Fin,
}

/// One sequenced packet sent and not yet cumulatively acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) payload: Payload,
    /// Selectively acknowledged: delivered, only waiting for the cumulative ACK.
    pub(crate) sacked: bool,
    /// Deemed lost and queued for retransmission.
    pub(crate) lost: bool,
    /// Deemed lost by a retransmission timeout and not retransmitted since: the mark
    /// [`SendState::undo_timeout`] takes back when the timeout proves spurious.
    pub(crate) lost_by_timeout: bool,
    /// Highest sequence number sent when this packet was last (re)transmitted; it is lost once
    /// `DUP_THRESHOLD` packets beyond that mark are acknowledged.
    pub(crate) sent_mark: u32,
    /// When this packet was last (re)transmitted (time-based loss detection).
    pub(crate) sent_at: Instant,
    pub(crate) transmissions: u32,
}

/// What an acknowledgement changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckOutcome {
    /// Packets newly acknowledged, cumulatively or selectively.
    pub(crate) newly_acked: u32,
    /// Whether the cumulative ACK advanced.
    pub(crate) advanced: bool,

    /// Whole messages fully acknowledged.
    pub(crate) messages_acked: u32,
    /// Whether our FIN is now acknowledged.
    pub(crate) fin_acked: bool,
}

/// Why `accept` refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptError {
    Closed,
    BufferFull,
}

#[derive(Debug)]
pub(crate) struct SendState {
    /// Messages not yet completely packetized; the front one from `front_offset` on.
    queue: VecDeque<Bytes>,
    front_offset: usize,
    /// Bytes accepted from the application and not yet acknowledged by the peer.
    buffered: usize,
    limit: usize,
    /// Size of the last message refused for lack of room; `Writable` fires once it fits.
    pub(crate) wants: Option<usize>,
    /// Sequenced packets `una .. nxt`.
    inflight: VecDeque<Sent>,
    pub(crate) una: u32,
    pub(crate) nxt: u32,
    /// End (exclusive) of the highest SACK block seen, if any packet beyond `una` was SACKed.
    highest_sacked: Option<u32>,
    /// Sequence numbers to retransmit, oldest first (entries may be stale; checked on use).
    retransmit: VecDeque<u32>,
    /// Packets in flight: sent, not acknowledged in any way, not deemed lost.
    pipe: u32,
    /// Latest transmission time of any packet the peer has acknowledged (RACK's reference: a
    /// packet sent before it and still unacknowledged is suspect).
    rack_time: Option<Instant>,
    /// `close` was called: a FIN follows the queued data.
    pub(crate) fin_queued: bool,
    pub(crate) fin_sent: bool,
    pub(crate) fin_acked: bool,
    fragment_payload: usize,
}

impl SendState {
    pub(crate) fn new(initial_seq: u32, limit: usize, fragment_payload: usize) -> Self {
        SendState {
            queue: VecDeque::new(),
            front_offset: 0,
            buffered: 0,
            limit,
            wants: None,
            inflight: VecDeque::new(),
            una: initial_seq,
            nxt: initial_seq,
            highest_sacked: None,
            retransmit: VecDeque::new(),
            pipe: 0,
            rack_time: None,
            fin_queued: false,
            fin_sent: false,
            fin_acked: false,
            fragment_payload,
        }
    }

    /// Sets the payload of a full fragment (the flow's agreed datagram less headers). Applies to
    /// packets cut from now on; called before anything is sent.
    pub(crate) fn set_fragment_payload(&mut self, bytes: usize) {
        self.fragment_payload = bytes.max(1);
    }

    /// Takes a message into the send buffer.
    pub(crate) fn accept(&mut self, msg: Bytes) -> Result<(), AcceptError> {
        if self.fin_queued {
            return Err(AcceptError::Closed);
        }
        if self.buffered + msg.len() > self.limit {
            self.wants = Some(msg.len());
            return Err(AcceptError::BufferFull);
        }
        self.buffered += msg.len();
        self.queue.push_back(msg);
        Ok(())
    }

    /// Whether a refused message would now fit (the trigger for `Event::Writable`).
    pub(crate) fn take_writable(&mut self) -> bool {
        match self.wants {
            Some(n) if self.buffered + n <= self.limit || self.buffered == 0 => {
                self.wants = None;
                true
            }
            _ => false,
        }
    }

    /// The largest queued (not yet packetized) message, for checks against the peer's limit.
    pub(crate) fn largest_queued(&self) -> usize {
        self.queue.iter().map(Bytes::len).max().unwrap_or(0)
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }
    pub(crate) fn in_flight(&self) -> u32 {
        self.pipe
    }
    pub(crate) fn has_unacked(&self) -> bool {
        !self.inflight.is_empty()
    }
    /// Whether anything (data or FIN) is waiting to be sent for the first time.
    pub(crate) fn has_new(&self) -> bool {
        !self.queue.is_empty() || (self.fin_queued && !self.fin_sent)
    }
    /// Whether lost packets are waiting for retransmission.
    pub(crate) fn has_retransmit(&self) -> bool {
        self.retransmit
            .iter()
            .any(|&s| self.get(s).is_some_and(|p| p.lost && !p.sacked))
    }
    /// All data sent and acknowledged and the FIN, if queued, acknowledged too.
    pub(crate) fn is_done(&self) -> bool {
        self.fin_acked
    }

    fn index(&self, s: u32) -> Option<usize> {
        let i = seq::dist(self.una, s) as usize;
        (i < self.inflight.len()).then_some(i)
    }
    fn get(&self, s: u32) -> Option<&Sent> {
        self.index(s).map(|i| &self.inflight[i])
    }

    /// The payload of outstanding packet `s`. Panics if `s` is not outstanding.
    pub(crate) fn payload(&self, s: u32) -> &Payload {
        &self.get(s).expect("outstanding sequence number").payload
    }

    /// Pops the next lost packet to retransmit, marking it in flight again.
    pub(crate) fn next_retransmit(&mut self, now: Instant) -> Option<u32> {
        while let Some(s) = self.retransmit.pop_front() {
            let mark = self.nxt.wrapping_sub(1);
            if let Some(i) = self.index(s) {
                let p = &mut self.inflight[i];
                if p.lost && !p.sacked {
                    p.lost = false;
                    p.lost_by_timeout = false;
                    p.sent_mark = mark;
                    p.sent_at = now;
                    p.transmissions += 1;
                    self.pipe += 1;
                    return Some(s);
                }
            }
        }
        None
    }

    /// Cuts the next new packet (a fragment of the front message, or the FIN), records it in
    /// flight and returns its sequence number.
    pub(crate) fn next_new(&mut self, now: Instant) -> Option<u32> {
        let payload = if let Some(msg) = self.queue.front() {
            let remaining = msg.len() - self.front_offset;
            let take = remaining.min(self.fragment_payload);
            let mut f = 0;
            if self.front_offset == 0 {
                f |= flags::FIRST;
            }
            if take == remaining {
                f |= flags::LAST;
            }
            let msg_len = if f & flags::FIRST != 0 {
                msg.len() as u32
            } else {
                0
            };
            let bytes = if take == msg.len() {
                // A one-fragment message: move it, no slicing (slicing shares and allocates).
                self.queue.pop_front().expect("front exists")
            } else {
                let b = msg.slice(self.front_offset..self.front_offset + take);
                if take == remaining {
                    self.queue.pop_front();
                    self.front_offset = 0;
                } else {
                    self.front_offset += take;
                }
                b
            };
            Payload::Data {
                bytes,
                flags: f,
                msg_len,
            }
        } else if self.fin_queued && !self.fin_sent {
            self.fin_sent = true;
            Payload::Fin
        } else {
            return None;
        };
        let s = self.nxt;
        self.inflight.push_back(Sent {
            payload,
            sacked: false,
            lost: false,
            lost_by_timeout: false,
            sent_mark: s,
            sent_at: now,
            transmissions: 1,
        });
        self.nxt = s.wrapping_add(1);
        self.pipe += 1;
        Some(s)
    }

    /// Applies a cumulative ACK and SACK blocks from the peer. Returns `None` if `ack` acknowledges
    /// sequence numbers never sent.
    pub(crate) fn on_ack(&mut self, ack: u32, sacks: &[SackBlock]) -> Option<AckOutcome> {
        if seq::gt(ack, self.nxt) {
            return None;
        }
        let mut out = AckOutcome::default();
        if seq::gt(ack, self.una) {
            out.advanced = true;
            while seq::lt(self.una, ack) {
                let p = self.inflight.pop_front().expect("ack <= nxt");
                if self.rack_time.is_none_or(|t| p.sent_at > t) {
                    self.rack_time = Some(p.sent_at);
                }
                if !p.sacked {
                    out.newly_acked += 1;
                    if !p.lost {
                        self.pipe -= 1;
                    }
                }
                match p.payload {
                    Payload::Data {
                        bytes, flags: f, ..
                    } => {
                        self.buffered -= bytes.len();
                        if f & flags::LAST != 0 {
                            out.messages_acked += 1;
                        }
                    }
                    Payload::Fin => {
                        self.fin_acked = true;
                        out.fin_acked = true;
                    }
                }
                self.una = self.una.wrapping_add(1);
            }
            if self.highest_sacked.is_some_and(|h| seq::le(h, self.una)) {
                self.highest_sacked = None;
            }
        }
        for block in sacks {
            // Clamp to what is outstanding; ignore blocks entirely outside it.
            let start = if seq::lt(block.start, self.una) {
                self.una
            } else {
                block.start
            };
            let end = if seq::gt(block.end, self.nxt) {
                self.nxt
            } else {
                block.end
            };
            if !seq::lt(start, end) {
                continue;
            }
            let mut s = start;
            while s != end {
                let i = seq::dist(self.una, s) as usize;
                let p = &mut self.inflight[i];
                if !p.sacked {
                    if self.rack_time.is_none_or(|t| p.sent_at > t) {
                        self.rack_time = Some(p.sent_at);
                    }
                    p.sacked = true;
                    out.newly_acked += 1;
                    if !p.lost {
                        self.pipe -= 1;
                    }
                }
                s = s.wrapping_add(1);
            }
            if self.highest_sacked.is_none_or(|h| seq::gt(end, h)) {
                self.highest_sacked = Some(end);
            }
        }
        Some(out)
    }

    /// Loss detection (PROTOCOL.md §6.2). An unacknowledged packet below the highest SACKed
    /// one is lost when `DUP_THRESHOLD` packets sent after it were acknowledged, or when a packet
    /// sent after it was acknowledged and `reorder_wait` has passed since it was sent (time-based,
    /// RACK-style: catches losses near the tail and lost retransmissions). Returns the number of
    /// packets newly deemed lost and when the next suspect packet becomes due.
    pub(crate) fn detect_losses(
        &mut self,
        now: Instant,
        reorder_wait: Duration,
    ) -> (u32, Option<Instant>) {
        let Some(end) = self.highest_sacked else {
            return (0, None);
        };
        let highest = end.wrapping_sub(1);
        let mut lost = 0;
        let mut next_due: Option<Instant> = None;
        for (i, p) in self.inflight.iter_mut().enumerate() {
            let s = self.una.wrapping_add(i as u32);
            if !seq::lt(s, highest) {
                break;
            }
            if p.sacked || p.lost {
                continue;
            }
            let by_count = seq::le(p.sent_mark.wrapping_add(DUP_THRESHOLD), highest);
            let by_time = match self.rack_time {
                Some(t) if p.sent_at < t => {
                    let due = p.sent_at + reorder_wait;
                    if now < due {
                        next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    }
                    now >= due
                }
                _ => false,
            };
            if by_count || by_time {
                p.lost = true;
                self.pipe -= 1;
                self.retransmit.push_back(s);
                lost += 1;
            }
        }
        (lost, next_due)
    }

    /// Tail-loss probe (PROTOCOL.md §6.2): queue the newest outstanding, unacknowledged packet for
    /// retransmission so that the peer's answer carries fresh SACK information. Returns whether
    /// there was such a packet.
    pub(crate) fn probe(&mut self) -> bool {
        let Some(i) = self.inflight.iter().rposition(|p| !p.sacked && !p.lost) else {
            return false;
        };
        self.inflight[i].lost = true;
        self.pipe -= 1;
        self.retransmit.push_front(self.una.wrapping_add(i as u32));
        true
    }

    /// The peer reset the flow while only our FIN was outstanding: it can only have forgotten
    /// the flow after receiving that FIN, so the RST acknowledges it (PROTOCOL.md §8.1).
    /// Returns whether that was the case.
    pub(crate) fn fin_acked_by_reset(&mut self) -> bool {
        let only_fin = self.inflight.len() == 1 && matches!(self.inflight[0].payload, Payload::Fin);
        if self.fin_sent && !self.fin_acked && only_fin && self.queue.is_empty() {
            self.inflight.clear();
            self.retransmit.clear();
            self.pipe = 0;
            self.una = self.nxt;
            self.fin_acked = true;
            return true;
        }
        false
    }

    /// Retransmission timeout: every unacknowledged packet is deemed lost, oldest first.
    /// Returns how many were queued.
    pub(crate) fn on_timeout(&mut self) -> u32 {
        self.retransmit.clear();
        let mut n = 0;
        for (i, p) in self.inflight.iter_mut().enumerate() {
            if !p.sacked {
                if !p.lost {
                    p.lost = true;
                    p.lost_by_timeout = true;
                    self.pipe -= 1;
                }
                self.retransmit.push_back(self.una.wrapping_add(i as u32));
                n += 1;
            }
        }
        n
    }

    /// A retransmission timeout proved spurious (PROTOCOL.md §6.3): packets it deemed lost and
    /// that were not retransmitted yet are in flight again (their retransmit-queue entries go
    /// stale). Returns how many.
    pub(crate) fn undo_timeout(&mut self) -> u32 {
        let mut n = 0;
        for p in &mut self.inflight {
            if p.lost_by_timeout && p.lost && !p.sacked {
                p.lost = false;
                self.pipe += 1;
                n += 1;
            }
            p.lost_by_timeout = false;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::ZERO;

    fn state() -> SendState {
        SendState::new(100, 1 << 20, 10)
    }

    fn block(start: u32, end: u32) -> SackBlock {
        SackBlock { start, end }
    }

    #[test]
    fn fragments_messages_with_first_last_and_length() {
        let mut s = state();
        s.accept(Bytes::from(vec![7u8; 25])).unwrap();
        let frags: Vec<_> = std::iter::from_fn(|| s.next_new(T0)).collect();
        assert_eq!(frags.len(), 3);
        let Payload::Data {
            flags: f0,
            msg_len: l0,
            bytes: b0,
        } = s.payload(frags[0])
        else {
            panic!()
        };
        assert_eq!((*f0, *l0, b0.len()), (flags::FIRST, 25, 10));
        let Payload::Data {
            flags: f2,
            msg_len: l2,
            bytes: b2,
        } = s.payload(frags[2])
        else {
            panic!()
        };
        assert_eq!((*f2, *l2, b2.len()), (flags::LAST, 0, 5));
        assert_eq!(frags[2], 102);
    }

    #[test]
    fn sack_marks_holes_lost_after_threshold() {
        let mut s = state();
        for _ in 0..6 {
            s.accept(Bytes::from_static(b"x")).unwrap();
        }
        while s.next_new(T0).is_some() {}
        assert_eq!(s.in_flight(), 6);
        // 100 lost; 101..104 sacked (4 packets sent after it) -> 100 lost.
        let out = s.on_ack(100, &[block(101, 105)]).unwrap();
        assert_eq!(out.newly_acked, 4);
        assert_eq!(s.detect_losses(T0, Duration::from_secs(1)), (1, None));
        assert_eq!(s.next_retransmit(T0), Some(100));
        assert!(s.next_retransmit(T0).is_none());
        // Cumulative ACK of everything.
        let out = s.on_ack(106, &[]).unwrap();
        assert!(out.advanced);
        assert_eq!(out.messages_acked, 6);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn rejects_ack_beyond_sent_and_ignores_wild_sacks() {
        let mut s = state();
        s.accept(Bytes::from_static(b"abc")).unwrap();
        s.next_new(T0);
        assert!(s.on_ack(102, &[]).is_none());
        let out = s.on_ack(100, &[block(5000, 6000)]).unwrap();
        assert_eq!(out, AckOutcome::default());
    }

    #[test]
    fn time_based_detection_catches_tail_and_probe_requeues_newest() {
        let mut s = state();
        for _ in 0..3 {
            s.accept(Bytes::from_static(b"z")).unwrap();
        }
        let t = |us: u64| Instant::from_nanos(us * 1000);
        s.next_new(t(0)); // 100
        s.next_new(t(1)); // 101
        s.next_new(t(2)); // 102
                          // Only 102 is SACKed: too few for the count rule, so 100 and 101 wait for the timer.
        s.on_ack(100, &[block(102, 103)]).unwrap();
        let wait = Duration::from_micros(50);
        assert_eq!(s.detect_losses(t(10), wait), (0, Some(t(50))));
        assert_eq!(s.detect_losses(t(50), wait), (1, Some(t(51))));
        assert_eq!(s.detect_losses(t(51), wait), (1, None));
        assert_eq!(s.next_retransmit(t(60)), Some(100));
        assert_eq!(s.next_retransmit(t(60)), Some(101));
        // Nothing acknowledged beyond: a probe resends the newest unacknowledged packet.
        assert!(s.probe());
        assert_eq!(s.next_retransmit(t(70)), Some(101));
    }

    #[test]
    fn back_pressure_then_writable() {
        let mut s = SendState::new(0, 10, 4);
        s.accept(Bytes::from(vec![0u8; 8])).unwrap();
        assert_eq!(
            s.accept(Bytes::from(vec![0u8; 5])),
            Err(AcceptError::BufferFull)
        );
        assert!(!s.take_writable());
        while s.next_new(T0).is_some() {}
        s.on_ack(2, &[]).unwrap();
        assert!(s.take_writable());
    }

    #[test]
    fn timeout_requeues_everything_unsacked() {
        let mut s = state();
        for _ in 0..4 {
            s.accept(Bytes::from_static(b"y")).unwrap();
        }
        while s.next_new(T0).is_some() {}
        s.on_ack(100, &[block(102, 103)]).unwrap();
        assert_eq!(s.on_timeout(), 3);
        let order: Vec<u32> = std::iter::from_fn(|| s.next_retransmit(T0)).collect();
        assert_eq!(order, vec![100, 101, 103]);
    }
}
