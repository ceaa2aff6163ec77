//! The HTTP server end to end, over kernel TCP and over Machnet (two real sidecars on
//! 127.0.0.1 / 127.0.0.2, in this process), with the same cases on both: keep-alive,
//! pipelining, a request larger than one Machnet message, a client that disconnects
//! mid-response, malformed HTTP, and the load generator against the real server.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use machnet_http::load::{self, LoadConfig};
use machnet_http::server::{self, ServerConfig};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Every test's bound on a step that should take milliseconds (a hang fails instead of blocking).
const STEP: Duration = Duration::from_secs(30);
/// `GET /` body of the "big" server: several Machnet messages, several socket buffers.
const BIG_BODY: usize = 8 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// How a test reaches its servers: `small` answers `GET /` with 64 B, `big` with BIG_BODY.
struct Target {
    connector: Connector,
    small: SocketAddrV4,
    big: SocketAddrV4,
    // Keeps the sidecars (Machnet) alive for the test.
    _guard: Box<dyn Send>,
}

#[derive(Clone)]
enum Connector {
    Tcp,
    Machnet(machnet::stream::StreamChannel),
}

impl Target {
    async fn connect_to(&self, addr: SocketAddrV4) -> Stream {
        match &self.connector {
            Connector::Tcp => Box::new(
                machnet_http::transport::connect_tcp(addr)
                    .await
                    .expect("tcp connect"),
            ),
            Connector::Machnet(ch) => Box::new(ch.connect(addr).await.expect("machnet connect")),
        }
    }

    async fn small(&self) -> Stream {
        self.connect_to(self.small).await
    }
}

async fn tcp_target() -> Target {
    let mut addrs = Vec::new();
    for size in [64, BIG_BODY] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(a) = l.local_addr().unwrap() else {
            unreachable!()
        };
        addrs.push(a);
        tokio::spawn(server::run_tcp(
            l,
            Arc::new(ServerConfig::with_body_size(size)),
        ));
    }
    Target {
        connector: Connector::Tcp,
        small: addrs[0],
        big: addrs[1],
        _guard: Box::new(()),
    }
}

async fn machnet_target() -> Target {
    use machnet::stream::{MachnetListener, StreamChannel};
    use machnet_sidecar::testing::LoopbackSidecars;
    use std::net::Ipv4Addr;
    const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    let sidecars = LoopbackSidecars::start("http-e2e", &[IP_A, IP_B], 2);
    let server_side = machnet::Machnet::attach_at(sidecars.socket(0)).unwrap();
    let mut addrs = Vec::new();
    for (port, size) in [(80, 64), (81, BIG_BODY)] {
        let l = MachnetListener::bind(&server_side, port).unwrap();
        assert_eq!(l.channels().len(), 2, "one channel per engine");
        addrs.push(SocketAddrV4::new(IP_A, port));
        tokio::spawn(server::run_machnet(
            l,
            Arc::new(ServerConfig::with_body_size(size)),
        ));
    }
    let client_side = machnet::Machnet::attach_at(sidecars.socket(1)).unwrap();
    let ch = StreamChannel::open(&client_side, None).unwrap();
    Target {
        connector: Connector::Machnet(ch),
        small: addrs[0],
        big: addrs[1],
        _guard: Box::new((sidecars, server_side, client_side)),
    }
}

/// A response as the test reads it.
#[derive(Debug)]
struct Response {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

/// Reads one response (Content-Length bodies) from `s`, keeping what follows it in `buf`.
async fn read_response<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> Response {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = r.parse(buf).expect("a valid response head") {
            let status = r.code.unwrap();
            let header = |name: &str| {
                r.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_string())
            };
            let len: usize = header("content-length")
                .expect("content-length")
                .parse()
                .unwrap();
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            while buf.len() < n + len {
                read_more(s, buf).await;
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Response {
                status,
                close,
                body,
            };
        }
        read_more(s, buf).await;
    }
}

async fn read_more<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 256 << 10];
    let n = tokio::time::timeout(STEP, s.read(&mut chunk))
        .await
        .expect("no hang")
        .expect("read");
    assert!(n > 0, "connection closed before the response was complete");
    buf.extend_from_slice(&chunk[..n]);
}

fn get() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()
}

fn post_echo(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn small_body() -> Vec<u8> {
    ServerConfig::with_body_size(64).body.to_vec()
}

async fn keep_alive(t: Target) {
    let mut s = t.small().await;
    let mut buf = Vec::new();
    for i in 0..300u32 {
        let req = if i % 2 == 0 {
            get()
        } else {
            post_echo(format!("request {i}").as_bytes())
        };
        s.write_all(&req).await.unwrap();
        let r = read_response(&mut s, &mut buf).await;
        assert_eq!(r.status, 200, "request {i}");
        assert!(!r.close, "the connection is kept alive");
        let want = if i % 2 == 0 {
            small_body()
        } else {
            format!("request {i}").into_bytes()
        };
        assert_eq!(r.body, want, "request {i}");
    }
}

async fn pipelining(t: Target) {
    let mut s = t.small().await;
    // 64 requests written at once, answered in order.
    let mut all = Vec::new();
    let n = 64;
    for i in 0..n {
        all.extend(if i % 3 == 0 {
            get()
        } else {
            post_echo(format!("pipelined {i:03}").as_bytes())
        });
    }
    s.write_all(&all).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..n {
        let r = read_response(&mut s, &mut buf).await;
        assert_eq!(r.status, 200);
        let want = if i % 3 == 0 {
            small_body()
        } else {
            format!("pipelined {i:03}").into_bytes()
        };
        assert_eq!(r.body, want, "response {i} out of order");
    }
    assert!(buf.is_empty(), "nothing after the last response");
}

async fn larger_than_one_message(t: Target) {
    // 12 MiB, above the 8 MiB a Machnet message can carry; a second request follows on the
    // same connection.
    let seed = 0x4854_5450_0012_u64;
    let mut body = vec![0u8; 12 << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut body);
    let s = t.small().await;
    let mut req = post_echo(&body);
    req.extend(get());
    // Written by its own task while this one reads, as a client that does not wait for the
    // whole request to be sent would.
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        wr.write_all(&req).await.unwrap();
        wr
    });
    let mut buf = Vec::new();
    let r = read_response(&mut rd, &mut buf).await;
    assert_eq!(r.status, 200, "seed {seed:#x}");
    assert!(r.body == body, "12 MiB echo differs (seed {seed:#x})");
    assert_eq!(read_response(&mut rd, &mut buf).await.body, small_body());
    writer.await.unwrap();
}

async fn disconnect_mid_response(t: Target) {
    for round in 0..3 {
        let mut s = t.connect_to(t.big).await;
        s.write_all(&get()).await.unwrap();
        // Read part of the 8 MiB body, then go away.
        let mut got = 0;
        let mut chunk = vec![0u8; 64 << 10];
        while got < 256 << 10 {
            let n = tokio::time::timeout(STEP, s.read(&mut chunk))
                .await
                .expect("no hang")
                .unwrap();
            assert!(n > 0);
            got += n;
        }
        drop(s);
        // The server serves the next client in full.
        let mut s = t.connect_to(t.big).await;
        s.write_all(&get()).await.unwrap();
        let r = read_response(&mut s, &mut Vec::new()).await;
        assert_eq!((r.status, r.body.len()), (200, BIG_BODY), "round {round}");
    }
}

async fn malformed_gets_400(t: Target) {
    // A client with a keep-alive connection open before and after the bad one.
    let mut good = t.small().await;
    let mut good_buf = Vec::new();
    good.write_all(&get()).await.unwrap();
    assert_eq!(read_response(&mut good, &mut good_buf).await.status, 200);
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost t\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
    ] {
        let mut s = t.small().await;
        s.write_all(bad).await.unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        // The server closes that connection: EOF (or a reset) after the 400.
        let mut rest = [0u8; 64];
        let end = tokio::time::timeout(STEP, s.read(&mut rest))
            .await
            .expect("no hang");
        assert!(
            matches!(end, Ok(0) | Err(_)),
            "connection ends after the 400: {end:?}"
        );
        good.write_all(&post_echo(b"still here")).await.unwrap();
        let r = read_response(&mut good, &mut good_buf).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"still here"[..]));
    }
    // A body above the echo limit is refused before it is read.
    let mut s = t.small().await;
    s.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut Vec::new()).await.status, 413);
    // Unknown path and method: answered, connection kept.
    good.write_all(b"GET /nope HTTP/1.1\r\n\r\nDELETE / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut good, &mut good_buf).await.status, 404);
    assert_eq!(read_response(&mut good, &mut good_buf).await.status, 405);
}

async fn load_generator(t: Target) {
    // 2000 req/s for 0.5 s over 3 connections: every request is answered and measured.
    let config = LoadConfig {
        rate: 2000,
        duration: Duration::from_millis(500),
        connections: 3,
        post_body: None,
        drain: STEP,
    };
    let target = &t;
    let report = load::run(&config, || async move { Ok(target.small().await) })
        .await
        .unwrap();
    let s = &report.stats;
    assert_eq!(
        (s.sent, s.ok, s.bad_status, s.lost),
        (1000, 1000, 0, 0),
        "{:?}",
        s.failure
    );
    assert_eq!(s.latency_ns.len(), 1000);
    assert!(s.failure.is_none());
    // POST /echo with a 1 KiB body.
    let config = LoadConfig {
        post_body: Some(1024),
        rate: 1000,
        ..config
    };
    let report = load::run(&config, || async move { Ok(target.small().await) })
        .await
        .unwrap();
    assert_eq!(
        (report.stats.sent, report.stats.ok, report.stats.lost),
        (500, 500, 0)
    );
}

macro_rules! cases {
    ($module:ident, $target:ident $(, #[$attr:meta])?) => {
        $(#[$attr])?
        mod $module {
            cases!(@case $target, keep_alive, pipelining, larger_than_one_message, disconnect_mid_response, malformed_gets_400, load_generator);
        }
    };
    (@case $target:ident, $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(super::$target().await).await;
            }
        )*
    };
}

cases!(over_tcp, tcp_target);
cases!(over_machnet, machnet_target);

/// Over Machnet a client can also reset its flow mid-response (`abort`): the server survives
/// and serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machnet_client_reset_mid_response() {
    let t = machnet_target().await;
    let Connector::Machnet(ch) = &t.connector else {
        unreachable!()
    };
    for round in 0..3 {
        let mut s = ch.connect(t.big).await.expect("connect");
        s.write_all(&get()).await.unwrap();
        let mut chunk = vec![0u8; 64 << 10];
        let mut got = 0;
        while got < 256 << 10 {
            let n = tokio::time::timeout(STEP, s.read(&mut chunk))
                .await
                .expect("no hang")
                .unwrap();
            assert!(n > 0);
            got += n;
        }
        s.abort();
        let mut s = t.connect_to(t.big).await;
        s.write_all(&get()).await.unwrap();
        let r = read_response(&mut s, &mut Vec::new()).await;
        assert_eq!((r.status, r.body.len()), (200, BIG_BODY), "round {round}");
    }
}
