//! The KV server over two real sidecars (kernel UDP on 127.0.0.1 / 127.0.0.2, in this process)
//! and over TCP: every operation, malformed requests, deep pipelining, the load generator.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use machnet::Machnet;
use machnet_kv::bench::{self, BenchConfig, Connector};
use machnet_kv::client::{Conn, MachnetConn, TcpConn};
use machnet_kv::protocol::{op, parse_scan, Request, Response, Status, MAX_VALUE};
use machnet_kv::server;
use machnet_kv::store::Store;
use machnet_sidecar::testing::LoopbackSidecars;

const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 900;

/// Two sidecars and a KV server attached to A (Machnet) and listening on TCP.
struct Setup {
    sidecars: LoopbackSidecars,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    tcp: SocketAddr,
}

impl Setup {
    fn new() -> Setup {
        let sidecars = LoopbackSidecars::start("kv-e2e", &[IP_A, IP_B], 2);
        let store = Arc::new(Store::open(&sidecars.dir().join("kv.redb"), false).expect("store"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = listener.local_addr().unwrap();
        let tcp_store = store.clone();
        std::thread::spawn(move || server::serve_tcp(listener, tcp_store));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sock = sidecars.socket(0);
        let s = stop.clone();
        // The server as `machnet-kv server` runs it by default: one thread per engine.
        let server = std::thread::spawn(move || {
            let machnet = Machnet::attach_at(&sock).unwrap();
            let engines = server::channel_engines(machnet.engines().into(), machnet.engines());
            let srv = server::MachnetServer::start(&machnet, PORT, &engines, store, s).unwrap();
            assert_eq!(srv.engines(), [0, 1], "one channel per engine");
            ready_tx.send(()).unwrap();
            srv.join().unwrap();
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server up");
        Setup {
            sidecars,
            stop,
            server: Some(server),
            tcp,
        }
    }

    fn client_socket(&self) -> PathBuf {
        self.sidecars.socket(1)
    }

    fn machnet(&self) -> MachnetConn {
        MachnetConn::connect(&self.client_socket(), IP_A, PORT).expect("connect")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The server first; the sidecars shut down after this (field drop).
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

fn call(conn: &mut dyn Conn, req: Request<'_>) -> (Status, Vec<u8>) {
    let mut buf = Vec::new();
    conn.call(&req, &mut buf).expect("call");
    let r = Response::parse(&buf).expect("response");
    (r.status, r.body.to_vec())
}

/// The same checks over any connection.
fn exercise(conn: &mut dyn Conn, tag: &str) {
    let key = |s: &str| format!("{tag}:{s}").into_bytes();
    assert_eq!(
        call(
            conn,
            Request::Get {
                id: 1,
                key: &key("a")
            }
        )
        .0,
        Status::NotFound
    );
    // Values of many sizes, up to the limit, come back byte for byte.
    for (i, len) in [0usize, 1, 100, 1400, 9000, 65536, MAX_VALUE]
        .into_iter()
        .enumerate()
    {
        let k = key(&format!("v{i}"));
        let v = bench::value(i as u32, len);
        let set = Request::Set {
            id: 10 + i as u32,
            key: &k,
            value: &v,
        };
        assert_eq!(call(conn, set).0, Status::Ok, "SET of {len} bytes");
        let (st, body) = call(conn, Request::Get { id: 20, key: &k });
        assert_eq!(st, Status::Ok);
        assert!(body == v, "GET of {len} bytes returned different bytes");
    }
    let (st, body) = call(
        conn,
        Request::Scan {
            id: 30,
            prefix: &key("v"),
            limit: 3,
        },
    );
    assert_eq!(st, Status::Ok);
    let (truncated, entries) = parse_scan(&body).unwrap();
    assert!(!truncated);
    let keys: Vec<_> = entries.iter().map(|(k, _)| k.to_vec()).collect();
    assert_eq!(keys, vec![key("v0"), key("v1"), key("v2")]);
    assert_eq!(
        call(
            conn,
            Request::Delete {
                id: 31,
                key: &key("v1")
            }
        )
        .0,
        Status::Ok
    );
    assert_eq!(
        call(
            conn,
            Request::Get {
                id: 32,
                key: &key("v1")
            }
        )
        .0,
        Status::NotFound
    );
    // Malformed requests get an explanation, and the connection keeps working.
    let mut buf = Vec::new();
    for (bad, why) in [
        (vec![op::GET, 7, 0, 0, 0, 200, 0, b'x'], "key length 200"),
        (vec![77, 8, 0, 0, 0, 1, 0, b'x'], "unknown operation 77"),
        (vec![op::GET, 9, 0, 0, 0, 0, 0], "empty key"),
    ] {
        conn.send(&bad).unwrap();
        conn.recv(&mut buf).unwrap();
        let r = Response::parse(&buf).unwrap();
        assert_eq!(r.status, Status::BadRequest);
        assert_eq!(r.id, u32::from(bad[1]));
        let msg = String::from_utf8_lossy(r.body);
        assert!(msg.contains(why), "{msg}");
    }
    // Pipelining: 256 requests in flight, answered in order.
    let mut msg = Vec::new();
    for i in 0..256u32 {
        msg.clear();
        let k = key(&format!("p{i}"));
        let v = i.to_le_bytes();
        Request::Set {
            id: 1000 + i,
            key: &k,
            value: &v,
        }
        .encode(&mut msg);
        conn.send(&msg).unwrap();
    }
    for i in 0..256u32 {
        conn.recv(&mut buf).unwrap();
        let r = Response::parse(&buf).unwrap();
        assert_eq!((r.status, r.id), (Status::Ok, 1000 + i), "in order");
    }
    for i in 0..256u32 {
        msg.clear();
        let k = key(&format!("p{i}"));
        Request::Get { id: i, key: &k }.encode(&mut msg);
        conn.send(&msg).unwrap();
    }
    for i in 0..256u32 {
        conn.recv(&mut buf).unwrap();
        let r = Response::parse(&buf).unwrap();
        assert_eq!(
            (r.status, r.id, r.body),
            (Status::Ok, i, &i.to_le_bytes()[..])
        );
    }
}

#[test]
fn every_operation_over_machnet_and_tcp() {
    let s = Setup::new();
    exercise(&mut s.machnet(), "machnet");
    exercise(&mut TcpConn::connect(s.tcp).unwrap(), "tcp");
    // Both transports serve one store.
    let mut m = s.machnet();
    let (st, body) = call(
        &mut m,
        Request::Get {
            id: 1,
            key: b"tcp:p7",
        },
    );
    assert_eq!((st, body), (Status::Ok, 7u32.to_le_bytes().to_vec()));
}

#[test]
fn load_generator_verifies_every_answer_on_both_transports() {
    let s = Setup::new();
    let cfg = BenchConfig {
        connections: 2,
        depth: 8,
        keys: 500,
        value_size: 100,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        seed: 7,
    };
    bench::preload(&mut s.machnet(), cfg.keys, cfg.value_size).unwrap();
    let sock = s.client_socket();
    let machnet: Connector =
        Arc::new(move || Ok(Box::new(MachnetConn::connect(&sock, IP_A, PORT)?) as Box<dyn Conn>));
    let r = bench::run("machnet", machnet, &cfg).unwrap();
    assert!(r.requests > 0);
    let addr = s.tcp;
    let tcp: Connector = Arc::new(move || Ok(Box::new(TcpConn::connect(addr)?) as Box<dyn Conn>));
    let r = bench::run("tcp", tcp, &cfg).unwrap();
    assert!(r.requests > 0);
    // A store whose values differ from what the generator expects fails the run.
    let mut m = s.machnet();
    let v = bench::value(1, 99);
    call(
        &mut m,
        Request::Set {
            id: 1,
            key: &bench::key(1),
            value: &v,
        },
    );
    let one_key = BenchConfig {
        keys: 2,
        connections: 1,
        ..cfg
    };
    let sock = s.client_socket();
    let machnet: Connector =
        Arc::new(move || Ok(Box::new(MachnetConn::connect(&sock, IP_A, PORT)?) as Box<dyn Conn>));
    let e = bench::run("machnet", machnet, &one_key).unwrap_err();
    assert!(e.contains("wrong answer"), "{e}");
}
