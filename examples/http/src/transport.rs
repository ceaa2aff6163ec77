//! The two transports the same server and load generator run on.

use std::io;
use std::net::SocketAddrV4;
use std::path::Path;

/// Kernel TCP or Machnet flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Kernel TCP (TCP_NODELAY).
    Tcp,
    /// Machnet flows through the sidecar (`machnet::stream`).
    Machnet,
}

impl Transport {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Machnet => "machnet",
        }
    }
}

/// Attaches to the sidecar at `socket` (or the default socket).
pub fn attach(socket: Option<&Path>) -> io::Result<machnet::Machnet> {
    match socket {
        Some(p) => machnet::Machnet::attach_at(p),
        None => machnet::Machnet::attach(),
    }
    .map_err(|e| io::Error::other(format!("attach to the sidecar: {e}")))
}

/// A TCP connection with TCP_NODELAY.
pub async fn connect_tcp(target: SocketAddrV4) -> io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}
