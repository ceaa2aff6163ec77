//! The open-loop load generator (the wrk2 method).
//!
//! `rate` requests per second are spread over `connections` keep-alive connections; each
//! request has a fixed intended send time ([`Schedule`]). When its time comes it is written even
//! if earlier requests are still unanswered (HTTP/1.1 pipelining), and its latency is the time
//! from the intended send time to the end of its response: when the server (or the network)
//! falls behind, the queueing shows in the latency instead of silently lowering the offered
//! load (coordinated omission).

mod conn;
mod driver;
mod pacer;
mod response;
mod schedule;

use std::future::Future;
use std::io;
use std::time::Duration;

pub use conn::{ConnLogic, ConnStats, MAX_LATENCY_NS};
pub use driver::drive;
pub use pacer::{Pacer, RunClock};
pub use response::{ResponseError, ResponseReader};
pub use schedule::Schedule;

/// One run of the load generator.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Offered load, requests per second over all connections.
    pub rate: u64,
    /// How long requests are sent.
    pub duration: Duration,
    /// Keep-alive connections the load is spread over.
    pub connections: u32,
    /// `None`: `GET /`; `Some(n)`: `POST /echo` with an `n`-byte body.
    pub post_body: Option<usize>,
    /// How long to wait for outstanding responses after the last request was sent.
    pub drain: Duration,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Rate, duration or connection count of zero.
    #[error("rate, duration and connections must be positive")]
    Invalid,
    /// A connection could not be opened.
    #[error("connect: {0}")]
    Connect(io::Error),
}

/// The request every connection sends, as bytes.
pub fn request_bytes(post_body: Option<usize>) -> Vec<u8> {
    match post_body {
        None => b"GET / HTTP/1.1\r\nHost: machnet-http\r\n\r\n".to_vec(),
        Some(n) => {
            let mut r =
                format!("POST /echo HTTP/1.1\r\nHost: machnet-http\r\nContent-Length: {n}\r\n\r\n")
                    .into_bytes();
            r.extend((0..n).map(|i| b'a' + (i % 26) as u8));
            r
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The run's settings.
    pub config: LoadConfig,
    /// All connections' figures merged.
    pub stats: ConnStats,
}

impl LoadReport {
    /// Answered requests per second: 2xx responses over the run's duration, or until the last
    /// response if that came later (a server that falls behind does not get credit for it).
    pub fn achieved_rps(&self) -> f64 {
        let span =
            (self.stats.last_response_ns as f64 / 1e9).max(self.config.duration.as_secs_f64());
        self.stats.ok as f64 / span
    }

    /// The report as one JSON object; `extra` fields (transport, labels) are added to it.
    pub fn to_json(&self, extra: &[(&str, serde_json::Value)]) -> serde_json::Value {
        let h = &self.stats.latency_ns;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        let mut v = serde_json::json!({
            "offered_rps": self.config.rate,
            "achieved_rps": self.achieved_rps(),
            "connections": self.config.connections,
            "duration_s": self.config.duration.as_secs_f64(),
            "request": match self.config.post_body { None => "GET /".to_string(), Some(n) => format!("POST /echo {n} B") },
            "sent": self.stats.sent,
            "ok": self.stats.ok,
            "bad_status": self.stats.bad_status,
            "lost": self.stats.lost,
            "errors": self.stats.bad_status + self.stats.lost,
            "failure": self.stats.failure,
            "latency_us": {
                "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999),
                "max": h.max() as f64 / 1e3, "mean": h.mean() / 1e3,
            },
        });
        let obj = v.as_object_mut().expect("an object");
        for (k, val) in extra {
            obj.insert((*k).to_string(), val.clone());
        }
        v
    }
}

/// Opens `config.connections` streams with `connect`, then runs the schedule on all of them
/// (each on its own task of the current runtime) and merges what they measured.
pub async fn run<S, F, Fut>(config: &LoadConfig, connect: F) -> Result<LoadReport, LoadError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    if config.rate == 0 || config.duration.is_zero() || config.connections == 0 {
        return Err(LoadError::Invalid);
    }
    let mut streams = Vec::new();
    for _ in 0..config.connections {
        streams.push(connect().await.map_err(LoadError::Connect)?);
    }
    let request = request_bytes(config.post_body);
    // Every connection starts on the same clock, a little ahead so the tasks are all running.
    let clock = RunClock::starting_in(Duration::from_millis(5));
    let conns = u64::from(config.connections);
    let duration_ns = config.duration.as_nanos() as u64;
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            let logic = ConnLogic::new(
                Schedule::new(config.rate, conns, k as u64, duration_ns),
                request.clone(),
            );
            tokio::spawn(drive(s, logic, clock, config.drain))
        })
        .collect();
    let mut stats = ConnStats::empty();
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(&s),
            Err(e) => {
                stats
                    .failure
                    .get_or_insert_with(|| format!("connection task: {e}"));
            }
        }
    }
    Ok(LoadReport {
        config: config.clone(),
        stats,
    })
}
