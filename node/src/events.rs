//! Flow events: what the receive side learns about flows besides their messages, and how it
//! reaches JavaScript.
//!
//! The shared channel queues the flow events its receives pass over (in ring order: a flow's
//! end comes after its last message); the receiver takes them after each look ([`flow_event`])
//! and emits them on the flows' JavaScript objects, which index.js
//! makes `EventEmitter`s, following `net.Socket`:
//!
//! * `'end'`: the peer closed its side gracefully (every message it sent was delivered before).
//!   This side is then closed too, as a `net.Socket` with `allowHalfOpen: false` does;
//! * `'error'` (only if the flow has an `'error'` listener; an unhandled flow error does not
//!   throw): the flow ended abnormally, with an `Error` whose `code` is the errno name of the
//!   reason (`ECONNRESET`, `ETIMEDOUT`, …) and whose `flow` is the flow;
//! * `'close'` `(hadError, error?)`: the flow is gone (always last).

use std::ptr;

use machnet::{CloseCode, Event};
use napi::sys;

use crate::errors::JsErr;

/// A flow event waiting to be emitted.
pub(crate) enum FlowEvent {
    /// The peer closed its side gracefully (`'end'`).
    End(machnet::Flow),
    /// The flow is gone (`'close'`, after `'error'` for an abnormal end).
    Closed(machnet::Flow, Option<CloseCode>),
    /// The channel was closed or the sidecar is gone: every flow of the channel that is still
    /// open ends (`'close'`; with an error for the sidecar's death).
    ChannelEnded(Option<JsErr>),
}

/// The flow event JavaScript sees for `ev`, if any. The shared channel has already closed this
/// side of a flow the peer closed (as a `net.Socket` with `allowHalfOpen: false` does).
/// Accepted flows are named by their first message; a failed request ends with its flow's
/// `Closed`.
pub(crate) fn flow_event(ev: Event) -> Option<FlowEvent> {
    match ev {
        Event::PeerClosed { flow } => Some(FlowEvent::End(flow)),
        Event::Closed { flow, reason } => Some(FlowEvent::Closed(flow, reason)),
        _ => None,
    }
}

/// The error of a flow that ended for `reason`, or `None` for an orderly end (graceful, or
/// closed / aborted by this application).
pub(crate) fn flow_error(flow: &machnet::Flow, reason: Option<CloseCode>) -> Option<JsErr> {
    use CloseCode as C;
    let code = match reason {
        None => "ECONNABORTED",
        Some(C::Graceful | C::Aborted | C::Detached) => return None,
        Some(C::Reset) => "ECONNRESET",
        Some(C::TimedOut) => "ETIMEDOUT",
        Some(C::Refused) => "ECONNREFUSED",
        Some(C::MessageTooLarge) => "EMSGSIZE",
        Some(C::PeerNotAllowed) => "EACCES",
        Some(C::Exhausted | C::ChannelConnectLimit | C::AppConnectLimit | C::ConnectRateLimit) => {
            "ENOBUFS"
        }
        Some(C::Shutdown) => "ESHUTDOWN",
        Some(C::ProtocolViolation | C::UnknownFlow | C::InvalidRequest | C::ChannelViolation) => {
            "EPROTO"
        }
    };
    let why = reason.map_or(
        "closed for a reason this library does not know",
        C::description,
    );
    Some(JsErr::new(code, format!("{flow}: {why}")))
}

/// Calls `target[method](...args)` if it is a function; returns its result. An exception thrown
/// by the method (an event listener) is reported as uncaught, as Node does for listeners of
/// I/O events.
///
/// # Safety
/// On the JavaScript thread, inside a handle scope, with values of `env`.
pub(crate) unsafe fn call_method(
    env: sys::napi_env,
    target: sys::napi_value,
    method: &std::ffi::CStr,
    args: &[sys::napi_value],
) -> Option<sys::napi_value> {
    // SAFETY: per the function's contract.
    unsafe {
        let mut f = ptr::null_mut();
        if sys::napi_get_named_property(env, target, method.as_ptr(), &mut f)
            != sys::Status::napi_ok
        {
            return None;
        }
        let mut t = 0;
        if sys::napi_typeof(env, f, &mut t) != sys::Status::napi_ok
            || t != sys::ValueType::napi_function
        {
            return None;
        }
        let mut out = ptr::null_mut();
        let status = sys::napi_call_function(env, target, f, args.len(), args.as_ptr(), &mut out);
        if status == sys::Status::napi_ok {
            return Some(out);
        }
        let mut pending = false;
        sys::napi_is_exception_pending(env, &mut pending);
        if pending {
            let mut exc = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(env, &mut exc);
            sys::napi_fatal_exception(env, exc);
        }
        None
    }
}

/// `target.emit(name, ...args)`.
///
/// # Safety
/// As [`call_method`].
pub(crate) unsafe fn emit(
    env: sys::napi_env,
    target: sys::napi_value,
    name: &std::ffi::CStr,
    args: &[sys::napi_value],
) {
    // SAFETY: per the function's contract.
    unsafe {
        let mut argv = Vec::with_capacity(args.len() + 1);
        let mut n = ptr::null_mut();
        sys::napi_create_string_utf8(env, name.as_ptr(), name.count_bytes() as isize, &mut n);
        argv.push(n);
        argv.extend_from_slice(args);
        call_method(env, target, c"emit", &argv);
    }
}

/// Whether `target` has listeners for `name` (`target.listenerCount(name) > 0`).
///
/// # Safety
/// As [`call_method`].
pub(crate) unsafe fn has_listeners(
    env: sys::napi_env,
    target: sys::napi_value,
    name: &std::ffi::CStr,
) -> bool {
    // SAFETY: per the function's contract.
    unsafe {
        let mut n = ptr::null_mut();
        sys::napi_create_string_utf8(env, name.as_ptr(), name.count_bytes() as isize, &mut n);
        let Some(count) = call_method(env, target, c"listenerCount", &[n]) else {
            return false;
        };
        let mut c = 0.0;
        sys::napi_get_value_double(env, count, &mut c) == sys::Status::napi_ok && c > 0.0
    }
}
