//! One shared-memory channel: a thread's data path to one sidecar engine (docs/CHANNEL.md §3–4).
//!
//! This is the I/O half: mapping the memory, the eventfds, deadlines, the sidecar's liveness,
//! blocking, `try_` and async flavours. The channel protocol itself (records, the flow table,
//! connect tracking, the wait flags) is [`machnet_channel::app::AppChannel`], which never
//! performs a system call; every operation here calls it, then signals the sidecar if it asks,
//! and waits with [`Channel::wait_for`] when it cannot proceed.

use std::cell::Cell;
use std::io::IoSlice;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use machnet_channel::app::{
    self, AppChannel, ChannelFault, Loan, PollError, SubmitError, View, WaitFor,
};
pub use machnet_channel::app::{ConnectTicket, Event, Flow, FlowStatus, RequestKind};
pub(crate) use machnet_channel::app::{Got, Want};
use machnet_channel::mirror::{MirrorError, MirroredMap};
use machnet_channel::{ConnectBudget, HEADER_PAGE};

use crate::error::{
    CloseError, ConnectError, Fault, ListenError, OpenChannelError, RecvError, RequestError,
    SendError,
};
use crate::machnet::Machnet;
use crate::sys::{self, Woken};

/// How long [`Channel::connect`] waits for the sidecar's verdict. The sidecar itself gives up
/// much earlier (after its SYN retries) and answers `ConnectFailed`; this is only a safety net.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often non-blocking calls that find nothing check whether the sidecar is still there.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(10);

/// Whether a push may wait for ring space.
#[derive(Clone, Copy)]
pub(crate) enum Block {
    No,
    Until(Option<Instant>),
}

/// Why a push did not happen.
pub(crate) enum PushFail {
    WouldBlock,
    TimedOut,
    Fault(Fault),
    /// The request itself was refused (never `Full` or `Fault`).
    Rejected(SubmitError),
}

impl From<Fault> for PushFail {
    fn from(f: Fault) -> Self {
        PushFail::Fault(f)
    }
}

impl From<ChannelFault> for Fault {
    fn from(f: ChannelFault) -> Self {
        match f {
            ChannelFault::Closed(c) => Fault::Closed(c),
            ChannelFault::Corrupt(why) => Fault::Corrupt(why),
        }
    }
}

impl From<PollError> for RecvError {
    fn from(e: PollError) -> Self {
        match e {
            PollError::BufferTooSmall { needed, available } => {
                RecvError::BufferTooSmall { needed, available }
            }
            PollError::ViewOutstanding => RecvError::ViewOutstanding,
            PollError::Fault(f) => Fault::from(f).into(),
        }
    }
}

impl From<SubmitError> for SendError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::WrongChannel => SendError::WrongChannel,
            SubmitError::Empty => SendError::Empty,
            SubmitError::TooLarge { len, max } => SendError::TooLarge { len, max },
            SubmitError::FlowClosed(c) => SendError::FlowClosed(c),
            SubmitError::FlowClosing => SendError::FlowClosing,
            SubmitError::Full { .. } => SendError::WouldBlock,
            SubmitError::LoanOutstanding => SendError::LoanOutstanding,
            SubmitError::BadCommitLength { used, loaned } => {
                SendError::BadCommitLength { used, loaned }
            }
            // Channels are always mapped mirrored here, and loans never leave their channel.
            SubmitError::NotMirrored => SendError::Io(std::io::Error::other(e.to_string())),
            SubmitError::Fault(f) => Fault::from(f).into(),
        }
    }
}

impl From<PushFail> for SendError {
    fn from(e: PushFail) -> Self {
        match e {
            PushFail::WouldBlock | PushFail::TimedOut => SendError::WouldBlock,
            PushFail::Fault(f) => f.into(),
            PushFail::Rejected(e) => e.into(),
        }
    }
}

/// What [`Channel::try_recv_into_or_event`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A message of this many bytes, copied into the caller's buffer.
    Message(Flow, usize),
    /// Any other event (never [`Event::Message`]).
    Event(Event),
}

/// A shared-memory channel to one sidecar engine.
///
/// Opened with [`Machnet::open_channel`]. A channel is used by one thread at a time: it is
/// `Send` (it can move to another thread) but not `Sync`, and its operations take `&mut self`.
/// Open one channel per thread that does network I/O; flows belong to the channel that created
/// or accepted them.
///
/// Dropping the channel (or [`Channel::close_channel`]) detaches it gracefully, as does the
/// process exiting: the sidecar still delivers every message whose `send` returned, then
/// closes the channel's flows (within its linger) and releases its memory
/// (docs/CHANNEL.md §5). [`Channel::abort_channel`] aborts the flows instead.
///
/// ```compile_fail
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<machnet::Channel>(); // a Channel is not Sync
/// ```
pub struct Channel {
    machnet: Machnet,
    id: u32,
    engine: u16,
    /// The channel protocol (sans-IO).
    pub(crate) app: AppChannel,
    busy_poll: Option<Duration>,
    last_liveness: Instant,
    detached: bool,
    #[cfg(feature = "tokio")]
    pub(crate) async_fds: Option<crate::tokio_support::AsyncFds>,
    // Keep the descriptors and the mapping after everything that refers to them.
    pub(crate) app_efd: OwnedFd,
    sidecar_efd: OwnedFd,
    /// The channel memory, rings mirrored (loans and views point into it; a shared channel
    /// keeps it mapped while a C caller may still hold such a pointer).
    pub(crate) map: Arc<MirroredMap>,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("engine", &self.engine)
            .field("flows", &self.app.flow_count())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Builds a channel from the descriptors the sidecar sent, validating all of them.
    pub(crate) fn from_parts(
        machnet: Machnet,
        id: u32,
        engine: u16,
        len: u64,
        memfd: OwnedFd,
        app_efd: OwnedFd,
        sidecar_efd: OwnedFd,
    ) -> Result<Channel, OpenChannelError> {
        let bad = |s: String| OpenChannelError::BadDescriptors(s);
        let size = sys::file_size(memfd.as_fd())
            .map_err(|e| bad(format!("cannot stat the channel memory: {e}")))?;
        if size != len {
            return Err(bad(format!(
                "channel memory is {size} bytes, the sidecar announced {len}"
            )));
        }
        if len < HEADER_PAGE || usize::try_from(len).is_err() {
            return Err(bad(format!("impossible channel length {len}")));
        }
        // Without F_SEAL_SHRINK the file could be truncated under the mapping, turning accesses
        // into SIGBUS (docs/CHANNEL.md §2).
        let seals = sys::seals(memfd.as_raw_fd())
            .map_err(|e| bad(format!("channel memory is not a sealable memfd: {e}")))?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("channel memory is not sealed against shrinking".into()));
        }
        // Each ring's data is mapped twice back-to-back, so that every record is contiguous
        // (loaned sends, borrowed receives); the header is validated on the way.
        let map = MirroredMap::map(memfd.as_fd(), len).map_err(|e| match e {
            MirrorError::Sys { source, .. } => OpenChannelError::Map(source),
            MirrorError::Layout(l) => OpenChannelError::Layout(l),
            e @ MirrorError::PageSize(_) => bad(e.to_string()),
        })?;
        drop(memfd);
        // The views point into `map`, stored next to them and dropped after them.
        let views = map.views();
        let app = AppChannel::new(map.layout(), views).map_err(|e| bad(e.to_string()))?;
        sys::set_nonblocking(app_efd.as_raw_fd()).map_err(|e| bad(format!("app eventfd: {e}")))?;
        Ok(Channel {
            machnet,
            id,
            engine,
            app,
            busy_poll: None,
            last_liveness: Instant::now(),
            detached: false,
            #[cfg(feature = "tokio")]
            async_fds: None,
            app_efd,
            sidecar_efd,
            map: Arc::new(map),
            _not_sync: PhantomData,
        })
    }

    // ----- information -----

    /// The sidecar's id of this channel (valid on this process's control connection).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The engine serving this channel.
    pub fn engine(&self) -> u16 {
        self.engine
    }

    /// Largest message this channel carries, in bytes.
    pub fn max_message_len(&self) -> u32 {
        self.app.max_message_len()
    }

    /// The attachment this channel belongs to.
    pub fn machnet(&self) -> &Machnet {
        &self.machnet
    }

    /// The flows of this channel that are not closed yet (as far as the notifications read so
    /// far tell).
    pub fn flows(&self) -> impl Iterator<Item = Flow> + '_ {
        self.app.flows()
    }

    /// Where `flow` stands. Receive calls apply close notifications even when they skip them,
    /// so an application that only calls [`Channel::recv`] can learn here that a flow ended.
    /// A flow of another channel is reported closed.
    pub fn flow_status(&self, flow: &Flow) -> FlowStatus {
        self.app.flow_status(flow)
    }

    /// The open flow with these addresses, if any (the C API names flows by their 4-tuple).
    pub fn flow_by_addrs(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Option<Flow> {
        self.app.flow_by_addrs(local, remote)
    }

    /// Poll for up to `spin` checking the ring before sleeping on the eventfd (`None`: sleep at
    /// once, the default). Polling trades a CPU core for latency: a cross-core wake-up costs
    /// tens of microseconds on many VMs. Between checks the thread yields the CPU, so a poller
    /// does not starve the sidecar engine or peer it waits for on a crowded host.
    pub fn set_busy_poll(&mut self, spin: Option<Duration>) {
        self.busy_poll = spin.filter(|d| !d.is_zero());
    }

    /// Whether the message-only receives ([`Channel::recv`], [`Channel::recv_into`] and their
    /// `try_`/`_timeout`/async flavours) close a flow gracefully when they pass over its
    /// [`Event::PeerClosed`] (default: `true`). Such an application never sees the event, and
    /// without this the flow would stay half-closed (and held by the sidecar) forever. Messages
    /// sent before are still delivered. Turn it off to keep sending after the peer closed, and
    /// watch [`Channel::flow_status`] or use [`Channel::next_event`] instead.
    pub fn set_auto_close(&mut self, on: bool) {
        self.app.set_auto_close(on);
    }

    // ----- control -----

    /// Accepts connections to Machnet `port` on this channel: accepted flows appear as
    /// [`Event::Accepted`] (and implicitly in [`Channel::recv`]).
    ///
    /// A port belongs to one application (process) host-wide: another application gets
    /// [`ListenError::PortInUse`]. Other channels of this application may listen on the same
    /// port too and form its *listen group* (docs/CHANNEL.md §2): each new flow is accepted on
    /// one engine with a member and announced on a member channel of that engine (round-robin
    /// among several), never moved between engines. To serve a port from every engine, open one
    /// channel per engine (`Machnet::open_channel(Some(e))` for `e` in `0..Machnet::engines()`),
    /// listen on each and serve each from its own thread. Engines without a member leave the
    /// flow to one that has; a connect succeeds while any member listens. A member that
    /// unlistens or closes ends only its own flows' listening; the others go on.
    pub fn listen(&mut self, port: u16) -> Result<(), ListenError> {
        self.machnet.listen(self.id, port)
    }

    /// Stops listening on `port`; flows already accepted are unaffected.
    pub fn unlisten(&mut self, port: u16) -> Result<(), ListenError> {
        self.machnet.unlisten(self.id, port)
    }

    /// Detaches the channel gracefully (docs/CHANNEL.md §5): the sidecar carries out what was
    /// sent on it — every message whose `send` returned is delivered — then closes its flows
    /// (FIN) and releases it; flows still open after the sidecar's linger are aborted. Dropping
    /// the channel does the same but ignores errors.
    pub fn close_channel(mut self) -> Result<(), RequestError> {
        self.detached = true;
        self.machnet.close_channel_id(self.id, false)
    }

    /// Detaches the channel and aborts its flows at once: peers see a reset, and messages not
    /// yet delivered are discarded.
    pub fn abort_channel(mut self) -> Result<(), RequestError> {
        self.detached = true;
        self.machnet.close_channel_id(self.id, true)
    }

    // ----- connecting and closing flows -----

    /// Opens a flow to `ip`:`port`, waiting until the sidecar reports success or failure (at
    /// most [`DEFAULT_CONNECT_TIMEOUT`]). Notifications that arrive meanwhile are kept for
    /// [`Channel::recv`] / [`Channel::next_event`].
    pub fn connect(&mut self, ip: Ipv4Addr, port: u16) -> Result<Flow, ConnectError> {
        self.connect_timeout(ip, port, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Like [`Channel::connect`] with a timeout. If the timeout passes first, the request is
    /// abandoned: should the flow be established later, it is aborted.
    pub fn connect_timeout(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<Flow, ConnectError> {
        let deadline = Instant::now().checked_add(timeout);
        let ticket = match self.connect_start(ip, port, Block::Until(deadline)) {
            Ok(ticket) => ticket,
            Err(PushFail::Fault(f)) => return Err(f.into()),
            Err(PushFail::Rejected(e @ SubmitError::LoanOutstanding)) => {
                return Err(ConnectError::Io(std::io::Error::other(e.to_string())))
            }
            Err(PushFail::WouldBlock | PushFail::TimedOut | PushFail::Rejected(_)) => {
                return Err(ConnectError::TimedOut(timeout))
            }
        };
        loop {
            match self.connect_poll(ticket) {
                Ok(Some(flow)) => return Ok(flow),
                Ok(None) => {}
                Err(e) => {
                    self.app.abandon_connect(ticket);
                    return Err(e);
                }
            }
            match self.wait_for(WaitFor::Data, deadline) {
                Ok(true) => {}
                Ok(false) => {
                    self.app.abandon_connect(ticket);
                    return Err(ConnectError::TimedOut(timeout));
                }
                Err(f) => {
                    self.app.abandon_connect(ticket);
                    return Err(f.into());
                }
            }
        }
    }

    /// Starts opening a flow to `ip`:`port` without waiting, for event loops that wait on the
    /// channel's fd themselves (Python asyncio, other reactors). `Ok(None)`: the request ring is
    /// full now; try again later. Follow with [`Channel::poll_connect`] whenever the channel's
    /// fd turns readable, and [`Channel::abandon_connect`] if you give up.
    pub fn start_connect(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<Option<ConnectTicket>, ConnectError> {
        match self.connect_start(ip, port, Block::No) {
            Ok(ticket) => Ok(Some(ticket)),
            Err(PushFail::WouldBlock | PushFail::TimedOut | PushFail::Rejected(_)) => Ok(None),
            Err(PushFail::Fault(f)) => Err(f.into()),
        }
    }

    /// Reads notifications until the answer to `ticket`: `Some(flow)` once established,
    /// `None` if it has not come yet (other notifications are kept for [`Channel::recv`] and
    /// [`Channel::next_event`]; answers to other tickets are kept for them), `Err` if the
    /// connect failed. Never waits.
    pub fn poll_connect(&mut self, ticket: ConnectTicket) -> Result<Option<Flow>, ConnectError> {
        self.connect_poll(ticket)
    }

    /// Gives up on a connect started with [`Channel::start_connect`]: should the flow be
    /// established later (or have been already, unclaimed), it is aborted.
    pub fn abandon_connect(&mut self, ticket: ConnectTicket) {
        self.app.abandon_connect(ticket);
    }

    /// Writes a `Connect` record.
    pub(crate) fn connect_start(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        block: Block,
    ) -> Result<ConnectTicket, PushFail> {
        self.app.check_usable().map_err(Fault::from)?;
        self.check_sidecar()?;
        self.submit(block, |app| app.start_connect(ip, port))
    }

    /// Reads notifications until the answer to `ticket` (`Some`) or the ring is empty (`None`);
    /// others are kept for later.
    pub(crate) fn connect_poll(
        &mut self,
        ticket: ConnectTicket,
    ) -> Result<Option<Flow>, ConnectError> {
        let r = self.app.poll_connect(ticket);
        self.wake_sidecar()?;
        r.map_err(|e| match e {
            app::ConnectError::Failed(c) => match c.and_then(ConnectBudget::of_close_code) {
                Some(budget) => ConnectError::OverBudget(budget),
                None => ConnectError::Failed(c),
            },
            app::ConnectError::Fault(f) => Fault::from(f).into(),
        })
    }

    /// Closes this side of `flow` gracefully: messages already sent are delivered first. Sends
    /// on it fail from now on; messages the peer still sends are delivered. The flow ends
    /// ([`Event::Closed`] with [`CloseCode::Graceful`](crate::CloseCode::Graceful)) once the peer has closed its side too
    /// (an application that only calls `recv` does so automatically: see
    /// [`Channel::set_auto_close`]). Closing a closed flow does nothing.
    pub fn close(&mut self, flow: &Flow) -> Result<(), CloseError> {
        self.end_flow(flow, false)
    }

    /// Aborts `flow` at once (the peer sees a reset). Aborting a closed flow does nothing.
    pub fn abort(&mut self, flow: &Flow) -> Result<(), CloseError> {
        self.end_flow(flow, true)
    }

    /// [`Channel::close`] / [`Channel::abort`] without waiting for ring space: `Ok(false)` if the
    /// request ring is full now (nothing was written; try again when there is room).
    #[cfg(feature = "tokio")]
    pub(crate) fn try_end_flow(&mut self, flow: &Flow, abort: bool) -> Result<bool, CloseError> {
        if !self.app.owns(flow) {
            return Err(CloseError::WrongChannel);
        }
        self.app.check_usable().map_err(Fault::from)?;
        self.check_sidecar()?;
        match self.submit(Block::No, |app| app.end_flow(flow, abort)) {
            Ok(()) => Ok(true),
            Err(PushFail::WouldBlock | PushFail::TimedOut) => Ok(false),
            Err(PushFail::Fault(f)) => Err(f.into()),
            Err(PushFail::Rejected(_)) => Err(CloseError::WrongChannel),
        }
    }

    fn end_flow(&mut self, flow: &Flow, abort: bool) -> Result<(), CloseError> {
        if !self.app.owns(flow) {
            return Err(CloseError::WrongChannel);
        }
        self.app.check_usable().map_err(Fault::from)?;
        self.check_sidecar()?;
        match self.submit(Block::Until(None), |app| app.end_flow(flow, abort)) {
            Ok(()) => Ok(()),
            Err(PushFail::Fault(f)) => Err(f.into()),
            Err(PushFail::Rejected(_)) => Err(CloseError::WrongChannel),
            Err(PushFail::WouldBlock | PushFail::TimedOut) => Err(CloseError::Io(
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            )),
        }
    }

    // ----- sending -----

    /// Sends `data` as one message on `flow`, waiting for ring space if the sidecar applies
    /// back-pressure (it never drops a message silently).
    pub fn send(&mut self, flow: &Flow, data: &[u8]) -> Result<(), SendError> {
        self.send_parts(flow, &[data], Block::Until(None))
    }

    /// Sends the concatenation of `parts` as one message on `flow` (waits for space like
    /// [`Channel::send`]).
    pub fn send_vectored(&mut self, flow: &Flow, parts: &[IoSlice<'_>]) -> Result<(), SendError> {
        with_slices(parts, |p| self.send_parts(flow, p, Block::Until(None)))
    }

    /// Sends `data` on `flow` if the request ring has room now; [`SendError::WouldBlock`]
    /// otherwise.
    pub fn try_send(&mut self, flow: &Flow, data: &[u8]) -> Result<(), SendError> {
        self.send_parts(flow, &[data], Block::No)
    }

    /// Vectored [`Channel::try_send`].
    pub fn try_send_vectored(
        &mut self,
        flow: &Flow,
        parts: &[IoSlice<'_>],
    ) -> Result<(), SendError> {
        with_slices(parts, |p| self.send_parts(flow, p, Block::No))
    }

    pub(crate) fn send_parts(
        &mut self,
        flow: &Flow,
        parts: &[&[u8]],
        block: Block,
    ) -> Result<(), SendError> {
        self.app
            .check_send(flow, parts.iter().map(|p| p.len()).sum())?;
        self.check_sidecar()?;
        Ok(self.submit(block, |app| app.send(flow, parts))?)
    }

    // ----- zero-copy -----

    /// Loans room for one message of up to `len` bytes on `flow` in the channel memory, waiting
    /// for ring space as [`Channel::send`] does: write the message into the returned
    /// [`SendLoan`] (a `&mut [u8]` of exactly `len` bytes) and [`SendLoan::commit`] it — no
    /// copy on the application's side. Dropping the loan sends nothing and gives the room back.
    /// The loan borrows the channel: nothing else can use it meanwhile.
    pub fn loan(&mut self, flow: &Flow, len: usize) -> Result<SendLoan<'_>, SendError> {
        let loan = self.loan_raw(flow, len, Block::Until(None))?;
        Ok(SendLoan::new(self, loan))
    }

    /// [`Channel::loan`] if the request ring has room now; [`SendError::WouldBlock`] otherwise.
    pub fn try_loan(&mut self, flow: &Flow, len: usize) -> Result<SendLoan<'_>, SendError> {
        let loan = self.loan_raw(flow, len, Block::No)?;
        Ok(SendLoan::new(self, loan))
    }

    /// [`Channel::loan`] waiting at most `timeout` for room ([`SendError::WouldBlock`] after).
    pub fn loan_timeout(
        &mut self,
        flow: &Flow,
        len: usize,
        timeout: Duration,
    ) -> Result<SendLoan<'_>, SendError> {
        let deadline = Instant::now().checked_add(timeout);
        let loan = self.loan_raw(flow, len, Block::Until(deadline))?;
        Ok(SendLoan::new(self, loan))
    }

    pub(crate) fn loan_raw(
        &mut self,
        flow: &Flow,
        len: usize,
        block: Block,
    ) -> Result<Loan, SendError> {
        // No liveness check here (a loan publishes nothing): `commit_raw` makes the one a
        // send makes, so a loaned send costs the same system calls as a copying one.
        self.app.check_send(flow, len)?;
        Ok(self.submit(block, |app| app.loan(flow, len))?)
    }

    /// Publishes `used` bytes of `loan`; checks the sidecar's liveness first, as a send does
    /// (a commit that returns promises what a returned send promises). On error nothing is
    /// published and the loan is over.
    pub(crate) fn commit_raw(&mut self, loan: Loan, used: usize) -> Result<(), SendError> {
        if let Err(f) = self.check_sidecar() {
            self.cancel_raw(loan);
            return Err(f.into());
        }
        let r = self.app.commit(loan, used);
        self.wake_sidecar()?;
        Ok(r?)
    }

    pub(crate) fn cancel_raw(&mut self, loan: Loan) {
        self.app.cancel(loan);
        // Closes queued behind the loan were written: a failure shows on the next call.
        let _ = self.wake_sidecar();
    }

    /// Waits for the next message and lends it in place: the returned [`RecvView`] derefs to
    /// the message bytes in the channel memory (no copy). Dropping the view gives its ring
    /// space back to the sidecar. Other notifications are handled on the way as
    /// [`Channel::recv`] handles them. The view borrows the channel: nothing else can use it
    /// meanwhile.
    pub fn recv_zc(&mut self) -> Result<(Flow, RecvView<'_>), RecvError> {
        loop {
            if let Some((flow, view)) = self.view_deadline(None)? {
                return Ok((flow, RecvView::new(self, view)));
            }
        }
    }

    /// [`Channel::recv_zc`] if a message is waiting now.
    pub fn try_recv_zc(&mut self) -> Result<Option<(Flow, RecvView<'_>)>, RecvError> {
        let got = self.view_deadline(Some(Instant::now()))?;
        Ok(got.map(|(flow, view)| (flow, RecvView::new(self, view))))
    }

    /// [`Channel::recv_zc`] waiting at most `timeout` (`None`: the timeout passed).
    pub fn recv_zc_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(Flow, RecvView<'_>)>, RecvError> {
        let got = self.view_deadline(Instant::now().checked_add(timeout))?;
        Ok(got.map(|(flow, view)| (flow, RecvView::new(self, view))))
    }

    fn view_deadline(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<(Flow, View)>, RecvError> {
        loop {
            let r = self.app.poll_view();
            self.wake_sidecar()?;
            if let Some(got) = r? {
                return Ok(Some(got));
            }
            if !self.wait_for(WaitFor::Data, deadline)? {
                return Ok(None);
            }
        }
    }

    /// Signals the sidecar if a look at the notification ring asks for it (shared channels).
    pub(crate) fn wake_sidecar_after_view(&mut self) -> Result<(), Fault> {
        self.wake_sidecar()
    }

    /// Gives a borrowed message's ring space back (waking the sidecar if it waits for it).
    pub(crate) fn release_raw(&mut self, view: View) {
        self.app.release(view);
        let _ = self.wake_sidecar();
    }

    /// Runs `op` (one request push) and signals the sidecar if it asks; while the request ring
    /// lacks room, waits for space as `block` allows and retries.
    fn submit<T>(
        &mut self,
        block: Block,
        mut op: impl FnMut(&mut AppChannel) -> Result<T, SubmitError>,
    ) -> Result<T, PushFail> {
        loop {
            let r = op(&mut self.app);
            self.wake_sidecar()?;
            match r {
                Ok(t) => return Ok(t),
                Err(SubmitError::Full { need }) => match block {
                    Block::No => {
                        self.liveness_check()?;
                        return Err(PushFail::WouldBlock);
                    }
                    Block::Until(deadline) => {
                        if !self.wait_for(WaitFor::Space(need), deadline)? {
                            return Err(PushFail::TimedOut);
                        }
                    }
                },
                Err(SubmitError::Fault(f)) => return Err(PushFail::Fault(f.into())),
                Err(e) => return Err(PushFail::Rejected(e)),
            }
        }
    }

    /// Writes the sidecar's eventfd if the protocol half asks for it.
    fn wake_sidecar(&mut self) -> Result<(), Fault> {
        if self.app.take_sidecar_wakeup() {
            sys::signal_eventfd(self.sidecar_efd.as_raw_fd()).map_err(Fault::Io)?;
        }
        Ok(())
    }

    // ----- receiving -----

    /// Waits for the next message on any flow of this channel. Other notifications update the
    /// channel's state on the way: accepted flows appear implicitly (the first message of an
    /// accepted flow names it), closed flows make later sends on them fail
    /// ([`Channel::flow_status`] tells), and a flow whose peer closed is closed on this side too
    /// ([`Channel::set_auto_close`]). Use [`Channel::next_event`] to see the events.
    pub fn recv(&mut self) -> Result<(Flow, Vec<u8>), RecvError> {
        loop {
            if let Some(Got::Message(flow, data)) = self.receive(Want::Message, None)? {
                return Ok((flow, data));
            }
        }
    }

    /// The next message if one is waiting now.
    pub fn try_recv(&mut self) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        self.recv_deadline(Some(Instant::now()))
    }

    /// Waits up to `timeout` for the next message (`None`: the timeout passed).
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    fn recv_deadline(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        match self.receive(Want::Message, deadline)? {
            Some(Got::Message(flow, data)) => Ok(Some((flow, data))),
            _ => Ok(None),
        }
    }

    /// Waits for the next message and copies it into `buf`; returns its flow and length. A
    /// message longer than `buf` is not consumed: [`RecvError::BufferTooSmall`] tells the size
    /// needed, and the next call with a large enough buffer returns it.
    pub fn recv_into(&mut self, buf: &mut [u8]) -> Result<(Flow, usize), RecvError> {
        loop {
            if let Some(Got::Into(flow, n)) = self.receive(Want::Into(buf), None)? {
                return Ok((flow, n));
            }
        }
    }

    /// [`Channel::recv_into`] if a message is waiting now.
    pub fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<(Flow, usize)>, RecvError> {
        self.recv_into_deadline(buf, Some(Instant::now()))
    }

    /// [`Channel::recv_into`] waiting at most `timeout` (`None`: the timeout passed).
    pub fn recv_into_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<(Flow, usize)>, RecvError> {
        self.recv_into_deadline(buf, Instant::now().checked_add(timeout))
    }

    fn recv_into_deadline(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<Option<(Flow, usize)>, RecvError> {
        match self.receive(Want::Into(buf), deadline)? {
            Some(Got::Into(flow, n)) => Ok(Some((flow, n))),
            _ => Ok(None),
        }
    }

    /// The next message copied into `buf`, or the next other event, whichever comes first in
    /// the channel, if one is waiting now. A message is copied once (no allocation); a message
    /// longer than `buf` is not consumed ([`RecvError::BufferTooSmall`]). Unlike
    /// [`Channel::try_recv_into`], no event is passed over, and unlike
    /// [`Channel::next_event`], a message is not copied into a new vector.
    pub fn try_recv_into_or_event(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<Received>, RecvError> {
        Ok(
            match self.receive(Want::IntoOrEvent(buf), Some(Instant::now()))? {
                Some(Got::Into(flow, n)) => Some(Received::Message(flow, n)),
                Some(Got::Event(ev)) => Some(Received::Event(ev)),
                Some(Got::Message(..)) => unreachable!("IntoOrEvent yields Into or Event"),
                None => None,
            },
        )
    }

    /// The next event of any kind, waiting up to `timeout` (`None`: wait as long as needed;
    /// `Some(Duration::ZERO)`: do not wait). Returns `Ok(None)` when the timeout passed.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, RecvError> {
        let deadline = match timeout {
            None => None,
            Some(t) => Instant::now().checked_add(t),
        };
        loop {
            match self.receive(Want::Event, deadline)? {
                Some(Got::Event(ev)) => return Ok(Some(ev)),
                None => return Ok(None),
                Some(_) => {}
            }
        }
    }

    /// Announces that the caller is about to wait for the app eventfd (the channel's [`AsRawFd`]
    /// descriptor) in its own poll loop. Returns `true` if events are already waiting (do not wait: call a
    /// `try_` function instead). Otherwise the eventfd becomes readable when something arrives
    /// (or the channel closes). Any other call on the channel in between cancels the
    /// announcement. Also poll [`Machnet`]'s descriptor for hang-up to notice a dead sidecar.
    pub fn arm_wakeup(&mut self) -> Result<bool, RecvError> {
        self.app.check_poisoned().map_err(Fault::from)?;
        if self.app.has_pending() || self.app.closed_code().is_some() {
            return Ok(true);
        }
        sys::drain_eventfd(self.app_efd.as_raw_fd()).map_err(Fault::Io)?;
        match self.app.arm(WaitFor::Data) {
            Ok(true) | Err(ChannelFault::Closed(_)) => return Ok(true),
            Ok(false) => {}
            Err(f) => return Err(Fault::from(f).into()),
        }
        if !self.machnet.sidecar_alive() {
            self.app.disarm(WaitFor::Data);
            return Err(RecvError::SidecarGone);
        }
        Ok(false)
    }

    /// The sending counterpart of [`Channel::arm_wakeup`]: announces that the caller is about to
    /// wait for the app eventfd until the request ring has room for a message of `len` bytes
    /// (after [`Channel::try_send`] reported [`SendError::WouldBlock`]). Returns `true` if such
    /// a message fits already (do not wait: try again). Otherwise the eventfd becomes readable
    /// when the sidecar frees space. Unlike `arm_wakeup` this does not drain the eventfd, so a
    /// thread may call it while another thread waits on the same eventfd (the C ABI does).
    pub fn arm_send_wakeup(&mut self, len: usize) -> Result<bool, SendError> {
        self.app.check_usable().map_err(Fault::from)?;
        match self.app.arm(WaitFor::Space(AppChannel::footprint(len))) {
            Ok(ready) => Ok(ready),
            Err(ChannelFault::Closed(_)) => Ok(true),
            Err(f) => Err(Fault::from(f).into()),
        }
    }

    /// The receive loop shared by every receive flavour: what the protocol half has (buffered
    /// events, then the ring), else wait (docs/CHANNEL.md §4) until `deadline`.
    pub(crate) fn receive(
        &mut self,
        mut want: Want<'_>,
        deadline: Option<Instant>,
    ) -> Result<Option<Got>, RecvError> {
        loop {
            let r = self.app.poll(&mut want);
            self.wake_sidecar()?;
            if let Some(got) = r? {
                return Ok(Some(got));
            }
            if !self.wait_for(WaitFor::Data, deadline)? {
                return Ok(None);
            }
        }
    }

    // ----- waiting (docs/CHANNEL.md §4) -----

    /// Called when `cond` does not hold. Returns `false` if `deadline` has passed, `true` after
    /// a wait (or on finding `cond` holds), after which the caller looks again. Busy-polls
    /// first if configured, then announces the wait, re-checks, and sleeps on the eventfd and
    /// the control socket.
    fn wait_for(&mut self, cond: WaitFor, deadline: Option<Instant>) -> Result<bool, Fault> {
        self.app.check_closed()?;
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            self.liveness_check_at(now)?;
            return Ok(false);
        }
        if let Some(spin) = self.busy_poll {
            let until = earliest(deadline, now.checked_add(spin));
            loop {
                for _ in 0..64 {
                    if self.app.is_ready(cond)? {
                        return Ok(true);
                    }
                    std::thread::yield_now();
                }
                self.app.check_closed()?;
                let now = Instant::now();
                self.liveness_check_at(now)?;
                if until.is_some_and(|u| now >= u) {
                    break;
                }
            }
        }
        if self.app.arm(cond)? {
            return Ok(true);
        }
        let woken = sys::wait(
            self.app_efd.as_raw_fd(),
            self.machnet.control_fd(),
            deadline,
        );
        self.app.disarm(cond);
        self.woken(woken)
    }

    // ----- health -----

    /// Fails with `SidecarGone` if the sidecar is dead. Every call that hands something to the
    /// sidecar makes this check (one zero-timeout `poll` of the control socket, none once the
    /// death is known): a request written into the ring of a dead sidecar would be lost
    /// silently (docs/CHANNEL.md §4, "A dead sidecar").
    pub(crate) fn check_sidecar(&self) -> Result<(), Fault> {
        if self.machnet.sidecar_alive() {
            Ok(())
        } else {
            Err(Fault::SidecarGone)
        }
    }

    /// Translates the outcome of a sleep on the eventfd and the control socket.
    fn woken(&self, woken: std::io::Result<Woken>) -> Result<bool, Fault> {
        match woken.map_err(Fault::Io)? {
            Woken::SidecarGone => {
                self.machnet.mark_gone();
                Err(Fault::SidecarGone)
            }
            Woken::Event | Woken::TimedOut => Ok(true),
        }
    }

    fn liveness_check(&mut self) -> Result<(), Fault> {
        self.liveness_check_at(Instant::now())
    }

    /// For calls that found nothing to do: polls the control socket for hang-up, at most every
    /// [`LIVENESS_INTERVAL`] (non-blocking receives never sleep, so they would otherwise never
    /// notice a dead sidecar; polling on every empty look would slow busy-polling receivers).
    /// A death already known fails at once.
    fn liveness_check_at(&mut self, now: Instant) -> Result<(), Fault> {
        if self.machnet.is_known_gone() {
            return Err(Fault::SidecarGone);
        }
        if now.duration_since(self.last_liveness) < LIVENESS_INTERVAL {
            return Ok(());
        }
        self.last_liveness = now;
        self.check_sidecar()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn control_fd(&self) -> RawFd {
        self.machnet.control_fd()
    }
}

/// The app eventfd: readable when the sidecar has woken this channel (see
/// [`Channel::arm_wakeup`]). Do not read from or write to it.
impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.app_efd.as_raw_fd()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.machnet.close_channel_id(self.id, false);
        }
    }
}

/// Room for one message in the channel memory, from [`Channel::loan`]: derefs to exactly the
/// `len` bytes loaned, whose initial contents are unspecified (earlier records' bytes).
/// [`SendLoan::commit`] sends the first `used` of them; dropping the loan sends nothing.
///
/// ```compile_fail
/// # fn f(ch: &mut machnet::Channel, flow: machnet::Flow) {
/// let loan = ch.loan(&flow, 8).unwrap();
/// ch.send(&flow, b"x").unwrap(); // the loan borrows the channel
/// drop(loan);
/// # }
/// ```
pub struct SendLoan<'a> {
    ch: &'a mut Channel,
    /// `None` once committed.
    loan: Option<Loan>,
}

impl<'a> SendLoan<'a> {
    fn new(ch: &'a mut Channel, loan: Loan) -> Self {
        SendLoan {
            ch,
            loan: Some(loan),
        }
    }

    /// The flow the message goes to.
    pub fn flow(&self) -> Flow {
        *self.loan.as_ref().expect("live loan").flow()
    }

    /// Sends the first `used` bytes (1 ≤ `used` ≤ the length loaned; the rest of the room is
    /// given back). A returned commit promises what a returned [`Channel::send`] promises. On
    /// error nothing was sent ([`SendError::BadCommitLength`] for a bad `used`).
    pub fn commit(mut self, used: usize) -> Result<(), SendError> {
        let loan = self.loan.take().expect("live loan");
        self.ch.commit_raw(loan, used)
    }
}

impl Deref for SendLoan<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let loan = self.loan.as_ref().expect("live loan");
        // SAFETY: the loan's room is reserved in the mapped request ring for this loan alone,
        // and the loan borrows the channel (which keeps the mapping) mutably.
        unsafe { std::slice::from_raw_parts(loan.as_mut_ptr(), loan.len()) }
    }
}

impl DerefMut for SendLoan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.ch
            .app
            .loan_bytes(self.loan.as_ref().expect("live loan"))
    }
}

impl Drop for SendLoan<'_> {
    fn drop(&mut self) {
        if let Some(loan) = self.loan.take() {
            self.ch.cancel_raw(loan);
        }
    }
}

impl std::fmt::Debug for SendLoan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendLoan")
            .field("len", &self.len())
            .finish()
    }
}

/// A received message lent in place, from [`Channel::recv_zc`]: derefs to its bytes in the
/// channel memory. Dropping it gives the ring space back.
///
/// ```compile_fail
/// # fn f(ch: &mut machnet::Channel) {
/// let (_, view) = ch.recv_zc().unwrap();
/// let _ = ch.try_recv(); // the view borrows the channel
/// drop(view);
/// # }
/// ```
pub struct RecvView<'a> {
    ch: &'a mut Channel,
    /// `None` only while dropping.
    view: Option<View>,
}

impl<'a> RecvView<'a> {
    fn new(ch: &'a mut Channel, view: View) -> Self {
        RecvView {
            ch,
            view: Some(view),
        }
    }
}

impl Deref for RecvView<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.ch
            .app
            .view_bytes(self.view.as_ref().expect("live view"))
    }
}

impl Drop for RecvView<'_> {
    fn drop(&mut self) {
        if let Some(view) = self.view.take() {
            self.ch.release_raw(view);
        }
    }
}

impl std::fmt::Debug for RecvView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvView")
            .field("len", &self.len())
            .finish()
    }
}

/// The earlier of two optional deadlines (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Calls `f` with `parts` as byte slices (on the stack for up to 16 parts).
fn with_slices<R>(parts: &[IoSlice<'_>], f: impl FnOnce(&[&[u8]]) -> R) -> R {
    const N: usize = 16;
    if parts.len() <= N {
        let mut arr: [&[u8]; N] = [&[]; N];
        for (a, p) in arr.iter_mut().zip(parts) {
            *a = p;
        }
        f(&arr[..parts.len()])
    } else {
        let v: Vec<&[u8]> = parts.iter().map(|p| &**p).collect();
        f(&v)
    }
}
