//! # machnet-channel
//!
//! The shared-memory channel between one application thread and one sidecar engine
//! (docs/CHANNEL.md), and the JSON control protocol ([`control`]). Defined once here; the
//! sidecar and the client library both use it, and neither side's engine or I/O lives here, so
//! a client does not pull in the transport (`machnet-core`).
//!
//! A channel is one memory region (a sealed memfd in practice): a header page, then the data of
//! two rings — requests app → sidecar and notifications sidecar → app — each large enough for
//! the largest message. Nothing here performs a syscall: mapping, eventfds and sockets belong to
//! the two ends.
//!
//! [`app`] is the application half of the channel protocol as a sans-IO state machine (the
//! client library wraps it with mapping, waiting and liveness checks).

pub mod app;
pub mod control;
pub mod engine;
#[cfg(any(test, feature = "mirror"))]
pub mod mirror;
pub mod record;
pub mod ring;

use std::sync::atomic::AtomicU32;

pub use record::{ConnectRequest, FlowInfo, RecordHeader, RecordKind, RECORD_HEADER_LEN};
pub use ring::{Consumer, Peeked, Producer, PushError, RingControl, RingError, RingView};

/// `"MACHNETC"`, little-endian, at offset 0 of every channel.
pub const CHANNEL_MAGIC: u64 = u64::from_le_bytes(*b"MACHNETC");
/// Layout version; the client refuses other versions.
pub const CHANNEL_VERSION: u32 = 1;
/// Bytes reserved for the header (one page).
pub const HEADER_PAGE: u64 = 4096;

/// The header page. The sidecar writes the layout fields once, before handing the channel out,
/// and never reads them back (an app may scribble over them; the sidecar keeps its own copy).
#[repr(C)]
pub struct ChannelHeader {
    /// [`CHANNEL_MAGIC`].
    pub magic: u64,
    /// [`CHANNEL_VERSION`].
    pub version: u32,
    /// Largest message payload, in bytes, either ring carries.
    pub max_message_len: u32,
    /// Size of the whole channel memory in bytes (header page and both rings).
    pub total_len: u64,
    /// Byte offset, from the start of the channel, of the request ring's data.
    pub to_sidecar_offset: u64,
    /// Size in bytes of the request ring's data (a multiple of [`HEADER_PAGE`]).
    pub to_sidecar_capacity: u64,
    /// Byte offset, from the start of the channel, of the notification ring's data.
    pub to_app_offset: u64,
    /// Size in bytes of the notification ring's data (a multiple of [`HEADER_PAGE`]).
    pub to_app_capacity: u64,
    /// Non-zero once the sidecar closed the channel; the value is a [`CloseCode`].
    pub closed: AtomicU32,
    _pad: [u8; 4],
    /// Indices and wake-up flags of the request ring (app → sidecar).
    pub to_sidecar: RingControl,
    /// Indices and wake-up flags of the notification ring (sidecar → app).
    pub to_app: RingControl,
}

const _: () = assert!(std::mem::size_of::<ChannelHeader>() as u64 <= HEADER_PAGE);

/// Why a flow or request ended, as carried in records' `flags` byte and the header's `closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseCode {
    /// Both sides closed and every message was acknowledged.
    Graceful = 1,
    /// Nobody listens on the remote port.
    Refused = 2,
    /// The remote host aborted the flow.
    Reset = 3,
    /// The remote host stopped answering (connect or retransmissions gave up, or idle timeout).
    TimedOut = 4,
    /// The remote host sent packets that break the Machnet protocol; the flow was reset.
    ProtocolViolation = 5,
    /// This side aborted the flow (an `Abort` request, or the channel was aborted).
    Aborted = 6,
    /// The message is longer than this sidecar's or the remote host's maximum message size.
    MessageTooLarge = 7,
    /// Encryption (PROTOCOL.md §12): the remote host is not in this sidecar's allow-list of peer
    /// keys, or did not prove the key the allow-list gives for it.
    PeerNotAllowed = 8,
    /// The request named a flow this channel does not own (or that is gone).
    UnknownFlow = 16,
    /// The request was malformed (bad payload, bad address, empty message...).
    InvalidRequest = 17,
    /// The sidecar has no free resources for the request (e.g. ephemeral ports).
    Exhausted = 18,
    /// `ConnectFailed` only: the channel has its maximum of connects in progress (sidecar
    /// option `--max-connecting-per-channel`; see [`ConnectBudget`]).
    ChannelConnectLimit = 19,
    /// `ConnectFailed` only: the application has its maximum of connects in progress on all its
    /// channels (sidecar option `--max-connecting-per-app`).
    AppConnectLimit = 20,
    /// `ConnectFailed` only: the application starts connects faster than the sidecar allows
    /// (sidecar options `--max-connect-rate-per-app`, `--connect-burst-per-app`).
    ConnectRateLimit = 21,
    /// The sidecar closed the channel because the app broke the channel protocol.
    ChannelViolation = 32,
    /// The sidecar is shutting down.
    Shutdown = 33,
    /// The app detached the channel.
    Detached = 34,
}

impl CloseCode {
    /// A human-readable description, for error messages.
    pub fn description(self) -> &'static str {
        match self {
            CloseCode::Graceful => "closed gracefully",
            CloseCode::Refused => "connection refused by the remote host",
            CloseCode::Reset => "reset by the remote host",
            CloseCode::TimedOut => "timed out (the remote host stopped answering)",
            CloseCode::ProtocolViolation => "the remote host broke the Machnet protocol",
            CloseCode::Aborted => "aborted",
            CloseCode::MessageTooLarge => "message too large",
            CloseCode::PeerNotAllowed => {
                "encryption: the remote host is not in the allow-list of peer keys, or did not \
                 prove its key"
            }
            CloseCode::UnknownFlow => "the sidecar does not know this flow on this channel",
            CloseCode::InvalidRequest => "the sidecar rejected the request as malformed",
            CloseCode::Exhausted => "the sidecar ran out of resources (e.g. ephemeral ports)",
            CloseCode::ChannelConnectLimit => ConnectBudget::ChannelInProgress.description(),
            CloseCode::AppConnectLimit => ConnectBudget::AppInProgress.description(),
            CloseCode::ConnectRateLimit => ConnectBudget::AppStartRate.description(),
            CloseCode::ChannelViolation => {
                "the sidecar closed the channel because the application broke the channel protocol"
            }
            CloseCode::Shutdown => "the sidecar is shutting down",
            CloseCode::Detached => "the channel was detached",
        }
    }

    /// The code with wire value `v`, or `None` for a value no code has.
    pub fn from_u8(v: u8) -> Option<Self> {
        use CloseCode::*;
        Some(match v {
            1 => Graceful,
            2 => Refused,
            3 => Reset,
            4 => TimedOut,
            5 => ProtocolViolation,
            6 => Aborted,
            7 => MessageTooLarge,
            8 => PeerNotAllowed,
            16 => UnknownFlow,
            17 => InvalidRequest,
            18 => Exhausted,
            19 => ChannelConnectLimit,
            20 => AppConnectLimit,
            21 => ConnectRateLimit,
            32 => ChannelViolation,
            33 => Shutdown,
            34 => Detached,
            _ => return None,
        })
    }
}

/// A budget on the connects an application makes its sidecar start (docs/CHANNEL.md §2,
/// "Connect budgets"): a connect beyond one fails at once with the budget's [`CloseCode`],
/// before any packet is sent. The budgets bound the SYNs a local application can make the
/// sidecar send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectBudget {
    /// Connects in progress (started, not yet connected or failed) on one channel.
    ChannelInProgress,
    /// Connects in progress on all the channels of one application (process).
    AppInProgress,
    /// Connects one application may start per second (a token bucket with a burst).
    AppStartRate,
}

impl ConnectBudget {
    /// Every budget.
    pub const ALL: [ConnectBudget; 3] = [
        ConnectBudget::ChannelInProgress,
        ConnectBudget::AppInProgress,
        ConnectBudget::AppStartRate,
    ];

    /// The code of a connect this budget refused.
    pub const fn close_code(self) -> CloseCode {
        match self {
            ConnectBudget::ChannelInProgress => CloseCode::ChannelConnectLimit,
            ConnectBudget::AppInProgress => CloseCode::AppConnectLimit,
            ConnectBudget::AppStartRate => CloseCode::ConnectRateLimit,
        }
    }

    /// The budget that refused a connect with `code`, if a budget did.
    pub const fn of_close_code(code: CloseCode) -> Option<ConnectBudget> {
        match code {
            CloseCode::ChannelConnectLimit => Some(ConnectBudget::ChannelInProgress),
            CloseCode::AppConnectLimit => Some(ConnectBudget::AppInProgress),
            CloseCode::ConnectRateLimit => Some(ConnectBudget::AppStartRate),
            _ => None,
        }
    }

    /// The sidecar option that sets the budget.
    pub const fn option(self) -> &'static str {
        match self {
            ConnectBudget::ChannelInProgress => "--max-connecting-per-channel",
            ConnectBudget::AppInProgress => "--max-connecting-per-app",
            ConnectBudget::AppStartRate => "--max-connect-rate-per-app",
        }
    }

    /// What a refusal means, naming the limit and the sidecar option that sets it.
    pub const fn description(self) -> &'static str {
        match self {
            ConnectBudget::ChannelInProgress => {
                "the channel has its maximum of connects in progress (sidecar option \
                 --max-connecting-per-channel); retry once one has connected or failed"
            }
            ConnectBudget::AppInProgress => {
                "the application has its maximum of connects in progress on all its channels \
                 (sidecar option --max-connecting-per-app); retry once one has connected or failed"
            }
            ConnectBudget::AppStartRate => {
                "the application starts connects faster than the sidecar allows (sidecar options \
                 --max-connect-rate-per-app and --connect-burst-per-app); retry later"
            }
        }
    }
}

impl std::fmt::Display for ConnectBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

/// The geometry of a channel: where the rings are and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Size of the whole channel memory in bytes.
    pub total_len: u64,
    /// Byte offset of the request ring's data (page-aligned, after the header page).
    pub to_sidecar_offset: u64,
    /// Size in bytes of the request ring's data (a multiple of [`HEADER_PAGE`]).
    pub to_sidecar_capacity: u64,
    /// Byte offset of the notification ring's data (page-aligned, after the header page).
    pub to_app_offset: u64,
    /// Size in bytes of the notification ring's data (a multiple of [`HEADER_PAGE`]).
    pub to_app_capacity: u64,
    /// Largest message payload in bytes; each ring holds at least one record this large.
    pub max_message_len: u32,
}

/// A layout is impossible or a header does not describe a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The mapping (this many bytes) is smaller than the header page.
    #[error("channel memory is {0} bytes, smaller than its header")]
    TooSmall(u64),
    /// The header does not start with [`CHANNEL_MAGIC`].
    #[error("not a Machnet channel (bad magic)")]
    BadMagic,
    /// The header carries this version instead of [`CHANNEL_VERSION`].
    #[error("channel layout version {0} is not supported (expected {CHANNEL_VERSION})")]
    BadVersion(u32),
    /// The geometry is inconsistent (rings outside the region, misaligned, overlapping or too
    /// small for one message, or a zero message size); the text says which.
    #[error("invalid channel layout: {0}")]
    Invalid(&'static str),
}

fn page_round(n: u64) -> u64 {
    n.div_ceil(HEADER_PAGE) * HEADER_PAGE
}

impl ChannelLayout {
    /// A layout whose rings each hold at least one message of `max_message_len` bytes plus
    /// `slack` bytes for further records.
    pub fn for_messages(max_message_len: u32, slack: u64) -> Result<Self, LayoutError> {
        let ring = page_round(ring::record_footprint(u64::from(max_message_len)) + slack.max(4096));
        Self::new(ring, ring, max_message_len)
    }

    /// A layout with the given ring capacities (multiples of the page size).
    pub fn new(
        to_sidecar_capacity: u64,
        to_app_capacity: u64,
        max_message_len: u32,
    ) -> Result<Self, LayoutError> {
        let layout = ChannelLayout {
            to_sidecar_offset: HEADER_PAGE,
            to_sidecar_capacity,
            to_app_offset: HEADER_PAGE + to_sidecar_capacity,
            to_app_capacity,
            total_len: HEADER_PAGE + to_sidecar_capacity + to_app_capacity,
            max_message_len,
        };
        layout.validate()?;
        Ok(layout)
    }

    fn validate(&self) -> Result<(), LayoutError> {
        let need = ring::record_footprint(u64::from(self.max_message_len));
        let ok_ring = |off: u64, cap: u64| {
            cap.is_multiple_of(HEADER_PAGE)
                && cap >= need
                && off >= HEADER_PAGE
                && off.is_multiple_of(HEADER_PAGE)
                && off
                    .checked_add(cap)
                    .is_some_and(|end| end <= self.total_len)
        };
        if self.max_message_len == 0 {
            return Err(LayoutError::Invalid("max_message_len is zero"));
        }
        if !ok_ring(self.to_sidecar_offset, self.to_sidecar_capacity)
            || !ok_ring(self.to_app_offset, self.to_app_capacity)
        {
            return Err(LayoutError::Invalid(
                "ring outside the region, misaligned or too small for one message",
            ));
        }
        let (a, b) = (
            self.to_sidecar_offset..self.to_sidecar_offset + self.to_sidecar_capacity,
            self.to_app_offset..self.to_app_offset + self.to_app_capacity,
        );
        if a.start < b.end && b.start < a.end {
            return Err(LayoutError::Invalid("rings overlap"));
        }
        Ok(())
    }

    /// Writes a fresh header for this layout (sidecar side, before handing the channel out).
    ///
    /// # Safety
    /// `mem` must point to `self.total_len` writable, zero-filled bytes aligned to 64.
    pub unsafe fn init(&self, mem: *mut u8) {
        let h = mem as *mut ChannelHeader;
        // Fields are written through raw pointers: the memory is zero-filled, which is a valid
        // state for the atomics.
        std::ptr::addr_of_mut!((*h).magic).write(CHANNEL_MAGIC);
        std::ptr::addr_of_mut!((*h).version).write(CHANNEL_VERSION);
        std::ptr::addr_of_mut!((*h).max_message_len).write(self.max_message_len);
        std::ptr::addr_of_mut!((*h).total_len).write(self.total_len);
        std::ptr::addr_of_mut!((*h).to_sidecar_offset).write(self.to_sidecar_offset);
        std::ptr::addr_of_mut!((*h).to_sidecar_capacity).write(self.to_sidecar_capacity);
        std::ptr::addr_of_mut!((*h).to_app_offset).write(self.to_app_offset);
        std::ptr::addr_of_mut!((*h).to_app_capacity).write(self.to_app_capacity);
    }

    /// Reads and validates the header of a mapped channel of `len` bytes (app side).
    ///
    /// # Safety
    /// `mem` must point to `len` readable bytes aligned to 64.
    pub unsafe fn read(mem: *const u8, len: u64) -> Result<Self, LayoutError> {
        if len < HEADER_PAGE {
            return Err(LayoutError::TooSmall(len));
        }
        let h = &*(mem as *const ChannelHeader);
        if h.magic != CHANNEL_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if h.version != CHANNEL_VERSION {
            return Err(LayoutError::BadVersion(h.version));
        }
        let layout = ChannelLayout {
            total_len: h.total_len,
            to_sidecar_offset: h.to_sidecar_offset,
            to_sidecar_capacity: h.to_sidecar_capacity,
            to_app_offset: h.to_app_offset,
            to_app_capacity: h.to_app_capacity,
            max_message_len: h.max_message_len,
        };
        if layout.total_len != len {
            return Err(LayoutError::Invalid(
                "header length differs from the mapping",
            ));
        }
        layout.validate()?;
        Ok(layout)
    }

    /// The two rings and the header of a channel mapped at `mem`.
    ///
    /// # Safety
    /// `mem` must point to a mapping of `self.total_len` bytes, aligned to 64, that outlives every
    /// use of the returned views.
    pub unsafe fn views(&self, mem: *mut u8) -> ChannelViews {
        let h = mem as *const ChannelHeader;
        ChannelViews {
            header: h,
            to_sidecar: RingView::new(
                std::ptr::addr_of!((*h).to_sidecar),
                mem.add(self.to_sidecar_offset as usize),
                self.to_sidecar_capacity,
            ),
            to_app: RingView::new(
                std::ptr::addr_of!((*h).to_app),
                mem.add(self.to_app_offset as usize),
                self.to_app_capacity,
            ),
        }
    }
}

/// Raw views into a mapped channel.
#[derive(Clone, Copy)]
pub struct ChannelViews {
    pub(crate) header: *const ChannelHeader,
    /// The request ring (app → sidecar).
    pub to_sidecar: RingView,
    /// The notification ring (sidecar → app).
    pub to_app: RingView,
}

// SAFETY: see `RingView`; the header is only accessed through its atomic `closed` field.
unsafe impl Send for ChannelViews {}

impl ChannelViews {
    /// The header's `closed` word.
    pub fn closed(&self) -> &AtomicU32 {
        // SAFETY: `views`' contract keeps the header mapped.
        unsafe { &(*self.header).closed }
    }

    /// Whether both rings are mirrored (every record contiguous: `mirror::MirroredMap`).
    pub fn is_mirrored(&self) -> bool {
        self.to_sidecar.is_mirrored() && self.to_app.is_mirrored()
    }

    /// The same memory seen as plain rings (what the sidecar's view would be).
    pub fn unmirrored(self) -> Self {
        ChannelViews {
            to_sidecar: self.to_sidecar.unmirrored(),
            to_app: self.to_app.unmirrored(),
            ..self
        }
    }
}

/// Channel memory for the crate's tests: what the mapping is in production.
#[cfg(test)]
pub(crate) mod test_memory {
    use super::HEADER_PAGE;

    use super::{ChannelLayout, ChannelViews};
    use crate::mirror::MirroredMap;

    /// Page-aligned zeroed memory (a mapping is page-aligned too), freed on drop; or a memfd
    /// mapped with mirrored rings as the client maps it ([`Region::mirrored`]).
    pub(crate) enum Region {
        Heap {
            ptr: *mut u8,
            layout: std::alloc::Layout,
        },
        Mirrored(MirroredMap),
    }

    impl Region {
        /// `len` zeroed bytes, aligned to a page.
        pub(crate) fn zeroed(len: u64) -> Region {
            let layout =
                std::alloc::Layout::from_size_align(len as usize, HEADER_PAGE as usize).unwrap();
            // SAFETY: non-zero size (every channel layout has a header page).
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Region::Heap { ptr, layout }
        }

        /// A fresh channel of `layout` in a memfd, header written, mapped with mirrored rings
        /// (the mapping code the client uses); [`Region::views`] are mirrored.
        pub(crate) fn mirrored(layout: &ChannelLayout) -> Region {
            use nix::sys::memfd::{memfd_create, MFdFlags};
            use std::os::fd::AsFd;
            let fd = memfd_create(c"machnet-test", MFdFlags::MFD_CLOEXEC).unwrap();
            nix::unistd::ftruncate(&fd, layout.total_len as i64).unwrap();
            let map = MirroredMap::map_layout(fd.as_fd(), layout).unwrap();
            // SAFETY: the header page is mapped writable, zero-filled, page-aligned.
            unsafe { layout.init(map.header_ptr()) };
            Region::Mirrored(map)
        }

        /// The start of the memory (heap regions only: a mirrored region's rings are not at
        /// the layout's offsets from it).
        pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
            match self {
                Region::Heap { ptr, .. } => *ptr,
                Region::Mirrored(_) => panic!("a mirrored region has no flat layout"),
            }
        }

        /// Views of a channel of `layout` in this region (header already written for
        /// mirrored regions; heap regions must have been `init`ed by the caller).
        pub(crate) fn views(&mut self, layout: &ChannelLayout) -> ChannelViews {
            match self {
                // SAFETY: the region holds `total_len` bytes and outlives the views (callers
                // keep it last).
                Region::Heap { ptr, .. } => unsafe { layout.views(*ptr) },
                Region::Mirrored(m) => m.views(),
            }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            if let Region::Heap { ptr, layout } = self {
                // SAFETY: allocated in `zeroed` with this layout.
                unsafe { std::alloc::dealloc(*ptr, *layout) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn region(len: u64) -> test_memory::Region {
        test_memory::Region::zeroed(len)
    }

    #[test]
    fn connect_budget_codes_round_trip_and_name_their_option() {
        for b in ConnectBudget::ALL {
            let code = b.close_code();
            assert_eq!(CloseCode::from_u8(code as u8), Some(code));
            assert_eq!(ConnectBudget::of_close_code(code), Some(b));
            assert!(code.description().contains(b.option()), "{b:?}");
            assert_eq!(b.to_string(), code.to_string());
        }
        let codes: std::collections::HashSet<u8> =
            ConnectBudget::ALL.map(|b| b.close_code() as u8).into();
        assert_eq!(codes.len(), 3);
        for v in 0..=u8::MAX {
            if let Some(c) = CloseCode::from_u8(v) {
                assert_eq!(c as u8, v);
                assert_eq!(
                    ConnectBudget::of_close_code(c).is_some(),
                    codes.contains(&v)
                );
            }
        }
    }

    #[test]
    fn default_layout_fits_an_8_mib_message_each_way() {
        let l = ChannelLayout::for_messages(8 << 20, 1 << 20).unwrap();
        assert!(l.to_sidecar_capacity >= (8 << 20) + 16 && l.to_app_capacity >= (8 << 20) + 16);
        let mut mem = region(l.total_len);
        let p = mem.as_mut_ptr();
        unsafe {
            l.init(p);
            assert_eq!(ChannelLayout::read(p, l.total_len).unwrap(), l);
            let v = l.views(p);
            let mut prod = Producer::new(v.to_sidecar, 0);
            let mut cons = Consumer::new(v.to_sidecar, 0, l.max_message_len);
            let msg = vec![0xabu8; 8 << 20];
            prod.push(RecordHeader::new(RecordKind::Send, 1), &[&msg])
                .unwrap();
            let rec = cons.peek().unwrap().unwrap();
            let mut got = vec![0u8; rec.header.len as usize];
            cons.read_payload(&rec, &mut got);
            assert!(got == msg);
            assert_eq!(v.closed().load(Ordering::SeqCst), 0);
        }
    }

    #[test]
    fn scribbled_headers_are_rejected() {
        let l = ChannelLayout::new(8192, 8192, 1000).unwrap();
        let mut mem = region(l.total_len);
        let p = mem.as_mut_ptr();
        unsafe {
            l.init(p);
            let h = &mut *(p as *mut ChannelHeader);
            h.to_app_offset = 4096; // overlaps the other ring
            assert!(matches!(
                ChannelLayout::read(p, l.total_len),
                Err(LayoutError::Invalid(_))
            ));
            l.init(p);
            h.to_app_capacity = 1 << 40; // past the end
            assert!(matches!(
                ChannelLayout::read(p, l.total_len),
                Err(LayoutError::Invalid(_))
            ));
            l.init(p);
            h.version = 9;
            assert_eq!(
                ChannelLayout::read(p, l.total_len),
                Err(LayoutError::BadVersion(9))
            );
            h.magic = 0;
            assert_eq!(
                ChannelLayout::read(p, l.total_len),
                Err(LayoutError::BadMagic)
            );
        }
        assert!(
            ChannelLayout::new(4096, 4096, 8000).is_err(),
            "a ring must hold one message"
        );
    }
}
