//! Mapping a channel with mirrored rings (the app side; feature `mirror`).
//!
//! Records may wrap around the end of a ring's data area (docs/CHANNEL.md §3.2). To hand out
//! every record's payload as one slice — a loaned send, a borrowed receive — the app maps each
//! ring's data area twice back-to-back in virtual memory (the "magic ring buffer"): a
//! `PROT_NONE` reservation of the whole span, then the memfd range of each ring `MAP_FIXED`
//! over both halves of its part. The header page is mapped once. Nothing in the shared memory
//! changes: the sidecar maps the channel plainly and copies wrapped records in two pieces.
//!
//! The compiler treats the two addresses of a byte as two locations: within one thread, a
//! write through one half and a read through the other must be separated by the ring's
//! atomics (as the ring protocol always does: a record is published by a release store of the
//! tail and read after an acquire load of it), or the read may see a stale value.
//!
//! The one mapping helper both the client library and this crate's tests use (the tests build
//! mirrored regions from a memfd the same way), hence here rather than in the client.

use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

use crate::{ChannelHeader, ChannelLayout, ChannelViews, LayoutError, RingView, HEADER_PAGE};

/// Why a channel could not be mapped with mirrored rings.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The header does not describe a valid channel of this length.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The rings' offsets or sizes are not multiples of the system page size (the mirror maps
    /// whole pages).
    #[error("ring offsets and sizes must be multiples of the page size {0}")]
    PageSize(usize),
}

fn sys(call: &'static str) -> impl Fn(nix::Error) -> MirrorError {
    move |e| MirrorError::Sys {
        call,
        source: e.into(),
    }
}

/// A channel mapped with mirrored rings: `[header page][request ring ×2][notification ring ×2]`
/// in one reservation, unmapped as a whole on drop.
#[derive(Debug)]
pub struct MirroredMap {
    base: NonNull<u8>,
    /// Bytes reserved (and unmapped on drop).
    span: usize,
    layout: ChannelLayout,
}

// SAFETY: the mapping is plain shared memory; the type only hands out raw pointers and views,
// whose users synchronise through the ring protocol.
unsafe impl Send for MirroredMap {}
// SAFETY: as above (no interior state besides the immutable pointer and sizes).
unsafe impl Sync for MirroredMap {}

impl MirroredMap {
    /// Maps the channel in `fd` (`len` bytes, as the sidecar announced): reads and validates
    /// its header through a temporary mapping of the header page, then maps it mirrored.
    pub fn map(fd: BorrowedFd<'_>, len: u64) -> Result<MirroredMap, MirrorError> {
        if len < HEADER_PAGE {
            return Err(LayoutError::TooSmall(len).into());
        }
        let page = NonZeroUsize::new(HEADER_PAGE as usize).unwrap();
        // SAFETY: a fresh read-only shared mapping of the first page; the memfd is sealed
        // against shrinking (the caller checked), so reading it cannot fault.
        let head = unsafe {
            mmap(
                None,
                page,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(sys("mmap (channel header)"))?;
        // SAFETY: `head` maps the header page (aligned to a page); `read` reads only it.
        let layout = unsafe { ChannelLayout::read(head.as_ptr().cast(), len) };
        // SAFETY: unmapping what was just mapped, no reference to it remains.
        let _ = unsafe { munmap(head, page.get()) };
        Self::map_layout(fd, &layout?)
    }

    /// Maps `fd` mirrored for a known, validated `layout` (tests create the memory themselves).
    pub fn map_layout(
        fd: BorrowedFd<'_>,
        layout: &ChannelLayout,
    ) -> Result<MirroredMap, MirrorError> {
        let sys_page = page_size();
        let aligned = |v: u64| sys_page > 0 && (v as usize).is_multiple_of(sys_page);
        if !(aligned(HEADER_PAGE)
            && aligned(layout.to_sidecar_offset)
            && aligned(layout.to_sidecar_capacity)
            && aligned(layout.to_app_offset)
            && aligned(layout.to_app_capacity))
        {
            return Err(MirrorError::PageSize(sys_page));
        }
        let span = HEADER_PAGE + 2 * layout.to_sidecar_capacity + 2 * layout.to_app_capacity;
        let span = usize::try_from(span)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or(LayoutError::Invalid("channel too large to map"))?;
        // SAFETY: a fresh private reservation; nothing can access it until the fixed mappings.
        let base =
            unsafe { mmap_anonymous(None, span, ProtFlags::PROT_NONE, MapFlags::MAP_PRIVATE) }
                .map_err(sys("mmap (reservation)"))?;
        // From here on, dropping `map` unmaps the whole span (fixed mappings included).
        let map = MirroredMap {
            base: base.cast(),
            span: span.get(),
            layout: *layout,
        };
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let fixed = MapFlags::MAP_SHARED | MapFlags::MAP_FIXED;
        let place = |at: usize, file_off: u64, len: u64| -> Result<(), MirrorError> {
            let addr = NonZeroUsize::new(map.base.as_ptr() as usize + at);
            let len = NonZeroUsize::new(len as usize).unwrap();
            // SAFETY: the five calls below tile `[0, span)` exactly, so `[at, at + len)` lies
            // inside our own reservation and MAP_FIXED replaces only our PROT_NONE pages.
            unsafe { mmap(addr, len, rw, fixed, fd, file_off as i64) }
                .map(drop)
                .map_err(sys("mmap (MAP_FIXED)"))
        };
        let (a, b) = (layout.to_sidecar_capacity, layout.to_app_capacity);
        let hp = HEADER_PAGE;
        place(0, 0, hp)?;
        place(hp as usize, layout.to_sidecar_offset, a)?;
        place((hp + a) as usize, layout.to_sidecar_offset, a)?;
        place((hp + 2 * a) as usize, layout.to_app_offset, b)?;
        place((hp + 2 * a + b) as usize, layout.to_app_offset, b)?;
        Ok(map)
    }

    /// The layout the mapping follows.
    pub fn layout(&self) -> &ChannelLayout {
        &self.layout
    }

    /// The header page (the start of the mapping).
    pub fn header_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Mirrored views of the two rings (valid while `self` lives).
    pub fn views(&self) -> ChannelViews {
        let base = self.base.as_ptr();
        let h = base as *const ChannelHeader;
        let (hp, a) = (HEADER_PAGE as usize, self.layout.to_sidecar_capacity);
        // SAFETY: the header page and both doubled data areas are mapped as `map_layout` set
        // them up, for as long as `self` lives (the caller keeps it alive with the views).
        unsafe {
            ChannelViews {
                header: h,
                to_sidecar: RingView::new_mirrored(
                    std::ptr::addr_of!((*h).to_sidecar),
                    base.add(hp),
                    a,
                ),
                to_app: RingView::new_mirrored(
                    std::ptr::addr_of!((*h).to_app),
                    base.add(hp + 2 * a as usize),
                    self.layout.to_app_capacity,
                ),
            }
        }
    }
}

impl Drop for MirroredMap {
    fn drop(&mut self) {
        // SAFETY: the span is ours; unmapping it removes the reservation and every fixed
        // mapping inside it. Users of the views are gone (the owner keeps them together).
        let _ = unsafe { munmap(self.base.cast(), self.span) };
    }
}

/// The system page size (0 if unknown).
fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::os::fd::AsFd;

    fn memfd(layout: &ChannelLayout) -> std::os::fd::OwnedFd {
        let fd = memfd_create(c"mirror-test", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, layout.total_len as i64).unwrap();
        fd
    }

    #[test]
    fn both_halves_of_a_ring_are_the_same_memory() {
        let l = ChannelLayout::new(8192, 4096, 1000).unwrap();
        let fd = memfd(&l);
        let m = MirroredMap::map_layout(fd.as_fd(), &l).unwrap();
        // SAFETY: the header page is mapped writable.
        unsafe { l.init(m.header_ptr()) };
        let v = m.views();
        for (ring, cap) in [(v.to_sidecar, 8192usize), (v.to_app, 4096)] {
            for i in [0usize, 1, cap / 2, cap - 1] {
                // Volatile: the compiler assumes two addresses are two locations and would
                // forward a stored value past a store through the mirror (the ring code crosses
                // an atomic between a write through one address and a read through the other).
                // SAFETY: `2 * cap` bytes are mapped at the ring's data.
                unsafe {
                    ring.data.add(i).write_volatile(i as u8 ^ 0x5a);
                    assert_eq!(ring.data.add(cap + i).read_volatile(), i as u8 ^ 0x5a);
                    ring.data.add(cap + i).write_volatile(0x33);
                    assert_eq!(ring.data.add(i).read_volatile(), 0x33);
                }
            }
        }
        // A second, plain mapping of the file sees the header and the rings at the layout's
        // offsets (what the sidecar sees).
        let m2 = MirroredMap::map(fd.as_fd(), l.total_len).unwrap();
        assert_eq!(m2.layout(), &l);
        // SAFETY: as above.
        unsafe { assert_eq!(m2.views().to_app.data.add(4095).read_volatile(), 0x33) };
    }

    #[test]
    fn a_bad_header_or_length_is_refused() {
        let l = ChannelLayout::new(4096, 4096, 1000).unwrap();
        let fd = memfd(&l);
        assert!(matches!(
            MirroredMap::map(fd.as_fd(), l.total_len),
            Err(MirrorError::Layout(LayoutError::BadMagic))
        ));
        assert!(matches!(
            MirroredMap::map(fd.as_fd(), 100),
            Err(MirrorError::Layout(LayoutError::TooSmall(100)))
        ));
        let m = MirroredMap::map_layout(fd.as_fd(), &l).unwrap();
        // SAFETY: the header page is mapped writable.
        unsafe { l.init(m.header_ptr()) };
        assert!(matches!(
            MirroredMap::map(fd.as_fd(), l.total_len + 4096),
            Err(MirrorError::Layout(LayoutError::Invalid(_)))
        ));
        assert!(MirroredMap::map(fd.as_fd(), l.total_len).is_ok());
    }
}
