//! A fake sidecar for tests: serves the control protocol on one end of a socketpair, creates
//! real channels (sealed memfd + two eventfds, sent with SCM_RIGHTS) and hands the sidecar's
//! end of each channel to the test, which plays the engine with machnet-core's rings.

#![allow(dead_code)]

use std::io::IoSlice;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use machnet::Machnet;
use machnet_channel::control::{ControlError, Request, Response, CONTROL_VERSION};
use machnet_channel::{
    ChannelLayout, ChannelViews, CloseCode, Consumer, FlowInfo, Producer, PushError, RecordHeader,
    RecordKind,
};
use nix::sys::socket::{
    sendmsg, shutdown, socketpair, AddressFamily, ControlMessage, MsgFlags, Shutdown, SockFlag,
    SockType, UnixAddr,
};

pub(crate) const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// A port the fake refuses with `PortInUse`.
pub(crate) const BUSY_PORT: u16 = 7;

#[derive(Clone)]
pub(crate) struct Config {
    /// Answer to `hello` (default: version 1, 2 engines).
    pub hello: Option<Response>,
    pub layout: ChannelLayout,
    pub seal: bool,
    /// Added to the real length in `channel_opened`.
    pub len_delta: i64,
    /// Number of descriptors sent with `channel_opened` (3 normally).
    pub fds: usize,
    /// Refuse the connection at once (`unauthorized`, then hang up) without reading anything.
    pub refuse_at_accept: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hello: None,
            layout: ChannelLayout::new(64 * 1024, 64 * 1024, 16 * 1024).unwrap(),
            seal: true,
            len_delta: 0,
            fds: 3,
            refuse_at_accept: false,
        }
    }
}

pub(crate) struct Fake {
    pub channels: mpsc::Receiver<FakeChannel>,
    pub requests: mpsc::Receiver<Request>,
    /// A duplicate of the server's socket, to shut it down (an fd number would be reused by
    /// other tests once the server thread closed it).
    server: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    /// Starts the fake and returns the client's end of the control connection.
    pub(crate) fn start(cfg: Config) -> (OwnedFd, Fake) {
        let (client, server) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (ch_tx, ch_rx) = mpsc::channel();
        let (req_tx, req_rx) = mpsc::channel();
        let dup = server.try_clone().unwrap();
        let thread = std::thread::spawn(move || serve(server, cfg, ch_tx, req_tx));
        (
            client,
            Fake {
                channels: ch_rx,
                requests: req_rx,
                server: Some(dup),
                thread: Some(thread),
            },
        )
    }

    /// Starts the fake and attaches to it.
    pub(crate) fn attach(cfg: Config) -> (Machnet, Fake) {
        let (fd, fake) = Fake::start(cfg);
        let m = Machnet::attach_fd(fd).expect("attach to the fake sidecar");
        m.set_control_timeout(Duration::from_secs(5));
        (m, fake)
    }

    /// The sidecar's end of the next channel opened.
    pub(crate) fn channel(&self) -> FakeChannel {
        self.channels
            .recv_timeout(Duration::from_secs(5))
            .expect("a channel was opened")
    }

    /// Simulates the sidecar's death: its control connection hangs up.
    pub(crate) fn kill(&mut self) {
        if let Some(fd) = self.server.take() {
            let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.kill();
    }
}

fn send(fd: &OwnedFd, resp: &Response, fds: &[RawFd]) {
    let data = resp.encode();
    let iov = [IoSlice::new(&data)];
    let cmsgs = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    let _ = sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None);
}

fn serve(
    fd: OwnedFd,
    cfg: Config,
    channels: mpsc::Sender<FakeChannel>,
    requests: mpsc::Sender<Request>,
) {
    if cfg.refuse_at_accept {
        send(
            &fd,
            &Response::Error {
                code: ControlError::Unauthorized,
                message: "refused at accept".into(),
            },
            &[],
        );
        return;
    }
    let mut next_channel = 1u32;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(req) = Request::decode(&buf[..n]) else {
            send(
                &fd,
                &Response::Error {
                    code: ControlError::Malformed,
                    message: "bad".into(),
                },
                &[],
            );
            return;
        };
        let _ = requests.send(req.clone());
        match req {
            Request::Hello { .. } => {
                let resp = cfg.hello.clone().unwrap_or(Response::Hello {
                    version: CONTROL_VERSION,
                    local_ip: LOCAL_IP,
                    engines: 2,
                    max_message_len: cfg.layout.max_message_len,
                });
                let refuse = matches!(resp, Response::Error { .. });
                send(&fd, &resp, &[]);
                if refuse {
                    return;
                }
            }
            Request::OpenChannel { engine } => {
                let id = next_channel;
                next_channel += 1;
                let (ch, memfd) = FakeChannel::create(id, &cfg);
                let len = (cfg.layout.total_len as i64 + cfg.len_delta) as u64;
                let all = [
                    memfd.as_raw_fd(),
                    ch.app_efd.as_raw_fd(),
                    ch.sidecar_efd.as_raw_fd(),
                    ch.app_efd.as_raw_fd(),
                ];
                send(
                    &fd,
                    &Response::ChannelOpened {
                        channel: id,
                        engine: engine.unwrap_or(0),
                        len,
                    },
                    &all[..cfg.fds],
                );
                let _ = channels.send(ch);
            }
            Request::Listen { port, .. } if port == BUSY_PORT => send(
                &fd,
                &Response::Error {
                    code: ControlError::PortInUse,
                    message: format!("port {port} is taken"),
                },
                &[],
            ),
            Request::Listen { .. } | Request::Unlisten { .. } | Request::CloseChannel { .. } => {
                send(&fd, &Response::Ok, &[])
            }
            // The fake has no statistics.
            Request::Stats { .. } => send(
                &fd,
                &Response::Error {
                    code: ControlError::Internal,
                    message: "no statistics here".into(),
                },
                &[],
            ),
        }
    }
}

/// The sidecar's end of a channel.
pub(crate) struct FakeChannel {
    pub id: u32,
    pub to_app: Producer,
    pub from_app: Consumer,
    pub views: ChannelViews,
    pub app_efd: OwnedFd,
    pub sidecar_efd: OwnedFd,
    _map: memmap2::MmapRaw,
}

impl FakeChannel {
    fn create(id: u32, cfg: &Config) -> (FakeChannel, OwnedFd) {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let l = cfg.layout;
        let memfd = memfd_create(
            "fake-channel",
            MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
        )
        .unwrap();
        nix::unistd::ftruncate(memfd.as_fd(), l.total_len as i64).unwrap();
        let map = memmap2::MmapOptions::new()
            .len(l.total_len as usize)
            .map_raw(&memfd)
            .unwrap();
        if cfg.seal {
            fcntl(
                memfd.as_fd(),
                FcntlArg::F_ADD_SEALS(
                    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
                ),
            )
            .unwrap();
        }
        let p = map.as_mut_ptr();
        // SAFETY: a fresh zero-filled shared mapping of total_len bytes, page-aligned.
        let views = unsafe {
            l.init(p);
            l.views(p)
        };
        let ch = FakeChannel {
            id,
            to_app: Producer::new(views.to_app, 0),
            from_app: Consumer::new(views.to_sidecar, 0, l.max_message_len.max(16)),
            views,
            app_efd: eventfd(),
            sidecar_efd: eventfd(),
            _map: map,
        };
        (ch, memfd)
    }

    fn wake_app(&self) {
        let _ = nix::unistd::write(&self.app_efd, &1u64.to_ne_bytes());
    }

    /// Publishes one notification (waking the app if it waits).
    pub(crate) fn try_notify(
        &mut self,
        kind: RecordKind,
        flow: u32,
        aux: u32,
        flags: u8,
        payload: &[u8],
    ) -> Result<(), PushError> {
        let h = RecordHeader {
            len: 0,
            kind,
            flags,
            flow,
            aux,
        };
        self.to_app.push(h, &[payload])?;
        if self.to_app.consumer_needs_wakeup() {
            self.wake_app();
        }
        Ok(())
    }

    /// Publishes one notification, panicking if the ring is full.
    pub(crate) fn notify(
        &mut self,
        kind: RecordKind,
        flow: u32,
        aux: u32,
        flags: u8,
        payload: &[u8],
    ) {
        self.try_notify(kind, flow, aux, flags, payload)
            .expect("notification ring has room");
    }

    /// Publishes one notification, waiting for room (wait protocol on `space_waiting`).
    pub(crate) fn notify_blocking(&mut self, kind: RecordKind, flow: u32, payload: &[u8]) {
        loop {
            match self.try_notify(kind, flow, 0, 0, payload) {
                Ok(()) => return,
                Err(PushError::Full) => {
                    let need = machnet_channel::ring::record_footprint(payload.len() as u64);
                    if self.to_app.prepare_wait().unwrap() < need {
                        wait_fd(self.sidecar_efd.as_raw_fd(), Duration::from_secs(10));
                    }
                    self.to_app
                        .ring()
                        .control()
                        .space_waiting
                        .store(0, Ordering::SeqCst);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    pub(crate) fn accept(&mut self, flow: u32, remote_port: u16, listen_port: u16) -> FlowInfo {
        let info = flow_info(listen_port, remote_port);
        self.notify(
            RecordKind::Accepted,
            flow,
            listen_port as u32,
            0,
            &info.encode(),
        );
        info
    }

    pub(crate) fn message(&mut self, flow: u32, data: &[u8]) {
        self.notify(RecordKind::Message, flow, 0, 0, data);
    }

    /// The next request from the app, waiting up to `timeout` with the wait protocol.
    pub(crate) fn request(&mut self, timeout: Duration) -> Option<(RecordHeader, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(rec) = self.from_app.peek().unwrap() {
                let mut data = vec![0u8; rec.header.len as usize];
                self.from_app.read_payload(&rec, &mut data);
                self.from_app.consume(&rec);
                if self.from_app.producer_needs_wakeup() {
                    self.wake_app();
                }
                return Some((rec.header, data));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if !self.from_app.prepare_wait().unwrap() {
                wait_fd(self.sidecar_efd.as_raw_fd(), deadline - now);
            }
            self.from_app.cancel_wait();
        }
    }

    /// Closes the channel as the sidecar does: `closed` word, then a wake-up.
    pub(crate) fn close(&self, code: CloseCode) {
        self.views.closed().store(code as u32, Ordering::SeqCst);
        self.wake_app();
    }
}

fn eventfd() -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the new descriptor is owned by the returned OwnedFd.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        assert!(fd >= 0);
        OwnedFd::from_raw_fd(fd)
    }
}

/// Waits for a non-blocking eventfd and drains it.
pub(crate) fn wait_fd(fd: RawFd, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
    let mut v = [0u8; 8];
    // SAFETY: 8-byte read into an 8-byte buffer (non-blocking fd).
    unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) };
}

pub(crate) fn flow_info(local_port: u16, remote_port: u16) -> FlowInfo {
    FlowInfo {
        local_ip: LOCAL_IP,
        local_port,
        remote_ip: Ipv4Addr::new(10, 0, 0, 2),
        remote_port,
    }
}
