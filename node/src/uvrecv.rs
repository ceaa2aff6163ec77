//! Receiving on the JavaScript thread: libuv (Node's event loop) polls the channel's eventfd.
//!
//! A pending `recv()` is a deferred promise in a queue owned by the JavaScript thread. The
//! receiver takes messages with the shared channel's one-look receive (a passed deadline); a
//! look that finds nothing arms the channel's wait fd (`SharedChannel::wait_fd`,
//! docs/CHANNEL.md §4), and a `uv_poll` on a duplicate of it (and one on a duplicate of the
//! control socket, for hang-ups) wakes this thread through Node's own `epoll` when the sidecar
//! writes, without a thread hop. The callback settles the promises inside a callback scope, so
//! their continuations run right away. The wait fd is level-triggered and drained by the shared
//! channel's next empty look, never here: its poll is stopped when it fires with no receive
//! pending. The polls are unreferenced while no receive is pending: an idle channel does not
//! keep the process alive.
//!
//! This thread only `try_lock`s the channel's gate (held by calls that wait inside the channel,
//! such as a connect); if it is taken, a blocking thread waits for it, then this thread pumps
//! again ("kick").

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Instant;

use napi::bindgen_prelude::ToNapiValue;
use napi::bindgen_prelude::Unknown;
use napi::{sys, Env, JsValue};

use crate::errors::{JsErr, JsResult, SIDECAR_GONE};
use crate::events::{self, FlowEvent};
use crate::{Bytes, Flow, Shared};

#[allow(non_camel_case_types)]
type uv_poll_cb = unsafe extern "C" fn(handle: *mut c_void, status: c_int, events: c_int);
#[allow(non_camel_case_types)]
type uv_close_cb = unsafe extern "C" fn(handle: *mut c_void);

// libuv, as exported by the node binary that loads this addon.
extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_poll_init(lp: *mut sys::uv_loop_s, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(handle: *mut c_void, events: c_int, cb: uv_poll_cb) -> c_int;
    fn uv_poll_stop(handle: *mut c_void) -> c_int;
    fn uv_ref(handle: *mut c_void);
    fn uv_unref(handle: *mut c_void);
    fn uv_close(handle: *mut c_void, cb: uv_close_cb);
}

/// `UV_POLL` in libuv's `uv_handle_type`.
const UV_POLL: c_int = 8;
const UV_READABLE: c_int = 1;
const UV_DISCONNECT: c_int = 4;

/// What a poll handle watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    EventFd,
    Control,
}

/// Owned by a poll handle (its `data` field): freed by the close callback, with the descriptor.
struct PollData {
    receiver: Weak<Receiver>,
    watch: Watch,
    _fd: OwnedFd,
}

/// One `uv_poll_t` (allocated with libuv's size for it).
struct UvPoll {
    handle: *mut c_void,
}

impl UvPoll {
    fn new(
        lp: *mut sys::uv_loop_s,
        fd: RawFd,
        watch: Watch,
        receiver: Weak<Receiver>,
    ) -> Option<UvPoll> {
        // SAFETY: fcntl on a valid descriptor; the duplicate is ours.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        // SAFETY: libuv allocation protocol: zeroed memory of uv_handle_size(UV_POLL) bytes,
        // initialised by uv_poll_init; `data` (the first field of every handle) is ours.
        unsafe {
            let handle = libc::calloc(1, uv_handle_size(UV_POLL).max(64));
            if handle.is_null() {
                return None;
            }
            if uv_poll_init(lp, handle, fd.as_raw_fd()) != 0 {
                libc::free(handle);
                return None;
            }
            let data = Box::into_raw(Box::new(PollData {
                receiver,
                watch,
                _fd: fd,
            }));
            *handle.cast::<*mut PollData>() = data;
            Some(UvPoll { handle })
        }
    }

    fn start(&self) -> bool {
        let events = match self.watch() {
            Watch::EventFd => UV_READABLE,
            Watch::Control => UV_DISCONNECT,
        };
        // SAFETY: an initialised, open handle.
        unsafe { uv_poll_start(self.handle, events, on_poll) == 0 }
    }

    fn stop(&self) {
        // SAFETY: an initialised, open handle.
        unsafe { uv_poll_stop(self.handle) };
    }

    /// Whether the poll keeps the event loop (the process) alive.
    fn keep_alive(&self, on: bool) {
        // SAFETY: an initialised, open handle.
        unsafe {
            if on {
                uv_ref(self.handle)
            } else {
                uv_unref(self.handle)
            }
        };
    }

    fn watch(&self) -> Watch {
        // SAFETY: `data` was set by `new` and is freed only by the close callback.
        unsafe { (**self.handle.cast::<*mut PollData>()).watch }
    }
}

impl Drop for UvPoll {
    fn drop(&mut self) {
        // SAFETY: closes the open handle once; the callback frees it and its data.
        unsafe { uv_close(self.handle, on_close) };
    }
}

unsafe extern "C" fn on_close(handle: *mut c_void) {
    // SAFETY: the handle and its data were allocated by `UvPoll::new` and are closed now.
    unsafe {
        drop(Box::from_raw(*handle.cast::<*mut PollData>()));
        libc::free(handle);
    }
}

unsafe extern "C" fn on_poll(handle: *mut c_void, status: c_int, events: c_int) {
    // SAFETY: `data` is valid until the close callback.
    let data = unsafe { &**handle.cast::<*mut PollData>() };
    let Some(rx) = data.receiver.upgrade() else {
        return;
    };
    let hangup = data.watch == Watch::Control && (status < 0 || events & UV_DISCONNECT != 0);
    if data.watch == Watch::EventFd && rx.idle() {
        // Level-triggered, and only the next look drains it: stop until a receive waits.
        rx.stop_efd_poll();
        return;
    }
    rx.in_callback_scope(|| {
        let gone = || (rx.machnet.borrow().as_ref()).is_none_or(|m| m.is_sidecar_gone());
        if hangup && gone() {
            // A hang-up stays readable: close the polls for good.
            rx.shutdown(JsErr::new(
                SIDECAR_GONE,
                "the Machnet sidecar is gone (control connection closed)",
            ));
        } else {
            rx.pump();
        }
    });
}

#[derive(Default)]
struct State {
    /// Pending receives, oldest first, with the id [`Receiver::cancel`] knows them by and
    /// whether they borrow the message (`recvZc`).
    pending: VecDeque<(u64, sys::napi_deferred, bool)>,
    /// The id of the next pending receive (ids start at 1).
    next_id: u64,
    polls: Option<(UvPoll, UvPoll)>,
    /// Whether the wait fd's poll is started.
    efd_polled: bool,
    /// Whether the polls keep the process alive (a receive waits).
    alive: bool,
    /// A blocking thread is waiting for the channel's gate on our behalf.
    kicking: bool,
    /// Set by [`Receiver::shutdown`]: receives fail with this from now on.
    dead: Option<JsErr>,
}

/// How messages become JavaScript values, set up once per environment by index.js
/// (`_setupReceive`): a receive copies the message from the ring into `scratch` (a `Buffer` only
/// index.js and this module see), then `make(flow, length)` builds the `Message` in JavaScript.
/// Kept as the environment's instance data; its references live as long as the environment.
#[derive(Clone, Copy)]
pub struct MessageFactory {
    make: sys::napi_ref,
    scratch: *mut u8,
    scratch_len: usize,
}

impl MessageFactory {
    /// Validates and installs `scratch` and `make` for this environment.
    pub fn install(env: &Env, scratch: &Unknown, make: &Unknown) -> napi::Result<()> {
        let raw = env.raw();
        if make.get_type()? != napi::ValueType::Function {
            return Err(napi::Error::new(
                napi::Status::InvalidArg,
                "make must be a function",
            ));
        }
        let (mut kind, mut len, mut data) = (0, 0, ptr::null_mut());
        let (mut ab, mut offset) = (ptr::null_mut(), 0);
        // SAFETY: napi calls on the JavaScript thread with valid out-pointers.
        napi::check_status!(unsafe {
            sys::napi_get_typedarray_info(
                raw,
                scratch.raw(),
                &mut kind,
                &mut len,
                &mut data,
                &mut ab,
                &mut offset,
            )
        })?;
        if kind != sys::TypedarrayType::uint8_array || len == 0 || data.is_null() {
            return Err(napi::Error::new(
                napi::Status::InvalidArg,
                "scratch must be a non-empty Buffer",
            ));
        }
        let (mut make_ref, mut scratch_ref) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: as above; strong references (count 1) keep both alive with the environment.
        unsafe {
            napi::check_status!(sys::napi_create_reference(
                raw,
                make.raw(),
                1,
                &mut make_ref
            ))?;
            napi::check_status!(sys::napi_create_reference(
                raw,
                scratch.raw(),
                1,
                &mut scratch_ref
            ))?;
        }
        let factory = MessageFactory {
            make: make_ref,
            scratch: data.cast(),
            scratch_len: len,
        };
        // The references are freed with the environment (napi deletes what is left).
        env.set_instance_data(factory, (), |_| {})
    }

    fn get(env: &Env) -> Option<MessageFactory> {
        env.get_instance_data::<MessageFactory>()
            .ok()
            .flatten()
            .map(|f| *f)
    }
}

/// A message taken off the ring: in the factory's scratch buffer, owned, or borrowed.
pub enum Taken {
    Scratch(machnet::Flow, usize),
    Owned(machnet::Flow, Vec<u8>),
    View(machnet::ViewBuf),
}

/// The receive side of one channel, on the JavaScript thread.
pub struct Receiver {
    env: sys::napi_env,
    shared: Arc<Shared>,
    /// The channel; taken out when it is closed ([`Receiver::shutdown`]).
    sc: RefCell<Option<Arc<machnet::SharedChannel>>>,
    /// For the control socket (hang-ups); dropped with the channel.
    machnet: RefCell<Option<machnet::Machnet>>,
    /// The shared channel's wait fd.
    wait_fd: RawFd,
    async_ctx: sys::napi_async_context,
    /// The resource object of the callback scopes (a strong reference, made once).
    resource: sys::napi_ref,
    /// Set up by index.js (else messages are built here).
    factory: Option<MessageFactory>,
    /// A deadline that has passed: one-look receives and sends without reading the clock.
    past: Instant,
    this: Weak<Receiver>,
    state: RefCell<State>,
    /// The JavaScript `Flow` object of each flow handle (weak references): every message of a
    /// flow carries the same object, the one `connect` returned.
    flows: RefCell<HashMap<u32, sys::napi_ref>>,
    /// Flow events read from the ring, not emitted yet (module [`events`]).
    events: RefCell<Vec<FlowEvent>>,
    /// Emitting [`Receiver::events`] is scheduled.
    emit_scheduled: Cell<bool>,
    /// The flow object last passed to a send (a weak reference of our own) and its flow: sends
    /// on the same object skip unwrapping and type-checking it again.
    last_flow: Cell<Option<(sys::napi_ref, machnet::Flow)>>,
}

impl Receiver {
    pub fn new(
        env: &Env,
        shared: Arc<Shared>,
        sc: Arc<machnet::SharedChannel>,
        machnet: machnet::Machnet,
    ) -> Rc<Receiver> {
        let raw = env.raw();
        let mut async_ctx = ptr::null_mut();
        let mut resource = ptr::null_mut();
        // SAFETY: napi calls on the JavaScript thread; a failure leaves `async_ctx` or
        // `resource` null, and callbacks then run without an async context (their continuations
        // still run).
        unsafe {
            let mut name = ptr::null_mut();
            sys::napi_create_string_utf8(raw, c"machnet.recv".as_ptr(), 12, &mut name);
            sys::napi_async_init(raw, ptr::null_mut(), name, &mut async_ctx);
            let mut obj = ptr::null_mut();
            if sys::napi_create_object(raw, &mut obj) == sys::Status::napi_ok {
                sys::napi_create_reference(raw, obj, 1, &mut resource);
            }
        }
        Rc::new_cyclic(|this| Receiver {
            env: raw,
            // Asked for before the first look: from then on an empty look arms it.
            wait_fd: sc.wait_fd(),
            sc: RefCell::new(Some(sc)),
            shared,
            machnet: RefCell::new(Some(machnet)),
            async_ctx,
            resource,
            factory: MessageFactory::get(env),
            past: Instant::now(),
            this: this.clone(),
            state: RefCell::new(State::default()),
            flows: RefCell::new(HashMap::new()),
            events: RefCell::new(Vec::new()),
            emit_scheduled: Cell::new(false),
            last_flow: Cell::new(None),
        })
    }

    /// The channel, unless it was closed.
    pub fn sc(&self) -> Option<Arc<machnet::SharedChannel>> {
        self.sc.borrow().clone()
    }

    /// `f` on the channel, unless it was closed.
    pub fn with_sc<T>(&self, f: impl FnOnce(&machnet::SharedChannel) -> T) -> Option<T> {
        self.sc.borrow().as_deref().map(f)
    }

    /// A deadline that has passed (for one-look calls).
    pub fn past(&self) -> Instant {
        self.past
    }

    fn env(&self) -> Env {
        Env::from_raw(self.env)
    }

    /// Whether no receive is queued.
    pub fn idle(&self) -> bool {
        self.state.borrow().pending.is_empty()
    }

    /// Queues a receive; returns its promise.
    pub fn push(&self) -> napi::Result<sys::napi_value> {
        self.push_kind(false).map(|(promise, _)| promise)
    }

    /// Queues a borrowed receive (`recvZc`); returns its promise.
    pub fn push_zc(&self) -> napi::Result<sys::napi_value> {
        self.push_kind(true).map(|(promise, _)| promise)
    }

    /// Queues a receive; returns its promise and the id [`Receiver::cancel`] takes (0: the
    /// promise is already settled).
    pub fn push_cancelable(&self) -> napi::Result<(sys::napi_value, u64)> {
        self.push_kind(false)
    }

    fn push_kind(&self, zc: bool) -> napi::Result<(sys::napi_value, u64)> {
        let mut deferred = ptr::null_mut();
        let mut promise = ptr::null_mut();
        // SAFETY: napi call on the JavaScript thread with valid out-pointers.
        napi::check_status!(unsafe {
            sys::napi_create_promise(self.env, &mut deferred, &mut promise)
        })?;
        let dead = self.state.borrow().dead.clone();
        match dead {
            Some(err) => {
                self.settle(deferred, Err(err));
                Ok((promise, 0))
            }
            None => {
                let id = {
                    let mut st = self.state.borrow_mut();
                    st.next_id += 1;
                    let id = st.next_id;
                    st.pending.push_back((id, deferred, zc));
                    id
                };
                self.pump();
                Ok((promise, id))
            }
        }
    }

    /// Rejects pending receive `id` with `err` if it still waits (a message that arrives later
    /// goes to the next receive: none is lost). Returns whether it waited.
    pub fn cancel(&self, id: u64, err: JsErr) -> bool {
        let d = {
            let mut st = self.state.borrow_mut();
            let Some(i) = st.pending.iter().position(|&(p, _, _)| p == id) else {
                return false;
            };
            st.pending.remove(i).map(|(_, d, _)| d)
        };
        if let Some(d) = d {
            self.settle(d, Err(err));
        }
        if self.idle() {
            self.stop_polling();
        }
        true
    }

    /// Ends receiving for good (the channel was closed, or the sidecar is gone): pending and
    /// later receives fail with `err`, and the polls are closed.
    pub fn shutdown(&self, err: JsErr) {
        let polls = {
            let mut st = self.state.borrow_mut();
            if st.dead.is_none() {
                st.dead = Some(err.clone());
            }
            st.alive = false;
            st.polls.take()
        };
        // Closing (uv_close) happens on drop; callbacks already queued find no receiver work.
        drop(polls);
        // The flows still open end with the channel (with an error if the sidecar died).
        let flow_err = (err.code() == SIDECAR_GONE).then(|| err.clone());
        self.queue_events(vec![FlowEvent::ChannelEnded(flow_err)]);
        self.fail_all(err);
    }

    /// The channel is being closed: takes it out (to detach it; the first time), with the
    /// control connection this side holds.
    pub fn take_channel(&self) -> Option<Arc<machnet::SharedChannel>> {
        self.machnet.borrow_mut().take();
        self.sc.borrow_mut().take()
    }

    /// Runs `f` in a handle scope and a callback scope: promise continuations run when it ends.
    fn in_callback_scope(&self, f: impl FnOnce()) {
        let env = self.env;
        let mut hs = ptr::null_mut();
        let mut cs = ptr::null_mut();
        // SAFETY: called from a libuv callback on the JavaScript thread, outside any napi call.
        unsafe {
            sys::napi_open_handle_scope(env, &mut hs);
            let mut resource = ptr::null_mut();
            if !self.resource.is_null() {
                sys::napi_get_reference_value(env, self.resource, &mut resource);
            }
            if resource.is_null() {
                sys::napi_create_object(env, &mut resource);
            }
            if !self.async_ctx.is_null() {
                sys::napi_open_callback_scope(env, resource, self.async_ctx, &mut cs);
            }
        }
        f();
        // SAFETY: closes the scopes opened above, innermost first.
        unsafe {
            if !cs.is_null() {
                sys::napi_close_callback_scope(env, cs);
            }
            if !hs.is_null() {
                sys::napi_close_handle_scope(env, hs);
            }
        }
    }

    /// The flow a send's `flow` argument names: the one of the object last passed, if `v` is
    /// that object, else checked by [`crate::flow_arg`] (and remembered).
    pub fn flow_arg(&self, v: &Unknown) -> JsResult<machnet::Flow> {
        let env = self.env;
        if let Some((r, flow)) = self.last_flow.get() {
            let mut last = ptr::null_mut();
            let mut same = false;
            // SAFETY: a reference this receiver owns, on its environment; `v` is a live value.
            unsafe {
                sys::napi_get_reference_value(env, r, &mut last);
                if !last.is_null() {
                    sys::napi_strict_equals(env, last, v.raw(), &mut same);
                }
            }
            if same {
                return Ok(flow);
            }
        }
        let flow = crate::flow_arg(v)?;
        let mut r = ptr::null_mut();
        // SAFETY: as above; a weak reference (count 0) does not keep the object alive.
        if unsafe { sys::napi_create_reference(env, v.raw(), 0, &mut r) } == sys::Status::napi_ok {
            if let Some((old, _)) = self.last_flow.replace(Some((r, flow))) {
                // SAFETY: the reference replaced, created here.
                unsafe { sys::napi_delete_reference(env, old) };
            }
        }
        Ok(flow)
    }

    /// The JavaScript object of `flow`: the cached one while it lives, else a new one.
    pub fn flow_value(&self, flow: machnet::Flow) -> napi::Result<sys::napi_value> {
        let env = self.env;
        let mut flows = self.flows.borrow_mut();
        if let Some(&r) = flows.get(&flow.handle()) {
            let mut v = ptr::null_mut();
            // SAFETY: a reference created below on this environment.
            napi::check_status!(unsafe { sys::napi_get_reference_value(env, r, &mut v) })?;
            if !v.is_null() {
                return Ok(v);
            }
            // SAFETY: as above; the object is gone, so is the entry.
            unsafe { sys::napi_delete_reference(env, r) };
            flows.remove(&flow.handle());
        }
        // SAFETY: napi calls on the JavaScript thread.
        let v = unsafe { Flow::to_napi_value(env, Flow { inner: flow })? };
        let mut r = ptr::null_mut();
        // SAFETY: as above; a weak reference (count 0) does not keep the object alive.
        napi::check_status!(unsafe { sys::napi_create_reference(env, v, 0, &mut r) })?;
        if flows.len() >= 64 && flows.len().is_power_of_two() {
            // Forget flows whose objects were collected (keeps the map bounded by live flows).
            flows.retain(|_, &mut r| {
                let mut o = ptr::null_mut();
                // SAFETY: references of this map, on this environment.
                unsafe { sys::napi_get_reference_value(env, r, &mut o) };
                if o.is_null() {
                    unsafe { sys::napi_delete_reference(env, r) };
                }
                !o.is_null()
            });
        }
        flows.insert(flow.handle(), r);
        Ok(v)
    }

    /// A `Message` object: `{ flow, data }`.
    pub fn message_value(&self, m: Taken) -> napi::Result<sys::napi_value> {
        let env = self.env;
        let (flow, data) = match m {
            Taken::Owned(flow, data) => (flow, data),
            Taken::View(v) => {
                let flow = self.flow_value(v.flow)?;
                let Some(sc) = self.sc() else {
                    return Err(napi::Error::new(
                        napi::Status::GenericFailure,
                        "the channel is closed",
                    ));
                };
                let msg = crate::ZcMessage::new(env, sc, flow, &v, self.this.clone())?;
                // SAFETY: converts on the JavaScript thread.
                return unsafe { crate::ZcMessage::to_napi_value(env, msg) };
            }
            Taken::Scratch(flow, len) => {
                let flow = self.flow_value(flow)?;
                let f = self.factory.expect("a scratch message without a factory");
                return self.make_message(&f, flow, len);
            }
        };
        let flow = self.flow_value(flow)?;
        let mut obj = ptr::null_mut();
        // SAFETY: napi calls on the JavaScript thread.
        unsafe {
            let data = Bytes::to_napi_value(env, Bytes(data))?;
            napi::check_status!(sys::napi_create_object(env, &mut obj))?;
            napi::check_status!(sys::napi_set_named_property(
                env,
                obj,
                c"flow".as_ptr(),
                flow
            ))?;
            napi::check_status!(sys::napi_set_named_property(
                env,
                obj,
                c"data".as_ptr(),
                data
            ))?;
        }
        Ok(obj)
    }

    /// `make(flow, len)` of index.js: the message, copied out of the scratch buffer.
    fn make_message(
        &self,
        f: &MessageFactory,
        flow: sys::napi_value,
        len: usize,
    ) -> napi::Result<sys::napi_value> {
        let env = self.env;
        let mut make = ptr::null_mut();
        let mut undefined = ptr::null_mut();
        let mut n = ptr::null_mut();
        let mut out = ptr::null_mut();
        // SAFETY: napi calls on the JavaScript thread; `make` is a function (checked when
        // installed) held by a strong reference.
        unsafe {
            napi::check_status!(sys::napi_get_reference_value(env, f.make, &mut make))?;
            napi::check_status!(sys::napi_get_undefined(env, &mut undefined))?;
            napi::check_status!(sys::napi_create_uint32(env, len as u32, &mut n))?;
            let args = [flow, n];
            let status = sys::napi_call_function(env, undefined, make, 2, args.as_ptr(), &mut out);
            if status != sys::Status::napi_ok {
                // Do not leave the exception pending: the receive is rejected instead.
                let mut exc = ptr::null_mut();
                sys::napi_get_and_clear_last_exception(env, &mut exc);
                return Err(napi::Error::new(
                    napi::Status::GenericFailure,
                    "building the received message failed",
                ));
            }
        }
        Ok(out)
    }

    /// The next message of the channel, one look: into the scratch buffer when it fits there
    /// (one copy, no allocation), else owned.
    fn take(
        &self,
        sc: &machnet::SharedChannel,
    ) -> Result<Option<Taken>, machnet::SharedError<machnet::RecvError>> {
        if let Some(f) = &self.factory {
            // SAFETY: the scratch buffer lives as long as the environment (a strong reference);
            // only this (the JavaScript) thread touches it, and nothing holds on to it between
            // a receive and `make` copying the message out.
            let buf = unsafe { std::slice::from_raw_parts_mut(f.scratch, f.scratch_len) };
            match sc.recv_into(buf, Some(self.past)) {
                Ok(r) => return Ok(r.map(|(flow, n)| Taken::Scratch(flow, n))),
                // Larger than the scratch buffer: it stays first in line.
                Err(machnet::SharedError::Op(machnet::RecvError::BufferTooSmall { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sc
            .recv(Some(self.past))?
            .map(|(flow, data)| Taken::Owned(flow, data)))
    }

    /// The next message of the channel, one look, lent in place.
    fn take_zc(
        &self,
        sc: &machnet::SharedChannel,
    ) -> Result<Option<Taken>, machnet::SharedError<machnet::RecvError>> {
        Ok(sc.recv_zc(Some(self.past))?.map(Taken::View))
    }

    /// Whether the oldest pending receive borrows its message.
    fn front_is_zc(&self) -> bool {
        self.state.borrow().pending.front().is_some_and(|p| p.2)
    }

    fn settle_front(&self, r: Result<Taken, JsErr>) {
        let Some((_, d, _)) = self.state.borrow_mut().pending.pop_front() else {
            return;
        };
        self.settle(d, r);
    }

    fn settle(&self, d: sys::napi_deferred, r: Result<Taken, JsErr>) {
        let env = self.env;
        let value = match r {
            Ok(m) => self
                .message_value(m)
                .map_err(|e| JsErr::new(crate::errors::IO, e.to_string())),
            Err(e) => Err(e),
        };
        // SAFETY: napi calls on the JavaScript thread; each deferred is settled exactly once.
        unsafe {
            match value {
                Ok(v) => sys::napi_resolve_deferred(env, d, v),
                Err(e) => {
                    let v = e.into_value(&self.env()).unwrap_or(ptr::null_mut());
                    sys::napi_reject_deferred(env, d, v)
                }
            };
        }
    }

    /// Rejects every pending receive with `err`; the polls no longer keep the process alive.
    pub fn fail_all(&self, err: JsErr) {
        self.stop_polling();
        loop {
            let Some((_, d, _)) = self.state.borrow_mut().pending.pop_front() else {
                break;
            };
            self.settle(d, Err(err.clone()));
        }
    }

    fn stop_polling(&self) {
        let mut st = self.state.borrow_mut();
        if st.alive {
            if let Some((a, b)) = &st.polls {
                a.keep_alive(false);
                b.keep_alive(false);
            }
            st.alive = false;
        }
    }

    fn stop_efd_poll(&self) {
        let mut st = self.state.borrow_mut();
        if let (Some((efd, _)), true) = (&st.polls, st.efd_polled) {
            efd.stop();
            st.efd_polled = false;
        }
    }

    /// A receive waits: the polls (created on first use) keep the process alive. `false` if
    /// libuv refused.
    fn start_polling(&self) -> bool {
        let Some(ctl) = self.machnet.borrow().as_ref().map(|m| m.as_raw_fd()) else {
            return false;
        };
        let efd = self.wait_fd;
        let mut st = self.state.borrow_mut();
        if st.dead.is_some() {
            return false;
        }
        if st.alive {
            return true;
        }
        if st.polls.is_none() {
            let mut lp = ptr::null_mut();
            // SAFETY: napi call on the JavaScript thread.
            unsafe { sys::napi_get_uv_event_loop(self.env, &mut lp) };
            if lp.is_null() {
                return false;
            }
            let a = UvPoll::new(lp, efd, Watch::EventFd, self.this.clone());
            let b = UvPoll::new(lp, ctl, Watch::Control, self.this.clone());
            let (Some(a), Some(b)) = (a, b) else {
                return false;
            };
            if !b.start() {
                return false;
            }
            st.polls = Some((a, b));
        }
        if !st.efd_polled {
            match &st.polls {
                Some((a, _)) if a.start() => st.efd_polled = true,
                _ => return false,
            }
        }
        if let Some((a, b)) = &st.polls {
            a.keep_alive(true);
            b.keep_alive(true);
        }
        st.alive = true;
        true
    }

    /// Serves pending receives from the ring; polls the wait fd when it is empty (the empty
    /// look armed it).
    pub fn pump(&self) {
        let Ok(_gate) = self.shared.gate.try_lock() else {
            // A call waiting inside the channel holds it: wait for it off this thread.
            self.kick();
            return;
        };
        let mut look_for_events = false;
        loop {
            if self.idle() {
                self.stop_polling();
                break;
            }
            let zc = self.front_is_zc();
            let taken = self.with_sc(|sc| if zc { self.take_zc(sc) } else { self.take(sc) });
            match taken {
                None => {
                    self.fail_all(self.shared.closed_err());
                    break;
                }
                Some(Err(machnet::SharedError::Busy)) if zc => {
                    // A borrowed message is out: its release pumps again. Meanwhile do not
                    // poll (the wait fd would stay readable with nobody draining it).
                    self.stop_polling();
                    self.stop_efd_poll();
                    break;
                }
                Some(r) => match r {
                    Ok(Some(m)) => {
                        self.settle_front(Ok(m));
                        // Records behind it may be flow events: look for them below.
                        look_for_events = true;
                    }
                    Ok(None) => {
                        if !self.start_polling() {
                            self.fail_all(JsErr::new(
                                crate::errors::IO,
                                "cannot poll the channel's eventfd on the event loop",
                            ));
                        }
                        break;
                    }
                    // Errors of a receive are final for the channel (closed, sidecar gone,
                    // corrupt): every pending receive gets them.
                    Err(e) => {
                        self.fail_all(self.shared.err(e));
                        break;
                    }
                },
            }
        }
        // After an empty look the ring has nothing behind: only queued events are left.
        if look_for_events || self.with_sc(|sc| sc.has_events()) == Some(true) {
            self.take_events();
        }
    }

    /// The next message lent in place if one is waiting now (`None` also while the gate is
    /// taken).
    pub fn try_recv_zc(&self) -> Result<Option<Taken>, JsErr> {
        let Ok(_gate) = self.shared.gate.try_lock() else {
            return Ok(None);
        };
        let r = self.with_sc(|sc| self.take_zc(sc));
        self.take_events();
        r.ok_or_else(|| self.shared.closed_err())?
            .map_err(|e| self.shared.err(e))
    }

    /// The next message if one is waiting now (`None` also while the gate is taken).
    pub fn try_recv(&self) -> Result<Option<Taken>, JsErr> {
        let Ok(_gate) = self.shared.gate.try_lock() else {
            return Ok(None);
        };
        let r = self.with_sc(|sc| self.take(sc));
        self.take_events();
        r.ok_or_else(|| self.shared.closed_err())?
            .map_err(|e| self.shared.err(e))
    }

    /// Takes the flow events the receives queued (the caller holds the gate). A failure is
    /// reported by the next receive.
    fn take_events(&self) {
        let mut evs = Vec::new();
        self.with_sc(|sc| {
            while let Ok(Some(ev)) = sc.next_event(Some(self.past)) {
                evs.extend(events::flow_event(ev));
            }
        });
        self.queue_events(evs);
    }

    /// Queues flow events read from the ring; they are emitted soon after, on this thread but
    /// outside the current call (listeners never run inside a `recv()` or `tryRecv()` call).
    pub fn queue_events(&self, evs: Vec<FlowEvent>) {
        if evs.is_empty() {
            return;
        }
        self.events.borrow_mut().extend(evs);
        if self.emit_scheduled.replace(true) {
            return;
        }
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let env = self.env();
        let r = env.spawn_future_with_callback(async { Ok(()) }, move |_, ()| {
            me.emit_scheduled.set(false);
            me.emit_events();
            Ok(())
        });
        if r.is_err() {
            // Without a runtime nothing can be emitted: do not keep the events.
            self.emit_scheduled.set(false);
            self.events.borrow_mut().clear();
        }
    }

    /// The JavaScript object of flow `handle`, if the application still holds one (nobody can
    /// listen on a flow object that does not exist).
    fn cached_flow(&self, handle: u32) -> Option<sys::napi_value> {
        let r = *self.flows.borrow().get(&handle)?;
        let mut v = ptr::null_mut();
        // SAFETY: a reference created by `flow_value` on this environment.
        unsafe { sys::napi_get_reference_value(self.env, r, &mut v) };
        (!v.is_null()).then_some(v)
    }

    /// Forgets the object of a flow that is gone (its handle may name a new flow later).
    fn forget_flow(&self, handle: u32) {
        if let Some(r) = self.flows.borrow_mut().remove(&handle) {
            // SAFETY: a reference created by `flow_value` on this environment.
            unsafe { sys::napi_delete_reference(self.env, r) };
        }
    }

    /// Emits the queued flow events on the flows' objects (module [`events`]).
    fn emit_events(&self) {
        let evs = std::mem::take(&mut *self.events.borrow_mut());
        for ev in evs {
            match ev {
                FlowEvent::End(flow) => {
                    if let Some(v) = self.cached_flow(flow.handle()) {
                        // SAFETY: on the JavaScript thread, in the callback's handle scope.
                        unsafe { events::emit(self.env, v, c"end", &[]) };
                    }
                }
                FlowEvent::Closed(flow, reason) => {
                    let v = self.cached_flow(flow.handle());
                    self.forget_flow(flow.handle());
                    if let Some(v) = v {
                        self.emit_close(v, events::flow_error(&flow, reason));
                    }
                }
                FlowEvent::ChannelEnded(err) => {
                    let handles: Vec<u32> = self.flows.borrow().keys().copied().collect();
                    for h in handles {
                        let v = self.cached_flow(h);
                        self.forget_flow(h);
                        if let Some(v) = v {
                            self.emit_close(v, err.clone());
                        }
                    }
                }
            }
        }
    }

    /// `'error'` (if listened to) and `'close'` `(hadError, error)` on flow object `flow`.
    fn emit_close(&self, flow: sys::napi_value, err: Option<JsErr>) {
        let env = self.env;
        // SAFETY: napi calls on the JavaScript thread, in the callback's handle scope.
        unsafe {
            let mut undefined = ptr::null_mut();
            sys::napi_get_undefined(env, &mut undefined);
            let errv = match err {
                None => None,
                Some(e) => e.into_value(&self.env()).ok().inspect(|&v| {
                    sys::napi_set_named_property(env, v, c"flow".as_ptr(), flow);
                }),
            };
            let mut had_error = ptr::null_mut();
            sys::napi_get_boolean(env, errv.is_some(), &mut had_error);
            if let Some(e) = errv {
                if events::has_listeners(env, flow, c"error") {
                    events::emit(env, flow, c"error", &[e]);
                }
            }
            events::emit(env, flow, c"close", &[had_error, errv.unwrap_or(undefined)]);
        }
    }

    /// Has a blocking thread wait until the gate is free, then pumps again on this thread.
    fn kick(&self) {
        {
            let mut st = self.state.borrow_mut();
            if st.kicking {
                return;
            }
            st.kicking = true;
        }
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let shared = self.shared.clone();
        let env = self.env();
        let r = env.spawn_future_with_callback(
            async move {
                let _ = tokio::task::spawn_blocking(move || drop(shared.gate.lock())).await;
                Ok(())
            },
            move |_, ()| {
                me.state.borrow_mut().kicking = false;
                me.pump();
                Ok(())
            },
        );
        if r.is_err() {
            self.state.borrow_mut().kicking = false;
            self.fail_all(JsErr::new(crate::errors::IO, "cannot schedule a receive"));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for (_, r) in self.flows.get_mut().drain() {
            // SAFETY: references created by `flow_value` on this environment.
            unsafe { sys::napi_delete_reference(self.env, r) };
        }
        // The polls (closed through libuv) go with `state`.
        if let Some((r, _)) = self.last_flow.take() {
            // SAFETY: created by `flow_arg` on this environment.
            unsafe { sys::napi_delete_reference(self.env, r) };
        }
        if !self.resource.is_null() {
            // SAFETY: the reference was created by `new` on this environment.
            unsafe { sys::napi_delete_reference(self.env, self.resource) };
        }
        if !self.async_ctx.is_null() {
            // SAFETY: the context was created by `new` on this environment.
            unsafe { sys::napi_async_destroy(self.env, self.async_ctx) };
        }
    }
}
