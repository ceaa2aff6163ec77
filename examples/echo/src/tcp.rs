//! Kernel TCP baseline (`machnet-echo tcp-baseline`): the same echo and report over TCP with
//! `TCP_NODELAY`, optionally busy-polling non-blocking sockets — the comparison the DPDK
//! benchmark asks for (docs/PERFORMANCE.md §7).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::payload::Payload;
use crate::report::{new_histogram, Report};
use crate::LoadArgs;

/// A stream that either blocks or spins on `WouldBlock` (busy polling).
struct Conn {
    stream: TcpStream,
    busy: bool,
}

impl Conn {
    fn new(stream: TcpStream, busy: bool) -> std::io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_nonblocking(busy)?;
        Ok(Conn { stream, busy })
    }

    /// Reads some bytes; `Ok(0)` is end of stream.
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock && self.busy => std::hint::spin_loop(),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            match self.stream.write(buf) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock && self.busy => std::hint::spin_loop(),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Echoes every byte back, one thread per connection.
pub fn server(bind: SocketAddr, busy: bool) -> Result<(), String> {
    let listener = TcpListener::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    eprintln!("machnet-echo: TCP echo on {bind}");
    for stream in listener.incoming() {
        let stream = stream.map_err(|e| format!("accept: {e}"))?;
        std::thread::spawn(move || {
            let Ok(mut conn) = Conn::new(stream, busy) else {
                return;
            };
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = conn.read_some(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Keeps `window` messages of `size` bytes outstanding on one connection and verifies every
/// echo (TCP keeps them in order).
pub fn client(remote: SocketAddr, busy: bool, load: LoadArgs) -> Result<Report, String> {
    if load.size == 0 || load.size > 64 << 20 {
        return Err("--size must be 1 B ..= 64 MiB for TCP".into());
    }
    if load.window == 0 {
        return Err("--window must be at least 1".into());
    }
    let stream = TcpStream::connect_timeout(&remote, Duration::from_secs(5))
        .map_err(|e| format!("connect {remote}: {e}"))?;
    let mut conn = Conn::new(stream, busy).map_err(|e| e.to_string())?;
    let payload = Payload::new(load.size);
    let mut sbuf = vec![0u8; load.size];
    let mut rbuf = vec![0u8; load.size];
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut send_next = |conn: &mut Conn, outstanding: &mut VecDeque<(u64, Instant)>| {
        payload.fill(0, next_seq, &mut sbuf);
        outstanding.push_back((next_seq, Instant::now()));
        next_seq += 1;
        conn.write_all(&sbuf)
            .map_err(|e| format!("send to {remote}: {e}"))
    };
    let (warmup, duration) = load.times()?;
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + duration;
    for _ in 0..load.window {
        send_next(&mut conn, &mut outstanding)?;
    }
    let mut rtt = new_histogram();
    let (mut messages, mut mismatches) = (0u64, 0u64);
    let mut now = Instant::now();
    while now < end {
        let mut filled = 0;
        while filled < load.size {
            match conn.read_some(&mut rbuf[filled..]) {
                Ok(0) => return Err(format!("{remote} closed the connection")),
                Ok(n) => filled += n,
                Err(e) => return Err(format!("recv from {remote}: {e}")),
            }
        }
        now = Instant::now();
        let (seq, sent) = outstanding.pop_front().ok_or("an echo nobody asked for")?;
        if !payload.matches(0, seq, &rbuf) {
            mismatches += 1;
        }
        if now >= warm_end {
            messages += 1;
            let _ = rtt.record((now - sent).as_nanos().max(1) as u64);
        }
        if now < end {
            send_next(&mut conn, &mut outstanding)?;
        }
    }
    Ok(Report {
        mode: "tcp",
        size: load.size,
        window: load.window,
        flows: 1,
        elapsed: now.saturating_duration_since(warm_end),
        messages,
        mismatches,
        lost: 0,
        rtt,
    })
}
