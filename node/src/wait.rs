//! Waiting for a channel's wake-ups on napi's tokio runtime, without holding the channel.
//!
//! A waiter registers *duplicates* of the channel's app eventfd and of the control socket with
//! the tokio reactor, so that a receive and a send can wait at the same time (each with its
//! own registration; an eventfd write reaches every registration) while the channel itself
//! stays unlocked for other operations. The wait protocol is the channel contract's
//! (docs/CHANNEL.md §4): the caller arms the wake-up under the channel lock
//! (`Channel::arm_wakeup` / `arm_send_wakeup`), releases the lock, then awaits
//! [`Waiter::wake`].

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Why a wait ended.
#[derive(Debug)]
pub enum Woken {
    /// The eventfd was written: look at the channel again.
    Event,
    /// The control socket hung up: the sidecar is gone.
    SidecarGone,
}

/// Registrations of one waiter.
pub struct Waiter {
    efd: AsyncFd<OwnedFd>,
    ctl: AsyncFd<OwnedFd>,
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain fcntl; the result, if valid, is a new descriptor we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by F_DUPFD_CLOEXEC and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Whether the control socket hung up (the sidecar closed it or died).
pub(crate) fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

impl Waiter {
    /// Registers duplicates of `efd` (the channel's app eventfd) and `ctl` (the control socket).
    /// Must run inside the tokio runtime.
    pub fn new(efd: RawFd, ctl: RawFd) -> io::Result<Waiter> {
        // SAFETY: each registration owns its duplicate, which stays open (and the same
        // descriptor) until the registration is dropped.
        let register = |fd: OwnedFd| unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE).map_err(io::Error::from)
        };
        Ok(Waiter {
            efd: register(dup(efd)?)?,
            ctl: register(dup(ctl)?)?,
        })
    }

    /// Waits until the eventfd is written or the control socket hangs up. The eventfd is not
    /// drained here (`arm_wakeup` drains it before re-arming); readiness is cleared, and any
    /// later write raises it again.
    pub async fn wake(&self) -> io::Result<Woken> {
        poll_fn(|cx| self.poll_wake(cx)).await
    }

    fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<io::Result<Woken>> {
        // The control socket is readable for answers to other requests too: only a hang-up
        // matters.
        loop {
            match self.ctl.poll_read_ready(cx) {
                Poll::Ready(Ok(mut g)) => {
                    if hung_up(self.ctl.get_ref().as_raw_fd()) {
                        return Poll::Ready(Ok(Woken::SidecarGone));
                    }
                    g.clear_ready();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        match self.efd.poll_read_ready(cx) {
            Poll::Ready(Ok(mut g)) => {
                g.clear_ready();
                Poll::Ready(Ok(Woken::Event))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}
