//! Zero-copy messages for Python: `SendLoan` (room for one message in the channel's request
//! ring, written in place and committed) and `RecvView` (a received message lent in place).
//!
//! Both export the channel memory through the buffer protocol (`memoryview(loan)` is writable,
//! `memoryview(view)` read-only) and count their exports. The memory is reused as soon as a
//! loan is committed or cancelled or a view released, so those calls raise `BufferError` while
//! any export is alive (as resizing a `bytearray` does), and a loan or view that is over refuses
//! new exports. The memory itself stays mapped while the loan or view object lives (it holds
//! its channel, and a `memoryview` holds it), so no Python object can ever point at unmapped
//! memory.
//!
//! Leaving a `with` block ends the loan (cancel) or view (release); if a `memoryview` of it is
//! still alive then, it ends when the last one is released, and `BufferError` tells the caller
//! (unless the block is already leaving with an exception). A loan or view that is garbage
//! collected while outstanding is cancelled or released.

use std::ffi::{c_int, c_void};
use std::sync::{Mutex, MutexGuard};

use machnet::{ErrorKind, Flow, LoanBuf, SharedError, ViewBuf};
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::{from_kind, int_arg, shared_err, PyChannel, PyFlow};

/// Bytes in the channel memory: a loan's room or a borrowed message.
#[derive(Clone, Copy)]
pub(crate) struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the bytes are channel memory (or a message the shared channel keeps), mapped as long
// as the channel object the owner holds lives; who may touch them is governed by the owner's
// state (`Lease`), under the GIL.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl From<LoanBuf> for Region {
    fn from(b: LoanBuf) -> Region {
        Region {
            ptr: b.ptr,
            len: b.len,
        }
    }
}

impl From<ViewBuf> for Region {
    fn from(b: ViewBuf) -> Region {
        Region {
            ptr: b.ptr.cast_mut(),
            len: b.len,
        }
    }
}

/// Where a loan or a view stands.
#[derive(Default)]
struct Lease {
    /// Committed, cancelled or released: the memory belongs to the channel again.
    over: bool,
    /// Buffers exported and not released yet (memoryviews and their slices).
    exports: usize,
    /// The memoryview `.data` handed out (released before the lease ends).
    data: Option<Py<PyMemoryView>>,
    /// End the lease when the last export is released (a `with` block left while exported).
    end_when_unexported: bool,
}

/// What loans and views share: the channel, the bytes and the lease.
struct Lent {
    channel: Py<PyChannel>,
    region: Region,
    readonly: bool,
    lease: Mutex<Lease>,
}

impl Lent {
    fn new(channel: Py<PyChannel>, region: Region, readonly: bool) -> Lent {
        Lent {
            channel,
            region,
            readonly,
            lease: Mutex::new(Lease::default()),
        }
    }

    fn lease(&self) -> MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `__getbuffer__`: exports the bytes, unless the lease is over.
    ///
    /// # Safety
    /// `view` is the buffer CPython asks to fill.
    unsafe fn export(
        &self,
        owner: &Bound<'_, PyAny>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
        what: &str,
    ) -> PyResult<()> {
        if self.lease().over {
            return Err(PyBufferError::new_err(format!(
                "the {what} is over: its memory belongs to the channel again"
            )));
        }
        // SAFETY: `view` comes from CPython; the region is mapped while `owner` lives, and the
        // filled buffer holds a reference to `owner` (released by `__releasebuffer__`).
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                owner.as_ptr(),
                self.region.ptr.cast::<c_void>(),
                self.region.len as ffi::Py_ssize_t,
                c_int::from(self.readonly),
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(owner.py()));
        }
        self.lease().exports += 1;
        Ok(())
    }

    /// `__releasebuffer__`: one export less; ends a lease left while exported once none is.
    fn unexport(&self, end: impl FnOnce(&PyChannel)) {
        let end_now = {
            let mut l = self.lease();
            l.exports = l.exports.saturating_sub(1);
            let now = l.exports == 0 && l.end_when_unexported && !l.over;
            if now {
                l.over = true;
            }
            now
        };
        if end_now {
            end(self.channel.get());
        }
    }

    /// `.data`: a memoryview of the bytes (the same one until the lease ends).
    fn data<'py>(
        &self,
        owner: &Bound<'py, PyAny>,
        what: &str,
    ) -> PyResult<Bound<'py, PyMemoryView>> {
        let py = owner.py();
        {
            let l = self.lease();
            if l.over {
                return Err(over_error(py, what));
            }
            if let Some(d) = &l.data {
                return Ok(d.bind(py).clone());
            }
        }
        let d = PyMemoryView::from(owner)?;
        let mut l = self.lease();
        if let Some(other) = &l.data {
            return Ok(other.bind(py).clone());
        }
        l.data = Some(d.clone().unbind());
        Ok(d)
    }

    /// Before ending the lease: releases `.data`; `BufferError` while other exports live.
    fn unexported(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        // Out of the lock: releasing it calls `__releasebuffer__`.
        let data = self.lease().data.take();
        if let Some(d) = data {
            d.bind(py).call_method0("release")?;
        }
        let n = self.lease().exports;
        if n > 0 {
            return Err(PyBufferError::new_err(format!(
                "{n} memoryview(s) of this {what} are still alive: release them first (e.g. \
                 `with memoryview(x) as m:`); its memory is reused once the {what} ends"
            )));
        }
        Ok(())
    }

    /// Ends the lease (`end` gives the memory back); an error if it is over already or still
    /// exported.
    fn end<T>(
        &self,
        py: Python<'_>,
        what: &str,
        end: impl FnOnce(&PyChannel) -> PyResult<T>,
    ) -> PyResult<T> {
        if self.lease().over {
            return Err(over_error(py, what));
        }
        self.unexported(py, what)?;
        self.lease().over = true;
        end(self.channel.get())
    }

    /// `__exit__`: ends the lease, or (still exported) has the last export end it; raises
    /// `BufferError` then unless an exception is leaving the block anyway.
    fn exit(
        &self,
        py: Python<'_>,
        what: &str,
        failing: bool,
        end: impl FnOnce(&PyChannel) -> PyResult<()>,
    ) -> PyResult<()> {
        if self.lease().over {
            return Ok(());
        }
        match self.unexported(py, what) {
            Ok(()) => {
                self.lease().over = true;
                end(self.channel.get())
            }
            Err(e) => {
                let still_exported = {
                    let mut l = self.lease();
                    l.end_when_unexported = true;
                    l.exports > 0
                };
                if !still_exported {
                    // Released meanwhile (`.data`'s release failed for another reason).
                    self.lease().over = true;
                    end(self.channel.get())?;
                }
                if failing {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Garbage collection: the memoryview `.data` (which refers back to the owner).
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never block in a traversal; the lock is only held briefly under the GIL anyway.
        if let Ok(l) = self.lease.try_lock() {
            if let Some(d) = &l.data {
                visit.call(d)?;
            }
        }
        Ok(())
    }

    fn clear(&self) {
        let data = self.lease().data.take();
        drop(data);
    }

    /// Dropped: true if the lease was still on (and is now over).
    fn take_outstanding(&mut self) -> bool {
        let l = self.lease.get_mut().unwrap_or_else(|p| p.into_inner());
        !std::mem::replace(&mut l.over, true)
    }
}

fn over_error(py: Python<'_>, what: &str) -> PyErr {
    let done = if what == "loan" {
        "committed or cancelled"
    } else {
        "released"
    };
    from_kind(
        py,
        ErrorKind::InvalidArgument,
        format!("the {what} was already {done}"),
        None,
    )
}

/// Whether `__exit__` was called for an exception.
fn failing(exc_type: &Bound<'_, PyAny>) -> bool {
    !exc_type.is_none()
}

// ----- SendLoan -----

/// Room for one message in the channel's request ring, from :meth:`Channel.loan`: write the
/// message in place, then :meth:`commit` it (no copy on the application's side).
///
/// ``memoryview(loan)`` (or :attr:`data`) is a writable view of exactly ``len(loan)`` bytes,
/// whose initial contents are unspecified. :meth:`commit` sends the first ``used`` bytes;
/// :meth:`cancel` (or leaving a ``with`` block without committing, or dropping the loan) sends
/// nothing and gives the room back. While a loan is out, other sends of the channel wait for
/// it (a send or loan from the same thread raises ``MachnetError`` with code
/// ``ERR_MACHNET_WOULD_BLOCK``).
///
/// The memory is reused once the loan ends, so :meth:`commit` and :meth:`cancel` raise
/// ``BufferError`` while a ``memoryview`` of it (other than :attr:`data`, which they release)
/// is alive, and an ended loan exports nothing.
#[pyclass(module = "machnet", name = "SendLoan", frozen)]
pub(crate) struct SendLoan {
    lent: Lent,
    flow: Flow,
}

impl SendLoan {
    pub(crate) fn new(channel: Py<PyChannel>, flow: Flow, region: Region) -> SendLoan {
        SendLoan {
            lent: Lent::new(channel, region, false),
            flow,
        }
    }
}

fn cancel_loan(ch: &PyChannel) {
    // Nothing to report: a loan of a detached channel is gone with it.
    let _ = ch.shared.cancel_loan();
}

#[pymethods]
impl SendLoan {
    /// The flow the message goes to.
    #[getter]
    fn flow(&self) -> PyFlow {
        PyFlow(self.flow)
    }

    /// A writable memoryview of the loaned bytes (the same object until the loan ends).
    #[getter]
    fn data<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        slf.get().lent.data(slf.as_any(), "loan")
    }

    /// Whether the loan was committed or cancelled.
    #[getter]
    fn done(&self) -> bool {
        self.lent.lease().over
    }

    /// Sends the first ``used`` bytes (default: all of them) as one message and ends the loan.
    /// Raises ``InvalidArgumentError`` for ``used`` outside ``1 .. len(loan)`` (the loan stays
    /// out) or if the loan already ended, ``BufferError`` while a memoryview of it is alive,
    /// and like :meth:`Channel.send` if the flow or channel failed (nothing is sent then).
    #[pyo3(signature = (used=None))]
    fn commit(&self, py: Python<'_>, used: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let len = self.lent.region.len;
        let used = match used.filter(|u| !u.is_none()) {
            None => len,
            Some(u) => int_arg(py, u, "used", 1, len as i64)? as usize,
        };
        self.lent.end(py, "loan", |ch| {
            ch.shared.commit(used).map_err(|e| shared_err(py, e))
        })
    }

    /// Ends the loan without sending anything. Raises ``InvalidArgumentError`` if it already
    /// ended, ``BufferError`` while a memoryview of it is alive.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.lent.end(py, "loan", |ch| {
            cancel_loan(ch);
            Ok(())
        })
    }

    fn __len__(&self) -> usize {
        self.lent.region.len
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // SAFETY: forwarded from CPython.
        unsafe { slf.get().lent.export(slf.as_any(), view, flags, "loan") }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.lent.unexport(cancel_loan);
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Cancels the loan unless it was committed (see the class docs for a live memoryview).
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.lent.exit(py, "loan", failing(exc_type), |ch| {
            cancel_loan(ch);
            Ok(())
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.lent.traverse(&visit)
    }

    fn __clear__(&self) {
        self.lent.clear();
    }

    fn __repr__(&self) -> String {
        let state = if self.done() { ", done" } else { "" };
        format!(
            "<machnet.SendLoan {} bytes on flow {}{state}>",
            self.lent.region.len,
            self.flow.handle()
        )
    }
}

impl Drop for SendLoan {
    fn drop(&mut self) {
        if self.lent.take_outstanding() {
            cancel_loan(self.lent.channel.get());
        }
    }
}

// ----- RecvView -----

/// A received message lent in place, from :meth:`Channel.recv_zc`: no copy out of the channel.
///
/// ``with ch.recv_zc() as (flow, data):`` gives the flow and a read-only memoryview of the
/// message and releases it when the block ends; or use :attr:`flow`, :attr:`data` (or
/// ``memoryview(view)``, ``bytes(view)``) and call :meth:`release`. One borrowed message per
/// channel may be out at a time (other receives go on meanwhile).
///
/// The memory is reused once the message is released, so :meth:`release` raises
/// ``BufferError`` while a ``memoryview`` of it (other than :attr:`data`, which it releases) is
/// alive, and a released view exports nothing (``BufferError``) and has no :attr:`data`
/// (``InvalidArgumentError``). Copy what must outlive it (``bytes(view)``).
#[pyclass(module = "machnet", name = "RecvView", frozen)]
pub(crate) struct RecvView {
    lent: Lent,
    flow: Flow,
}

impl RecvView {
    pub(crate) fn new(channel: Py<PyChannel>, view: ViewBuf) -> RecvView {
        RecvView {
            flow: view.flow,
            lent: Lent::new(channel, view.into(), true),
        }
    }
}

fn release_view(ch: &PyChannel) {
    // Nothing to report: a message of a detached channel is gone with it.
    let _ = ch.shared.release();
}

#[pymethods]
impl RecvView {
    /// The flow the message arrived on.
    #[getter]
    fn flow(&self) -> PyFlow {
        PyFlow(self.flow)
    }

    /// A read-only memoryview of the message (the same object until it is released).
    #[getter]
    fn data<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        slf.get().lent.data(slf.as_any(), "message")
    }

    /// Whether the message was released.
    #[getter]
    fn released(&self) -> bool {
        self.lent.lease().over
    }

    /// Gives the message back to the channel. Raises ``InvalidArgumentError`` if it was
    /// released already, ``BufferError`` while a memoryview of it is alive.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.lent.end(py, "message", |ch| {
            ch.shared
                .release()
                .map_err(|e: SharedError<machnet::RecvError>| shared_err(py, e))
        })
    }

    fn __len__(&self) -> usize {
        self.lent.region.len
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // SAFETY: forwarded from CPython.
        unsafe { slf.get().lent.export(slf.as_any(), view, flags, "message") }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.lent.unexport(release_view);
    }

    /// ``(flow, data)``.
    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let data = Self::data(slf)?;
        PyTuple::new(
            slf.py(),
            [
                Bound::new(slf.py(), PyFlow(slf.get().flow))?.into_any(),
                data.into_any(),
            ],
        )
    }

    /// Releases the message (see the class docs for a live memoryview).
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.lent.exit(py, "message", failing(exc_type), |ch| {
            release_view(ch);
            Ok(())
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.lent.traverse(&visit)
    }

    fn __clear__(&self) {
        self.lent.clear();
    }

    fn __repr__(&self) -> String {
        let state = if self.released() { ", released" } else { "" };
        format!(
            "<machnet.RecvView {} bytes on flow {}{state}>",
            self.lent.region.len,
            self.flow.handle()
        )
    }
}

impl Drop for RecvView {
    fn drop(&mut self) {
        if self.lent.take_outstanding() {
            release_view(self.lent.channel.get());
        }
    }
}
