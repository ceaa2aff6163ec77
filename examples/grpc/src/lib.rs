//! gRPC over Machnet with tonic (issue 18): the `machnet.echo.v1.Echo` service
//! (proto/echo.proto) served from a [`MachnetListener`] with `serve_with_incoming`, and a
//! client whose HTTP/2 connections are Machnet streams opened by
//! [`StreamChannel::connect`]. Neither tonic nor the service knows it is not on TCP.

use std::net::SocketAddrV4;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use machnet::stream::{MachnetListener, MachnetStream, StreamChannel};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// Generated messages and stubs of `machnet.echo.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("machnet.echo.v1");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

/// Request metadata key: the unary handler waits this many milliseconds before answering (to
/// test deadlines and cancellation).
pub const DELAY_MS_HEADER: &str = "x-echo-delay-ms";

/// Largest message the example's client and server accept (gRPC's default is 4 MiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// What the service reports to an observer (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerEvent {
    /// A unary call started.
    Started,
    /// A unary call's handler was dropped before it answered (the client cancelled, or the
    /// deadline passed).
    Cancelled,
    /// A unary call answered.
    Answered,
}

/// The echo service.
#[derive(Debug, Clone, Default)]
pub struct EchoService {
    observer: Option<mpsc::UnboundedSender<HandlerEvent>>,
}

impl EchoService {
    /// A service that reports what its unary handlers do to `observer`.
    pub fn observed(observer: mpsc::UnboundedSender<HandlerEvent>) -> EchoService {
        EchoService {
            observer: Some(observer),
        }
    }

    fn report(&self, ev: HandlerEvent) {
        if let Some(o) = &self.observer {
            let _ = o.send(ev);
        }
    }
}

/// Reports `Cancelled` when dropped before `answered` is set.
struct CancelGuard<'a> {
    service: &'a EchoService,
    answered: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.service.report(HandlerEvent::Cancelled);
        }
    }
}

type ReplyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.report(HandlerEvent::Started);
        let mut guard = CancelGuard {
            service: self,
            answered: false,
        };
        let delay = match request.metadata().get(DELAY_MS_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| Status::invalid_argument("bad x-echo-delay-ms"))?,
            ),
        };
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        guard.answered = true;
        self.report(HandlerEvent::Answered);
        Ok(Response::new(EchoReply {
            payload: request.into_inner().payload,
        }))
    }

    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match incoming.message().await {
                    Ok(Some(req)) => Ok(EchoReply {
                        payload: req.payload,
                    }),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The service with the example's message size limits.
pub fn echo_server(service: EchoService) -> EchoServer<EchoService> {
    EchoServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// A [`MachnetStream`] as tonic's server wants its connections (`Connected`: the peer's
/// address is the connect info).
#[derive(Debug)]
pub struct ServerConn(pub MachnetStream);

impl Connected for ServerConn {
    type ConnectInfo = SocketAddrV4;

    fn connect_info(&self) -> SocketAddrV4 {
        self.0.peer_addr()
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The listener's accepted streams as the `incoming` stream of `serve_with_incoming`.
#[derive(Debug)]
pub struct Incoming(pub MachnetListener);

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<ServerConn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_accept(cx)
            .map(|r| Some(r.map(|(s, _)| ServerConn(s))))
    }
}

/// Serves `service` on every stream `listener` accepts until the listener fails.
pub async fn serve(
    listener: MachnetListener,
    service: EchoService,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(echo_server(service))
        .serve_with_incoming(Incoming(listener))
        .await
}

/// A tonic channel whose connections are Machnet streams from `channel` to `server`.
/// HTTP/2 runs over one stream (reconnecting with a new one if it breaks).
pub async fn connect(
    channel: StreamChannel,
    server: SocketAddrV4,
) -> Result<Channel, tonic::transport::Error> {
    // The URI only names the :authority; the connector decides where to go.
    let endpoint = Endpoint::from_shared(format!("http://{server}"))?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_uri| {
            let channel = channel.clone();
            async move {
                let stream = channel
                    .connect(server)
                    .await
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// An echo client over `channel` with the example's message size limits.
pub fn echo_client(channel: Channel) -> pb::echo_client::EchoClient<Channel> {
    pb::echo_client::EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Runs `call` with a deadline of `timeout`, as gRPC clients do: the deadline travels to the
/// server as `grpc-timeout` (set it on the request with [`Request::set_timeout`]) and is also
/// enforced here, so the call ends with `DEADLINE_EXCEEDED` when it passes. (tonic 0.14's
/// server reports an expired `grpc-timeout` as `CANCELLED` "Timeout expired"; that answer is
/// reported as `DEADLINE_EXCEEDED` too, which is what the gRPC spec asks for.)
pub async fn with_deadline<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(Status::deadline_exceeded("deadline exceeded")),
        Ok(Err(s)) if s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired" => {
            Err(Status::deadline_exceeded(s.message().to_string()))
        }
        Ok(r) => r,
    }
}
