//! Errors as JavaScript `Error` objects with stable `.code` values.
//!
//! Every failure is first described by a [`JsErr`] (plain data, `Send`, built on any thread) and
//! turned into a JavaScript error on the JavaScript thread: `Error`, `TypeError` or `RangeError`
//! with `code` set through `napi_create_error`, so `err.code` is one of the constants below.

use std::ptr;

use machnet::{
    AttachError, CloseCode, CloseError, ConnectError, ListenError, OpenChannelError, RecvError,
    RequestError, SendError,
};
use napi::bindgen_prelude::{ToNapiValue, Unknown};
use napi::{sys, Env};

/// The sidecar's control socket could not be reached (not running, wrong path, permissions).
pub const SIDECAR_UNREACHABLE: &str = "ERR_MACHNET_SIDECAR_UNREACHABLE";
/// The sidecar refused the request (unauthorised user, unknown engine, out of resources...).
pub const REFUSED: &str = "ERR_MACHNET_REFUSED";
/// The sidecar exited or crashed (its control connection hung up).
pub const SIDECAR_GONE: &str = "ERR_MACHNET_SIDECAR_GONE";
/// Another channel already listens on the port.
pub const PORT_IN_USE: &str = "ERR_MACHNET_PORT_IN_USE";
/// The port cannot be listened on (zero, or in the sidecar's ephemeral range).
pub const INVALID_PORT: &str = "ERR_MACHNET_INVALID_PORT";
/// The flow could not be established (refused, no answer, no ephemeral port left...).
pub const CONNECT_FAILED: &str = "ERR_MACHNET_CONNECT_FAILED";
/// The operation did not complete within its timeout.
pub const TIMEOUT: &str = "ERR_MACHNET_TIMEOUT";
/// The flow is closed, or this application already closed it.
pub const FLOW_CLOSED: &str = "ERR_MACHNET_FLOW_CLOSED";
/// The flow belongs to another channel.
pub const WRONG_CHANNEL: &str = "ERR_MACHNET_WRONG_CHANNEL";
/// Messages must hold at least one byte.
pub const EMPTY_MESSAGE: &str = "ERR_MACHNET_EMPTY_MESSAGE";
/// The message is larger than the channel's `maxMessageLen`.
pub const MESSAGE_TOO_LARGE: &str = "ERR_MACHNET_MESSAGE_TOO_LARGE";
/// The channel was closed (by `close()`, or by the sidecar).
pub const CHANNEL_CLOSED: &str = "ERR_MACHNET_CHANNEL_CLOSED";
/// The `Machnet` (the attachment) was closed with `close()`.
pub const CLOSED: &str = "ERR_MACHNET_CLOSED";
/// The sidecar broke the channel or control protocol.
pub const PROTOCOL: &str = "ERR_MACHNET_PROTOCOL";
/// A system call failed.
pub const IO: &str = "ERR_MACHNET_IO";
/// An argument has the wrong type (Node's own code; a `TypeError`).
pub const INVALID_ARG_TYPE: &str = "ERR_INVALID_ARG_TYPE";
/// An argument has the right type but an unusable value (Node's own code; a `TypeError`).
pub const INVALID_ARG_VALUE: &str = "ERR_INVALID_ARG_VALUE";
/// A number is out of range, negative or not an integer (Node's own code; a `RangeError`).
pub const OUT_OF_RANGE: &str = "ERR_OUT_OF_RANGE";

/// Which JavaScript constructor the error gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Error,
    Type,
    Range,
}

/// A failure waiting to become a JavaScript error.
#[derive(Debug, Clone)]
pub struct JsErr {
    kind: Kind,
    code: &'static str,
    message: String,
}

pub type JsResult<T> = Result<T, JsErr>;

impl JsErr {
    /// An `Error` with `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        JsErr {
            kind: Kind::Error,
            code,
            message: message.into(),
        }
    }

    /// A `TypeError` (`ERR_INVALID_ARG_TYPE`) naming the argument and what it must be.
    pub fn arg_type(name: &str, expected: &str) -> Self {
        JsErr {
            kind: Kind::Type,
            code: INVALID_ARG_TYPE,
            message: format!("The \"{name}\" argument must be {expected}"),
        }
    }

    /// A `TypeError` (`ERR_INVALID_ARG_VALUE`).
    pub fn arg_value(name: &str, why: &str) -> Self {
        JsErr {
            kind: Kind::Type,
            code: INVALID_ARG_VALUE,
            message: format!("The \"{name}\" argument {why}"),
        }
    }

    /// A `RangeError` (`ERR_OUT_OF_RANGE`).
    pub fn range(name: &str, range: &str, got: f64) -> Self {
        JsErr {
            kind: Kind::Range,
            code: OUT_OF_RANGE,
            message: format!(
                "The value of \"{name}\" is out of range. It must be {range}. Received {got}"
            ),
        }
    }

    /// The error's `code`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The channel was closed.
    pub fn channel_closed(reason: Option<CloseCode>) -> Self {
        let why = match reason {
            Some(CloseCode::Detached) | None => "closed by this application".to_string(),
            Some(c) => format!("closed by the sidecar: {}", c.description()),
        };
        JsErr::new(CHANNEL_CLOSED, format!("the channel is {why}"))
    }

    /// The `Machnet` was closed.
    pub fn machnet_closed() -> Self {
        JsErr::new(CLOSED, "this Machnet was closed (close() was called)")
    }

    /// Creates the JavaScript error object.
    ///
    /// # Safety
    /// `env` must be the current JavaScript environment, on its thread.
    unsafe fn to_value(&self, env: sys::napi_env) -> napi::Result<sys::napi_value> {
        let code = unsafe { <&str as ToNapiValue>::to_napi_value(env, self.code)? };
        let msg = unsafe { <&str as ToNapiValue>::to_napi_value(env, self.message.as_str())? };
        let mut out = ptr::null_mut();
        let status = unsafe {
            match self.kind {
                Kind::Error => sys::napi_create_error(env, code, msg, &mut out),
                Kind::Type => sys::napi_create_type_error(env, code, msg, &mut out),
                Kind::Range => sys::napi_create_range_error(env, code, msg, &mut out),
            }
        };
        if status != sys::Status::napi_ok || out.is_null() {
            return Err(napi::Error::from_reason(format!(
                "{}: {} (could not create the error object)",
                self.code, self.message
            )));
        }
        Ok(out)
    }

    /// Converts into a napi error that, thrown or used to reject a promise, is exactly the
    /// JavaScript error object built here (with its `code`).
    pub fn into_napi(self, env: &Env) -> napi::Error {
        // SAFETY: called on the JavaScript thread with its environment.
        match unsafe { self.to_value(env.raw()) } {
            Ok(v) => napi::Error::from(unsafe { Unknown::from_raw_unchecked(env.raw(), v) }),
            Err(e) => e,
        }
    }

    /// The error as a JavaScript value (to reject a promise with).
    pub fn into_value(self, env: &Env) -> napi::Result<sys::napi_value> {
        // SAFETY: as above.
        unsafe { self.to_value(env.raw()) }
    }
}

fn request(e: RequestError) -> JsErr {
    let msg = e.to_string();
    match e {
        RequestError::SidecarGone => JsErr::new(SIDECAR_GONE, msg),
        RequestError::TimedOut(_) => JsErr::new(TIMEOUT, msg),
        RequestError::Refused { .. } => JsErr::new(REFUSED, msg),
        RequestError::Io(_) => JsErr::new(IO, msg),
        _ => JsErr::new(PROTOCOL, msg),
    }
}

impl From<RequestError> for JsErr {
    fn from(e: RequestError) -> Self {
        request(e)
    }
}

impl From<AttachError> for JsErr {
    fn from(e: AttachError) -> Self {
        let msg = e.to_string();
        match e {
            AttachError::Connect { .. } => JsErr::new(SIDECAR_UNREACHABLE, msg),
            AttachError::Refused { .. } | AttachError::Version { .. } => JsErr::new(REFUSED, msg),
            AttachError::Request(r) => request(r),
            _ => JsErr::new(PROTOCOL, msg),
        }
    }
}

impl From<OpenChannelError> for JsErr {
    fn from(e: OpenChannelError) -> Self {
        let msg = e.to_string();
        match e {
            OpenChannelError::Request(r) => request(r),
            OpenChannelError::Map(_) => JsErr::new(IO, msg),
            _ => JsErr::new(PROTOCOL, msg),
        }
    }
}

impl From<ListenError> for JsErr {
    fn from(e: ListenError) -> Self {
        let msg = e.to_string();
        match e {
            ListenError::PortInUse(_) => JsErr::new(PORT_IN_USE, msg),
            ListenError::InvalidPort(_) => JsErr::new(INVALID_PORT, msg),
            ListenError::Request(r) => request(r),
            _ => JsErr::new(PROTOCOL, msg),
        }
    }
}

impl From<ConnectError> for JsErr {
    fn from(e: ConnectError) -> Self {
        let msg = e.to_string();
        match e {
            ConnectError::Failed(_) => JsErr::new(CONNECT_FAILED, msg),
            ConnectError::TimedOut(_) => JsErr::new(TIMEOUT, msg),
            ConnectError::ChannelClosed(c) => JsErr::channel_closed(c),
            ConnectError::SidecarGone => JsErr::new(SIDECAR_GONE, msg),
            ConnectError::Io(_) => JsErr::new(IO, msg),
            _ => JsErr::new(PROTOCOL, msg),
        }
    }
}

impl From<SendError> for JsErr {
    fn from(e: SendError) -> Self {
        let msg = e.to_string();
        match e {
            SendError::Empty => JsErr::new(EMPTY_MESSAGE, msg),
            SendError::TooLarge { .. } => JsErr::new(MESSAGE_TOO_LARGE, msg),
            SendError::FlowClosed(_) | SendError::FlowClosing => JsErr::new(FLOW_CLOSED, msg),
            SendError::WrongChannel => JsErr::new(WRONG_CHANNEL, msg),
            SendError::ChannelClosed(c) => JsErr::channel_closed(c),
            SendError::SidecarGone => JsErr::new(SIDECAR_GONE, msg),
            SendError::Io(_) => JsErr::new(IO, msg),
            _ => JsErr::new(PROTOCOL, msg),
        }
    }
}

impl From<CloseError> for JsErr {
    fn from(e: CloseError) -> Self {
        let msg = e.to_string();
        match e {
            CloseError::WrongChannel => JsErr::new(WRONG_CHANNEL, msg),
            CloseError::ChannelClosed(c) => JsErr::channel_closed(c),
            CloseError::SidecarGone => JsErr::new(SIDECAR_GONE, msg),
            CloseError::Io(_) => JsErr::new(IO, msg),
            _ => JsErr::new(PROTOCOL, msg),
        }
    }
}

impl From<RecvError> for JsErr {
    fn from(e: RecvError) -> Self {
        let msg = e.to_string();
        match e {
            RecvError::ChannelClosed(c) => JsErr::channel_closed(c),
            RecvError::SidecarGone => JsErr::new(SIDECAR_GONE, msg),
            RecvError::Io(_) => JsErr::new(IO, msg),
            _ => JsErr::new(PROTOCOL, msg),
        }
    }
}

impl From<std::io::Error> for JsErr {
    fn from(e: std::io::Error) -> Self {
        JsErr::new(IO, e.to_string())
    }
}
