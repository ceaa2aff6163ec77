//! The receiving half of a flow (PROTOCOL.md §6): reorder buffer, message reassembly, SACK
//! blocks and the advertised receive window.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::seq;
use crate::wire::{flags, SackBlock, SackList, MAX_SACK_BLOCKS};

/// A sequenced packet waiting in the reorder buffer.
#[derive(Debug)]
enum Segment {
    Data {
        flags: u8,
        msg_len: u32,
        bytes: Bytes,
    },
    Fin,
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Data { bytes, .. } => bytes.len(),
            Segment::Fin => 0,
        }
    }

    fn into_arrived(self) -> Arrived<'static> {
        match self {
            Segment::Data {
                flags,
                msg_len,
                bytes,
            } => Arrived::Data {
                flags,
                msg_len,
                bytes: Chunk::Owned(bytes),
            },
            Segment::Fin => Arrived::Fin,
        }
    }
}

/// A payload on its way to the assembler: still in the received datagram (in-order arrivals
/// are never copied before reassembly) or stored from the reorder buffer.
enum Chunk<'a> {
    Borrowed(&'a [u8]),
    Owned(Bytes),
}

impl Chunk<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Borrowed(b) => b,
            Chunk::Owned(b) => b,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Chunk::Borrowed(b) => Bytes::copy_from_slice(b),
            Chunk::Owned(b) => b,
        }
    }
}

/// An in-order sequenced packet, fed to the assembler.
enum Arrived<'a> {
    Data {
        flags: u8,
        msg_len: u32,
        bytes: Chunk<'a>,
    },
    Fin,
}

/// What arriving sequenced packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// New; advanced the cumulative ACK (possibly draining the reorder buffer).
    InOrder,
    /// New; stored out of order.
    Buffered,
    /// Already received.
    Duplicate,
    /// Beyond the window.
    OutOfWindow,
    /// Storing it would exceed the memory this flow may use now (PROTOCOL.md §6.5): its fair
    /// share of the engine's budget, or the engine's free budget (`engine_full`: the flow was
    /// within its share, so another flow holds more than its own).
    OverBudget { engine_full: bool },
}

/// The memory a flow may use, set by the engine before each operation on the flow
/// (PROTOCOL.md §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryView {
    /// The flow's fair share of the engine's budget, in bytes.
    pub(crate) share: usize,
    /// Bytes of the engine's budget no flow holds.
    pub(crate) free: usize,
}

impl MemoryView {
    /// No limit (for tests of the reassembly logic alone).
    pub(crate) const UNLIMITED: MemoryView = MemoryView {
        share: usize::MAX,
        free: usize::MAX,
    };
}

/// Why an in-order packet was not delivered.
enum Refusal {
    Violation,
    OverBudget,
}

impl From<FramingViolation> for Refusal {
    fn from(_: FramingViolation) -> Self {
        Refusal::Violation
    }
}

/// The peer broke message framing (PROTOCOL.md §6.4); the flow must be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FramingViolation;

/// A message being reassembled. Its buffer grows as fragments arrive (never to more than the
/// length the peer claimed), so a claimed length costs nothing until the data is there.
#[derive(Debug)]
struct Partial {
    buf: Vec<u8>,
    expected: usize,
}

/// Smallest capacity a partial message starts with (fewer regrowths for mid-size messages).
const PARTIAL_MIN_CAPACITY: usize = 64 << 10;

/// Capacity to grow a buffer of capacity `cap` to so that it holds `needed` bytes of a message
/// of `expected` bytes: doubling (amortised copies) capped at `expected`, or just `needed` when
/// doubling would take more than `room` more bytes. `None` if even that exceeds `room`.
fn grown_capacity(cap: usize, needed: usize, expected: usize, room: usize) -> Option<usize> {
    if needed <= cap {
        return Some(cap);
    }
    let doubled = needed.max(2 * cap).max(PARTIAL_MIN_CAPACITY).min(expected);
    [doubled, needed].into_iter().find(|&c| c - cap <= room)
}

#[derive(Debug)]
pub(crate) struct RecvState {
    /// Next sequence number expected (the cumulative ACK we send).
    pub(crate) nxt: u32,
    /// `reorder[i]` holds sequence number `nxt + i`; `reorder[0]` is always empty.
    reorder: VecDeque<Option<Segment>>,
    buffered_segments: usize,
    /// Sequence number of the most recently stored out-of-order packet (first SACK block).
    last_stored: Option<u32>,
    partial: Option<Partial>,
    /// Complete messages not yet read.
    ready: VecDeque<Bytes>,
    unread: usize,
    /// In-order FIN received: the peer sends nothing more.
    pub(crate) fin_received: bool,
    max_message: usize,
    recv_buffer: usize,
    max_window: u32,
    fragment_payload: usize,
    /// Window in the last packet we sent.
    pub(crate) last_advertised: u32,
    /// One past the highest sequence number we ever allowed the peer to send (`nxt + window` of
    /// our advertisements; never moves back). Packets at or beyond it are dropped, so a sender
    /// that ignores our window cannot grow our memory (PROTOCOL.md §6.5).
    right_edge: u32,
    /// Payload bytes held in the reorder buffer; capped at `recv_buffer`.
    reorder_bytes: usize,
    /// What the engine lets this flow hold (set before every operation).
    memory: MemoryView,
    /// What this flow held when `memory` was set: `memory.free` is the engine's free budget at
    /// that moment, so what this flow adds since then comes out of it.
    held_at_view: usize,
    /// Messages completed since creation.
    pub(crate) messages_completed: u64,
}

impl RecvState {
    pub(crate) fn new(
        initial_seq: u32,
        max_message: usize,
        recv_buffer: usize,
        max_window: u32,
        fragment_payload: usize,
    ) -> Self {
        RecvState {
            nxt: initial_seq,
            reorder: VecDeque::new(),
            buffered_segments: 0,
            last_stored: None,
            partial: None,
            ready: VecDeque::new(),
            unread: 0,
            fin_received: false,
            max_message,
            recv_buffer,
            max_window,
            fragment_payload,
            last_advertised: 0,
            right_edge: initial_seq,
            reorder_bytes: 0,
            memory: MemoryView::UNLIMITED,
            held_at_view: 0,
            messages_completed: 0,
        }
    }

    /// Sets the memory this flow may use: its fair share of the engine's budget and what the
    /// engine has free (PROTOCOL.md §6.5).
    pub(crate) fn set_memory(&mut self, view: MemoryView) {
        self.memory = view;
        self.held_at_view = self.held_bytes();
    }

    /// The memory view last set.
    pub(crate) fn memory(&self) -> MemoryView {
        self.memory
    }

    /// Bytes this flow may add now: within its share and the engine's free budget (less what
    /// this flow took since the view was set: one packet can complete a run of stored ones).
    fn room(&self) -> usize {
        let held = self.held_bytes();
        let engine_room = self
            .memory
            .free
            .saturating_add(self.held_at_view)
            .saturating_sub(held);
        self.memory.share.saturating_sub(held).min(engine_room)
    }

    /// What a refusal for want of memory is: the engine ran out although the flow was within
    /// its share (`needed` more bytes), or the flow is at its share.
    fn over_budget(&self, needed: usize) -> Arrival {
        let within_share = self.held_bytes().saturating_add(needed) <= self.memory.share;
        Arrival::OverBudget {
            engine_full: within_share,
        }
    }

    /// Sets the payload of a full fragment the peer sends (the flow's agreed datagram less
    /// headers): the unit in which the window is counted (PROTOCOL.md §6.5).
    pub(crate) fn set_fragment_payload(&mut self, bytes: usize) {
        self.fragment_payload = bytes.max(1);
    }

    /// Accepts data up to `window` packets beyond `nxt`: a window another packet already
    /// promised on this flow's behalf (a stateless SYN-ACK, PROTOCOL.md §5.5).
    pub(crate) fn honour_window(&mut self, window: u32) {
        let edge = self.nxt.wrapping_add(window.min(self.max_window));
        if seq::gt(edge, self.right_edge) {
            self.right_edge = edge;
        }
    }

    /// Records the window sent in a packet and returns it: the right edge only moves forward.
    pub(crate) fn advertise(&mut self) -> u32 {
        let w = self.window();
        self.last_advertised = w;
        let edge = self.nxt.wrapping_add(w);
        if seq::gt(edge, self.right_edge) {
            self.right_edge = edge;
        }
        w
    }

    /// Handles a DATA fragment with sequence number `s`. In order, its payload goes straight
    /// from the datagram into the message being reassembled; only out-of-order fragments are
    /// copied into the reorder buffer.
    pub(crate) fn on_data(
        &mut self,
        s: u32,
        flag_bits: u8,
        msg_len: u32,
        payload: &[u8],
    ) -> Result<Arrival, FramingViolation> {
        self.on_segment(s, payload.len(), |stored| {
            if stored {
                Arrived::Data {
                    flags: flag_bits,
                    msg_len,
                    bytes: Chunk::Owned(Bytes::copy_from_slice(payload)),
                }
            } else {
                Arrived::Data {
                    flags: flag_bits,
                    msg_len,
                    bytes: Chunk::Borrowed(payload),
                }
            }
        })
    }

    /// Handles a FIN with sequence number `s`.
    pub(crate) fn on_fin(&mut self, s: u32) -> Result<Arrival, FramingViolation> {
        self.on_segment(s, 0, |_| Arrived::Fin)
    }

    /// `make(true)` builds the packet to store out of order (owning its payload), `make(false)`
    /// the in-order one (which may borrow it); `len` is its payload length.
    fn on_segment<'a>(
        &mut self,
        s: u32,
        len: usize,
        make: impl FnOnce(bool) -> Arrived<'a>,
    ) -> Result<Arrival, FramingViolation> {
        if self.fin_received || seq::lt(s, self.nxt) {
            return Ok(Arrival::Duplicate);
        }
        let offset = seq::dist(self.nxt, s) as usize;
        if !seq::lt(s, self.right_edge) || offset >= self.max_window as usize {
            return Ok(Arrival::OutOfWindow);
        }
        if offset > 0 {
            if self.reorder.len() > offset && self.reorder[offset].is_some() {
                return Ok(Arrival::Duplicate);
            }
            if self.reorder_bytes + len > self.recv_buffer {
                return Ok(Arrival::OutOfWindow);
            }
            if len > self.room() {
                return Ok(self.over_budget(len));
            }
            let seg = match make(true) {
                Arrived::Data {
                    flags,
                    msg_len,
                    bytes,
                } => Segment::Data {
                    flags,
                    msg_len,
                    bytes: bytes.into_bytes(),
                },
                Arrived::Fin => Segment::Fin,
            };
            if self.reorder.len() <= offset {
                self.reorder.resize_with(offset + 1, || None);
            }
            self.reorder[offset] = Some(seg);
            self.reorder_bytes += len;
            self.buffered_segments += 1;
            self.last_stored = Some(s);
            return Ok(Arrival::Buffered);
        }
        match self.deliver(make(false), self.room()) {
            Ok(()) => {}
            Err(Refusal::Violation) => return Err(FramingViolation),
            Err(Refusal::OverBudget) => return Ok(self.over_budget(len)),
        }
        // reorder[0] stood for the old `nxt`; after popping it the front stands for the new one.
        self.nxt = self.nxt.wrapping_add(1);
        self.reorder.pop_front();
        while let Some(Some(_)) = self.reorder.front() {
            let seg = self.reorder.pop_front().flatten().expect("checked");
            self.buffered_segments -= 1;
            let len = seg.len();
            self.reorder_bytes -= len;
            self.nxt = self.nxt.wrapping_add(1);
            // Its bytes were counted while stored and no longer are, and it was acknowledged
            // (SACK), so it must not be refused: moving it in exactly (`len` bytes) is always
            // allowed, even when the flow now holds more than a share that has shrunk since;
            // growing a buffer beyond that (doubling) only within the room.
            if let Err(Refusal::Violation) = self.deliver(seg.into_arrived(), self.room().max(len))
            {
                return Err(FramingViolation);
            }
        }
        if self.buffered_segments == 0 {
            self.reorder.clear();
            self.last_stored = None;
        }
        Ok(Arrival::InOrder)
    }

    /// Feeds one in-order packet to the message assembler, taking at most `room` more bytes of
    /// memory; refuses it (changing nothing) if it needs more.
    fn deliver(&mut self, seg: Arrived<'_>, room: usize) -> Result<(), Refusal> {
        match seg {
            Arrived::Fin => {
                if self.partial.is_some() {
                    return Err(Refusal::Violation);
                }
                self.fin_received = true;
                // Nothing may follow a FIN.
                self.reorder.clear();
                self.buffered_segments = 0;
                self.reorder_bytes = 0;
                Ok(())
            }
            Arrived::Data {
                flags: f,
                msg_len,
                bytes,
            } => {
                let first = f & flags::FIRST != 0;
                let last = f & flags::LAST != 0;
                let len = bytes.as_slice().len();
                if first {
                    if self.partial.is_some() || msg_len as usize > self.max_message {
                        return Err(Refusal::Violation);
                    }
                    if last {
                        // One-fragment message: `Repr::parse` checked payload_len == msg_len.
                        // Stored ones are counted already (`room` includes them).
                        if len > room {
                            return Err(Refusal::OverBudget);
                        }
                        self.complete(bytes.into_bytes());
                        return Ok(());
                    }
                    let expected = msg_len as usize;
                    if len > expected {
                        return Err(Refusal::Violation);
                    }
                    let cap = grown_capacity(0, len, expected, room).ok_or(Refusal::OverBudget)?;
                    let mut buf = Vec::with_capacity(cap);
                    buf.extend_from_slice(bytes.as_slice());
                    self.partial = Some(Partial { buf, expected });
                    return Ok(());
                }
                let p = self.partial.as_mut().ok_or(Refusal::Violation)?;
                let bytes = bytes.as_slice();
                let needed = p.buf.len() + bytes.len();
                if needed > p.expected {
                    return Err(Refusal::Violation);
                }
                if last && needed != p.expected {
                    return Err(Refusal::Violation);
                }
                let cap = grown_capacity(p.buf.capacity(), needed, p.expected, room)
                    .ok_or(Refusal::OverBudget)?;
                p.buf.reserve_exact(cap - p.buf.len());
                p.buf.extend_from_slice(bytes);
                if last {
                    let p = self.partial.take().expect("checked");
                    self.complete(Bytes::from(p.buf));
                }
                Ok(())
            }
        }
    }

    fn complete(&mut self, msg: Bytes) {
        self.unread += msg.len();
        self.ready.push_back(msg);
        self.messages_completed += 1;
    }

    /// Takes the oldest complete message.
    pub(crate) fn read(&mut self) -> Option<Bytes> {
        let m = self.ready.pop_front()?;
        self.unread -= m.len();
        Some(m)
    }

    /// Takes every complete unread message (the flow is ending; see `Engine::recv`).
    pub(crate) fn take_ready(&mut self) -> VecDeque<Bytes> {
        self.unread = 0;
        std::mem::take(&mut self.ready)
    }

    /// Length of the oldest complete message, if any.
    pub(crate) fn peek_len(&self) -> Option<usize> {
        self.ready.front().map(Bytes::len)
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Bytes held for this flow, as counted against the engine's memory budget: unread
    /// messages, the partial message's buffer capacity and the reorder buffer's payloads.
    pub(crate) fn held_bytes(&self) -> usize {
        self.unread + self.partial.as_ref().map_or(0, |p| p.buf.capacity()) + self.reorder_bytes
    }

    /// The receive window to advertise, in packets beyond `nxt` (PROTOCOL.md §6.5): zero once
    /// unread messages fill the receive buffer, so an application that stops reading stops its
    /// sender instead of growing our memory; never more than the room left in the flow's fair
    /// share of the engine's memory budget.
    pub(crate) fn window(&self) -> u32 {
        let by_buffer = self.recv_buffer.saturating_sub(self.unread);
        let by_share = self.memory.share.saturating_sub(self.held_bytes());
        let room = by_buffer.min(by_share);
        if room == 0 {
            return 0;
        }
        (room
            .div_ceil(self.fragment_payload)
            .min(self.max_window as usize)) as u32
    }

    /// Whether out-of-order packets are buffered (SACK blocks are due).
    pub(crate) fn has_holes(&self) -> bool {
        self.buffered_segments > 0
    }

    /// Up to [`MAX_SACK_BLOCKS`] blocks: the one holding the most recently stored packet first,
    /// then the lowest others (PROTOCOL.md §3).
    pub(crate) fn sack_blocks(&self) -> SackList {
        let mut list = SackList::new();
        if self.buffered_segments == 0 {
            return list;
        }
        let mut blocks: Vec<SackBlock> = Vec::new();
        let mut run: Option<u32> = None;
        for (i, slot) in self.reorder.iter().enumerate() {
            let s = self.nxt.wrapping_add(i as u32);
            match (slot.is_some(), run) {
                (true, None) => run = Some(s),
                (false, Some(start)) => {
                    blocks.push(SackBlock { start, end: s });
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            blocks.push(SackBlock {
                start,
                end: self.nxt.wrapping_add(self.reorder.len() as u32),
            });
        }
        let recent = self.last_stored.and_then(|r| {
            blocks
                .iter()
                .position(|b| seq::le(b.start, r) && seq::lt(r, b.end))
        });
        if let Some(i) = recent {
            list.push(blocks[i]);
        }
        for (i, b) in blocks.iter().enumerate() {
            if Some(i) != recent && list.len() < MAX_SACK_BLOCKS {
                list.push(*b);
            }
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RecvState {
        let mut r = RecvState::new(10, 1000, 100, 64, 10);
        r.advertise();
        r
    }

    #[test]
    fn reassembles_out_of_order_fragments() {
        let mut r = state();
        assert_eq!(
            r.on_data(12, flags::LAST, 0, b"ij").unwrap(),
            Arrival::Buffered
        );
        assert_eq!(r.on_data(11, 0, 0, b"efgh").unwrap(), Arrival::Buffered);
        assert_eq!(
            r.sack_blocks().as_slice(),
            &[SackBlock { start: 11, end: 13 }]
        );
        assert_eq!(
            r.on_data(10, flags::FIRST, 10, b"abcd").unwrap(),
            Arrival::InOrder
        );
        assert_eq!(r.nxt, 13);
        assert_eq!(r.read().unwrap(), Bytes::from_static(b"abcdefghij"));
        assert!(r.read().is_none());
        assert_eq!(r.on_data(11, 0, 0, b"zz").unwrap(), Arrival::Duplicate);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn framing_violations_are_detected() {
        let mut r = state();
        assert!(r.on_data(10, 0, 0, b"orphan").is_err());
        let mut r = state();
        r.on_data(10, flags::FIRST, 4, b"ab").unwrap();
        assert!(
            r.on_data(11, flags::LAST, 0, b"cde").is_err(),
            "longer than msg_len"
        );
        let mut r = state();
        assert!(
            r.on_data(10, flags::FIRST, 5000, b"ab").is_err(),
            "above max message"
        );
        let mut r = state();
        r.on_data(10, flags::FIRST, 4, b"ab").unwrap();
        assert!(r.on_fin(11).is_err(), "FIN inside a message");
    }

    #[test]
    fn window_closes_when_unread_fills_buffer() {
        let mut r = state();
        assert_eq!(r.window(), 10);
        for i in 0..10 {
            r.on_data(10 + i, flags::FIRST | flags::LAST, 10, &[1; 10])
                .unwrap();
        }
        assert_eq!(r.window(), 0);
        r.read().unwrap();
        assert_eq!(r.window(), 1);
    }

    #[test]
    fn sack_blocks_put_recent_first_and_cap_at_four() {
        let mut r = RecvState::new(10, 1000, 1000, 64, 10);
        r.advertise();
        for s in [12, 14, 16, 18, 20, 22] {
            r.on_data(s, flags::FIRST | flags::LAST, 1, b"x").unwrap();
        }
        r.on_data(17, flags::FIRST | flags::LAST, 1, b"x").unwrap();
        let blocks = r.sack_blocks();
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks.as_slice()[0], SackBlock { start: 16, end: 19 });
        assert_eq!(blocks.as_slice()[1], SackBlock { start: 12, end: 13 });
        assert_eq!(
            r.on_data(10 + 64, flags::FIRST | flags::LAST, 1, b"x")
                .unwrap(),
            Arrival::OutOfWindow
        );
    }

    fn limited(share: usize, free: usize) -> RecvState {
        let mut r = RecvState::new(10, 8 << 20, 1 << 20, 4096, 1000);
        r.advertise();
        r.set_memory(MemoryView { share, free });
        r
    }

    #[test]
    fn a_claimed_message_length_costs_nothing_until_the_data_arrives() {
        let mut r = limited(100_000, 100_000);
        // An 8 MiB claim with 10 bytes of data: the buffer starts small.
        assert_eq!(
            r.on_data(10, flags::FIRST, 8 << 20, &[7; 10]).unwrap(),
            Arrival::InOrder
        );
        assert!(r.held_bytes() <= PARTIAL_MIN_CAPACITY, "{}", r.held_bytes());
        // It grows with the data, never past the share: then the data is refused.
        let mut s = 11;
        loop {
            match r.on_data(s, 0, 0, &[7; 1000]).unwrap() {
                Arrival::InOrder => s += 1,
                Arrival::OverBudget { engine_full } => {
                    assert!(!engine_full, "the flow's own share ran out");
                    break;
                }
                other => panic!("{other:?}"),
            }
            assert!(r.held_bytes() <= 100_000, "{}", r.held_bytes());
        }
        assert!(
            r.held_bytes() > 99_000,
            "grew up to the share: {}",
            r.held_bytes()
        );
        assert!(
            r.window() <= 1,
            "less than a fragment of room left: {}",
            r.window()
        );
    }

    #[test]
    fn out_of_order_data_is_refused_beyond_the_share_or_the_engines_free_bytes() {
        let mut r = limited(5_000, 1_000_000);
        for s in 11..16 {
            assert_eq!(r.on_data(s, 0, 0, &[1; 1000]).unwrap(), Arrival::Buffered);
        }
        assert_eq!(
            r.on_data(16, 0, 0, &[1; 1]).unwrap(),
            Arrival::OverBudget { engine_full: false }
        );
        assert_eq!(r.held_bytes(), 5_000);
        // Within its share, but the engine has only 500 bytes free.
        r.set_memory(MemoryView {
            share: 1_000_000,
            free: 500,
        });
        assert_eq!(
            r.on_data(17, 0, 0, &[1; 501]).unwrap(),
            Arrival::OverBudget { engine_full: true }
        );
        assert_eq!(r.on_data(17, 0, 0, &[1; 500]).unwrap(), Arrival::Buffered);
    }

    /// Delivers `s` and checks the flow holds no more than its share nor than the engine had
    /// free when the view was set (`limit`).
    fn held_within(r: &mut RecvState, s: u32, f: u8, msg_len: u32, len: usize, limit: usize) {
        r.on_data(s, f, msg_len, &vec![3; len]).unwrap();
        assert!(
            r.held_bytes() <= limit,
            "seq {s}: holds {} > {limit}",
            r.held_bytes()
        );
    }

    #[test]
    fn draining_stored_fragments_stays_within_the_share() {
        // Found by the engine_sequence fuzz target: the stored fragments' bytes were counted
        // twice as room when they moved into the message, so its buffer could grow past the share.
        let mut r = limited(2_000 + 48, usize::MAX);
        // Stored: 15 and 17 (16 is missing, so 17 stays stored when 15 joins the message).
        for s in [15, 17] {
            assert_eq!(r.on_data(s, 0, 0, &[3; 200]).unwrap(), Arrival::Buffered);
        }
        held_within(&mut r, 10, flags::FIRST, 2_000, 200, 2_048);
        for s in [11, 12, 13, 14, 16, 18] {
            held_within(&mut r, s, 0, 0, 200, 2_048);
        }
        held_within(&mut r, 19, flags::LAST, 0, 200, 2_048);
        assert_eq!(r.read().unwrap().len(), 2_000);
    }

    #[test]
    fn stored_messages_are_delivered_when_the_share_shrank_below_what_the_flow_holds() {
        // A stored (acknowledged) message must not be dropped when the packet before it
        // arrives at a time the flow holds more than its share (more flows share the budget).
        let mut r = limited(100_000, usize::MAX);
        assert_eq!(
            r.on_data(10, flags::FIRST, 1_000, &[3; 100]).unwrap(),
            Arrival::InOrder
        );
        assert_eq!(
            r.on_data(12, flags::FIRST | flags::LAST, 300, &[4; 300])
                .unwrap(),
            Arrival::Buffered
        );
        r.set_memory(MemoryView {
            share: 500,
            free: usize::MAX,
        });
        // Completes message 1 within the buffer it already has, then message 2 is drained.
        assert_eq!(
            r.on_data(11, flags::LAST, 0, &[3; 900]).unwrap(),
            Arrival::InOrder
        );
        assert_eq!(r.read().unwrap().len(), 1_000);
        assert_eq!(r.read().map(|m| m.len()), Some(300), "message 2 was lost");
    }

    #[test]
    fn draining_stored_fragments_stays_within_the_engines_free_bytes() {
        // The engine's free bytes are a snapshot taken before the packet: what the in-order
        // packet takes (here a whole message) must not be granted again to the stored fragment
        // it makes deliverable (the first of a 900-byte message, whose buffer would double).
        let mut r = limited(1 << 20, 1 << 20);
        assert_eq!(
            r.on_data(11, flags::FIRST, 900, &[3; 100]).unwrap(),
            Arrival::Buffered
        );
        r.set_memory(MemoryView {
            share: 1 << 20,
            free: 1_000,
        });
        held_within(
            &mut r,
            10,
            flags::FIRST | flags::LAST,
            500,
            500,
            100 + 1_000,
        );
        assert_eq!(r.read().unwrap().len(), 500);
        r.set_memory(MemoryView {
            share: 1 << 20,
            free: 1_000,
        });
        held_within(&mut r, 12, flags::LAST, 0, 800, 100 + 1_000);
        assert_eq!(r.read().unwrap().len(), 900);
    }

    #[test]
    fn stored_fragments_move_into_the_message_without_new_memory() {
        // Fragments 11..=14 arrive first and fill the share; the first one then completes the
        // message: the stored bytes become the message, nothing more is needed.
        let mut r = limited(4_100, 4_100);
        for s in 11..15 {
            let f = if s == 14 { flags::LAST } else { 0 };
            assert_eq!(r.on_data(s, f, 0, &[2; 1000]).unwrap(), Arrival::Buffered);
        }
        r.set_memory(MemoryView {
            share: 10_000,
            free: 100,
        });
        assert_eq!(
            r.on_data(10, flags::FIRST, 5_000, &[2; 1000]).unwrap(),
            Arrival::OverBudget { engine_full: true },
            "the first fragment itself needs 1000 more bytes"
        );
        r.set_memory(MemoryView {
            share: 5_000,
            free: 1_000,
        });
        assert_eq!(
            r.on_data(10, flags::FIRST, 5_000, &[2; 1000]).unwrap(),
            Arrival::InOrder
        );
        assert_eq!(r.read().unwrap().len(), 5_000);
        assert_eq!(r.held_bytes(), 0);
    }
}
