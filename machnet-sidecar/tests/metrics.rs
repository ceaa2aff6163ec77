//! The Prometheus endpoint and JSON logs of a real sidecar process: scraped metrics carry the
//! traffic the test caused, and every log line is a JSON object.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use machnet_channel::control::Response;
use machnet_channel::RecordKind;
use serde_json::Value;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn attach(p: &Proc) -> RawClient {
    let c = RawClient::connect(&p.sock).unwrap();
    assert!(matches!(c.hello(), Response::Hello { .. }));
    c
}

/// `method path` over HTTP/1.0: the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(s, "{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

/// Samples of the text format: `name{labels}` → value; every line is a comment or a sample.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a value: {line}"));
        assert!(
            out.insert(key.to_owned(), v).is_none(),
            "sample twice: {line}"
        );
    }
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    out
}

/// The sum of `name` over engines.
fn total(m: &HashMap<String, f64>, name: &str, engines: u16) -> f64 {
    (0..engines)
        .map(|e| {
            let key = format!("{name}{{engine=\"{e}\"}}");
            *m.get(&key).unwrap_or_else(|| panic!("no {key}"))
        })
        .sum()
}

/// Every line of the log as JSON.
fn json_log(p: &Proc) -> Vec<Value> {
    p.log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn metrics_endpoint_serves_the_engines_counters_and_logs_are_json() {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("metrics");
    let extra = [
        "--metrics-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--stats-interval",
        "0.2",
    ];
    let mut sa = Proc::start(A, 2, pool, &dir, &extra);
    let sb = Proc::start(B, 1, pool, &dir, &[]);
    // The endpoint's address, from the JSON log line that announces it.
    let addr: SocketAddr = json_log(&sa)
        .iter()
        .find(|l| l["fields"]["message"] == "metrics endpoint listening (GET /metrics)")
        .and_then(|l| l["fields"]["addr"].as_str()?.parse().ok())
        .expect("the endpoint's address is logged");

    let before = parse_metrics(&http(addr, "GET", "/metrics").1);
    assert_eq!(total(&before, "machnet_engine_channels", 2), 0.0);
    assert_eq!(total(&before, "machnet_engine_tx_packets_total", 2), 0.0);

    let cb = attach(&sb);
    let server = cb.open_channel(None);
    assert_eq!(cb.listen(server.id, 5000), Response::Ok);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let echo = std::thread::spawn(move || echo_server(server, s2));
    let ca = attach(&sa);
    let mut ch = ca.open_channel(Some(1));
    let (flow, _) = ch.connect(B, 5000);
    let sizes = [100usize, 20_000, 3];
    for (i, &len) in sizes.iter().enumerate() {
        let msg = pattern(i as u64, len);
        ch.send(flow, &msg);
        let n = ch.expect_next();
        assert_eq!(n.kind, RecordKind::Message);
        assert!(n.payload == msg);
    }
    let payload: usize = sizes.iter().sum();

    let (status, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    let m = parse_metrics(&body);
    assert_eq!(m["machnet_engine_channels{engine=\"0\"}"], 0.0);
    assert_eq!(m["machnet_engine_channels{engine=\"1\"}"], 1.0);
    assert_eq!(m["machnet_engine_flows{engine=\"1\"}"], 1.0);
    assert_eq!(total(&m, "machnet_engine_connects_total", 2), 1.0);
    assert_eq!(total(&m, "machnet_engine_accepts_total", 2), 0.0);
    assert_eq!(total(&m, "machnet_engine_local_messages_total", 2), 0.0);
    // The datagrams carried at least the messages both ways.
    assert!(total(&m, "machnet_engine_tx_bytes_total", 2) >= payload as f64);
    assert!(total(&m, "machnet_engine_rx_bytes_total", 2) >= payload as f64);
    assert!(total(&m, "machnet_engine_tx_packets_total", 2) >= 3.0);
    let drops: Vec<_> = m
        .iter()
        .filter(|(k, _)| k.starts_with("machnet_engine_drops_total{"))
        .collect();
    assert!(
        drops.len() >= 2 * 20,
        "every reason for each engine: {drops:?}"
    );
    assert!(m.contains_key("machnet_engine_drops_total{engine=\"0\",reason=\"wrong_engine\"}"));
    // Other paths and methods.
    assert_eq!(http(addr, "GET", "/").0, 404);
    assert_eq!(http(addr, "POST", "/metrics").0, 405);

    // JSON logs: the statistics line keeps its text as the message, and every line parses.
    let deadline = Instant::now() + WAIT;
    loop {
        let log = json_log(&sa);
        let stats = log
            .iter()
            .filter_map(|l| l["fields"]["message"].as_str())
            .find(|m| m.starts_with("engine 1: channels 1"));
        if let Some(line) = stats {
            assert!(line.contains(" | rx "), "{line}");
            assert!(log
                .iter()
                .all(|l| l["timestamp"].is_string() && l["level"].is_string()));
            break;
        }
        assert!(Instant::now() < deadline, "no statistics line for engine 1");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    echo.join().unwrap();
    assert!(sa.terminate().success());
    // The endpoint goes away with the sidecar.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_busy_metrics_address_stops_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let pool = machnet_sidecar::testing::free_udp_pool(&[A], 4);
    let dir = temp_dir("metrics-busy");
    let out = std::process::Command::new(MACHNET_BIN)
        .args([
            "--udp-port-base",
            &pool.base.to_string(),
            "--udp-port-count",
            "4",
        ])
        .arg("--control-socket")
        .arg(dir.join("s.sock"))
        .args(["--metrics-addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("metrics endpoint on {addr}")),
        "{err}"
    );
    // Not an address at all: a usage error.
    let out = std::process::Command::new(MACHNET_BIN)
        .args(["--metrics-addr", "localhost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
