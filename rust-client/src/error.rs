//! Error types, one per operation.
//!
//! Every error that can follow from sidecar misbehaviour is reported as a value (never a panic):
//! [`SidecarGone`](RecvError::SidecarGone) when the control connection hangs up,
//! `ChannelClosed` when the sidecar closed the channel (the header's `closed` word), `Corrupt`
//! when the sidecar wrote something the channel protocol does not allow (after which the
//! channel is unusable).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use machnet_channel::control::ControlError;
use machnet_channel::{CloseCode, ConnectBudget, LayoutError};

/// A human-readable description of a [`CloseCode`] (same as its `Display`).
pub fn describe_close_code(code: CloseCode) -> &'static str {
    code.description()
}

/// Formats an optional close code (`None`: the sidecar sent a code this library does not know).
pub(crate) struct Reason<'a>(pub &'a Option<CloseCode>);

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(c) => f.write_str(describe_close_code(*c)),
            None => f.write_str("unknown reason"),
        }
    }
}

/// Channel-level failures shared by every data-path operation (internal; converted into the
/// per-operation enums).
#[derive(Debug)]
pub(crate) enum Fault {
    Closed(Option<CloseCode>),
    SidecarGone,
    Corrupt(String),
    Io(io::Error),
}

macro_rules! from_fault {
    ($t:ident) => {
        impl From<Fault> for $t {
            fn from(f: Fault) -> Self {
                match f {
                    Fault::Closed(c) => $t::ChannelClosed(c),
                    Fault::SidecarGone => $t::SidecarGone,
                    Fault::Corrupt(s) => $t::Corrupt(s),
                    Fault::Io(e) => $t::Io(e),
                }
            }
        }
    };
}

/// Why a control request (over the control socket) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The control connection was closed: the sidecar exited, crashed or dropped this process.
    #[error("the Machnet sidecar is gone (control connection closed)")]
    SidecarGone,
    /// The sidecar did not answer in time. The connection is unusable afterwards (a late answer
    /// could be mistaken for the answer to a later request).
    #[error("the Machnet sidecar did not answer within {0:?}")]
    TimedOut(Duration),
    /// An earlier request failed in a way that left the control connection unusable.
    #[error("the control connection is unusable after an earlier failure: {0}")]
    Broken(String),
    /// The sidecar answered with an error.
    #[error("the sidecar refused the request: {code} ({message})")]
    Refused {
        /// The error code.
        code: ControlError,
        /// The sidecar's explanation.
        message: String,
    },
    /// The sidecar's answer does not follow the control protocol.
    #[error("the sidecar sent an invalid answer: {0}")]
    Protocol(String),
    /// A system call on the control socket failed.
    #[error("control socket I/O error: {0}")]
    Io(#[source] io::Error),
}

/// Why [`Machnet::attach`](crate::Machnet::attach) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The control socket could not be reached.
    #[error(
        "cannot connect to the Machnet sidecar at {path}: {source} \
         (is the sidecar running, and may this user open its socket?)"
    )]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The sidecar refused this process (e.g. `unauthorized`: the user or group is not allowed).
    #[error("the Machnet sidecar refused to attach: {code} ({message})")]
    Refused {
        /// The error code.
        code: ControlError,
        /// The sidecar's explanation.
        message: String,
    },
    /// The sidecar speaks another control protocol version.
    #[error(
        "the Machnet sidecar speaks control protocol version {theirs}; this library speaks {ours}"
    )]
    Version {
        /// Our version.
        ours: u32,
        /// The sidecar's version.
        theirs: u32,
    },
    /// The hello exchange failed.
    #[error("attaching to the Machnet sidecar failed: {0}")]
    Request(#[source] RequestError),
}

/// Why [`Machnet::open_channel`](crate::Machnet::open_channel) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenChannelError {
    /// The control request failed (includes `no_such_engine` and `exhausted` refusals).
    #[error("opening a channel failed: {0}")]
    Request(#[source] RequestError),
    /// The sidecar did not send the three descriptors the protocol requires, or they are not
    /// usable as described (size, seals).
    #[error("the sidecar sent unusable channel descriptors: {0}")]
    BadDescriptors(String),
    /// The channel memory could not be mapped.
    #[error("cannot map the channel memory: {0}")]
    Map(#[source] io::Error),
    /// The channel header does not describe a valid channel.
    #[error("the channel memory is invalid: {0}")]
    Layout(#[source] LayoutError),
}

/// Why [`Channel::listen`](crate::Channel::listen) or `unlisten` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Another channel (of any process) already listens on this port.
    #[error("port {0} is already in use")]
    PortInUse(u16),
    /// The port cannot be listened on (0, or in the sidecar's ephemeral range).
    #[error("port {0} cannot be listened on (zero or in the ephemeral range)")]
    InvalidPort(u16),
    /// Another control failure.
    #[error("listen request failed: {0}")]
    Request(#[source] RequestError),
}

/// Why [`Channel::connect`](crate::Channel::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The sidecar could not establish the flow (refused, timed out, no ephemeral ports, ...).
    #[error("connect failed: {}", Reason(.0))]
    Failed(Option<CloseCode>),
    /// The sidecar refused to start the connect at once, before sending anything: this
    /// channel or application is over one of its connect budgets (docs/CHANNEL.md §2). The
    /// message names the budget and the sidecar option that sets it.
    #[error("connect refused by the sidecar: {0}")]
    OverBudget(ConnectBudget),
    /// No answer from the sidecar within the caller's timeout. A flow established later is
    /// aborted automatically.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The sidecar closed the channel.
    #[error("the channel was closed by the sidecar: {}", Reason(.0))]
    ChannelClosed(Option<CloseCode>),
    /// The control connection hung up: the sidecar exited or crashed.
    #[error("the Machnet sidecar is gone (control connection closed)")]
    SidecarGone,
    /// The sidecar broke the channel protocol; the channel is unusable.
    #[error("the channel is corrupt: {0}")]
    Corrupt(String),
    /// A system call failed.
    #[error("I/O error while connecting: {0}")]
    Io(#[source] io::Error),
}
from_fault!(ConnectError);

/// Why a send ([`Channel::send`](crate::Channel::send) and friends) failed. The message was
/// not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// `try_send` only: the request ring is full now (the sidecar applies back-pressure).
    #[error("the channel's request ring is full (try again, or use a blocking send)")]
    WouldBlock,
    /// Messages must hold at least one byte.
    #[error("empty messages cannot be sent")]
    Empty,
    /// The message is larger than the channel allows.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The message length.
        len: usize,
        /// The channel's maximum message length.
        max: u32,
    },
    /// The flow is closed (by the peer, the sidecar or an earlier error).
    #[error("the flow is closed: {}", Reason(.0))]
    FlowClosed(Option<CloseCode>),
    /// This application already called `close` or `abort` on the flow.
    #[error("the flow is being closed by this application")]
    FlowClosing,
    /// The flow belongs to another channel.
    #[error("the flow belongs to another channel")]
    WrongChannel,
    /// A send loan is outstanding on this channel (shared channels: taken by this thread, or
    /// by another one and this call does not wait); commit or cancel it first.
    #[error("a send loan is outstanding on this channel (commit or cancel it first)")]
    LoanOutstanding,
    /// A commit of 0 bytes or more than were loaned; nothing was sent.
    #[error("commit of {used} bytes; the loan was for 1 to {loaned} bytes")]
    BadCommitLength {
        /// The length given to commit.
        used: usize,
        /// The length loaned.
        loaned: usize,
    },
    /// The sidecar closed the channel.
    #[error("the channel was closed by the sidecar: {}", Reason(.0))]
    ChannelClosed(Option<CloseCode>),
    /// The control connection hung up: the sidecar exited or crashed.
    #[error("the Machnet sidecar is gone (control connection closed)")]
    SidecarGone,
    /// The sidecar broke the channel protocol; the channel is unusable.
    #[error("the channel is corrupt: {0}")]
    Corrupt(String),
    /// A system call failed.
    #[error("I/O error while sending: {0}")]
    Io(#[source] io::Error),
}
from_fault!(SendError);

/// Why [`Channel::close`](crate::Channel::close) or [`Channel::abort`](crate::Channel::abort)
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// The flow belongs to another channel.
    #[error("the flow belongs to another channel")]
    WrongChannel,
    /// The sidecar closed the channel.
    #[error("the channel was closed by the sidecar: {}", Reason(.0))]
    ChannelClosed(Option<CloseCode>),
    /// The control connection hung up: the sidecar exited or crashed.
    #[error("the Machnet sidecar is gone (control connection closed)")]
    SidecarGone,
    /// The sidecar broke the channel protocol; the channel is unusable.
    #[error("the channel is corrupt: {0}")]
    Corrupt(String),
    /// A system call failed.
    #[error("I/O error while closing a flow: {0}")]
    Io(#[source] io::Error),
}
from_fault!(CloseError);

/// Why a receive ([`Channel::recv`](crate::Channel::recv) and friends,
/// [`Channel::next_event`](crate::Channel::next_event)) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// `recv_into` only: the next message does not fit the buffer. It stays queued; call again
    /// with a buffer of at least `needed` bytes.
    #[error(
        "the next message has {needed} bytes and does not fit the buffer of {available} bytes"
    )]
    BufferTooSmall {
        /// The message length.
        needed: usize,
        /// The buffer length.
        available: usize,
    },
    /// A borrowed message (`recv_zc`) is still out on this channel (shared channels: taken
    /// by this thread, or by another one and this call does not wait); release it first.
    #[error("a borrowed message is still out on this channel (release it first)")]
    ViewOutstanding,
    /// The sidecar closed the channel (every queued notification was delivered first).
    #[error("the channel was closed by the sidecar: {}", Reason(.0))]
    ChannelClosed(Option<CloseCode>),
    /// The control connection hung up: the sidecar exited or crashed.
    #[error("the Machnet sidecar is gone (control connection closed)")]
    SidecarGone,
    /// The sidecar broke the channel protocol; the channel is unusable.
    #[error("the channel is corrupt: {0}")]
    Corrupt(String),
    /// A system call failed.
    #[error("I/O error while receiving: {0}")]
    Io(#[source] io::Error),
}
from_fault!(RecvError);
