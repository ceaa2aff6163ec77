//! Errors at the C boundary: an errno code plus a detailed, thread-local message
//! (`machnet_last_error`), and the panic barrier every exported function goes through.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

use machnet_client::{ClientError, ErrorKind};

/// A failed operation: the errno value to report, its kind (whose code name
/// `machnet_last_error_code` reports) and a human-readable explanation.
#[derive(Debug)]
pub(crate) struct Error {
    pub code: c_int,
    pub kind: ErrorKind,
    pub msg: String,
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A failure this library detected itself, reported as `code`.
    pub(crate) fn new(code: c_int, msg: impl Into<String>) -> Error {
        Error {
            code,
            kind: kind_of_own_errno(code),
            msg: msg.into(),
        }
    }
}

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
    static LAST_CODE: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `e` as this thread's last error and sets `errno`.
pub(crate) fn set(e: &Error) {
    let text = CString::new(e.msg.replace('\0', " ")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = text);
    let code = CString::new(e.kind.code_name()).unwrap_or_default();
    LAST_CODE.with(|l| *l.borrow_mut() = code);
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e.code };
}

/// This thread's last error message (valid until the thread's next failing call).
pub(crate) fn last_message() -> *const c_char {
    LAST.with(|l| l.borrow().as_ptr())
}

/// The code name of this thread's last error ("" if none; valid until its next failing call).
pub(crate) fn last_code_name() -> *const c_char {
    LAST_CODE.with(|l| l.borrow().as_ptr())
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

impl<E: ClientError> From<E> for Error {
    fn from(e: E) -> Self {
        Error {
            code: e.errno(),
            kind: e.kind(),
            msg: e.to_string(),
        }
    }
}

/// The kind of a failure this library detects itself (argument checks, handles, waits).
fn kind_of_own_errno(code: c_int) -> ErrorKind {
    match code {
        libc::EINVAL | libc::EADDRNOTAVAIL => ErrorKind::InvalidArgument,
        libc::EBADF => ErrorKind::ChannelClosed,
        libc::ENOTCONN | libc::EPIPE => ErrorKind::FlowClosed,
        libc::EMSGSIZE => ErrorKind::MessageTooLarge,
        libc::EINTR => ErrorKind::Interrupted,
        libc::ETIMEDOUT => ErrorKind::TimedOut,
        libc::EMFILE | libc::EAGAIN => ErrorKind::Exhausted,
        libc::ENOENT => ErrorKind::SidecarUnreachable,
        // A wait that sees the control connection hang up: the sidecar is gone.
        libc::ECONNRESET => ErrorKind::SidecarGone,
        _ => ErrorKind::Io,
    }
}

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
        libc::EAGAIN => c"resource temporarily unavailable, or the sidecar ran out of channels, ports or connections (try again)",
        libc::EINTR => c"interrupted by machnet_interrupt",
        libc::EBUSY => c"a send loan or borrowed message is out on this channel (commit, cancel or release it first)",
        libc::EACCES => c"the sidecar refused this user or group, or (encryption) the remote host is not in its allow-list of peer keys",
        libc::EPERM => c"the sidecar refused the request",
        libc::ENOENT => c"no Machnet sidecar socket at that path (is the sidecar running? see MACHNET_SOCKET)",
        libc::EIO => c"internal or I/O error (machnet_last_error tells more)",
        _ => c"unknown error code",
    }
}
