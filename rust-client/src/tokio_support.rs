//! Async receive and send on a tokio runtime (feature `tokio`).
//!
//! The channel's app eventfd and a duplicate of the control socket are registered with the
//! runtime's reactor (`tokio::io::unix::AsyncFd`) the first time an async function is used; no
//! thread is spawned per call. The wait protocol is the one of the blocking calls
//! (docs/CHANNEL.md §4): announce `data_waiting` (or `space_waiting`), re-check the ring, then
//! await readiness of the eventfd or a hang-up of the control socket.

use std::io::IoSlice;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use machnet_channel::app::{AppChannel, ConnectTicket, WaitFor};

use crate::channel::{Block, Channel, Flow, Got, PushFail, Want};
use crate::error::{ConnectError, Fault, RecvError, SendError};
use crate::sys;

/// A descriptor owned elsewhere (the channel keeps the app eventfd open longer than this).
pub(crate) struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The channel's registrations with the tokio reactor.
pub(crate) struct AsyncFds {
    efd: AsyncFd<Borrowed>,
    /// A duplicate of the control socket (watched for hang-up only).
    ctl: AsyncFd<OwnedFd>,
}

impl Channel {
    pub(crate) fn ensure_async(&mut self) -> Result<(), Fault> {
        if self.async_fds.is_none() {
            let dup = nix::unistd::dup(unsafe {
                // SAFETY: the control socket stays open for as long as the channel (it holds a
                // `Machnet` clone), and the borrow ends with this call.
                std::os::fd::BorrowedFd::borrow_raw(self.control_fd())
            })
            .map_err(|e| Fault::Io(e.into()))?;
            // `dup` does not keep FD_CLOEXEC.
            // SAFETY: plain fcntl on our new descriptor.
            unsafe { libc::fcntl(dup.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: the app eventfd is a field of the channel declared after `async_fds`, so
            // it stays open (and the same descriptor) until this registration is dropped.
            let efd = unsafe {
                AsyncFd::register_with_interest(
                    Borrowed(self.app_efd.as_raw_fd()),
                    Interest::READABLE,
                )
            }
            .map_err(|e| Fault::Io(e.into()))?;
            // SAFETY: the registration owns `dup`, which stays open until it is dropped.
            let ctl = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }
                .map_err(|e| Fault::Io(e.into()))?;
            self.async_fds = Some(AsyncFds { efd, ctl });
        }
        Ok(())
    }

    /// Polls the channel's registrations once (after [`AppChannel::arm`] returned `false`):
    /// `Ready` when the eventfd was signalled (it is drained) or the sidecar hung up.
    pub(crate) fn poll_wakeup(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Fault>> {
        self.ensure_async()?;
        let ctl_raw = self.control_fd();
        let r = match &self.async_fds {
            Some(fds) => poll_wake(fds, ctl_raw, cx),
            None => Poll::Ready(Ok(())),
        };
        if matches!(r, Poll::Ready(Err(Fault::SidecarGone))) {
            self.machnet().mark_gone();
        }
        r
    }

    /// Announces the wait, re-checks, and awaits a wake-up.
    async fn wait_async(&mut self, cond: WaitFor) -> Result<(), Fault> {
        self.ensure_async()?;
        if self.app.arm(cond)? {
            return Ok(());
        }
        let ctl_raw = self.control_fd();
        let result = match &self.async_fds {
            Some(fds) => std::future::poll_fn(|cx| poll_wake(fds, ctl_raw, cx)).await,
            None => Ok(()),
        };
        if matches!(result, Err(Fault::SidecarGone)) {
            self.machnet().mark_gone();
        }
        self.app.disarm(cond);
        result
    }

    /// Awaits the next message on any flow (see [`Channel::recv`]). Cancel-safe: a message is
    /// consumed only when the future completes.
    ///
    /// # Panics
    /// If called outside a tokio runtime with I/O enabled (tokio's `AsyncFd` requirement).
    /// The channel registers with the runtime of its first async call; keep using it there.
    pub async fn recv_async(&mut self) -> Result<(Flow, Vec<u8>), RecvError> {
        loop {
            if let Some(Got::Message(flow, data)) =
                self.receive(Want::Message, Some(Instant::now()))?
            {
                return Ok((flow, data));
            }
            self.wait_async(WaitFor::Data).await?;
        }
    }

    /// Awaits the next event of any kind (see [`Channel::next_event`]). Cancel-safe.
    ///
    /// # Panics
    /// As [`Channel::recv_async`].
    pub async fn next_event_async(&mut self) -> Result<crate::Event, RecvError> {
        loop {
            if let Some(Got::Event(ev)) = self.receive(Want::Event, Some(Instant::now()))? {
                return Ok(ev);
            }
            self.wait_async(WaitFor::Data).await?;
        }
    }

    /// Sends `data` as one message on `flow`, awaiting ring space under back-pressure.
    /// Cancel-safe: the message is either sent when the future completes or not at all.
    ///
    /// # Panics
    /// As [`Channel::recv_async`].
    pub async fn send_async(&mut self, flow: &Flow, data: &[u8]) -> Result<(), SendError> {
        self.send_vectored_async(flow, &[IoSlice::new(data)]).await
    }

    /// Vectored [`Channel::send_async`].
    ///
    /// # Panics
    /// As [`Channel::recv_async`].
    pub async fn send_vectored_async(
        &mut self,
        flow: &Flow,
        parts: &[IoSlice<'_>],
    ) -> Result<(), SendError> {
        let slices: Vec<&[u8]> = parts.iter().map(|p| &**p).collect();
        let need = AppChannel::footprint(slices.iter().map(|p| p.len()).sum());
        loop {
            match self.send_parts(flow, &slices, Block::No) {
                Err(SendError::WouldBlock) => self.wait_async(WaitFor::Space(need)).await?,
                other => return other,
            }
        }
    }

    /// Opens a flow (see [`Channel::connect`]) without blocking the runtime. Wrap it in
    /// `tokio::time::timeout` to bound the wait; if the future is dropped before the answer,
    /// the request is abandoned and a flow established later is aborted.
    ///
    /// # Panics
    /// As [`Channel::recv_async`].
    pub async fn connect_async(&mut self, ip: Ipv4Addr, port: u16) -> Result<Flow, ConnectError> {
        let ticket = loop {
            match self.connect_start(ip, port, Block::No) {
                Ok(ticket) => break ticket,
                Err(PushFail::Fault(f)) => return Err(f.into()),
                Err(PushFail::WouldBlock | PushFail::TimedOut | PushFail::Rejected(_)) => {
                    let need = AppChannel::footprint(machnet_channel::ConnectRequest::LEN);
                    self.wait_async(WaitFor::Space(need)).await?
                }
            }
        };
        let mut guard = AbandonOnDrop {
            channel: self,
            ticket,
            done: false,
        };
        loop {
            match guard.channel.connect_poll(ticket) {
                Ok(Some(flow)) => {
                    guard.done = true;
                    return Ok(flow);
                }
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            guard.channel.wait_async(WaitFor::Data).await?;
        }
    }
}

/// Marks a connect request abandoned unless its answer was received.
struct AbandonOnDrop<'a> {
    channel: &'a mut Channel,
    ticket: ConnectTicket,
    done: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.channel.app.abandon_connect(self.ticket);
        }
    }
}

pub(crate) fn poll_wake(
    fds: &AsyncFds,
    ctl_raw: RawFd,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Fault>> {
    // The control socket: only a hang-up matters (answers to other threads' requests make it
    // readable too; those readiness events are cleared and ignored).
    loop {
        match fds.ctl.poll_read_ready(cx) {
            Poll::Ready(Ok(mut g)) => {
                if sys::hung_up(ctl_raw) {
                    return Poll::Ready(Err(Fault::SidecarGone));
                }
                g.clear_ready();
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Fault::Io(e))),
            Poll::Pending => break,
        }
    }
    match fds.efd.poll_read_ready(cx) {
        Poll::Ready(Ok(mut g)) => {
            let r = sys::drain_eventfd(g.get_inner().as_raw_fd());
            g.clear_ready();
            Poll::Ready(r.map_err(Fault::Io))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(Fault::Io(e))),
        Poll::Pending => Poll::Pending,
    }
}
