//! `machnet-grpc-bench`: unary gRPC round-trip latency of the tonic echo service over Machnet
//! against the same service over kernel TCP loopback, in one process and one run, rounds
//! interleaved (issue 18's goal: Machnet p50 ≤ 0.8 × TCP p50).
//!
//! The server side listens on the sidecar at `--server-socket` (Machnet) and on 127.0.0.1
//! (TCP). Each round runs `--requests` sequential unary calls (window 1) of `--payload` bytes
//! on each path, in this order:
//! * `machnet-remote`: a client attached to `--client-socket` (another sidecar: the flow
//!   crosses the transport and loopback UDP);
//! * `machnet-same-host`: a client attached to the server's own sidecar (a same-host flow if
//!   that sidecar runs with `--same-host-flows true`);
//! * `tcp`: a tonic client over TCP loopback.
//!
//! Output: one JSON line per (round, path) on stdout (with this process's CPU per call, client
//! and server together: what the stream adapter or the kernel's TCP costs the application),
//! then a table on stderr with each path's median-round p50/p99 and the ratios to TCP. `ci/bench-grpc.sh` starts the sidecars.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use machnet::stream::{MachnetListener, StreamChannel};
use machnet::Machnet;
use machnet_grpc_example::pb::{echo_client::EchoClient, EchoRequest};
use machnet_grpc_example::{connect, echo_client, echo_server, serve, EchoService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

#[derive(Parser, Debug)]
#[command(about = "Unary gRPC RTT over Machnet vs TCP loopback (tonic echo)")]
struct Args {
    /// Control socket of the server's sidecar.
    #[arg(long)]
    server_socket: PathBuf,
    /// Control socket of the remote client's sidecar (omit to skip `machnet-remote`).
    #[arg(long)]
    client_socket: Option<PathBuf>,
    /// Machnet port of the server.
    #[arg(long, default_value_t = 5051)]
    port: u16,
    /// Rounds (paths interleaved within each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured calls per path and round.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Unmeasured calls before each measured run.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Payload bytes per request (echoed back).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// tokio worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

struct Path {
    name: &'static str,
    client: EchoClient<Channel>,
    p50s: Vec<u64>,
    p99s: Vec<u64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let server_m = Machnet::attach_at(&args.server_socket)?;
    let listener = MachnetListener::bind(&server_m, args.port)?;
    let server_addr = listener.local_addr();
    tokio::spawn(serve(listener, EchoService::default()));

    // TCP_NODELAY on every accepted socket (`Server::tcp_nodelay` does not apply to
    // `serve_with_incoming`; without it Nagle and delayed ACKs add ~40 ms to 1 KiB calls).
    let tcp = TcpIncoming::bind("127.0.0.1:0".parse()?)?.with_nodelay(Some(true));
    let tcp_addr = tcp.local_addr()?;
    tokio::spawn(
        Server::builder()
            .add_service(echo_server(EchoService::default()))
            .serve_with_incoming(tcp),
    );

    let mut paths = Vec::new();
    if let Some(sock) = &args.client_socket {
        let m = Machnet::attach_at(sock)?;
        let ch = StreamChannel::open(&m, None)?;
        paths.push(Path::new(
            "machnet-remote",
            echo_client(connect(ch, server_addr).await?),
        ));
    }
    let ch = StreamChannel::open(&server_m, None)?;
    paths.push(Path::new(
        "machnet-same-host",
        echo_client(connect(ch, server_addr).await?),
    ));
    let tcp_channel = Endpoint::from_shared(format!("http://{tcp_addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    paths.push(Path::new("tcp", echo_client(tcp_channel)));

    let payload = vec![0xA5u8; args.payload];
    for round in 0..args.rounds {
        for p in paths.iter_mut() {
            let cpu_before = process_cpu();
            let h = p.measure(&payload, args.warmup, args.requests).await?;
            let cpu = process_cpu().saturating_sub(cpu_before);
            let calls = (args.warmup + args.requests) as f64;
            let line = serde_json::json!({
                "round": round,
                "path": p.name,
                "payload": args.payload,
                "requests": args.requests,
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "p999_us": h.value_at_quantile(0.999),
                "mean_us": h.mean(),
                // This process's CPU (client + server + tonic + the stream adapter or the
                // kernel's TCP) per call; the sidecars' CPU is not included.
                "app_cpu_us_per_call": cpu.as_secs_f64() * 1e6 / calls,
            });
            println!("{line}");
            p.p50s.push(h.value_at_quantile(0.5));
            p.p99s.push(h.value_at_quantile(0.99));
        }
    }
    report(
        &paths,
        SocketAddrV4::new(*server_addr.ip(), server_addr.port()),
    );
    Ok(())
}

impl Path {
    fn new(name: &'static str, client: EchoClient<Channel>) -> Path {
        Path {
            name,
            client,
            p50s: Vec::new(),
            p99s: Vec::new(),
        }
    }

    /// Histogram of RTTs in µs of `n` sequential calls after `warmup` unmeasured ones.
    async fn measure(
        &mut self,
        payload: &[u8],
        warmup: usize,
        n: usize,
    ) -> Result<Histogram<u64>, Box<dyn std::error::Error>> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for i in 0..warmup + n {
            let t = Instant::now();
            let reply = self
                .client
                .unary(EchoRequest {
                    payload: payload.to_vec(),
                })
                .await?
                .into_inner();
            let rtt = t.elapsed();
            if reply.payload != payload {
                return Err(format!("{}: echo differs", self.name).into());
            }
            if i >= warmup {
                h.record(micros(rtt))?;
            }
        }
        Ok(h)
    }
}

/// User + system CPU time of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The median of `v` (lower middle for an even count).
fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get((s.len().saturating_sub(1)) / 2).copied().unwrap_or(0)
}

fn report(paths: &[Path], server: SocketAddrV4) {
    let tcp = paths.iter().find(|p| p.name == "tcp");
    eprintln!("unary RTT (µs), server {server}, median over rounds");
    eprintln!("| path | p50 | p99 | p50 ÷ TCP | per-round p50 ÷ TCP |");
    eprintln!("|---|---|---|---|---|");
    for p in paths {
        let (ratio, per_round) = match tcp {
            Some(t) if t.name != p.name => (
                format!(
                    "{:.2}",
                    median(&p.p50s) as f64 / median(&t.p50s).max(1) as f64
                ),
                p.p50s
                    .iter()
                    .zip(&t.p50s)
                    .map(|(a, b)| format!("{:.2}", *a as f64 / (*b).max(1) as f64))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => ("-".into(), "-".into()),
        };
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            p.name,
            median(&p.p50s),
            median(&p.p99s),
            ratio,
            per_round
        );
    }
}
