//! The two transports of the server: Machnet (one channel, every flow of the listening port)
//! and kernel TCP (one thread per connection, `u32` little-endian length before each message),
//! both answering through [`service::handle`](crate::service::handle).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use machnet::{Channel, RecvError, SendError};

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
