//! `machnet stat` against real sidecar processes: the counts it reports are the traffic the
//! test caused; bad statistics requests get clear errors and leave the sidecar serving.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use machnet_channel::control::{ControlError, Request, Response};
use machnet_channel::RecordKind;
use machnet_sidecar::stat::client::{fetch, StatRequest};
use serde_json::Value;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 5000;

fn attach(p: &Proc) -> RawClient {
    let c = RawClient::connect(&p.sock).unwrap();
    assert!(matches!(c.hello(), Response::Hello { .. }));
    c
}

/// Runs `machnet stat` with `args`; its exit status, standard output and standard error.
fn machnet_stat(p: &Proc, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(MACHNET_BIN)
        .arg("stat")
        .arg("--control-socket")
        .arg(&p.sock)
        .args(args)
        .output()
        .expect("run machnet stat");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn stat_json(p: &Proc) -> Value {
    let (ok, out, err) = machnet_stat(p, &["--json"]);
    assert!(ok, "machnet stat --json failed: {err}");
    serde_json::from_str(&out).expect("machnet stat --json prints JSON")
}

/// Sends each message on `flow` and reads its echo back.
fn echo(ch: &mut AppChannel, flow: u32, sizes: &[usize], seed: u64) {
    for (i, &len) in sizes.iter().enumerate() {
        let msg = pattern(seed + i as u64, len);
        ch.send(flow, &msg);
        let n = ch.expect_next();
        assert_eq!(n.kind, RecordKind::Message);
        assert!(n.payload == msg, "echo of {len} bytes altered");
    }
}

fn channel(doc: &Value, id: u32) -> &Value {
    doc["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == id)
        .unwrap_or_else(|| panic!("channel {id} not listed: {doc:#}"))
}

fn flows_of(doc: &Value, ch: u32) -> Vec<&Value> {
    doc["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["channel"] == ch)
        .collect()
}

/// Polls the library client until `done` holds for the document (the sidecar learns of ACKs
/// for the last messages a little after their echoes arrive).
fn stat_until(p: &Proc, done: impl Fn(&Value) -> bool) -> Value {
    let req = StatRequest {
        socket: p.sock.clone(),
        max_flows: None,
        max_channels: None,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let doc = fetch(&req).expect("stats");
        if done(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "never reached: {doc:#}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn stat_reports_the_traffic_of_two_apps_and_refuses_bad_requests() {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("stat");
    let sa = Proc::start(A, 2, pool, &dir, &[]);
    let sb = Proc::start(B, 1, pool, &dir, &[]);
    let cb = attach(&sb);
    let server = cb.open_channel(None);
    let server_id = server.id;
    assert_eq!(cb.listen(server.id, PORT), Response::Ok);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let echo_thread = std::thread::spawn(move || echo_server(server, s2));

    // Two apps (control connections) on sidecar A: one flow on engine 0, two on engine 1.
    let app1 = attach(&sa);
    let app2 = attach(&sa);
    let mut ch1 = app1.open_channel(Some(0));
    let mut ch2 = app2.open_channel(Some(1));
    let (f1, info1) = ch1.connect(B, PORT);
    let (f2, _) = ch2.connect(B, PORT);
    let (f3, _) = ch2.connect(B, PORT);
    let sizes1 = [10, 1000, 5000];
    let (sizes2, sizes3) = ([7, 7], [70_000]);
    echo(&mut ch1, f1, &sizes1, 1);
    echo(&mut ch2, f2, &sizes2, 10);
    echo(&mut ch2, f3, &sizes3, 20);
    let sum = |s: &[usize]| s.iter().sum::<usize>() as u64;

    let doc = stat_json(&sa);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["sidecar"]["local_ip"], "127.0.0.1");
    assert_eq!(
        doc["sidecar"]["control_connections"], 3,
        "two apps and machnet stat"
    );
    let engines = doc["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 2);
    assert_eq!(
        (
            engines[0]["channels"].clone(),
            engines[1]["channels"].clone()
        ),
        (1.into(), 1.into())
    );
    let connects: u64 = engines
        .iter()
        .map(|e| e["connects"].as_u64().unwrap())
        .sum();
    assert_eq!(connects, 3);
    assert!(
        engines
            .iter()
            .all(|e| e["drops"].as_object().unwrap().len() > 20),
        "every drop reason"
    );
    assert_eq!(
        (
            doc["channels_omitted"].clone(),
            doc["flows_omitted"].clone()
        ),
        (0.into(), 0.into())
    );

    let me = std::process::id();
    for (id, engine, flows, out) in [
        (ch1.id, 0, 1, &sizes1[..]),
        (ch2.id, 1, 2, &[7, 7, 70_000][..]),
    ] {
        let c = channel(&doc, id);
        assert_eq!(c["engine"], engine);
        assert_eq!(c["pid"], me);
        assert_eq!(c["flows"], flows);
        // Echoes: what went out came back.
        assert_eq!(c["messages_out"], out.len());
        assert_eq!(c["bytes_out"], sum(out));
        assert_eq!(c["messages_in"], out.len());
        assert_eq!(c["bytes_in"], sum(out));
        assert!(c["memory_bytes"].as_u64().unwrap() > 0);
    }
    // Flows: the right peers, and what the transport received.
    let f = flows_of(&doc, ch1.id);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["handle"], f1);
    assert_eq!(
        (f[0]["kind"].as_str(), f[0]["state"].as_str()),
        (Some("network"), Some("established"))
    );
    assert_eq!(
        (f[0]["remote_ip"].as_str(), f[0]["remote_port"].clone()),
        (Some("127.0.0.2"), PORT.into())
    );
    assert_eq!(f[0]["local_port"], info1.local_port);
    let t = &f[0]["transport"];
    assert_eq!(t["messages_received"], sizes1.len());
    assert_eq!(t["bytes_received"], sum(&sizes1));
    assert!(t["srtt_us"].as_u64().is_some(), "an RTT estimate: {t}");
    let mut handles: Vec<u64> = flows_of(&doc, ch2.id)
        .iter()
        .map(|f| f["handle"].as_u64().unwrap())
        .collect();
    handles.sort_unstable();
    assert_eq!(handles, [u64::from(f2.min(f3)), u64::from(f2.max(f3))]);
    // Every message is acknowledged once the peer's ACKs are in.
    let doc = stat_until(&sa, |d| {
        flows_of(d, ch1.id)[0]["transport"]["messages_sent"] == sizes1.len()
    });
    let sent = flows_of(&doc, ch1.id)[0]["transport"]["bytes_sent"].as_u64();
    assert!(
        sent >= Some(sum(&sizes1)),
        "retransmissions included: {sent:?}"
    );

    // The server's side: one channel, three accepted flows, everything echoed.
    let doc_b = stat_json(&sb);
    let s = channel(&doc_b, server_id);
    assert_eq!(s["flows"], 3);
    assert_eq!(s["messages_in"], 6);
    assert_eq!(s["bytes_in"], sum(&sizes1) + sum(&sizes2) + sum(&sizes3));
    assert_eq!(s["ports"], serde_json::json!([PORT]));
    assert_eq!(doc_b["engines"][0]["accepts"], 3);
    assert!(flows_of(&doc_b, server_id)
        .iter()
        .all(|f| f["remote_ip"] == "127.0.0.1" && f["local_port"] == PORT));

    // The socket named by the sidecar's configuration file.
    let conf = dir.join("a.toml");
    std::fs::write(&conf, format!("control_socket = {:?}\n", sa.sock)).unwrap();
    let out = Command::new(MACHNET_BIN)
        .args(["stat", "--json", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["sidecar"]["pid"], doc["sidecar"]["pid"]);

    // Tables for people.
    let (ok, table, _) = machnet_stat(&sa, &[]);
    assert!(ok);
    assert!(
        table.contains("ENGINE") && table.contains("127.0.0.2:5000"),
        "{table}"
    );
    // Caps: one flow listed, the others counted.
    let (ok, out, _) = machnet_stat(&sa, &["--json", "--max-flows", "1", "--max-channels", "1"]);
    assert!(ok);
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            d["flows"].as_array().unwrap().len(),
            d["flows_omitted"].clone()
        ),
        (1, 2.into())
    );
    assert_eq!(
        (
            d["channels"].as_array().unwrap().len(),
            d["channels_omitted"].clone()
        ),
        (1, 1.into())
    );

    // An answer larger than other control messages (many channels) arrives whole.
    let extra: Vec<AppChannel> = (0..80).map(|_| app2.open_channel(None)).collect();
    let (ok, out, err) = machnet_stat(&sa, &["--json"]);
    assert!(ok, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["channels"].as_array().unwrap().len(), 82);
    let wire = serde_json::to_vec(&d).unwrap().len();
    assert!(
        wire > machnet_channel::control::MAX_CONTROL_MESSAGE,
        "{wire} bytes"
    );
    drop(extra);

    // Bad requests: out of range is refused and the connection stays; malformed closes it.
    let (ok, _, err) = machnet_stat(&sa, &["--max-flows", "0"]);
    assert!(!ok);
    assert!(err.contains("max_flows 0 is out of range"), "{err}");
    let raw = RawClient::connect(&sa.sock).unwrap();
    let r = raw.request(&Request::Stats {
        max_flows: None,
        max_channels: None,
    });
    assert!(
        matches!(
            r,
            Response::Error {
                code: ControlError::NoHello,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(raw.hung_up(WAIT));
    let raw = attach(&sa);
    for bad in [0, 4097, u32::MAX] {
        let r = raw.request(&Request::Stats {
            max_flows: Some(1),
            max_channels: Some(bad),
        });
        let Response::Error { code, message } = r else {
            panic!("{bad}: {r:?}")
        };
        assert_eq!(code, ControlError::InvalidRequest);
        assert!(message.contains("max_channels"), "{message}");
    }
    let r = raw.request(&Request::Stats {
        max_flows: Some(1),
        max_channels: Some(1),
    });
    assert!(
        matches!(r, Response::Stats { .. }),
        "the connection still works: {r:?}"
    );
    raw.send_raw(br#"{"op":"stats","max_flows":"all"}"#)
        .unwrap();
    let r = raw.recv(WAIT).expect("an error").0;
    assert!(
        matches!(
            r,
            Response::Error {
                code: ControlError::Malformed,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(raw.hung_up(WAIT));
    let raw = attach(&sa);
    let mut huge = br#"{"op":"stats","max_flows":1}"#.to_vec();
    huge.resize(64 * 1024, b' ');
    raw.send_raw(&huge).unwrap();
    let r = raw.recv(WAIT).expect("an error").0;
    assert!(
        matches!(
            r,
            Response::Error {
                code: ControlError::Malformed,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(raw.hung_up(WAIT));

    // The sidecar and the apps' flows are unharmed.
    echo(&mut ch1, f1, &[123], 30);
    let doc = stat_json(&sa);
    assert_eq!(channel(&doc, ch1.id)["messages_out"], sizes1.len() + 1);
    // A connect nobody answers is listed as connecting (or closed, if it already gave up).
    let mut ch3 = app1.open_channel(Some(0));
    let request = ch3.connect_request(Ipv4Addr::new(127, 0, 0, 3), PORT);
    let doc = stat_json(&sa);
    let f = flows_of(&doc, ch3.id);
    assert_eq!(f.len(), 1, "{doc:#}");
    let state = f[0]["state"].as_str().unwrap();
    assert!(matches!(state, "connecting" | "closed"), "{state}");
    if state == "connecting" {
        assert_eq!(f[0]["remote_ip"], "127.0.0.3", "{doc:#}");
        assert_eq!(f[0]["transport"]["bytes_received"], 0, "{doc:#}");
    }
    if state == "closed" {
        let n = ch3.expect_next();
        assert_eq!((n.kind, n.aux), (RecordKind::ConnectFailed, request));
    }
    // Not waiting for the handshake to give up.
    let r = app1.request(&Request::CloseChannel {
        channel: ch3.id,
        abort: true,
    });
    assert_eq!(r, Response::Ok);

    // No sidecar: a clear error.
    let (ok, _, err) = Command::new(MACHNET_BIN)
        .args(["stat", "--control-socket"])
        .arg(dir.join("nobody.sock"))
        .output()
        .map(|o| (o.status.success(), (), String::from_utf8(o.stderr).unwrap()))
        .unwrap();
    assert!(!ok);
    assert!(
        err.contains("cannot connect to") && err.contains("nobody.sock"),
        "{err}"
    );

    stop.store(true, Ordering::SeqCst);
    echo_thread.join().unwrap();
}
