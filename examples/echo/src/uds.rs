//! Unix-domain-socket baseline (`machnet-echo uds-baseline`): the same echo and report over a
//! `SOCK_STREAM` Unix socket with blocking reads and writes — the classic same-host ping-pong the
//! same-host flow goal is measured against (issue 16, docs/PERFORMANCE.md).
//!
//! Messages have a fixed size both ends know (`--size`), so the byte stream needs no length
//! prefix: the server echoes bytes as they come and the client reads exactly one message per
//! echo. Blocking means at most `window × size` bytes may be in flight before the client reads
//! (the socket buffers must hold them or both ends block in `write`), hence the cap below.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::payload::Payload;
use crate::report::{new_histogram, Report};
use crate::LoadArgs;

/// Bytes a client may keep outstanding (window × size): well under the default Unix socket
/// buffers (net.core.wmem_default, about 208 KiB), so the blocking writes cannot deadlock (a
/// client blocked writing a message the server echoes while the client is not reading would).
const MAX_IN_FLIGHT: usize = 64 << 10;

/// Binds `path` (removing a stale socket file left by an earlier server, never another kind of
/// file) and echoes every byte back, one thread per connection.
pub(crate) fn server(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("remove {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    eprintln!("machnet-echo: UDS echo on {}", path.display());
    for stream in listener.incoming() {
        let mut stream = stream.map_err(|e| format!("accept: {e}"))?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
    }
    Ok(())
}

/// Keeps `window` messages of `size` bytes outstanding on one connection to the server at
/// `path`, verifying every echo (the stream keeps them in order): one blocking `write` of a
/// message, then, once the window is full, one blocking read of an echo before the next write.
pub(crate) fn client(path: &Path, load: LoadArgs) -> Result<Report, String> {
    let size = load.size;
    if size == 0 || load.window == 0 {
        return Err("--size and --window must be at least 1".into());
    }
    if size.saturating_mul(load.window) > MAX_IN_FLIGHT {
        return Err(format!(
            "window × size may be at most {MAX_IN_FLIGHT} bytes for the blocking Unix-socket \
             client (a larger message would block both ends in write)"
        ));
    }
    let mut stream =
        UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    // A server that stops answering must not hang the benchmark.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let payload = Payload::new(size);
    let mut sbuf = vec![0u8; size];
    let mut rbuf = vec![0u8; size];
    let mut outstanding = std::collections::VecDeque::with_capacity(load.window);
    let mut next_seq = 0u64;
    let mut send = |stream: &mut UnixStream, outstanding: &mut std::collections::VecDeque<_>| {
        payload.fill(0, next_seq, &mut sbuf);
        outstanding.push_back((next_seq, Instant::now()));
        next_seq += 1;
        stream
            .write_all(&sbuf)
            .map_err(|e| format!("send to {}: {e}", path.display()))
    };
    let (warmup, duration) = load.times()?;
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + duration;
    for _ in 0..load.window {
        send(&mut stream, &mut outstanding)?;
    }
    let mut rtt = new_histogram();
    let (mut messages, mut mismatches, mut total_messages) = (0u64, 0u64, 0u64);
    let mut measured_until = None;
    while let Some((seq, sent)) = outstanding.pop_front() {
        stream.read_exact(&mut rbuf).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                format!("no echo from {} for 5 s", path.display())
            }
            ErrorKind::UnexpectedEof => format!("{} closed the connection", path.display()),
            _ => format!("recv from {}: {e}", path.display()),
        })?;
        let now = Instant::now();
        if !payload.matches(0, seq, &rbuf) {
            mismatches += 1;
        }
        total_messages += 1;
        if measured_until.is_some() {
            continue; // draining the window after the measured interval
        }
        if now >= warm_end {
            messages += 1;
            let _ = rtt.record((now - sent).as_nanos().max(1) as u64);
        }
        if now < end {
            send(&mut stream, &mut outstanding)?;
        } else {
            measured_until = Some(now);
        }
    }
    let measured_until = measured_until.unwrap_or_else(Instant::now);
    Ok(Report {
        mode: "uds",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(size: usize, window: usize) -> LoadArgs {
        LoadArgs {
            size,
            window,
            duration: 0.2,
            warmup: 0.05,
            json: false,
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("machnet-echo-uds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn echoes_verified_and_drained() {
        let dir = temp_dir("echo");
        let path = dir.join("s.sock");
        // A stale socket file from an earlier server is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let p = path.clone();
        std::thread::spawn(move || server(&p));
        let mut connected = false;
        for _ in 0..200 {
            if UnixStream::connect(&path).is_ok() {
                connected = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(connected, "the server did not come up");
        for (size, window) in [(1, 1), (100, 4), (MAX_IN_FLIGHT, 1)] {
            let r = client(&path, load(size, window)).unwrap();
            assert_eq!(r.mismatches, 0, "size {size} window {window}");
            assert_eq!(r.mode, "uds");
            // Everything sent came back: at least the first window, and the drain collects
            // what was in flight when the measurement ended.
            assert!(r.total_messages >= window as u64, "{}", r.total_messages);
            assert!(r.messages <= r.total_messages);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_what_could_deadlock_or_is_empty() {
        let path = Path::new("/nonexistent/never-connected.sock");
        for (size, window) in [
            (MAX_IN_FLIGHT + 1, 1),
            (MAX_IN_FLIGHT / 2 + 1, 2),
            (0, 1),
            (8, 0),
        ] {
            let e = client(path, load(size, window)).map(|_| ()).unwrap_err();
            assert!(!e.contains("connect"), "size {size} window {window}: {e}");
        }
    }

    #[test]
    fn server_leaves_other_files_alone() {
        let dir = temp_dir("file");
        let path = dir.join("not-a-socket");
        std::fs::write(&path, b"keep me").unwrap();
        let e = server(&path).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
