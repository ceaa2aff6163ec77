//! Packet buffers: a pool of mbufs ([`Mempool`]) and an owned mbuf ([`Mbuf`]).

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use dpdk_sys as sys;

use super::flag;

use super::eal::{DpdkError, Eal, KEEP_MEMORY};

/// A pool of packet buffers (`rte_pktmbuf_pool_create`). Cheap to clone.
///
/// The pool is freed when the last clone (ports hold one) is dropped, unless mbufs taken from it
/// are still alive; it is then left in place (and EAL memory stays mapped), so an [`Mbuf`] never
/// dangles.
#[derive(Clone, Debug)]
pub struct Mempool {
    inner: Arc<MempoolInner>,
}

#[derive(Debug)]
struct MempoolInner {
    pool: NonNull<sys::rte_mempool>,
    name: String,
    _eal: Eal,
}

// SAFETY: a DPDK mempool is multi-producer/multi-consumer safe (the default ring ops); the
// per-lcore caches are only used by EAL threads, each touching its own.
unsafe impl Send for MempoolInner {}
// SAFETY: as above; every operation through a shared reference is thread-safe.
unsafe impl Sync for MempoolInner {}

impl Drop for MempoolInner {
    fn drop(&mut self) {
        // SAFETY: the pool is valid until freed below.
        let in_use = unsafe { sys::rte_mempool_in_use_count(self.pool.as_ptr()) };
        if in_use != 0 {
            tracing::warn!(
                "mempool {}: {in_use} mbufs still in use; leaving it allocated",
                self.name
            );
            KEEP_MEMORY.store(true, Ordering::Release);
            return;
        }
        // SAFETY: no mbuf of this pool is alive (in_use == 0) and no port refers to it (ports
        // hold a clone), so nothing uses it any more.
        unsafe { sys::rte_mempool_free(self.pool.as_ptr()) };
    }
}

/// Default data room of an mbuf: 2048 bytes plus headroom.
pub const DEFAULT_BUF_SIZE: u16 = sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;
/// Headroom reserved before the data of a fresh mbuf.
pub const HEADROOM: u16 = sys::RTE_PKTMBUF_HEADROOM as u16;

static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

impl Mempool {
    /// Creates a pool of `count` mbufs of `data_room` bytes each (including [`HEADROOM`]; use
    /// [`DEFAULT_BUF_SIZE`] for standard frames), with a per-lcore cache of `cache` mbufs.
    /// `name` must be unique in the process; `None` picks one.
    pub fn new(
        eal: &Eal,
        name: Option<&str>,
        count: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        Self::create(eal, name, count, cache, data_room, false)
    }

    /// Like [`Mempool::new`], but with the objects packed back to back in one virtually
    /// contiguous chunk (`RTE_MEMPOOL_F_NO_IOVA_CONTIG`: an object may straddle a page). This is
    /// what `net_af_xdp` needs: it registers the pool as its UMEM assuming exactly this layout
    /// (`objects * stride` bytes from the first object), while the default layout on 4 KiB
    /// pages (`--no-huge`) starts every object larger than 2 KiB on a new page, leaving ~40% of
    /// the mbufs outside the UMEM (the kernel drops frames sent from them and fill-queue
    /// entries pointing at them, and those mbufs are never returned). Only for ports that do
    /// not DMA by physical address (af_xdp, or IOVA-as-VA).
    pub fn new_packed(
        eal: &Eal,
        name: Option<&str>,
        count: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        let pool = Self::create(eal, name, count, cache, data_room, true)?;
        let layout = pool.layout();
        if !layout.is_packed() {
            return Err(DpdkError::InvalidArgument(format!(
                "mempool {}: objects not packed ({layout:?})",
                pool.name()
            )));
        }
        Ok(pool)
    }

    fn create(
        eal: &Eal,
        name: Option<&str>,
        count: u32,
        cache: u32,
        data_room: u16,
        packed: bool,
    ) -> Result<Mempool, DpdkError> {
        let name = name.map_or_else(
            || format!("machnet_mp{}", POOL_SEQ.fetch_add(1, Ordering::Relaxed)),
            str::to_owned,
        );
        let c = CString::new(name.clone())
            .map_err(|_| DpdkError::InvalidArgument(format!("pool name {name:?} contains NUL")))?;
        if data_room <= HEADROOM {
            return Err(DpdkError::InvalidArgument(format!(
                "data room {data_room} must exceed the headroom {HEADROOM}"
            )));
        }
        let pool = if packed {
            // SAFETY: EAL is initialised; c is NUL-terminated and copied by DPDK.
            unsafe { create_packed(&c, count, cache, data_room)? }
        } else {
            // SAFETY: EAL is initialised (we hold an Eal); c is NUL-terminated and copied by DPDK.
            let pool = unsafe {
                sys::rte_pktmbuf_pool_create(
                    c.as_ptr(),
                    count,
                    cache,
                    0,
                    data_room,
                    sys::SOCKET_ID_ANY,
                )
            };
            NonNull::new(pool).ok_or_else(|| DpdkError::errno("rte_pktmbuf_pool_create"))?
        };
        Ok(Mempool {
            inner: Arc::new(MempoolInner {
                pool,
                name,
                _eal: eal.clone(),
            }),
        })
    }

    /// The raw pool (valid while this handle lives).
    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.inner.pool.as_ptr()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Mbufs available (including those in per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid while self lives.
        unsafe { sys::rte_mempool_avail_count(self.as_ptr()) }
    }

    /// Mbufs currently taken from the pool.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is valid while self lives.
        unsafe { sys::rte_mempool_in_use_count(self.as_ptr()) }
    }

    /// Where the pool's objects lie in memory (see [`PoolLayout`]).
    pub fn layout(&self) -> PoolLayout {
        struct Acc {
            lo: usize,
            hi: usize,
        }
        unsafe extern "C" fn visit(
            _mp: *mut sys::rte_mempool,
            opaque: *mut std::ffi::c_void,
            obj: *mut std::ffi::c_void,
            _idx: std::ffi::c_uint,
        ) {
            // SAFETY: opaque is the &mut Acc passed below, used by this one call at a time.
            let acc = unsafe { &mut *opaque.cast::<Acc>() };
            acc.lo = acc.lo.min(obj as usize);
            acc.hi = acc.hi.max(obj as usize);
        }
        let mut acc = Acc {
            lo: usize::MAX,
            hi: 0,
        };
        // SAFETY: the pool is valid; the callback only updates `acc`.
        let objects = unsafe {
            sys::rte_mempool_obj_iter(self.as_ptr(), Some(visit), (&mut acc as *mut Acc).cast())
        };
        // SAFETY: the pool is valid; these fields are fixed after creation.
        let (stride, chunks) = unsafe {
            let mp = &*self.as_ptr();
            (
                (mp.header_size + mp.elt_size + mp.trailer_size) as usize,
                mp.nb_mem_chunks,
            )
        };
        PoolLayout {
            objects,
            stride,
            span: if objects == 0 {
                0
            } else {
                acc.hi - acc.lo + stride
            },
            chunks,
        }
    }

    /// Takes an empty mbuf (`None`: pool exhausted).
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is a valid pktmbuf pool.
        NonNull::new(unsafe { sys::rte_pktmbuf_alloc(self.as_ptr()) }).map(Mbuf)
    }

    /// An mbuf holding a copy of `data` (`None`: pool exhausted or `data` too long for one
    /// segment).
    pub fn alloc_from(&self, data: &[u8]) -> Option<Mbuf> {
        let mut m = self.alloc()?;
        m.append(data.len())?.copy_from_slice(data);
        Some(m)
    }
}

/// `struct rte_pktmbuf_pool_private` (DPDK 22.11), the private area of a pktmbuf pool.
#[repr(C)]
struct PktmbufPoolPrivate {
    mbuf_data_room_size: u16,
    mbuf_priv_size: u16,
    flags: u32,
}

/// `rte_pktmbuf_pool_create` with `RTE_MEMPOOL_F_NO_IOVA_CONTIG` (which it does not take).
///
/// # Safety
/// EAL must be initialised.
unsafe fn create_packed(
    name: &CString,
    count: u32,
    cache: u32,
    data_room: u16,
) -> Result<NonNull<sys::rte_mempool>, DpdkError> {
    let elt_size = std::mem::size_of::<sys::rte_mbuf>() as u32 + u32::from(data_room);
    // SAFETY: EAL is initialised (caller); name is NUL-terminated and copied.
    let mp = unsafe {
        sys::rte_mempool_create_empty(
            name.as_ptr(),
            count,
            elt_size,
            cache,
            std::mem::size_of::<PktmbufPoolPrivate>() as u32,
            sys::SOCKET_ID_ANY,
            sys::RTE_MEMPOOL_F_NO_IOVA_CONTIG,
        )
    };
    let mp = NonNull::new(mp).ok_or_else(|| DpdkError::errno("rte_mempool_create_empty"))?;
    let fail = |call: &'static str, ret: i32| {
        // SAFETY: mp is a valid pool that no one else knows of yet.
        unsafe { sys::rte_mempool_free(mp.as_ptr()) };
        Err(DpdkError::call(call, ret))
    };
    // SAFETY: mp is valid and empty; the ops name is NUL-terminated (the default ring ops, as
    // rte_pktmbuf_pool_create picks without a platform preference).
    let ret = unsafe {
        sys::rte_mempool_set_ops_byname(mp.as_ptr(), c"ring_mp_mc".as_ptr(), std::ptr::null_mut())
    };
    if ret != 0 {
        return fail("rte_mempool_set_ops_byname", ret);
    }
    let mut private = PktmbufPoolPrivate {
        mbuf_data_room_size: data_room,
        mbuf_priv_size: 0,
        flags: 0,
    };
    // SAFETY: mp is a valid empty pool with room for the private struct; DPDK copies it.
    unsafe {
        sys::rte_pktmbuf_pool_init(
            mp.as_ptr(),
            (&mut private as *mut PktmbufPoolPrivate).cast(),
        )
    };
    // SAFETY: mp is valid, ops set.
    let ret = unsafe { sys::rte_mempool_populate_default(mp.as_ptr()) };
    if ret < 0 {
        return fail("rte_mempool_populate_default", ret);
    }
    // SAFETY: mp is populated; rte_pktmbuf_init initialises each object as an mbuf.
    unsafe {
        sys::rte_mempool_obj_iter(
            mp.as_ptr(),
            Some(sys::rte_pktmbuf_init),
            std::ptr::null_mut(),
        )
    };
    Ok(mp)
}

/// The memory layout of a [`Mempool`]'s objects. `net_af_xdp` registers a pool as its UMEM
/// assuming the objects are packed back to back from the first one: `objects * stride` bytes.
/// Objects beyond that (`span` larger) are outside the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLayout {
    /// Objects in the pool.
    pub objects: u32,
    /// Bytes per object (mempool header + mbuf + data room + trailer).
    pub stride: usize,
    /// Bytes from the start of the first object to the end of the last.
    pub span: usize,
    /// Memory chunks the pool was populated from.
    pub chunks: u32,
}

impl PoolLayout {
    /// Whether the objects are packed back to back (`span == objects * stride`).
    pub fn is_packed(&self) -> bool {
        self.span == self.objects as usize * self.stride
    }
}

/// One packet buffer (a single-segment or chained `rte_mbuf`), freed back to its pool on drop.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an mbuf is owned by exactly one Mbuf; freeing it from any thread is allowed (pools are
// thread-safe).
unsafe impl Send for Mbuf {}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it goes back to its pool (chains included).
        unsafe { sys::rte_pktmbuf_free(self.0.as_ptr()) };
    }
}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `m` must be a valid mbuf owned by the caller (not used elsewhere afterwards), from a pool
    /// that outlives it (pools of [`Mempool`] do).
    pub unsafe fn from_raw(m: NonNull<sys::rte_mbuf>) -> Mbuf {
        Mbuf(m)
    }

    /// Gives up ownership without freeing.
    pub fn into_raw(self) -> NonNull<sys::rte_mbuf> {
        let p = self.0;
        std::mem::forget(self);
        p
    }

    /// The raw mbuf (valid while self lives).
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.0.as_ptr()
    }

    /// Bytes in the first segment.
    pub fn len(&self) -> usize {
        // SAFETY: valid owned mbuf.
        usize::from(unsafe { sys::rte_sys_pktmbuf_data_len(self.as_ptr()) })
    }

    /// Whether the first segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the whole chain.
    pub fn pkt_len(&self) -> usize {
        // SAFETY: valid owned mbuf.
        unsafe { sys::rte_sys_pktmbuf_pkt_len(self.as_ptr()) as usize }
    }

    /// Number of segments.
    pub fn segments(&self) -> u16 {
        // SAFETY: valid owned mbuf.
        unsafe { sys::rte_sys_pktmbuf_nb_segs(self.as_ptr()) }
    }

    /// The data of the first segment.
    pub fn data(&self) -> &[u8] {
        let len = self.len();
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf's buffer, which we own
        // for as long as the borrow of self.
        unsafe { std::slice::from_raw_parts(sys::rte_sys_pktmbuf_mtod(self.as_ptr()), len) }
    }

    /// The data of the first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in `data`, and &mut self gives exclusive access (we own the mbuf; refcnt 1
        // for mbufs we allocated or received).
        unsafe { std::slice::from_raw_parts_mut(sys::rte_sys_pktmbuf_mtod(self.as_ptr()), len) }
    }

    /// Extends the data by `len` bytes at the end and returns them (zeroed); `None` if the
    /// tailroom is too small.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let n = u16::try_from(len).ok()?;
        // SAFETY: valid owned mbuf; rte_pktmbuf_append checks the tailroom.
        let p = unsafe { sys::rte_pktmbuf_append(self.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p points at len bytes inside the buffer, now part of the data, owned by us.
        let s = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        s.fill(0);
        Some(s)
    }

    /// Like [`Mbuf::append`], without zeroing: the bytes hold whatever the buffer held before
    /// (for a caller about to overwrite all of them, e.g. a frame built in place).
    pub fn append_unzeroed(&mut self, len: usize) -> Option<&mut [u8]> {
        let n = u16::try_from(len).ok()?;
        // SAFETY: valid owned mbuf; rte_pktmbuf_append checks the tailroom.
        let p = unsafe { sys::rte_pktmbuf_append(self.as_ptr(), n) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p points at len bytes inside the buffer, now part of the data, owned by us.
        // The pool's memory was mapped zeroed by EAL and only ever written with bytes since, so
        // every byte is initialised (any value is a valid u8).
        Some(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
    }

    /// Removes `len` bytes from the end of the data; false if shorter.
    pub fn trim(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: valid owned mbuf; rte_pktmbuf_trim checks the length.
        unsafe { sys::rte_pktmbuf_trim(self.as_ptr(), n) == 0 }
    }

    /// Removes `len` bytes from the start of the data (e.g. a parsed header); false if shorter.
    pub fn adj(&mut self, len: usize) -> bool {
        let Ok(n) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: valid owned mbuf; rte_pktmbuf_adj checks the length.
        !unsafe { sys::rte_pktmbuf_adj(self.as_ptr(), n) }.is_null()
    }

    /// Bytes free after the data of the last segment.
    pub fn tailroom(&self) -> usize {
        // SAFETY: valid owned mbuf.
        usize::from(unsafe { sys::rte_pktmbuf_tailroom(self.as_ptr()) })
    }

    /// The offload flags (`RTE_MBUF_F_*`).
    pub fn ol_flags(&self) -> u64 {
        // SAFETY: valid owned mbuf.
        unsafe { sys::rte_sys_pktmbuf_ol_flags(self.as_ptr()) }
    }

    /// The NIC's RSS hash of a received packet, if it supplied one.
    pub fn rss_hash(&self) -> Option<u32> {
        if self.ol_flags() & flag(sys::RTE_MBUF_F_RX_RSS_HASH) == 0 {
            return None;
        }
        // SAFETY: valid owned mbuf; the flag says hash.rss is set.
        Some(unsafe { sys::rte_sys_pktmbuf_rss_hash(self.as_ptr()) })
    }

    /// What the NIC says about the IPv4 and L4 checksums of a received packet.
    pub fn rx_checksums(&self) -> (ChecksumStatus, ChecksumStatus) {
        let f = self.ol_flags();
        let decode = |mask: u64, good: u64, bad: u64, none: u64| match f & mask {
            x if x == good => ChecksumStatus::Good,
            x if x == bad => ChecksumStatus::Bad,
            x if x == none => ChecksumStatus::None,
            _ => ChecksumStatus::Unknown,
        };
        (
            decode(
                flag(sys::RTE_MBUF_F_RX_IP_CKSUM_MASK),
                flag(sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD),
                flag(sys::RTE_MBUF_F_RX_IP_CKSUM_BAD),
                flag(sys::RTE_MBUF_F_RX_IP_CKSUM_NONE),
            ),
            decode(
                flag(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK),
                flag(sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD),
                flag(sys::RTE_MBUF_F_RX_L4_CKSUM_BAD),
                flag(sys::RTE_MBUF_F_RX_L4_CKSUM_NONE),
            ),
        )
    }

    /// Asks the NIC to compute the IPv4 header and UDP checksums of this IPv4/UDP frame (only
    /// if the port enabled those TX offloads). The UDP checksum field must hold the
    /// pseudo-header checksum, as DPDK requires.
    pub fn request_ipv4_udp_checksums(&mut self, l2_len: u16, l3_len: u16) {
        let flags = flag(sys::RTE_MBUF_F_TX_IPV4)
            | flag(sys::RTE_MBUF_F_TX_IP_CKSUM)
            | flag(sys::RTE_MBUF_F_TX_UDP_CKSUM);
        // SAFETY: valid owned mbuf; sets plain fields.
        unsafe { sys::rte_sys_pktmbuf_set_tx_offload(self.as_ptr(), l2_len, l3_len, flags) };
    }
}

/// A receive checksum verdict from the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumStatus {
    /// Not checked: software must verify.
    Unknown,
    /// Verified good.
    Good,
    /// Verified bad.
    Bad,
    /// The packet's checksum is missing/not valid but the data is intact (virtual devices).
    None,
}
