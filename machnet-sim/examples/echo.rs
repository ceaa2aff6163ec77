//! Echo workload between two simulated hosts, through the real protocol engine.
//!
//! ```sh
//! cargo run --release -p machnet-sim --example echo [-- OPTIONS]
//! ```
//!
//! Until the sidecar exists this is the project's "main job". Two hosts with `--engines` engines
//! each (default 4) sit behind NICs with opaque RSS and are joined by a faulty network: 1 % loss
//! (`--loss`), 20 µs delay plus 0–10 µs jitter, 1 % of packets held back 50 µs (reordering), 0.5 %
//! duplicated, 0.1 % corrupted, 25 Gbit/s with a 4 MiB queue. `--flows` flows (default 16,
//! which covers every pair of engines for 4×4) are set up with RSS-- and carry `--messages`
//! messages in all (default 100 000), split evenly over flows and over both directions: the
//! client sends requests, the server sends the same number of replies (replies are not copies
//! of requests: each direction's sizes and bytes derive from the seed, so each receiver can check
//! what it reads without the sender telling it). Sizes are mostly small
//! (1–256 B) with some up to 1 MiB, boundary sizes (1 B, one and two fragments ± 1,
//! 64 KiB ± 1) and three messages of the 8 MiB maximum. Each flow is closed gracefully when its
//! exchange is done.
//!
//! Every message is checked on arrival (exactly once, in order, byte-identical; see
//! `machnet_sim::workload`). A violation, a stall or a flow that does not close gracefully
//! prints the error (with the seed that replays it) on stderr and exits with status 1; bad
//! options exit with status 2.
//!
//! The report gives messages and bytes delivered, simulated duration and goodput, round-trip
//! time (the engines' own estimates, sampled every simulated millisecond), packets,
//! retransmissions (fast / timeout), receive drops by reason (non-zero only), the network's
//! faults, the RSS-- cost (SYNs + SYN-ACKs per connection, with the paper's one-round figure
//! for comparison), the wall time and the seed.
//!
//! Options:
//!
//! ```text
//! --seed N       seed of everything random (default: $MACHNET_SIM_SEED, else 1)
//! --loss PCT     random loss per packet and direction, in percent (default 1)
//! --engines N    engines per host, 1..=64 (default 4)
//! --flows N      concurrent flows (default 16)
//! --messages N   messages in all, both directions (default 100000)
//! --json         print the report as one JSON object instead of text
//! ```
//!
//! The run is deterministic: the same options and seed give the same figures, except the wall
//! time. Above 5 % loss the engines get more patient retry limits (as the simulator's lossy
//! tests use), and the report says so.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant as WallInstant};

use machnet_core::rss::spray_batch;
use machnet_core::EngineConfig;
use machnet_sim::{
    Bandwidth, EngineAddr, LinkConfig, Network, NetworkBuilder, Reorder, Report, SizeMix, Workload,
    WorkloadConfig,
};

const USAGE: &str =
    "usage: echo [--seed N] [--loss PCT] [--engines N] [--flows N] [--messages N] [--json]";

/// Loss (as a fraction) above which the engines get the lossy-test retry limits.
const PATIENT_ABOVE: f64 = 0.05;

/// How often RTT estimates are sampled, in simulated time.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
struct Options {
    seed: u64,
    loss_percent: f64,
    engines: u16,
    flows: usize,
    messages: u64,
    json: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        seed: machnet_sim::seed_from_env(1),
        loss_percent: 1.0,
        engines: 4,
        flows: 16,
        messages: 100_000,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if name == "--json" {
            o.json = true;
            continue;
        }
        if name == "-h" || name == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--seed" => o.seed = parse_u64(&name, &value()?)?,
            "--loss" => {
                let v = value()?;
                o.loss_percent = v
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| format!("--loss: {v:?} is not a percentage in 0..=100"))?;
            }
            "--engines" => {
                let v = value()?;
                o.engines = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("--engines: {v:?} is not in 1..=64"))?;
            }
            "--flows" => {
                let n = parse_u64(&name, &value()?)?;
                if !(1..=10_000).contains(&n) {
                    return Err(format!("--flows: {n} is not in 1..=10000"));
                }
                o.flows = n as usize;
            }
            "--messages" => {
                o.messages = parse_u64(&name, &value()?)?;
                if o.messages == 0 {
                    return Err("--messages must be at least 1".into());
                }
            }
            _ => return Err(format!("unknown option {arg:?}")),
        }
    }
    Ok(o)
}

/// Decimal, or hexadecimal with `0x`.
fn parse_u64(name: &str, v: &str) -> Result<u64, String> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse::<u64>(),
    };
    parsed.map_err(|_| format!("{name}: {v:?} is not a non-negative integer"))
}

fn link(loss: f64) -> LinkConfig {
    LinkConfig {
        delay: Duration::from_micros(20),
        jitter: Duration::from_micros(10),
        loss,
        duplicate: 0.005,
        reorder: Reorder {
            probability: 0.01,
            extra_delay: Duration::from_micros(50),
        },
        corrupt: 0.001,
        bandwidth: Some(Bandwidth::gbit(25.0, 4 << 20)),
    }
}

/// Round-trip estimates gathered while the workload runs.
#[derive(Debug, Default)]
struct RttSamples {
    min: Option<Duration>,
    srtt_sum: Duration,
    srtt_count: u64,
    srtt_max: Duration,
}

impl RttSamples {
    fn sample(&mut self, net: &Network, workload: &Workload) {
        for flow in 0..workload.flow_count() {
            for server in [false, true] {
                let Some((addr, handle)) = workload.handle(flow, server) else {
                    continue;
                };
                let Some(stats) = net.engine(addr).flow_stats(handle) else {
                    continue;
                };
                if let Some(m) = stats.min_rtt {
                    self.min = Some(self.min.map_or(m, |cur| cur.min(m)));
                }
                if let Some(s) = stats.srtt {
                    self.srtt_sum += s;
                    self.srtt_count += 1;
                    self.srtt_max = self.srtt_max.max(s);
                }
            }
        }
    }

    fn srtt_mean(&self) -> Option<Duration> {
        (self.srtt_count > 0).then(|| {
            Duration::from_nanos((self.srtt_sum.as_nanos() / u128::from(self.srtt_count)) as u64)
        })
    }
}

struct Outcome {
    report: Report,
    planned_messages: u64,
    planned_bytes: u64,
    largest: u32,
    rtt: RttSamples,
    patient: bool,
    wall: Duration,
}

/// Why a run produced no report.
enum Failure {
    /// The network could not be built (a bad combination of options).
    Setup(String),
    /// A delivery guarantee was violated, a flow failed or the run did not complete.
    Verification(String),
}

fn run(o: &Options) -> Result<Outcome, Failure> {
    use Failure::{Setup, Verification};
    let loss = o.loss_percent / 100.0;
    let patient = loss > PATIENT_ABOVE;
    let mut builder = NetworkBuilder::new(o.seed)
        .host(o.engines)
        .host(o.engines)
        .link(link(loss));
    if patient {
        builder = builder.engine_config(|_: EngineAddr, c: &mut EngineConfig| {
            c.rto.max_retries = 40;
            c.handshake.max_syn_attempts = 12;
            c.idle_timeout = Duration::from_secs(60);
        });
    }
    let mut net = builder
        .build()
        .map_err(|e| Setup(format!("cannot build the network: {e}")))?;
    let mut config = WorkloadConfig::between(&net, o.seed, 0, 1, o.flows, o.messages);
    config.sizes = SizeMix::standard();
    let time_limit = config.time_limit;
    let mut workload = Workload::new(config, &net);
    let planned_messages = workload.plan().total_messages();
    let planned_bytes = workload.plan().total_bytes();
    let largest = workload.plan().largest();

    let wall = WallInstant::now();
    let mut rtt = RttSamples::default();
    workload
        .start(&mut net)
        .map_err(|e| Verification(e.to_string()))?;
    let started = net.now();
    let mut deadline = started;
    loop {
        deadline += SAMPLE_EVERY;
        let done = workload
            .run_until(&mut net, deadline)
            .map_err(|e| Verification(e.to_string()))?;
        rtt.sample(&net, &workload);
        if done {
            break;
        }
        if deadline - started >= time_limit {
            return Err(Verification(format!(
                "no completion within {time_limit:?} of simulated time (seed {}): {}",
                o.seed,
                workload.progress_summary()
            )));
        }
    }
    let wall = wall.elapsed();
    let report = workload.report(&net);

    if report.messages_delivered != planned_messages || report.bytes_delivered != planned_bytes {
        return Err(Verification(format!(
            "delivered {} messages / {} bytes, planned {planned_messages} / {planned_bytes} (seed {})",
            report.messages_delivered, report.bytes_delivered, o.seed
        )));
    }
    Ok(Outcome {
        report,
        planned_messages,
        planned_bytes,
        largest,
        rtt,
        patient,
        wall,
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn paper_setup_packets(engines: u16) -> u32 {
    2 * spray_batch(engines, 0.95)
}

fn text(o: &Options, out: &Outcome) -> String {
    let r = &out.report;
    let e = &r.engines;
    let l = &r.links;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "machnet echo (simulated): 2 hosts x {} engines, {} flows, seed {}",
        o.engines, r.flows, r.seed
    );
    let _ = writeln!(
        w,
        "network     {}% loss, 20 us +0-10 us delay, 1% reordered (+50 us), 0.5% duplicated, 0.1% corrupted, 25 Gbit/s",
        o.loss_percent
    );
    if out.patient {
        let _ = writeln!(
            w,
            "            (loss > {}%: engines use raised retry limits)",
            PATIENT_ABOVE * 100.0
        );
    }
    let _ = writeln!(
        w,
        "verified    {} messages, {} ({} B), largest {}: exactly once, in order, byte-identical",
        r.messages_delivered,
        human_bytes(r.bytes_delivered),
        r.bytes_delivered,
        human_bytes(u64::from(out.largest)),
    );
    let _ = writeln!(
        w,
        "duration    {:.3} ms simulated, {:.2} s wall",
        r.duration.as_secs_f64() * 1e3,
        out.wall.as_secs_f64()
    );
    let _ = writeln!(
        w,
        "goodput     {:.1} Mbit/s (payload, both directions)",
        r.goodput_mbps()
    );
    match (out.rtt.min, out.rtt.srtt_mean()) {
        (Some(min), Some(mean)) => {
            let _ = writeln!(
                w,
                "rtt         min {:.1} us, smoothed mean {:.1} us, max {:.1} us",
                us(min),
                us(mean),
                us(out.rtt.srtt_max)
            );
        }
        _ => {
            let _ = writeln!(w, "rtt         no sample");
        }
    }
    let _ = writeln!(
        w,
        "packets     {} sent, {} received",
        e.packets_sent, e.packets_received
    );
    let _ = writeln!(
        w,
        "retransmit  {} ({:.2}% of sent): {} fast, {} timeout",
        r.retransmits(),
        percent(r.retransmits(), e.packets_sent),
        e.fast_retransmits,
        e.timeout_retransmits
    );
    let drops = r.drops_by_reason();
    if drops.is_empty() {
        let _ = writeln!(w, "drops       none");
    } else {
        let list: Vec<String> = drops
            .iter()
            .map(|(reason, n)| format!("{} {n}", reason.name()))
            .collect();
        let _ = writeln!(w, "drops       {}", list.join(", "));
    }
    let _ = writeln!(
        w,
        "faults      {} lost, {} duplicated, {} reordered, {} corrupted, {} queue drops",
        l.lost, l.duplicated, l.reordered, l.corrupted, l.queue_drops
    );
    let _ = writeln!(
        w,
        "rss--       {} connections, {:.1} handshake packets each ({} SYNs, {} SYN-ACKs; one round by the paper's formula: {})",
        r.connections(),
        r.handshake_packets_per_setup(),
        e.syns_sent,
        e.syn_acks_sent,
        paper_setup_packets(o.engines)
    );
    let _ = writeln!(w, "seed        {}  (replay: --seed {})", r.seed, r.seed);
    s
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A JSON number for `v`, `null` if not finite.
fn num(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        "null".into()
    }
}

fn opt_us(d: Option<Duration>) -> String {
    d.map_or_else(|| "null".into(), |d| num(us(d)))
}

/// A JSON string literal.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(o: &Options, out: &Outcome) -> String {
    let r = &out.report;
    let e = &r.engines;
    let l = &r.links;
    let drops: Vec<String> = r
        .drops_by_reason()
        .iter()
        .map(|(reason, n)| format!("{}:{n}", string(reason.name())))
        .collect();
    let fields: Vec<(&str, String)> = vec![
        ("seed", r.seed.to_string()),
        ("engines_per_host", o.engines.to_string()),
        ("flows", r.flows.to_string()),
        ("loss_percent", num(o.loss_percent)),
        ("patient_retry_limits", out.patient.to_string()),
        ("verified", "true".into()),
        ("messages", r.messages_delivered.to_string()),
        ("bytes", r.bytes_delivered.to_string()),
        ("largest_message_bytes", out.largest.to_string()),
        ("simulated_seconds", format!("{:.9}", r.duration.as_secs_f64())),
        ("wall_seconds", num(out.wall.as_secs_f64())),
        ("goodput_mbps", num(r.goodput_mbps())),
        ("rtt_min_us", opt_us(out.rtt.min)),
        ("srtt_mean_us", opt_us(out.rtt.srtt_mean())),
        (
            "srtt_max_us",
            opt_us((out.rtt.srtt_count > 0).then_some(out.rtt.srtt_max)),
        ),
        ("packets_sent", e.packets_sent.to_string()),
        ("packets_received", e.packets_received.to_string()),
        ("retransmits", r.retransmits().to_string()),
        ("fast_retransmits", e.fast_retransmits.to_string()),
        ("timeout_retransmits", e.timeout_retransmits.to_string()),
        ("drops", format!("{{{}}}", drops.join(","))),
        (
            "link",
            format!(
                "{{\"offered\":{},\"lost\":{},\"duplicated\":{},\"reordered\":{},\"corrupted\":{},\"queue_drops\":{}}}",
                l.offered, l.lost, l.duplicated, l.reordered, l.corrupted, l.queue_drops
            ),
        ),
        ("connections", r.connections().to_string()),
        ("syns_sent", e.syns_sent.to_string()),
        ("syn_acks_sent", e.syn_acks_sent.to_string()),
        (
            "handshake_packets_per_setup",
            num(r.handshake_packets_per_setup()),
        ),
        (
            "paper_handshake_packets_per_setup",
            paper_setup_packets(o.engines).to_string(),
        ),
        ("send_buffer_full", r.send_buffer_full.to_string()),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", string(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("echo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(outcome) => {
            debug_assert_eq!(outcome.report.messages_delivered, outcome.planned_messages);
            debug_assert_eq!(outcome.report.bytes_delivered, outcome.planned_bytes);
            if options.json {
                println!("{}", json(&options, &outcome));
            } else {
                print!("{}", text(&options, &outcome));
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Setup(e)) => {
            eprintln!("echo: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Verification(e)) => {
            eprintln!("echo: VERIFICATION FAILED: {e}");
            ExitCode::from(1)
        }
    }
}
