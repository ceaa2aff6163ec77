//! Zero-copy messages for JavaScript: a [`Loan`] (room for one message in the channel's request
//! ring, written in place through a `Buffer` and committed) and a [`ZcMessage`] (a received
//! message lent in place as a `Buffer`).
//!
//! The `Buffer`s are external: they point into the channel memory. Each holds the shared
//! channel (which keeps that memory mapped) until it is garbage collected, so a `Buffer` used
//! too late never touches unmapped memory. When the loan or message ends (commit, cancel,
//! release) its `Buffer`'s `ArrayBuffer` is detached: the `Buffer` (and every view of the same
//! `ArrayBuffer`) becomes empty, so a late read finds nothing and a late write goes nowhere.
//! Copies (`Buffer.from(data)`) are the application's own.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use napi::bindgen_prelude::Unknown;
use napi::{sys, Env};
use napi_derive::napi;
use tokio::sync::oneshot;

use crate::errors::{JsErr, JsResult};
use crate::{int_arg, Raw, Shared};

const INVALID_ARGUMENT: &str = machnet::ErrorKind::InvalidArgument.code_name();

/// An external `Buffer` over `len` bytes at `ptr` (channel memory), holding `sc` until it is
/// collected; returns a strong reference to it.
fn external_buffer(
    env: sys::napi_env,
    ptr: *mut u8,
    len: usize,
    sc: &Arc<machnet::SharedChannel>,
) -> napi::Result<sys::napi_ref> {
    unsafe extern "C" fn finalize(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
        // SAFETY: `hint` is the box made below, finalized once.
        drop(unsafe { Box::from_raw(hint.cast::<Arc<machnet::SharedChannel>>()) });
    }
    let hint = Box::into_raw(Box::new(sc.clone()));
    let mut buf = ptr::null_mut();
    // SAFETY: napi calls on the JavaScript thread; the memory stays mapped while `hint` (the
    // shared channel) lives, which the finalizer keeps until the buffer is collected.
    unsafe {
        let status = sys::napi_create_external_buffer(
            env,
            len,
            ptr.cast(),
            Some(finalize),
            hint.cast(),
            &mut buf,
        );
        if status != sys::Status::napi_ok {
            drop(Box::from_raw(hint));
            return Err(napi::Error::new(
                napi::Status::GenericFailure,
                "cannot create an external Buffer over the channel memory",
            ));
        }
        let mut r = ptr::null_mut();
        napi::check_status!(sys::napi_create_reference(env, buf, 1, &mut r))?;
        Ok(r)
    }
}

/// The value behind reference `r`.
fn deref(env: sys::napi_env, r: sys::napi_ref) -> napi::Result<sys::napi_value> {
    let mut v = ptr::null_mut();
    // SAFETY: a reference of this environment.
    napi::check_status!(unsafe { sys::napi_get_reference_value(env, r, &mut v) })?;
    Ok(v)
}

/// Detaches the `ArrayBuffer` of the `Buffer` behind `r` (it becomes empty everywhere).
fn detach(env: sys::napi_env, r: sys::napi_ref) {
    // SAFETY: napi calls on the JavaScript thread; a failure leaves the buffer attached (its
    // memory stays mapped regardless).
    unsafe {
        let Ok(buf) = deref(env, r) else { return };
        let (mut kind, mut len, mut data) = (0, 0, ptr::null_mut());
        let (mut ab, mut offset) = (ptr::null_mut(), 0);
        if sys::napi_get_typedarray_info(
            env,
            buf,
            &mut kind,
            &mut len,
            &mut data,
            &mut ab,
            &mut offset,
        ) == sys::Status::napi_ok
            && !ab.is_null()
        {
            sys::napi_detach_arraybuffer(env, ab);
        }
    }
}

fn delete_ref(env: sys::napi_env, r: sys::napi_ref) {
    if !r.is_null() {
        // SAFETY: a reference created by this module on this environment, deleted once.
        unsafe { sys::napi_delete_reference(env, r) };
    }
}

/// A loan's place in its channel's send order (module `lib`: `sends_waiting`, `send_tail`):
/// sends made after the loan wait for it to end.
pub(crate) struct SendSlot {
    shared: Arc<Shared>,
    done: Option<oneshot::Sender<()>>,
}

impl SendSlot {
    /// Takes the next place in `shared`'s send order; returns it and the end of the place before.
    pub(crate) fn take(shared: &Arc<Shared>) -> (SendSlot, Option<oneshot::Receiver<()>>) {
        let (done, tail) = oneshot::channel();
        let prev = shared
            .send_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(tail);
        shared.sends_waiting.fetch_add(1, Ordering::AcqRel);
        let slot = SendSlot {
            shared: shared.clone(),
            done: Some(done),
        };
        (slot, prev)
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        self.shared.sends_waiting.fetch_sub(1, Ordering::AcqRel);
        // Dropping the sender ends the place: the next send goes.
        drop(self.done.take());
    }
}

/// Room for one message in the channel's request ring, from {@link Channel.loan} or
/// {@link Channel.tryLoan}: write the message into {@link Loan.data}, then
/// {@link Loan.commit} it — no copy on the application's side.
///
/// ```js
/// const loan = await ch.loan(flow, 4096)
/// const n = fill(loan.data)     // an external Buffer of 4096 bytes, initially unspecified
/// loan.commit(n)                // sends the first n bytes; or loan.cancel(): nothing is sent
/// ```
///
/// **Lifetime:** `data` is valid until `commit` or `cancel`; then its memory is reused by the
/// channel and `data` (and any view of its `ArrayBuffer`, e.g. `data.subarray()`) is detached:
/// it reads as empty and writes go nowhere. Copy what you need first. While a loan is out the
/// channel's later sends (and loans) wait for it: always end it (`try { … } finally {
/// if (!loan.done) loan.cancel() }`). A loan that is garbage collected while out is cancelled.
#[napi]
pub struct Loan {
    env: sys::napi_env,
    sc: Arc<machnet::SharedChannel>,
    buf: sys::napi_ref,
    len: usize,
    /// `None` once committed or cancelled.
    slot: Cell<Option<SendSlot>>,
}

impl Loan {
    /// A loan taken on `sc` (`b`), holding `slot` in the send order until it ends.
    pub(crate) fn new(
        env: sys::napi_env,
        sc: Arc<machnet::SharedChannel>,
        b: machnet::LoanBuf,
        slot: SendSlot,
    ) -> napi::Result<Loan> {
        let buf = match external_buffer(env, b.ptr, b.len, &sc) {
            Ok(buf) => buf,
            Err(e) => {
                let _ = sc.cancel_loan();
                return Err(e);
            }
        };
        Ok(Loan {
            env,
            sc,
            buf,
            len: b.len,
            slot: Cell::new(Some(slot)),
        })
    }

    /// Ends the loan: detaches `data`, then `end` (commit or cancel), then the next send goes.
    fn end(&self, end: impl FnOnce(&machnet::SharedChannel) -> JsResult<()>) -> JsResult<()> {
        let Some(slot) = self.slot.take() else {
            return Err(JsErr::new(
                INVALID_ARGUMENT,
                "the loan was already committed or cancelled",
            ));
        };
        detach(self.env, self.buf);
        let r = end(&self.sc);
        drop(slot);
        r
    }
}

#[napi]
impl Loan {
    /// The loaned memory: an external `Buffer` of exactly {@link Loan.length} bytes (empty once
    /// the loan ended).
    #[napi(getter, ts_return_type = "Buffer")]
    pub fn data(&self) -> napi::Result<Raw> {
        Ok(Raw(deref(self.env, self.buf)))
    }

    /// The bytes loaned.
    #[napi(getter)]
    pub fn length(&self) -> u32 {
        self.len as u32
    }

    /// Whether the loan was committed or cancelled.
    #[napi(getter)]
    pub fn done(&self) -> bool {
        let slot = self.slot.take();
        let done = slot.is_none();
        self.slot.set(slot);
        done
    }

    /// Sends the first `used` bytes of {@link Loan.data} (default: all) as one message and ends
    /// the loan. Throws `ERR_OUT_OF_RANGE` for `used` outside `1 … length` (the loan stays out),
    /// `ERR_MACHNET_INVALID_ARGUMENT` if the loan already ended, and like
    /// {@link Channel.send} rejects if the flow or channel failed (nothing is sent then; the
    /// loan is over).
    #[napi(ts_args_type = "used?: number")]
    pub fn commit(&self, env: &Env, used: Option<Unknown>) -> napi::Result<()> {
        let used = match crate::optional(&used) {
            None => Ok(self.len),
            Some(u) => int_arg(u, "used", 1, self.len as u32).map(|u| u as usize),
        };
        used.and_then(|used| {
            self.end(|sc| {
                sc.commit(used).map_err(|e| match e {
                    machnet::SharedError::Detached => JsErr::channel_closed(None),
                    e => e.into(),
                })
            })
        })
        .map_err(|e| e.into_napi(env))
    }

    /// Ends the loan without sending anything. Throws `ERR_MACHNET_INVALID_ARGUMENT` if it
    /// already ended.
    #[napi]
    pub fn cancel(&self, env: &Env) -> napi::Result<()> {
        self.end(|sc| {
            let _ = sc.cancel_loan();
            Ok(())
        })
        .map_err(|e| e.into_napi(env))
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Collected while out: nothing is sent.
            let _ = self.sc.cancel_loan();
            drop(slot);
        }
        delete_ref(self.env, self.buf);
    }
}

/// A received message lent in place, from {@link Channel.recvZc} or {@link Channel.tryRecvZc}:
/// `{ flow, data, release() }`, where `data` is an external `Buffer` over the message in the
/// channel memory (no copy).
///
/// **Lifetime:** `data` is valid until {@link ZcMessage.release}; then its memory is reused by
/// the channel and `data` (and any view of its `ArrayBuffer`) is detached: it reads as empty.
/// Copy what must outlive it (`Buffer.from(msg.data)`). One borrowed message per channel is out
/// at a time: a `recvZc()` waits (and later receives of the channel wait behind it) until the
/// previous one is released, so release promptly (`try { … } finally { msg.release() }`). A
/// message that is garbage collected unreleased is released then, but receives waiting for it
/// only go on with the channel's next receive call.
#[napi]
pub struct ZcMessage {
    env: sys::napi_env,
    sc: Arc<machnet::SharedChannel>,
    flow: sys::napi_ref,
    buf: sys::napi_ref,
    released: Cell<bool>,
    /// Serves receives that wait for this release.
    rx: std::rc::Weak<crate::uvrecv::Receiver>,
}

impl ZcMessage {
    pub(crate) fn new(
        env: sys::napi_env,
        sc: Arc<machnet::SharedChannel>,
        flow: sys::napi_value,
        v: &machnet::ViewBuf,
        rx: std::rc::Weak<crate::uvrecv::Receiver>,
    ) -> napi::Result<ZcMessage> {
        let release = |e| {
            let _ = sc.release();
            e
        };
        let buf = external_buffer(env, v.ptr.cast_mut(), v.len, &sc).map_err(release)?;
        let mut flow_ref = ptr::null_mut();
        // SAFETY: napi call on the JavaScript thread; a strong reference to the flow object.
        let status = unsafe { sys::napi_create_reference(env, flow, 1, &mut flow_ref) };
        if status != sys::Status::napi_ok {
            delete_ref(env, buf);
            return Err(release(napi::Error::new(
                napi::Status::GenericFailure,
                "cannot reference the flow",
            )));
        }
        Ok(ZcMessage {
            env,
            sc,
            flow: flow_ref,
            buf,
            released: Cell::new(false),
            rx,
        })
    }
}

#[napi]
impl ZcMessage {
    /// The flow the message arrived on.
    #[napi(getter, ts_return_type = "Flow")]
    pub fn flow(&self) -> napi::Result<Raw> {
        Ok(Raw(deref(self.env, self.flow)))
    }

    /// The message: an external `Buffer` over the channel memory (empty once released).
    #[napi(getter, ts_return_type = "Buffer")]
    pub fn data(&self) -> napi::Result<Raw> {
        Ok(Raw(deref(self.env, self.buf)))
    }

    /// Whether {@link ZcMessage.release} was called.
    #[napi(getter)]
    pub fn released(&self) -> bool {
        self.released.get()
    }

    /// Gives the message back to the channel (detaching `data`). Throws
    /// `ERR_MACHNET_INVALID_ARGUMENT` if it was released already.
    #[napi]
    pub fn release(&self, env: &Env) -> napi::Result<()> {
        if self.released.replace(true) {
            return Err(
                JsErr::new(INVALID_ARGUMENT, "the message was already released").into_napi(env),
            );
        }
        detach(self.env, self.buf);
        let _ = self.sc.release();
        if let Some(rx) = self.rx.upgrade() {
            // Receives queued behind the release.
            rx.pump();
        }
        Ok(())
    }
}

impl Drop for ZcMessage {
    fn drop(&mut self) {
        if !self.released.replace(true) {
            let _ = self.sc.release();
        }
        delete_ref(self.env, self.buf);
        delete_ref(self.env, self.flow);
    }
}
