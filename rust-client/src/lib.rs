//! The application side of Machnet: attach to the `machnet` sidecar and exchange messages over
//! shared-memory channels.
//!
//! # Model
//!
//! ```text
//!  this process                               sidecar (machnet)
//!  Machnet ── control socket (JSON) ───────▶ control thread
//!  thread A: Channel ── shared memory ─────▶ engine 0
//!  thread B: Channel ── shared memory ─────▶ engine 1
//! ```
//!
//! * [`Machnet`] is the process's attachment: one Unix `SOCK_SEQPACKET` control connection,
//!   opened by [`Machnet::attach`] (socket `$MACHNET_SOCKET`, default
//!   `/run/machnet/machnet.sock`). It is cheap to clone and `Send + Sync`; control requests from
//!   several threads are serialised. When the last clone (and channel) is dropped, or the
//!   process dies, the sidecar aborts every flow the process had.
//! * A [`Channel`] is a thread's data path to one engine: a shared memory region holding two
//!   rings (requests to the sidecar, notifications from it) and two eventfds. Open one per
//!   thread with [`Machnet::open_channel`]. A channel is `Send` but not `Sync` and its
//!   operations take `&mut self`: exactly one thread uses it at a time, so the rings need no
//!   locks.
//! * A [`Flow`] is one Machnet connection, a small `Copy` handle valid on the channel that
//!   created ([`Channel::connect`]) or accepted it ([`Channel::listen`]). Messages are delivered
//!   whole, in order, exactly once per flow.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let machnet = machnet::Machnet::attach()?;
//! let mut ch = machnet.open_channel(None)?;
//! let flow = ch.connect("10.0.0.2".parse()?, 888)?;
//! ch.send(&flow, b"hello")?;
//! let (from, reply) = ch.recv()?;
//! assert_eq!(from, flow);
//! # let _ = reply;
//! # Ok(())
//! # }
//! ```
//!
//! # Blocking and waking up
//!
//! Blocking calls ([`Channel::recv`], [`Channel::send`] when the request ring is full,
//! [`Channel::connect`]) never sleep-poll. They follow the channel contract
//! (docs/CHANNEL.md §4):
//!
//! 1. look at the ring; if it has what is needed, proceed;
//! 2. otherwise store `data_waiting = 1` (or `space_waiting` when waiting for room), issue a
//!    full fence, and look again: the sidecar publishes before it checks the flag, so either
//!    this re-check sees the record or the sidecar sees the flag and writes the eventfd — no
//!    wake-up is lost;
//! 3. `ppoll` on the channel's eventfd and on the control socket; drain the eventfd
//!    (non-blocking) and loop.
//!
//! The control socket is part of every wait: if the sidecar exits or crashes, it hangs up and
//! the blocked call returns `SidecarGone` instead of hanging. The channel header's `closed`
//! word is checked before every sleep: a channel closed by the sidecar yields `ChannelClosed`
//! with the sidecar's reason (after every notification already queued has been delivered).
//! Non-blocking receives that find nothing also check the control socket, at most every
//! 10 ms. Every call that hands something to the sidecar (any send, `connect`, `close`,
//! `abort`, `listen`, ...) checks it first, so such a call made after the sidecar died fails
//! with `SidecarGone` instead of queueing a request nobody will read; once seen, the death is
//! remembered and later calls fail without a system call (docs/CHANNEL.md §4).
//!
//! [`Channel::set_busy_poll`] adds a bounded spin before sleeping, for latency-critical
//! threads that can afford a core.
//!
//! To integrate with your own event loop, poll the channel's app eventfd (its
//! [`AsRawFd`](std::os::fd::AsRawFd) descriptor) after [`Channel::arm_wakeup`] returned
//! `false`, together with [`Machnet`]'s descriptor for hang-up.
//! With the `tokio` feature, `Channel::recv_async`, `send_async`, `next_event_async` and
//! `connect_async` wait through tokio's reactor (`AsyncFd`), without a thread per
//! call.
//!
//! # Errors and trust
//!
//! Each operation has its own error enum ([`AttachError`], [`OpenChannelError`],
//! [`ListenError`], [`ConnectError`], [`SendError`], [`CloseError`], [`RecvError`],
//! [`RequestError`]). Each also names an [`ErrorKind`] through the [`ClientError`] trait
//! (`kind()`, `errno()`, `code_name()`): the one error model every language binding maps. Nothing the sidecar writes into shared memory is followed blindly: ring
//! indices and record headers are validated (by `machnet-core`), the channel memory must be a
//! memfd sealed against shrinking and exactly as large as announced. A sidecar that breaks the
//! protocol makes the channel report `Corrupt` from then on; this library never panics because
//! of it. Messages are never dropped silently: [`Channel::recv_into`] reports the size a
//! message needs instead of truncating it.

#![warn(missing_docs)]

mod channel;
mod error;
mod error_kind;
mod machnet;
mod shared;
#[cfg(feature = "tokio")]
pub mod stream;
mod sys;
#[cfg(feature = "tokio")]
mod tokio_support;

pub use channel::{
    Channel, ConnectTicket, Event, Flow, FlowStatus, Received, RecvView, RequestKind, SendLoan,
    DEFAULT_CONNECT_TIMEOUT,
};
pub use error::{
    describe_close_code, AttachError, CloseError, ConnectError, ListenError, OpenChannelError,
    RecvError, RequestError, SendError,
};
pub use error_kind::{ClientError, ErrorKind};
pub use machnet::{
    default_socket_path, Machnet, SidecarInfo, DEFAULT_CONTROL_TIMEOUT, DEFAULT_SOCKET_PATH,
    SOCKET_ENV,
};
/// Error codes of the control protocol (shared with the sidecar).
pub use machnet_channel::control::ControlError as ControlErrorCode;
/// Why a flow, a request or a channel ended (shared with the sidecar).
pub use machnet_channel::CloseCode;
/// A budget on the connects an application may have the sidecar start (shared with the
/// sidecar): [`ConnectError::OverBudget`].
pub use machnet_channel::ConnectBudget;
/// A flow's 4-tuple (shared with the sidecar).
pub use machnet_channel::FlowInfo;
pub use shared::{Detached, LoanBuf, SharedChannel, SharedError, ViewBuf, DEFAULT_EVENT_LIMIT};
