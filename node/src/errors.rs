//! Errors as JavaScript `Error` objects with stable `.code` values.
//!
//! Every failure is first described by a [`JsErr`] (plain data, `Send`, built on any thread) and
//! turned into a JavaScript error on the JavaScript thread: `Error`, `TypeError` or `RangeError`
//! with `code` set through `napi_create_error`: a client error's `ErrorKind::code_name` (the same
//! in every binding), or one of this package's own codes below.

use std::ptr;

use machnet::{ClientError, CloseCode, ErrorKind};
use napi::bindgen_prelude::{ToNapiValue, Unknown};
use napi::{sys, Env};

// The codes of the error model (`ErrorKind::code_name`, the same in every binding) that this
// package names itself.
/// The sidecar exited or crashed (its control connection hung up).
pub const SIDECAR_GONE: &str = ErrorKind::SidecarGone.code_name();
/// The operation did not complete within its timeout.
pub const TIMEOUT: &str = ErrorKind::TimedOut.code_name();
/// The channel was closed (by `close()`, or by the sidecar).
pub const CHANNEL_CLOSED: &str = ErrorKind::ChannelClosed.code_name();
/// A system call failed.
pub const IO: &str = ErrorKind::Io.code_name();
// This package's own codes.
/// The `Machnet` (the attachment) was closed with `close()`.
pub const CLOSED: &str = "ERR_MACHNET_CLOSED";
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

    /// A system call failed.
    pub fn io(e: std::io::Error) -> Self {
        JsErr::new(IO, e.to_string())
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

/// Every client error: `code` is its kind's code name (`ChannelClosed` keeps this package's
/// wording of who closed the channel).
impl<E: ClientError> From<E> for JsErr {
    fn from(e: E) -> Self {
        match e.kind() {
            ErrorKind::ChannelClosed => JsErr::channel_closed(e.close_code()),
            kind => JsErr::new(kind.code_name(), e.to_string()),
        }
    }
}
