//! Kernel UDP baseline (`machnet-echo udp-baseline`): ping-pong over plain UDP sockets with the
//! same report, blocking or busy-polling — the comparison of docs/PERFORMANCE.md §6.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::payload::Payload;
use crate::report::{new_histogram, Report};
use crate::LoadArgs;

/// Receives one datagram; spins on a non-blocking socket when `busy` (then `Ok(None)` means
/// `timeout` passed).
fn recv(
    sock: &UdpSocket,
    buf: &mut [u8],
    busy: bool,
    timeout: Duration,
) -> std::io::Result<Option<(usize, SocketAddr)>> {
    let deadline = Instant::now() + timeout;
    loop {
        match sock.recv_from(buf) {
            Ok(r) => return Ok(Some(r)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !busy || Instant::now() >= deadline {
                    return Ok(None);
                }
                std::hint::spin_loop();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn socket(bind: SocketAddr, busy: bool, timeout: Duration) -> Result<UdpSocket, String> {
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    if busy {
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    } else {
        sock.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
    }
    Ok(sock)
}

pub(crate) fn server(bind: SocketAddr, busy: bool) -> Result<(), String> {
    let sock = socket(bind, busy, Duration::from_secs(3600))?;
    eprintln!("machnet-echo: UDP echo on {bind}");
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some((n, from)) =
            recv(&sock, &mut buf, busy, Duration::from_secs(3600)).map_err(|e| e.to_string())?
        {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

pub(crate) fn client(
    bind: SocketAddr,
    remote: SocketAddr,
    busy: bool,
    load: LoadArgs,
) -> Result<Report, String> {
    const LOSS_TIMEOUT: Duration = Duration::from_millis(200);
    if load.size == 0 || load.size > 65507 {
        return Err("--size must be 1..=65507 bytes for UDP".into());
    }
    if load.window == 0 {
        return Err("--window must be at least 1".into());
    }
    let sock = socket(bind, busy, LOSS_TIMEOUT)?;
    sock.connect(remote)
        .map_err(|e| format!("connect {remote}: {e}"))?;
    let payload = Payload::new(load.size);
    let mut sbuf = vec![0u8; load.size];
    let mut rbuf = vec![0u8; 65536];
    let mut outstanding: HashMap<u64, Instant> = HashMap::new();
    let mut next_seq = 0u64;
    let mut send_next = |outstanding: &mut HashMap<u64, Instant>| {
        payload.fill(0, next_seq, &mut sbuf);
        outstanding.insert(next_seq, Instant::now());
        next_seq += 1;
        match sock.send(&sbuf) {
            Ok(_) => Ok(()),
            // A full socket buffer drops the datagram like the network would.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(format!("send to {remote}: {e}")),
        }
    };
    let (warmup, duration) = load.times()?;
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + duration;
    for _ in 0..load.window {
        send_next(&mut outstanding)?;
    }
    let mut rtt = new_histogram();
    let (mut messages, mut mismatches, mut lost, mut total_messages) = (0u64, 0u64, 0u64, 0u64);
    let mut last_echo = Instant::now();
    let mut now = Instant::now();
    while now < end {
        let got = recv(&sock, &mut rbuf, busy, LOSS_TIMEOUT)
            .map_err(|e| format!("recv from {remote}: {e}"))?;
        now = Instant::now();
        let Some((n, _)) = got else {
            if now.duration_since(last_echo) > Duration::from_secs(5) {
                return Err(format!(
                    "no echo from {remote} for 5 s: is the server running?"
                ));
            }
            // Give up on what is in flight and start a new window.
            lost += outstanding.len() as u64;
            outstanding.clear();
            for _ in 0..load.window {
                send_next(&mut outstanding)?;
            }
            continue;
        };
        last_echo = now;
        let seq = Payload::seq_of(&rbuf[..n]);
        let Some(sent) = outstanding.remove(&seq) else {
            continue; // a late echo of a datagram already counted lost
        };
        if !payload.matches(0, seq, &rbuf[..n]) {
            mismatches += 1;
        }
        total_messages += 1;
        if now >= warm_end {
            messages += 1;
            let _ = rtt.record((now - sent).as_nanos().max(1) as u64);
        }
        if now < end {
            send_next(&mut outstanding)?;
        }
    }
    Ok(Report {
        mode: "udp",
        size: load.size,
        window: load.window,
        flows: 1,
        elapsed: now.saturating_duration_since(warm_end),
        messages,
        mismatches,
        lost,
        rtt,
        total_messages,
        cpu_s: 0.0,
        wall_s: 0.0,
    })
}
