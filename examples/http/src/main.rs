//! `machnet-http`: the HTTP/1.1 server over TCP or Machnet, the open-loop load generator and
//! the latency-against-load plot.
//!
//! ```text
//! machnet-http server --transport tcp --ip 127.0.0.1 --port 8080 [--workers 1] [--body-size 64]
//! machnet-http server --transport machnet --socket /run/machnet/a.sock --port 80
//! machnet-http load --transport tcp --target 127.0.0.1:8080 --rate 20000 --duration 5 --connections 4 --json
//! machnet-http load --transport machnet --socket b.sock --target 127.0.0.1:80 --rate 20000 ...
//! machnet-http plot results.jsonl -o fig.png
//! ```

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use machnet_http::load::{self, LoadConfig, LoadReport};
use machnet_http::server::{self, ServerConfig};
use machnet_http::transport::{self, Transport};

#[derive(Parser)]
#[command(
    version,
    about = "HTTP/1.1 over Machnet and kernel TCP: server, open-loop load generator, plot"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve `GET /` (a fixed body) and `POST /echo` over TCP or Machnet.
    Server(ServerArgs),
    /// Offer a fixed request rate (open loop, latency from the intended send time).
    Load(LoadArgs),
    /// Plot p50 and p99 against offered load from `load --json` lines.
    Plot(PlotArgs),
}

#[derive(Args)]
struct ServerArgs {
    #[arg(long, value_enum)]
    transport: Transport,
    /// TCP address to listen on (Machnet listens on the sidecar's address).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    ip: Ipv4Addr,
    /// Port (TCP: 0 picks one; the address is printed).
    #[arg(long)]
    port: u16,
    /// Sidecar control socket (default: $MACHNET_SOCKET or /run/machnet/machnet.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Size of the body of `GET /`, bytes.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Flush the answers to pipelined requests together (hyper's pipeline_flush; with it,
    /// hyper 1.x closes a connection with a malformed request head without its 400).
    #[arg(long)]
    pipeline_flush: bool,
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, value_enum)]
    transport: Transport,
    /// The server, ip:port.
    #[arg(long)]
    target: SocketAddrV4,
    /// Sidecar control socket for the Machnet client.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Offered load, requests per second (all connections together).
    #[arg(long)]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// POST this many body bytes to /echo instead of GET /.
    #[arg(long)]
    post_body: Option<usize>,
    /// Seconds to wait for outstanding responses after the last request.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// Extra `key=value` fields for the JSON line (e.g. topology=two-sidecars, round=2).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

#[derive(Args)]
struct PlotArgs {
    /// JSON lines written by `load --json`.
    input: PathBuf,
    /// Output image (.png, or .svg).
    #[arg(short, long)]
    output: PathBuf,
    /// TrueType font for the PNG's text (default: DejaVu Sans or Liberation Sans if installed).
    #[arg(long)]
    font: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Server(a) => run_server(a),
        Cmd::Load(a) => run_load(a),
        Cmd::Plot(a) => machnet_http::plot::plot_file(&a.input, &a.output, a.font.as_deref())
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machnet-http: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

fn run_server(a: ServerArgs) -> Result<(), String> {
    let mut cfg = ServerConfig::with_body_size(a.body_size);
    cfg.pipeline_flush = a.pipeline_flush;
    let cfg = Arc::new(cfg);
    let rt = runtime(a.workers)?;
    rt.block_on(async move {
        match a.transport {
            Transport::Tcp => {
                let l = tokio::net::TcpListener::bind(SocketAddrV4::new(a.ip, a.port))
                    .await
                    .map_err(|e| format!("bind: {e}"))?;
                eprintln!(
                    "listening on tcp {}",
                    l.local_addr().map_err(|e| e.to_string())?
                );
                server::run_tcp(l, cfg).await.map_err(|e| e.to_string())
            }
            Transport::Machnet => serve_machnet(a.socket, a.port, cfg).await,
        }
    })
}

async fn serve_machnet(
    socket: Option<PathBuf>,
    port: u16,
    cfg: Arc<ServerConfig>,
) -> Result<(), String> {
    let m = transport::attach(socket.as_deref()).map_err(|e| e.to_string())?;
    let l = machnet::stream::MachnetListener::bind(&m, port).map_err(|e| format!("listen: {e}"))?;
    eprintln!("listening on machnet {}", l.local_addr());
    server::run_machnet(l, cfg).await.map_err(|e| e.to_string())
}

fn run_load(a: LoadArgs) -> Result<(), String> {
    let secs = |name: &str, v: f64| {
        Duration::try_from_secs_f64(v)
            .map_err(|_| format!("{name} {v}: not a valid number of seconds"))
    };
    let (duration, drain) = (secs("--duration", a.duration)?, secs("--drain", a.drain)?);
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let mut extra = vec![("transport", serde_json::Value::from(a.transport.name()))];
    let mut tag_fields = Vec::new();
    for t in &a.tags {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("--tag {t}: expected key=value"))?;
        // Numbers stay numbers in the JSON line.
        let v: serde_json::Value = match (v.parse::<i64>(), v.parse::<f64>()) {
            (Ok(i), _) => i.into(),
            (_, Ok(f)) => f.into(),
            _ => v.into(),
        };
        tag_fields.push((k.to_string(), v));
    }
    for (k, v) in &tag_fields {
        extra.push((k.as_str(), v.clone()));
    }
    let config = LoadConfig {
        rate: a.rate,
        duration,
        connections: a.connections,
        post_body: a.post_body,
        drain,
    };
    let rt = runtime(a.threads)?;
    let report = rt.block_on(async {
        match a.transport {
            Transport::Tcp => load::run(&config, || transport::connect_tcp(a.target)).await,
            Transport::Machnet => load_machnet(&config, a.socket.as_deref(), a.target).await,
        }
    });
    let report = report.map_err(|e| e.to_string())?;
    // The generator's own CPU time (user + system, all threads): it shares the machine.
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        extra.push((
            "load_cpu_s",
            (secs(u.user_time()) + secs(u.system_time())).into(),
        ));
    }
    print_report(&report, &extra, a.json);
    Ok(())
}

async fn load_machnet(
    config: &LoadConfig,
    socket: Option<&std::path::Path>,
    target: SocketAddrV4,
) -> Result<LoadReport, load::LoadError> {
    let m = transport::attach(socket).map_err(load::LoadError::Connect)?;
    let ch = machnet::stream::StreamChannel::open(&m, None)
        .map_err(|e| load::LoadError::Connect(std::io::Error::other(e.to_string())))?;
    load::run(config, || {
        let ch = ch.clone();
        async move {
            ch.connect(target)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
    })
    .await
}

fn print_report(r: &LoadReport, extra: &[(&str, serde_json::Value)], json: bool) {
    let v = r.to_json(extra);
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{v}");
        return;
    }
    let l = &v["latency_us"];
    let _ = writeln!(
        out,
        "{} offered {} req/s, achieved {:.0} req/s, {} connections, {} errors{}\nlatency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        v["transport"].as_str().unwrap_or("?"),
        r.config.rate,
        r.achieved_rps(),
        r.config.connections,
        v["errors"],
        r.stats.failure.as_ref().map(|f| format!(" ({f})")).unwrap_or_default(),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p999"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
    );
}
