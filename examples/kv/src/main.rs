//! `machnet-kv`: the key-value server (Machnet, and optionally kernel TCP with the same logic and
//! store) and its load generator.
//!
//! ```text
//! machnet-kv server --port 900 --db /tmp/kv.redb [--threads N] [--tcp 127.0.0.1:9900] [--socket PATH]
//! machnet-kv bench --remote 127.0.0.1 --port 900 --connections 1,2,4 --depth 1,8,32
//! machnet-kv bench --tcp 127.0.0.1:9900 --connections 1,2,4 --depth 1,8,32
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use machnet::Machnet;
use machnet_kv::bench::{self, BenchConfig, Connector};
use machnet_kv::client::{Conn, MachnetConn, TcpConn};
use machnet_kv::server;
use machnet_kv::store::Store;

#[derive(Parser)]
#[command(
    version,
    about = "Key-value store over Machnet (redb storage) and its load generator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve GET/SET/DELETE/SCAN over Machnet (and over TCP with --tcp).
    Server(ServerArgs),
    /// Preload keys, then 100 % GETs of random keys; every answer is verified.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// Machnet port to listen on.
    #[arg(long)]
    port: u16,
    /// Sidecar control socket (default: $MACHNET_SOCKET or /run/machnet/machnet.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Engine for the listening channel, with one thread (default: the sidecar chooses).
    #[arg(long)]
    engine: Option<u16>,
    /// Serving threads, each with its own channel listening on the port; channels go to the
    /// engines round-robin (default: one per engine; 1 = one channel on any engine).
    #[arg(long)]
    threads: Option<usize>,
    /// Database file (created if missing). Without it the store lives in memory.
    #[arg(long)]
    db: Option<PathBuf>,
    /// fsync every write before answering (with --db).
    #[arg(long)]
    sync: bool,
    /// Also serve the same store over kernel TCP on this address (the baseline).
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// Busy-poll each channel this many microseconds before sleeping (0 = sleep at once).
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u64,
}

#[derive(Args)]
struct BenchArgs {
    /// Server's address (Machnet).
    #[arg(long, required_unless_present = "tcp")]
    remote: Option<Ipv4Addr>,
    /// Server's Machnet port.
    #[arg(long, default_value_t = 900)]
    port: u16,
    /// Sidecar control socket for the Machnet client.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Benchmark the TCP baseline at this address instead of Machnet.
    #[arg(long, conflicts_with = "remote")]
    tcp: Option<SocketAddr>,
    /// Connections (threads) to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    connections: Vec<usize>,
    /// Outstanding requests per connection to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    depth: Vec<usize>,
    /// Number of keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Skip storing the keys first (they are already there).
    #[arg(long)]
    no_preload: bool,
    /// Measured seconds per combination.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// One JSON object per combination.
    #[arg(long)]
    json: bool,
    /// Busy-poll each connection's channel this many microseconds before sleeping (Machnet).
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u64,
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Server(a) => run_server(a),
        Cmd::Bench(a) => run_bench(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machnet-kv: {e}");
            ExitCode::FAILURE
        }
    }
}

fn socket_path(p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(machnet::default_socket_path)
}

fn run_server(a: ServerArgs) -> Result<(), String> {
    let store = Arc::new(
        match &a.db {
            Some(p) => Store::open(p, a.sync),
            None => Store::in_memory(),
        }
        .map_err(|e| e.to_string())?,
    );
    if let Some(addr) = a.tcp {
        let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        let store = store.clone();
        std::thread::spawn(move || server::serve_tcp(listener, store));
        eprintln!("machnet-kv: TCP on {addr}");
    }
    let machnet = Machnet::attach_at(socket_path(a.socket)).map_err(|e| e.to_string())?;
    let engines = match (a.engine, a.threads) {
        (Some(e), None | Some(1)) => vec![Some(e)],
        (Some(_), Some(_)) => {
            return Err("--engine pins one channel: use it with --threads 1".into())
        }
        (None, t) => server::channel_engines(
            t.unwrap_or_else(|| usize::from(machnet.engines())),
            machnet.engines(),
        ),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let spin = (a.busy_poll_us > 0).then(|| Duration::from_micros(a.busy_poll_us));
    let srv =
        server::MachnetServer::start_with_busy_poll(&machnet, a.port, &engines, store, stop, spin)
            .map_err(|e| e.to_string())?;
    eprintln!(
        "machnet-kv: listening on {}:{} ({} thread(s), engines {:?})",
        machnet.local_ip(),
        a.port,
        srv.engines().len(),
        srv.engines()
    );
    srv.join().map_err(|e| e.to_string())
}

fn seconds(v: f64, name: &str) -> Result<Duration, String> {
    if !(0.0..=86400.0).contains(&v) {
        return Err(format!("--{name} must be between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn run_bench(a: BenchArgs) -> Result<(), String> {
    if a.value_size > machnet_kv::protocol::MAX_VALUE {
        return Err(format!(
            "--value-size must be at most {}",
            machnet_kv::protocol::MAX_VALUE
        ));
    }
    let (transport, connect): (&'static str, Connector) = match (a.tcp, a.remote) {
        (Some(addr), _) => (
            "tcp",
            Arc::new(move || Ok(Box::new(TcpConn::connect(addr)?) as Box<dyn Conn>)),
        ),
        (None, Some(ip)) => {
            let sock = socket_path(a.socket.clone());
            let port = a.port;
            let spin = (a.busy_poll_us > 0).then(|| Duration::from_micros(a.busy_poll_us));
            (
                "machnet",
                Arc::new(move || {
                    Ok(Box::new(MachnetConn::connect_with_busy_poll(&sock, ip, port, spin)?) as _)
                }),
            )
        }
        (None, None) => return Err("give --remote (Machnet) or --tcp".into()),
    };
    if !a.no_preload {
        let mut conn = connect().map_err(|e| e.to_string())?;
        bench::preload(conn.as_mut(), a.keys, a.value_size)?;
    }
    // std's per-process random hash keys are a good enough source for a load pattern.
    let seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
    eprintln!("machnet-kv bench: key-choice seed {seed}");
    for &connections in &a.connections {
        for &depth in &a.depth {
            let cfg = BenchConfig {
                connections,
                depth,
                keys: a.keys,
                value_size: a.value_size,
                warmup: seconds(a.warmup, "warmup")?,
                duration: seconds(a.duration, "duration")?,
                seed,
            };
            let r = bench::run(transport, connect.clone(), &cfg)?;
            if a.json {
                println!("{}", r.json());
            } else {
                println!("{}", r.human());
            }
        }
    }
    Ok(())
}
