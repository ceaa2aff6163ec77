//! One error model for every binding: each per-operation error (which keeps its variants and
//! their data) names an [`ErrorKind`], and one table gives each kind its POSIX `errno` (what the
//! C ABI reports) and a stable code name (what the Python, Node.js, C# and Go bindings expose).
//!
//! A binding maps errors with one function from [`ErrorKind`] (or, behind the C ABI, from the
//! errno and code name) to its own exception classes, never by matching variants.

use std::io;

use machnet_channel::control::ControlError;
use machnet_channel::CloseCode;

use crate::error::{
    AttachError, CloseError, ConnectError, ListenError, OpenChannelError, RecvError, RequestError,
    SendError,
};

/// What kind of failure an error is, independent of the operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operation would have to wait (`try_send` on a full ring).
    WouldBlock,
    /// The operation (or the remote host) did not answer in time.
    TimedOut,
    /// A wait was interrupted on request (`machnet_interrupt`).
    Interrupted,
    /// An argument or request the operation cannot accept (empty message, bad port, a flow of
    /// another channel, an unknown engine...).
    InvalidArgument,
    /// The message is larger than the channel allows.
    MessageTooLarge,
    /// The next message does not fit the caller's buffer (it stays queued).
    BufferTooSmall,
    /// The flow is closed (gracefully, by this application, or it is not open on this channel).
    FlowClosed,
    /// The flow was reset or aborted.
    FlowReset,
    /// The remote host refused the connection (nothing listens on the port).
    ConnectionRefused,
    /// The sidecar closed the channel.
    ChannelClosed,
    /// The sidecar's control socket could not be reached (not running, wrong path, permissions).
    SidecarUnreachable,
    /// The sidecar exited, crashed or is shutting down.
    SidecarGone,
    /// The sidecar refused the request for a reason no other kind names.
    Refused,
    /// The sidecar does not allow this user or group.
    PermissionDenied,
    /// The sidecar speaks another control protocol version.
    VersionMismatch,
    /// The sidecar (or this application's share of it) ran out of a resource: channels,
    /// listening ports, control connections, ephemeral ports.
    Exhausted,
    /// Another channel already listens on the port.
    AddressInUse,
    /// The sidecar broke the channel or control protocol; the object is unusable.
    Protocol,
    /// A system call failed.
    Io,
}

impl ErrorKind {
    /// Every kind, for bindings that build their own tables and for tests.
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::WouldBlock,
        ErrorKind::TimedOut,
        ErrorKind::Interrupted,
        ErrorKind::InvalidArgument,
        ErrorKind::MessageTooLarge,
        ErrorKind::BufferTooSmall,
        ErrorKind::FlowClosed,
        ErrorKind::FlowReset,
        ErrorKind::ConnectionRefused,
        ErrorKind::ChannelClosed,
        ErrorKind::SidecarUnreachable,
        ErrorKind::SidecarGone,
        ErrorKind::Refused,
        ErrorKind::PermissionDenied,
        ErrorKind::VersionMismatch,
        ErrorKind::Exhausted,
        ErrorKind::AddressInUse,
        ErrorKind::Protocol,
        ErrorKind::Io,
    ];

    /// The table: each kind's errno and code name.
    const fn entry(self) -> (i32, &'static str) {
        match self {
            ErrorKind::WouldBlock => (libc::EAGAIN, "ERR_MACHNET_WOULD_BLOCK"),
            ErrorKind::TimedOut => (libc::ETIMEDOUT, "ERR_MACHNET_TIMEOUT"),
            ErrorKind::Interrupted => (libc::EINTR, "ERR_MACHNET_INTERRUPTED"),
            ErrorKind::InvalidArgument => (libc::EINVAL, "ERR_MACHNET_INVALID_ARGUMENT"),
            ErrorKind::MessageTooLarge => (libc::EMSGSIZE, "ERR_MACHNET_MESSAGE_TOO_LARGE"),
            ErrorKind::BufferTooSmall => (libc::EMSGSIZE, "ERR_MACHNET_BUFFER_TOO_SMALL"),
            ErrorKind::FlowClosed => (libc::ENOTCONN, "ERR_MACHNET_FLOW_CLOSED"),
            ErrorKind::FlowReset => (libc::ECONNRESET, "ERR_MACHNET_FLOW_RESET"),
            ErrorKind::ConnectionRefused => (libc::ECONNREFUSED, "ERR_MACHNET_CONNECTION_REFUSED"),
            ErrorKind::ChannelClosed => (libc::ECONNABORTED, "ERR_MACHNET_CHANNEL_CLOSED"),
            ErrorKind::SidecarUnreachable => (libc::ENOENT, "ERR_MACHNET_SIDECAR_UNREACHABLE"),
            ErrorKind::SidecarGone => (libc::ECONNRESET, "ERR_MACHNET_SIDECAR_GONE"),
            ErrorKind::Refused => (libc::EPERM, "ERR_MACHNET_REFUSED"),
            ErrorKind::PermissionDenied => (libc::EACCES, "ERR_MACHNET_PERMISSION_DENIED"),
            ErrorKind::VersionMismatch => (libc::EPROTO, "ERR_MACHNET_VERSION_MISMATCH"),
            ErrorKind::Exhausted => (libc::EAGAIN, "ERR_MACHNET_EXHAUSTED"),
            ErrorKind::AddressInUse => (libc::EADDRINUSE, "ERR_MACHNET_PORT_IN_USE"),
            ErrorKind::Protocol => (libc::EPROTO, "ERR_MACHNET_PROTOCOL"),
            ErrorKind::Io => (libc::EIO, "ERR_MACHNET_IO"),
        }
    }

    /// The POSIX errno the C ABI reports for this kind (an error carrying an OS error reports
    /// that error's own errno instead: see [`ClientError::errno`]).
    pub const fn errno(self) -> i32 {
        self.entry().0
    }

    /// The stable code name, e.g. `"ERR_MACHNET_FLOW_RESET"` (Node.js `err.code`, Python
    /// `exc.code`, C# `CodeName`, Go `Error.Code`).
    pub const fn code_name(self) -> &'static str {
        self.entry().1
    }

    /// The kind with this code name.
    pub fn from_code_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code_name() == name)
    }

    /// The kind of a flow that ended (or could not be set up) with `code` (`None`: a code this
    /// library does not know).
    pub const fn of_close_code(code: Option<CloseCode>) -> ErrorKind {
        match code {
            Some(CloseCode::Refused) => ErrorKind::ConnectionRefused,
            Some(CloseCode::Reset | CloseCode::Aborted) => ErrorKind::FlowReset,
            Some(CloseCode::TimedOut) => ErrorKind::TimedOut,
            Some(CloseCode::ProtocolViolation) => ErrorKind::Protocol,
            Some(CloseCode::MessageTooLarge) => ErrorKind::MessageTooLarge,
            Some(CloseCode::InvalidRequest) => ErrorKind::InvalidArgument,
            Some(
                CloseCode::Exhausted
                | CloseCode::ChannelConnectLimit
                | CloseCode::AppConnectLimit
                | CloseCode::ConnectRateLimit,
            ) => ErrorKind::Exhausted,
            Some(CloseCode::ChannelViolation | CloseCode::Detached) => ErrorKind::ChannelClosed,
            Some(CloseCode::Shutdown) => ErrorKind::SidecarGone,
            Some(CloseCode::PeerNotAllowed) => ErrorKind::PermissionDenied,
            Some(CloseCode::Graceful | CloseCode::UnknownFlow) | None => ErrorKind::FlowClosed,
        }
    }

    /// The kind of a control-protocol refusal.
    pub const fn of_control_error(code: ControlError) -> ErrorKind {
        match code {
            ControlError::Unauthorized => ErrorKind::PermissionDenied,
            ControlError::Version => ErrorKind::VersionMismatch,
            ControlError::NoHello => ErrorKind::Protocol,
            ControlError::Malformed
            | ControlError::NoSuchEngine
            | ControlError::NoSuchChannel
            | ControlError::InvalidPort
            | ControlError::InvalidRequest => ErrorKind::InvalidArgument,
            ControlError::PortInUse => ErrorKind::AddressInUse,
            ControlError::Exhausted
            | ControlError::ConnectionLimit
            | ControlError::ChannelLimit
            | ControlError::PortLimit => ErrorKind::Exhausted,
            ControlError::Internal | ControlError::TimedOut => ErrorKind::Refused,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code_name())
    }
}

/// What every error of this crate tells besides its message: its [`ErrorKind`], errno and code
/// name, and the close code it carries. Bindings map errors through this trait alone.
pub trait ClientError: std::error::Error {
    /// The kind of failure.
    fn kind(&self) -> ErrorKind;

    /// The operating system's error, for failures of a system call.
    fn os_error(&self) -> Option<&io::Error> {
        None
    }

    /// The close code the sidecar gave (a flow or channel that closed, a connect that failed).
    fn close_code(&self) -> Option<CloseCode> {
        None
    }

    /// The errno the C ABI reports: the OS error's own, else the kind's.
    fn errno(&self) -> i32 {
        self.os_error()
            .and_then(io::Error::raw_os_error)
            .unwrap_or(self.kind().errno())
    }

    /// The stable code name of [`kind`](Self::kind).
    fn code_name(&self) -> &'static str {
        self.kind().code_name()
    }
}

impl ClientError for RequestError {
    fn kind(&self) -> ErrorKind {
        match self {
            RequestError::SidecarGone => ErrorKind::SidecarGone,
            RequestError::TimedOut(_) => ErrorKind::TimedOut,
            RequestError::Refused { code, .. } => ErrorKind::of_control_error(*code),
            RequestError::Broken(_) | RequestError::Protocol(_) => ErrorKind::Protocol,
            RequestError::Io(_) => ErrorKind::Io,
        }
    }

    fn os_error(&self) -> Option<&io::Error> {
        match self {
            RequestError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl ClientError for AttachError {
    fn kind(&self) -> ErrorKind {
        match self {
            AttachError::Connect { .. } => ErrorKind::SidecarUnreachable,
            AttachError::Refused { code, .. } => ErrorKind::of_control_error(*code),
            AttachError::Version { .. } => ErrorKind::VersionMismatch,
            AttachError::Request(r) => r.kind(),
        }
    }

    fn os_error(&self) -> Option<&io::Error> {
        match self {
            AttachError::Connect { source, .. } => Some(source),
            AttachError::Request(r) => r.os_error(),
            _ => None,
        }
    }
}

impl ClientError for OpenChannelError {
    fn kind(&self) -> ErrorKind {
        match self {
            OpenChannelError::Request(r) => r.kind(),
            OpenChannelError::BadDescriptors(_) | OpenChannelError::Layout(_) => {
                ErrorKind::Protocol
            }
            OpenChannelError::Map(_) => ErrorKind::Io,
        }
    }

    fn os_error(&self) -> Option<&io::Error> {
        match self {
            OpenChannelError::Request(r) => r.os_error(),
            OpenChannelError::Map(e) => Some(e),
            _ => None,
        }
    }
}

impl ClientError for ListenError {
    fn kind(&self) -> ErrorKind {
        match self {
            ListenError::PortInUse(_) => ErrorKind::AddressInUse,
            ListenError::InvalidPort(_) => ErrorKind::InvalidArgument,
            ListenError::Request(r) => r.kind(),
        }
    }

    fn os_error(&self) -> Option<&io::Error> {
        match self {
            ListenError::Request(r) => r.os_error(),
            _ => None,
        }
    }
}

/// The variants every data-path error shares (see `Fault`), mapped the same way everywhere.
macro_rules! data_path_kind {
    ($t:ident, $e:expr, { $($pat:pat => $kind:expr),* $(,)? }) => {
        match $e {
            $($pat => $kind,)*
            $t::ChannelClosed(_) => ErrorKind::ChannelClosed,
            $t::SidecarGone => ErrorKind::SidecarGone,
            $t::Corrupt(_) => ErrorKind::Protocol,
            $t::Io(_) => ErrorKind::Io,
        }
    };
}

/// `os_error` and `close_code` of a data-path error (extra close-code variants first).
macro_rules! data_path_details {
    ($t:ident $(, $closed:ident)*) => {
        fn os_error(&self) -> Option<&io::Error> {
            match self {
                $t::Io(e) => Some(e),
                _ => None,
            }
        }

        fn close_code(&self) -> Option<CloseCode> {
            match self {
                $t::ChannelClosed(c) $(| $t::$closed(c))* => *c,
                _ => None,
            }
        }
    };
}

impl ClientError for ConnectError {
    fn kind(&self) -> ErrorKind {
        data_path_kind!(ConnectError, self, {
            ConnectError::Failed(c) => ErrorKind::of_close_code(*c),
            ConnectError::OverBudget(_) => ErrorKind::Exhausted,
            ConnectError::TimedOut(_) => ErrorKind::TimedOut,
        })
    }

    fn os_error(&self) -> Option<&io::Error> {
        match self {
            ConnectError::Io(e) => Some(e),
            _ => None,
        }
    }

    fn close_code(&self) -> Option<CloseCode> {
        match self {
            ConnectError::ChannelClosed(c) | ConnectError::Failed(c) => *c,
            ConnectError::OverBudget(b) => Some(b.close_code()),
            _ => None,
        }
    }
}

impl ClientError for SendError {
    fn kind(&self) -> ErrorKind {
        data_path_kind!(SendError, self, {
            SendError::WouldBlock => ErrorKind::WouldBlock,
            SendError::Empty | SendError::WrongChannel | SendError::BadCommitLength { .. } =>
                ErrorKind::InvalidArgument,
            SendError::LoanOutstanding => ErrorKind::WouldBlock,
            SendError::TooLarge { .. } => ErrorKind::MessageTooLarge,
            // A send on a closed flow says "closed" whatever closed it (the reason is in
            // `close_code`); the event that closed it tells reset from graceful.
            SendError::FlowClosed(_) | SendError::FlowClosing => ErrorKind::FlowClosed,
        })
    }
    data_path_details!(SendError, FlowClosed);
}

impl ClientError for CloseError {
    fn kind(&self) -> ErrorKind {
        data_path_kind!(CloseError, self, {
            CloseError::WrongChannel => ErrorKind::InvalidArgument,
        })
    }
    data_path_details!(CloseError);
}

impl ClientError for RecvError {
    fn kind(&self) -> ErrorKind {
        data_path_kind!(RecvError, self, {
            RecvError::BufferTooSmall { .. } => ErrorKind::BufferTooSmall,
            RecvError::ViewOutstanding => ErrorKind::WouldBlock,
        })
    }
    data_path_details!(RecvError);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use machnet_channel::ConnectBudget;

    fn io_err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn code_names_are_unique_and_round_trip() {
        let names: HashSet<_> = ErrorKind::ALL.iter().map(|k| k.code_name()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            assert!(k.code_name().starts_with("ERR_MACHNET_"), "{k:?}");
            assert_eq!(ErrorKind::from_code_name(k.code_name()), Some(k));
            assert_eq!(k.to_string(), k.code_name());
        }
        assert_eq!(ErrorKind::from_code_name("ECONNRESET"), None);
    }

    /// Kinds may share an errno only where the C ABI cannot tell them apart anyway; every
    /// other kind has an errno of its own.
    #[test]
    fn errnos_are_unique_except_documented_pairs() {
        let shared: [&[ErrorKind]; 4] = [
            &[ErrorKind::MessageTooLarge, ErrorKind::BufferTooSmall],
            &[ErrorKind::FlowReset, ErrorKind::SidecarGone],
            &[ErrorKind::WouldBlock, ErrorKind::Exhausted],
            &[ErrorKind::VersionMismatch, ErrorKind::Protocol],
        ];
        for a in ErrorKind::ALL {
            for b in ErrorKind::ALL {
                if a != b && a.errno() == b.errno() {
                    assert!(
                        shared.iter().any(|s| s.contains(&a) && s.contains(&b)),
                        "{a:?} and {b:?} share errno {}",
                        a.errno()
                    );
                }
            }
        }
    }

    #[test]
    fn close_codes_map_to_kinds() {
        use CloseCode::*;
        let cases = [
            (Some(Graceful), ErrorKind::FlowClosed),
            (Some(Refused), ErrorKind::ConnectionRefused),
            (Some(Reset), ErrorKind::FlowReset),
            (Some(Aborted), ErrorKind::FlowReset),
            (Some(TimedOut), ErrorKind::TimedOut),
            (Some(ProtocolViolation), ErrorKind::Protocol),
            (Some(MessageTooLarge), ErrorKind::MessageTooLarge),
            (Some(UnknownFlow), ErrorKind::FlowClosed),
            (Some(InvalidRequest), ErrorKind::InvalidArgument),
            (Some(Exhausted), ErrorKind::Exhausted),
            (Some(ChannelConnectLimit), ErrorKind::Exhausted),
            (Some(AppConnectLimit), ErrorKind::Exhausted),
            (Some(ConnectRateLimit), ErrorKind::Exhausted),
            (Some(ChannelViolation), ErrorKind::ChannelClosed),
            (Some(Shutdown), ErrorKind::SidecarGone),
            (Some(Detached), ErrorKind::ChannelClosed),
            (Some(PeerNotAllowed), ErrorKind::PermissionDenied),
            (None, ErrorKind::FlowClosed),
        ];
        for (code, kind) in cases {
            assert_eq!(ErrorKind::of_close_code(code), kind, "{code:?}");
        }
    }

    #[test]
    fn control_errors_map_to_kinds() {
        use ControlError::*;
        let cases = [
            (Malformed, ErrorKind::InvalidArgument),
            (Unauthorized, ErrorKind::PermissionDenied),
            (Version, ErrorKind::VersionMismatch),
            (NoHello, ErrorKind::Protocol),
            (NoSuchEngine, ErrorKind::InvalidArgument),
            (NoSuchChannel, ErrorKind::InvalidArgument),
            (PortInUse, ErrorKind::AddressInUse),
            (InvalidPort, ErrorKind::InvalidArgument),
            (Exhausted, ErrorKind::Exhausted),
            (Internal, ErrorKind::Refused),
            (ConnectionLimit, ErrorKind::Exhausted),
            (ChannelLimit, ErrorKind::Exhausted),
            (PortLimit, ErrorKind::Exhausted),
            (TimedOut, ErrorKind::Refused),
            (InvalidRequest, ErrorKind::InvalidArgument),
        ];
        for (code, kind) in cases {
            assert_eq!(ErrorKind::of_control_error(code), kind, "{code:?}");
            let e = RequestError::Refused {
                code,
                message: String::new(),
            };
            assert_eq!(e.kind(), kind);
        }
    }

    fn refused(code: ControlError) -> RequestError {
        RequestError::Refused {
            code,
            message: "no".into(),
        }
    }

    #[test]
    fn request_and_setup_errors_map_to_kinds() {
        let d = Duration::from_secs(1);
        let cases: Vec<(Box<dyn ClientError>, ErrorKind, i32)> = vec![
            (
                Box::new(RequestError::SidecarGone),
                ErrorKind::SidecarGone,
                libc::ECONNRESET,
            ),
            (
                Box::new(RequestError::TimedOut(d)),
                ErrorKind::TimedOut,
                libc::ETIMEDOUT,
            ),
            (
                Box::new(RequestError::Broken("x".into())),
                ErrorKind::Protocol,
                libc::EPROTO,
            ),
            (
                Box::new(RequestError::Protocol("x".into())),
                ErrorKind::Protocol,
                libc::EPROTO,
            ),
            (
                Box::new(RequestError::Io(io_err(libc::EBADF))),
                ErrorKind::Io,
                libc::EBADF,
            ),
            (
                Box::new(RequestError::Io(io::Error::other("no errno"))),
                ErrorKind::Io,
                libc::EIO,
            ),
            (
                Box::new(AttachError::Connect {
                    path: PathBuf::from("/x"),
                    source: io_err(libc::ECONNREFUSED),
                }),
                ErrorKind::SidecarUnreachable,
                libc::ECONNREFUSED,
            ),
            (
                Box::new(AttachError::Refused {
                    code: ControlError::Unauthorized,
                    message: "no".into(),
                }),
                ErrorKind::PermissionDenied,
                libc::EACCES,
            ),
            (
                Box::new(AttachError::Version { ours: 1, theirs: 2 }),
                ErrorKind::VersionMismatch,
                libc::EPROTO,
            ),
            (
                Box::new(AttachError::Request(RequestError::TimedOut(d))),
                ErrorKind::TimedOut,
                libc::ETIMEDOUT,
            ),
            (
                Box::new(OpenChannelError::Request(refused(
                    ControlError::ChannelLimit,
                ))),
                ErrorKind::Exhausted,
                libc::EAGAIN,
            ),
            (
                Box::new(OpenChannelError::BadDescriptors("x".into())),
                ErrorKind::Protocol,
                libc::EPROTO,
            ),
            (
                Box::new(OpenChannelError::Map(io_err(libc::ENOMEM))),
                ErrorKind::Io,
                libc::ENOMEM,
            ),
            (
                Box::new(ListenError::PortInUse(7)),
                ErrorKind::AddressInUse,
                libc::EADDRINUSE,
            ),
            (
                Box::new(ListenError::InvalidPort(0)),
                ErrorKind::InvalidArgument,
                libc::EINVAL,
            ),
            (
                Box::new(ListenError::Request(RequestError::SidecarGone)),
                ErrorKind::SidecarGone,
                libc::ECONNRESET,
            ),
        ];
        for (e, kind, errno) in cases {
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.errno(), errno, "{e}");
            assert_eq!(e.code_name(), kind.code_name(), "{e}");
        }
    }

    /// A connect over a sidecar budget is `Exhausted` (EAGAIN, `ERR_MACHNET_EXHAUSTED`) in every
    /// binding, and its message names the limit and the option that sets it.
    #[test]
    fn over_budget_connects_are_exhausted_and_name_their_option() {
        for b in ConnectBudget::ALL {
            let e = ConnectError::OverBudget(b);
            assert_eq!(e.kind(), ErrorKind::Exhausted);
            assert_eq!(e.errno(), libc::EAGAIN);
            assert_eq!(e.code_name(), "ERR_MACHNET_EXHAUSTED");
            assert_eq!(e.close_code(), Some(b.close_code()));
            let msg = e.to_string();
            assert!(msg.contains(b.option()), "{msg}");
            assert!(
                msg.contains("in progress") || msg.contains("faster"),
                "{msg}"
            );
        }
    }

    #[test]
    fn data_path_errors_map_to_kinds() {
        let reset = Some(CloseCode::Reset);
        let cases: Vec<(Box<dyn ClientError>, ErrorKind, Option<CloseCode>)> = vec![
            (Box::new(SendError::WouldBlock), ErrorKind::WouldBlock, None),
            (Box::new(SendError::Empty), ErrorKind::InvalidArgument, None),
            (
                Box::new(SendError::TooLarge { len: 9, max: 8 }),
                ErrorKind::MessageTooLarge,
                None,
            ),
            (
                Box::new(SendError::FlowClosed(reset)),
                ErrorKind::FlowClosed,
                reset,
            ),
            (
                Box::new(SendError::FlowClosing),
                ErrorKind::FlowClosed,
                None,
            ),
            (
                Box::new(SendError::WrongChannel),
                ErrorKind::InvalidArgument,
                None,
            ),
            (
                Box::new(SendError::ChannelClosed(reset)),
                ErrorKind::ChannelClosed,
                reset,
            ),
            (
                Box::new(SendError::SidecarGone),
                ErrorKind::SidecarGone,
                None,
            ),
            (
                Box::new(SendError::Corrupt("x".into())),
                ErrorKind::Protocol,
                None,
            ),
            (
                Box::new(SendError::Io(io_err(libc::EIO))),
                ErrorKind::Io,
                None,
            ),
            (
                Box::new(CloseError::WrongChannel),
                ErrorKind::InvalidArgument,
                None,
            ),
            (
                Box::new(CloseError::ChannelClosed(None)),
                ErrorKind::ChannelClosed,
                None,
            ),
            (
                Box::new(CloseError::SidecarGone),
                ErrorKind::SidecarGone,
                None,
            ),
            (
                Box::new(CloseError::Corrupt("x".into())),
                ErrorKind::Protocol,
                None,
            ),
            (
                Box::new(CloseError::Io(io_err(libc::EIO))),
                ErrorKind::Io,
                None,
            ),
            (
                Box::new(RecvError::BufferTooSmall {
                    needed: 2,
                    available: 1,
                }),
                ErrorKind::BufferTooSmall,
                None,
            ),
            (
                Box::new(RecvError::ChannelClosed(reset)),
                ErrorKind::ChannelClosed,
                reset,
            ),
            (
                Box::new(RecvError::SidecarGone),
                ErrorKind::SidecarGone,
                None,
            ),
            (
                Box::new(RecvError::Corrupt("x".into())),
                ErrorKind::Protocol,
                None,
            ),
            (
                Box::new(RecvError::Io(io_err(libc::EIO))),
                ErrorKind::Io,
                None,
            ),
            (
                Box::new(ConnectError::Failed(Some(CloseCode::Refused))),
                ErrorKind::ConnectionRefused,
                Some(CloseCode::Refused),
            ),
            (
                Box::new(ConnectError::Failed(reset)),
                ErrorKind::FlowReset,
                reset,
            ),
            (
                Box::new(ConnectError::OverBudget(ConnectBudget::ChannelInProgress)),
                ErrorKind::Exhausted,
                Some(CloseCode::ChannelConnectLimit),
            ),
            (
                Box::new(ConnectError::OverBudget(ConnectBudget::AppInProgress)),
                ErrorKind::Exhausted,
                Some(CloseCode::AppConnectLimit),
            ),
            (
                Box::new(ConnectError::OverBudget(ConnectBudget::AppStartRate)),
                ErrorKind::Exhausted,
                Some(CloseCode::ConnectRateLimit),
            ),
            (
                Box::new(ConnectError::TimedOut(Duration::from_secs(1))),
                ErrorKind::TimedOut,
                None,
            ),
            (
                Box::new(ConnectError::ChannelClosed(None)),
                ErrorKind::ChannelClosed,
                None,
            ),
            (
                Box::new(ConnectError::SidecarGone),
                ErrorKind::SidecarGone,
                None,
            ),
            (
                Box::new(ConnectError::Corrupt("x".into())),
                ErrorKind::Protocol,
                None,
            ),
            (
                Box::new(ConnectError::Io(io_err(libc::EIO))),
                ErrorKind::Io,
                None,
            ),
        ];
        for (e, kind, code) in cases {
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.close_code(), code, "{e}");
            if e.os_error().is_none() {
                assert_eq!(e.errno(), kind.errno(), "{e}");
            }
        }
    }
}
