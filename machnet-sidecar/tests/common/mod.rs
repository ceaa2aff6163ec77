//! Test scaffolding: a raw control-protocol client and a raw channel user built directly on
//! machnet-core's channel types (not the real client library), plus sidecar setup helpers.
#![allow(dead_code)]

use std::io::{IoSlice, IoSliceMut};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use machnet_channel::control::{Request, Response, MAX_CONTROL_MESSAGE};
use machnet_channel::{
    ChannelLayout, CloseCode, ConnectRequest, Consumer, FlowInfo, Producer, PushError,
    RecordHeader, RecordKind,
};
use machnet_core::PortPool;
use machnet_sidecar::datapath::mem::MemHub;
use machnet_sidecar::datapath::Datapath;
use machnet_sidecar::{Sidecar, SidecarConfig};
use memmap2::{MmapMut, MmapOptions};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::socket::{
    connect, recvmsg, sendmsg, socket, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};

/// Default wait for anything in these tests (generous: CI machines are slow).
pub(crate) const WAIT: Duration = Duration::from_secs(20);

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A fresh temporary directory for control sockets.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "machnet-{tag}-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test configuration: quiet, no stats, socket in a temp dir.
pub(crate) fn test_config(ip: Ipv4Addr, engines: u16, sock: &Path) -> SidecarConfig {
    let mut c = SidecarConfig::new();
    c.local_ip = ip;
    c.engines = engines;
    c.control_socket = sock.to_owned();
    c.stats_interval = None;
    c.udp_ports = PortPool {
        base: 31580,
        count: 16,
    };
    c
}

/// Starts a sidecar on the in-memory hub.
pub(crate) fn mem_sidecar(hub: &MemHub, cfg: SidecarConfig) -> Sidecar {
    let dps: Vec<Box<dyn Datapath>> = hub
        .add_host(cfg.local_ip, cfg.engines, cfg.udp_ports, 9000)
        .expect("add host")
        .into_iter()
        .map(|d| Box::new(d) as Box<dyn Datapath>)
        .collect();
    Sidecar::start_with_datapaths(cfg, dps).expect("sidecar starts")
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
pub(crate) fn wait_readable(fd: impl AsFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let ms = left.as_millis().min(10_000) as u16;
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            _ if Instant::now() >= deadline => return false,
            _ => {}
        }
    }
}

/// A raw control connection.
pub(crate) struct RawClient {
    pub fd: OwnedFd,
}

impl RawClient {
    pub(crate) fn connect(path: &Path) -> std::io::Result<RawClient> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(RawClient { fd })
    }

    pub(crate) fn send_raw(&self, data: &[u8]) -> std::io::Result<()> {
        sendmsg::<UnixAddr>(
            self.fd.as_raw_fd(),
            &[IoSlice::new(data)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// The next packet and the descriptors that came with it; `None` on timeout or hang-up.
    pub(crate) fn recv(&self, timeout: Duration) -> Option<(Response, Vec<OwnedFd>)> {
        if !wait_readable(&self.fd, timeout) {
            return None;
        }
        let mut buf = vec![0u8; MAX_CONTROL_MESSAGE + 1];
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .ok()?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().ok()? {
                if let ControlMessageOwned::ScmRights(r) = c {
                    // SAFETY: fresh descriptors received from the kernel.
                    fds.extend(r.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return None;
        }
        Some((Response::decode(&buf[..n]).expect("valid response"), fds))
    }

    pub(crate) fn request(&self, req: &Request) -> Response {
        self.send_raw(&req.encode()).expect("send request");
        self.recv(WAIT).expect("response").0
    }

    pub(crate) fn hello(&self) -> Response {
        self.request(&Request::Hello {
            version: 1,
            client: "raw-test".into(),
        })
    }

    /// Whether the sidecar hung up (reads EOF) within `timeout`.
    pub(crate) fn hung_up(&self, timeout: Duration) -> bool {
        if !wait_readable(&self.fd, timeout) {
            return false;
        }
        let mut b = [0u8; 64];
        matches!(
            nix::sys::socket::recv(self.fd.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT),
            Ok(0) | Err(nix::errno::Errno::ECONNRESET)
        )
    }

    pub(crate) fn open_channel(&self, engine: Option<u16>) -> AppChannel {
        self.send_raw(&Request::OpenChannel { engine }.encode())
            .unwrap();
        let (resp, fds) = self.recv(WAIT).expect("channel_opened");
        let Response::ChannelOpened {
            channel,
            engine,
            len,
        } = resp
        else {
            panic!("expected channel_opened, got {resp:?}");
        };
        assert_eq!(fds.len(), 3, "memfd, app eventfd, sidecar eventfd");
        AppChannel::map(channel, engine, len, fds)
    }

    pub(crate) fn listen(&self, channel: u32, port: u16) -> Response {
        self.request(&Request::Listen { channel, port })
    }
}

/// A notification read from a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    pub kind: RecordKind,
    pub flags: u8,
    pub flow: u32,
    pub aux: u32,
    pub payload: Vec<u8>,
}

impl Note {
    pub(crate) fn info(&self) -> FlowInfo {
        FlowInfo::decode(&self.payload).expect("flow info payload")
    }
}

/// The app side of a channel, used raw.
pub(crate) struct AppChannel {
    pub id: u32,
    pub engine: u16,
    pub layout: ChannelLayout,
    pub map: MmapMut,
    pub requests: Producer,
    pub notes: Consumer,
    pub app_efd: EventFd,
    pub sidecar_efd: EventFd,
    pub memfd: OwnedFd,
    next_request: u32,
}

// SAFETY: the views point into `map`, which moves with the struct and never changes address.
unsafe impl Send for AppChannel {}

impl AppChannel {
    fn map(id: u32, engine: u16, len: u64, mut fds: Vec<OwnedFd>) -> AppChannel {
        let sidecar_efd = unsafe { EventFd::from_owned_fd(fds.pop().unwrap()) };
        let app_efd = unsafe { EventFd::from_owned_fd(fds.pop().unwrap()) };
        let memfd = fds.pop().unwrap();
        let file = std::fs::File::from(memfd.try_clone().unwrap());
        assert_eq!(file.metadata().unwrap().len(), len);
        let mut map = unsafe { MmapOptions::new().map_mut(&file) }.expect("map channel");
        let layout =
            unsafe { ChannelLayout::read(map.as_ptr(), map.len() as u64) }.expect("valid layout");
        let views = unsafe { layout.views(map.as_mut_ptr()) };
        AppChannel {
            id,
            engine,
            layout,
            requests: Producer::new(views.to_sidecar, 0),
            notes: Consumer::new(views.to_app, 0, layout.max_message_len),
            map,
            app_efd,
            sidecar_efd,
            memfd,
            next_request: 1,
        }
    }

    /// The header's `closed` word.
    pub(crate) fn closed(&mut self) -> u32 {
        let v = unsafe { self.layout.views(self.map.as_mut_ptr()) };
        v.closed().load(Ordering::SeqCst)
    }

    /// Waits until the sidecar closed the channel; returns the code.
    pub(crate) fn wait_closed(&mut self, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.closed();
            if c != 0 {
                return Some(c);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if wait_readable(&self.app_efd, left) {
                let _ = self.app_efd.read();
            }
        }
    }

    /// Pushes one request without waiting; wakes the sidecar if it sleeps.
    pub(crate) fn try_push(
        &mut self,
        mut h: RecordHeader,
        payload: &[u8],
    ) -> Result<(), PushError> {
        h.len = 0;
        self.requests.push(h, &[payload])?;
        if self.requests.consumer_needs_wakeup() {
            self.sidecar_efd.write(1).unwrap();
        }
        Ok(())
    }

    /// Pushes one request, waiting for room (up to `WAIT`, reading nothing meanwhile).
    pub(crate) fn push(&mut self, h: RecordHeader, payload: &[u8]) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_push(h, payload) {
                Ok(()) => return,
                Err(PushError::Full) => {
                    let need = machnet_channel::ring::record_footprint(payload.len() as u64);
                    if self.requests.prepare_wait().unwrap() >= need {
                        continue;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "request ring stayed full for {WAIT:?}"
                    );
                    if wait_readable(&self.app_efd, Duration::from_millis(100)) {
                        let _ = self.app_efd.read();
                    }
                }
                Err(e) => panic!("push: {e}"),
            }
        }
    }

    /// The next notification, if one is waiting (no wait).
    pub(crate) fn try_next(&mut self) -> Option<Note> {
        let rec = self.notes.peek().expect("valid notification ring")?;
        let mut payload = vec![0u8; rec.header.len as usize];
        self.notes.read_payload(&rec, &mut payload);
        self.notes.consume(&rec);
        if self.notes.producer_needs_wakeup() {
            self.sidecar_efd.write(1).unwrap();
        }
        Some(Note {
            kind: rec.header.kind,
            flags: rec.header.flags,
            flow: rec.header.flow,
            aux: rec.header.aux,
            payload,
        })
    }

    /// The next notification, waiting up to `timeout` (on the app eventfd, per §4).
    pub(crate) fn next(&mut self, timeout: Duration) -> Option<Note> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.try_next() {
                return Some(n);
            }
            if self.notes.prepare_wait().expect("valid ring") {
                self.notes.cancel_wait();
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.notes.cancel_wait();
                return None;
            }
            if wait_readable(&self.app_efd, left) {
                let _ = self.app_efd.read();
            }
            self.notes.cancel_wait();
        }
    }

    /// The next notification, which must come within `WAIT`.
    pub(crate) fn expect_next(&mut self) -> Note {
        self.next(WAIT).expect("a notification within the wait")
    }

    /// Sends a Connect request; returns its request id.
    pub(crate) fn connect_request(&mut self, ip: Ipv4Addr, port: u16) -> u32 {
        let id = self.next_request;
        self.next_request += 1;
        let mut h = RecordHeader::new(RecordKind::Connect, 0);
        h.aux = id;
        let req = ConnectRequest {
            remote_ip: ip,
            remote_port: port,
        };
        self.push(h, &req.encode());
        id
    }

    /// Connects and waits for `Connected`; returns the flow handle.
    pub(crate) fn connect(&mut self, ip: Ipv4Addr, port: u16) -> (u32, FlowInfo) {
        let id = self.connect_request(ip, port);
        let n = self.expect_next();
        assert_eq!(n.kind, RecordKind::Connected, "{n:?}");
        assert_eq!(n.aux, id);
        (n.flow, n.info())
    }

    pub(crate) fn send(&mut self, flow: u32, msg: &[u8]) {
        self.push(RecordHeader::new(RecordKind::Send, flow), msg);
    }

    pub(crate) fn close_flow(&mut self, flow: u32) {
        self.push(RecordHeader::new(RecordKind::Close, flow), &[]);
    }

    pub(crate) fn abort_flow(&mut self, flow: u32) {
        self.push(RecordHeader::new(RecordKind::Abort, flow), &[]);
    }
}

/// Deterministic message content.
#[allow(unused_imports)] // not every test file uses it
pub(crate) use machnet_sidecar::testing::pattern;

/// Runs an echo server on `ch` until `stop` is set: every message comes back on its flow; a
/// peer close is answered with a close.
pub(crate) fn echo_server(mut ch: AppChannel, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Some(n) = ch.next(Duration::from_millis(50)) else {
            continue;
        };
        match n.kind {
            RecordKind::Message => ch.send(n.flow, &n.payload),
            RecordKind::PeerClosed => ch.close_flow(n.flow),
            _ => {}
        }
    }
}

/// The close code of a notification's flags.
pub(crate) fn code(n: &Note) -> Option<CloseCode> {
    CloseCode::from_u8(n.flags)
}

/// The sidecar binary built by cargo for these tests.
pub(crate) const MACHNET_BIN: &str = env!("CARGO_BIN_EXE_machnet");

/// A sidecar process, killed if the test fails.
pub(crate) struct Proc {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Proc {
    pub(crate) fn start(
        ip: Ipv4Addr,
        engines: u16,
        pool: PortPool,
        dir: &Path,
        extra: &[&str],
    ) -> Proc {
        let engines = engines.to_string();
        let mut args = vec!["--engines", engines.as_str()];
        args.extend_from_slice(&["--stats-interval", "1", "--log-level", "debug"]);
        args.extend_from_slice(extra);
        Proc::start_bin(Path::new(MACHNET_BIN), ip, pool, dir, &args)
    }

    /// Starts sidecar binary `bin` on `ip` with `args` (later flags override earlier ones), its
    /// socket and log in `dir`, and waits until it listens.
    pub(crate) fn start_bin(
        bin: &Path,
        ip: Ipv4Addr,
        pool: PortPool,
        dir: &Path,
        args: &[&str],
    ) -> Proc {
        let sock = dir.join(format!("{ip}.sock"));
        let log = dir.join(format!("{ip}.log"));
        let child = Command::new(bin)
            .args(["--local-ip", &ip.to_string()])
            .args(["--udp-port-base", &pool.base.to_string()])
            .args(["--udp-port-count", &pool.count.to_string()])
            .arg("--control-socket")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn machnet");
        let mut p = Proc {
            child: Some(child),
            sock,
            log,
        };
        p.wait_ready();
        p
    }

    pub(crate) fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        while RawClient::connect(&self.sock).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("machnet exited early ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "machnet never listened:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("machnet ignored SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- machnet log ({}) ---\n{}",
                    self.log.display(),
                    self.log_text()
                );
            }
        }
    }
}

/// Runs the test `other_app_role` of this same test binary as another process (another
/// application for the sidecar: its own pid) with the environment `env`, and returns what it
/// printed after `OTHER-APP ` on each line. Panics if it failed.
pub(crate) fn run_other_app(env: &[(&str, String)]) -> Vec<String> {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["other_app_role", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the other app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the other app failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once("OTHER-APP ").map(|(_, m)| m.to_owned()))
        .collect()
}
