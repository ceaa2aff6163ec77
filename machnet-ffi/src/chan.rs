//! A channel context: the client's [`SharedChannel`] (one channel used by many threads, its
//! waits, wait fd, interrupts and flow-event queue), and the errno values its failures take at
//! the C boundary.

use std::collections::VecDeque;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use machnet_client::{Channel, ClientError, Flow, Machnet, SharedChannel, SharedError};

use crate::error::{Error, Result};

/// One attached channel: the shared channel, and the messages `machnet_recv_any` took off it
/// but could not hand over (the caller's buffer was too small), oldest first.
#[derive(Debug)]
pub(crate) struct Ctx {
    shared: SharedChannel,
    pub(crate) any_stash: Mutex<VecDeque<(Flow, Vec<u8>)>>,
}

impl Deref for Ctx {
    type Target = SharedChannel;

    fn deref(&self) -> &SharedChannel {
        &self.shared
    }
}

/// Shares `ch` between the application's threads.
pub(crate) fn new(_machnet: &Machnet, ch: Channel) -> Result<Ctx> {
    let fd = ch.as_raw_fd();
    let shared = SharedChannel::new(ch).map_err(|e| {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot duplicate the channel eventfd {fd}: {e}"),
        )
    })?;
    Ok(Ctx {
        shared,
        any_stash: Mutex::new(VecDeque::new()),
    })
}

pub(crate) fn bad_ctx() -> Error {
    Error::new(libc::EBADF, "the channel context was detached")
}

/// The errno of a shared-channel failure.
pub(crate) fn shared_err<E: ClientError>(e: SharedError<E>) -> Error {
    match e {
        SharedError::Interrupted => Error::new(libc::EINTR, "interrupted by machnet_interrupt"),
        e @ SharedError::Busy => Error {
            code: libc::EBUSY,
            kind: e.kind(),
            msg: e.to_string(),
        },
        e @ SharedError::NoneOutstanding => Error::new(libc::EINVAL, e.to_string()),
        SharedError::Op(e) => e.into(),
        _ => bad_ctx(),
    }
}

/// Runs `f` on the channel (see [`SharedChannel::with`]).
pub(crate) fn with<T>(ctx: &Ctx, f: impl FnOnce(&mut Channel) -> Result<T>) -> Result<T> {
    ctx.with(f).map_err(|_| bad_ctx())?
}
