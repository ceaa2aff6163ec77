//! Errors at the C boundary: an errno code plus a detailed, thread-local message
//! (`machnet_last_error`), and the panic barrier every exported function goes through.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

use machnet_client::{
    AttachError, CloseCode, CloseError, ConnectError, ListenError, OpenChannelError, RecvError,
    RequestError, SendError,
};

/// A failed operation: the errno value to report and a human-readable explanation.
#[derive(Debug)]
pub(crate) struct Error {
    pub code: c_int,
    pub msg: String,
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: c_int, msg: impl Into<String>) -> Error {
        Error {
            code,
            msg: msg.into(),
        }
    }
}

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `e` as this thread's last error and sets `errno`.
pub(crate) fn set(e: &Error) {
    let text = CString::new(e.msg.replace('\0', " ")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = text);
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e.code };
}

/// This thread's last error message (valid until the thread's next failing call).
pub(crate) fn last_message() -> *const c_char {
    LAST.with(|l| l.borrow().as_ptr())
}

/// Environment variable: when set to anything but "" or "0", `machnet_init` failures are also
/// printed on stderr (a library stays silent unless asked; `machnet_last_error` always tells).
pub(crate) const LOG_ENV: &str = "MACHNET_LOG";

/// Prints this thread's last error on stderr, prefixed with `what`, if [`LOG_ENV`] asks for it.
/// Keeps `errno` as the failed call set it.
pub(crate) fn log_if_asked(what: &str) {
    let asked = std::env::var_os(LOG_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if !asked {
        return;
    }
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    // Not eprintln!: it panics when stderr is closed; and no panic may cross the boundary.
    let _ = catch_unwind(|| {
        let msg = LAST.with(|l| l.borrow().to_string_lossy().into_owned());
        let _ = writeln!(std::io::stderr(), "libmachnet: {what} failed: {msg}");
    });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Runs `f`, turning an error into `errno` + last message + `fail`, and a panic into `EIO`:
/// no Rust panic crosses the C boundary.
pub(crate) fn guard<T>(fail: T, f: impl FnOnce() -> Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set(&e);
            fail
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set(&Error::new(
                libc::EIO,
                format!("internal error in libmachnet (please report): {what}"),
            ));
            fail
        }
    }
}

fn io(e: &std::io::Error) -> c_int {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn close_code(c: Option<CloseCode>) -> c_int {
    match c {
        Some(CloseCode::Refused) => libc::ECONNREFUSED,
        Some(CloseCode::TimedOut) => libc::ETIMEDOUT,
        Some(CloseCode::Reset) | Some(CloseCode::Aborted) => libc::ECONNRESET,
        Some(CloseCode::Exhausted) => libc::EAGAIN,
        Some(CloseCode::MessageTooLarge) => libc::EMSGSIZE,
        Some(CloseCode::ProtocolViolation) => libc::EPROTO,
        _ => libc::ECONNABORTED,
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        let code = match &e {
            RequestError::SidecarGone | RequestError::Broken(_) => libc::ECONNRESET,
            RequestError::TimedOut(_) => libc::ETIMEDOUT,
            RequestError::Refused { .. } => libc::EPERM,
            RequestError::Protocol(_) => libc::EPROTO,
            RequestError::Io(io_err) => io(io_err),
            _ => libc::EIO,
        };
        Error::new(code, e.to_string())
    }
}

impl From<AttachError> for Error {
    fn from(e: AttachError) -> Self {
        let code = match &e {
            AttachError::Connect { source, .. } => io(source),
            AttachError::Refused { .. } => libc::EACCES,
            AttachError::Version { .. } => libc::EPROTO,
            AttachError::Request(r) => Error::from(clone_request(r)).code,
            _ => libc::EIO,
        };
        Error::new(code, e.to_string())
    }
}

/// `RequestError` is not `Clone`; rebuild one carrying the same errno.
fn clone_request(r: &RequestError) -> RequestError {
    match r {
        RequestError::SidecarGone => RequestError::SidecarGone,
        RequestError::TimedOut(t) => RequestError::TimedOut(*t),
        RequestError::Io(e) => RequestError::Io(std::io::Error::from_raw_os_error(io(e))),
        RequestError::Protocol(s) => RequestError::Protocol(s.clone()),
        other => RequestError::Broken(other.to_string()),
    }
}

impl From<OpenChannelError> for Error {
    fn from(e: OpenChannelError) -> Self {
        let code = match &e {
            OpenChannelError::Request(RequestError::Refused { .. }) => libc::ENOSPC,
            OpenChannelError::Request(r) => Error::from(clone_request(r)).code,
            OpenChannelError::Map(io_err) => io(io_err),
            _ => libc::EPROTO,
        };
        Error::new(code, e.to_string())
    }
}

impl From<ListenError> for Error {
    fn from(e: ListenError) -> Self {
        let code = match &e {
            ListenError::PortInUse(_) => libc::EADDRINUSE,
            ListenError::InvalidPort(_) => libc::EINVAL,
            ListenError::Request(r) => Error::from(clone_request(r)).code,
            _ => libc::EIO,
        };
        Error::new(code, e.to_string())
    }
}

macro_rules! data_path_error {
    ($t:ident { $($pat:pat => $code:expr),* $(,)? }) => {
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                let code = match &e {
                    $($pat => $code,)*
                    $t::ChannelClosed(_) => libc::ECONNABORTED,
                    $t::SidecarGone => libc::ECONNRESET,
                    $t::Corrupt(_) => libc::EPROTO,
                    $t::Io(io_err) => io(io_err),
                    _ => libc::EIO,
                };
                Error::new(code, e.to_string())
            }
        }
    };
}

data_path_error!(RecvError {
    RecvError::BufferTooSmall { .. } => libc::EMSGSIZE,
});
data_path_error!(SendError {
    SendError::WouldBlock => libc::EAGAIN,
    SendError::Empty => libc::EINVAL,
    SendError::TooLarge { .. } => libc::EMSGSIZE,
    SendError::FlowClosed(_) | SendError::WrongChannel => libc::ENOTCONN,
    SendError::FlowClosing => libc::EPIPE,
});
data_path_error!(CloseError {
    CloseError::WrongChannel => libc::ENOTCONN,
});
data_path_error!(ConnectError {
    ConnectError::Failed(c) => close_code(*c),
    ConnectError::TimedOut(_) => libc::ETIMEDOUT,
});

/// Machnet's explanation of an errno value as this library uses it.
pub(crate) fn describe(code: c_int) -> &'static std::ffi::CStr {
    match code {
        0 => c"success",
        libc::EINVAL => c"invalid argument (null pointer, bad length, bad IP address string or port)",
        libc::EBADF => c"not a live channel context (never attached, or already detached)",
        libc::ENOTCONN => c"Machnet is not initialised (call machnet_init), or the flow is not open on this channel",
        libc::EMSGSIZE => c"message too large, or the next message does not fit the buffer (machnet_peek tells its size; it stays queued)",
        libc::EADDRINUSE => c"the Machnet port is already listened on",
        libc::EADDRNOTAVAIL => c"the local IP address is not the sidecar's address",
        libc::ECONNREFUSED => c"connection refused by the remote host (or the sidecar's socket refused us)",
        libc::ETIMEDOUT => c"timed out",
        libc::ECONNRESET => c"the Machnet sidecar is gone, or the flow was reset",
        libc::ECONNABORTED => c"the channel or flow was closed by the sidecar",
        libc::EPIPE => c"this application already closed the flow",
        libc::EPROTO => c"the sidecar broke the Machnet protocol, or speaks another version",
        libc::EAGAIN => c"resource temporarily unavailable (try again)",
        libc::EINTR => c"interrupted by machnet_interrupt",
        libc::EACCES => c"the sidecar refused this user or group",
        libc::EPERM => c"the sidecar refused the request",
        libc::ENOENT => c"no Machnet sidecar socket at that path (is the sidecar running? see MACHNET_SOCKET)",
        libc::ENOSPC => c"the sidecar has no channel to give (resource limit)",
        libc::EIO => c"internal or I/O error (machnet_last_error tells more)",
        _ => c"unknown error code",
    }
}
