//! The load generator (the paper's KV experiment): preloaded keys, 100 % GETs of random keys,
//! `connections` threads each keeping `depth` requests outstanding on its own connection.
//! Every response is checked (status, id order, value byte for byte).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use crate::client::{ClientError, Conn};
use crate::protocol::{Request, Response, Status};

/// Opens one connection (called once per load thread, on that thread).
pub type Connector = Arc<dyn Fn() -> Result<Box<dyn Conn>, ClientError> + Send + Sync>;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Load threads, one connection each.
    pub connections: usize,
    /// Requests outstanding per connection.
    pub depth: usize,
    /// Keys in the store (`key:00000000` …).
    pub keys: u32,
    /// Value size in bytes.
    pub value_size: usize,
    /// Traffic before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Seed of the key choice (printed by the caller).
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    /// `machnet` or `tcp`.
    pub transport: &'static str,
    /// Threads/connections.
    pub connections: usize,
    /// Outstanding requests per connection.
    pub depth: usize,
    /// Responses in the measured interval (all verified).
    pub requests: u64,
    /// Length of the measured interval.
    pub elapsed: Duration,
    /// Request latency in nanoseconds.
    pub latency: Histogram<u64>,
}

impl BenchReport {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// One JSON object.
    pub fn json(&self) -> serde_json::Value {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        serde_json::json!({
            "transport": self.transport,
            "connections": self.connections,
            "depth": self.depth,
            "requests": self.requests,
            "duration_s": self.elapsed.as_secs_f64(),
            "requests_per_sec": self.rate(),
            "latency_us": {"p50": us(0.5), "p99": us(0.99), "p999": us(0.999)},
        })
    }

    /// One line for people.
    pub fn human(&self) -> String {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "{:<8} connections {:>3} depth {:>3}: {:>9.0} req/s  latency us p50 {:.1} p99 {:.1} p99.9 {:.1}",
            self.transport,
            self.connections,
            self.depth,
            self.rate(),
            us(0.5),
            us(0.99),
            us(0.999)
        )
    }
}

/// The key with index `i`.
pub fn key(i: u32) -> Vec<u8> {
    format!("key:{i:08}").into_bytes()
}

/// The value stored under key `i` (deterministic, so every GET can be verified).
pub fn value(i: u32, size: usize) -> Vec<u8> {
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores keys `0..keys` with their values, `depth` SETs in flight.
pub fn preload(conn: &mut dyn Conn, keys: u32, value_size: usize) -> Result<(), String> {
    const DEPTH: u32 = 64;
    let mut msg = Vec::new();
    let mut buf = Vec::new();
    let mut next = 0u32;
    let mut done = 0u32;
    while done < keys {
        while next < keys && next - done < DEPTH {
            msg.clear();
            let (k, v) = (key(next), value(next, value_size));
            Request::Set {
                id: next,
                key: &k,
                value: &v,
            }
            .encode(&mut msg);
            conn.send(&msg).map_err(|e| e.to_string())?;
            next += 1;
        }
        conn.recv(&mut buf).map_err(|e| e.to_string())?;
        let r = Response::parse(&buf).map_err(|e| e.to_string())?;
        if r.id != done || r.status != Status::Ok {
            return Err(format!(
                "SET {done}: got {:?} for id {}: {}",
                r.status,
                r.id,
                String::from_utf8_lossy(r.body)
            ));
        }
        done += 1;
    }
    Ok(())
}

/// Runs the load and merges the threads' results.
pub fn run(
    transport: &'static str,
    connect: Connector,
    cfg: &BenchConfig,
) -> Result<BenchReport, String> {
    if cfg.connections == 0 || cfg.depth == 0 || cfg.keys == 0 {
        return Err("connections, depth and keys must be at least 1".into());
    }
    let start = Instant::now() + Duration::from_millis(200);
    let threads: Vec<_> = (0..cfg.connections)
        .map(|t| {
            let connect = connect.clone();
            let cfg = cfg.clone();
            std::thread::spawn(move || load_thread(t as u64, connect, &cfg, start))
        })
        .collect();
    let mut latency = Histogram::new(3).expect("histogram");
    let mut requests = 0;
    for t in threads {
        let (n, h) = t.join().map_err(|_| "a load thread panicked")??;
        requests += n;
        latency.add(&h).map_err(|e| e.to_string())?;
    }
    Ok(BenchReport {
        transport,
        connections: cfg.connections,
        depth: cfg.depth,
        requests,
        elapsed: cfg.duration,
        latency,
    })
}

fn load_thread(
    t: u64,
    connect: Connector,
    cfg: &BenchConfig,
    start: Instant,
) -> Result<(u64, Histogram<u64>), String> {
    let mut conn = connect().map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(cfg.seed.wrapping_add(t));
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut outstanding = std::collections::VecDeque::with_capacity(cfg.depth);
    let (mut msg, mut buf) = (Vec::new(), Vec::new());
    let mut next_id = 0u32;
    let mut send = |conn: &mut Box<dyn Conn>, q: &mut std::collections::VecDeque<_>| {
        let k = rng.random_range(0..cfg.keys);
        msg.clear();
        Request::Get {
            id: next_id,
            key: &key(k),
        }
        .encode(&mut msg);
        q.push_back((next_id, k, Instant::now()));
        next_id = next_id.wrapping_add(1);
        conn.send(&msg).map_err(|e| e.to_string())
    };
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    for _ in 0..cfg.depth {
        send(&mut conn, &mut outstanding)?;
    }
    let mut measured = 0u64;
    loop {
        conn.recv(&mut buf).map_err(|e| e.to_string())?;
        let now = Instant::now();
        let (id, k, sent) = outstanding
            .pop_front()
            .ok_or("a response nobody asked for")?;
        let r = Response::parse(&buf).map_err(|e| e.to_string())?;
        if r.id != id || r.status != Status::Ok || r.body != value(k, cfg.value_size) {
            return Err(format!(
                "GET key {k} (id {id}): got {:?} id {} with {} bytes — wrong answer",
                r.status,
                r.id,
                r.body.len()
            ));
        }
        if now >= measure_from && now < end {
            measured += 1;
            let _ = hist.record((now - sent).as_nanos().max(1) as u64);
        }
        if now < end {
            send(&mut conn, &mut outstanding)?;
        } else if outstanding.is_empty() {
            return Ok((measured, hist));
        }
    }
}
