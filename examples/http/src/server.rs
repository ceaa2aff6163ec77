//! The HTTP/1.1 service and the accept loops over TCP and Machnet.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest request body `POST /echo` accepts (bigger ones get 413).
pub const MAX_ECHO_BODY: usize = 64 << 20;
/// Request bodies all `POST /echo` requests together may hold at once; more wait (so many
/// clients sending large bodies cannot exhaust the server's memory).
pub const ECHO_MEMORY: usize = 256 << 20;
/// Unit of the echo memory budget.
const ECHO_UNIT: usize = 1 << 10;

/// What the server answers.
#[derive(Debug)]
pub struct ServerConfig {
    /// The body of `GET /` (its length is the configured response size).
    pub body: Bytes,
    /// hyper's `pipeline_flush`: answers to pipelined requests are flushed together (fewer
    /// writes, so fewer Machnet messages and syscalls). Off by default: hyper 1.x with it on
    /// never flushes the automatic 400 for a malformed request head (its flush returns early
    /// while unparsed bytes sit in the read buffer), so the client sees only a closed
    /// connection.
    pub pipeline_flush: bool,
    /// The echo memory budget, in ECHO_UNIT permits.
    echo_budget: tokio::sync::Semaphore,
}

impl ServerConfig {
    /// A `GET /` body of `size` bytes (a repeating printable pattern).
    pub fn with_body_size(size: usize) -> ServerConfig {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        ServerConfig {
            body: body.into(),
            pipeline_flush: false,
            echo_budget: tokio::sync::Semaphore::new(ECHO_MEMORY / ECHO_UNIT),
        }
    }
}

/// The response body: a fixed buffer, or an error text.
type Body = Either<Full<Bytes>, Full<Bytes>>;

fn text(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(msg.as_bytes()))));
    *r.status_mut() = status;
    r
}

/// Answers one request: `GET /` → the configured body, `POST /echo` → the request body.
async fn handle(
    req: Request<Incoming>,
    cfg: Arc<ServerConfig>,
) -> Result<Response<Body>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => Response::new(Either::Left(Full::new(cfg.body.clone()))),
        (&Method::POST, "/echo") => {
            // Reserve the body's memory first: its Content-Length, or the most a body may be.
            let len = req
                .body()
                .size_hint()
                .upper()
                .map_or(MAX_ECHO_BODY, |n| n as usize);
            if len > MAX_ECHO_BODY {
                return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"));
            }
            let units = len.div_ceil(ECHO_UNIT).max(1) as u32;
            let Ok(_reserved) = cfg.echo_budget.acquire_many(units).await else {
                return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
            };
            // Collected (not streamed back) so a client that writes the whole request before
            // reading cannot deadlock against full socket buffers; bounded by MAX_ECHO_BODY.
            match Limited::new(req.into_body(), MAX_ECHO_BODY).collect().await {
                Ok(body) => Response::new(Either::Left(Full::new(body.to_bytes()))),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
                }
                // The client went away or sent a broken body: hyper ends the connection.
                Err(_) => text(StatusCode::BAD_REQUEST, "bad body\n"),
            }
        }
        (_, "/" | "/echo") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// Serves HTTP/1.1 on one accepted byte stream until the client closes it or an error ends
/// it (a malformed request is answered with 400 by hyper, then the connection is closed).
pub async fn serve<I>(io: I, cfg: Arc<ServerConfig>) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    http1::Builder::new()
        .keep_alive(true)
        .pipeline_flush(cfg.pipeline_flush)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |req| handle(req, cfg.clone())),
        )
        .await
}

/// Accepts TCP connections forever, each served on its own task (TCP_NODELAY set).
pub async fn run_tcp(
    listener: tokio::net::TcpListener,
    cfg: Arc<ServerConfig>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            // Running out of descriptors and the like must not end the server.
            Err(e) => {
                eprintln!("tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _ = serve(stream, cfg).await;
        });
    }
}

/// Accepts Machnet flows forever (one channel per engine, a listen group), each served on its
/// own task.
pub async fn run_machnet(
    listener: machnet::stream::MachnetListener,
    cfg: Arc<ServerConfig>,
) -> std::io::Result<()> {
    loop {
        // A listener's accept fails only when its channels are gone (the sidecar ended).
        let (stream, _) = listener.accept().await?;
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _ = serve(stream, cfg).await;
        });
    }
}
