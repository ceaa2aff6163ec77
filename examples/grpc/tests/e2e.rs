//! gRPC (tonic) end to end over Machnet: the echo server on sidecar A (127.0.0.1), the client on
//! sidecar B (127.0.0.2), both real sidecars (kernel UDP datapath) in this process.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use machnet::stream::{MachnetListener, StreamChannel};
use machnet::Machnet;
use machnet_grpc_example::pb::{echo_client::EchoClient, EchoRequest};
use machnet_grpc_example::{
    connect, echo_client, serve, with_deadline, EchoService, HandlerEvent, DELAY_MS_HEADER,
};
use machnet_sidecar::testing::{pattern, LoopbackSidecars};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request};

const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 5051;
/// Hang guard only.
const GUARD: Duration = Duration::from_secs(120);

struct Setup {
    _sidecars: LoopbackSidecars,
    client: EchoClient<Channel>,
    events: mpsc::UnboundedReceiver<HandlerEvent>,
}

async fn setup() -> Setup {
    let sidecars = LoopbackSidecars::start("grpc", &[IP_A, IP_B], 1);
    let a = Machnet::attach_at(sidecars.socket(0)).unwrap();
    let b = Machnet::attach_at(sidecars.socket(1)).unwrap();
    let listener = MachnetListener::bind(&a, PORT).unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(serve(listener, EchoService::observed(tx)));
    let ch = StreamChannel::open(&b, None).unwrap();
    let channel = connect(ch, SocketAddrV4::new(IP_A, PORT)).await.unwrap();
    Setup {
        _sidecars: sidecars,
        client: echo_client(channel),
        events,
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<HandlerEvent>) -> HandlerEvent {
    tokio::time::timeout(GUARD, events.recv())
        .await
        .expect("hang guard")
        .expect("server gone")
}

fn req(payload: Vec<u8>) -> EchoRequest {
    EchoRequest { payload }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_echo_and_a_5_mib_message() {
    let mut st = setup().await;
    tokio::time::timeout(GUARD, async {
        let r = st.client.unary(req(b"hello".to_vec())).await.unwrap();
        assert_eq!(r.into_inner().payload, b"hello");
        let big = pattern(55, 5 << 20);
        let r = st.client.unary(req(big.clone())).await.unwrap();
        assert!(
            r.into_inner().payload == big,
            "5 MiB echo differs (seed 55)"
        );
        // Empty payloads are fine too.
        let r = st.client.unary(req(Vec::new())).await.unwrap();
        assert!(r.into_inner().payload.is_empty());
    })
    .await
    .expect("hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_echoes_1000_messages_in_order() {
    let mut st = setup().await;
    tokio::time::timeout(GUARD, async {
        let (tx, rx) = mpsc::channel(16);
        let sender = tokio::spawn(async move {
            for i in 0..1000u32 {
                let payload = pattern(u64::from(i), 1 + (i as usize * 37) % 3000);
                tx.send(req(payload)).await.unwrap();
            }
        });
        let mut replies = st
            .client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for i in 0..1000u32 {
            let r = replies
                .message()
                .await
                .unwrap()
                .expect("a reply per request");
            let want = pattern(u64::from(i), 1 + (i as usize * 37) % 3000);
            assert!(r.payload == want, "reply {i} differs (seed {i})");
        }
        sender.await.unwrap();
        assert!(replies.message().await.unwrap().is_none(), "stream ends");
    })
    .await
    .expect("hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_is_deadline_exceeded_and_the_handler_is_cancelled() {
    let mut st = setup().await;
    // The handler waits far longer than the deadline (it is cancelled, never answers).
    let mut r = Request::new(req(b"slow".to_vec()));
    r.metadata_mut()
        .insert(DELAY_MS_HEADER, "3600000".parse().unwrap());
    let deadline = Duration::from_millis(200);
    r.set_timeout(deadline);
    let err = with_deadline(deadline, st.client.unary(r))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert_eq!(next_event(&mut st.events).await, HandlerEvent::Started);
    // The deadline crossed Machnet: the server ended the handler itself.
    assert_eq!(next_event(&mut st.events).await, HandlerEvent::Cancelled);
    // The connection still serves.
    let ok = st.client.unary(req(b"after".to_vec())).await.unwrap();
    assert_eq!(ok.into_inner().payload, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_cancels_the_server_handler() {
    let mut st = setup().await;
    let mut client = st.client.clone();
    let call = tokio::spawn(async move {
        let mut r = Request::new(req(b"never answered".to_vec()));
        r.metadata_mut()
            .insert(DELAY_MS_HEADER, "3600000".parse().unwrap());
        client.unary(r).await
    });
    assert_eq!(next_event(&mut st.events).await, HandlerEvent::Started);
    // The client gives up: HTTP/2 resets the stream, the server drops the handler.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(next_event(&mut st.events).await, HandlerEvent::Cancelled);
    let ok = st.client.unary(req(b"still fine".to_vec())).await.unwrap();
    assert_eq!(ok.into_inner().payload, b"still fine");
}
