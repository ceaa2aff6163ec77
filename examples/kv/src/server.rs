//! The two transports of the server: Machnet (one channel per thread, all listening on the
//! port as one listen group, docs/CHANNEL.md §2) and kernel TCP (one thread per connection,
//! `u32` little-endian length before each message), both answering through
//! [`service::handle`](crate::service::handle) against one shared store.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use machnet::{Channel, ListenError, Machnet, OpenChannelError, RecvError, SendError};

use crate::service;
use crate::store::Store;

/// Largest framed message accepted over TCP (a SET of the largest value, with headers).
pub const MAX_TCP_FRAME: usize = crate::protocol::MAX_VALUE + crate::protocol::MAX_KEY + 64;

/// Serves requests arriving on `ch` (which listens already) until `stop` is set or the channel
/// fails. Responses go back on the request's flow, in request order.
pub fn serve_machnet(ch: &mut Channel, store: &Store, stop: &AtomicBool) -> Result<(), RecvError> {
    let mut buf = vec![0u8; ch.max_message_len() as usize];
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some((flow, n)) = ch.recv_into_timeout(&mut buf, Duration::from_millis(100))? else {
            continue;
        };
        service::handle(store, &buf[..n], &mut out);
        match ch.send(&flow, &out) {
            Ok(()) => {}
            // The client left between its request and our answer.
            Err(SendError::FlowClosed(_) | SendError::FlowClosing) => {}
            Err(SendError::ChannelClosed(c)) => return Err(RecvError::ChannelClosed(c)),
            Err(SendError::SidecarGone) => return Err(RecvError::SidecarGone),
            Err(e) => eprintln!("machnet-kv: answer on {flow}: {e}"),
        }
    }
    Ok(())
}

/// Why the Machnet server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No thread asked for.
    #[error("at least one thread is needed")]
    NoThreads,
    /// A channel could not be opened.
    #[error("open a channel: {0}")]
    Open(#[from] OpenChannelError),
    /// A channel could not listen on the port.
    #[error("listen: {0}")]
    Listen(#[from] ListenError),
    /// A serving thread could not be started.
    #[error("start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Where each serving thread's channel goes: `threads` channels spread round-robin over the
/// sidecar's `engines`, or, for one thread, wherever the sidecar puts it (`None`).
pub fn channel_engines(threads: usize, engines: u16) -> Vec<Option<u16>> {
    if threads == 1 {
        return vec![None];
    }
    (0..threads)
        .map(|i| Some((i % usize::from(engines.max(1))) as u16))
        .collect()
}

/// The Machnet server's threads, each serving one channel of the listen group.
pub struct MachnetServer {
    threads: Vec<JoinHandle<Result<(), RecvError>>>,
    engines: Vec<u16>,
}

impl MachnetServer {
    /// Opens one channel per entry of `engines` (see [`channel_engines`]), makes each listen on
    /// `port` (the sidecar puts them in one listen group: each accepted flow is served by the
    /// thread whose channel is on the engine that accepted it), and serves each on its own
    /// thread against `store` until `stop` is set.
    pub fn start(
        machnet: &Machnet,
        port: u16,
        engines: &[Option<u16>],
        store: Arc<Store>,
        stop: Arc<AtomicBool>,
    ) -> Result<MachnetServer, StartError> {
        Self::start_with_busy_poll(machnet, port, engines, store, stop, None)
    }

    /// [`MachnetServer::start`] with each thread busy-polling its channel for up to `spin`
    /// before it sleeps (`Channel::set_busy_poll`): a server that expects the next request
    /// within microseconds saves the sleep and the wake-up.
    pub fn start_with_busy_poll(
        machnet: &Machnet,
        port: u16,
        engines: &[Option<u16>],
        store: Arc<Store>,
        stop: Arc<AtomicBool>,
        spin: Option<std::time::Duration>,
    ) -> Result<MachnetServer, StartError> {
        if engines.is_empty() {
            return Err(StartError::NoThreads);
        }
        // All channels listen before any thread serves: a listen failure leaves nothing running.
        let mut channels = Vec::with_capacity(engines.len());
        for &e in engines {
            let mut ch = machnet.open_channel(e)?;
            ch.set_busy_poll(spin);
            ch.listen(port)?;
            channels.push(ch);
        }
        let engines = channels.iter().map(Channel::engine).collect();
        let mut threads = Vec::with_capacity(channels.len());
        for (i, mut ch) in channels.into_iter().enumerate() {
            let (store, stop_t) = (store.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("kv-machnet-{i}"))
                .spawn(move || serve_machnet(&mut ch, &store, &stop_t));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(MachnetServer { threads, engines })
    }

    /// The engine of each thread's channel.
    pub fn engines(&self) -> &[u16] {
        &self.engines
    }

    /// Waits for every thread (they end when `stop` is set or their channel fails); returns
    /// the first failure.
    pub fn join(self) -> Result<(), RecvError> {
        let mut first = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or(Ok(()));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// Accepts TCP connections on `listener` forever, one thread each.
pub fn serve_tcp(listener: TcpListener, store: Arc<Store>) -> std::io::Result<()> {
    for stream in listener.incoming() {
        let stream = stream?;
        let store = store.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_tcp_conn(stream, &store) {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    eprintln!("machnet-kv: TCP connection: {e}");
                }
            }
        });
    }
    Ok(())
}

fn serve_tcp_conn(mut stream: TcpStream, store: &Store) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut msg = Vec::new();
    let mut out = Vec::new();
    loop {
        read_frame(&mut stream, &mut msg, MAX_TCP_FRAME)?;
        service::handle(store, &msg, &mut out);
        write_frame(&mut stream, &out)?;
    }
}

/// Reads one length-prefixed frame into `msg`. A length above `max` is an error.
pub fn read_frame(stream: &mut impl Read, msg: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    msg.resize(len, 0);
    stream.read_exact(msg)
}

/// Writes one length-prefixed frame.
pub fn write_frame(stream: &mut impl Write, msg: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    stream.write_all(&len.to_le_bytes())?;
    stream.write_all(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_spread_over_engines_and_one_thread_lets_the_sidecar_choose() {
        assert_eq!(channel_engines(1, 4), [None]);
        assert_eq!(channel_engines(2, 2), [Some(0), Some(1)]);
        assert_eq!(
            channel_engines(5, 2),
            [Some(0), Some(1), Some(0), Some(1), Some(0)]
        );
        assert_eq!(channel_engines(3, 4), [Some(0), Some(1), Some(2)]);
        assert!(channel_engines(0, 2).is_empty());
    }
}
