//! The control-plane attack of issue 14, as a measurement (ignored: run by hand).
//!
//! Two `machnet` processes on loopback: A (127.0.0.1, attacked) and B (127.0.0.2). An echo
//! (client on A, server on B, 64-byte ping-pong) runs undisturbed, then while an attacker
//! process holds as many idle control connections (up to 5,000) and channels (up to 7,000) on
//! A as A lets it. Meanwhile another process attaches to A and opens a channel. Prints the echo
//! rates before, during and after the attack and the ratio of the second to the mean of the
//! others, whether the other app got in, and A's log lines per second.
//!
//! ```text
//! cargo test --release -p machnet-sidecar --test control_attack -- --ignored --nocapture attack
//! ```
//! `MACHNET_ATTACK_BIN` runs another sidecar binary (e.g. one built before the limits);
//! `MACHNET_ATTACK_SECS` sets each measuring period (default 5); `MACHNET_ATTACK_CONNS` the
//! attacker's connections (default 5,000; with few, its channels run the sidecar out of
//! descriptors instead).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use machnet::{Event, Machnet};
use machnet_channel::control::{Request, Response};
use machnet_core::PortPool;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 7300;
const ROLE_ENV: &str = "MACHNET_ATTACK_ROLE";
const SOCK_ENV: &str = "MACHNET_ATTACK_SOCK";

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

fn spawn_sidecar(bin: &Path, ip: Ipv4Addr, pool: PortPool, dir: &Path) -> Proc {
    Proc::start_bin(
        bin,
        ip,
        pool,
        dir,
        &["--stats-interval", "0", "--log-level", "info"],
    )
}

fn role(name: &str, sock: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["attack_role", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(ROLE_ENV, name)
        .env(SOCK_ENV, sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn role")
}

/// Reads the role's report line (prefix `REPORT `).
fn report(child: &mut Child) -> String {
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    for l in lines.by_ref() {
        let l = l.unwrap_or_default();
        if let Some((_, r)) = l.split_once("REPORT ") {
            let r = r.to_owned();
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return r;
        }
    }
    "no report (the process died)".into()
}

/// Child roles: `attacker` (connections, then channels, held until stdin closes) and `other`
/// (attach, open a channel, report).
#[test]
#[ignore = "a role of the attack measurement, run in a child process"]
fn attack_role() {
    let (Ok(role), Ok(sock)) = (std::env::var(ROLE_ENV), std::env::var(SOCK_ENV)) else {
        return;
    };
    let sock = PathBuf::from(sock);
    raise_fd_limit();
    match role.as_str() {
        "attacker" => {
            let mut conns = Vec::new();
            let mut refused = String::new();
            let max_conns: usize = std::env::var("MACHNET_ATTACK_CONNS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(5000);
            while conns.len() < max_conns {
                let Ok(c) = RawClient::connect(&sock) else {
                    refused = "connect failed".into();
                    break;
                };
                let _ = c.send_raw(
                    &Request::Hello {
                        version: 1,
                        client: "attacker".into(),
                    }
                    .encode(),
                );
                match c.recv(Duration::from_secs(5)) {
                    Some((Response::Hello { .. }, _)) => conns.push(c),
                    other => {
                        refused = format!("{:?}", other.map(|r| r.0));
                        break;
                    }
                }
            }
            let mut channels = 0;
            let mut channel_refusal = String::new();
            'open: while channels < 7000 && !conns.is_empty() {
                for c in &conns {
                    if c.send_raw(&Request::OpenChannel { engine: None }.encode())
                        .is_err()
                    {
                        channel_refusal = "send failed".into();
                        break 'open;
                    }
                    match c.recv(Duration::from_secs(5)) {
                        // The descriptors are dropped at once: the sidecar keeps its copies.
                        Some((Response::ChannelOpened { .. }, _fds)) => channels += 1,
                        other => {
                            channel_refusal = format!("{:?}", other.map(|r| r.0));
                            break 'open;
                        }
                    }
                    if channels >= 7000 {
                        break 'open;
                    }
                }
            }
            println!(
                "REPORT conns={} channels={channels} conn_refusal={refused} channel_refusal={channel_refusal}",
                conns.len()
            );
            let mut b = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut b);
        }
        "other" => {
            let outcome = match Machnet::attach_at(&sock) {
                Err(e) => format!("attach failed: {e}"),
                Ok(m) => match m.open_channel(None) {
                    Ok(_) => "attached and opened a channel".into(),
                    Err(e) => format!("attached; channel failed: {e}"),
                },
            };
            println!("REPORT {outcome}");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Echo round trips in `secs`, 64-byte messages, one in flight.
fn echo_rate(ch: &mut machnet::Channel, flow: &machnet::Flow, secs: f64) -> f64 {
    let msg = [7u8; 64];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        ch.send(flow, &msg).expect("send");
        match ch.next_event(Some(Duration::from_secs(10))) {
            Ok(Some(Event::Message { .. })) => n += 1,
            other => panic!("echo: {other:?}"),
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "a measurement, run by hand (see the module documentation)"]
fn attack() {
    raise_fd_limit();
    let bin = std::env::var("MACHNET_ATTACK_BIN").unwrap_or_else(|_| MACHNET_BIN.into());
    let secs: f64 = std::env::var("MACHNET_ATTACK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 4);
    let dir = temp_dir("attack");
    let a = spawn_sidecar(bin.as_ref(), A, pool, &dir);
    let b = spawn_sidecar(bin.as_ref(), B, pool, &dir);

    let server = Machnet::attach_at(&b.sock).expect("attach B");
    let mut sch = server.open_channel(None).expect("server channel");
    sch.listen(PORT).expect("listen");
    std::thread::spawn(move || {
        let _m = server;
        loop {
            match sch.next_event(Some(Duration::from_millis(100))) {
                Ok(Some(Event::Message { flow, data })) => {
                    if sch.send(&flow, &data).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let client = Machnet::attach_at(&a.sock).expect("attach A");
    let mut cch = client.open_channel(None).expect("client channel");
    let flow = cch
        .connect_timeout(B, PORT, Duration::from_secs(10))
        .expect("connect");

    echo_rate(&mut cch, &flow, 1.0); // warm-up
    let before = echo_rate(&mut cch, &flow, secs);
    let mut attacker = role("attacker", &a.sock);
    let attack = report(&mut attacker);
    let log_before = a.log_text();
    let t0 = Instant::now();
    let mut other = role("other", &a.sock);
    let other_outcome = report(&mut other);
    let _ = other.wait();
    let under_attack = echo_rate(&mut cch, &flow, secs);
    let log_after = a.log_text();
    let elapsed = t0.elapsed().as_secs_f64();
    let lines =
        log_after.lines().count() - log_before.lines().count().min(log_after.lines().count());
    let bytes = log_after.len().saturating_sub(log_before.len());
    drop(attacker.stdin.take());
    let _ = attacker.wait();
    let after = echo_rate(&mut cch, &flow, secs);
    let undisturbed = (before + after) / 2.0;
    println!("sidecar: {bin}");
    println!("attacker: {attack}");
    println!("other app during the attack: {other_outcome}");
    println!(
        "echo: before {before:.0} msgs/s, under attack {under_attack:.0}, after {after:.0}; \
         attack / mean(before, after) = {:.3}",
        under_attack / undisturbed
    );
    println!(
        "sidecar A log during the attack: {lines} lines, {bytes} bytes in {elapsed:.1} s ({:.0} lines/s)",
        lines as f64 / elapsed
    );
    drop(b);
}
