//! The per-process attachment to the sidecar: the control connection (docs/CHANNEL.md §2).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machnet_channel::control::{
    ControlError, Request, Response, CONTROL_VERSION, MAX_CONTROL_MESSAGE,
};

use crate::channel::Channel;
use crate::error::{AttachError, ListenError, OpenChannelError, RequestError};
use crate::sys::{self, PacketError};

/// Where the sidecar listens unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/machnet/machnet.sock";
/// Environment variable that overrides [`DEFAULT_SOCKET_PATH`] for [`Machnet::attach`].
pub const SOCKET_ENV: &str = "MACHNET_SOCKET";
/// How long a control request waits for the sidecar's answer unless changed with
/// [`Machnet::set_control_timeout`].
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the sidecar said about itself when this process attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarInfo {
    /// The sidecar's IPv4 address: local address of every flow.
    pub local_ip: Ipv4Addr,
    /// Number of engines (valid engine indices are `0..engines`).
    pub engines: u16,
    /// Largest message the sidecar carries, in bytes.
    pub max_message_len: u32,
}

/// A process's attachment to the Machnet sidecar.
///
/// Holds the control connection (a Unix `SOCK_SEQPACKET` socket). Cloning is cheap (an `Arc`)
/// and every clone, like every [`Channel`] opened from it, shares the one connection; it is
/// closed when the last of them is dropped, and the sidecar then aborts every flow of this
/// process and releases its channels. `Machnet` is `Send + Sync`: control requests from several
/// threads are serialised by a mutex.
#[derive(Clone)]
pub struct Machnet {
    inner: Arc<Inner>,
}

struct Inner {
    fd: OwnedFd,
    /// Serialises request/answer pairs; holds why the connection became unusable, if it did.
    lock: Mutex<Option<String>>,
    timeout_ns: AtomicU64,
    info: SidecarInfo,
    /// Set once the control connection was seen hung up: the sidecar is gone for good, and
    /// every later call fails with `SidecarGone` without a system call.
    gone: AtomicBool,
}

impl std::fmt::Debug for Machnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machnet")
            .field("fd", &self.inner.fd.as_raw_fd())
            .field("info", &self.inner.info)
            .finish()
    }
}

/// The socket path [`Machnet::attach`] uses: `$MACHNET_SOCKET` if set and not empty, else
/// [`DEFAULT_SOCKET_PATH`].
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET_PATH),
    }
}

fn client_name() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into());
    format!(
        "machnet-rs/{} {} pid {}",
        env!("CARGO_PKG_VERSION"),
        exe,
        std::process::id()
    )
}

impl Machnet {
    /// Attaches to the sidecar at [`default_socket_path`] (`$MACHNET_SOCKET` or
    /// `/run/machnet/machnet.sock`).
    pub fn attach() -> Result<Machnet, AttachError> {
        Self::attach_at(default_socket_path())
    }

    /// Attaches to the sidecar listening at `path`.
    pub fn attach_at(path: impl AsRef<Path>) -> Result<Machnet, AttachError> {
        let path = path.as_ref();
        let fd = sys::connect_seqpacket(path).map_err(|source| AttachError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Self::attach_fd(fd)
    }

    /// Attaches over an already connected `SOCK_SEQPACKET` socket (for example one inherited
    /// from a supervisor): performs the `hello` exchange and keeps the socket as the control
    /// connection.
    pub fn attach_fd(fd: OwnedFd) -> Result<Machnet, AttachError> {
        use nix::sys::socket::{getsockopt, sockopt, SockType};
        match getsockopt(&fd, sockopt::SockType) {
            Ok(SockType::SeqPacket) => {}
            Ok(other) => {
                return Err(AttachError::Request(RequestError::Protocol(format!(
                    "the control connection must be a SOCK_SEQPACKET socket, not {other:?}"
                ))))
            }
            Err(e) => return Err(AttachError::Request(RequestError::Io(e.into()))),
        }
        let mut inner = Inner {
            fd,
            lock: Mutex::new(None),
            timeout_ns: AtomicU64::new(DEFAULT_CONTROL_TIMEOUT.as_nanos() as u64),
            info: SidecarInfo {
                local_ip: Ipv4Addr::UNSPECIFIED,
                engines: 0,
                max_message_len: 0,
            },
            gone: AtomicBool::new(false),
        };
        let hello = Request::Hello {
            version: CONTROL_VERSION,
            client: client_name(),
        };
        let (resp, fds) = inner.request(&hello).map_err(AttachError::Request)?;
        if !fds.is_empty() {
            return Err(AttachError::Request(RequestError::Protocol(
                "descriptors sent with the hello answer".into(),
            )));
        }
        match resp {
            Response::Hello {
                version,
                local_ip,
                engines,
                max_message_len,
            } => {
                if version != CONTROL_VERSION {
                    return Err(AttachError::Version {
                        ours: CONTROL_VERSION,
                        theirs: version,
                    });
                }
                if engines == 0 || max_message_len == 0 {
                    return Err(AttachError::Request(RequestError::Protocol(format!(
                        "hello announces {engines} engines and a maximum message of \
                         {max_message_len} bytes"
                    ))));
                }
                inner.info = SidecarInfo {
                    local_ip,
                    engines,
                    max_message_len,
                };
            }
            Response::Error {
                code: ControlError::Version,
                message,
            } => {
                return Err(AttachError::Refused {
                    code: ControlError::Version,
                    message,
                })
            }
            Response::Error { code, message } => {
                return Err(AttachError::Refused { code, message })
            }
            other => {
                return Err(AttachError::Request(RequestError::Protocol(format!(
                    "expected a hello answer, got {other:?}"
                ))))
            }
        }
        Ok(Machnet {
            inner: Arc::new(inner),
        })
    }

    /// What the sidecar announced at attach time.
    pub fn info(&self) -> SidecarInfo {
        self.inner.info
    }

    /// The sidecar's IPv4 address.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.inner.info.local_ip
    }

    /// Number of sidecar engines.
    pub fn engines(&self) -> u16 {
        self.inner.info.engines
    }

    /// Largest message the sidecar carries.
    pub fn max_message_len(&self) -> u32 {
        self.inner.info.max_message_len
    }

    /// Changes how long control requests wait for an answer (default
    /// [`DEFAULT_CONTROL_TIMEOUT`]). Applies to every clone.
    pub fn set_control_timeout(&self, timeout: Duration) {
        self.inner.timeout_ns.store(
            timeout.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Whether the control connection hung up (the sidecar is gone). Never blocks. Once it
    /// returned `true` it always does.
    pub fn is_sidecar_gone(&self) -> bool {
        !self.sidecar_alive()
    }

    /// `false` if the sidecar is gone: known already, or the control socket hung up now (one
    /// zero-timeout `poll`). The sidecar's end of the socket is closed by the kernel when its
    /// process dies, however it dies, so a call made after the death always sees the hang-up
    /// (docs/CHANNEL.md §4, "A dead sidecar").
    pub(crate) fn sidecar_alive(&self) -> bool {
        if self.inner.gone.load(Ordering::Relaxed) {
            return false;
        }
        if sys::hung_up(self.inner.fd.as_raw_fd()) {
            self.inner.gone.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Opens a channel on `engine` (`None`: the sidecar picks one round-robin).
    ///
    /// The returned [`Channel`] is meant for one thread: see the crate documentation.
    pub fn open_channel(&self, engine: Option<u16>) -> Result<Channel, OpenChannelError> {
        let (resp, fds) = self
            .inner
            .request(&Request::OpenChannel { engine })
            .map_err(OpenChannelError::Request)?;
        let (channel, got_engine, len) = match resp {
            Response::ChannelOpened {
                channel,
                engine,
                len,
            } => (channel, engine, len),
            Response::Error { code, message } => {
                return Err(OpenChannelError::Request(RequestError::Refused {
                    code,
                    message,
                }))
            }
            other => {
                return Err(OpenChannelError::Request(RequestError::Protocol(format!(
                    "expected channel_opened, got {other:?}"
                ))))
            }
        };
        let result = (|| {
            if engine.is_some_and(|e| e != got_engine) || got_engine >= self.inner.info.engines {
                return Err(OpenChannelError::Request(RequestError::Protocol(format!(
                    "asked for engine {engine:?}, got engine {got_engine} of {}",
                    self.inner.info.engines
                ))));
            }
            let [memfd, app_efd, sidecar_efd]: [OwnedFd; 3] =
                fds.try_into().map_err(|v: Vec<OwnedFd>| {
                    OpenChannelError::BadDescriptors(format!(
                        "expected 3 descriptors, got {}",
                        v.len()
                    ))
                })?;
            Channel::from_parts(
                self.clone(),
                channel,
                got_engine,
                len,
                memfd,
                app_efd,
                sidecar_efd,
            )
        })();
        if result.is_err() {
            // Give the channel back; the sidecar may well be the reason this failed.
            let _ = self.close_channel_id(channel, true);
        }
        result
    }

    /// Whether the sidecar's death is already known (no system call).
    pub(crate) fn is_known_gone(&self) -> bool {
        self.inner.gone.load(Ordering::Relaxed)
    }

    /// Records that the control connection was seen hung up (by a wait that polled it).
    pub(crate) fn mark_gone(&self) {
        self.inner.gone.store(true, Ordering::Relaxed);
    }

    pub(crate) fn control_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    pub(crate) fn close_channel_id(&self, channel: u32, abort: bool) -> Result<(), RequestError> {
        self.inner
            .expect_ok(&Request::CloseChannel { channel, abort })
    }

    pub(crate) fn listen(&self, channel: u32, port: u16) -> Result<(), ListenError> {
        self.port_request(Request::Listen { channel, port }, port)
    }

    pub(crate) fn unlisten(&self, channel: u32, port: u16) -> Result<(), ListenError> {
        self.port_request(Request::Unlisten { channel, port }, port)
    }

    fn port_request(&self, req: Request, port: u16) -> Result<(), ListenError> {
        match self.inner.expect_ok(&req) {
            Ok(()) => Ok(()),
            Err(RequestError::Refused {
                code: ControlError::PortInUse,
                ..
            }) => Err(ListenError::PortInUse(port)),
            Err(RequestError::Refused {
                code: ControlError::InvalidPort,
                ..
            }) => Err(ListenError::InvalidPort(port)),
            Err(e) => Err(ListenError::Request(e)),
        }
    }
}

/// The control socket; it becomes readable with `POLLHUP` when the sidecar is gone. Do not read
/// from or write to it.
impl AsRawFd for Machnet {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }
}

impl Inner {
    fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed))
    }

    /// One request and its answer (with the descriptors that came along).
    fn request(&self, req: &Request) -> Result<(Response, Vec<OwnedFd>), RequestError> {
        // A panic while holding the lock cannot leave the connection half-used in a way the
        // `broken` marker does not cover, so a poisoned lock is simply taken over.
        let mut broken = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.gone.load(Ordering::Relaxed) {
            return Err(RequestError::SidecarGone);
        }
        if let Some(why) = broken.as_ref() {
            // A connection broken by a timeout, say, whose sidecar has died since.
            if sys::hung_up(self.fd.as_raw_fd()) {
                self.gone.store(true, Ordering::Relaxed);
                return Err(RequestError::SidecarGone);
            }
            return Err(RequestError::Broken(why.clone()));
        }
        let timeout = self.timeout();
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(1 << 32));
        let fd = self.fd.as_fd().as_raw_fd();
        let fail = |broken: &mut Option<String>, e: PacketError| -> RequestError {
            let err = match e {
                PacketError::Closed => RequestError::SidecarGone,
                PacketError::TimedOut => RequestError::TimedOut(timeout),
                PacketError::Truncated => RequestError::Protocol(format!(
                    "answer longer than {MAX_CONTROL_MESSAGE} bytes or with too many descriptors"
                )),
                PacketError::Io(e) => RequestError::Io(e),
            };
            *broken = Some(err.to_string());
            err
        };
        let mut buf = vec![0u8; MAX_CONTROL_MESSAGE];
        let received = match sys::send_packet(fd, &req.encode(), deadline) {
            Ok(()) => sys::recv_packet(fd, &mut buf, deadline),
            Err(e) => Err(e),
        };
        let (n, fds) = match received {
            Ok(r) => r,
            Err(PacketError::Closed) => {
                self.gone.store(true, Ordering::Relaxed);
                // The sidecar may have said why before hanging up (it refuses an unauthorised
                // peer at once, before reading anything).
                let err = fail(&mut broken, PacketError::Closed);
                return match last_words(fd, &mut buf) {
                    Some(resp) => Ok((resp, Vec::new())),
                    None => Err(err),
                };
            }
            Err(e) => return Err(fail(&mut broken, e)),
        };
        match Response::decode(&buf[..n]) {
            Ok(resp) => Ok((resp, fds)),
            Err(_) => {
                let err = RequestError::Protocol(format!(
                    "undecodable answer: {:?}",
                    String::from_utf8_lossy(&buf[..n.min(200)])
                ));
                *broken = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// A request whose only good answer is `ok`, without descriptors.
    fn expect_ok(&self, req: &Request) -> Result<(), RequestError> {
        match self.request(req)? {
            (Response::Ok, fds) if fds.is_empty() => Ok(()),
            (Response::Error { code, message }, fds) if fds.is_empty() => {
                Err(RequestError::Refused { code, message })
            }
            (other, _) => Err(RequestError::Protocol(format!(
                "expected ok, got {other:?} (or unexpected descriptors)"
            ))),
        }
    }
}

/// An error answer still queued on a connection the sidecar closed, if any.
fn last_words(fd: RawFd, buf: &mut [u8]) -> Option<Response> {
    // A connection reset is reported once before the queued packets: try twice.
    for _ in 0..2 {
        match sys::recv_packet(fd, buf, Instant::now()) {
            Ok((n, _fds)) => {
                return match Response::decode(&buf[..n]) {
                    Ok(resp @ Response::Error { .. }) => Some(resp),
                    _ => None,
                }
            }
            Err(PacketError::Closed) => continue,
            Err(_) => return None,
        }
    }
    None
}
