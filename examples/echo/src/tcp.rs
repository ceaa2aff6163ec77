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
pub(crate) fn server(bind: SocketAddr, busy: bool) -> Result<(), String> {
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

/// Connects to `remote`, from `bind` if given (e.g. 127.0.0.2:0, so the two ends use different
/// loopback addresses like the Machnet sidecars do).
fn connect(bind: Option<SocketAddr>, remote: SocketAddr) -> Result<TcpStream, String> {
    let Some(bind) = bind else {
        return TcpStream::connect_timeout(&remote, Duration::from_secs(5))
            .map_err(|e| format!("connect {remote}: {e}"));
    };
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = if bind.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(bind))
        .map_err(|e| format!("bind {bind}: {e}"))?;
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(remote))
        .map_err(|e| format!("connect {remote} from {bind}: {e}"))?;
    Ok(TcpStream::from(fd))
}

/// Waits until the socket is readable or, with `want_write`, writable, or `timeout` passes.
fn wait(stream: &TcpStream, want_write: bool, timeout: Duration) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut events = PollFlags::POLLIN;
    if want_write {
        events |= PollFlags::POLLOUT;
    }
    let mut fds = [PollFd::new(stream.as_fd(), events)];
    // Round up so a sub-millisecond remainder does not become a busy loop of zero timeouts.
    let ms = timeout.as_micros().div_ceil(1000).min(1000) as u16;
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(format!("poll: {e}")),
    }
}

/// Keeps `window` messages of `size` bytes outstanding on one connection and verifies every
/// echo (TCP keeps them in order).
///
/// One thread, non-blocking socket: each turn writes what is queued and reads what has
/// arrived, then waits in poll(2) for POLLIN (and POLLOUT while bytes are queued), or spins
/// with `busy`. Reading while writing matters for messages larger than the socket buffers
/// (8 MiB, window 2): a client that writes its whole window before reading deadlocks with the
/// echo server, both blocked in `write`. A message's RTT runs from when it was queued.
///
/// By default the byte stream is used as TCP apps do: a `read` takes up to 256 KiB of echoes
/// and the messages queued in one turn leave in one `write`. With `per_message_io` no system
/// call crosses a message boundary (at least one `write` and one `read` per message, like
/// the client before the event loop).
pub(crate) fn client(
    bind: Option<SocketAddr>,
    remote: SocketAddr,
    busy: bool,
    per_message_io: bool,
    load: LoadArgs,
) -> Result<Report, String> {
    /// Bytes asked for per `read` beyond one message.
    const READ_CHUNK: usize = 256 << 10;
    if load.size == 0 || load.size > 64 << 20 {
        return Err("--size must be 1 B ..= 64 MiB for TCP".into());
    }
    if load.window == 0 {
        return Err("--window must be at least 1".into());
    }
    let size = load.size;
    let mut stream = connect(bind, remote)?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let payload = Payload::new(size);
    // Bytes queued for sending: wbuf[woff..]. Messages are appended whole.
    let mut wbuf: Vec<u8> = Vec::with_capacity(load.window * size);
    let mut woff = 0usize;
    // Bytes written over the run, to find message boundaries for `per_message_io`.
    let mut written = 0u64;
    // Bytes received but not yet checked: rbuf[rstart..rend].
    let mut rbuf = vec![0u8; size + READ_CHUNK];
    let (mut rstart, mut rend) = (0usize, 0usize);
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::with_capacity(load.window);
    let mut next_seq = 0u64;
    let mut queue = |wbuf: &mut Vec<u8>, woff: &mut usize, outstanding: &mut VecDeque<_>| {
        // Drop the sent prefix once it is at least half the buffer (amortised: each byte
        // is moved at most about once).
        if *woff > 0 && *woff * 2 >= wbuf.len() {
            wbuf.drain(..*woff);
            *woff = 0;
        }
        let at = wbuf.len();
        wbuf.resize(at + size, 0);
        payload.fill(0, next_seq, &mut wbuf[at..]);
        outstanding.push_back((next_seq, Instant::now()));
        next_seq += 1;
    };

    let (warmup, duration) = load.times()?;
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + duration;
    // After `end` no new messages are queued; echoes still in flight are collected until
    // `drain_end`, so `total_messages` counts what was moved.
    let drain_end = end + Duration::from_secs(2);
    for _ in 0..load.window {
        queue(&mut wbuf, &mut woff, &mut outstanding);
    }
    let mut rtt = new_histogram();
    let (mut messages, mut mismatches, mut total_messages) = (0u64, 0u64, 0u64);
    let mut measured_until: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        let mut progress = false;
        if woff < wbuf.len() {
            let mut upto = wbuf.len();
            if per_message_io {
                let in_msg = (written % size as u64) as usize;
                upto = upto.min(woff + size - in_msg);
            }
            match stream.write(&wbuf[woff..upto]) {
                Ok(0) => return Err(format!("send to {remote}: wrote zero bytes")),
                Ok(n) => {
                    woff += n;
                    written += n as u64;
                    progress = true;
                    if woff == wbuf.len() {
                        wbuf.clear();
                        woff = 0;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("send to {remote}: {e}")),
            }
        }
        // The unchecked bytes are less than one message here.
        let read_end = if per_message_io {
            rend + size - (rend - rstart)
        } else {
            rbuf.len()
        };
        match stream.read(&mut rbuf[rend..read_end]) {
            Ok(0) => return Err(format!("{remote} closed the connection")),
            Ok(n) => {
                rend += n;
                progress = true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(format!("recv from {remote}: {e}")),
        }
        let now = Instant::now();
        while rend - rstart >= size {
            let (seq, sent) = outstanding.pop_front().ok_or("an echo nobody asked for")?;
            if !payload.matches(0, seq, &rbuf[rstart..rstart + size]) {
                mismatches += 1;
            }
            rstart += size;
            total_messages += 1;
            if measured_until.is_none() {
                if now >= warm_end {
                    messages += 1;
                    let _ = rtt.record((now - sent).as_nanos().max(1) as u64);
                }
                if now < end {
                    queue(&mut wbuf, &mut woff, &mut outstanding);
                } else {
                    measured_until = Some(now);
                }
            }
        }
        // Keep room for a full read chunk after the unchecked bytes (less than one message).
        if rstart == rend {
            (rstart, rend) = (0, 0);
        } else if rbuf.len() - rend < READ_CHUNK / 4 {
            rbuf.copy_within(rstart..rend, 0);
            (rend, rstart) = (rend - rstart, 0);
        }
        if progress {
            last_progress = now;
        } else if now.duration_since(last_progress) > Duration::from_secs(5) {
            return Err(format!(
                "no progress with {remote} for 5 s: is the server running?"
            ));
        }
        if measured_until.is_none() && now >= end {
            measured_until = Some(now);
        }
        if measured_until.is_some() && (outstanding.is_empty() || now >= drain_end) {
            break;
        }
        if !progress {
            if busy {
                std::hint::spin_loop();
            } else {
                let deadline = if measured_until.is_none() {
                    end
                } else {
                    drain_end
                };
                wait(
                    &stream,
                    woff < wbuf.len(),
                    deadline.saturating_duration_since(now),
                )?;
            }
        }
    }
    let measured_until = measured_until.unwrap_or_else(Instant::now);
    Ok(Report {
        mode: "tcp",
        size,
        window: load.window,
        flows: 1,
        elapsed: measured_until.saturating_duration_since(warm_end),
        messages,
        mismatches,
        lost: 0,
        rtt,
        total_messages,
        cpu_s: 0.0,
        wall_s: 0.0,
    })
}
