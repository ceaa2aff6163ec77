//! Byte streams (`machnet::stream`, feature `tokio`) end to end through two real sidecars
//! (kernel UDP datapath) on 127.0.0.1 (server) and 127.0.0.2 (client) in this process.
#![cfg(feature = "tokio")]

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use machnet::stream::{MachnetListener, MachnetStream, StreamChannel};
use machnet::Machnet;
use machnet_sidecar::testing::{pattern, LoopbackSidecars};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 900;
/// Hang guard only (no test depends on how fast anything is).
const GUARD: Duration = Duration::from_secs(120);

struct Setup {
    _sidecars: LoopbackSidecars,
    listener: MachnetListener,
    client: StreamChannel,
    server_addr: SocketAddrV4,
}

/// Sidecars A and B (`engines` each), a listener on A, a client channel on B.
fn setup(engines: u16) -> Setup {
    let sidecars = LoopbackSidecars::start("stream", &[IP_A, IP_B], engines);
    let a = Machnet::attach_at(sidecars.socket(0)).unwrap();
    let b = Machnet::attach_at(sidecars.socket(1)).unwrap();
    let listener = MachnetListener::bind(&a, PORT).unwrap();
    assert_eq!(listener.local_addr(), SocketAddrV4::new(IP_A, PORT));
    let client = StreamChannel::open(&b, None).unwrap();
    Setup {
        _sidecars: sidecars,
        listener,
        client,
        server_addr: SocketAddrV4::new(IP_A, PORT),
    }
}

async fn guard<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("test hung")
}

/// Echo server: every accepted stream is copied back until EOF, then shut down.
fn spawn_echo(listener: MachnetListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut buf).await.expect("server read");
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.expect("server write");
                }
                s.shutdown().await.expect("server shutdown");
            });
        }
    });
}

/// Accepts one stream and reads it to its end (the task's result).
fn spawn_read_to_end(listener: MachnetListener) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    })
}

/// Writes `data` in chunks of `chunk` bytes and shuts down, while reading everything back.
async fn round_trip(s: MachnetStream, data: &[u8], chunk: usize) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(s);
    let data2 = data.to_vec();
    let writer = tokio::spawn(async move {
        for c in data2.chunks(chunk) {
            wr.write_all(c).await.unwrap();
        }
        wr.shutdown().await.unwrap();
        wr
    });
    let mut back = Vec::with_capacity(data.len());
    rd.read_to_end(&mut back).await.unwrap();
    drop(writer.await.unwrap());
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_write_is_split_into_messages_and_reassembled_intact() {
    let st = setup(1);
    spawn_echo(st.listener.clone());
    let seed = 0x5eed_2001;
    let data = pattern(seed, 20 << 20);
    guard(async {
        let s = st.client.connect(st.server_addr).await.unwrap();
        assert_eq!(s.peer_addr(), st.server_addr);
        assert_eq!(*s.local_addr().ip(), IP_B);
        // One write_all of 20 MiB: each poll_write sends at most one (8 MiB) message.
        let back = round_trip(s, &data, data.len()).await;
        assert!(back == data, "20 MiB came back different (seed {seed:#x})");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_channel_keep_their_bytes_apart() {
    let st = setup(2);
    spawn_echo(st.listener.clone());
    guard(async {
        let mut tasks = Vec::new();
        for i in 0..24u64 {
            let ch = st.client.clone();
            let addr = st.server_addr;
            tasks.push(tokio::spawn(async move {
                let s = ch.connect(addr).await.unwrap();
                let data = pattern(1000 + i, 200_000 + i as usize * 977);
                let back = round_trip(s, &data, 1 + (i as usize * 7919) % 20_000).await;
                assert!(
                    back == data,
                    "stream {i} (seed {}) came back different",
                    1000 + i
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_works_both_ways() {
    let st = setup(1);
    guard(async {
        // Client closes first: the server reads EOF and still answers.
        let server = tokio::spawn({
            let l = st.listener.clone();
            async move {
                let (mut s, peer) = l.accept().await.unwrap();
                assert_eq!(*peer.ip(), IP_B);
                let mut req = Vec::new();
                s.read_to_end(&mut req).await.unwrap();
                assert_eq!(req, b"question");
                s.write_all(b"answer after your EOF").await.unwrap();
                s.shutdown().await.unwrap();
                // Server closes first: the client still writes, the server still reads.
                let (mut s2, _) = l.accept().await.unwrap();
                s2.write_all(b"hello").await.unwrap();
                s2.shutdown().await.unwrap();
                let mut got = Vec::new();
                s2.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, b"written after the server's EOF");
            }
        });
        let mut c = st.client.connect(st.server_addr).await.unwrap();
        c.write_all(b"question").await.unwrap();
        c.shutdown().await.unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"answer after your EOF");

        let mut c2 = st.client.connect(st.server_addr).await.unwrap();
        let mut got = Vec::new();
        c2.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        c2.write_all(b"written after the server's EOF")
            .await
            .unwrap();
        c2.shutdown().await.unwrap();
        server.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_eof_keep_returning_eof_and_writes_after_shutdown_fail() {
    let st = setup(1);
    spawn_echo(st.listener.clone());
    guard(async {
        let mut c = st.client.connect(st.server_addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        c.shutdown().await.unwrap();
        c.shutdown().await.unwrap(); // idempotent
        let err = c.write_all(b"y").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"x");
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            assert_eq!(c.read(&mut buf).await.unwrap(), 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_abort_reads_as_connection_reset() {
    let st = setup(1);
    guard(async {
        let l = st.listener.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.abort();
        });
        let mut c = st.client.connect(st.server_addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        server.await.unwrap();
        let mut buf = [0u8; 16];
        let err = c.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let err = c.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_from_another_task_unblocks_a_pending_read_and_the_peer_sees_eof() {
    let st = setup(1);
    guard(async {
        let server = spawn_read_to_end(st.listener.clone());
        let mut c = st.client.connect(st.server_addr).await.unwrap();
        c.write_all(b"last words").await.unwrap();
        let closer = c.closer();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            c.read(&mut buf).await
        });
        // The read is pending (the server never writes) until the close.
        tokio::task::yield_now().await;
        closer.close();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected, "{err}");
        assert_eq!(server.await.unwrap(), b"last words");
        closer.close(); // after the stream is gone: nothing
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_closes_it_gracefully() {
    let st = setup(1);
    guard(async {
        let server = spawn_read_to_end(st.listener.clone());
        let mut c = st.client.connect(st.server_addr).await.unwrap();
        let data = pattern(7, 3 << 20);
        c.write_all(&data).await.unwrap();
        drop(c);
        assert!(server.await.unwrap() == data, "seed 7");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_does_not_stall_the_others() {
    let st = setup(1);
    let bulk = pattern(99, 12 << 20);
    guard(async {
        let l = st.listener.clone();
        let bulk2 = bulk.clone();
        tokio::spawn(async move {
            // First stream: a bulk sender. Second: an echo.
            let (mut s1, _) = l.accept().await.unwrap();
            let (mut s2, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s1.write_all(&bulk2).await.unwrap();
                s1.shutdown().await.unwrap();
                let mut rest = Vec::new();
                s1.read_to_end(&mut rest).await.unwrap();
            });
            let mut buf = [0u8; 1024];
            loop {
                let n = s2.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s2.write_all(&buf[..n]).await.unwrap();
            }
        });
        let mut unread = st.client.connect(st.server_addr).await.unwrap();
        let mut pinger = st.client.connect(st.server_addr).await.unwrap();
        // 200 round trips while `unread` receives 12 MiB nobody reads yet.
        for i in 0..200u32 {
            let msg = i.to_le_bytes();
            pinger.write_all(&msg).await.unwrap();
            let mut back = [0u8; 4];
            pinger.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }
        // Nothing was lost meanwhile.
        let mut got = Vec::new();
        unread.read_to_end(&mut got).await.unwrap();
        assert!(got == bulk, "bulk stream differs (seed 99)");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_work_on_one_sidecar_and_connect_failures_are_reported() {
    let st = setup(1);
    spawn_echo(st.listener.clone());
    guard(async {
        // A client on the server's own sidecar (same-host flow).
        let a = Machnet::attach_at(st._sidecars.socket(0)).unwrap();
        let local = StreamChannel::open(&a, None).unwrap();
        let s = local.connect(st.server_addr).await.unwrap();
        let data = pattern(5, 1 << 20);
        assert!(round_trip(s, &data, 4096).await == data, "seed 5");
        // Nobody listens on this port.
        let err = st
            .client
            .connect(SocketAddrV4::new(IP_A, PORT + 1))
            .await
            .unwrap_err();
        assert_eq!(
            machnet::ClientError::kind(&err),
            machnet::ErrorKind::ConnectionRefused,
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_beyond_the_accept_backlog_are_reset_and_the_waiting_ones_are_served() {
    const BACKLOG: usize = 2;
    const CLIENTS: usize = 6;
    let st = setup(1);
    st.listener.set_backlog(BACKLOG);
    let server_ch = &st.listener.channels()[0];
    guard(async {
        // Nobody accepts. A read pending on another flow of the listener's channel keeps the
        // channel pumped, so accepted flows reach the backlog as they come.
        let b = Machnet::attach_at(st._sidecars.socket(1)).unwrap();
        let keeper_listener = MachnetListener::bind(&b, PORT + 1).unwrap();
        let keeper = server_ch
            .connect(SocketAddrV4::new(IP_B, PORT + 1))
            .await
            .unwrap();
        let (keeper_peer, _) = keeper_listener.accept().await.unwrap();
        let keeper_reader = tokio::spawn(async move {
            let mut keeper = keeper;
            let mut sink = Vec::new();
            keeper.read_to_end(&mut sink).await.map(|_| sink)
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..CLIENTS {
            let ch = st.client.clone();
            let (tx, addr) = (tx.clone(), st.server_addr);
            tokio::spawn(async move {
                let outcome = async {
                    let mut s = ch.connect(addr).await.map_err(io::Error::other)?;
                    s.write_all(&[i as u8; 3]).await?;
                    let mut back = [0u8; 3];
                    s.read_exact(&mut back).await?;
                    io::Result::Ok(back)
                }
                .await;
                tx.send((i, outcome)).unwrap();
            });
        }
        // All but the backlog's worth are reset without anyone accepting.
        for _ in 0..CLIENTS - BACKLOG {
            let (i, outcome) = rx.recv().await.unwrap();
            let err = outcome.expect_err("a flow beyond the backlog was kept");
            assert_eq!(
                err.kind(),
                io::ErrorKind::ConnectionReset,
                "client {i}: {err}"
            );
        }
        assert_eq!(server_ch.backlog_resets(), (CLIENTS - BACKLOG) as u64);
        // The waiting ones are accepted and served.
        for _ in 0..BACKLOG {
            let (mut s, _) = st.listener.accept().await.unwrap();
            let mut got = [0u8; 3];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        }
        for _ in 0..BACKLOG {
            let (i, outcome) = rx.recv().await.unwrap();
            assert_eq!(outcome.unwrap(), [i as u8; 3], "client {i}");
        }
        drop(keeper_peer);
        assert!(keeper_reader.await.unwrap().unwrap().is_empty());
    })
    .await;
}

#[test]
fn streams_and_channels_are_send_and_sync_where_tokio_needs_it() {
    fn send_unpin_static<T: Send + Unpin + 'static>() {}
    fn send_sync<T: Send + Sync>() {}
    send_unpin_static::<MachnetStream>();
    send_sync::<StreamChannel>();
    send_sync::<MachnetListener>();
}
