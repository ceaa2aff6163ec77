//! Node.js bindings for Machnet (the `machnet` npm package), built with napi-rs on the Rust
//! client crate `machnet`.
//!
//! JavaScript sees `attach()`, `Machnet`, `Channel`, `Flow` and `Message` (see `index.d.ts`,
//! generated from this file). Nothing here blocks the JavaScript thread:
//!
//! * a channel is a [`machnet::SharedChannel`] (the client's thread-safe channel: the wait
//!   protocol, interrupts and flow events live there, once for every binding);
//! * a pending `recv` waits on the channel's wait fd through Node's own event loop (a libuv
//!   poll, module [`uvrecv`]): the sidecar's wake-up reaches the JavaScript thread directly;
//! * operations that may wait otherwise (`send` under back-pressure, `connect`, control
//!   requests) run the client's blocking calls on tokio's blocking threads and settle their
//!   promises from there; a waiting send does not hold the channel;
//! * `recv` and `send` first try the ring on the JavaScript thread and settle their promise at
//!   once when that suffices;
//! * receives are served in call order, and so are sends (a send never overtakes an earlier
//!   one of the same channel).

#![deny(clippy::all)]

mod errors;
mod events;
mod fastpath;
mod uvrecv;
mod zerocopy;

use std::cell::RefCell;
use std::future::Future;
use std::net::Ipv4Addr;
use std::ptr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use napi::bindgen_prelude::{
    validate_type_tag, Array, Buffer, FromNapiValue, PromiseRaw, ToNapiValue, TypeTag,
    Uint8ArraySlice, Unknown,
};
use napi::{sys, Env, JsValue, ValueType};
use napi_derive::napi;
use tokio::sync::oneshot;

use errors::{JsErr, JsResult};
use zerocopy::SendSlot;
pub use zerocopy::{Loan, ZcMessage};

// ----- promises -----

/// A JavaScript value made elsewhere (or the error making it), passed on as it is.
pub struct Raw(napi::Result<sys::napi_value>);

impl ToNapiValue for Raw {
    unsafe fn to_napi_value(_: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        val.0
    }
}

/// A promise already settled with `r`.
fn settled<'env, T: ToNapiValue>(
    env: &'env Env,
    r: JsResult<T>,
) -> napi::Result<PromiseRaw<'env, T>> {
    let raw = env.raw();
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: napi calls on the JavaScript thread with valid out-pointers.
    unsafe {
        napi::check_status!(sys::napi_create_promise(raw, &mut deferred, &mut promise))?;
        match r {
            Ok(v) => {
                let v = T::to_napi_value(raw, v)?;
                napi::check_status!(sys::napi_resolve_deferred(raw, deferred, v))?;
            }
            Err(e) => {
                let v = e.into_value(env)?;
                napi::check_status!(sys::napi_reject_deferred(raw, deferred, v))?;
            }
        }
    }
    Ok(PromiseRaw::new(raw, promise))
}

/// Runs `fut` on napi's tokio runtime; the promise resolves with `map(value)` or rejects with
/// the error object (code included).
fn spawn<'env, D, V, F, M>(env: &'env Env, fut: F, map: M) -> napi::Result<PromiseRaw<'env, V>>
where
    D: Send + 'static,
    V: ToNapiValue,
    F: Future<Output = JsResult<D>> + Send + 'static,
    M: FnOnce(&Env, D) -> V + 'static,
{
    env.spawn_future_with_callback(async move { Ok(fut.await) }, move |env, r| match r {
        Ok(d) => Ok(map(env, d)),
        Err(e) => Err(e.into_napi(env)),
    })
}

/// The value of a completed operation as it is.
fn keep<T>(_: &Env, value: T) -> T {
    value
}

/// A failed control request: `SIDECAR_GONE` if the control connection has hung up (the
/// client then reports every request as failing on a broken connection), else `e` itself.
fn gone_or(m: &machnet::Machnet, e: impl Into<JsErr>) -> JsErr {
    if m.is_sidecar_gone() {
        JsErr::new(
            errors::SIDECAR_GONE,
            "the Machnet sidecar is gone (control connection closed)",
        )
    } else {
        e.into()
    }
}

// ----- argument validation (no silent wrapping of negative or fractional numbers) -----

/// An integer argument in `min..=max`.
fn int_arg(v: &Unknown, name: &str, min: u32, max: u32) -> JsResult<u32> {
    if v.get_type().ok() != Some(ValueType::Number) {
        return Err(JsErr::arg_type(name, "of type number"));
    }
    // SAFETY: the value is a number of the current environment.
    let x = unsafe { f64::from_napi_value(v.value().env, v.raw()) }
        .map_err(|_| JsErr::arg_type(name, "of type number"))?;
    if !(x.fract() == 0.0 && x >= f64::from(min) && x <= f64::from(max)) {
        return Err(JsErr::range(
            name,
            &format!("an integer >= {min} and <= {max}"),
            x,
        ));
    }
    Ok(x as u32)
}

/// An optional (`undefined`/`null`/absent) argument.
fn optional<'a, 'e>(v: &'a Option<Unknown<'e>>) -> Option<&'a Unknown<'e>> {
    v.as_ref()
        .filter(|v| !matches!(v.get_type(), Ok(ValueType::Undefined) | Ok(ValueType::Null)))
}

fn port_arg(v: &Unknown) -> JsResult<u16> {
    int_arg(v, "port", 0, 65535).map(|p| p as u16)
}

fn string_arg(v: &Unknown, name: &str) -> JsResult<String> {
    if v.get_type().ok() != Some(ValueType::String) {
        return Err(JsErr::arg_type(name, "of type string"));
    }
    // SAFETY: the value is a string of the current environment.
    unsafe { String::from_napi_value(v.value().env, v.raw()) }
        .map_err(|_| JsErr::arg_type(name, "of type string"))
}

pub(crate) fn flow_arg(v: &Unknown) -> JsResult<machnet::Flow> {
    let bad = || JsErr::arg_type("flow", "an instance of Flow");
    if v.get_type().ok() != Some(ValueType::Object) {
        return Err(bad());
    }
    let (env, raw) = (v.value().env, v.raw());
    let mut wrapped: *mut std::ffi::c_void = ptr::null_mut();
    // SAFETY: napi calls on the JavaScript thread; the pointer is only used after the type tag
    // proved the object wraps a `Flow`, and only to copy the (`Copy`) flow out.
    unsafe {
        if sys::napi_unwrap(env, raw, &mut wrapped) != sys::Status::napi_ok || wrapped.is_null() {
            return Err(bad());
        }
        validate_type_tag(env, raw, &<Flow as TypeTag>::type_tag(), "Flow").map_err(|_| bad())?;
        Ok((*wrapped.cast::<Flow>()).inner)
    }
}

/// The bytes of a `Buffer`/`Uint8Array` argument, borrowed for the call (no reference is
/// created: sends copy them before returning).
fn data_arg<'a>(v: &Unknown<'a>) -> JsResult<Uint8ArraySlice<'a>> {
    let bad = || JsErr::arg_type("data", "an instance of Buffer or Uint8Array");
    if v.get_type().ok() != Some(ValueType::Object) {
        return Err(bad());
    }
    // SAFETY: a value of the current environment; napi checks it is a Uint8Array.
    unsafe { Uint8ArraySlice::from_napi_value(v.value().env, v.raw()) }.map_err(|_| bad())
}

// ----- Flow and Message -----

/// One Machnet connection (a flow) of a channel: whole messages, delivered in order, exactly
/// once. Flows are created by {@link Channel.connect} or accepted by a listening channel (the
/// first message of an accepted flow names it). A `Flow` is only valid on its own channel.
///
/// The messages of a flow carry the same `Flow` object as `connect` returned (or the first
/// message of an accepted flow), as long as the application keeps a reference to it; a flow
/// object that was garbage collected is replaced by a new one. {@link Flow.equals} and
/// {@link Flow.handle} identify flows in every case.
#[napi]
pub struct Flow {
    pub(crate) inner: machnet::Flow,
}

#[napi]
impl Flow {
    /// The sidecar's handle of this flow, unique within its channel (never 0).
    #[napi(getter)]
    pub fn handle(&self) -> u32 {
        self.inner.handle()
    }

    /// The local (sidecar) IPv4 address, dotted.
    #[napi(getter)]
    pub fn local_ip(&self) -> String {
        self.inner.local_ip().to_string()
    }

    /// The local Machnet port.
    #[napi(getter)]
    pub fn local_port(&self) -> u32 {
        u32::from(self.inner.local_port())
    }

    /// The remote IPv4 address, dotted.
    #[napi(getter)]
    pub fn remote_ip(&self) -> String {
        self.inner.remote_ip().to_string()
    }

    /// The remote Machnet port.
    #[napi(getter)]
    pub fn remote_port(&self) -> u32 {
        u32::from(self.inner.remote_port())
    }

    /// Whether `other` is the same flow (same channel and handle).
    #[napi(ts_args_type = "other: Flow")]
    pub fn equals(&self, other: Unknown) -> bool {
        flow_arg(&other).is_ok_and(|o| o == self.inner)
    }

    /// `flow <handle> (<local ip>:<port> -> <remote ip>:<port>)`.
    #[napi(js_name = "toString")]
    pub fn to_js_string(&self) -> String {
        self.inner.to_string()
    }
}

/// A received message and the flow it arrived on.
#[napi(object, object_from_js = false)]
pub struct Message {
    /// The flow the message arrived on (reply with `channel.send(msg.flow, …)`).
    pub flow: Flow,
    /// The message, byte for byte as sent (1 B … `maxMessageLen`).
    #[napi(ts_type = "Buffer")]
    pub data: Bytes,
}

/// Received bytes on their way to a `Buffer`: small messages are copied into a plain Node
/// buffer (cheaper than an external buffer, which needs a finalizer); large ones are handed
/// over without a copy.
pub struct Bytes(pub(crate) Vec<u8>);

/// Up to this size a received message is copied.
const COPY_MAX: usize = 64 * 1024;

impl ToNapiValue for Bytes {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let v = val.0;
        if v.is_empty() || v.len() > COPY_MAX {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { Buffer::to_napi_value(env, Buffer::from(v)) };
        }
        let mut out = ptr::null_mut();
        let mut data = ptr::null_mut();
        // SAFETY: napi call on the JavaScript thread; `v` is valid for `v.len()` bytes.
        napi::check_status!(unsafe {
            sys::napi_create_buffer_copy(env, v.len(), v.as_ptr().cast(), &mut data, &mut out)
        })?;
        Ok(out)
    }
}

/// Called once by index.js: `scratch` (a `Buffer`) receives each message straight from the
/// ring, then `make(flow, length)` builds the `Message` in JavaScript (a pooled `Buffer` copy
/// and an object literal are much cheaper there than through napi). Without it (binding.js used
/// directly) messages are built here.
#[napi(
    js_name = "_setupReceive",
    ts_args_type = "scratch: Buffer, make: (flow: Flow, length: number) => Message"
)]
pub fn setup_receive(env: &Env, scratch: Unknown, make: Unknown) -> napi::Result<()> {
    uvrecv::MessageFactory::install(env, &scratch, &make)
}

/// `{ recv, trySend }` for `Channel.prototype` without napi-rs's per-call glue (module
/// [`fastpath`]); index.js installs them.
#[napi(js_name = "_fastMethods", ts_return_type = "Record<string, Function>")]
pub fn fast_methods(env: &Env) -> napi::Result<Raw> {
    Ok(Raw(fastpath::methods(env)))
}

// ----- attaching -----

/// Attaches this process to the Machnet sidecar through its control socket: `socketPath`, else
/// `$MACHNET_SOCKET`, else `/run/machnet/machnet.sock`.
///
/// Rejects with `ERR_MACHNET_SIDECAR_UNREACHABLE` when the socket cannot be reached and
/// `ERR_MACHNET_REFUSED` when the sidecar refuses this user.
#[napi(
    ts_args_type = "socketPath?: string",
    ts_return_type = "Promise<Machnet>"
)]
pub fn attach<'env>(
    env: &'env Env,
    socket_path: Option<Unknown>,
) -> napi::Result<PromiseRaw<'env, Machnet>> {
    let path = match optional(&socket_path).map(|v| string_arg(v, "socketPath")) {
        Some(Err(e)) => return settled(env, Err(e)),
        Some(Ok(p)) => Some(p),
        None => None,
    };
    spawn(
        env,
        async move {
            let r = tokio::task::spawn_blocking(move || match path {
                Some(p) => machnet::Machnet::attach_at(p),
                None => machnet::Machnet::attach(),
            })
            .await
            .map_err(|e| JsErr::new(errors::IO, e.to_string()))?;
            Ok(r?)
        },
        |_, inner| Machnet::new(inner),
    )
}

/// A process's attachment to the sidecar (one control connection). Open a {@link Channel} with
/// {@link Machnet.openChannel}. {@link Machnet.close} closes the attachment and its channels;
/// when this object, and every channel opened from it, is garbage collected (or the process
/// exits), the sidecar detaches the process's channels gracefully (see {@link Channel.close}).
#[napi]
pub struct Machnet {
    /// The control connection; `None` once {@link Machnet.close} was called.
    inner: RefCell<Option<machnet::Machnet>>,
    local_ip: Ipv4Addr,
    engines: u16,
    max_message_len: u32,
    /// The channels opened from this attachment (for `close`); `None` once closed.
    channels: Rc<RefCell<Option<ChannelList>>>,
}

/// The channels of a [`Machnet`], weakly (a channel lives as long as its JavaScript object).
type ChannelList = Vec<(std::sync::Weak<Shared>, Weak<uvrecv::Receiver>)>;

impl Machnet {
    fn new(inner: machnet::Machnet) -> Machnet {
        Machnet {
            local_ip: inner.local_ip(),
            engines: inner.engines(),
            max_message_len: inner.max_message_len(),
            inner: RefCell::new(Some(inner)),
            channels: Rc::new(RefCell::new(Some(Vec::new()))),
        }
    }

    /// The control connection, or the error of a closed attachment.
    fn attached(&self) -> JsResult<machnet::Machnet> {
        self.inner
            .borrow()
            .clone()
            .ok_or_else(JsErr::machnet_closed)
    }
}

#[napi]
impl Machnet {
    /// The sidecar's IPv4 address (the local address of every flow).
    #[napi(getter)]
    pub fn local_ip(&self) -> String {
        self.local_ip.to_string()
    }

    /// Number of sidecar engines (valid engine indices are `0 … engines - 1`).
    #[napi(getter)]
    pub fn engines(&self) -> u32 {
        u32::from(self.engines)
    }

    /// Largest message the sidecar carries, in bytes.
    #[napi(getter)]
    pub fn max_message_len(&self) -> u32 {
        self.max_message_len
    }

    /// Whether {@link Machnet.close} was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.inner.borrow().is_none()
    }

    /// Whether the sidecar has gone away (its control connection hung up). Throws
    /// `ERR_MACHNET_CLOSED` after {@link Machnet.close}.
    #[napi]
    pub fn is_sidecar_gone(&self, env: &Env) -> napi::Result<bool> {
        self.attached()
            .map(|m| m.is_sidecar_gone())
            .map_err(|e| e.into_napi(env))
    }

    /// Opens a channel on `engine` (default: the sidecar picks one round-robin). Rejects with
    /// `ERR_MACHNET_REFUSED` for an engine that does not exist, `ERR_MACHNET_CLOSED` after
    /// {@link Machnet.close}.
    #[napi(ts_args_type = "engine?: number", ts_return_type = "Promise<Channel>")]
    pub fn open_channel<'env>(
        &self,
        env: &'env Env,
        engine: Option<Unknown>,
    ) -> napi::Result<PromiseRaw<'env, Raw>> {
        let engine = match optional(&engine).map(|v| int_arg(v, "engine", 0, 65535)) {
            Some(Err(e)) => return settled(env, Err(e)),
            Some(Ok(e)) => Some(e as u16),
            None => None,
        };
        let m = match self.attached() {
            Ok(m) => m,
            Err(e) => return settled(env, Err(e)),
        };
        let channels = self.channels.clone();
        spawn(
            env,
            async move {
                let r = tokio::task::spawn_blocking(move || {
                    m.open_channel(engine).map_err(|e| gone_or(&m, e))
                })
                .await
                .map_err(|e| JsErr::new(errors::IO, e.to_string()))?;
                r
            },
            move |env, ch| {
                // `close()` ran while the channel was being opened: it must not outlive it
                // (dropping it detaches it gracefully).
                let mut list = channels.borrow_mut();
                let Some(list) = list.as_mut() else {
                    drop(ch);
                    return Raw(Err(JsErr::machnet_closed().into_napi(env)));
                };
                let ch = match Channel::new(env, ch) {
                    Ok(ch) => ch,
                    Err(e) => return Raw(Err(e.into_napi(env))),
                };
                list.retain(|(s, _)| s.strong_count() > 0);
                list.push((Arc::downgrade(&ch.shared), Rc::downgrade(&ch.rx)));
                // SAFETY: converts on the JavaScript thread, in the callback's scope.
                Raw(unsafe { Channel::to_napi_value(env.raw(), ch) })
            },
        )
    }

    /// Closes this attachment: every channel opened from it is closed gracefully (as by
    /// {@link Channel.close}: messages whose `send` resolved are still delivered, pending and
    /// later operations of those channels reject with `ERR_MACHNET_CHANNEL_CLOSED`), then the
    /// control connection. Later calls of this object fail with `ERR_MACHNET_CLOSED`. Closing
    /// twice does nothing.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let Some(m) = self.inner.borrow_mut().take() else {
            return settled(env, Ok(()));
        };
        let why = JsErr::new(
            errors::CHANNEL_CLOSED,
            "the channel is closed: its Machnet was closed",
        );
        let closing: Vec<_> = (self.channels.borrow_mut().take())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(s, rx)| Some(detach(&s.upgrade()?, &*rx.upgrade()?, false, why.clone())))
            .collect();
        spawn(
            env,
            async move {
                let mut first_err = None;
                for done in closing {
                    if let Err(e) = done.await {
                        first_err.get_or_insert(e);
                    }
                }
                // The last handle of the control connection (the channels' went with them).
                drop(m);
                first_err.map_or(Ok(()), Err)
            },
            keep,
        )
    }
}

// ----- Channel -----

/// What the JavaScript thread and napi's blocking threads share about one channel.
///
/// The channel itself is a [`machnet::SharedChannel`], owned by the receiver (module
/// [`uvrecv`]; released when the channel is closed, with the control connection it holds) and
/// lent to the operations under way: the JavaScript thread receives with its
/// one-look calls and waits on its wait fd through libuv (module [`uvrecv`]); a send under
/// back-pressure waits in a blocking `send` on one of tokio's blocking threads, without holding
/// the channel. Calls that wait *inside* the channel (connect, listen, closing a flow) hold its
/// lock while they wait: they also hold `gate`, which the JavaScript thread only `try_lock`s
/// before touching the channel, so that it never blocks behind them.
pub(crate) struct Shared {
    pub(crate) gate: std::sync::Mutex<()>,
    closed: AtomicBool,
    /// Why the channel was closed (set once, before `closed`).
    closed_why: OnceLock<JsErr>,
    /// Sends waiting on a blocking thread (incremented on the JavaScript thread): while one
    /// waits, later sends queue behind it, so that sends keep their call order.
    pub(crate) sends_waiting: AtomicUsize,
    /// Ends when the latest waiting send has finished (the next one waits for it).
    pub(crate) send_tail: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The error of an operation on the closed channel.
    pub(crate) fn closed_err(&self) -> JsErr {
        self.closed_why
            .get()
            .cloned()
            .unwrap_or_else(|| JsErr::channel_closed(None))
    }

    /// `e` as the error JavaScript sees (a detached channel fails with why it was closed).
    pub(crate) fn err<E: machnet::ClientError>(&self, e: machnet::SharedError<E>) -> JsErr {
        match e {
            machnet::SharedError::Detached => self.closed_err(),
            e => e.into(),
        }
    }

    /// Runs `op` on the channel on a blocking thread, holding the gate (`op` may wait inside
    /// the channel).
    async fn with<T: Send + 'static>(
        self: Arc<Self>,
        sc: Option<Arc<machnet::SharedChannel>>,
        op: impl FnOnce(&mut machnet::Channel) -> JsResult<T> + Send + 'static,
    ) -> JsResult<T> {
        let sc = sc.ok_or_else(|| self.closed_err())?;
        blocking(move || {
            let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            sc.with(op).map_err(|_| self.closed_err())?
        })
        .await
    }

    /// A send that waits for ring space, after every send queued before it.
    async fn send_waiting(
        self: Arc<Self>,
        sc: Arc<machnet::SharedChannel>,
        prev: Option<oneshot::Receiver<()>>,
        done: oneshot::Sender<()>,
        flow: machnet::Flow,
        data: Vec<u8>,
    ) -> JsResult<()> {
        if let Some(prev) = prev {
            // Dropped (not sent) when the previous send finished: either way it is done.
            let _ = prev.await;
        }
        let s = self.clone();
        let r = blocking(move || sc.send(&flow, &[&data], None).map_err(|e| s.err(e))).await;
        self.sends_waiting.fetch_sub(1, Ordering::AcqRel);
        drop(done);
        r
    }
}

/// Runs `f` on one of tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> JsResult<T> + Send + 'static,
) -> JsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JsErr::new(errors::IO, e.to_string()))?
}

/// A channel: this thread's data path to one sidecar engine, carrying any number of flows.
///
/// ```js
/// const ch = await machnet.openChannel()
/// const flow = await ch.connect('10.0.0.2', 888)
/// await ch.send(flow, Buffer.from('hello'))
/// const { flow: from, data } = await ch.recv()
/// for await (const msg of ch) { … }   // every message until ch.close()
/// await ch.close()
/// ```
///
/// Receives are served in call order, as are sends; a `connect` has the channel to itself until
/// it completes (other operations of the channel wait for it; use another channel for connects
/// that must not delay traffic). Every error is an `Error` with a stable `code`
/// (`ERR_MACHNET_*`, or Node's `ERR_INVALID_ARG_TYPE` / `ERR_INVALID_ARG_VALUE` /
/// `ERR_OUT_OF_RANGE` for bad arguments).
#[napi]
pub struct Channel {
    shared: Arc<Shared>,
    rx: Rc<uvrecv::Receiver>,
    id: u32,
    engine: u32,
    max_message_len: u32,
}

impl Channel {
    fn new(env: &Env, ch: machnet::Channel) -> JsResult<Channel> {
        let (id, engine, max_message_len) = (ch.id(), u32::from(ch.engine()), ch.max_message_len());
        let machnet = ch.machnet().clone();
        let sc = Arc::new(machnet::SharedChannel::new(ch).map_err(JsErr::io)?);
        let shared = Arc::new(Shared {
            gate: std::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            closed_why: OnceLock::new(),
            sends_waiting: AtomicUsize::new(0),
            send_tail: std::sync::Mutex::new(None),
        });
        Ok(Channel {
            rx: uvrecv::Receiver::new(env, shared.clone(), sc, machnet),
            shared,
            id,
            engine,
            max_message_len,
        })
    }

    fn closed_err<T>(&self) -> JsResult<T> {
        Err(self.shared.closed_err())
    }

    /// `listen` / `unlisten`: validates the port, then runs `op` once the channel is free.
    fn port_request<'env>(
        &self,
        env: &'env Env,
        port: &Unknown,
        op: fn(&mut machnet::Channel, u16) -> Result<(), machnet::ListenError>,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let port = match port_arg(port) {
            Ok(p) => p,
            Err(e) => return settled(env, Err(e)),
        };
        let s = self.shared.clone();
        spawn(
            env,
            s.with(self.rx.sc(), move |ch| {
                op(ch, port).map_err(|e| gone_or(ch.machnet(), e))
            }),
            keep,
        )
    }

    /// `closeFlow` / `abortFlow`: validates the flow, then runs `op` once the channel is free.
    fn end_flow<'env>(
        &self,
        env: &'env Env,
        flow: &Unknown,
        op: fn(&mut machnet::Channel, &machnet::Flow) -> Result<(), machnet::CloseError>,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let flow = match flow_arg(flow) {
            Ok(f) => f,
            Err(e) => return settled(env, Err(e)),
        };
        let s = self.shared.clone();
        spawn(
            env,
            s.with(self.rx.sc(), move |ch| Ok(op(ch, &flow)?)),
            keep,
        )
    }
}

#[napi]
impl Channel {
    /// The sidecar's id of this channel.
    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The engine serving this channel.
    #[napi(getter)]
    pub fn engine(&self) -> u32 {
        self.engine
    }

    /// Largest message this channel carries, in bytes.
    #[napi(getter)]
    pub fn max_message_len(&self) -> u32 {
        self.max_message_len
    }

    /// Whether {@link Channel.close} was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Accepts flows to Machnet `port` on this channel. Accepted flows show up as the `flow` of
    /// the messages they carry. Other channels of this process may listen on the same port: they
    /// form a listen group, and each new flow is accepted by a member on the sidecar engine that
    /// owns it (docs/CHANNEL.md §2). Rejects with `ERR_MACHNET_PORT_IN_USE` (another
    /// application owns the port, or this channel listens on it already) or
    /// `ERR_MACHNET_INVALID_ARGUMENT`.
    #[napi(ts_args_type = "port: number", ts_return_type = "Promise<void>")]
    pub fn listen<'env>(
        &self,
        env: &'env Env,
        port: Unknown,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        self.port_request(env, &port, machnet::Channel::listen)
    }

    /// Stops listening on `port`; flows already accepted stay.
    #[napi(ts_args_type = "port: number", ts_return_type = "Promise<void>")]
    pub fn unlisten<'env>(
        &self,
        env: &'env Env,
        port: Unknown,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        self.port_request(env, &port, machnet::Channel::unlisten)
    }

    /// Opens a flow to `ip`:`port` (dotted IPv4, Machnet port). Resolves once the peer accepted;
    /// rejects with `ERR_MACHNET_CONNECTION_REFUSED` (or another code of the flow's close reason) or, after `timeoutMs`,
    /// `ERR_MACHNET_TIMEOUT` (a flow established later is aborted).
    #[napi(
        ts_args_type = "ip: string, port: number, timeoutMs?: number",
        ts_return_type = "Promise<Flow>"
    )]
    pub fn connect<'env>(
        &self,
        env: &'env Env,
        ip: Unknown,
        port: Unknown,
        timeout_ms: Option<Unknown>,
    ) -> napi::Result<PromiseRaw<'env, Raw>> {
        let args = (|| {
            let ip_s = string_arg(&ip, "ip")?;
            let ip: Ipv4Addr = ip_s.parse().map_err(|_| {
                JsErr::arg_value(
                    "ip",
                    &format!("must be a dotted IPv4 address. Received '{ip_s}'"),
                )
            })?;
            let port = port_arg(&port)?;
            let timeout = match optional(&timeout_ms) {
                None => None,
                Some(v) => Some(Duration::from_millis(u64::from(int_arg(
                    v,
                    "timeoutMs",
                    0,
                    u32::MAX,
                )?))),
            };
            Ok((ip, port, timeout))
        })();
        let (ip, port, timeout) = match args {
            Ok(a) => a,
            Err(e) => return settled(env, Err(e)),
        };
        let (s, rx) = (self.shared.clone(), self.rx.clone());
        let connect = s.clone().with(rx.sc(), move |ch| {
            let t = timeout.unwrap_or(machnet::DEFAULT_CONNECT_TIMEOUT);
            Ok(ch.connect_timeout(ip, port, t)?)
        });
        spawn(env, connect, move |env, inner| {
            if s.is_closed() {
                // Closed meanwhile: the flow went with the channel.
                return Raw(Err(s.closed_err().into_napi(env)));
            }
            // The connect may have read notifications meant for pending receives.
            rx.pump();
            Raw(rx.flow_value(inner))
        })
    }

    /// Sends `data` as one message on `flow`. The promise resolves once the message is in the
    /// channel's request ring (the sidecar then delivers it reliably, in order); at once if the
    /// ring has room, else when the sidecar has made room (back-pressure). Sends of a channel
    /// keep their call order. The bytes are copied: `data` may be reused right away.
    ///
    /// Rejects with `ERR_MACHNET_INVALID_ARGUMENT` (empty, or a flow of another channel),
    /// `ERR_MACHNET_MESSAGE_TOO_LARGE`, `ERR_MACHNET_FLOW_CLOSED`, `ERR_MACHNET_CHANNEL_CLOSED`.
    #[napi(
        ts_args_type = "flow: Flow, data: Buffer | Uint8Array",
        ts_return_type = "Promise<void>"
    )]
    pub fn send<'env>(
        &self,
        env: &'env Env,
        flow: Unknown,
        data: Unknown,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let (flow, data) = match flow_arg(&flow).and_then(|f| Ok((f, data_arg(&data)?))) {
            Ok(a) => a,
            Err(e) => return settled(env, Err(e)),
        };
        match self.send_now(&flow, &data) {
            Ok(true) => return settled(env, Ok(())),
            Ok(false) => {}
            Err(e) => return settled(env, Err(e)),
        }
        // Wait for room on a blocking thread, after the sends queued before this one.
        let s = &self.shared;
        let Some(sc) = self.rx.sc() else {
            return settled(env, self.closed_err());
        };
        let (done, tail) = oneshot::channel();
        let prev = s
            .send_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(tail);
        s.sends_waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = s.clone().send_waiting(sc, prev, done, flow, data.to_vec());
        spawn(env, waiting, keep)
    }

    /// Sends `data` on `flow` if that is possible without waiting: `true` if the message was
    /// queued, `false` if the request ring is full, an earlier `send` is still waiting, or the
    /// channel is busy (a `connect` in progress). Throws like {@link Channel.send} rejects.
    #[napi(ts_args_type = "flow: Flow, data: Buffer | Uint8Array")]
    pub fn try_send(&self, env: &Env, flow: Unknown, data: Unknown) -> napi::Result<bool> {
        self.try_send_now(&flow, &data)
            .map_err(|e| e.into_napi(env))
    }

    /// Receives the next message on any flow of this channel. Never blocks the event loop: a
    /// pending receive waits on the channel's eventfd through Node's own event loop while timers, I/O and
    /// other operations of this channel go on. Concurrent receives are served in call order.
    /// Rejects with `ERR_MACHNET_CHANNEL_CLOSED` once the channel is closed.
    #[napi(ts_return_type = "Promise<Message>")]
    pub fn recv<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Message>> {
        Ok(PromiseRaw::new(env.raw(), self.recv_raw(env)?))
    }

    /// `recv(timeoutMs)` (index.js): queues a receive like `recv()` and returns
    /// `[promise, id]`; index.js cancels it by `id` when its timer fires (`id` 0: the promise is
    /// already settled, e.g. a message was waiting or `timeoutMs` is invalid).
    #[napi(
        js_name = "_recvCancelable",
        ts_args_type = "timeoutMs: number",
        ts_return_type = "[Promise<Message>, number]"
    )]
    pub fn recv_cancelable<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Unknown,
    ) -> napi::Result<Array<'env>> {
        let (promise, id) = match int_arg(&timeout_ms, "timeoutMs", 0, i32::MAX as u32) {
            Err(e) => (settled::<Raw>(env, Err(e))?.raw(), 0),
            Ok(_) => {
                let s = &self.shared;
                let ready = if s.is_closed() {
                    Some(settled::<Raw>(env, self.closed_err())?.raw())
                } else {
                    None
                };
                match ready {
                    Some(p) => (p, 0),
                    None => self.rx.push_cancelable()?,
                }
            }
        };
        let mut out = env.create_array(2)?;
        // SAFETY: `promise` is a live value of this environment.
        out.set(0, unsafe {
            Unknown::from_raw_unchecked(env.raw(), promise)
        })?;
        out.set(1, id as f64)?;
        Ok(out)
    }

    /// `recv(timeoutMs)` (index.js): its timer fired. Rejects receive `id` with
    /// `ERR_MACHNET_TIMEOUT` if it still waits; returns whether it did.
    #[napi(js_name = "_cancelRecv")]
    pub fn cancel_recv(&self, id: f64, timeout_ms: f64) -> bool {
        self.rx.cancel(
            id as u64,
            JsErr::new(
                errors::TIMEOUT,
                format!("no message arrived within {timeout_ms} ms"),
            ),
        )
    }

    /// The next message if one is waiting now, else `null` (also while another operation holds
    /// the channel for a moment). Throws `ERR_MACHNET_CHANNEL_CLOSED` once the channel is closed.
    #[napi(ts_return_type = "Message | null")]
    pub fn try_recv<'env>(&self, env: &'env Env) -> napi::Result<Unknown<'env>> {
        let r = if self.shared.is_closed() {
            self.closed_err()
        } else {
            self.rx.try_recv()
        };
        let v = match r.map_err(|e| e.into_napi(env))? {
            Some(m) => self.rx.message_value(m)?,
            None => {
                let mut null = ptr::null_mut();
                // SAFETY: napi call on the JavaScript thread.
                napi::check_status!(unsafe { sys::napi_get_null(env.raw(), &mut null) })?;
                null
            }
        };
        // SAFETY: a value of this environment, returned at once.
        Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), v) })
    }

    /// Loans room for one message of `length` bytes on `flow` in the channel's request ring:
    /// write it into the loan's `data` (an external `Buffer`), then `commit` it — no copy (see
    /// {@link Loan} for the lifetime rules). Resolves at once if the ring has room, else when
    /// the sidecar has made room; the loan takes its place in the channel's send order (sends
    /// made after it wait until it is committed or cancelled). Rejects like {@link Channel.send}.
    #[napi(
        ts_args_type = "flow: Flow, length: number",
        ts_return_type = "Promise<Loan>"
    )]
    pub fn loan<'env>(
        &self,
        env: &'env Env,
        flow: Unknown,
        length: Unknown,
    ) -> napi::Result<PromiseRaw<'env, Raw>> {
        let (flow, len) = match loan_args(&flow, &length) {
            Ok(a) => a,
            Err(e) => return settled(env, Err(e)),
        };
        match self.loan_now(env, &flow, len) {
            Ok(Some(loan)) => {
                // SAFETY: converts on the JavaScript thread.
                let v = unsafe { Loan::to_napi_value(env.raw(), loan) };
                return settled(env, Ok(Raw(v)));
            }
            Ok(None) => {}
            Err(e) => return settled(env, Err(e)),
        }
        let Some(sc) = self.rx.sc() else {
            return settled(env, self.closed_err());
        };
        // After the sends (and loans) queued before it, on a blocking thread.
        let (slot, prev) = SendSlot::take(&self.shared);
        let (s, lsc) = (self.shared.clone(), sc.clone());
        let waiting = async move {
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            let b = blocking(move || {
                lsc.loan(&flow, len, None)
                    .map(SendLoanBuf)
                    .map_err(|e| s.err(e))
            })
            .await?;
            Ok((b, slot))
        };
        spawn(env, waiting, move |env, (b, slot)| {
            Raw(Loan::new(env.raw(), sc, b.0, slot)
                // SAFETY: converts on the JavaScript thread, in the callback's scope.
                .and_then(|l| unsafe { Loan::to_napi_value(env.raw(), l) }))
        })
    }

    /// {@link Channel.loan} if that is possible without waiting: the loan, or `null` if the
    /// request ring is full, an earlier send or loan is waiting or out, or the channel is busy
    /// (a `connect` in progress). Throws like {@link Channel.send} rejects.
    #[napi(
        ts_args_type = "flow: Flow, length: number",
        ts_return_type = "Loan | null"
    )]
    pub fn try_loan(
        &self,
        env: &Env,
        flow: Unknown,
        length: Unknown,
    ) -> napi::Result<Option<Loan>> {
        loan_args(&flow, &length)
            .and_then(|(flow, len)| self.loan_now(env, &flow, len))
            .map_err(|e| e.into_napi(env))
    }

    /// The next message, lent in place (no copy): `{ flow, data, release() }` with `data` an
    /// external `Buffer` over the channel memory, valid until `release()` (see
    /// {@link ZcMessage}). Waits like {@link Channel.recv}, in the same call order; while a
    /// borrowed message is out, it waits for its release (and receives queued after it wait
    /// too). Rejects with `ERR_MACHNET_CHANNEL_CLOSED` once the channel is closed.
    #[napi(ts_return_type = "Promise<ZcMessage>")]
    pub fn recv_zc<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Raw>> {
        if self.shared.is_closed() {
            return settled(env, self.closed_err());
        }
        Ok(PromiseRaw::new(env.raw(), self.rx.push_zc()?))
    }

    /// The next message lent in place if one is waiting now, else `null` (also while another
    /// operation holds the channel for a moment). Throws `ERR_MACHNET_WOULD_BLOCK` while
    /// another borrowed message of the channel is out, `ERR_MACHNET_CHANNEL_CLOSED` once the
    /// channel is closed.
    #[napi(ts_return_type = "ZcMessage | null")]
    pub fn try_recv_zc<'env>(&self, env: &'env Env) -> napi::Result<Unknown<'env>> {
        let r = if self.shared.is_closed() {
            self.closed_err()
        } else {
            self.rx.try_recv_zc()
        };
        let v = match r.map_err(|e| e.into_napi(env))? {
            Some(m) => self.rx.message_value(m)?,
            None => {
                let mut null = ptr::null_mut();
                // SAFETY: napi call on the JavaScript thread.
                napi::check_status!(unsafe { sys::napi_get_null(env.raw(), &mut null) })?;
                null
            }
        };
        // SAFETY: a value of this environment, returned at once.
        Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), v) })
    }

    /// Closes this side of `flow` gracefully: messages already sent are delivered first; the
    /// peer's messages still arrive. Closing a closed flow does nothing.
    #[napi(ts_args_type = "flow: Flow", ts_return_type = "Promise<void>")]
    pub fn close_flow<'env>(
        &self,
        env: &'env Env,
        flow: Unknown,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        self.end_flow(env, &flow, machnet::Channel::close)
    }

    /// Aborts `flow` at once (the peer sees a reset).
    #[napi(ts_args_type = "flow: Flow", ts_return_type = "Promise<void>")]
    pub fn abort_flow<'env>(
        &self,
        env: &'env Env,
        flow: Unknown,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        self.end_flow(env, &flow, machnet::Channel::abort)
    }

    /// Closes the channel gracefully, as the process exiting does (docs/CHANNEL.md §5): the
    /// sidecar still delivers every message whose `send` resolved, then closes the channel's
    /// flows (the peers see each flow end after its last message) and releases the channel.
    /// Pending and later operations fail with `ERR_MACHNET_CHANNEL_CLOSED`; an async iteration
    /// over the channel ends. Closing twice does nothing.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.detach(env, false)
    }

    /// Closes the channel and aborts its flows at once: messages not yet delivered are
    /// discarded and the peers see a reset. Otherwise like {@link Channel.close}; on a closed
    /// channel it does nothing.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn abort<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.detach(env, true)
    }
}

impl Channel {
    /// `recv()`: the promise of the next message (module [`fastpath`] calls this too).
    pub(crate) fn recv_raw(&self, env: &Env) -> napi::Result<sys::napi_value> {
        if self.shared.is_closed() {
            return settled::<Raw>(env, self.closed_err()).map(|p| p.raw());
        }
        self.rx.push()
    }

    /// `trySend(flow, data)` (module [`fastpath`] calls this too).
    pub(crate) fn try_send_now(&self, flow: &Unknown, data: &Unknown) -> JsResult<bool> {
        let flow = self.rx.flow_arg(flow)?;
        self.send_now(&flow, &data_arg(data)?)
    }

    /// Sends `data` on `flow` if that is possible without waiting, on this thread: `Ok(false)`
    /// if the ring is full, a send waits before this one, or the channel is busy (a connect).
    fn send_now(&self, flow: &machnet::Flow, data: &[u8]) -> JsResult<bool> {
        let s = &self.shared;
        if s.is_closed() {
            return self.closed_err();
        }
        if s.sends_waiting.load(Ordering::Acquire) > 0 {
            return Ok(false);
        }
        let Ok(_gate) = s.gate.try_lock() else {
            return Ok(false);
        };
        let sent = self
            .rx
            .with_sc(|sc| sc.send(flow, &[data], Some(self.rx.past())));
        match sent {
            None => self.closed_err(),
            Some(Ok(())) => Ok(true),
            Some(Err(machnet::SharedError::Op(machnet::SendError::WouldBlock))) => Ok(false),
            Some(Err(e)) => Err(s.err(e)),
        }
    }

    /// A loan taken on this thread if that is possible without waiting (nothing queued before
    /// it, room in the ring, the channel not busy).
    fn loan_now(&self, env: &Env, flow: &machnet::Flow, len: usize) -> JsResult<Option<Loan>> {
        let s = &self.shared;
        if s.is_closed() {
            return self.closed_err();
        }
        if s.sends_waiting.load(Ordering::Acquire) > 0 {
            return Ok(None);
        }
        let Ok(_gate) = s.gate.try_lock() else {
            return Ok(None);
        };
        let Some(sc) = self.rx.sc() else {
            return self.closed_err();
        };
        match sc.loan(flow, len, Some(self.rx.past())) {
            Ok(b) => {
                let (slot, _) = SendSlot::take(s);
                Loan::new(env.raw(), sc, b, slot)
                    .map(Some)
                    .map_err(|e| JsErr::new(errors::IO, e.reason.clone()))
            }
            Err(
                machnet::SharedError::Op(machnet::SendError::WouldBlock)
                | machnet::SharedError::Busy,
            ) => Ok(None),
            Err(e) => Err(s.err(e)),
        }
    }

    /// `close` / `abort`: fails pending operations, then detaches the channel (`abort`: its
    /// flows are aborted).
    fn detach<'env>(&self, env: &'env Env, abort: bool) -> napi::Result<PromiseRaw<'env, ()>> {
        let done = detach(&self.shared, &self.rx, abort, JsErr::channel_closed(None));
        spawn(env, done, keep)
    }
}

/// `flow, length` of `loan` / `tryLoan`.
fn loan_args(flow: &Unknown, length: &Unknown) -> JsResult<(machnet::Flow, usize)> {
    let flow = flow_arg(flow)?;
    let len = int_arg(length, "length", 0, u32::MAX)? as usize;
    Ok((flow, len))
}

/// A loan on its way from a blocking thread (the pointer crosses threads, the memory stays).
struct SendLoanBuf(machnet::LoanBuf);

// SAFETY: only the pointer moves; the room stays reserved for this loan.
unsafe impl Send for SendLoanBuf {}

/// Closes a channel (`abort`: aborting its flows): pending and later operations fail with
/// `why` (receives at once, on this thread); the returned future detaches the channel from the
/// sidecar. Closing a closed channel does nothing.
fn detach(
    shared: &Arc<Shared>,
    rx: &uvrecv::Receiver,
    abort: bool,
    why: JsErr,
) -> impl Future<Output = JsResult<()>> + Send + 'static {
    let release = if abort {
        machnet::Channel::abort_channel
    } else {
        machnet::Channel::close_channel
    };
    let _ = shared.closed_why.set(why.clone());
    shared.closed.store(true, Ordering::Release);
    rx.shutdown(why);
    let sc = rx.take_channel();
    let s = shared.clone();
    blocking(move || {
        // After a connect or another call waiting inside the channel; blocked sends fail.
        let ch = {
            let _gate = s.gate.lock().unwrap_or_else(|p| p.into_inner());
            sc.and_then(|sc| sc.detach())
        };
        let Some(ch) = ch else { return Ok(()) };
        let m = ch.machnet().clone();
        release(ch).or_else(|e| match gone_or(&m, e) {
            // Nothing left to close.
            e if e.code() == errors::SIDECAR_GONE => Ok(()),
            e => Err(e),
        })
    })
}
