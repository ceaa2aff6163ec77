//! `machnet-echo`: echo server and load-generating client over Machnet (like the original's
//! `msg_gen`), plus kernel UDP, TCP and Unix-domain-socket baselines with the same report.
//!
//! ```text
//! machnet-echo server --port 888 [--socket PATH] [--engine E]
//! machnet-echo client --remote 10.0.0.1 --port 888 --size 64 --window 1 --flows 1 --duration 10
//! machnet-echo client --remote 10.0.0.1 --port 888 --size 1048576 --window 4 --zero-copy
//! machnet-echo udp-baseline server --bind 127.0.0.1:9000
//! machnet-echo udp-baseline client --bind 127.0.0.2:0 --remote 127.0.0.1:9000 --size 64
//! machnet-echo tcp-baseline server --bind 127.0.0.1:9001 --busy-poll
//! machnet-echo tcp-baseline client --bind 127.0.0.2:0 --remote 127.0.0.1:9001 --size 64 --busy-poll
//! machnet-echo uds-baseline server --path /tmp/echo.sock
//! machnet-echo uds-baseline client --path /tmp/echo.sock --size 64
//! ```

mod payload;
mod report;
mod sink;
mod tcp;
mod udp;
mod uds;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use machnet::{Channel, Event, Flow, FlowStatus, Machnet, RecvError, SendError};

use payload::Payload;
use report::{new_histogram, Report};

#[derive(Parser)]
#[command(version, about = "Echo server and benchmark client over Machnet")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every message back on its flow.
    Server(ServerArgs),
    /// Keep WINDOW messages outstanding per flow, verify every echo, report rate and RTT.
    Client(ClientArgs),
    /// Kernel UDP ping-pong with the same report, for comparison.
    #[command(subcommand)]
    UdpBaseline(UdpCmd),
    /// Kernel TCP (TCP_NODELAY) echo with the same report, for comparison.
    #[command(subcommand)]
    TcpBaseline(TcpCmd),
    /// Unix-domain-socket (SOCK_STREAM, blocking) echo with the same report, for comparison
    /// with same-host flows.
    #[command(subcommand)]
    UdsBaseline(UdsCmd),
    /// Open CHANNELS channels and hold them, idle, until killed (benchmarks engines that
    /// carry many idle channels, docs/PERFORMANCE.md §13).
    #[command(hide = true)]
    Idle(IdleArgs),
    /// Receive tagged messages and report how many arrived exactly once and intact (for
    /// `send_then_exit.sh`; the format is in `src/sink.rs`). Prints one JSON object.
    Sink(SinkArgs),
}

#[derive(Args)]
struct SinkArgs {
    /// Machnet port to listen on.
    #[arg(long)]
    port: u16,
    /// Stop once this many distinct tags arrived.
    #[arg(long)]
    expect: Option<u64>,
    /// Stop after this many seconds without a message.
    #[arg(long, default_value_t = 10.0)]
    idle_exit: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct IdleArgs {
    /// Channels to open.
    #[arg(long)]
    channels: usize,
    /// Seconds to hold them (default: until killed).
    #[arg(long)]
    seconds: Option<f64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct Common {
    /// Sidecar control socket (default: $MACHNET_SOCKET or /run/machnet/machnet.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Engine to open the channel on (default: the sidecar chooses).
    #[arg(long)]
    engine: Option<u16>,
    /// Spin up to this many microseconds before sleeping on the eventfd (0: sleep at once).
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u64,
}

#[derive(Args)]
struct ServerArgs {
    /// Machnet port to listen on.
    #[arg(long)]
    port: u16,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages outstanding per flow.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    /// Warm-up and measured durations, validated.
    fn times(&self) -> Result<(Duration, Duration), String> {
        let secs = |v: f64, name: &str| {
            if !(0.0..=86400.0).contains(&v) {
                return Err(format!("--{name} must be between 0 and 86400 seconds"));
            }
            Ok(Duration::from_secs_f64(v))
        };
        Ok((
            secs(self.warmup, "warmup")?,
            secs(self.duration, "duration")?,
        ))
    }
}

#[derive(Args)]
struct ClientArgs {
    /// The server's IPv4 address (its sidecar's address).
    #[arg(long)]
    remote: Ipv4Addr,
    /// The server's Machnet port.
    #[arg(long)]
    port: u16,
    /// Number of flows (all on one channel).
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Write each message straight into channel memory (`Channel::loan` + `commit`) and check
    /// each echo in place (`Channel::recv_zc`) instead of filling a buffer of our own and
    /// sending it (copied) and receiving into another one (copied).
    #[arg(long)]
    zero_copy: bool,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum UdpCmd {
    /// Echo every datagram back to its sender.
    Server {
        /// Address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// Spin on a non-blocking socket instead of sleeping in recv.
        #[arg(long)]
        busy_poll: bool,
    },
    /// Ping-pong against a udp-baseline server.
    Client {
        /// Local address to bind (port 0: any).
        #[arg(long)]
        bind: SocketAddr,
        /// The server's address.
        #[arg(long)]
        remote: SocketAddr,
        /// Spin on a non-blocking socket instead of sleeping in recv.
        #[arg(long)]
        busy_poll: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
}

#[derive(Subcommand)]
enum TcpCmd {
    /// Echo every byte back on its connection.
    Server {
        /// Address to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Spin on non-blocking sockets instead of sleeping in recv.
        #[arg(long)]
        busy_poll: bool,
    },
    /// Request/response over one connection to a tcp-baseline server.
    Client {
        /// Local address to connect from (e.g. 127.0.0.2:0; default: the kernel chooses).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// The server's address.
        #[arg(long)]
        remote: SocketAddr,
        /// Spin on a non-blocking socket instead of sleeping in recv.
        #[arg(long)]
        busy_poll: bool,
        /// No read or write crosses a message boundary (at least one of each per message)
        /// instead of reading and writing as many bytes as the socket takes.
        #[arg(long)]
        per_message_io: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
}

#[derive(Subcommand)]
enum UdsCmd {
    /// Echo every byte back on its connection.
    Server {
        /// Socket path to listen on (a stale socket file there is replaced).
        #[arg(long)]
        path: PathBuf,
    },
    /// Blocking ping-pong over one connection to a uds-baseline server.
    Client {
        /// The server's socket path.
        #[arg(long)]
        path: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
    },
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Server(a) => machnet_server(a).map(|()| None),
        Cmd::Idle(a) => idle(a).map(|()| None),
        Cmd::Sink(a) => sink_cmd(a).map(|()| None),
        Cmd::Client(a) => {
            let json = a.load.json;
            machnet_client(a).map(|r| Some((r, json)))
        }
        Cmd::UdpBaseline(UdpCmd::Server { bind, busy_poll }) => {
            udp::server(bind, busy_poll).map(|()| None)
        }
        Cmd::UdpBaseline(UdpCmd::Client {
            bind,
            remote,
            busy_poll,
            load,
        }) => {
            let json = load.json;
            udp::client(bind, remote, busy_poll, load).map(|r| Some((r, json)))
        }
        Cmd::TcpBaseline(TcpCmd::Server { bind, busy_poll }) => {
            tcp::server(bind, busy_poll).map(|()| None)
        }
        Cmd::TcpBaseline(TcpCmd::Client {
            bind,
            remote,
            busy_poll,
            per_message_io,
            load,
        }) => {
            let json = load.json;
            tcp::client(bind, remote, busy_poll, per_message_io, load).map(|r| Some((r, json)))
        }
        Cmd::UdsBaseline(UdsCmd::Server { path }) => uds::server(&path).map(|()| None),
        Cmd::UdsBaseline(UdsCmd::Client { path, load }) => {
            let json = load.json;
            uds::client(&path, load).map(|r| Some((r, json)))
        }
    };
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some((mut report, json))) => {
            report.finish(started);
            let text = if json {
                report.json().to_string()
            } else {
                report.human()
            };
            // A closed stdout (e.g. piped into `head`) must not turn into a panic.
            if let Err(e) = std::io::Write::write_all(
                &mut std::io::stdout().lock(),
                format!("{text}\n").as_bytes(),
            ) {
                eprintln!("machnet-echo: cannot write the report: {e}");
                return ExitCode::FAILURE;
            }
            if report.mismatches > 0 {
                eprintln!(
                    "error: {} echoes differed from what was sent",
                    report.mismatches
                );
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("machnet-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn attach(common: &Common) -> Result<(Machnet, Channel), String> {
    let machnet = match &common.socket {
        Some(p) => Machnet::attach_at(p),
        None => Machnet::attach(),
    }
    .map_err(|e| e.to_string())?;
    let mut ch = machnet
        .open_channel(common.engine)
        .map_err(|e| e.to_string())?;
    if common.busy_poll_us > 0 {
        ch.set_busy_poll(Some(Duration::from_micros(common.busy_poll_us)));
    }
    Ok((machnet, ch))
}

fn machnet_server(a: ServerArgs) -> Result<(), String> {
    let (machnet, mut ch) = attach(&a.common)?;
    ch.listen(a.port).map_err(|e| e.to_string())?;
    eprintln!(
        "machnet-echo: listening on {}:{} (engine {} of {})",
        machnet.local_ip(),
        a.port,
        ch.engine(),
        machnet.engines()
    );
    let mut buf = vec![0u8; ch.max_message_len() as usize];
    let mut echoed: u64 = 0;
    loop {
        let (flow, n) = ch.recv_into(&mut buf).map_err(|e| e.to_string())?;
        match ch.send(&flow, &buf[..n]) {
            Ok(()) => echoed += 1,
            // The client went away between its message and our echo: not our problem.
            Err(SendError::FlowClosed(_) | SendError::FlowClosing) => {}
            Err(e) => return Err(format!("echo on {flow}: {e} (after {echoed} echoes)")),
        }
    }
}

fn sink_cmd(a: SinkArgs) -> Result<(), String> {
    if !(0.0..=86400.0).contains(&a.idle_exit) {
        return Err("--idle-exit must be between 0 and 86400 seconds".into());
    }
    let (_machnet, mut ch) = attach(&a.common)?;
    ch.listen(a.port).map_err(|e| e.to_string())?;
    // The line scripts wait for.
    eprintln!("machnet-echo: sink listening on port {}", a.port);
    let r = sink::run(&mut ch, a.expect, Duration::from_secs_f64(a.idle_exit))?;
    println!("{}", r.json(a.expect));
    Ok(())
}

fn idle(a: IdleArgs) -> Result<(), String> {
    let machnet = match &a.common.socket {
        Some(p) => Machnet::attach_at(p),
        None => Machnet::attach(),
    }
    .map_err(|e| e.to_string())?;
    let mut chans = Vec::with_capacity(a.channels);
    for i in 0..a.channels {
        let ch = machnet
            .open_channel(a.common.engine)
            .map_err(|e| format!("channel {i} of {}: {e}", a.channels))?;
        chans.push(ch);
    }
    // The line scripts wait for.
    eprintln!("machnet-echo: holding {} idle channels", chans.len());
    match a.seconds {
        Some(s) => std::thread::sleep(Duration::from_secs_f64(s.max(0.0))),
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
    drop(chans);
    Ok(())
}

struct FlowLoad {
    flow: Flow,
    next_seq: u64,
    outstanding: VecDeque<(u64, Instant)>,
}

fn machnet_client(a: ClientArgs) -> Result<Report, String> {
    let (_machnet, mut ch) = attach(&a.common)?;
    let load = &a.load;
    if load.size == 0 || load.size > ch.max_message_len() as usize {
        return Err(format!("--size must be 1..={} bytes", ch.max_message_len()));
    }
    if load.window == 0 || a.flows == 0 {
        return Err("--window and --flows must be at least 1".into());
    }
    let payload = Payload::new(load.size);
    let mut flows = Vec::with_capacity(a.flows);
    let mut index = HashMap::new();
    for i in 0..a.flows {
        let flow = ch
            .connect_timeout(a.remote, a.port, Duration::from_secs(10))
            .map_err(|e| format!("connect to {}:{}: {e}", a.remote, a.port))?;
        index.insert(flow.handle(), i);
        flows.push(FlowLoad {
            flow,
            next_seq: 0,
            outstanding: VecDeque::with_capacity(load.window),
        });
    }
    let zero_copy = a.zero_copy;
    // Without --zero-copy: the app's own message buffers.
    let (mut sbuf, mut rbuf) = if zero_copy {
        (Vec::new(), Vec::new())
    } else {
        (vec![0u8; load.size], vec![0u8; load.size])
    };
    let send_next = |ch: &mut Channel, i: usize, fl: &mut FlowLoad, sbuf: &mut [u8]| {
        send_with(ch, &fl.flow, load.size, zero_copy, sbuf, |buf| {
            payload.fill(i as u32, fl.next_seq, buf)
        })
        .map_err(|e| format!("send on {}: {e}", fl.flow))?;
        fl.outstanding.push_back((fl.next_seq, Instant::now()));
        fl.next_seq += 1;
        Ok::<(), String>(())
    };
    let (warmup, duration) = load.times()?;
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + duration;
    for (i, fl) in flows.iter_mut().enumerate() {
        for _ in 0..load.window {
            send_next(&mut ch, i, fl, &mut sbuf)?;
        }
    }
    let mut rtt = new_histogram();
    let (mut messages, mut mismatches, mut total_messages) = (0u64, 0u64, 0u64);
    let mut last_echo = Instant::now();
    let mut now = Instant::now();
    while now < end {
        let timeout = (end - now).min(Duration::from_secs(1));
        // Match the echo against what its flow sent (in place with --zero-copy).
        let got = recv_with(&mut ch, zero_copy, &mut rbuf, timeout, |flow, msg| {
            let i = *index.get(&flow.handle())?;
            let (seq, sent) = flows[i].outstanding.pop_front()?;
            Some((i, sent, payload.matches(i as u32, seq, msg)))
        });
        let got = match got {
            Ok(got) => got,
            Err(RecvError::BufferTooSmall { needed, .. }) => {
                return Err(format!(
                    "echo of {needed} bytes for messages of {} bytes",
                    load.size
                ))
            }
            Err(e) => return Err(format!("recv: {e}")),
        };
        now = Instant::now();
        let Some(checked) = got else {
            // Receives skip close notifications but apply them: look for flows that ended.
            for fl in &flows {
                if let FlowStatus::Closed(reason) = ch.flow_status(&fl.flow) {
                    return Err(format!(
                        "{} closed with {} messages outstanding: {}",
                        fl.flow,
                        fl.outstanding.len(),
                        reason.map_or("unknown reason", machnet::describe_close_code)
                    ));
                }
            }
            if now.duration_since(last_echo) > Duration::from_secs(5) {
                return Err("no echo for 5 s: is the server running?".into());
            }
            continue;
        };
        last_echo = now;
        // An echo on an unknown flow or one nobody waits for counts as a mismatch.
        let Some((i, sent, matched)) = checked else {
            mismatches += 1;
            continue;
        };
        let fl = &mut flows[i];
        if !matched {
            mismatches += 1;
        }
        total_messages += 1;
        if now >= warm_end {
            messages += 1;
            let _ = rtt.record((now - sent).as_nanos().max(1) as u64);
        }
        if now < end {
            send_next(&mut ch, i, fl, &mut sbuf)?;
        }
    }
    let elapsed = now.saturating_duration_since(warm_end);
    // Collect the echoes still in flight, then close the flows gracefully.
    let drain_end = Instant::now() + Duration::from_secs(2);
    while flows.iter().any(|f| !f.outstanding.is_empty()) {
        let now = Instant::now();
        if now >= drain_end {
            break;
        }
        let got = recv_with(
            &mut ch,
            zero_copy,
            &mut rbuf,
            drain_end - now,
            |flow, msg| {
                let i = *index.get(&flow.handle())?;
                let (seq, _) = flows[i].outstanding.pop_front()?;
                Some(payload.matches(i as u32, seq, msg))
            },
        );
        match got {
            Ok(Some(Some(matched))) => {
                if !matched {
                    mismatches += 1;
                }
                total_messages += 1;
            }
            Ok(Some(None)) => {}
            Ok(None) => break,
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    for fl in &flows {
        let _ = ch.close(&fl.flow);
    }
    // Let the closes complete before the channel is detached (which would otherwise leave the
    // sidecar to finish them within its linger).
    let close_end = Instant::now() + Duration::from_secs(1);
    let mut open = flows.len();
    while open > 0 {
        let left = close_end.saturating_duration_since(Instant::now());
        match ch.next_event(Some(left)) {
            Ok(Some(Event::Closed { .. })) => open -= 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Ok(Report {
        mode: if zero_copy { "machnet-zc" } else { "machnet" },
        size: load.size,
        window: load.window,
        flows: a.flows,
        elapsed,
        messages,
        mismatches,
        lost: 0,
        rtt,
        total_messages,
        cpu_s: 0.0,
        wall_s: 0.0,
    })
}

/// Sends one message of `size` bytes on `flow` that `fill` writes: with `zero_copy` straight
/// into a loan of channel memory, otherwise into the app's own `buf` and then copied by `send`.
fn send_with(
    ch: &mut Channel,
    flow: &Flow,
    size: usize,
    zero_copy: bool,
    buf: &mut [u8],
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), SendError> {
    if zero_copy {
        let mut loan = ch.loan(flow, size)?;
        fill(&mut loan);
        loan.commit(size)
    } else {
        fill(buf);
        ch.send(flow, buf)
    }
}

/// Receives one message, waiting at most `timeout`, and hands it to `f`: with `zero_copy` in
/// place (borrowed from channel memory, released when `f` returns), otherwise copied into `buf`.
fn recv_with<T>(
    ch: &mut Channel,
    zero_copy: bool,
    buf: &mut [u8],
    timeout: Duration,
    f: impl FnOnce(Flow, &[u8]) -> T,
) -> Result<Option<T>, RecvError> {
    if zero_copy {
        Ok(ch
            .recv_zc_timeout(timeout)?
            .map(|(flow, view)| f(flow, &view)))
    } else {
        Ok(ch
            .recv_into_timeout(buf, timeout)?
            .map(|(flow, n)| f(flow, &buf[..n])))
    }
}
