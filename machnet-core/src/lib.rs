//! # machnet-core
//!
//! The Machnet transport as a deterministic, sans-IO state machine: no sockets, threads or clock
//! reads. Time is an argument; datagrams go in, datagrams, events and deadlines come out.
//!
//! - [`wire`]: the packet format of `docs/PROTOCOL.md` as checked views and typed reprs.
//! - [`Engine`]: one engine (= one core, one NIC queue): RSS-- connection setup, reliable
//!   in-order delivery of messages up to 8 MiB, SACK, RTO, congestion and flow control.
//! - [`rss`]: spray batch sizes, the Toeplitz hash, and the [`rss::RssOracle`] hook.
//! - [`cc`]: congestion control behind a trait (Swift-like delay-based default, fixed window).
//!
//! ```
//! use machnet_core::{Engine, EngineConfig, Instant, Datagram, Event};
//! use std::net::Ipv4Addr;
//!
//! let a_ip = Ipv4Addr::new(10, 0, 0, 1);
//! let b_ip = Ipv4Addr::new(10, 0, 0, 2);
//! let mut a = Engine::new(EngineConfig::new(a_ip, 0, 1), 1).unwrap();
//! let mut b = Engine::new(EngineConfig::new(b_ip, 0, 1), 2).unwrap();
//! b.listen(7000).unwrap();
//! let now = Instant::ZERO;
//! let flow = a.connect(now, b_ip, 7000).unwrap();
//! a.send(now, flow, bytes::Bytes::from_static(b"hello")).unwrap();
//!
//! // A perfect network: shuttle datagrams until both sides are idle.
//! let mut buf = vec![0u8; 1500];
//! let mut got = None;
//! for _ in 0..10 {
//!     while let Some(t) = a.poll_transmit(now, &mut buf) {
//!         b.handle_datagram(now, Datagram { remote_ip: a_ip, src_port: t.src_port, dst_port: t.dst_port, payload: &buf[..t.len] });
//!     }
//!     while let Some(t) = b.poll_transmit(now, &mut buf) {
//!         a.handle_datagram(now, Datagram { remote_ip: b_ip, src_port: t.src_port, dst_port: t.dst_port, payload: &buf[..t.len] });
//!     }
//!     while let Some(ev) = b.poll_event() {
//!         if let Event::Readable { flow } = ev {
//!             got = b.recv(flow).unwrap();
//!         }
//!     }
//! }
//! assert_eq!(got.as_deref(), Some(&b"hello"[..]));
//! ```

pub mod cc;
pub mod config;
pub mod engine;
mod flow;
pub mod rss;
mod rtt;
pub mod seal;
mod seq;
pub mod time;
pub mod wire;

pub use config::{ChecksumMode, ConfigError, EngineConfig, PortPool};
pub use engine::api::{
    CloseError, CloseReason, ConnectError, Datagram, DatagramMut, Event, FlowId, FlowKey,
    ListenError, RecvError, SendError, Transmit, Unreachable,
};
pub use engine::stats::{DropReason, EngineStats, FlowStats};
pub use engine::Engine;
pub use time::Instant;

/// Most engines a host runs (and most this implementation believes a peer runs: larger claims
/// in handshake blocks are capped to it).
pub const MAX_ENGINES: u16 = 64;
