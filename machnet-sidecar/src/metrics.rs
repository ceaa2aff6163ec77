//! The opt-in Prometheus endpoint (`--metrics-addr`): `GET /metrics` asks every engine for its
//! counters (the same as the statistics log line and `machnet stat`) and answers them in the
//! OpenMetrics text format. One thread serves it (tiny_http); the engines answer through their
//! command queues, so a scrape never touches the data path beyond one report per engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::EngineClient;
use crate::stat::schema::EngineStat;

/// Fields of [`EngineStat`] that are levels (exported as gauges); every other numeric field
/// only grows (exported as a counter, named with `_total`).
const GAUGES: &[&str] = &[
    "channels",
    "active_channels",
    "flows",
    "connecting",
    "held_core_bytes",
    "held_core_peak_bytes",
    "memory_budget_bytes",
    "held_sidecar_bytes",
    "stalled_channels",
    "orphan_flows",
    "local_flows",
    "local_queued_bytes",
];

/// The content type of the answer.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint on {addr}: {message}")]
pub struct MetricsStartError {
    /// The address.
    pub addr: SocketAddr,
    /// What failed.
    pub message: String,
}

/// The running endpoint.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Listens on `addr` and serves `/metrics` from `engines`.
    pub fn spawn(
        addr: SocketAddr,
        engines: Vec<EngineClient>,
    ) -> Result<MetricsServer, MetricsStartError> {
        let err = |e: &dyn std::fmt::Display| MetricsStartError {
            addr,
            message: e.to_string(),
        };
        let server = Arc::new(tiny_http::Server::http(addr).map_err(|e| err(&e))?);
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| err(&"not an IP listener"))?;
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("machnet-metrics".into())
            .spawn(move || serve(&s, &engines))
            .map_err(|e| err(&e))?;
        tracing::info!(addr = %bound, "metrics endpoint listening (GET /metrics)");
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address it listens on (with the port chosen if `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn shutdown(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(server: &tiny_http::Server, engines: &[EngineClient]) {
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("");
        let response = match (req.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let header = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                    .expect("a valid header");
                tiny_http::Response::from_string(scrape(engines)).with_header(header)
            }
            (tiny_http::Method::Get, _) => {
                tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
            }
            _ => tiny_http::Response::from_string("method not allowed\n").with_status_code(405),
        };
        // A client that went away is its own business.
        let _ = req.respond(response);
    }
}

/// The metrics text for the engines that answer now.
pub fn scrape(engines: &[EngineClient]) -> String {
    let stats: Vec<EngineStat> = engines
        .iter()
        .filter_map(|e| e.report().ok())
        .map(|r| EngineStat::from(&r))
        .collect();
    let mut registry = Registry::with_prefix("machnet");
    registry.register_collector(Box::new(EngineCollector { stats }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The engines' counters at one scrape.
#[derive(Debug)]
struct EngineCollector {
    stats: Vec<EngineStat>,
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: Vec<(String, serde_json::Map<String, serde_json::Value>)> = self
            .stats
            .iter()
            .map(|s| {
                let map = match serde_json::to_value(s) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                (s.engine.to_string(), map)
            })
            .collect();
        let Some((_, first)) = rows.first() else {
            return Ok(());
        };
        for field in first.keys().filter(|k| *k != "engine" && *k != "drops") {
            let gauge = GAUGES.contains(&field.as_str());
            let name = format!("engine_{field}");
            let help = format!("engines[].{field} of docs/STATS.md");
            let kind = if gauge {
                ConstGauge::new(0u64).metric_type()
            } else {
                ConstCounter::new(0u64).metric_type()
            };
            let mut family = encoder.encode_descriptor(&name, &help, None, kind)?;
            for (engine, map) in &rows {
                let v = map
                    .get(field)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                let labels = [("engine", engine.as_str())];
                let m = family.encode_family(&labels)?;
                if gauge {
                    ConstGauge::new(v).encode(m)?;
                } else {
                    ConstCounter::new(v).encode(m)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "engine_drops",
            "Incoming packets dropped, by reason (PROTOCOL.md drop list)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for s in &self.stats {
            let engine = s.engine.to_string();
            for (reason, &n) in &s.drops {
                let labels = [("engine", engine.as_str()), ("reason", reason.as_str())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
