//! The sidecar-wide memory budget (PROTOCOL.md §6.5) under attack: raw-UDP attacker flows that
//! complete the handshake and then send only out-of-order data or never-ending messages cannot
//! make a sidecar hold more than its budget, and a legitimate echo keeps working meanwhile.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use machnet::{Event, Machnet};
use machnet_core::wire::{self, flags, Handshake, Packet, PacketType, Repr, SackList, UdpPair};
use machnet_core::DropReason;
use machnet_sidecar::testing::{pattern, LoopbackSidecars};

const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 6200;
const WAIT: Duration = Duration::from_secs(20);

/// The datagram size attackers announce and use (a jumbo frame's).
const DATAGRAM: u16 = 9000;
/// Payload of a full DATA fragment with a handshake block.
const FRAGMENT: usize = DATAGRAM as usize - wire::HEADER_LEN - wire::HANDSHAKE_LEN;

/// What an attacker flow sends after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Every packet but the first: the receiver can only store them out of order.
    OutOfOrder,
    /// A maximum-size message without its last fragment, then more beyond it.
    Partial,
}

/// One attacker flow speaking the wire protocol over its own UDP socket.
pub struct AttackFlow {
    sock: UdpSocket,
    how: Attack,
    machnet_port: u16,
    iss: u32,
    server_isn: u32,
    to: SocketAddrV4,
    echo: UdpPair,
    /// Our flow token (PROTOCOL.md §4.1) and the server's, from its SYN-ACK.
    my_token: u64,
    server_token: u64,
}

fn repr(ty: PacketType, src: u16, seq: u32, ack: u32, hs: Option<Handshake>, token: u64) -> Repr {
    Repr {
        packet_type: ty,
        flags: 0,
        src_port: src,
        dst_port: PORT,
        seq,
        ack,
        window: 4096,
        ts_val: 1,
        ts_ecr: 0,
        msg_len: 0,
        sack: SackList::new(),
        handshake: hs,
        payload_len: 0,
        token,
    }
}

impl AttackFlow {
    /// Connects to `PORT` on `server` (UDP pool starting at `udp_port`), or panics.
    /// `pool`: the server's UDP ports (first, count).
    pub fn connect(server: Ipv4Addr, udp_port: (u16, u16), machnet_port: u16, how: Attack) -> Self {
        Self::try_connect(server, udp_port, machnet_port, how)
            .unwrap_or_else(|| panic!("no SYN-ACK for {machnet_port} within {WAIT:?}"))
    }

    /// Like [`AttackFlow::connect`], `None` if no SYN-ACK came within `WAIT`.
    pub fn try_connect(
        server: Ipv4Addr,
        udp_port: (u16, u16),
        machnet_port: u16,
        how: Attack,
    ) -> Option<Self> {
        // Each attacker flow from its own address: a sidecar keeps one peer entry (engines, UDP
        // ports) per address, and these "hosts" each announce a different single UDP port.
        let me = Ipv4Addr::new(127, 0, 10 + (machnet_port % 64) as u8, 3);
        let bind = || {
            let sock = UdpSocket::bind((me, 0)).expect("attacker socket");
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let port = sock.local_addr().unwrap().port();
            (sock, port)
        };
        let (mut sock, mut my_udp) = bind();
        let iss = 0x1000_0000 + u32::from(machnet_port) * 7919;
        let my_token = 0xA77A_C4E2_0000_0000 | u64::from(machnet_port);
        let hs = |my_udp: u16, echo: UdpPair| Handshake {
            engine_count: 1,
            engine_id: 0,
            udp_port_base: my_udp,
            udp_port_count: 1,
            echo_path: echo,
            reply_hint: UdpPair::NONE,
            attempt: 0,
            max_message_len: 8 << 20,
            max_datagram: DATAGRAM,
            token: my_token,
            isn: iss,
        };
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + WAIT;
        for attempt in 0u16.. {
            if Instant::now() >= deadline {
                return None;
            }
            // The kernel hashes (our address and port, theirs) to one of the server's engines:
            // after a round over its ports, try from another port of ours (all of a round's
            // ports may hash to engines that do not listen).
            if attempt > 0 && attempt % udp_port.1 == 0 {
                (sock, my_udp) = bind();
            }
            let syn = repr(
                PacketType::Syn,
                machnet_port,
                iss,
                0,
                Some(hs(my_udp, UdpPair::NONE)),
                0,
            );
            let n = syn.emit(&mut buf, &[], false);
            // Another port of the pool each time: the kernel's hash picks the engine, and only
            // the listener's answers.
            let dst = udp_port.0 + attempt % udp_port.1;
            sock.send_to(&buf[..n], (server, dst)).unwrap();
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(p) = Packet::new_checked(&buf[..n]) else {
                continue;
            };
            let Ok(r) = Repr::parse(&p) else { continue };
            if r.packet_type != PacketType::SynAck
                || r.ack != iss.wrapping_add(1)
                || r.token != my_token
            {
                continue;
            }
            let std::net::SocketAddr::V4(from) = from else {
                unreachable!()
            };
            // The SYN-ACK echoes the path of the SYN it answers: that one reaches the engine.
            let synack_hs = r.handshake.expect("SYN-ACK has a handshake");
            let syn_path = synack_hs.echo_path;
            let mut flow = AttackFlow {
                sock,
                how,
                machnet_port,
                iss,
                server_isn: r.seq,
                to: SocketAddrV4::new(server, syn_path.dst),
                echo: UdpPair {
                    src: from.port(),
                    dst: my_udp,
                },
                my_token,
                server_token: synack_hs.token,
            };
            flow.hs_ack(hs(my_udp, flow.echo));
            return Some(flow);
        }
        unreachable!()
    }

    fn hs_ack(&mut self, hs: Handshake) {
        let mut buf = vec![0u8; 256];
        let ack = repr(
            PacketType::Ack,
            self.machnet_port,
            self.iss.wrapping_add(1),
            self.server_isn.wrapping_add(1),
            Some(hs),
            self.server_token,
        );
        let n = ack.emit(&mut buf, &[], false);
        self.sock.send_to(&buf[..n], self.to).unwrap();
    }

    /// Sends a window's worth of DATA (4096 packets) as the attack says; the receiver's budget
    /// and window decide what it keeps. Answers nothing.
    pub fn blast(&self) {
        self.blast_n(4096);
    }

    /// Like [`AttackFlow::blast`] with the first `count` packets of the window.
    pub fn blast_n(&self, count: u32) {
        let mut buf = vec![0u8; usize::from(DATAGRAM)];
        let payload = vec![0xA5u8; FRAGMENT];
        let hs = Handshake {
            engine_count: 1,
            engine_id: 0,
            udp_port_base: self.echo.dst,
            udp_port_count: 1,
            echo_path: self.echo,
            reply_hint: UdpPair::NONE,
            attempt: 0,
            max_message_len: 8 << 20,
            max_datagram: DATAGRAM,
            token: self.my_token,
            isn: self.iss,
        };
        let message_fragments = ((8 << 20) / FRAGMENT) as u32;
        for i in 0..count.min(4096) {
            let mut r = repr(
                PacketType::Data,
                self.machnet_port,
                self.iss.wrapping_add(1 + i),
                self.server_isn.wrapping_add(1),
                Some(hs),
                self.server_token,
            );
            match self.how {
                Attack::OutOfOrder if i == 0 => continue,
                Attack::Partial if i == 0 => {
                    r.flags = flags::FIRST;
                    r.msg_len = 8 << 20;
                }
                Attack::Partial if i == message_fragments => continue, // the LAST never comes
                _ => {}
            }
            r.payload_len = FRAGMENT as u16;
            let n = r.emit(&mut buf, &payload, false);
            // A full socket buffer only loses packets: the attacker does not care.
            let _ = self.sock.send_to(&buf[..n], self.to);
        }
    }
}

/// Echo server on the sidecar at `socket`: echoes every message until its channel closes.
fn echo_server(socket: std::path::PathBuf) -> std::thread::JoinHandle<()> {
    let m = Machnet::attach_at(socket).expect("attach server");
    let mut ch = m.open_channel(None).expect("server channel");
    ch.listen(PORT).expect("listen");
    std::thread::spawn(move || {
        let _m = m;
        loop {
            match ch.next_event(Some(Duration::from_millis(100))) {
                Ok(Some(Event::Message { flow, data })) => {
                    let _ = ch.send(&flow, &data);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}

#[test]
fn attacker_flows_stay_within_the_sidecar_budget_and_a_legit_echo_still_works() {
    const BUDGET: usize = 48 << 20;
    const ENGINES: u16 = 2;
    let mut sidecars =
        LoopbackSidecars::start_with("membudget", &[SERVER, CLIENT], ENGINES, |i, c| {
            if i == 0 {
                c.memory_budget = BUDGET;
            }
        });
    let pool = sidecars
        .take(0)
        .map(|s| {
            let p = s.config().udp_ports;
            (s, (p.base, p.count))
        })
        .expect("server sidecar");
    let (server, udp_base) = pool;
    let _echo = echo_server(server.control_socket().to_owned());

    // 32 attacker flows, half of each kind.
    let attackers: Vec<AttackFlow> = (0..32u16)
        .map(|i| {
            let how = if i % 2 == 0 {
                Attack::OutOfOrder
            } else {
                Attack::Partial
            };
            AttackFlow::try_connect(SERVER, udp_base, 40_000 + i, how).unwrap_or_else(|| {
                let reports: Vec<String> = server.reports().iter().map(|r| r.to_string()).collect();
                panic!("no SYN-ACK for attacker {i}:\n{}", reports.join("\n"))
            })
        })
        .collect();

    let client = Machnet::attach_at(sidecars.socket(1)).expect("attach client");
    let mut ch = client.open_channel(None).expect("client channel");
    let flow = ch.connect(SERVER, PORT).expect("connect");

    let held_ok = |when: &str| {
        for r in server.reports() {
            assert_eq!(r.memory_budget, BUDGET / usize::from(ENGINES));
            assert!(
                r.core_held_bytes <= r.memory_budget
                    && r.core.held_bytes_peak as usize <= r.memory_budget,
                "{when}: {r}"
            );
        }
    };
    for round in 0..6u64 {
        for a in &attackers {
            a.blast();
        }
        held_ok("during the attack");
        // The legit flow echoes byte-identical meanwhile.
        for k in 0..4u64 {
            let msg = pattern(round * 10 + k, 1 + (k as usize * 40_000));
            ch.send(&flow, &msg).expect("send");
            let (from, got) = ch
                .recv_timeout(WAIT)
                .expect("recv")
                .unwrap_or_else(|| panic!("no echo in round {round}: {:?}", server.reports()));
            assert_eq!(from, flow);
            assert!(got == msg, "echo of {} bytes altered", msg.len());
        }
    }
    held_ok("after the attack");
    let reports = server.reports();
    let refused: u64 = reports
        .iter()
        .map(|r| r.core.drops_for(DropReason::MemoryBudget))
        .sum();
    let peak: u64 = reports
        .iter()
        .map(|r| r.core.held_bytes_peak)
        .max()
        .unwrap();
    eprintln!("held peak {peak} B of {BUDGET} B / {ENGINES} engines; refused {refused} packets");
    for r in &reports {
        eprintln!("{r}");
    }
    assert!(
        refused > 0,
        "the attack went beyond the budget and was refused"
    );
    // The listener's engine takes every attacker flow: its part of the budget fills.
    assert!(
        peak as usize > BUDGET / usize::from(ENGINES) / 2,
        "the attack filled the engine's budget: peak {peak}"
    );
    ch.close(&flow).expect("close");
    server.shutdown();
}

/// Resident set size of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb << 10
}

/// A measurement, not a check (run with `--ignored --nocapture`): RSS of a `machnet` process
/// before, during and after 32 attacker flows, and after the flows are gone.
#[test]
#[ignore]
fn rss_before_during_and_after_an_attack() {
    let budget = std::env::var("MEMORY_BUDGET").unwrap_or_else(|_| "256MiB".into());
    let dir = std::env::temp_dir().join(format!("machnet-rss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = machnet_sidecar::testing::free_udp_pool(&[SERVER], 8);
    let (mut child, app, _) = start_sidecar_process(&dir, "s", SERVER, pool, &budget);
    let pid = child.id();
    let mut ch = app.open_channel(None).expect("channel");
    ch.listen(PORT).expect("listen");
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(pid);
    let attackers = attack_flows(pool, 41_000);
    let mut peak = 0;
    for _ in 0..8 {
        for a in &attackers {
            a.blast();
        }
        let _ = ch.next_event(Some(Duration::from_millis(50)));
        peak = peak.max(rss(pid));
    }
    drop(attackers);
    // The flows die of the idle timeout (10 s) and linger; then RSS is sampled.
    let end = Instant::now() + Duration::from_secs(13);
    while Instant::now() < end {
        let _ = ch.next_event(Some(Duration::from_millis(200)));
    }
    let after = rss(pid);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "budget {budget}: RSS before {:.1} MiB, peak during {:.1} MiB, after {:.1} MiB",
        mib(before),
        mib(peak),
        mib(after)
    );
    drop(ch);
    drop(app);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// 32 attacker flows to `SERVER` (half of each kind) on Machnet ports `first_port..`.
fn attack_flows(pool: machnet_core::PortPool, first_port: u16) -> Vec<AttackFlow> {
    (0..32u16)
        .map(|i| {
            let how = if i % 2 == 0 {
                Attack::OutOfOrder
            } else {
                Attack::Partial
            };
            AttackFlow::connect(SERVER, (pool.base, pool.count), first_port + i, how)
        })
        .collect()
}

/// Starts a `machnet` process on `ip` (one engine, `budget`) with its socket and log in `dir`
/// named after `name`, and attaches to it.
fn start_sidecar_process(
    dir: &std::path::Path,
    name: &str,
    ip: Ipv4Addr,
    pool: machnet_core::PortPool,
    budget: &str,
) -> (std::process::Child, Machnet, std::path::PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let sock = dir.join(format!("{name}.sock"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_machnet"))
        .args(["--local-ip", &ip.to_string(), "--engines", "1"])
        .args(["--udp-port-base", &pool.base.to_string()])
        .args(["--udp-port-count", &pool.count.to_string()])
        .args(["--memory-budget", budget, "--stats-interval", "0"])
        .arg("--control-socket")
        .arg(&sock)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn machnet");
    let deadline = Instant::now() + WAIT;
    let m = loop {
        if let Ok(m) = Machnet::attach_at(&sock) {
            break m;
        }
        assert!(Instant::now() < deadline, "sidecar {name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    (child, m, log)
}

/// Lines in a log file.
fn log_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// A measurement, not a check (run with `--ignored --nocapture`; docs/PERFORMANCE.md §17): a
/// 64-byte echo between two `machnet` processes (client app on 127.0.0.2, server app on
/// 127.0.0.1) undisturbed, while 32 attacker flows hold and keep flooding the server sidecar's
/// memory, and after the flood stops; the server sidecar's RSS sampled every 10 ms against its
/// budget, and its log lines. Env: `MEMORY_BUDGET` (256MiB), `PHASE_SECS` (5).
#[test]
#[ignore]
fn echo_rate_and_rss_during_a_memory_attack() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let budget = std::env::var("MEMORY_BUDGET").unwrap_or_else(|_| "256MiB".into());
    let budget_bytes = machnet_sidecar::config::parse_size(&budget).expect("MEMORY_BUDGET");
    let phase: f64 = std::env::var("PHASE_SECS").map_or(5.0, |v| v.parse().expect("PHASE_SECS"));
    let phase = Duration::from_secs_f64(phase);
    let dir = std::env::temp_dir().join(format!("machnet-memattack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = machnet_sidecar::testing::free_udp_pool(&[SERVER, CLIENT], 8);
    let (mut server_proc, server_m, server_log) =
        start_sidecar_process(&dir, "server", SERVER, pool, &budget);
    let (mut client_proc, client_m, _) =
        start_sidecar_process(&dir, "client", CLIENT, pool, &budget);
    let mut sch = server_m.open_channel(None).expect("server channel");
    sch.listen(PORT).expect("listen");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok(Some((flow, n))) = sch.recv_into_timeout(&mut buf, Duration::from_millis(50))
            {
                let _ = sch.send(&flow, &buf[..n]);
            }
        }
    });
    let mut ch = client_m.open_channel(None).expect("client channel");
    let flow = ch.connect(SERVER, PORT).expect("connect");
    let echo_rate = |ch: &mut machnet::Channel| {
        let end = Instant::now() + phase;
        let mut n = 0u64;
        let msg = [7u8; 64];
        while Instant::now() < end {
            ch.send(&flow, &msg).expect("send");
            let (_, got) = ch.recv_timeout(WAIT).expect("recv").expect("echo");
            assert_eq!(got, msg);
            n += 1;
        }
        n as f64 / phase.as_secs_f64()
    };
    // RSS sampler.
    let peak = Arc::new(AtomicU64::new(0));
    let (peak2, stop3, pid) = (peak.clone(), stop.clone(), server_proc.id());
    let sampler = std::thread::spawn(move || {
        while !stop3.load(Ordering::Relaxed) {
            peak2.fetch_max(rss(pid), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let lines0 = log_lines(&server_log);
    let before = echo_rate(&mut ch);
    let rss_before = rss(pid);
    let lines1 = log_lines(&server_log);
    // The attack: 32 flows fill the server's memory, then keep flooding (64 packets of 9,000
    // bytes per flow in turn every 10 ms, ~58 MB/s) while the echo is measured.
    let attackers = attack_flows(pool, 42_000);
    for a in &attackers {
        a.blast();
    }
    let flooding = Arc::new(AtomicBool::new(true));
    let flooding2 = flooding.clone();
    let flood = std::thread::spawn(move || {
        let mut i = 0;
        while flooding2.load(Ordering::Relaxed) {
            attackers[i % attackers.len()].blast_n(64);
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        attackers
    });
    let during = echo_rate(&mut ch);
    let lines2 = log_lines(&server_log);
    flooding.store(false, Ordering::Relaxed);
    let attackers = flood.join().unwrap();
    let rss_held = rss(pid);
    let after = echo_rate(&mut ch);
    drop(attackers);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    sampler.join().unwrap();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "memory attack (budget {budget}, phases of {phase:?}): echo msgs/s before {before:.0}, \
         during {during:.0} ({:.2}x), after the flood {after:.0} ({:.2}x); server RSS before \
         {:.1} MiB, peak {:.1} MiB ({:.2} of the budget), while held {:.1} MiB; server log lines \
         {} before, {} during",
        during / before,
        after / before,
        mib(rss_before),
        mib(peak.load(Ordering::Relaxed)),
        peak.load(Ordering::Relaxed) as f64 / budget_bytes as f64,
        mib(rss_held),
        lines1 - lines0,
        lines2 - lines1,
    );
    for p in [&mut server_proc, &mut client_proc] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = p.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
