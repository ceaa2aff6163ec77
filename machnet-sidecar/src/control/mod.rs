//! The control server (docs/CHANNEL.md §2): one thread serving every application's control
//! connection on the Unix `SOCK_SEQPACKET` socket.
//!
//! It authorises peers at accept (`SO_PEERCRED`), answers the JSON requests of
//! `machnet_core::channel::control`, creates channels and hands them to engines, keeps the
//! host-wide port registry, and reclaims everything a connection opened when it closes. A
//! malformed message closes the offending connection only.

pub mod ports;
pub mod socket;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use machnet_core::channel::control::{
    ControlError, Request, Response, CONTROL_VERSION, MAX_CONTROL_MESSAGE,
};
use machnet_core::channel::CloseCode;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;

use crate::config::SidecarConfig;
use crate::engine::{
    new_eventfd, ChannelId, Command, EngineClient, EngineGone, EngineListenError, Notice,
};
use crate::shm::ChannelMem;
use ports::{ClaimError, PortOwner, PortRegistry};
use socket::{Packet, PeerCred};

const TOKEN_LISTENER: u64 = 0;
const TOKEN_NOTICES: u64 = 1;
const TOKEN_STOP: u64 = 2;
const TOKEN_CONN_BASE: u64 = 16;

/// Channels one connection may hold open.
pub const MAX_CHANNELS_PER_CONNECTION: usize = 4096;
/// Control connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;

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
            next_conn: 1,
            next_channel: 1,
            round_robin: 0,
            buf: vec![0u8; MAX_CONTROL_MESSAGE + 1],
        };
        let thread = std::thread::Builder::new()
            .name("machnet-control".into())
            .spawn(move || server.run())?;
        tracing::info!(path = %path.display(), "control socket listening");
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
    /// Every open channel: its connection and engine.
    channels: HashMap<ChannelId, (ConnId, u16)>,
    registry: PortRegistry,
    next_conn: ConnId,
    next_channel: ChannelId,
    round_robin: usize,
    buf: Vec<u8>,
}

impl Server {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
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
        }
    }

    fn accept(&mut self) {
        loop {
            let (fd, peer) = match socket::accept(&self.listener) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("control accept: {e}");
                    return;
                }
            };
            if !self.cfg.allows(peer.uid, peer.gid) {
                tracing::warn!(
                    pid = peer.pid,
                    uid = peer.uid,
                    gid = peer.gid,
                    "unauthorised control connection refused"
                );
                let _ = send_response(
                    &fd,
                    &error(ControlError::Unauthorized, "this user may not attach"),
                );
                continue;
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                let _ = send_response(
                    &fd,
                    &error(ControlError::Exhausted, "too many control connections"),
                );
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            if let Err(e) = self.epoll.add(
                fd.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CONN_BASE + id),
            ) {
                tracing::warn!("control epoll add: {e}");
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
                },
            );
        }
    }

    fn notices(&mut self) {
        let _ = self.notice_wake.read();
        while let Ok(n) = self.notices.try_recv() {
            match n {
                Notice::ChannelClosed { channel, code } => {
                    tracing::debug!(channel, ?code, "engine closed a channel");
                    if let Some((conn, engine)) = self.channels.remove(&channel) {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.channels.retain(|&ch| ch != channel);
                        }
                        self.release_ports(channel, engine, true);
                    }
                }
            }
        }
    }

    fn readable(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get(&conn) else {
                return;
            };
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
                    if let Err(e) = socket::send_packet(&c.fd, &reply.response.encode(), &raw) {
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
                tracing::info!(
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
        }
    }

    /// The engine of `channel` if `conn` opened it.
    fn owned(&self, conn: ConnId, channel: ChannelId) -> Result<u16, Failure> {
        match self.channels.get(&channel) {
            Some(&(c, engine)) if c == conn => Ok(engine),
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
        if self.conns[&conn].channels.len() >= MAX_CHANNELS_PER_CONNECTION {
            return Err(Failure::new(
                ControlError::Exhausted,
                "too many channels on this connection",
            ));
        }
        let id = self.next_channel;
        if id == 0 {
            return Err(Failure::new(
                ControlError::Exhausted,
                "channel ids exhausted",
            ));
        }
        let mem = ChannelMem::create(self.cfg.max_message_len)
            .map_err(|e| Failure::new(ControlError::Exhausted, e.to_string()))?;
        let len = mem.layout().total_len;
        let fds = mem
            .dup_app_fds()
            .map_err(|e| Failure::new(ControlError::Exhausted, e.to_string()))?;
        self.engines[usize::from(engine)].add_channel(id, mem)?;
        self.next_channel = self.next_channel.wrapping_add(1);
        self.channels.insert(id, (conn, engine));
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

    fn listen(&mut self, conn: ConnId, channel: ChannelId, port: u16) -> Result<Reply, Failure> {
        let engine = self.owned(conn, channel)?;
        self.registry.check(port).map_err(claim_failure)?;
        // Others first: once the owner accepts, a SYN reaching any other engine must be dropped
        // (it belongs to a sibling), not refused.
        let others: Vec<&EngineClient> = self.engines.iter().filter(|e| e.id() != engine).collect();
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
        self.registry
            .claim(port, PortOwner { channel, engine })
            .map_err(claim_failure)?;
        tracing::debug!(conn, channel, port, engine, "listening");
        Ok(Response::Ok.into())
    }

    fn unlisten(&mut self, conn: ConnId, channel: ChannelId, port: u16) -> Result<Reply, Failure> {
        let engine = self.owned(conn, channel)?;
        if !self.registry.release(port, channel) {
            return Err(Failure::new(
                ControlError::InvalidPort,
                format!("channel {channel} does not listen on port {port}"),
            ));
        }
        self.unlisten_on(port, engine, false)?;
        Ok(Response::Ok.into())
    }

    /// Stops `port` on every engine (the owner `engine` first, unless it already did).
    fn unlisten_on(&self, port: u16, engine: u16, owner_done: bool) -> Result<(), EngineGone> {
        if !owner_done {
            self.engines[usize::from(engine)].unlisten(port)?;
        }
        for e in self.engines.iter().filter(|e| e.id() != engine) {
            e.host_listener(port, engine, false)?;
        }
        Ok(())
    }

    /// Releases every port of a channel of `engine`. `owner_done`: that engine already stopped
    /// them (it closed the channel).
    fn release_ports(&mut self, channel: ChannelId, engine: u16, owner_done: bool) {
        for port in self.registry.release_channel(channel) {
            if let Err(e) = self.unlisten_on(port, engine, owner_done) {
                tracing::error!("releasing port {port}: {e}");
            }
        }
    }

    /// Closes one channel of `conn` (docs/CHANNEL.md §5): its engine delivers what the app
    /// sent and closes its flows within the linger, or aborts them; its ports are released.
    fn close_channel(&mut self, conn: ConnId, channel: ChannelId, how: Detach) {
        let Some(&(_, engine)) = self.channels.get(&channel) else {
            return;
        };
        let linger = match how {
            Detach::Graceful => Some(self.cfg.close_linger),
            Detach::Abort => None,
        };
        // The owning engine stops the channel's ports itself when it closes the channel.
        let _ = self.engines[usize::from(engine)].send(Command::CloseChannel {
            id: channel,
            code: CloseCode::Detached,
            linger,
            reply: None,
        });
        self.release_ports(channel, engine, true);
        self.channels.remove(&channel);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.channels.retain(|&ch| ch != channel);
        }
    }

    /// Drops a connection and everything it opened (flows aborted, ports released).
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
    }
}

fn claim_failure(e: ClaimError) -> Failure {
    match e {
        ClaimError::InUse(_) => Failure::new(ControlError::PortInUse, e.to_string()),
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
