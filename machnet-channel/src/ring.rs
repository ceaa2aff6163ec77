//! A single-producer, single-consumer ring of variable-size records in shared memory
//! (docs/CHANNEL.md §3).
//!
//! Positions are monotonically increasing byte counters (`u64`, never wrapping in practice); the
//! byte at position `p` lives at offset `p % capacity` of the data area. Records are a 16-byte
//! [`RecordHeader`] followed by the payload, padded to 8 bytes; a record may wrap around the end
//! of the data area (it is copied in two pieces). A view of a ring whose data area is mapped
//! twice back-to-back ([`RingView::new_mirrored`], the app side: `crate::mirror`) sees every
//! record contiguously, which is what loaned sends and borrowed receives hand out.
//!
//! **Trust.** Each side keeps the index it owns (the producer's tail, the consumer's head) in
//! private memory and only *publishes* it; the other side's index is read from shared memory and
//! validated on every use. A peer that scribbles over the shared indices, headers or payloads can
//! therefore only produce a [`RingError`], never an out-of-bounds access.

use std::ptr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use super::record::{RecordHeader, RECORD_HEADER_LEN};

/// The control block of one ring, in shared memory. Producer and consumer fields sit on separate
/// cache lines.
#[repr(C, align(64))]
pub struct RingControl {
    /// Producer position: bytes ever written. Written by the producer only.
    pub tail: AtomicU64,
    _pad0: [u8; 56],
    /// Consumer position: bytes ever consumed. Written by the consumer only.
    pub head: AtomicU64,
    _pad1: [u8; 56],
    /// Set by a consumer about to sleep until data arrives (docs/CHANNEL.md §4).
    pub data_waiting: AtomicU32,
    /// Set by a producer about to sleep until space frees up.
    pub space_waiting: AtomicU32,
    _pad2: [u8; 56],
}

/// Size of [`RingControl`] in shared memory.
pub const RING_CONTROL_LEN: usize = std::mem::size_of::<RingControl>();

/// The shared memory of a ring was found inconsistent: the peer wrote nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The peer's published index moved backwards or out of range (a consumer past what was
    /// produced, a producer more than `capacity` bytes ahead of the consumer).
    #[error(
        "ring index out of range (peer position {peer}, own position {own}, capacity {capacity})"
    )]
    BadIndex {
        /// The peer's index as read from shared memory (bytes ever produced or consumed).
        peer: u64,
        /// This end's own index.
        own: u64,
        /// The ring's data capacity in bytes.
        capacity: u64,
    },
    /// A record header is malformed, too long, or reaches past the published bytes; the text
    /// says which.
    #[error("record header is invalid: {0}")]
    BadRecord(&'static str),
}

/// Why a record could not be pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The record fits the ring but not its free space now; retry after the consumer advances.
    #[error("not enough free space in the ring now")]
    Full,
    /// The record (this many bytes, header and padding included) exceeds the ring's capacity.
    #[error("record of {0} bytes can never fit in this ring")]
    TooLarge(u64),

    /// The consumer's index in shared memory is inconsistent.
    #[error(transparent)]
    Corrupt(#[from] RingError),
}

/// Bytes a record with `payload_len` payload bytes occupies in the ring.
pub fn record_footprint(payload_len: u64) -> u64 {
    RECORD_HEADER_LEN as u64 + payload_len.div_ceil(8) * 8
}

/// A raw view of one ring: its control block and data area. `Copy` because it is only a pair of
/// pointers; the memory must outlive every use (guaranteed by the owner of the mapping).
#[derive(Clone, Copy)]
pub struct RingView {
    ctrl: *const RingControl,
    pub(crate) data: *mut u8,
    capacity: u64,
    /// The data area is followed by a second mapping of itself (`2 * capacity` bytes visible).
    mirrored: bool,
}

// SAFETY: the view points into a shared mapping that both threads/processes access through
// atomics (indices) or under the SPSC protocol (data bytes).
unsafe impl Send for RingView {}

impl RingView {
    /// A view of the ring whose control block is at `ctrl` and data area at `data`.
    ///
    /// # Safety
    /// `ctrl` must point to a valid, suitably aligned `RingControl` and `data` to `capacity`
    /// writable bytes, both staying mapped for as long as the view (and copies of it) is used.
    /// `capacity` must be a non-zero multiple of 8.
    pub unsafe fn new(ctrl: *const RingControl, data: *mut u8, capacity: u64) -> Self {
        debug_assert!(capacity > 0 && capacity.is_multiple_of(8));
        RingView {
            ctrl,
            data,
            capacity,
            mirrored: false,
        }
    }

    /// A view of a ring whose data area is mapped twice back-to-back at `data`: the bytes at
    /// `data + i` and `data + capacity + i` are the same memory, so any `capacity` bytes from
    /// any position are one contiguous slice.
    ///
    /// # Safety
    /// As [`RingView::new`], with `2 * capacity` bytes mapped at `data` as described.
    pub unsafe fn new_mirrored(ctrl: *const RingControl, data: *mut u8, capacity: u64) -> Self {
        RingView {
            mirrored: true,
            ..Self::new(ctrl, data, capacity)
        }
    }

    /// Whether the data area is mirrored (see [`RingView::new_mirrored`]).
    pub fn is_mirrored(&self) -> bool {
        self.mirrored
    }

    /// This view without the mirror property (the same memory, accessed as a plain ring).
    pub fn unmirrored(self) -> Self {
        RingView {
            mirrored: false,
            ..self
        }
    }

    /// Where the `len` bytes at position `pos` start, if they are contiguous in this view (a
    /// mirrored view: always; otherwise unless they wrap). `len` must not exceed the capacity.
    fn contiguous(&self, pos: u64, len: u64) -> Option<*mut u8> {
        debug_assert!(len <= self.capacity);
        let off = pos % self.capacity;
        // SAFETY: off < capacity; with a mirror, off + len <= 2 * capacity bytes are mapped.
        (self.mirrored || off + len <= self.capacity)
            .then(|| unsafe { self.data.add(off as usize) })
    }

    /// The ring's shared control block (indices and wake-up flags).
    pub fn control(&self) -> &RingControl {
        // SAFETY: guaranteed by the constructor's contract.
        unsafe { &*self.ctrl }
    }

    /// Size of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Copies `src` into the data area starting at position `pos` (wrapping).
    fn write_at(&self, pos: u64, src: &[u8]) {
        if let Some(dst) = self.contiguous(pos, src.len() as u64) {
            // SAFETY: `contiguous` vouches for `src.len()` bytes at `dst`.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            return;
        }
        let off = (pos % self.capacity) as usize;
        let first = src.len().min(self.capacity as usize - off);
        // SAFETY: off < capacity and first <= capacity - off; the rest starts at 0 and is at most
        // capacity bytes because callers never write more than the ring's free space.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(off), first);
            ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data, src.len() - first);
        }
    }

    /// Copies bytes at position `pos` (wrapping) into `dst`.
    fn read_at(&self, pos: u64, dst: &mut [u8]) {
        if let Some(src) = self.contiguous(pos, dst.len() as u64) {
            // SAFETY: `contiguous` vouches for `dst.len()` bytes at `src`.
            unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
            return;
        }
        let off = (pos % self.capacity) as usize;
        let first = dst.len().min(self.capacity as usize - off);
        // SAFETY: as in `write_at`; callers never read more than `capacity` bytes.
        unsafe {
            ptr::copy_nonoverlapping(self.data.add(off), dst.as_mut_ptr(), first);
            ptr::copy_nonoverlapping(self.data, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

/// The producing end of a ring.
pub struct Producer {
    ring: RingView,
    /// Our position; the shared `tail` is only ever a copy of it.
    tail: u64,
    /// Last consumer position seen (validated).
    head: u64,
}

impl Producer {
    /// Takes the producing end, starting at the position currently published (a fresh ring: 0).
    pub fn new(ring: RingView, start: u64) -> Self {
        Producer {
            ring,
            tail: start,
            head: start,
        }
    }

    /// The ring this end works on.
    pub fn ring(&self) -> &RingView {
        &self.ring
    }

    /// Reads and validates the consumer's position.
    fn refresh_head(&mut self) -> Result<(), RingError> {
        let head = self.ring.control().head.load(Ordering::Acquire);
        // The consumer can neither go back nor pass what we produced.
        if head < self.head || head > self.tail {
            return Err(RingError::BadIndex {
                peer: head,
                own: self.tail,
                capacity: self.ring.capacity,
            });
        }
        self.head = head;
        Ok(())
    }

    /// Free bytes now.
    pub fn free(&mut self) -> Result<u64, RingError> {
        self.refresh_head()?;
        Ok(self.ring.capacity - (self.tail - self.head))
    }

    /// Appends one record whose payload is the concatenation of `parts`, and publishes it.
    pub fn push(&mut self, mut header: RecordHeader, parts: &[&[u8]]) -> Result<(), PushError> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        header.len = u32::try_from(len).map_err(|_| PushError::TooLarge(len))?;
        let need = record_footprint(len);
        if need > self.ring.capacity {
            return Err(PushError::TooLarge(len));
        }
        // Use the cached consumer position first: re-reading the shared `head` costs a
        // cross-core cache miss, needed only when the cached view says the ring is too full.
        if self.ring.capacity - (self.tail - self.head) < need && self.free()? < need {
            return Err(PushError::Full);
        }
        let mut pos = self.tail;
        self.ring.write_at(pos, &header.encode());
        pos += RECORD_HEADER_LEN as u64;
        for p in parts {
            self.ring.write_at(pos, p);
            pos += p.len() as u64;
        }
        self.tail += need;
        self.ring.control().tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Finds room for one record of up to `len` payload bytes at the tail without writing or
    /// publishing anything, and returns where its payload goes (`len` contiguous writable
    /// bytes), for the caller to fill and then publish with [`Producer::commit_reserved`].
    /// The room stays free until then: only this end moves the tail, and the consumer never
    /// passes it. `Ok(None)` if the payload would wrap in a view that is not mirrored.
    pub fn reserve(&mut self, len: u64) -> Result<Option<*mut u8>, PushError> {
        let need = record_footprint(len);
        if need > self.ring.capacity || u32::try_from(len).is_err() {
            return Err(PushError::TooLarge(len));
        }
        if self.ring.capacity - (self.tail - self.head) < need && self.free()? < need {
            return Err(PushError::Full);
        }
        Ok(self
            .ring
            .contiguous(self.tail + RECORD_HEADER_LEN as u64, len))
    }

    /// Publishes the record reserved with [`Producer::reserve`] (whose payload the caller wrote
    /// in place): writes `header` (its `len` no more than the reserved length) and moves the
    /// tail by the footprint of `header.len` only, giving back the rest.
    pub fn commit_reserved(&mut self, header: RecordHeader) {
        self.ring.write_at(self.tail, &header.encode());
        self.tail += record_footprint(u64::from(header.len));
        self.ring.control().tail.store(self.tail, Ordering::Release);
    }

    /// After publishing: whether the consumer asked to be woken (and clears its request). The
    /// SeqCst fence pairs with the consumer's in [`Consumer::prepare_wait`] (docs/CHANNEL.md §4).
    pub fn consumer_needs_wakeup(&self) -> bool {
        fence(Ordering::SeqCst);
        let flag = &self.ring.control().data_waiting;
        // Load before swapping: the common case (consumer busy) then only reads the line.
        flag.load(Ordering::SeqCst) != 0 && flag.swap(0, Ordering::SeqCst) != 0
    }

    /// Announces that this producer is about to sleep until space frees up; returns the free
    /// space re-checked after the announcement (sleep only if it is still too small).
    pub fn prepare_wait(&mut self) -> Result<u64, RingError> {
        self.ring.control().space_waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.free()
    }

    /// Withdraws a wait announcement (e.g. after finding enough space).
    pub fn cancel_wait(&self) {
        self.ring.control().space_waiting.store(0, Ordering::SeqCst);
    }

    /// Our position.
    pub fn position(&self) -> u64 {
        self.tail
    }
}

/// A record read from the ring: its header and where its payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked {
    /// The record's validated header.
    pub header: RecordHeader,
    payload_pos: u64,
}

/// The consuming end of a ring.
pub struct Consumer {
    ring: RingView,
    /// Our position. The shared `head` is a copy of it, or of `held` while a record is held.
    head: u64,
    /// Start of the record handed out by [`Consumer::consume_held`] and not yet released: the
    /// published position stops there so the producer cannot reuse its bytes.
    held: Option<u64>,
    /// Last producer position seen (validated).
    tail: u64,
    /// Largest payload accepted in one record.
    max_payload: u32,
}

impl Consumer {
    /// Takes the consuming end, starting at position `start` (a fresh ring: 0); records whose
    /// payload exceeds `max_payload` bytes are rejected as [`RingError::BadRecord`].
    pub fn new(ring: RingView, start: u64, max_payload: u32) -> Self {
        Consumer {
            ring,
            head: start,
            held: None,
            tail: start,
            max_payload,
        }
    }

    /// The ring this end works on.
    pub fn ring(&self) -> &RingView {
        &self.ring
    }

    /// Reads and validates the producer's position.
    fn refresh_tail(&mut self) -> Result<(), RingError> {
        let tail = self.ring.control().tail.load(Ordering::Acquire);
        // The producer may be `capacity` bytes ahead of what we published, not of `head`.
        let published = self.published();
        if tail < self.tail || tail - published > self.ring.capacity {
            return Err(RingError::BadIndex {
                peer: tail,
                own: published,
                capacity: self.ring.capacity,
            });
        }
        self.tail = tail;
        Ok(())
    }

    /// Whether a record is waiting (refreshes the producer position).
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        self.refresh_tail()?;
        Ok(self.tail > self.head)
    }

    /// The next record, if one is complete, with its header validated against the bytes available.
    pub fn peek(&mut self) -> Result<Option<Peeked>, RingError> {
        if self.tail == self.head {
            self.refresh_tail()?;
        }
        let avail = self.tail - self.head;
        if avail == 0 {
            return Ok(None);
        }
        if avail < RECORD_HEADER_LEN as u64 {
            return Err(RingError::BadRecord(
                "published bytes end inside a record header",
            ));
        }
        let mut raw = [0u8; RECORD_HEADER_LEN];
        self.ring.read_at(self.head, &mut raw);
        let header = RecordHeader::decode(&raw).map_err(RingError::BadRecord)?;
        if header.len > self.max_payload {
            return Err(RingError::BadRecord(
                "payload longer than the channel allows",
            ));
        }
        if record_footprint(u64::from(header.len)) > avail {
            return Err(RingError::BadRecord("published bytes end inside a record"));
        }
        Ok(Some(Peeked {
            header,
            payload_pos: self.head + RECORD_HEADER_LEN as u64,
        }))
    }

    /// Copies the payload of `rec` (from [`Consumer::peek`]) into `dst`, which must be exactly
    /// `rec.header.len` bytes long.
    pub fn read_payload(&self, rec: &Peeked, dst: &mut [u8]) {
        assert_eq!(dst.len(), rec.header.len as usize);
        self.ring.read_at(rec.payload_pos, dst);
    }

    /// Copies the payload of `rec` into a new vector (one copy, no zero-fill first).
    pub fn payload_to_vec(&self, rec: &Peeked) -> Vec<u8> {
        let len = rec.header.len as usize;
        let mut v = Vec::with_capacity(len);
        let spare = v.spare_capacity_mut();
        let off = (rec.payload_pos % self.ring.capacity) as usize;
        let first = len.min(self.ring.capacity as usize - off);
        // SAFETY: `spare` has room for `len` bytes; the ring reads stay inside its data area as in
        // `read_at` (a record is never longer than the capacity); every one of the `len` bytes
        // is written before `set_len`.
        unsafe {
            let dst = spare.as_mut_ptr().cast::<u8>();
            ptr::copy_nonoverlapping(self.ring.data.add(off), dst, first);
            ptr::copy_nonoverlapping(self.ring.data, dst.add(first), len - first);
            v.set_len(len);
        }
        v
    }

    /// Releases `rec` (the record most recently peeked) and publishes the new position (or,
    /// while a record is held, keeps the published position at the held record).
    pub fn consume(&mut self, rec: &Peeked) {
        debug_assert_eq!(rec.payload_pos, self.head + RECORD_HEADER_LEN as u64);
        self.head += record_footprint(u64::from(rec.header.len));
        self.ring
            .control()
            .head
            .store(self.published(), Ordering::Release);
    }

    /// Where the payload of `rec` starts if it is contiguous in this view (a mirrored view:
    /// always; otherwise unless it wraps). The bytes stay valid until `rec` is consumed, or
    /// released after [`Consumer::consume_held`].
    pub fn payload_ptr(&self, rec: &Peeked) -> Option<*const u8> {
        self.ring
            .contiguous(rec.payload_pos, u64::from(rec.header.len))
            .map(|p| p.cast_const())
    }

    /// Moves past `rec` (the record most recently peeked) like [`Consumer::consume`], but keeps
    /// its bytes: the published position stays at its start until [`Consumer::release_held`].
    /// Later records may be consumed meanwhile. At most one record is held; `false` (and
    /// nothing done) if one already is.
    pub fn consume_held(&mut self, rec: &Peeked) -> bool {
        if self.held.is_some() {
            return false;
        }
        debug_assert_eq!(rec.payload_pos, self.head + RECORD_HEADER_LEN as u64);
        self.held = Some(self.head);
        self.head += record_footprint(u64::from(rec.header.len));
        true
    }

    /// Gives the held record's bytes back to the producer (publishes the position).
    pub fn release_held(&mut self) {
        self.held = None;
        self.ring.control().head.store(self.head, Ordering::Release);
    }

    /// Whether a record is held ([`Consumer::consume_held`]).
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// The position published to the producer.
    fn published(&self) -> u64 {
        self.held.unwrap_or(self.head)
    }

    /// After consuming: whether the producer asked to be woken when space frees up.
    pub fn producer_needs_wakeup(&self) -> bool {
        fence(Ordering::SeqCst);
        let flag = &self.ring.control().space_waiting;
        flag.load(Ordering::SeqCst) != 0 && flag.swap(0, Ordering::SeqCst) != 0
    }

    /// Announces that this consumer is about to sleep until data arrives; returns whether data
    /// is present after the announcement (sleep only if not).
    pub fn prepare_wait(&mut self) -> Result<bool, RingError> {
        self.ring.control().data_waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.has_data()
    }

    /// Withdraws a wait announcement (e.g. after waking).
    pub fn cancel_wait(&self) {
        self.ring.control().data_waiting.store(0, Ordering::SeqCst);
    }

    /// Our position.
    pub fn position(&self) -> u64 {
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::RecordKind;
    use super::*;

    struct Mem {
        ctrl: Box<RingControl>,
        data: Vec<u8>,
    }

    fn mem(capacity: usize) -> Mem {
        // SAFETY: RingControl is plain atomics and padding; all-zero is a valid state.
        let ctrl: Box<RingControl> = Box::new(unsafe { std::mem::zeroed() });
        Mem {
            ctrl,
            data: vec![0u8; capacity],
        }
    }

    fn view(m: &mut Mem) -> RingView {
        let cap = m.data.len() as u64;
        // SAFETY: the memory outlives the views in each test.
        unsafe { RingView::new(&*m.ctrl, m.data.as_mut_ptr(), cap) }
    }

    fn header(kind: RecordKind, flow: u32) -> RecordHeader {
        RecordHeader {
            len: 0,
            kind,
            flags: 0,
            flow,
            aux: 0,
        }
    }

    #[test]
    fn records_round_trip_across_the_wrap() {
        let mut m = mem(64);
        let v = view(&mut m);
        let mut p = Producer::new(v, 0);
        let mut c = Consumer::new(v, 0, 1 << 20);
        for i in 0..50u32 {
            let payload: Vec<u8> = (0..(i % 29) as u8).collect();
            p.push(
                header(RecordKind::Send, i),
                &[
                    &payload[..3.min(payload.len())],
                    &payload[3.min(payload.len())..],
                ],
            )
            .unwrap();
            let rec = c.peek().unwrap().unwrap();
            assert_eq!(rec.header.flow, i);
            let mut got = vec![0u8; rec.header.len as usize];
            c.read_payload(&rec, &mut got);
            assert_eq!(got, payload);
            c.consume(&rec);
            assert!(c.peek().unwrap().is_none());
        }
    }

    #[test]
    fn full_and_too_large_are_distinguished() {
        let mut m = mem(64);
        let v = view(&mut m);
        let mut p = Producer::new(v, 0);
        assert_eq!(
            p.push(header(RecordKind::Send, 1), &[&[0u8; 49]]),
            Err(PushError::TooLarge(49))
        );
        p.push(header(RecordKind::Send, 1), &[&[0u8; 30]]).unwrap();
        assert_eq!(
            p.push(header(RecordKind::Send, 1), &[&[0u8; 1]]),
            Err(PushError::Full)
        );
    }

    #[test]
    fn scribbled_indices_and_headers_are_errors_not_accesses() {
        let mut m = mem(64);
        let v = view(&mut m);
        let mut c = Consumer::new(v, 0, 1 << 20);
        v.control().tail.store(1000, Ordering::SeqCst);
        assert!(matches!(c.peek(), Err(RingError::BadIndex { .. })));

        let mut m = mem(64);
        let v = view(&mut m);
        let mut c = Consumer::new(v, 0, 1 << 20);
        let mut p = Producer::new(v, 0);
        p.push(header(RecordKind::Send, 1), &[&[7u8; 8]]).unwrap();
        // The peer rewrites the header's length beyond what it published.
        m.data[0..4].copy_from_slice(&40u32.to_le_bytes());
        assert!(matches!(c.peek(), Err(RingError::BadRecord(_))));
        m.data[0..4].copy_from_slice(&8u32.to_le_bytes());
        m.data[4] = 200; // unknown kind
        assert!(matches!(c.peek(), Err(RingError::BadRecord(_))));

        let mut m = mem(64);
        let v = view(&mut m);
        let mut p = Producer::new(v, 0);
        v.control().head.store(5, Ordering::SeqCst);
        assert!(matches!(p.free(), Err(RingError::BadIndex { .. })));
    }

    #[test]
    fn wakeup_handshake_is_not_lost() {
        let mut m = mem(64);
        let v = view(&mut m);
        let mut p = Producer::new(v, 0);
        let mut c = Consumer::new(v, 0, 1 << 20);
        // Consumer announces, finds nothing: it may sleep; the producer must then wake it.
        assert!(!c.prepare_wait().unwrap());
        p.push(header(RecordKind::Send, 1), &[]).unwrap();
        assert!(p.consumer_needs_wakeup());
        assert!(!p.consumer_needs_wakeup(), "one wake-up per announcement");
        // Producer publishes first: the consumer's re-check sees the data and does not sleep.
        let rec = c.peek().unwrap().unwrap();
        c.consume(&rec);
        p.push(header(RecordKind::Send, 2), &[]).unwrap();
        assert!(c.prepare_wait().unwrap());
    }
}
