//! The two calls every message makes, `recv()` and `trySend(flow, data)`, as plain Node-API
//! callbacks. napi-rs's generated glue for a method (tracking the borrow of `this`, building
//! the call info) costs about as much as these calls' own work: ~2,500 instructions per call
//! (callgrind). index.js installs these on `Channel.prototype` in place of the generated ones
//! (`_fastMethods`); they behave exactly the same (the same code runs behind both).

use std::ffi::c_void;
use std::ptr;

use napi::bindgen_prelude::{TypeTag, Unknown};
use napi::{sys, Env};

use crate::errors::{JsErr, JsResult};
use crate::Channel;

/// `{ recv, trySend }`: the functions index.js puts on `Channel.prototype`.
pub fn methods(env: &Env) -> napi::Result<sys::napi_value> {
    let raw = env.raw();
    let mut obj = ptr::null_mut();
    // SAFETY: napi calls on the JavaScript thread with valid out-pointers; the callbacks are
    // `extern "C"` functions of this module, valid for the life of the process.
    unsafe {
        napi::check_status!(sys::napi_create_object(raw, &mut obj))?;
        for (name, cb) in [
            (c"recv", recv as Callback),
            (c"trySend", try_send as Callback),
        ] {
            let mut f = ptr::null_mut();
            napi::check_status!(sys::napi_create_function(
                raw,
                name.as_ptr(),
                name.count_bytes() as isize,
                Some(cb),
                ptr::null_mut(),
                &mut f,
            ))?;
            napi::check_status!(sys::napi_set_named_property(raw, obj, name.as_ptr(), f))?;
        }
    }
    Ok(obj)
}

type Callback = unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value;

/// `this` of a method call as a [`Channel`], and the first `N` arguments (missing ones are
/// `undefined`). A `this` that is not a `Channel` (`trySend.call({})`) is refused: the pointer
/// is only used after the class's type tag proved what the object wraps.
///
/// # Safety
/// A Node-API callback's `env` and `info`, on the JavaScript thread.
unsafe fn channel_call<'a, const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> JsResult<(&'a Channel, [sys::napi_value; N])> {
    let bad_this = || JsErr::arg_type("this", "an instance of Channel");
    let mut argc = N;
    let mut args = [ptr::null_mut(); N];
    let mut this = ptr::null_mut();
    let mut wrapped: *mut c_void = ptr::null_mut();
    let mut tagged = false;
    // SAFETY: the caller's guarantees; valid out-pointers (`args` holds `argc` values).
    unsafe {
        if sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            args.as_mut_ptr(),
            &mut this,
            ptr::null_mut(),
        ) != sys::Status::napi_ok
            || sys::napi_unwrap(env, this, &mut wrapped) != sys::Status::napi_ok
            || wrapped.is_null()
            || sys::napi_check_object_type_tag(env, this, &Channel::type_tag(), &mut tagged)
                != sys::Status::napi_ok
            || !tagged
        {
            return Err(bad_this());
        }
        // SAFETY: the type tag proved `this` wraps a `Channel` (napi-rs wraps the value
        // itself); it lives at least as long as `this`, which this call holds.
        Ok((&*wrapped.cast::<Channel>(), args))
    }
}

/// Throws `err` and returns nothing (what a Node-API callback returns after throwing).
///
/// # Safety
/// On the JavaScript thread, inside a Node-API callback of `env`.
unsafe fn throw(env: sys::napi_env, err: napi::Error) -> sys::napi_value {
    // SAFETY: the caller's guarantees.
    unsafe { napi::JsError::from(err).throw_into(env) };
    ptr::null_mut()
}

unsafe extern "C" fn recv(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let e = Env::from_raw(env);
    // SAFETY: a Node-API callback on the JavaScript thread.
    unsafe {
        match channel_call::<0>(env, info) {
            Ok((ch, [])) => ch.recv_raw(&e).unwrap_or_else(|err| throw(env, err)),
            Err(err) => throw(env, err.into_napi(&e)),
        }
    }
}

unsafe extern "C" fn try_send(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let e = Env::from_raw(env);
    // SAFETY: a Node-API callback on the JavaScript thread; the arguments are values of this
    // call, alive until it returns.
    unsafe {
        let sent = channel_call::<2>(env, info).and_then(|(ch, [flow, data])| {
            ch.try_send_now(
                &Unknown::from_raw_unchecked(env, flow),
                &Unknown::from_raw_unchecked(env, data),
            )
        });
        match sent {
            Ok(b) => {
                let mut v = ptr::null_mut();
                sys::napi_get_boolean(env, b, &mut v);
                v
            }
            Err(err) => throw(env, err.into_napi(&e)),
        }
    }
}
