//! The control socket: a Unix `SOCK_SEQPACKET` listener (mode 0660), peer credentials, and
//! sending/receiving one packet at a time (with `SCM_RIGHTS` descriptors on the way out).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, recv, sendmsg, socket, sockopt, AddressFamily,
    Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    /// Its directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another sidecar answers on this path.
    #[error("another sidecar is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket exists at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
}

/// Creates, binds and listens on the control socket at `path` (mode 0660, optionally owned by
/// `group`). A stale socket file left by a dead sidecar is replaced; a live one is an error.
pub fn bind_listener(path: &Path, group: Option<u32>) -> Result<OwnedFd, ControlSocketError> {
    let sys = |op: &'static str| {
        let path = path.to_owned();
        move |e: nix::Error| ControlSocketError::Sys {
            op,
            path,
            source: e.into(),
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ControlSocketError::Directory {
            path: dir.to_owned(),
            source,
        })?;
    }
    let addr = UnixAddr::new(path).map_err(sys("address"))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlSocketError::NotASocket(path.to_owned()));
        }
        let probe = seqpacket().map_err(sys("socket"))?;
        match connect(probe.as_raw_fd(), &addr) {
            Ok(()) | Err(Errno::EAGAIN) => {
                return Err(ControlSocketError::AlreadyRunning(path.to_owned()))
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    // Bound, chmodded and listening under a temporary name, then renamed into place: an app
    // that sees the file can connect (no `ECONNREFUSED` between `bind` and `listen`), and never
    // with the wrong mode. (A path too long for a temporary name is bound in place.)
    let staged = staging_path(path);
    let (bind_path, bind_addr) = match staged.as_deref().map(UnixAddr::new) {
        Some(Ok(a)) => (staged.clone().expect("checked"), a),
        _ => (path.to_owned(), addr),
    };
    if bind_path != path {
        // A leftover of a sidecar with our pid that died while starting.
        let _ = std::fs::remove_file(&bind_path);
    }
    let fd = seqpacket().map_err(sys("socket"))?;
    bind(fd.as_raw_fd(), &bind_addr).map_err(sys("bind"))?;
    let io = |op: &'static str| {
        let path = path.to_owned();
        move |source: std::io::Error| ControlSocketError::Sys { op, path, source }
    };
    let staged_result = (|| {
        std::fs::set_permissions(&bind_path, std::fs::Permissions::from_mode(0o660))
            .map_err(io("chmod"))?;
        if let Some(g) = group {
            std::os::unix::fs::chown(&bind_path, None, Some(g)).map_err(io("chown"))?;
        }
        listen(&fd, Backlog::new(128).map_err(sys("listen"))?).map_err(sys("listen"))?;
        if bind_path != path {
            std::fs::rename(&bind_path, path).map_err(io("rename"))?;
        }
        Ok(())
    })();
    if staged_result.is_err() && bind_path != path {
        let _ = std::fs::remove_file(&bind_path);
    }
    staged_result.map(|()| fd)
}

/// A temporary name next to `path` for binding before the socket is ready.
fn staging_path(path: &Path) -> Option<std::path::PathBuf> {
    let name = path.file_name()?.to_str()?;
    Some(path.with_file_name(format!(".{name}.{}.tmp", std::process::id())))
}

/// The credentials of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Why `accept` failed: the listener should not be polled for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// The process or the system is out of descriptors or memory (`EMFILE`, `ENFILE`,
    /// `ENOMEM`, `ENOBUFS`): pending connections stay queued until some are freed.
    #[error("out of descriptors or memory: {0}")]
    Exhausted(Errno),
    /// Any other failure.
    #[error("{0}")]
    Failed(Errno),
}

/// Accepts one pending connection (non-blocking, close-on-exec). `Ok(None)`: none pending now
/// (or the one pending failed on its own — the peer left, its credentials could not be read;
/// a level-triggered poll reports any further ones).
pub fn accept(listener: &OwnedFd) -> Result<Option<(OwnedFd, PeerCred)>, AcceptError> {
    match accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    ) {
        Ok(raw) => {
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let Ok(c) = getsockopt(&fd, sockopt::PeerCredentials) else {
                return Ok(None);
            };
            Ok(Some((
                fd,
                PeerCred {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                },
            )))
        }
        Err(Errno::EAGAIN | Errno::ECONNABORTED | Errno::EINTR | Errno::EPROTO | Errno::EPERM) => {
            Ok(None)
        }
        Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::ENOBUFS)) => {
            Err(AcceptError::Exhausted(e))
        }
        Err(e) => Err(AcceptError::Failed(e)),
    }
}

/// Outcome of reading one packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// A packet of this many bytes is in the buffer.
    Data(usize),
    /// Nothing waiting.
    Empty,
    /// The peer closed the connection.
    Closed,
}

/// Reads one packet into `buf` without blocking. Descriptors a peer tries to pass are discarded
/// by the kernel (no control buffer is given). A packet longer than `buf` is reported with its
/// truncated length equal to `buf.len()`: give a buffer one byte longer than the largest valid
/// packet to detect oversize ones.
pub fn recv_packet(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Packet> {
    match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Ok(Packet::Closed),
        Ok(n) => Ok(Packet::Data(n)),
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(Packet::Empty),
        Err(Errno::ECONNRESET) => Ok(Packet::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Reads and drops what the peer sent so far (at most a few packets), so that closing the
/// connection right after sending it an error does not turn into `ECONNRESET` on the peer's
/// side, which would hide the error (Linux resets a Unix socket closed with unread data).
pub fn discard_pending(fd: impl AsFd) {
    let mut b = [0u8; 64];
    for _ in 0..16 {
        match recv(
            fd.as_fd().as_raw_fd(),
            &mut b,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Makes room in `fd`'s send buffer for one packet of `len` bytes (a statistics answer, larger
/// than other control messages) if the buffer is smaller; the kernel caps it at `wmem_max`, and
/// a send that still does not fit fails like any other.
pub fn reserve_send_buffer(fd: impl AsFd, len: usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt::SndBuf};
    // The kernel counts its own overhead against the buffer: leave room for it.
    let want = len + 16 * 1024;
    if getsockopt(&fd, SndBuf).is_ok_and(|have| have < want) {
        let _ = setsockopt(&fd, SndBuf, &want);
    }
}

/// Sends one packet, with `fds` attached as `SCM_RIGHTS` if non-empty. Never blocks: a peer that
/// does not read its replies gets `WouldBlock`.
pub fn send_packet(fd: impl AsFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<UnixAddr>(
        fd.as_fd().as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if n != data.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "short control packet",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket appears under its name already listening, with its mode, and the staging
    /// name is gone; a second sidecar on the same path is refused.
    #[test]
    fn the_socket_appears_ready_and_nothing_else_is_left() {
        let dir = std::env::temp_dir().join(format!("machnet-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("c.sock");
        let _fd = bind_listener(&path, None).expect("bind");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["c.sock".to_string()]);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let probe = seqpacket().unwrap();
        connect(probe.as_raw_fd(), &UnixAddr::new(&path).unwrap()).expect("listening");
        assert!(matches!(
            bind_listener(&path, None),
            Err(ControlSocketError::AlreadyRunning(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
