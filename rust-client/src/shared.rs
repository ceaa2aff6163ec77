//! [`SharedChannel`]: one [`Channel`] used by many threads at once — what the C ABI, Python and
//! Node.js hand their users. No binding implements waiting on its own.
//!
//! # Threads
//!
//! A [`Channel`] is `Send`, not `Sync`. A `SharedChannel` keeps it behind a mutex held only
//! while the channel is touched (microseconds). A blocking call does **not** hold it while it
//! sleeps: a receiver must never stop another thread from sending (the echo that would wake it
//! may need that send), and a sender blocked by back-pressure must never stop the receivers
//! from draining. The exceptions are calls made through [`SharedChannel::with`] that wait
//! inside the channel (`connect`, a `close` on a full ring): they hold the mutex.
//!
//! # Waking without lost wake-ups (docs/CHANNEL.md §4)
//!
//! All sleepers poll one eventfd (the channel's app eventfd); a write wakes them all. The
//! sidecar writes it only after clearing a `data_waiting`/`space_waiting` flag that someone
//! set. The rule kept here, under the mutex, is: *whoever drains the eventfd re-arms every flag
//! some sleeper needs and re-checks every such condition (and interrupts, and queued events);
//! if one already holds, it writes the eventfd itself* (`arm_all`). So whenever a thread
//! sleeps, either the eventfd is readable or every flag it depends on is set with its condition
//! false at the time. Sleepers are counted (receivers, event waiters, the ring space each
//! sender needs), as is an event loop polling [`SharedChannel::wait_fd`] after a try-receive
//! found nothing.
//!
//! # Flow events
//!
//! Receives take every record off the ring in order. Messages go to the caller; flow events
//! (the peer closed a flow, a flow was reset, timed out or ended, a request failed) are kept in
//! a bounded queue until [`SharedChannel::next_event`] asks for them; events beyond the limit
//! are counted, not kept. [`SharedChannel::next_event`] may have to look past the queue: it
//! takes records off the ring until it finds an event or a message. A message found that way is
//! *held* (at most one) and is the next one a receive returns, so messages and events stay in
//! ring order and a program that only asks for events cannot make the queue buffer messages
//! without bound.
//!
//! # Zero-copy (loans and borrowed messages)
//!
//! One send loan and one borrowed message may be out per channel, tracked here; the mutex is
//! *not* held while the caller writes the loan or reads the message. While a loan is out the
//! request ring's tail is reserved: other threads' sends and loans wait for it to be committed
//! or cancelled (their `try_`/passed-deadline flavours fail with [`SharedError::Busy`]); a
//! send or loan from the thread that took the loan fails at once with `Busy` (it would wait for
//! itself). Connects fail while a loan is out. A borrowed message holds its ring space; other
//! receives go on meanwhile (they take the records after it), another `recv_zc` waits (or
//! fails with `Busy` from the borrowing thread or with a passed deadline). Any thread may
//! commit, cancel or release. The channel memory stays mapped until the `SharedChannel` is
//! dropped, even after [`SharedChannel::detach`], so a pointer handed out is never dangling.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Instant;

use machnet_channel::app::{AppChannel, ChannelFault, Loan, View, Viewed, WaitFor};
use machnet_channel::mirror::MirroredMap;

use crate::channel::{Channel, Event, Flow, Got, Received, Want};
use crate::error::{Fault, RecvError, SendError};
use crate::error_kind::{ClientError, ErrorKind};
use crate::machnet::Machnet;
use crate::sys::{self, Woken};

/// How many flow events a [`SharedChannel`] keeps by default.
pub const DEFAULT_EVENT_LIMIT: usize = 1024;

/// Why a [`SharedChannel`] call failed: the operation's own error, or one of the two ways a
/// shared channel ends a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError<E> {
    /// [`SharedChannel::interrupt`] was called while this call was under way.
    #[error("interrupted")]
    Interrupted,
    /// The channel was taken out with [`SharedChannel::detach`].
    #[error("the channel was detached")]
    Detached,
    /// A send loan (for sends and loans) or a borrowed message (for `recv_zc`) is out, and
    /// this call may not wait for it (a `try_` flavour, or the caller's own thread holds it).
    #[error("a send loan or borrowed message is out on this channel")]
    Busy,
    /// `commit`, `cancel_loan` or `release` with no loan or borrowed message out.
    #[error("no send loan or borrowed message is out on this channel")]
    NoneOutstanding,
    /// The operation failed.
    #[error(transparent)]
    Op(#[from] E),
}

/// The channel was taken out with [`SharedChannel::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel was detached")]
pub struct Detached;

/// A [`Channel`] shared by many threads: `Send + Sync`, blocking calls that never hold the lock
/// while sleeping, a wait fd for event loops, interrupts and a flow-event queue (see the
/// module docs of `shared.rs`).
#[derive(Debug)]
pub struct SharedChannel {
    state: Mutex<State>,
    /// Duplicate of the channel's app eventfd: open until the last user is done, even after
    /// [`SharedChannel::detach`].
    efd: OwnedFd,
    /// For the control socket (polled for hang-up while sleeping).
    machnet: Machnet,
    /// Keeps the channel memory mapped while loans or views handed out may point into it.
    _map: Arc<MirroredMap>,
}

/// A loan handed out by [`SharedChannel::loan`]: where to write, and how much.
#[derive(Debug, Clone, Copy)]
pub struct LoanBuf {
    /// The first byte (in the channel memory).
    pub ptr: *mut u8,
    /// The bytes loaned.
    pub len: usize,
}

/// A message lent by [`SharedChannel::recv_zc`].
#[derive(Debug, Clone, Copy)]
pub struct ViewBuf {
    /// The message's flow.
    pub flow: Flow,
    /// Its first byte (in the channel memory, or a copy the shared channel keeps).
    pub ptr: *const u8,
    /// Its length.
    pub len: usize,
}

/// A borrowed message: in the ring, or the message an event look had already taken off it.
#[derive(Debug)]
enum Lent {
    Ring(View),
    Held(Vec<u8>),
}

#[derive(Debug)]
struct State {
    /// `None` once detached.
    ch: Option<Channel>,
    rx_waiters: u32,
    ev_waiters: u32,
    /// Ring bytes the threads waiting for space need.
    tx_needs: Vec<u64>,
    /// Sleepers that started before the latest interrupt and have not left yet.
    interrupted: u32,
    interrupts: u64,
    /// The wait fd was asked for: an empty try-receive arms it.
    external: bool,
    /// An event loop polls the wait fd after a try-receive found nothing.
    ext_armed: bool,
    events: FlowEvents,
    /// The loan and the borrowed message out.
    out: Outstanding,
}

/// The send loan and the borrowed message out on a shared channel, each with the thread that
/// took it. Recorded by the attempt that takes them, under the lock, so no other thread can
/// see the channel's ring reserved or held without seeing who holds it.
#[derive(Debug, Default)]
struct Outstanding {
    loan: Option<(Loan, ThreadId)>,
    lent: Option<(Lent, ThreadId)>,
}

/// What a blocking call waits for.
#[derive(Clone, Copy)]
enum Need {
    Data,
    Event,
    Space(u64),
    /// Data, for a borrowed receive (waits for an outstanding one to be released too).
    View,
}

/// What `arm_all` found ready.
struct Ready {
    data: bool,
    space: bool,
    event: bool,
}

impl SharedChannel {
    /// Shares `ch` between threads.
    pub fn new(ch: Channel) -> std::io::Result<SharedChannel> {
        Ok(SharedChannel {
            efd: ch.app_efd.try_clone()?,
            machnet: ch.machnet().clone(),
            _map: ch.map.clone(),
            state: Mutex::new(State {
                ch: Some(ch),
                rx_waiters: 0,
                ev_waiters: 0,
                tx_needs: Vec::new(),
                interrupted: 0,
                interrupts: 0,
                external: false,
                ext_armed: false,
                events: FlowEvents::default(),
                out: Outstanding::default(),
            }),
        })
    }

    /// Locks the state. A panic while locked leaves the channel in a state the client keeps
    /// consistent, so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A descriptor an event loop may poll (`POLLIN`): it becomes readable when a receive or
    /// [`SharedChannel::next_event`] would make progress. Before sleeping on it, receive with
    /// a `try_` call until it finds nothing (that arms it) and take the queued events. Readiness
    /// may be spurious. Do not read, write or close it. Also poll the [`Machnet`]'s descriptor
    /// for hang-up.
    pub fn wait_fd(&self) -> RawFd {
        self.lock().external = true;
        self.efd.as_raw_fd()
    }

    /// Makes every call sleeping on this channel right now return
    /// [`SharedError::Interrupted`]. Later calls are not affected.
    pub fn interrupt(&self) {
        let mut st = self.lock();
        st.interrupts += 1;
        st.interrupted = st.rx_waiters + st.ev_waiters + st.tx_needs.len() as u32;
        drop(st);
        self.kick();
    }

    /// Takes the channel out (to close it) and wakes every sleeper, which then fails with
    /// [`SharedError::Detached`]. `None` if it was taken already.
    pub fn detach(&self) -> Option<Channel> {
        let ch = self.lock().ch.take();
        self.kick();
        ch
    }

    /// Runs `f` on the channel (for the calls that do not wait, or wait inside the channel:
    /// listen, connect, close, flow lookups, ...), then re-establishes the wake-up invariant
    /// for the sleepers (a wait inside the channel clears the flags they rely on).
    pub fn with<T>(&self, f: impl FnOnce(&mut Channel) -> T) -> Result<T, Detached> {
        let mut st = self.lock();
        let r = f(st.ch.as_mut().ok_or(Detached)?);
        if st.has_sleepers() {
            let _ = self.arm_all(&mut st);
        }
        Ok(r)
    }

    // ----- receiving -----

    /// The next message, waiting until `deadline` (`None`: as long as needed; a passed
    /// deadline: not at all, and an empty look arms the wait fd). `Ok(None)`: nothing came.
    pub fn recv(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<(Flow, Vec<u8>)>, SharedError<RecvError>> {
        self.recv_with(deadline, |flow, data| Ok((flow, data)))
    }

    /// Like [`SharedChannel::recv`], copying the message into `buf` (straight from the ring:
    /// one copy). A message longer than `buf` is not consumed: [`RecvError::BufferTooSmall`]
    /// tells its size.
    pub fn recv_into(
        &self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<Option<(Flow, usize)>, SharedError<RecvError>> {
        self.receive(deadline, |ch, q| q.take_message_into(ch, &mut *buf))
    }

    /// The next message, handed to `accept` under the lock. `accept` may refuse it (give it back
    /// with an error, e.g. it does not fit): it then stays first in line and the error is
    /// returned. Waits as [`SharedChannel::recv`].
    #[allow(clippy::type_complexity)]
    pub fn recv_with<T>(
        &self,
        deadline: Option<Instant>,
        mut accept: impl FnMut(Flow, Vec<u8>) -> Result<T, ((Flow, Vec<u8>), RecvError)>,
    ) -> Result<Option<T>, SharedError<RecvError>> {
        self.receive(deadline, |ch, q| {
            let Some((flow, data)) = q.take_message(ch)? else {
                return Ok(None);
            };
            match accept(flow, data) {
                Ok(t) => Ok(Some(t)),
                Err((m, e)) => {
                    q.hold(m);
                    Err(e)
                }
            }
        })
    }

    /// The receive loop of every receive flavour: `attempt` until it finds something, waiting
    /// until `deadline` (a passed deadline: one look, and an empty look arms the wait fd).
    fn receive<T>(
        &self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(&mut Channel, &mut FlowEvents) -> Result<Option<T>, RecvError>,
    ) -> Result<Option<T>, SharedError<RecvError>> {
        if deadline.is_none_or(|d| d > Instant::now()) {
            return self.wait(Need::Data, deadline, |ch, q, _| attempt(ch, q));
        }
        loop {
            let mut st = self.lock();
            let got = {
                let st = &mut *st;
                let ch = st.ch.as_mut().ok_or(SharedError::Detached)?;
                attempt(ch, &mut st.events)
            };
            self.release_event_waiters(&mut st);
            if let Some(t) = got? {
                return Ok(Some(t));
            }
            if !self.arm_external(&mut st)? {
                return Ok(None);
            }
        }
    }

    /// The size of the next message, without consuming it (`None`: none is waiting).
    pub fn peek_len(&self) -> Result<Option<usize>, SharedError<RecvError>> {
        let mut st = self.lock();
        let st = &mut *st;
        let ch = st.ch.as_mut().ok_or(SharedError::Detached)?;
        let m = st.events.take_message(ch)?;
        Ok(m.map(|m| {
            let n = m.1.len();
            st.events.hold(m);
            n
        }))
    }

    /// `try_` receive found nothing: arm the wait fd for an event loop (only once it asked for
    /// the fd, so busy-polling programs pay nothing). Returns whether data raced in (look
    /// again instead of reporting "nothing").
    fn arm_external(&self, st: &mut State) -> Result<bool, SharedError<RecvError>> {
        if !st.external {
            return Ok(false);
        }
        // The caller's own receive queued these events: it learns of them by asking for events
        // next (the documented loop), not by another wake-up.
        st.events.take_news();
        // Not armed while re-checking: the caller looks again if data raced in, so the eventfd
        // need not be written for it (an event loop would see a stale readiness).
        st.ext_armed = false;
        let data = self.arm_all(st).map_err(RecvError::from)?.data;
        st.ext_armed = !data;
        Ok(data)
    }

    // ----- flow events -----

    /// The next flow event (peer closed, closed, reset, timed out, refused; a request failed),
    /// waiting until `deadline` as [`SharedChannel::recv`] does. Events behind a message wait
    /// until a receive took it.
    pub fn next_event(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<Event>, SharedError<RecvError>> {
        let attempt = |ch: &mut Channel, q: &mut FlowEvents, _: &mut Outstanding| q.next_event(ch);
        if deadline.is_some_and(|d| d <= Instant::now()) {
            let mut st = self.lock();
            let st = &mut *st;
            let ch = st.ch.as_mut().ok_or(SharedError::Detached)?;
            return Ok(attempt(ch, &mut st.events, &mut st.out)?);
        }
        self.wait(Need::Event, deadline, attempt)
    }

    /// The next message (as [`Event::Message`]) or event of any kind (accepts included),
    /// whichever comes first in the channel, waiting until `deadline` as [`SharedChannel::recv`]
    /// does (a passed deadline: one look, and an empty look arms the wait fd). Events found this
    /// way are handed over as they are: a flow whose peer closed stays half-open for the caller
    /// to close (the Python binding's `next_event`, like [`Channel::next_event`]).
    pub fn next_any(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<Event>, SharedError<RecvError>> {
        self.receive(deadline, |ch, q| q.next_any(ch))
    }

    /// Whether a receive that passes over a flow's [`Event::PeerClosed`] closes the flow
    /// (default: `true`; see [`Channel::set_auto_close`]).
    pub fn set_auto_close(&self, on: bool) {
        self.lock().events.auto_close = on;
    }

    /// Announces that an event loop is about to poll [`SharedChannel::wait_fd`] without having
    /// just made an empty `try_` receive, or quiets the fd after it turned readable (it drains
    /// and re-arms it). Returns `true` if a receive or an event look would make progress now
    /// (do not wait: look again).
    pub fn arm_wait_fd(&self) -> Result<bool, SharedError<RecvError>> {
        let mut st = self.lock();
        st.external = true;
        if st.ch.is_none() {
            return Err(SharedError::Detached);
        }
        let data = self.arm_external(&mut st)?;
        Ok(data || !st.events.queue.is_empty())
    }

    /// Whether flow events are queued (taken off the ring by receives, not yet asked for with
    /// [`SharedChannel::next_event`]). O(1), no look at the ring: lets an event loop skip the
    /// `next_event` pass after its receives when they queued nothing.
    pub fn has_events(&self) -> bool {
        !self.lock().events.queue.is_empty()
    }

    /// Sets how many flow events are kept (default [`DEFAULT_EVENT_LIMIT`]); events beyond a
    /// lowered limit (the newest first) are dropped and counted.
    pub fn set_event_limit(&self, limit: usize) {
        self.lock().events.set_limit(limit);
    }

    /// How many flow events were dropped because the queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.lock().events.dropped
    }

    // ----- sending -----

    /// Sends the concatenation of `parts` as one message on `flow`, waiting for ring space
    /// until `deadline` (`None`: as long as needed); [`SendError::WouldBlock`] once it passed.
    pub fn send(
        &self,
        flow: &Flow,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<(), SharedError<SendError>> {
        let len = parts.iter().map(|p| p.len()).sum();
        let attempt = |ch: &mut Channel, _: &mut FlowEvents, _: &mut Outstanding| match ch
            .send_parts(flow, parts, crate::channel::Block::No)
        {
            Ok(()) => Ok(Some(())),
            Err(SendError::WouldBlock) => Ok(None),
            Err(e) => Err(e),
        };
        match self.wait(Need::Space(AppChannel::footprint(len)), deadline, attempt)? {
            Some(()) => Ok(()),
            None => Err(SendError::WouldBlock.into()),
        }
    }

    // ----- zero-copy -----

    /// Loans room for one message of up to `len` bytes on `flow` (see [`Channel::loan`]),
    /// waiting until `deadline` for ring space and for another thread's loan to end
    /// ([`SendError::WouldBlock`] once it passed; a passed deadline: [`SharedError::Busy`] if a
    /// loan is out). Write at most `len` bytes at the returned pointer, then
    /// [`SharedChannel::commit`] or [`SharedChannel::cancel_loan`]. The pointer is valid until
    /// then (and the memory stays mapped until this `SharedChannel` is dropped).
    pub fn loan(
        &self,
        flow: &Flow,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<LoanBuf, SharedError<SendError>> {
        let me = std::thread::current().id();
        let attempt = |ch: &mut Channel, _: &mut FlowEvents, out: &mut Outstanding| match ch
            .loan_raw(flow, len, crate::channel::Block::No)
        {
            Ok(loan) => {
                let buf = LoanBuf {
                    ptr: loan.as_mut_ptr(),
                    len: loan.len(),
                };
                out.loan = Some((loan, me));
                Ok(Some(buf))
            }
            Err(SendError::WouldBlock) => Ok(None),
            Err(e) => Err(e),
        };
        match self.wait(Need::Space(AppChannel::footprint(len)), deadline, attempt)? {
            Some(buf) => Ok(buf),
            None => Err(SendError::WouldBlock.into()),
        }
    }

    /// Sends the first `used` bytes of the outstanding loan (see [`crate::SendLoan::commit`]).
    /// The loan is over whatever the result ([`SendError::BadCommitLength`]: nothing sent);
    /// [`SharedError::NoneOutstanding`] if no loan is out.
    pub fn commit(&self, used: usize) -> Result<(), SharedError<SendError>> {
        let mut st = self.lock();
        let Some((loan, _)) = st.out.loan.take() else {
            return Err(SharedError::NoneOutstanding);
        };
        let r = match st.ch.as_mut() {
            Some(ch) => ch.commit_raw(loan, used).map_err(SharedError::Op),
            None => Err(SharedError::Detached),
        };
        self.loan_ended(&mut st);
        r
    }

    /// Ends the outstanding loan without sending ([`SharedError::NoneOutstanding`] if none).
    pub fn cancel_loan(&self) -> Result<(), SharedError<SendError>> {
        let mut st = self.lock();
        let Some((loan, _)) = st.out.loan.take() else {
            return Err(SharedError::NoneOutstanding);
        };
        if let Some(ch) = st.ch.as_mut() {
            ch.cancel_raw(loan);
        }
        self.loan_ended(&mut st);
        Ok(())
    }

    /// Wakes the senders that waited for the loan to end.
    fn loan_ended(&self, st: &mut State) {
        if !st.tx_needs.is_empty() {
            self.kick();
        }
    }

    /// The next message, lent in place (see [`Channel::recv_zc`]), waiting until `deadline`
    /// as [`SharedChannel::recv`] does (and for another thread's borrowed message to be
    /// released; a passed deadline: [`SharedError::Busy`] if one is out). Flow events met on
    /// the way are queued as receives queue them. The bytes stay valid until
    /// [`SharedChannel::release`]; other receives may go on meanwhile.
    pub fn recv_zc(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<ViewBuf>, SharedError<RecvError>> {
        let me = std::thread::current().id();
        let attempt = |ch: &mut Channel, q: &mut FlowEvents, out: &mut Outstanding| {
            let Some((flow, lent)) = q.take_view(ch)? else {
                return Ok(None);
            };
            let (ptr, len) = match &lent {
                Lent::Ring(v) => (v.as_ptr(), v.len()),
                Lent::Held(d) => (d.as_ptr(), d.len()),
            };
            out.lent = Some((lent, me));
            Ok(Some(ViewBuf { flow, ptr, len }))
        };
        if deadline.is_none_or(|d| d > Instant::now()) {
            return self.wait(Need::View, deadline, attempt);
        }
        loop {
            let mut st = self.lock();
            if st.out.lent.is_some() {
                return Err(SharedError::Busy);
            }
            let got = {
                let st = &mut *st;
                let ch = st.ch.as_mut().ok_or(SharedError::Detached)?;
                attempt(ch, &mut st.events, &mut st.out)?
            };
            self.release_event_waiters(&mut st);
            // As in `receive`: data that raced in while arming will not ring the wait fd, so
            // look again rather than report nothing (an event loop would wait forever).
            if got.is_some() || !self.arm_external(&mut st)? {
                return Ok(got);
            }
        }
    }

    /// Gives the borrowed message back ([`SharedError::NoneOutstanding`] if none is out).
    pub fn release(&self) -> Result<(), SharedError<RecvError>> {
        let mut st = self.lock();
        let Some((lent, _)) = st.out.lent.take() else {
            return Err(SharedError::NoneOutstanding);
        };
        if let (Lent::Ring(view), Some(ch)) = (lent, st.ch.as_mut()) {
            ch.release_raw(view);
        }
        if st.rx_waiters > 0 {
            self.kick();
        }
        Ok(())
    }

    // ----- waiting -----

    fn release_event_waiters(&self, st: &mut State) {
        // A receive took the message an event look held back: event waiters may now pull the
        // events behind it (records that were on the ring when they went to sleep).
        if st.events.take_released() && st.ev_waiters > 0 {
            self.kick();
        }
    }

    /// Drains the eventfd and re-arms every flag some sleeper needs (see the module docs).
    fn arm_all(&self, st: &mut State) -> Result<Ready, Fault> {
        let Some(ch) = st.ch.as_mut() else {
            // Detached: every sleeper must see it.
            self.kick();
            return Ok(Ready {
                data: true,
                space: true,
                event: true,
            });
        };
        sys::drain_eventfd(self.efd.as_raw_fd()).map_err(Fault::Io)?;
        let data = st.events.held.is_some() || ch.app.has_pending() || arm(ch, WaitFor::Data)?;
        let space = match st.tx_needs.iter().min() {
            // Senders wait for the loan to end (its end wakes them), not for space.
            Some(_) if st.out.loan.is_some() => false,
            Some(&need) => arm(ch, WaitFor::Space(need))?,
            None => false,
        };
        // Events another thread's receive queued since the event loop armed: it is told as it
        // is told of a message.
        let news = st.ext_armed && st.events.take_news();
        let event = !st.events.queue.is_empty() || (data && st.events.held.is_none());
        let wanted_data = data && (st.rx_waiters > 0 || st.ext_armed);
        if wanted_data || news {
            // The event loop is told once; it re-arms with its next empty try-receive.
            st.ext_armed = false;
        }
        if wanted_data || space || news || (event && st.ev_waiters > 0) || st.interrupted > 0 {
            self.kick();
        }
        Ok(Ready { data, space, event })
    }

    /// Makes the eventfd readable: wakes every thread polling it.
    fn kick(&self) {
        // EAGAIN (already readable) is fine; nothing else can fail on our own eventfd.
        let _ = sys::signal_eventfd(self.efd.as_raw_fd());
    }

    /// Calls `attempt` until it yields a value, sleeping on the eventfd in between without
    /// holding the lock. `Ok(None)`: `deadline` passed.
    fn wait<T, E: From<Fault>>(
        &self,
        need: Need,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(&mut Channel, &mut FlowEvents, &mut Outstanding) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, SharedError<E>> {
        let mut st = self.lock();
        let started = st.interrupts;
        match need {
            Need::Data | Need::View => st.rx_waiters += 1,
            Need::Event => st.ev_waiters += 1,
            Need::Space(n) => st.tx_needs.push(n),
        }
        let me = std::thread::current().id();
        let no_wait = deadline.is_some_and(|d| d <= Instant::now());
        let result = loop {
            // A loan out holds back sends; a borrowed message holds back borrowed receives.
            let holder = match need {
                Need::Space(_) => st.out.loan.as_ref().map(|l| l.1),
                Need::View => st.out.lent.as_ref().map(|l| l.1),
                _ => None,
            };
            let got = {
                let st = &mut *st;
                match (st.ch.as_mut(), holder) {
                    (None, _) => break Err(SharedError::Detached),
                    // Waiting for oneself would never end; a call that may not wait is told
                    // why it got nothing.
                    (Some(_), Some(t)) if t == me || no_wait => break Err(SharedError::Busy),
                    // Another thread's: wait for it like for data (a timeout is a timeout).
                    (Some(_), Some(_)) => Ok(None),
                    (Some(ch), None) => attempt(ch, &mut st.events, &mut st.out),
                }
            };
            match got {
                Ok(None) => {}
                Ok(Some(t)) => break Ok(Some(t)),
                Err(e) => break Err(SharedError::Op(e)),
            }
            if st.interrupts != started {
                break Err(SharedError::Interrupted);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Ok(None);
            }
            let ready = match self.arm_all(&mut st) {
                Ok(r) => r,
                Err(f) => break Err(SharedError::Op(f.into())),
            };
            let ready = match need {
                Need::Data => ready.data,
                Need::View => ready.data && st.out.lent.is_none(),
                Need::Space(_) => ready.space,
                Need::Event => ready.event,
            };
            if ready {
                continue;
            }
            drop(st);
            let woken =
                sys::wait_undrained(self.efd.as_raw_fd(), self.machnet.control_fd(), deadline);
            st = self.lock();
            match woken {
                Ok(Woken::SidecarGone) => {
                    self.machnet.mark_gone();
                    break Err(SharedError::Op(Fault::SidecarGone.into()));
                }
                Ok(Woken::Event | Woken::TimedOut) => {}
                Err(e) => break Err(SharedError::Op(Fault::Io(e).into())),
            }
        };
        self.release_event_waiters(&mut st);
        if st.interrupts != started {
            st.interrupted = st.interrupted.saturating_sub(1);
        }
        match need {
            Need::Data | Need::View => st.rx_waiters -= 1,
            Need::Event => st.ev_waiters -= 1,
            Need::Space(n) => {
                if let Some(i) = st.tx_needs.iter().position(|&x| x == n) {
                    st.tx_needs.swap_remove(i);
                }
            }
        }
        result
    }
}

/// Arms `cond` on the channel; a channel the sidecar closed counts as ready (the next attempt
/// reports it).
fn arm(ch: &mut Channel, cond: WaitFor) -> Result<bool, Fault> {
    match ch.app.arm(cond) {
        Ok(ready) => Ok(ready),
        Err(ChannelFault::Closed(_)) => Ok(true),
        Err(f) => Err(f.into()),
    }
}

impl State {
    fn has_sleepers(&self) -> bool {
        self.rx_waiters > 0 || self.ev_waiters > 0 || !self.tx_needs.is_empty() || self.ext_armed
    }
}

/// The flow events of a shared channel and the message held back for the next receive.
#[derive(Debug)]
struct FlowEvents {
    queue: VecDeque<Event>,
    limit: usize,
    dropped: u64,
    held: Option<(Flow, Vec<u8>)>,
    /// Events were queued since the event loop was last told (see `arm_all`).
    news: bool,
    /// A receive took the held message: events behind it may now be pulled.
    released: bool,
    /// A receive passing over a peer's close closes the flow.
    auto_close: bool,
}

impl Default for FlowEvents {
    fn default() -> Self {
        FlowEvents {
            queue: VecDeque::new(),
            limit: DEFAULT_EVENT_LIMIT,
            dropped: 0,
            held: None,
            news: false,
            released: false,
            auto_close: true,
        }
    }
}

impl FlowEvents {
    /// Takes records off the ring until a message (returned) or nothing is left; queues the
    /// flow events met on the way. A flow whose peer closed is closed on this side, as the
    /// client's message-only receives do.
    fn pull(&mut self, ch: &mut Channel) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        self.pull_as(ch, false)
    }

    /// [`FlowEvents::pull`]; `handed_over`: the events go to the caller as they are (accepts
    /// kept, peer-closed flows left open: [`SharedChannel::next_any`]).
    fn pull_as(
        &mut self,
        ch: &mut Channel,
        handed_over: bool,
    ) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        loop {
            let Some(got) = ch.receive(Want::Event, Some(Instant::now()))? else {
                return Ok(None);
            };
            let Got::Event(ev) = got else { continue };
            match ev {
                Event::Message { flow, data } => return Ok(Some((flow, data))),
                ev if handed_over => self.push(ev),
                ev => self.note(ch, ev),
            }
        }
    }

    /// The next queued event, else the next message, for [`SharedChannel::next_any`].
    fn next_any(&mut self, ch: &mut Channel) -> Result<Option<Event>, RecvError> {
        if let Some(ev) = self.queue.pop_front() {
            return Ok(Some(ev));
        }
        let m = match self.held.take() {
            Some(m) => {
                self.released = true;
                Some(m)
            }
            None => self.pull_as(ch, true)?,
        };
        if let Some(ev) = self.queue.pop_front() {
            // Events came before the message: it waits, first in line.
            self.held = m;
            return Ok(Some(ev));
        }
        Ok(m.map(|(flow, data)| Event::Message { flow, data }))
    }

    /// The next message copied into `buf`: the held one, else the ring's next message straight
    /// from the ring (one copy), queueing the flow events before it. A message that does not fit
    /// stays first in line.
    fn take_message_into(
        &mut self,
        ch: &mut Channel,
        buf: &mut [u8],
    ) -> Result<Option<(Flow, usize)>, RecvError> {
        if let Some((flow, data)) = self.held.take() {
            let n = data.len();
            if n > buf.len() {
                let available = buf.len();
                self.held = Some((flow, data));
                return Err(RecvError::BufferTooSmall {
                    needed: n,
                    available,
                });
            }
            self.released = true;
            buf[..n].copy_from_slice(&data);
            return Ok(Some((flow, n)));
        }
        loop {
            match ch.try_recv_into_or_event(buf)? {
                None => return Ok(None),
                Some(Received::Message(flow, n)) => return Ok(Some((flow, n))),
                Some(Received::Event(ev)) => self.note(ch, ev),
            }
        }
    }

    /// Queues a flow event met on the ring (accepts are not flow events here). A flow whose
    /// peer closed is closed on this side: nobody else would close it. A failure here (sidecar
    /// gone) is reported by the application's next call.
    fn note(&mut self, ch: &mut Channel, ev: Event) {
        match ev {
            Event::Accepted { .. } => {}
            Event::PeerClosed { ref flow } => {
                if self.auto_close {
                    let _ = ch.close(flow);
                }
                self.push(ev);
            }
            ev => self.push(ev),
        }
    }

    fn push(&mut self, ev: Event) {
        if self.queue.len() >= self.limit {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(ev);
        self.news = true;
    }

    /// The next message, taken (put it back with [`FlowEvents::hold`] if needed).
    fn take_message(&mut self, ch: &mut Channel) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        match self.held.take() {
            Some(m) => {
                self.released = true;
                Ok(Some(m))
            }
            None => self.pull(ch),
        }
    }

    /// The next message, lent: the held one (already off the ring), else the ring's next
    /// message in place, queueing the flow events before it.
    fn take_view(&mut self, ch: &mut Channel) -> Result<Option<(Flow, Lent)>, RecvError> {
        if let Some((flow, data)) = self.held.take() {
            self.released = true;
            return Ok(Some((flow, Lent::Held(data))));
        }
        loop {
            let r = ch.app.poll_view_or_event();
            ch.wake_sidecar_after_view()?;
            match r? {
                None => return Ok(None),
                Some(Viewed::Message(flow, view)) => return Ok(Some((flow, Lent::Ring(view)))),
                Some(Viewed::Event(ev)) => self.note(ch, ev),
            }
        }
    }

    fn hold(&mut self, m: (Flow, Vec<u8>)) {
        self.held = Some(m);
    }

    /// The next flow event: a queued one, else one from the ring (unless a message is held
    /// back: events behind it wait until it is received).
    fn next_event(&mut self, ch: &mut Channel) -> Result<Option<Event>, RecvError> {
        if self.queue.is_empty() && self.held.is_none() {
            self.held = self.pull(ch)?;
        }
        Ok(self.queue.pop_front())
    }

    fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    fn take_news(&mut self) -> bool {
        std::mem::take(&mut self.news)
    }

    fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        while self.queue.len() > limit {
            self.queue.pop_back();
            self.dropped += 1;
        }
    }
}

impl<E: ClientError> ClientError for SharedError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            SharedError::Interrupted => ErrorKind::Interrupted,
            SharedError::Detached => ErrorKind::ChannelClosed,
            SharedError::Busy => ErrorKind::WouldBlock,
            SharedError::NoneOutstanding => ErrorKind::InvalidArgument,
            SharedError::Op(e) => e.kind(),
        }
    }

    fn os_error(&self) -> Option<&std::io::Error> {
        match self {
            SharedError::Op(e) => e.os_error(),
            _ => None,
        }
    }

    fn close_code(&self) -> Option<machnet_channel::CloseCode> {
        match self {
            SharedError::Op(e) => e.close_code(),
            _ => None,
        }
    }
}
