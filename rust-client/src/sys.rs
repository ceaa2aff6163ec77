//! Thin, safe wrappers over the few system calls the library makes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Result of waiting on a channel's app eventfd and the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The eventfd fired (and was drained), or a signal interrupted the wait.
    Event,
    /// The deadline passed.
    TimedOut,
    /// The control socket hung up.
    SidecarGone,
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// Blocks until `efd` is readable, `ctl` hangs up, or `deadline` passes. Drains `efd`.
pub(crate) fn wait(efd: RawFd, ctl: RawFd, deadline: Option<Instant>) -> io::Result<Woken> {
    let woken = wait_undrained(efd, ctl, deadline)?;
    if woken == Woken::Event {
        drain_eventfd(efd)?;
    }
    Ok(woken)
}

/// [`wait`] leaving `efd` readable: for sleepers sharing one eventfd, where only the thread
/// that then re-arms every sleeper's flags may drain it (`shared.rs`).
pub(crate) fn wait_undrained(
    efd: RawFd,
    ctl: RawFd,
    deadline: Option<Instant>,
) -> io::Result<Woken> {
    let mut fds = [
        libc::pollfd {
            fd: efd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: ctl,
            // POLLIN is not asked for: answers to other threads' control requests must not wake
            // us. POLLHUP and POLLERR are always reported.
            events: libc::POLLRDHUP,
            revents: 0,
        },
    ];
    let ts = match deadline {
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return Ok(Woken::TimedOut);
            }
            Some(timespec(d - now))
        }
        None => None,
    };
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    // SAFETY: `fds` is a valid array of 2 pollfds; `tsp` is null or points to a live timespec.
    let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Woken::Event)
        } else {
            Err(e)
        };
    }
    if fds[1].revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return Ok(Woken::SidecarGone);
    }
    if fds[0].revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    if r == 0 {
        return Ok(Woken::TimedOut);
    }
    Ok(Woken::Event)
}

/// Whether the control socket hung up (a zero-timeout poll).
pub(crate) fn hung_up(ctl: RawFd) -> bool {
    let mut fd = libc::pollfd {
        fd: ctl,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut fd, 1, 0) };
    r > 0 && fd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Resets a non-blocking eventfd's counter (EAGAIN = already zero).
pub(crate) fn drain_eventfd(efd: RawFd) -> io::Result<()> {
    let mut v = [0u8; 8];
    loop {
        // SAFETY: reading 8 bytes into an 8-byte buffer.
        let r = unsafe { libc::read(efd, v.as_mut_ptr().cast(), 8) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(()),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Adds 1 to an eventfd's counter (wakes its reader). EAGAIN (counter saturated: a wake-up is
/// pending anyway) is success.
pub(crate) fn signal_eventfd(efd: RawFd) -> io::Result<()> {
    let v = 1u64.to_ne_bytes();
    loop {
        // SAFETY: writing 8 bytes from an 8-byte buffer.
        let r = unsafe { libc::write(efd, v.as_ptr().cast(), 8) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(()),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Sets `O_NONBLOCK` on a descriptor.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 {
            return Err(io::Error::last_os_error());
        }
        if fl & libc::O_NONBLOCK == 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The seals of a memfd (`F_GET_SEALS`).
pub(crate) fn seals(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: plain fcntl call.
    let r = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Size of the file behind `fd`.
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    Ok(st.st_size as u64)
}

/// Connects a `SOCK_SEQPACKET` Unix socket to `path`.
pub(crate) fn connect_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(fd),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for `events` on `fd` until `deadline`; `Ok(false)` on timeout.
fn wait_for(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let ts = timespec(deadline - now);
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd and a live timespec.
        let r = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok(true);
        }
    }
}

/// What sending or receiving one control packet ran into.
#[derive(Debug)]
pub(crate) enum PacketError {
    /// The peer closed the connection.
    Closed,
    /// The deadline passed.
    TimedOut,
    /// The packet or its descriptors did not fit (MSG_TRUNC / MSG_CTRUNC).
    Truncated,
    Io(io::Error),
}

/// Sends one packet (never raises SIGPIPE).
pub(crate) fn send_packet(fd: RawFd, data: &[u8], deadline: Instant) -> Result<(), PacketError> {
    loop {
        // SAFETY: `data` is a valid buffer of `data.len()` bytes.
        let r = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => match wait_for(fd, libc::POLLOUT, deadline) {
                Ok(true) => continue,
                Ok(false) => return Err(PacketError::TimedOut),
                Err(e) => return Err(PacketError::Io(e)),
            },
            Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                return Err(PacketError::Closed)
            }
            _ => return Err(PacketError::Io(e)),
        }
    }
}

/// Most descriptors accepted with one packet (more are closed and reported as truncation).
const MAX_FDS: usize = 8;

/// Receives one packet into `buf` with the descriptors that came with it.
pub(crate) fn recv_packet(
    fd: RawFd,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(usize, Vec<OwnedFd>), PacketError> {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut cbuf = vec![0u64; (space as usize).div_ceil(8)];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cbuf.len() * 8;
        // SAFETY: `msg` points to valid buffers that outlive the call.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => match wait_for(fd, libc::POLLIN, deadline) {
                    Ok(true) => continue,
                    Ok(false) => return Err(PacketError::TimedOut),
                    Err(e) => return Err(PacketError::Io(e)),
                },
                Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => return Err(PacketError::Closed),
                _ => return Err(PacketError::Io(e)),
            }
        }
        // Take ownership of every received descriptor first so that none leaks on any path.
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
        // cmsgs; the CMSG_* macros stay within that length, and each SCM_RIGHTS payload holds
        // `(cmsg_len - CMSG_LEN(0)) / 4` freshly installed descriptors that we now own.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data_len =
                        ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    let n = data_len / std::mem::size_of::<RawFd>();
                    let p = libc::CMSG_DATA(c) as *const RawFd;
                    for i in 0..n {
                        let raw = std::ptr::read_unaligned(p.add(i));
                        if raw >= 0 {
                            fds.push(OwnedFd::from_raw_fd(raw));
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if r == 0 {
            return Err(PacketError::Closed);
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(PacketError::Truncated);
        }
        return Ok((r as usize, fds));
    }
}
