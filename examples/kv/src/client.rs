//! The client side: one connection (a Machnet flow on its own channel, or a TCP connection)
//! that can pipeline requests. Responses arrive in request order on each connection.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use machnet::{Channel, Flow, Machnet};

use crate::protocol::{Request, Response, ResponseError, MAX_SCAN_BYTES};
use crate::server::{read_frame, write_frame};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Attaching to the sidecar, opening the channel or connecting failed.
    #[error("connect: {0}")]
    Connect(String),
    /// Sending or receiving failed (the connection is unusable).
    #[error("transport: {0}")]
    Transport(String),
    /// The server's response is malformed.
    #[error("bad response: {0}")]
    BadResponse(#[from] ResponseError),
    /// A response answered another request than the oldest outstanding one.
    #[error("response id {got} where {expected} was expected")]
    OutOfOrder {
        /// The id awaited.
        expected: u32,
        /// The id received.
        got: u32,
    },
}

/// A connection to the KV server.
pub trait Conn {
    /// Sends one request message.
    fn send(&mut self, msg: &[u8]) -> Result<(), ClientError>;
    /// Receives the next response message into `buf`.
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(), ClientError>;

    /// Sends `req` and waits for its response (nothing else may be outstanding).
    fn call(&mut self, req: &Request<'_>, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        let mut msg = Vec::new();
        req.encode(&mut msg);
        self.send(&msg)?;
        self.recv(buf)?;
        let got = Response::parse(buf)?.id;
        if got != req.id() {
            return Err(ClientError::OutOfOrder {
                expected: req.id(),
                got,
            });
        }
        Ok(())
    }
}

/// A Machnet flow to the server, on a channel of its own (use one per thread).
pub struct MachnetConn {
    // Keeps the control connection (and so the channel) alive.
    _machnet: Machnet,
    ch: Channel,
    flow: Flow,
}

impl MachnetConn {
    /// Attaches to the sidecar at `socket` and connects to `remote`:`port`.
    pub fn connect(socket: &Path, remote: Ipv4Addr, port: u16) -> Result<Self, ClientError> {
        Self::connect_with_busy_poll(socket, remote, port, None)
    }

    /// [`MachnetConn::connect`], the channel busy-polling for up to `spin` before it sleeps.
    pub fn connect_with_busy_poll(
        socket: &Path,
        remote: Ipv4Addr,
        port: u16,
        spin: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let e = |e: &dyn std::fmt::Display| ClientError::Connect(e.to_string());
        let machnet = Machnet::attach_at(socket).map_err(|x| e(&x))?;
        let mut ch = machnet.open_channel(None).map_err(|x| e(&x))?;
        ch.set_busy_poll(spin);
        let flow = ch
            .connect_timeout(remote, port, Duration::from_secs(10))
            .map_err(|x| e(&x))?;
        Ok(MachnetConn {
            _machnet: machnet,
            ch,
            flow,
        })
    }
}

impl Conn for MachnetConn {
    fn send(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        self.ch
            .send(&self.flow, msg)
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        let (flow, msg) = self
            .ch
            .recv()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if flow.handle() != self.flow.handle() {
            return Err(ClientError::Transport(format!("message on unknown {flow}")));
        }
        *buf = msg;
        Ok(())
    }
}

/// A TCP connection to the server (`u32` length-prefixed messages, `TCP_NODELAY`).
pub struct TcpConn {
    stream: TcpStream,
}

impl TcpConn {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| ClientError::Connect(format!("{addr}: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(TcpConn { stream })
    }
}

impl Conn for TcpConn {
    fn send(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        write_frame(&mut self.stream, msg).map_err(|e| ClientError::Transport(e.to_string()))
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        read_frame(&mut self.stream, buf, MAX_SCAN_BYTES + 64)
            .map_err(|e| ClientError::Transport(e.to_string()))
    }
}
