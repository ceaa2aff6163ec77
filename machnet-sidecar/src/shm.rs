//! Creating a channel's memory (docs/CHANNEL.md §2, §3.1): a sealed memfd holding the header page
//! and both rings, mapped into the sidecar, and the channel's two eventfds.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use machnet_channel::{ChannelLayout, ChannelViews, LayoutError};
use memmap2::{MmapMut, MmapOptions};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// Slack added to each ring beyond one maximum-size record.
pub const RING_SLACK: u64 = 1 << 20;

/// Why a channel could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ChannelCreateError {
    /// No valid layout for this maximum message length.
    #[error("no channel layout for this message size: {0}")]
    Layout(#[from] LayoutError),
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// The operation.
        op: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// Mapping the memfd failed.
    #[error("mmap: {0}")]
    Map(std::io::Error),
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> ChannelCreateError {
    move |source| ChannelCreateError::Sys { op, source }
}

/// One channel's memory and wake-up descriptors, as held by the sidecar.
pub struct ChannelMem {
    map: MmapMut,
    layout: ChannelLayout,
    memfd: File,
    app_efd: EventFd,
    sidecar_efd: EventFd,
}

impl std::fmt::Debug for ChannelMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelMem")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl ChannelMem {
    /// Creates a channel for messages of up to `max_message_len` bytes: memfd sized to the
    /// layout and sealed against shrinking and growing, mapped, header written, and two
    /// non-blocking eventfds.
    pub fn create(max_message_len: u32) -> Result<Self, ChannelCreateError> {
        Self::with_layout(ChannelLayout::for_messages(max_message_len, RING_SLACK)?)
    }

    /// [`ChannelMem::create`] with a given layout (e.g. small rings, so that tests and fuzzers
    /// reach full rings and wrapped records quickly).
    pub fn with_layout(layout: ChannelLayout) -> Result<Self, ChannelCreateError> {
        let fd = memfd_create(
            c"machnet-channel",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(sys("memfd_create"))?;
        let len = i64::try_from(layout.total_len)
            .map_err(|_| LayoutError::Invalid("channel too large"))?;
        nix::unistd::ftruncate(&fd, len).map_err(sys("ftruncate"))?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(sys("fcntl(F_ADD_SEALS)"))?;
        let memfd = File::from(fd);
        // SAFETY: the memfd is sealed against shrinking, so the mapping can never be cut short
        // under us; concurrent writes by the app are expected and only ever read through the
        // validating ring code.
        let mut map = unsafe {
            MmapOptions::new()
                .len(layout.total_len as usize)
                .map_mut(&memfd)
        }
        .map_err(ChannelCreateError::Map)?;
        // SAFETY: the mapping is `total_len` bytes, page-aligned, and zero-filled (fresh memfd).
        unsafe { layout.init(map.as_mut_ptr()) };
        let efd = || {
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(sys("eventfd"))
        };
        Ok(ChannelMem {
            map,
            layout,
            memfd,
            app_efd: efd()?,
            sidecar_efd: efd()?,
        })
    }

    /// The layout.
    pub fn layout(&self) -> &ChannelLayout {
        &self.layout
    }

    /// Views of the rings and header. Valid while `self` lives (the mapping moves with it: it is
    /// a heap-independent mmap whose address never changes).
    pub fn views(&mut self) -> ChannelViews {
        // SAFETY: the mapping is `total_len` bytes, page-aligned and lives as long as `self`.
        unsafe { self.layout.views(self.map.as_mut_ptr()) }
    }

    /// The memfd (sent to the app).
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The app eventfd: the sidecar writes it to wake the app.
    pub fn app_efd(&self) -> &EventFd {
        &self.app_efd
    }

    /// The sidecar eventfd: the app writes it to wake the engine.
    pub fn sidecar_efd(&self) -> &EventFd {
        &self.sidecar_efd
    }

    /// Duplicates of the three descriptors handed to the app, in protocol order
    /// `[memfd, app eventfd, sidecar eventfd]`.
    pub fn dup_app_fds(&self) -> std::io::Result<[OwnedFd; 3]> {
        Ok([
            self.memfd.as_fd().try_clone_to_owned()?,
            self.app_efd.as_fd().try_clone_to_owned()?,
            self.sidecar_efd.as_fd().try_clone_to_owned()?,
        ])
    }

    /// Wakes the app (writes its eventfd).
    pub fn wake_app(&self) {
        let _ = self.app_efd.write(1);
    }

    /// Clears the sidecar eventfd's counter (after a wake-up).
    pub fn drain_sidecar_efd(&self) {
        let _ = self.sidecar_efd.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machnet_channel::{Consumer, Producer, RecordHeader, RecordKind};

    #[test]
    fn channel_is_sealed_sized_and_readable_through_a_second_mapping() {
        let mut c = ChannelMem::create(1 << 20).unwrap();
        let l = *c.layout();
        let fds = c.dup_app_fds().unwrap();
        let file = File::from(fds[0].try_clone().unwrap());
        assert_eq!(file.metadata().unwrap().len(), l.total_len);
        // Shrinking and growing are refused: the app cannot make sidecar accesses fault.
        assert!(file.set_len(4096).is_err());
        assert!(file.set_len(l.total_len * 2).is_err());
        let seals = fcntl(&file, FcntlArg::F_GET_SEALS).unwrap();
        let want = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        assert_eq!(SealFlag::from_bits_truncate(seals) & want, want);

        // The app's view: validate the header, then exchange a record.
        let mut app = unsafe { MmapOptions::new().map_mut(&file) }.unwrap();
        let read = unsafe { ChannelLayout::read(app.as_ptr(), app.len() as u64) }.unwrap();
        assert_eq!(read, l);
        let app_views = unsafe { read.views(app.as_mut_ptr()) };
        let mut p = Producer::new(app_views.to_sidecar, 0);
        p.push(RecordHeader::new(RecordKind::Send, 3), &[b"hi"])
            .unwrap();
        let v = c.views();
        let mut cons = Consumer::new(v.to_sidecar, 0, l.max_message_len);
        let rec = cons.peek().unwrap().unwrap();
        assert_eq!(
            (rec.header.kind, rec.header.flow, rec.header.len),
            (RecordKind::Send, 3, 2)
        );

        // Eventfds are distinct and non-blocking.
        c.wake_app();
        let app_efd = unsafe { EventFd::from_owned_fd(fds[1].try_clone().unwrap()) };
        assert_eq!(app_efd.read().unwrap(), 1);
        assert!(app_efd.read().is_err(), "non-blocking and drained");
    }
}
