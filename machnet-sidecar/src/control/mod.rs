//! The control server (docs/CHANNEL.md §2): one thread serving every application's control
//! connection on the Unix `SOCK_SEQPACKET` socket.
//!
//! It authorises peers at accept (`SO_PEERCRED`), answers the JSON requests of
//! `machnet_channel::control`, creates channels and hands them to engines, keeps the
//! host-wide port registry, and reclaims everything a connection opened when it closes. A
//! malformed message closes the offending connection only.
//!
//! No application can lock the others out: each application (process) and each user has caps
//! on connections, channels, ports and flows ([`limits`]); a connection that does not say
//! `hello` in time, or that holds nothing and stays silent, is closed; running out of
//! descriptors or memory pauses the listener instead of spinning on it; every log line a peer
//! can cause is rate-limited ([`crate::limited!`]).

pub mod limits;
pub mod ports;
pub mod socket;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use machnet_channel::control::{
    ControlError, Request, Response, CONTROL_VERSION, MAX_CONTROL_MESSAGE, MAX_STATS_ITEMS,
};
use machnet_channel::CloseCode;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;

use crate::config::SidecarConfig;
use crate::engine::{
    new_eventfd, ChannelId, Command, EngineClient, EngineGone, EngineListenError, Notice,
};
use crate::limited;
use crate::shm::ChannelMem;
use crate::stat;
use limits::{Ledger, LimitReached, Resource};
use ports::{AppId, ClaimError, Left, PortOwner, PortRegistry};
use socket::{AcceptError, Packet, PeerCred};

const TOKEN_LISTENER: u64 = 0;
const TOKEN_NOTICES: u64 = 1;
const TOKEN_STOP: u64 = 2;
const TOKEN_CONN_BASE: u64 = 16;

/// How long the listener is left alone after `accept` failed for lack of descriptors or
/// memory (pending connections wait in the backlog meanwhile).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per wake-up, and requests served per connection per wake-up, before
/// the others get their turn (epoll is level-triggered: the rest is reported again).
const BATCH: usize = 32;
/// Descriptors a channel holds in the sidecar (memfd, two eventfds).
const FDS_PER_CHANNEL: usize = 3;
/// Descriptors kept free of channels and connections: engines, datapaths, epoll, the three
/// descriptors being passed to an app, logging.
const RESERVED_FDS: usize = 256;

/// How a channel is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detach {
    /// Deliver what the app sent, then close its flows (within the linger).
    Graceful,
    /// Abort its flows at once.
    Abort,
}

/// Why the control server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlStartError {
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] socket::ControlSocketError),
    /// epoll, eventfd or thread creation failed.
    #[error("control thread setup: {0}")]
    Io(#[from] std::io::Error),
}

/// The running control server.
pub struct ControlServer {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Binds the control socket and starts the control thread.
    pub fn spawn(
        cfg: Arc<SidecarConfig>,
        engines: Vec<EngineClient>,
        notices: Receiver<Notice>,
        notice_wake: Arc<EventFd>,
    ) -> Result<ControlServer, ControlStartError> {
        let path = cfg.control_socket.clone();
        let listener = socket::bind_listener(&path, cfg.control_socket_group)?;
        let stop = Arc::new(new_eventfd()?);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        let add = |fd: std::os::fd::BorrowedFd<'_>, token| {
            epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
                .map_err(std::io::Error::from)
        };
        add(listener.as_fd(), TOKEN_LISTENER)?;
        add(notice_wake.as_fd(), TOKEN_NOTICES)?;
        add(stop.as_fd(), TOKEN_STOP)?;
        let registry = PortRegistry::new(cfg.engine_config(0).ephemeral_ports);
        let max_channels = channel_capacity(cfg.limits.max_connections);
        let ledger = Ledger::new(&cfg.limits, max_channels);
        let sweep_every = sweep_interval(&cfg.limits);
        let server = Server {
            cfg,
            engines,
            notices,
            notice_wake,
            _stop: stop.clone(),
            epoll,
            listener,
            conns: HashMap::new(),
            channels: HashMap::new(),
            registry,
            ledger,
            listener_paused: None,
            sweep_every,
            next_sweep: Instant::now() + sweep_every,
            next_conn: 1,
            next_channel: 1,
            round_robin: 0,
            buf: vec![0u8; MAX_CONTROL_MESSAGE + 1],
        };
        let thread = std::thread::Builder::new()
            .name("machnet-control".into())
            .spawn(move || server.run())?;
        tracing::info!(
            path = %path.display(),
            max_channels,
            "control socket listening"
        );
        Ok(ControlServer {
            stop,
            thread: Some(thread),
            path,
        })
    }

    /// Stops the thread (dropping every connection) and removes the socket file.
    pub fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("control thread panicked");
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The socket path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type ConnId = u64;

struct Conn {
    fd: OwnedFd,
    peer: PeerCred,
    hello: bool,
    channels: Vec<ChannelId>,
    /// When it was accepted, or last sent a request.
    last_heard: Instant,
}

/// An open channel: its connection, engine and application.
#[derive(Debug, Clone, Copy)]
struct ChannelRec {
    conn: ConnId,
    engine: u16,
    peer: PeerCred,
}

/// A request's failure: the error sent back, and whether the connection is then closed.
struct Failure {
    code: ControlError,
    message: String,
    fatal: bool,
}

impl Failure {
    fn new(code: ControlError, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            fatal: false,
        }
    }
    fn fatal(code: ControlError, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            fatal: true,
        }
    }
}

impl From<LimitReached> for Failure {
    fn from(e: LimitReached) -> Self {
        let code = match e.resource {
            Resource::Connection => ControlError::ConnectionLimit,
            Resource::Channel => ControlError::ChannelLimit,
            Resource::Port => ControlError::PortLimit,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<EngineGone> for Failure {
    fn from(e: EngineGone) -> Self {
        Failure::new(ControlError::Internal, e.to_string())
    }
}

/// A successful answer: the response and descriptors to attach.
struct Reply {
    response: Response,
    fds: Vec<OwnedFd>,
    /// A channel to close if the reply cannot be delivered.
    channel: Option<ChannelId>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply {
            response,
            fds: Vec::new(),
            channel: None,
        }
    }
}

struct Server {
    cfg: Arc<SidecarConfig>,
    engines: Vec<EngineClient>,
    notices: Receiver<Notice>,
    notice_wake: Arc<EventFd>,
    _stop: Arc<EventFd>,
    epoll: Epoll,
    listener: OwnedFd,
    conns: HashMap<ConnId, Conn>,
    /// Every open channel.
    channels: HashMap<ChannelId, ChannelRec>,
    registry: PortRegistry,
    /// What each application and user holds.
    ledger: Ledger,
    /// Accepting is paused until then (out of descriptors or memory).
    listener_paused: Option<Instant>,
    /// How often connections are checked for timeouts.
    sweep_every: Duration,
    next_sweep: Instant,
    next_conn: ConnId,
    next_channel: ChannelId,
    round_robin: usize,
    buf: Vec<u8>,
}

impl Server {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let timeout = self.wait_timeout(Instant::now());
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!("control epoll_wait: {e}");
                    break;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => {
                        tracing::debug!("control thread stopping");
                        return;
                    }
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_NOTICES => self.notices(),
                    t => self.readable(t - TOKEN_CONN_BASE),
                }
            }
            let now = Instant::now();
            if self.listener_paused.is_some_and(|t| now >= t) {
                self.resume_listener();
            }
            if now >= self.next_sweep {
                self.sweep(now);
                self.next_sweep = now + self.sweep_every;
            }
        }
    }

    /// Until the next timeout sweep or the end of an accept pause, rounded up to milliseconds.
    fn wait_timeout(&self, now: Instant) -> EpollTimeout {
        let due = self
            .listener_paused
            .map_or(self.next_sweep, |t| t.min(self.next_sweep));
        let ms = due
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        EpollTimeout::try_from(ms.min(60_000) as u32).unwrap_or(EpollTimeout::NONE)
    }

    fn accept(&mut self) {
        for _ in 0..BATCH {
            let (fd, peer) = match socket::accept(&self.listener) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => return self.pause_listener(e),
            };
            if !self.cfg.allows(peer.uid, peer.gid) {
                limited!(
                    warn,
                    pid = peer.pid,
                    uid = peer.uid,
                    gid = peer.gid,
                    "unauthorised control connection refused"
                );
                send_farewell(&fd, ControlError::Unauthorized, "this user may not attach");
                continue;
            }
            if let Err(e) = self.ledger.charge(peer, Resource::Connection) {
                limited!(
                    warn,
                    pid = peer.pid,
                    uid = peer.uid,
                    "control connection refused: {e}"
                );
                send_farewell(&fd, ControlError::ConnectionLimit, &e.to_string());
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            if let Err(e) = self.epoll.add(
                fd.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CONN_BASE + id),
            ) {
                limited!(warn, "control epoll add: {e}");
                self.ledger.release(peer, Resource::Connection);
                send_farewell(&fd, ControlError::Exhausted, "sidecar out of memory");
                continue;
            }
            tracing::debug!(conn = id, pid = peer.pid, uid = peer.uid, "app connected");
            self.conns.insert(
                id,
                Conn {
                    fd,
                    peer,
                    hello: false,
                    channels: Vec::new(),
                    last_heard: Instant::now(),
                },
            );
        }
    }

    /// Stops polling the listener for [`ACCEPT_BACKOFF`] after `accept` failed: retrying at
    /// once would fail again (a level-triggered listener with a connection pending stays
    /// readable) and spin.
    fn pause_listener(&mut self, e: AcceptError) {
        match e {
            AcceptError::Exhausted(_) => limited!(
                warn,
                connections = self.conns.len(),
                channels = self.channels.len(),
                "control accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}"
            ),
            AcceptError::Failed(_) => limited!(
                error,
                "control accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}"
            ),
        }
        if let Err(e) = self.epoll.delete(self.listener.as_fd()) {
            limited!(error, "control epoll delete: {e}");
        }
        self.listener_paused = Some(Instant::now() + ACCEPT_BACKOFF);
    }

    fn resume_listener(&mut self) {
        match self.epoll.add(
            self.listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER),
        ) {
            Ok(()) => self.listener_paused = None,
            Err(e) => {
                limited!(error, "control epoll add (listener): {e}");
                self.listener_paused = Some(Instant::now() + ACCEPT_BACKOFF);
            }
        }
    }

    /// Closes connections that did not say `hello` in time, and idle ones (said `hello`, hold
    /// no channel, sent nothing for the idle timeout).
    fn sweep(&mut self, now: Instant) {
        let limits = self.cfg.limits;
        let expired: Vec<(ConnId, String)> = self
            .conns
            .iter()
            .filter_map(|(&id, c)| {
                let quiet = now.saturating_duration_since(c.last_heard);
                if !c.hello && quiet >= limits.hello_timeout {
                    Some((id, format!("no hello within {:?}", limits.hello_timeout)))
                } else if c.hello && c.channels.is_empty() {
                    let idle = limits.idle_timeout.filter(|&t| quiet >= t)?;
                    Some((id, format!("idle (no channel, no request) for {idle:?}")))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in expired {
            if let Some(c) = self.conns.get(&id) {
                tracing::debug!(
                    conn = id,
                    pid = c.peer.pid,
                    "closing control connection: {why}"
                );
                send_farewell(&c.fd, ControlError::TimedOut, &why);
            }
            self.close_conn(id, "timed out");
        }
    }

    fn notices(&mut self) {
        let _ = self.notice_wake.read();
        while let Ok(n) = self.notices.try_recv() {
            match n {
                Notice::ChannelClosed { channel, code } => {
                    tracing::debug!(channel, ?code, "engine closed a channel");
                    if let Some(rec) = self.channels.remove(&channel) {
                        if let Some(c) = self.conns.get_mut(&rec.conn) {
                            c.channels.retain(|&ch| ch != channel);
                        }
                        self.ledger.release(rec.peer, Resource::Channel);
                        self.release_ports(channel, rec);
                    }
                }
            }
        }
    }

    fn readable(&mut self, conn: ConnId) {
        for _ in 0..BATCH {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            c.last_heard = Instant::now();
            let fd = c.fd.as_raw_fd();
            let n = match socket::recv_packet(fd, &mut self.buf) {
                Ok(Packet::Data(n)) => n,
                Ok(Packet::Empty) => return,
                Ok(Packet::Closed) => return self.close_conn(conn, "disconnected"),
                Err(e) => {
                    tracing::debug!(conn, "control recv: {e}");
                    return self.close_conn(conn, "receive error");
                }
            };
            let outcome = match Request::decode(&self.buf[..n]) {
                Ok(req) => self.handle(conn, req),
                Err(_) => Err(Failure::fatal(
                    ControlError::Malformed,
                    "not a valid control request",
                )),
            };
            match outcome {
                Ok(reply) => {
                    let raw: Vec<RawFd> = reply.fds.iter().map(|f| f.as_raw_fd()).collect();
                    let Some(c) = self.conns.get(&conn) else {
                        return;
                    };
                    let bytes = reply.response.encode();
                    if bytes.len() > MAX_CONTROL_MESSAGE {
                        socket::reserve_send_buffer(&c.fd, bytes.len());
                    }
                    if let Err(e) = socket::send_packet(&c.fd, &bytes, &raw) {
                        tracing::debug!(conn, "control send: {e}");
                        // The app never got this channel: nothing of it to deliver.
                        if let Some(ch) = reply.channel {
                            self.close_channel(conn, ch, Detach::Abort);
                        }
                        return self.close_conn(conn, "cannot send reply");
                    }
                }
                Err(f) => {
                    if let Some(c) = self.conns.get(&conn) {
                        let sent = send_response(&c.fd, &error(f.code, &f.message));
                        if f.fatal || sent.is_err() {
                            tracing::debug!(conn, code = ?f.code, "closing control connection");
                            socket::discard_pending(&c.fd);
                            return self.close_conn(conn, "protocol error");
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, conn: ConnId, req: Request) -> Result<Reply, Failure> {
        let c = self.conns.get_mut(&conn).expect("live connection");
        if let Request::Hello { version, client } = &req {
            if *version != CONTROL_VERSION {
                return Err(Failure::fatal(
                    ControlError::Version,
                    format!("protocol version {version} not supported (this sidecar speaks {CONTROL_VERSION})"),
                ));
            }
            if !c.hello {
                limited!(
                    info,
                    conn,
                    pid = c.peer.pid,
                    client = %client.chars().take(64).collect::<String>(),
                    "app attached"
                );
            }
            c.hello = true;
            return Ok(Response::Hello {
                version: CONTROL_VERSION,
                local_ip: self.cfg.local_ip,
                engines: self.cfg.engines,
                max_message_len: self.cfg.max_message_len,
            }
            .into());
        }
        if !c.hello {
            return Err(Failure::fatal(ControlError::NoHello, "send hello first"));
        }
        match req {
            Request::Hello { .. } => unreachable!("handled above"),
            Request::OpenChannel { engine } => self.open_channel(conn, engine),
            Request::Listen { channel, port } => self.listen(conn, channel, port),
            Request::Unlisten { channel, port } => self.unlisten(conn, channel, port),
            Request::CloseChannel { channel, abort } => {
                self.owned(conn, channel)?;
                let how = if abort {
                    Detach::Abort
                } else {
                    Detach::Graceful
                };
                self.close_channel(conn, channel, how);
                Ok(Response::Ok.into())
            }
            Request::Stats {
                max_flows,
                max_channels,
            } => self.stats(max_channels, max_flows),
        }
    }

    /// A statistics snapshot (`machnet stat`): every engine answers through its command queue;
    /// any connection the sidecar accepted may ask (as it may attach).
    fn stats(
        &mut self,
        max_channels: Option<u32>,
        max_flows: Option<u32>,
    ) -> Result<Reply, Failure> {
        let limit = |name: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
            n @ 1..=MAX_STATS_ITEMS => Ok(n as usize),
            n => Err(Failure::new(
                ControlError::InvalidRequest,
                format!("{name} {n} is out of range (1..={MAX_STATS_ITEMS})"),
            )),
        };
        let max_channels = limit(
            "max_channels",
            max_channels,
            stat::schema::DEFAULT_MAX_CHANNELS,
        )?;
        let max_flows = limit("max_flows", max_flows, stat::schema::DEFAULT_MAX_FLOWS)?;
        let snaps = self
            .engines
            .iter()
            .map(|e| e.stats(max_channels, max_flows))
            .collect::<Result<Vec<_>, _>>()?;
        let channels = &self.channels;
        let owner = |ch: u32| {
            channels
                .get(&ch)
                .map(|r| (u32::try_from(r.peer.pid).unwrap_or(0), r.peer.uid))
        };
        let view = stat::collect::ControlView {
            sidecar: stat::schema::SidecarInfo {
                pid: std::process::id(),
                build: env!("CARGO_PKG_VERSION").to_owned(),
                local_ip: self.cfg.local_ip,
                control_connections: self.conns.len() as u64,
            },
            owner: &owner,
        };
        Ok(stat::collect::assemble(snaps, view, max_channels, max_flows).into())
    }

    /// The engine of `channel` if `conn` opened it.
    fn owned(&self, conn: ConnId, channel: ChannelId) -> Result<ChannelRec, Failure> {
        match self.channels.get(&channel) {
            Some(&rec) if rec.conn == conn => Ok(rec),
            _ => Err(Failure::new(
                ControlError::NoSuchChannel,
                format!("channel {channel} is not open on this connection"),
            )),
        }
    }

    fn open_channel(&mut self, conn: ConnId, engine: Option<u16>) -> Result<Reply, Failure> {
        let engine = match engine {
            Some(e) if usize::from(e) < self.engines.len() => e,
            Some(e) => {
                return Err(Failure::new(
                    ControlError::NoSuchEngine,
                    format!(
                        "engine {e} does not exist (engines: {})",
                        self.engines.len()
                    ),
                ))
            }
            None => {
                let e = self.round_robin % self.engines.len();
                self.round_robin = self.round_robin.wrapping_add(1);
                e as u16
            }
        };
        let id = self.next_channel;
        if id == 0 {
            return Err(Failure::new(
                ControlError::Exhausted,
                "channel ids exhausted",
            ));
        }
        let peer = self.conns[&conn].peer;
        self.ledger.charge(peer, Resource::Channel)?;
        let created = self.create_channel(id, engine, peer);
        if created.is_err() {
            self.ledger.release(peer, Resource::Channel);
        }
        let (len, fds) = created?;
        self.next_channel = self.next_channel.wrapping_add(1);
        self.channels.insert(id, ChannelRec { conn, engine, peer });
        self.conns
            .get_mut(&conn)
            .expect("live connection")
            .channels
            .push(id);
        tracing::debug!(conn, channel = id, engine, "channel opened");
        Ok(Reply {
            response: Response::ChannelOpened {
                channel: id,
                engine,
                len,
            },
            fds: fds.into(),
            channel: Some(id),
        })
    }

    /// Creates a channel's memory and hands it to `engine`; returns its length and the
    /// descriptors for the app.
    fn create_channel(
        &mut self,
        id: ChannelId,
        engine: u16,
        peer: PeerCred,
    ) -> Result<(u64, [OwnedFd; 3]), Failure> {
        let exhausted = |e: &dyn std::fmt::Display| {
            limited!(warn, pid = peer.pid, "cannot create a channel: {e}");
            Failure::new(ControlError::Exhausted, e.to_string())
        };
        let mem = ChannelMem::create(self.cfg.max_message_len).map_err(|e| exhausted(&e))?;
        let len = mem.layout().total_len;
        let fds = mem.dup_app_fds().map_err(|e| exhausted(&e))?;
        let quota = self.ledger.flow_quota(peer);
        let connects = self.ledger.connect_budget(peer);
        self.engines[usize::from(engine)].add_channel(id, mem, quota, connects)?;
        Ok((len, fds))
    }

    /// `channel` joins the listen group of `port` (docs/CHANNEL.md §2): the port is free, or
    /// another channel of the same application listens on it.
    fn listen(&mut self, conn: ConnId, channel: ChannelId, port: u16) -> Result<Reply, Failure> {
        let ChannelRec { engine, peer, .. } = self.owned(conn, channel)?;
        let (app, owner) = (AppId::of(peer), PortOwner { channel, engine });
        let plan = self
            .registry
            .plan(port, app, owner)
            .map_err(claim_failure)?;
        // A group is one port for the caps, charged when it is created.
        if plan.new_port {
            self.ledger.charge(peer, Resource::Port)?;
        }
        let res = self.listen_on(channel, engine, port, plan.first_on_engine);
        if res.is_err() && plan.new_port {
            self.ledger.release(peer, Resource::Port);
        }
        res?;
        self.registry
            .join(port, app, owner)
            .map_err(claim_failure)?;
        tracing::debug!(conn, channel, port, engine, "listening");
        Ok(Response::Ok.into())
    }

    /// Makes `channel` a listener of `port` on its `engine`; if it is the group's first member
    /// there (`first_on_engine`), the other engines learn that `engine` listens.
    fn listen_on(
        &mut self,
        channel: ChannelId,
        engine: u16,
        port: u16,
        first_on_engine: bool,
    ) -> Result<(), Failure> {
        // Others first: once this engine accepts, a SYN reaching an engine without a member must
        // be dropped (the client's spray reaches a member), not refused.
        let others: Vec<&EngineClient> = if first_on_engine {
            self.engines.iter().filter(|e| e.id() != engine).collect()
        } else {
            Vec::new()
        };
        for e in &others {
            e.host_listener(port, engine, true)?;
        }
        let res = self.engines[usize::from(engine)].listen(channel, port)?;
        if let Err(err) = res {
            for e in &others {
                let _ = e.host_listener(port, engine, false);
            }
            return Err(match err {
                EngineListenError::NoSuchChannel => {
                    Failure::new(ControlError::NoSuchChannel, "channel is closed")
                }
                EngineListenError::Core(e) => {
                    Failure::new(ControlError::InvalidPort, e.to_string())
                }
            });
        }
        Ok(())
    }

    fn unlisten(&mut self, conn: ConnId, channel: ChannelId, port: u16) -> Result<Reply, Failure> {
        let ChannelRec { peer, .. } = self.owned(conn, channel)?;
        let Some(left) = self.registry.leave(port, channel) else {
            return Err(Failure::new(
                ControlError::InvalidPort,
                format!("channel {channel} does not listen on port {port}"),
            ));
        };
        self.left(channel, peer, left, false)?;
        Ok(Response::Ok.into())
    }

    /// What follows `channel` (of `peer`) leaving a listen group: the port stops counting
    /// against the caps with its last member; its engine drops the member (unless
    /// `engine_done`: it closed the channel itself); the other engines forget the engine once
    /// it has no member left.
    fn left(
        &mut self,
        channel: ChannelId,
        peer: PeerCred,
        left: Left,
        engine_done: bool,
    ) -> Result<(), EngineGone> {
        if left.port_freed {
            self.ledger.release(peer, Resource::Port);
        }
        if !engine_done {
            self.engines[usize::from(left.engine)].unlisten(channel, left.port)?;
        }
        if left.last_on_engine {
            for e in self.engines.iter().filter(|e| e.id() != left.engine) {
                e.host_listener(left.port, left.engine, false)?;
            }
        }
        Ok(())
    }

    /// Takes `channel` out of every listen group; its engine already did (it closed the
    /// channel, or is closing it).
    fn release_ports(&mut self, channel: ChannelId, rec: ChannelRec) {
        for left in self.registry.leave_all(channel) {
            if let Err(e) = self.left(channel, rec.peer, left, true) {
                limited!(error, "releasing port {}: {e}", left.port);
            }
        }
    }

    /// Closes one channel of `conn` (docs/CHANNEL.md §5): its engine delivers what the app
    /// sent and closes its flows within the linger, or aborts them; its ports are released.
    fn close_channel(&mut self, conn: ConnId, channel: ChannelId, how: Detach) {
        let Some(&rec) = self.channels.get(&channel) else {
            return;
        };
        let linger = match how {
            Detach::Graceful => Some(self.cfg.close_linger),
            Detach::Abort => None,
        };
        // The owning engine stops the channel's ports itself when it closes the channel.
        let _ = self.engines[usize::from(rec.engine)].send(Command::CloseChannel {
            id: channel,
            code: CloseCode::Detached,
            linger,
            reply: None,
        });
        self.release_ports(channel, rec);
        self.ledger.release(rec.peer, Resource::Channel);
        self.channels.remove(&channel);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.channels.retain(|&ch| ch != channel);
        }
    }

    /// Drops a connection and everything it opened (channels detached gracefully, ports
    /// released).
    fn close_conn(&mut self, conn: ConnId, why: &str) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let _ = self.epoll.delete(c.fd.as_fd());
        tracing::debug!(
            conn,
            pid = c.peer.pid,
            channels = c.channels.len(),
            why,
            "app detached"
        );
        // The app exited or hung up: what it sent is still delivered.
        for ch in c.channels {
            self.close_channel(conn, ch, Detach::Graceful);
        }
        self.ledger.release(c.peer, Resource::Connection);
    }
}

/// Channels the sidecar can hold within its descriptor limit (`RLIMIT_NOFILE`), after
/// [`RESERVED_FDS`] and room for `max_connections` control connections (at most a quarter of
/// the rest, so that a low limit still leaves channels): channels beyond it would make `accept`
/// fail for everyone.
fn channel_capacity(max_connections: usize) -> usize {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(1024);
    let available = nofile.saturating_sub(RESERVED_FDS);
    let connections = max_connections.min(available / 4);
    (available - connections) / FDS_PER_CHANNEL
}

/// How often connections are checked for timeouts: a quarter of the shortest timeout, within
/// 10 ms ..= 1 s (a connection is closed at most that late).
fn sweep_interval(l: &limits::ControlLimits) -> Duration {
    let shortest = l
        .idle_timeout
        .map_or(l.hello_timeout, |i| i.min(l.hello_timeout));
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

fn claim_failure(e: ClaimError) -> Failure {
    match e {
        ClaimError::InUse(_) | ClaimError::AlreadyListening(_) => {
            Failure::new(ControlError::PortInUse, e.to_string())
        }
        ClaimError::Zero | ClaimError::Ephemeral(_) => {
            Failure::new(ControlError::InvalidPort, e.to_string())
        }
    }
}

fn error(code: ControlError, message: &str) -> Response {
    Response::Error {
        code,
        message: message.to_owned(),
    }
}

fn send_response(fd: &OwnedFd, r: &Response) -> std::io::Result<()> {
    socket::send_packet(fd, &r.encode(), &[])
}

/// Sends a last error on a connection about to be closed (see [`socket::discard_pending`]).
fn send_farewell(fd: &OwnedFd, code: ControlError, message: &str) {
    let _ = send_response(fd, &error(code, message));
    socket::discard_pending(fd);
}
