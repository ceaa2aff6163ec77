//! `machnet._machnet`: the native half of the Python package `machnet`.
//!
//! A thin layer over the Rust client crate `machnet` (rust-client/) and the sidecar library
//! (machnet-sidecar). The Python modules in `python/machnet/` wrap it into the public API
//! (context managers, asyncio, exceptions, docs); this module:
//!
//! - validates every argument itself (types and ranges), raising the package's own exception
//!   classes (defined in Python, `machnet/_errors.py`) rather than pyo3's `OverflowError`s;
//! - releases the GIL (`Python::detach`) whenever a call may block: `recv`, `connect`,
//!   `next_event`, a `send` that meets back-pressure, and the embedded sidecar;
//! - maps every Rust error to an exception class by its `ErrorKind` (`class_of`, one table),
//!   setting the exception's `code` to the kind's code name.
//!
//! A `Channel` is the client's `SharedChannel`: any number of Python threads may use it at once
//! (`ChannelBusyError` is no longer raised), and the waiting (blocking and the asyncio wait fd)
//! is the client's, not this module's.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use machnet::{
    Channel, ClientError, CloseCode, ErrorKind, Event, Flow, FlowStatus, Machnet, RequestError,
    RequestKind, SendError, SharedChannel, SharedError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyMemoryView, PyString};

mod zerocopy;

use zerocopy::{RecvView, Region, SendLoan};

/// While a blocking call waits, it wakes up this often to let Python handle signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

// ----- exceptions -----

/// Builds an instance of `machnet._errors.<class>` with `code` (the error kind's code name, or
/// `None` for the binding's own conditions) and `reason` (a close code's name, for the classes
/// that take one).
fn exception(
    py: Python<'_>,
    class: &str,
    code: Option<&str>,
    msg: String,
    reason: Option<CloseCode>,
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import("machnet._errors")?.getattr(class)?;
        let value = match reason {
            Some(c) if takes_reason(class) => cls.call1((msg.clone(), code_name(c)))?,
            _ => cls.call1((msg.clone(),))?,
        };
        if let Some(code) = code {
            value.setattr("code", code)?;
        }
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

/// Whether the exception class takes a `reason` argument (`FlowError` and its subclasses,
/// `ChannelClosedError`).
fn takes_reason(class: &str) -> bool {
    matches!(
        class,
        "FlowClosedError"
            | "ConnectionRefusedError"
            | "ConnectionResetError"
            | "ChannelClosedError"
    )
}

/// The one table from the error model to the package's exception classes (`reason` refines a
/// closed flow: a send on a reset flow raises `ConnectionResetError`).
fn class_of(kind: ErrorKind, reason: Option<CloseCode>) -> &'static str {
    match kind {
        ErrorKind::TimedOut => "TimeoutError",
        ErrorKind::InvalidArgument | ErrorKind::BufferTooSmall => "InvalidArgumentError",
        ErrorKind::MessageTooLarge => "MessageTooLargeError",
        ErrorKind::FlowClosed => match reason {
            Some(CloseCode::Refused) => "ConnectionRefusedError",
            Some(
                CloseCode::Reset
                | CloseCode::Aborted
                | CloseCode::TimedOut
                | CloseCode::ProtocolViolation,
            ) => "ConnectionResetError",
            Some(CloseCode::MessageTooLarge) => "MessageTooLargeError",
            Some(CloseCode::Shutdown) => "SidecarGoneError",
            _ => "FlowClosedError",
        },
        ErrorKind::FlowReset => "ConnectionResetError",
        ErrorKind::ConnectionRefused => "ConnectionRefusedError",
        ErrorKind::ChannelClosed => "ChannelClosedError",
        ErrorKind::SidecarUnreachable => "SidecarNotFoundError",
        ErrorKind::SidecarGone => "SidecarGoneError",
        ErrorKind::PermissionDenied | ErrorKind::VersionMismatch => "AttachRefusedError",
        ErrorKind::AddressInUse => "PortInUseError",
        ErrorKind::Protocol => "ProtocolError",
        _ => "MachnetError",
    }
}

/// The exception for an error of `kind`.
fn from_kind(py: Python<'_>, kind: ErrorKind, msg: String, reason: Option<CloseCode>) -> PyErr {
    exception(
        py,
        class_of(kind, reason),
        Some(kind.code_name()),
        msg,
        reason,
    )
}

/// The exception for any client error.
fn to_py(py: Python<'_>, e: impl ClientError) -> PyErr {
    from_kind(py, e.kind(), e.to_string(), e.close_code())
}

/// The snake_case name of a close code (`"refused"`, `"reset"`, ...).
fn code_name(c: CloseCode) -> String {
    let camel = format!("{c:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    from_kind(py, ErrorKind::InvalidArgument, msg.into(), None)
}

fn wrong_type(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    exception(py, "ArgumentTypeError", None, msg.into(), None)
}

// ----- argument validation -----

/// An `int` (not a `bool`) in `lo..=hi`.
fn int_arg(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str, lo: i64, hi: i64) -> PyResult<i64> {
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        return Err(wrong_type(
            py,
            format!("{what} must be an int, not {}", type_name(obj)),
        ));
    }
    match obj.extract::<i64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(invalid(
            py,
            format!("{what} must be in {lo}..={hi}, got {obj}"),
        )),
    }
}

fn port_arg(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<u16> {
    Ok(int_arg(py, obj, "port", 1, 65535)? as u16)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A timeout in seconds: `None` (or +inf) waits forever; negative or NaN is refused.
fn timeout_arg(
    py: Python<'_>,
    obj: Option<&Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<Duration>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if obj.is_instance_of::<PyBool>()
        || !(obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>())
    {
        return Err(wrong_type(
            py,
            format!(
                "{what} must be a number of seconds or None, not {}",
                type_name(obj)
            ),
        ));
    }
    let secs: f64 = obj
        .extract()
        .map_err(|_| invalid(py, format!("{what} is out of range: {obj}")))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(invalid(
            py,
            format!("{what} must be >= 0 seconds (or None), got {secs}"),
        ));
    }
    // Absurdly long timeouts (beyond what Duration or Instant can hold) mean "forever".
    Ok(Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| Instant::now().checked_add(*d).is_some()))
}

fn ip_arg(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Ipv4Addr> {
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_cow()?;
        return s
            .parse()
            .map_err(|_| invalid(py, format!("not an IPv4 address: {s:?}")));
    }
    // ipaddress.IPv4Address and anything else whose str() is a dotted quad.
    if let Ok(cls) = py
        .import("ipaddress")
        .and_then(|m| m.getattr("IPv4Address"))
    {
        if obj.is_instance(&cls)? {
            let s = obj.str()?.to_cow()?.into_owned();
            return s
                .parse()
                .map_err(|_| invalid(py, format!("not an IPv4 address: {s:?}")));
        }
    }
    Err(wrong_type(
        py,
        format!(
            "ip must be a str or ipaddress.IPv4Address, not {}",
            type_name(obj)
        ),
    ))
}

fn flow_arg(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Flow> {
    match obj.cast::<PyFlow>() {
        Ok(f) => Ok(f.get().0),
        Err(_) => Err(wrong_type(
            py,
            format!("flow must be a machnet.Flow, not {}", type_name(obj)),
        )),
    }
}

// ----- Flow -----

/// One Machnet connection (a handle, valid on the channel that created or accepted it).
#[pyclass(module = "machnet", name = "Flow", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash)]
struct PyFlow(Flow);

#[pymethods]
impl PyFlow {
    /// The sidecar's handle of the flow (unique within its channel, never 0).
    #[getter]
    fn handle(&self) -> u32 {
        self.0.handle()
    }
    /// The local (sidecar) IPv4 address, as a string.
    #[getter]
    fn local_ip(&self) -> String {
        self.0.local_ip().to_string()
    }
    /// The local Machnet port.
    #[getter]
    fn local_port(&self) -> u16 {
        self.0.local_port()
    }
    /// The remote IPv4 address, as a string.
    #[getter]
    fn remote_ip(&self) -> String {
        self.0.remote_ip().to_string()
    }
    /// The remote Machnet port.
    #[getter]
    fn remote_port(&self) -> u16 {
        self.0.remote_port()
    }
    /// `(local_ip, local_port)`.
    #[getter]
    fn local_addr(&self) -> (String, u16) {
        (self.local_ip(), self.local_port())
    }
    /// `(remote_ip, remote_port)`.
    #[getter]
    fn remote_addr(&self) -> (String, u16) {
        (self.remote_ip(), self.remote_port())
    }
    fn __repr__(&self) -> String {
        format!(
            "Flow(handle={}, local='{}', remote='{}')",
            self.0.handle(),
            self.0.local_addr(),
            self.0.remote_addr()
        )
    }
}

// ----- Machnet (the attachment) -----

/// A process's attachment to the sidecar (the control connection).
#[pyclass(module = "machnet._machnet", name = "Machnet", frozen)]
struct PyMachnet {
    inner: Machnet,
    path: String,
}

#[pymethods]
impl PyMachnet {
    /// Attaches to the sidecar at `path` (`None`: `$MACHNET_SOCKET` or the default path).
    #[new]
    #[pyo3(signature = (path=None))]
    fn new(py: Python<'_>, path: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let path = match path.filter(|p| !p.is_none()) {
            None => machnet::default_socket_path(),
            Some(p) => {
                let os = py
                    .import("os")?
                    .getattr("fspath")?
                    .call1((p,))
                    .map_err(|_| {
                        wrong_type(
                            py,
                            format!("path must be a str or os.PathLike, not {}", type_name(p)),
                        )
                    })?;
                let s: String = os.extract().map_err(|_| {
                    wrong_type(
                        py,
                        "path must be a str path (bytes paths are not supported)",
                    )
                })?;
                if s.is_empty() || s.contains('\0') {
                    return Err(invalid(py, format!("invalid socket path {s:?}")));
                }
                std::path::PathBuf::from(s)
            }
        };
        let shown = path.display().to_string();
        let inner = py
            .detach(|| Machnet::attach_at(&path))
            .map_err(|e| to_py(py, e))?;
        Ok(PyMachnet { inner, path: shown })
    }

    /// The control socket path this attachment used.
    #[getter]
    fn socket_path(&self) -> &str {
        &self.path
    }
    /// The sidecar's IPv4 address (the local address of every flow).
    #[getter]
    fn local_ip(&self) -> String {
        self.inner.local_ip().to_string()
    }
    /// Number of sidecar engines (valid engine indices are `0..engines`).
    #[getter]
    fn engines(&self) -> u16 {
        self.inner.engines()
    }
    /// Largest message the sidecar carries, in bytes.
    #[getter]
    fn max_message_len(&self) -> u32 {
        self.inner.max_message_len()
    }
    /// The control socket's descriptor: it turns readable (hang-up) when the sidecar is gone.
    fn fileno(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
    /// Whether the sidecar is gone (the control connection hung up). Never blocks.
    fn is_sidecar_gone(&self) -> bool {
        self.inner.is_sidecar_gone()
    }
    /// How long control requests (attach, open_channel, listen) wait for the sidecar.
    fn set_control_timeout(&self, py: Python<'_>, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        match timeout_arg(py, Some(seconds), "seconds")? {
            Some(d) => self.inner.set_control_timeout(d),
            None => self.inner.set_control_timeout(Duration::from_secs(1 << 40)),
        }
        Ok(())
    }
    /// Opens a channel on `engine` (`None`: the sidecar picks one).
    #[pyo3(signature = (engine=None))]
    fn open_channel(
        &self,
        py: Python<'_>,
        engine: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyChannel> {
        let engine = match engine.filter(|e| !e.is_none()) {
            None => None,
            Some(e) => Some(int_arg(py, e, "engine", 0, i64::from(u16::MAX))? as u16),
        };
        let ch = py
            .detach(|| self.inner.open_channel(engine))
            .map_err(|e| to_py(py, e))?;
        Ok(PyChannel {
            id: ch.id(),
            engine: ch.engine(),
            max_message_len: ch.max_message_len(),
            control_fd: self.inner.as_raw_fd(),
            busy_poll_ns: AtomicU64::new(0),
            shared: SharedChannel::new(ch).map_err(|e| {
                exception(
                    py,
                    "MachnetError",
                    None,
                    format!("cannot share the channel: {e}"),
                    None,
                )
            })?,
        })
    }
    fn __repr__(&self) -> String {
        format!(
            "Machnet(socket_path={:?}, local_ip='{}', engines={})",
            self.path,
            self.inner.local_ip(),
            self.inner.engines()
        )
    }
}

// ----- Channel -----

/// A shared-memory channel to one sidecar engine (native; wrapped by `machnet.Channel`).
///
/// Any number of Python threads may use it at once: it is the client's `SharedChannel`
/// (exactly-once delivery across threads, no lock held while a call sleeps). Blocking calls
/// release the GIL and sleep in slices of `SIGNAL_CHECK`, checking for signals in between.
#[pyclass(module = "machnet._machnet", name = "Channel", frozen)]
struct PyChannel {
    shared: SharedChannel,
    id: u32,
    engine: u16,
    max_message_len: u32,
    control_fd: RawFd,
    /// `set_busy_poll`, in nanoseconds (0: sleep at once).
    busy_poll_ns: AtomicU64,
}

/// What the payload of `send` is.
enum Data<'a, 'py> {
    /// Immutable: may be read with the GIL released.
    Bytes(&'a Bound<'py, PyBytes>),
    ByteArray(&'a Bound<'py, PyByteArray>),
}

/// The exception for a detached (closed) channel.
fn closed_error(py: Python<'_>) -> PyErr {
    from_kind(
        py,
        ErrorKind::ChannelClosed,
        "the channel is closed".into(),
        Some(CloseCode::Detached),
    )
}

/// The exception for a failed shared-channel call.
fn shared_err<E: ClientError>(py: Python<'_>, e: SharedError<E>) -> PyErr {
    match e {
        SharedError::Detached => closed_error(py),
        e => to_py(py, e),
    }
}

/// Runs a waiting call: one look with the GIL held, then (unless `deadline` is now) busy-polls
/// for up to `spin` and sleeps in slices with the GIL released, checking for signals (Ctrl-C)
/// between slices. `call(until)` looks once if `until` passed, else waits until then.
/// `Ok(None)`: `deadline` passed.
fn blocking<T: Send, E: ClientError + Send>(
    py: Python<'_>,
    deadline: Option<Instant>,
    spin: Duration,
    call: impl Fn(Instant) -> Result<Option<T>, SharedError<E>> + Sync,
) -> PyResult<Option<T>> {
    let now = Instant::now();
    if let Some(t) = call(now).map_err(|e| shared_err(py, e))? {
        return Ok(Some(t));
    }
    // Forever if it does not fit an Instant.
    let spin_until = now.checked_add(spin);
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(None);
        }
        let slice = now + SIGNAL_CHECK;
        let until = deadline.map_or(slice, |d| d.min(slice));
        let got = if spin_until.is_none_or(|s| now < s) {
            let until = spin_until.map_or(until, |s| s.min(until));
            py.detach(|| loop {
                let now = Instant::now();
                match call(now) {
                    Ok(None) if now < until => std::thread::yield_now(),
                    r => break r,
                }
            })
        } else {
            py.detach(|| call(until))
        };
        if let Some(t) = got.map_err(|e| shared_err(py, e))? {
            return Ok(Some(t));
        }
        py.check_signals()?;
    }
}

impl PyChannel {
    /// How long blocking receives busy-poll before sleeping (`set_busy_poll`).
    fn spin(&self) -> Duration {
        Duration::from_nanos(self.busy_poll_ns.load(Ordering::Relaxed))
    }

    /// Runs `f` on the channel (calls that do not sleep between the channel's records).
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&mut Channel) -> T) -> PyResult<T> {
        self.shared.with(f).map_err(|_| closed_error(py))
    }

    /// Like `with`, with the GIL released (for calls that wait for the sidecar).
    fn with_detached<T: Send, E: ClientError + Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Channel) -> Result<T, E> + Send,
    ) -> PyResult<T> {
        match py.detach(|| self.shared.with(f)) {
            Ok(r) => r.map_err(|e| to_py(py, e)),
            Err(_) => Err(closed_error(py)),
        }
    }

    fn send_data(
        &self,
        py: Python<'_>,
        flow: Flow,
        data: Data<'_, '_>,
        block: bool,
    ) -> PyResult<bool> {
        // First without waiting, holding the GIL (no copy, no GIL round trip).
        let now = Some(Instant::now());
        let first = match &data {
            Data::Bytes(b) => self.shared.send(&flow, &[b.as_bytes()], now),
            // SAFETY: the GIL is held and no Python code runs while the slice is used.
            Data::ByteArray(b) => self.shared.send(&flow, &[unsafe { b.as_bytes() }], now),
        };
        match first {
            Ok(()) => return Ok(true),
            Err(SharedError::Op(SendError::WouldBlock)) if !block => return Ok(false),
            Err(SharedError::Op(SendError::WouldBlock)) => {}
            // A loan is out: wait for it below (where the caller's own loan is reported).
            Err(SharedError::Busy) if block => {}
            Err(e) => return Err(shared_err(py, e)),
        }
        // Back-pressure: wait for ring space with the GIL released. A bytearray may change
        // meanwhile, so send a copy of it.
        let copy;
        let bytes = match &data {
            Data::Bytes(b) => b.as_bytes(),
            Data::ByteArray(b) => {
                copy = b.to_vec();
                &copy[..]
            }
        };
        blocking(py, None, Duration::ZERO, |until| {
            match self.shared.send(&flow, &[bytes], Some(until)) {
                Ok(()) => Ok(Some(true)),
                Err(SharedError::Op(SendError::WouldBlock)) => Ok(None),
                // Another thread's loan, at the end of a slice (see `loan`).
                Err(SharedError::Busy) if Instant::now() >= until => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map(|sent| sent.unwrap_or(false))
    }

    fn with_data(
        &self,
        py: Python<'_>,
        flow: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        block: bool,
    ) -> PyResult<bool> {
        let flow = flow_arg(py, flow)?;
        if let Ok(b) = data.cast::<PyBytes>() {
            self.send_data(py, flow, Data::Bytes(b), block)
        } else if let Ok(b) = data.cast::<PyByteArray>() {
            self.send_data(py, flow, Data::ByteArray(b), block)
        } else if data.is_instance_of::<PyMemoryView>() {
            // The limited API of Python 3.9 has no buffer protocol: copy through bytes().
            let b = py
                .get_type::<PyBytes>()
                .call1((data,))?
                .cast_into::<PyBytes>()?;
            self.send_data(py, flow, Data::Bytes(&b), block)
        } else {
            Err(wrong_type(
                py,
                format!(
                    "data must be bytes, bytearray or memoryview, not {}",
                    type_name(data)
                ),
            ))
        }
    }

    /// A received message as `(Flow, bytes)`.
    fn message<'py>(py: Python<'py>, flow: Flow, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        (PyFlow(flow), PyBytes::new(py, data))
            .into_pyobject(py)
            .map(|t| t.into_any())
    }

    /// An event as `(kind, flow, detail)`; see machnet.Event.
    fn event<'py>(py: Python<'py>, ev: Event) -> PyResult<Bound<'py, PyAny>> {
        let none = py.None().into_bound(py);
        let reason = |r: Option<CloseCode>| r.map(code_name);
        let t = match ev {
            Event::Message { flow, data } => {
                ("message", PyFlow(flow), PyBytes::new(py, &data).into_any()).into_pyobject(py)?
            }
            Event::Accepted { flow, port } => {
                ("accepted", PyFlow(flow), port.into_pyobject(py)?.into_any()).into_pyobject(py)?
            }
            Event::PeerClosed { flow } => ("peer_closed", PyFlow(flow), none).into_pyobject(py)?,
            Event::Closed { flow, reason: r } => (
                "closed",
                PyFlow(flow),
                reason(r).into_pyobject(py)?.into_any(),
            )
                .into_pyobject(py)?,
            Event::RequestFailed {
                flow,
                request,
                reason: r,
            } => {
                let req = match request {
                    RequestKind::Send => "send".to_string(),
                    RequestKind::Close => "close".to_string(),
                    RequestKind::Abort => "abort".to_string(),
                    other => format!("{other:?}").to_lowercase(),
                };
                let detail = (req, reason(r)).into_pyobject(py)?.into_any();
                ("request_failed", PyFlow(flow), detail).into_pyobject(py)?
            }
            other => {
                return Err(exception(
                    py,
                    "MachnetError",
                    None,
                    format!("unknown event {other:?}"),
                    None,
                ))
            }
        };
        Ok(t.into_any())
    }
}

#[pymethods]
impl PyChannel {
    /// The sidecar's id of this channel.
    #[getter]
    fn id(&self) -> u32 {
        self.id
    }
    /// The engine serving this channel.
    #[getter]
    fn engine(&self) -> u16 {
        self.engine
    }
    /// Largest message this channel carries, in bytes.
    #[getter]
    fn max_message_len(&self) -> u32 {
        self.max_message_len
    }
    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.with(|_| ()).is_err()
    }
    /// The channel's wait fd: readable when a receive or `next_event` may make progress. An
    /// empty `try_recv`/`next_event(0)` (or `arm_wakeup`) arms it.
    fn fileno(&self) -> RawFd {
        self.shared.wait_fd()
    }
    /// The control socket's descriptor (readable/hang-up when the sidecar is gone).
    fn control_fileno(&self) -> RawFd {
        self.control_fd
    }

    fn listen(&self, py: Python<'_>, port: &Bound<'_, PyAny>) -> PyResult<()> {
        let port = port_arg(py, port)?;
        self.with_detached(py, |ch| ch.listen(port))
    }

    fn unlisten(&self, py: Python<'_>, port: &Bound<'_, PyAny>) -> PyResult<()> {
        let port = port_arg(py, port)?;
        self.with_detached(py, |ch| ch.unlisten(port))
    }

    #[pyo3(signature = (ip, port, timeout=None))]
    fn connect(
        &self,
        py: Python<'_>,
        ip: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyFlow> {
        let ip = ip_arg(py, ip)?;
        let port = port_arg(py, port)?;
        let timeout =
            timeout_arg(py, timeout, "timeout")?.unwrap_or(machnet::DEFAULT_CONNECT_TIMEOUT);
        self.with_detached(py, |ch| ch.connect_timeout(ip, port, timeout))
            .map(PyFlow)
    }

    /// Starts a connect without waiting: the request's ticket, or `None` if the ring is full.
    fn connect_start(
        &self,
        py: Python<'_>,
        ip: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
    ) -> PyResult<Option<u32>> {
        let ip = ip_arg(py, ip)?;
        let port = port_arg(py, port)?;
        self.with(py, |ch| ch.start_connect(ip, port))?
            .map(|t| t.map(machnet::ConnectTicket::id))
            .map_err(|e| to_py(py, e))
    }

    /// The flow of connect `ticket` once established, `None` while unanswered; raises if it
    /// failed. Never waits.
    fn connect_poll(&self, py: Python<'_>, ticket: u32) -> PyResult<Option<PyFlow>> {
        self.with(py, |ch| {
            ch.poll_connect(machnet::ConnectTicket::from_id(ticket))
        })?
        .map(|f| f.map(PyFlow))
        .map_err(|e| to_py(py, e))
    }

    /// Gives up on connect `ticket`: a flow established later is aborted.
    fn connect_abandon(&self, py: Python<'_>, ticket: u32) -> PyResult<()> {
        self.with(py, |ch| {
            ch.abandon_connect(machnet::ConnectTicket::from_id(ticket))
        })
    }

    fn send(
        &self,
        py: Python<'_>,
        flow: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.with_data(py, flow, data, true).map(|_| ())
    }

    fn try_send(
        &self,
        py: Python<'_>,
        flow: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.with_data(py, flow, data, false)
    }

    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = timeout_arg(py, timeout, "timeout")?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        match blocking(py, deadline, self.spin(), |until| {
            self.shared.recv(Some(until))
        })? {
            Some((flow, data)) => Self::message(py, flow, &data),
            None => Err(from_kind(
                py,
                ErrorKind::TimedOut,
                format!(
                    "no message within {:?} seconds",
                    timeout.unwrap_or_default().as_secs_f64()
                ),
                None,
            )),
        }
    }

    /// The next message if one is waiting, else `None` (and the wait fd is armed).
    fn try_recv<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self
            .shared
            .recv(Some(Instant::now()))
            .map_err(|e| shared_err(py, e))?
        {
            Some((flow, data)) => Self::message(py, flow, &data).map(Some),
            None => Ok(None),
        }
    }

    /// Loans room for one message of `size` bytes on `flow` (see `SendLoan`), waiting for
    /// ring space (and for another thread's loan) up to `timeout` seconds (`None`: as long as
    /// needed): `TimeoutError` after that.
    #[pyo3(signature = (flow, size, timeout=None))]
    fn loan(
        slf: &Bound<'_, Self>,
        flow: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<SendLoan> {
        let py = slf.py();
        let flow = flow_arg(py, flow)?;
        let size = int_arg(py, size, "size", 0, i64::MAX)? as usize;
        let timeout = timeout_arg(py, timeout, "timeout")?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let ch = slf.get();
        let got = blocking(py, deadline, Duration::ZERO, |until| {
            match ch.shared.loan(&flow, size, Some(until)) {
                Ok(b) => Ok(Some(Region::from(b))),
                Err(SharedError::Op(SendError::WouldBlock)) => Ok(None),
                // Another thread's loan, at the end of a slice; the caller's own loan makes
                // `Busy` at once, before its deadline (and is reported).
                Err(SharedError::Busy) if Instant::now() >= until => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match got {
            Some(region) => Ok(SendLoan::new(slf.clone().unbind(), flow, region)),
            None => Err(from_kind(
                py,
                ErrorKind::TimedOut,
                format!(
                    "no room for a loan within {:?} seconds",
                    timeout.unwrap_or_default().as_secs_f64()
                ),
                None,
            )),
        }
    }

    /// `loan` if the request ring has room now, else `None`; raises `MachnetError`
    /// (`ERR_MACHNET_WOULD_BLOCK`) while another loan of the channel is out.
    fn try_loan(
        slf: &Bound<'_, Self>,
        flow: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
    ) -> PyResult<Option<SendLoan>> {
        let py = slf.py();
        let flow = flow_arg(py, flow)?;
        let size = int_arg(py, size, "size", 0, i64::MAX)? as usize;
        match slf.get().shared.loan(&flow, size, Some(Instant::now())) {
            Ok(b) => Ok(Some(SendLoan::new(slf.clone().unbind(), flow, b.into()))),
            Err(SharedError::Op(SendError::WouldBlock)) => Ok(None),
            Err(e) => Err(shared_err(py, e)),
        }
    }

    /// The next message lent in place (see `RecvView`), waiting like `recv` (and for another
    /// thread's borrowed message to be released).
    #[pyo3(signature = (timeout=None))]
    fn recv_zc(slf: &Bound<'_, Self>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<RecvView> {
        let py = slf.py();
        let timeout = timeout_arg(py, timeout, "timeout")?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let ch = slf.get();
        let got = blocking(py, deadline, ch.spin(), |until| {
            match ch.shared.recv_zc(Some(until)) {
                Ok(v) => Ok(v.map(ViewRegion)),
                // As in `loan`: another thread's message at the end of a slice.
                Err(SharedError::Busy) if Instant::now() >= until => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match got {
            Some(ViewRegion(v)) => Ok(RecvView::new(slf.clone().unbind(), v)),
            None => Err(from_kind(
                py,
                ErrorKind::TimedOut,
                format!(
                    "no message within {:?} seconds",
                    timeout.unwrap_or_default().as_secs_f64()
                ),
                None,
            )),
        }
    }

    /// The next message lent in place if one is waiting now, else `None` (and the wait fd is
    /// armed); raises `MachnetError` (`ERR_MACHNET_WOULD_BLOCK`) while another borrowed message
    /// of the channel is out.
    fn try_recv_zc(slf: &Bound<'_, Self>) -> PyResult<Option<RecvView>> {
        let py = slf.py();
        match slf.get().shared.recv_zc(Some(Instant::now())) {
            Ok(v) => Ok(v.map(|v| RecvView::new(slf.clone().unbind(), v))),
            Err(e) => Err(shared_err(py, e)),
        }
    }

    /// `(kind, flow, detail)` or `None` when the timeout passed; see machnet.Event.
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let timeout = timeout_arg(py, timeout, "timeout")?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        match blocking(py, deadline, self.spin(), |until| {
            self.shared.next_any(Some(until))
        })? {
            Some(ev) => Self::event(py, ev).map(Some),
            None => Ok(None),
        }
    }

    /// True if something is waiting (do not wait); else the wait fd fires when it comes.
    fn arm_wakeup(&self, py: Python<'_>) -> PyResult<bool> {
        self.shared.arm_wait_fd().map_err(|e| shared_err(py, e))
    }

    fn close_flow(&self, py: Python<'_>, flow: &Bound<'_, PyAny>) -> PyResult<()> {
        let flow = flow_arg(py, flow)?;
        self.with_detached(py, |ch| ch.close(&flow))
    }

    fn abort_flow(&self, py: Python<'_>, flow: &Bound<'_, PyAny>) -> PyResult<()> {
        let flow = flow_arg(py, flow)?;
        self.with_detached(py, |ch| ch.abort(&flow))
    }

    /// `"open"`, `"peer_closed"`, `"closing"` or `"closed"`, plus the close reason if known.
    fn flow_status(
        &self,
        py: Python<'_>,
        flow: &Bound<'_, PyAny>,
    ) -> PyResult<(String, Option<String>)> {
        let flow = flow_arg(py, flow)?;
        self.with(py, |ch| match ch.flow_status(&flow) {
            FlowStatus::Open => ("open".into(), None),
            FlowStatus::PeerClosed => ("peer_closed".into(), None),
            FlowStatus::Closing => ("closing".into(), None),
            FlowStatus::Closed(r) => ("closed".into(), r.map(code_name)),
            _ => ("closed".into(), None),
        })
    }

    fn flows(&self, py: Python<'_>) -> PyResult<Vec<PyFlow>> {
        self.with(py, |ch| ch.flows().map(PyFlow).collect())
    }

    fn set_busy_poll(&self, py: Python<'_>, seconds: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let spin = timeout_arg(py, seconds, "seconds")?.unwrap_or_default();
        let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        self.busy_poll_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }

    fn set_auto_close(&self, py: Python<'_>, on: &Bound<'_, PyAny>) -> PyResult<()> {
        if !on.is_instance_of::<PyBool>() {
            return Err(wrong_type(
                py,
                format!("on must be a bool, not {}", type_name(on)),
            ));
        }
        let on: bool = on.extract()?;
        self.with(py, |ch| ch.set_auto_close(on))?;
        self.shared.set_auto_close(on);
        Ok(())
    }

    /// Detaches the channel: gracefully (the sidecar delivers what was sent, then closes its
    /// flows; docs/CHANNEL.md §5), or with `abort` its flows are aborted at once. Closing twice
    /// does nothing. Calls sleeping on the channel in other threads raise `ChannelClosedError`.
    #[pyo3(signature = (abort = false))]
    fn close(&self, py: Python<'_>, abort: bool) -> PyResult<()> {
        let release = if abort {
            machnet::Channel::abort_channel
        } else {
            machnet::Channel::close_channel
        };
        py.detach(|| match self.shared.detach() {
            None => Ok(()),
            Some(ch) => release(ch).or_else(|e| match e {
                // Closing a channel of a dead sidecar (or over a control connection that
                // already failed) has nothing left to do: the sidecar releases the channel
                // when the connection closes.
                RequestError::SidecarGone | RequestError::Broken(_) => Ok(()),
                e => Err(e),
            }),
        })
        .map_err(|e| to_py(py, e))
    }

    fn __repr__(&self) -> String {
        format!(
            "Channel(id={}, engine={}{})",
            self.id,
            self.engine,
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// A borrowed message on its way out of a blocking call (the pointer crosses threads).
struct ViewRegion(machnet::ViewBuf);

// SAFETY: the message stays where it is until released; only the pointer moves.
unsafe impl Send for ViewRegion {}

// ----- the sidecar -----

/// Runs the `machnet` sidecar command line (`args` without the program name) until SIGINT or
/// SIGTERM; returns its exit status.
#[pyfunction]
fn run_sidecar(py: Python<'_>, args: Vec<String>) -> u8 {
    let argv: Vec<String> = std::iter::once("machnet".to_string()).chain(args).collect();
    py.detach(|| machnet_sidecar::run_cli(argv))
}

/// Describes a close code by name (`"reset"` → "reset by the remote host"); `None` if unknown.
#[pyfunction]
fn describe_close_code(name: &str) -> Option<&'static str> {
    (0..=u8::MAX)
        .filter_map(CloseCode::from_u8)
        .find(|c| code_name(*c) == name)
        .map(CloseCode::description)
}

#[pymodule]
fn _machnet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMachnet>()?;
    m.add_class::<PyChannel>()?;
    m.add_class::<PyFlow>()?;
    m.add_class::<SendLoan>()?;
    m.add_class::<RecvView>()?;
    m.add_function(wrap_pyfunction!(run_sidecar, m)?)?;
    m.add_function(wrap_pyfunction!(describe_close_code, m)?)?;
    m.add("DEFAULT_SOCKET_PATH", machnet::DEFAULT_SOCKET_PATH)?;
    m.add("SOCKET_ENV", machnet::SOCKET_ENV)?;
    m.add(
        "DEFAULT_CONNECT_TIMEOUT",
        machnet::DEFAULT_CONNECT_TIMEOUT.as_secs_f64(),
    )?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
