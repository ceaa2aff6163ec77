//! Multi-process end to end: the real `machnet` binary twice (kernel UDP on 127.0.0.1 and
//! 127.0.0.2, private control sockets, `--allow-user <our uid>`) and applications in separate
//! processes using the real client library.
//!
//! The application processes are this test binary re-executed with `MACHNET_TEST_APP_ROLE`
//! set: `processes app_role --exact --ignored --nocapture` runs the (otherwise ignored)
//! `app_role` test, which plays the role named by the variable. Roles report to the parent with
//! `@@`-prefixed lines on stdout and take commands line by line on stdin; their stderr goes to a
//! file in the test's temporary directory and is printed when a test fails.
//!
//! Every test prints its seed; rerun with `MACHNET_TEST_SEED=<seed>` to repeat it. The tests
//! run one at a time (they are CPU-heavy and several measure time or memory).

mod common;
#[path = "processes/soak.rs"]
mod soak;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{temp_dir, Proc, WAIT};
use machnet::{CloseCode, Event, Flow, ListenError, Machnet, SendError};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const MIB: usize = 1 << 20;

/// Selects the role of a re-executed test binary.
const ROLE_ENV: &str = "MACHNET_TEST_APP_ROLE";
/// Prefix of the lines a role writes for its parent.
const MARK: &str = "@@";

// ===================================================================================== helpers

/// The tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The seed of a test: `MACHNET_TEST_SEED` or the clock. Printed (shown when the test fails).
fn seed(test: &str) -> u64 {
    let s = match std::env::var("MACHNET_TEST_SEED") {
        Ok(v) => v.parse().expect("MACHNET_TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("{test}: seed {s} (rerun with MACHNET_TEST_SEED={s})");
    s
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fills `dst` with the deterministic content of message `seq` of `stream`.
fn fill_into(dst: &mut [u8], seed: u64, stream: u64, seq: u64) {
    let mut x = splitmix(seed ^ splitmix(stream ^ splitmix(seq))) | 1;
    for chunk in dst.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn fill(seed: u64, stream: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_into(&mut v, seed, stream, seq);
    v
}

/// `Err` with a short description unless `got == want` (never prints megabytes).
fn compare(got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    if got.len() != want.len() {
        return Err(format!("{} bytes instead of {}", got.len(), want.len()));
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    Err(format!(
        "{} bytes, first difference at byte {i}",
        want.len()
    ))
}

/// A field `key=value` of a role's report line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
}

/// A numeric field of `/proc/<pid>/status`, in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn pid(p: &Proc) -> u32 {
    p.child.as_ref().expect("sidecar running").id()
}

/// Panics unless the sidecar process is still running.
fn assert_running(p: &mut Proc, what: &str) {
    let status = p.child.as_mut().unwrap().try_wait().unwrap();
    assert!(
        status.is_none(),
        "sidecar {what} exited ({status:?}):\n{}",
        p.log_text()
    );
}

/// Two sidecar processes on 127.0.0.1 (`A`) and 127.0.0.2 (`B`), attachable by our user only.
fn sidecars(tag: &str, engines_a: u16, engines_b: u16) -> (Proc, Proc, PathBuf) {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir(tag);
    let uid = nix::unistd::getuid().as_raw().to_string();
    let extra = ["--allow-user", uid.as_str()];
    let a = Proc::start(A, engines_a, pool, &dir, &extra);
    let b = Proc::start(B, engines_b, pool, &dir, &extra);
    (a, b, dir)
}

/// Engine statistics from a sidecar log: the latest `channels`, `flows` and `violations` of each
/// engine.
fn engine_stats(log: &str) -> HashMap<u32, (u64, u64, u64)> {
    let mut out = HashMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("engine ") else {
            continue;
        };
        let Some((engine, rest)) = rest.split_once(": channels ") else {
            continue;
        };
        let num = |s: &str, key: &str| -> Option<u64> {
            let (_, after) = s.split_once(key)?;
            after.split_whitespace().next()?.parse().ok()
        };
        let (Ok(engine), Some(ch), Some(fl), Some(vi)) = (
            engine.trim().parse(),
            rest.split_whitespace().next().and_then(|v| v.parse().ok()),
            num(rest, " flows "),
            num(rest, "violations "),
        ) else {
            continue;
        };
        out.insert(engine, (ch, fl, vi));
    }
    out
}

/// Waits until the sum over all `engines` of the sidecar's latest statistics satisfies `ok`
/// (statistics are logged every second).
fn wait_engine_totals(p: &Proc, engines: u16, what: &str, ok: impl Fn(u64, u64, u64) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = engine_stats(&p.log_text());
        let (mut c, mut f, mut v) = (0, 0, 0);
        for s in stats.values() {
            c += s.0;
            f += s.1;
            v += s.2;
        }
        if stats.len() == usize::from(engines) && ok(c, f, v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: engine statistics never matched (last: channels {c} flows {f} violations \
             {v}):\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the next event on `ch`, which must come within `WAIT`.
fn next_event(ch: &mut machnet::Channel, what: &str) -> Event {
    match ch.next_event(Some(WAIT)) {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("{what}: no event within {WAIT:?}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Closes `flow` and waits for its graceful end (`PeerClosed` first is fine).
fn close_gracefully(ch: &mut machnet::Channel, flow: &Flow, what: &str) {
    ch.close(flow)
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    loop {
        match next_event(ch, what) {
            Event::PeerClosed { flow: f } if f == *flow => {}
            Event::Closed { flow: f, reason } if f == *flow => {
                assert_eq!(reason, Some(CloseCode::Graceful), "{what}: {flow}");
                return;
            }
            other => panic!("{what}: unexpected {other:?} while closing"),
        }
    }
}

/// `n` echo round trips on `flow` with verified content.
fn echo_round_trips(ch: &mut machnet::Channel, flow: &Flow, seed: u64, stream: u64, n: u64) {
    for seq in 0..n {
        let len = [1, 100, 1500, 9000, 70_000][seq as usize % 5];
        let msg = fill(seed, stream, seq, len);
        ch.send(flow, &msg)
            .unwrap_or_else(|e| panic!("stream {stream}: send: {e}"));
        match next_event(ch, "echo") {
            Event::Message { flow: f, data } if f == *flow => {
                if let Err(e) = compare(&data, &msg) {
                    panic!("stream {stream}: echo {seq} altered: {e}");
                }
            }
            other => panic!("stream {stream}: unexpected {other:?}"),
        }
    }
}

// ============================================================================ app processes

/// An application process: this test binary re-executed in a role.
struct App {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    progress: Arc<AtomicU64>,
    stderr: PathBuf,
}

impl App {
    fn spawn(name: &str, role: &str, dir: &Path, env: &[(&str, String)]) -> App {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["app_role", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(ROLE_ENV, role)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn app process");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let progress = Arc::new(AtomicU64::new(0));
        let p2 = progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print on the same line before our marker.
                let Some((_, msg)) = line.split_once(MARK) else {
                    continue;
                };
                match msg.strip_prefix("progress ") {
                    Some(n) => p2.store(n.trim().parse().unwrap_or(0), Ordering::SeqCst),
                    None => {
                        if tx.send(msg.to_string()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        App {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            progress,
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn fail(&self, why: String) -> ! {
        panic!(
            "app {}: {why}\n--- its stderr ---\n{}",
            self.name,
            self.stderr_text()
        )
    }

    /// The next report line, which must start with `prefix` and come within `timeout`.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) if l.starts_with(prefix) => l,
            Ok(l) => self.fail(format!("expected a {prefix:?} report, got {l:?}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.fail(format!("no {prefix:?} report within {timeout:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its stdout closed: it exited (or is exiting) without the report.
                let child = self.child.as_mut().expect("running");
                let deadline = Instant::now() + WAIT;
                let status = loop {
                    match child.try_wait().unwrap() {
                        Some(s) => break s.to_string(),
                        None if Instant::now() >= deadline => break "still running".into(),
                        None => std::thread::sleep(Duration::from_millis(10)),
                    }
                };
                self.fail(format!("ended ({status}) without a {prefix:?} report"))
            }
        }
    }

    /// Sends a command line.
    fn tell(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if let Err(e) = writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()) {
            self.fail(format!("cannot send {cmd:?}: {e}"));
        }
    }

    /// Waits until the role reported progress of at least `n`; returns the progress.
    fn wait_progress(&mut self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.progress.load(Ordering::SeqCst);
            if p >= n {
                return p;
            }
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.fail(format!("exited ({s}) at progress {p}, waiting for {n}"));
            }
            if Instant::now() >= deadline {
                self.fail(format!("progress stuck at {p}, waiting for {n}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit successfully.
    fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(format!("did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !status.success() {
            self.fail(format!("exited with {status}"));
        }
    }

    /// SIGKILL now; returns the exit status.
    fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- app {} stderr ---\n{}", self.name, self.stderr_text());
            }
        }
    }
}

// ===================================================================================== roles

/// Role entry point: does nothing unless run by a test of this file as an app process.
#[test]
#[ignore = "an application role, run in a child process by the other tests of this file"]
fn app_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    match role.as_str() {
        "echo" => role_echo(),
        "flows" => role_flows(),
        "pinger" => role_pinger(),
        "streamer" => role_streamer(),
        "sink" => role_sink(),
        "scribbler" => role_scribbler(),
        "soak_sender" => soak::role_soak_sender(),
        "soak_sink" => soak::role_soak_sink(),
        other => panic!("unknown role {other:?}"),
    }
}

/// A report line for the parent.
fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK}{msg}");
    let _ = out.flush();
}

fn env<T: FromStr>(name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let v = std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e:?}"))
}

fn env_opt<T: FromStr>(name: &str) -> Option<T>
where
    T::Err: std::fmt::Debug,
{
    std::env::var(name).ok().map(|_| env(name))
}

fn env_ports() -> Vec<u16> {
    env::<String>("PORTS")
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect()
}

fn attach() -> Machnet {
    Machnet::attach_at(env::<PathBuf>("SOCK")).expect("attach")
}

/// Command lines from the parent; `eof` when stdin closes.
fn commands() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_string()).is_err() {
                return;
            }
        }
        let _ = tx.send("eof".into());
    });
    rx
}

/// A flag set when the parent says `quit` (or goes away).
fn quit_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let cmds = commands();
    std::thread::spawn(move || {
        while let Ok(c) = cmds.recv() {
            if c == "quit" || c == "eof" {
                break;
            }
        }
        s2.store(true, Ordering::SeqCst);
    });
    stop
}

#[derive(Default)]
struct EchoCounts {
    accepted: AtomicU64,
    graceful: AtomicU64,
    reset: AtomicU64,
    other: AtomicU64,
    echoed: AtomicU64,
    bytes: AtomicU64,
}

/// Echo server: one thread and channel per port of `PORTS`; echoes every message, answers a
/// peer's close with a close. Ends on `quit`, or once `EXPECT_FLOWS` flows have ended.
/// `LISTEN_RETRY_MS`: keep retrying a port in use that long.
fn role_echo() {
    let ports = env_ports();
    let expect_flows: Option<u64> = env_opt("EXPECT_FLOWS");
    let retry = Duration::from_millis(env_opt("LISTEN_RETRY_MS").unwrap_or(0));
    let m = attach();
    let stop = quit_flag();
    let counts = Arc::new(EchoCounts::default());
    let mut retries = 0;
    let mut chans = Vec::new();
    for &port in &ports {
        let mut ch = m.open_channel(None).expect("server channel");
        let deadline = Instant::now() + retry;
        loop {
            match ch.listen(port) {
                Ok(()) => break,
                Err(ListenError::PortInUse(_)) if Instant::now() < deadline => {
                    retries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("listen {port}: {e}"),
            }
        }
        chans.push(ch);
    }
    say(&format!("listening retries={retries}"));
    let threads: Vec<_> = chans
        .into_iter()
        .map(|mut ch| {
            let (stop, c) = (stop.clone(), counts.clone());
            std::thread::spawn(move || loop {
                let ended = c.graceful.load(Ordering::SeqCst)
                    + c.reset.load(Ordering::SeqCst)
                    + c.other.load(Ordering::SeqCst);
                if stop.load(Ordering::SeqCst) || expect_flows.is_some_and(|n| ended >= n) {
                    return;
                }
                match ch.next_event(Some(Duration::from_millis(100))) {
                    Ok(None) => {}
                    Ok(Some(Event::Accepted { .. })) => {
                        c.accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Some(Event::Message { flow, data })) => match ch.send(&flow, &data) {
                        Ok(()) => {
                            c.echoed.fetch_add(1, Ordering::SeqCst);
                            c.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                        }
                        Err(SendError::FlowClosed(_) | SendError::FlowClosing) => {}
                        Err(e) => panic!("echo send: {e}"),
                    },
                    Ok(Some(Event::PeerClosed { flow })) => {
                        ch.close(&flow).expect("close");
                    }
                    Ok(Some(Event::Closed { reason, .. })) => {
                        let n = match reason {
                            Some(CloseCode::Graceful) => &c.graceful,
                            Some(CloseCode::Reset) => &c.reset,
                            _ => &c.other,
                        };
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    // A send racing with a reset.
                    Ok(Some(Event::RequestFailed { .. })) => {}
                    Ok(Some(other)) => panic!("echo: unexpected {other:?}"),
                    Err(e) => panic!("echo: {e}"),
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("echo thread");
    }
    let c = &counts;
    let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
    say(&format!(
        "echo accepted={} graceful={} reset={} other={} echoed={} bytes={}",
        l(&c.accepted),
        l(&c.graceful),
        l(&c.reset),
        l(&c.other),
        l(&c.echoed),
        l(&c.bytes)
    ));
}

/// The size of message `seq` of flow `(client, thread, flow)` in the many-flows test: mostly
/// small, some up to 256 KiB, a few of 1 MiB and two of the maximum.
fn flows_msg_len(seed: u64, c: u64, t: u64, f: u64, seq: u64, max: usize) -> usize {
    if t == 0 && f == 0 && seq == 1 && c.is_multiple_of(2) {
        return max;
    }
    if t == 1 && f == 0 && (seq == 0 || seq == 5) {
        return MIB;
    }
    let mut rng =
        SmallRng::seed_from_u64(splitmix(seed ^ ((c << 48) | (t << 32) | (f << 16) | seq)));
    match rng.random_range(0..20) {
        0 => 1,
        1 | 2 => rng.random_range(65_536..=262_144),
        _ => rng.random_range(1..=9000),
    }
}

/// Client of the many-flows test: `THREADS` threads, each with its own channel and `FLOWS`
/// flows to `REMOTE`:`PORTS` (alternating); `ROUNDS` rounds of `WINDOW` messages per flow, every
/// echo checked in order; then every flow closed gracefully.
fn role_flows() {
    let (seed, c): (u64, u64) = (env("SEED"), env("CLIENT"));
    let (threads, flows, rounds, window): (u64, u64, u64, u64) =
        (env("THREADS"), env("FLOWS"), env("ROUNDS"), env("WINDOW"));
    let remote: Ipv4Addr = env("REMOTE");
    let ports = env_ports();
    let m = attach();
    let max = (m.max_message_len() as usize).min(8 * MIB);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (m, ports) = (m.clone(), ports.clone());
            std::thread::spawn(move || {
                let mut ch = m.open_channel(None).expect("channel");
                let mut fl = Vec::new();
                let mut index = HashMap::new();
                for f in 0..flows {
                    let global = (c * threads + t) * flows + f;
                    let port = ports[global as usize % ports.len()];
                    let flow = ch
                        .connect(remote, port)
                        .unwrap_or_else(|e| panic!("thread {t} flow {f}: connect: {e}"));
                    index.insert(flow.handle(), f as usize);
                    fl.push(flow);
                }
                let mut expected: Vec<VecDeque<(u64, Vec<u8>)>> =
                    (0..flows).map(|_| VecDeque::new()).collect();
                let (mut msgs, mut bytes) = (0u64, 0u64);
                for r in 0..rounds {
                    for (f, flow) in fl.iter().enumerate() {
                        for k in 0..window {
                            let seq = r * window + k;
                            let len = flows_msg_len(seed, c, t, f as u64, seq, max);
                            let stream = c << 32 | t << 16 | f as u64;
                            let msg = fill(seed, stream, seq, len);
                            ch.send(flow, &msg)
                                .unwrap_or_else(|e| panic!("thread {t} flow {f}: send: {e}"));
                            expected[f].push_back((seq, msg));
                        }
                    }
                    for _ in 0..flows * window {
                        match next_event(&mut ch, "echo") {
                            Event::Message { flow, data } => {
                                let f = index[&flow.handle()];
                                let (seq, want) = expected[f]
                                    .pop_front()
                                    .unwrap_or_else(|| panic!("flow {f}: unexpected echo"));
                                if let Err(e) = compare(&data, &want) {
                                    panic!("thread {t} flow {f}: echo of message {seq}: {e}");
                                }
                                msgs += 1;
                                bytes += data.len() as u64;
                            }
                            other => panic!("thread {t}: unexpected {other:?}"),
                        }
                    }
                }
                for flow in &fl {
                    ch.close(flow).expect("close");
                }
                let mut closed = 0;
                while closed < fl.len() {
                    match next_event(&mut ch, "close") {
                        Event::PeerClosed { .. } => {}
                        Event::Closed {
                            reason: Some(CloseCode::Graceful),
                            ..
                        } => closed += 1,
                        other => panic!("thread {t}: unexpected {other:?} while closing"),
                    }
                }
                (msgs, bytes)
            })
        })
        .collect();
    let (mut msgs, mut bytes) = (0, 0);
    for w in workers {
        let (m, b) = w.join().expect("client thread");
        msgs += m;
        bytes += b;
    }
    say(&format!(
        "done flows={} msgs={msgs} bytes={bytes}",
        threads * flows
    ));
}

/// Ping-pong on one flow to `REMOTE`:`PORT`, every echo checked, paced at about one round trip
/// per millisecond, progress reported every 10; on `quit` the flow is closed gracefully.
fn role_pinger() {
    let seed: u64 = env("SEED");
    let m = attach();
    let mut ch = m.open_channel(None).expect("channel");
    let flow = ch.connect(env("REMOTE"), env("PORT")).expect("connect");
    say("connected");
    let stop = quit_flag();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let len = if n.is_multiple_of(7) {
            1
        } else {
            rng.random_range(1..=4096)
        };
        let msg = fill(seed, 99, n, len);
        ch.send(&flow, &msg).expect("pinger send");
        match ch.recv_timeout(WAIT) {
            Ok(Some((f, got))) => {
                assert_eq!(f, flow);
                if let Err(e) = compare(&got, &msg) {
                    panic!("round trip {n}: {e}");
                }
            }
            Ok(None) => panic!("no echo within {WAIT:?} (round trip {n})"),
            Err(e) => panic!("round trip {n}: {e}"),
        }
        n += 1;
        if n.is_multiple_of(10) {
            say(&format!("progress {n}"));
        }
        // Pacing only (leaves CPU to the rest of the test), not synchronisation.
        std::thread::sleep(Duration::from_millis(1));
    }
    close_gracefully(&mut ch, &flow, "pinger");
    say(&format!("done round_trips={n}"));
}

/// Length of message `seq` of `stream` in the kill test: 16..=131072 bytes.
fn stream_msg_len(seed: u64, stream: u64, seq: u64) -> usize {
    16 + (splitmix(seed ^ (stream << 40) ^ seq) % 131_057) as usize
}

/// Message `seq` of `stream` in the kill test: stream and sequence number, then content.
fn stream_msg(seed: u64, stream: u64, seq: u64) -> Vec<u8> {
    let len = stream_msg_len(seed, stream, seq);
    let mut m = fill(seed, stream, seq, len);
    m[..8].copy_from_slice(&stream.to_le_bytes());
    m[8..16].copy_from_slice(&seq.to_le_bytes());
    m
}

/// Holds `HOLD_PORT` (listening), then streams on 2 threads × 2 flows to `REMOTE`:`PORT` as
/// fast as it can, forever (it is SIGKILLed). Thread 0 reports as progress the number of
/// messages whose `send` returned on each of its flows (streams 0 and 1).
fn role_streamer() {
    let seed: u64 = env("SEED");
    let remote: Ipv4Addr = env("REMOTE");
    let port: u16 = env("PORT");
    let m = attach();
    let mut holder = m.open_channel(None).expect("channel");
    holder.listen(env("HOLD_PORT")).expect("listen");
    say("holding");
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut ch = m.open_channel(None).expect("channel");
                let flows: Vec<Flow> = (0..2)
                    .map(|_| ch.connect(remote, port).expect("connect"))
                    .collect();
                say(&format!("connected {t}"));
                for seq in 0.. {
                    for (i, flow) in flows.iter().enumerate() {
                        let stream = t * 2 + i as u64;
                        ch.send(flow, &stream_msg(seed, stream, seq))
                            .expect("streamer send");
                    }
                    if t == 0 {
                        say(&format!("progress {}", seq + 1));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("streamer thread");
    }
    drop(holder);
}

/// Sizes of the messages of the back-pressure test: at least 264 MiB in all, mostly 256 KiB to
/// 2 MiB, some tiny, a few of 8 MiB.
fn sink_sizes(seed: u64, max: usize) -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x51_4b);
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < 264 * MIB {
        let len = match rng.random_range(0..16) {
            0 => rng.random_range(1..=4096),
            1 => max,
            _ => rng.random_range(256 * 1024..=2 * MIB),
        };
        sizes.push(len);
        total += len;
    }
    sizes
}

/// Listens on `PORT`, accepts one flow, then reads nothing until told `resume`; then receives
/// and checks every message of [`sink_sizes`], and answers the sender's close.
fn role_sink() {
    let seed: u64 = env("SEED");
    let m = attach();
    let max = m.max_message_len() as usize;
    let sizes = sink_sizes(seed, max.min(8 * MIB));
    let cmds = commands();
    let mut ch = m.open_channel(None).expect("channel");
    ch.listen(env("PORT")).expect("listen");
    say("listening");
    let flow = match next_event(&mut ch, "accept") {
        Event::Accepted { flow, .. } => flow,
        other => panic!("expected an accepted flow, got {other:?}"),
    };
    say("accepted");
    // Stop reading: the sender must be held back.
    match cmds.recv() {
        Ok(c) if c == "resume" => {}
        other => panic!("expected resume, got {other:?}"),
    }
    let (mut buf, mut want) = (vec![0u8; max], vec![0u8; max]);
    let mut bytes = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let (f, n) = match ch.recv_into_timeout(&mut buf, WAIT) {
            Ok(Some(r)) => r,
            Ok(None) => panic!("message {i} did not arrive within {WAIT:?}"),
            Err(e) => panic!("message {i}: {e}"),
        };
        assert_eq!(f, flow);
        fill_into(&mut want[..len], seed, 3, i as u64);
        if let Err(e) = compare(&buf[..n], &want[..len]) {
            panic!("message {i}: {e}");
        }
        bytes += n;
    }
    loop {
        match next_event(&mut ch, "sink close") {
            Event::PeerClosed { flow: f } if f == flow => ch.close(&flow).expect("close"),
            Event::Closed { reason, .. } => {
                assert_eq!(reason, Some(CloseCode::Graceful));
                break;
            }
            other => panic!("after the last message: unexpected {other:?}"),
        }
    }
    say(&format!("received msgs={} bytes={bytes}", sizes.len()));
}

/// Start addresses and lengths of this process's mappings of channel memfds. The client maps
/// each ring twice (docs/CHANNEL.md §3.2.1), so one channel shows as several adjacent lines.
fn channel_mappings() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.contains("memfd:machnet-channel"))
        .map(|l| {
            let (start, end) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            let start = usize::from_str_radix(start, 16).unwrap();
            (start, usize::from_str_radix(end, 16).unwrap() - start)
        })
        .collect()
}

/// This process's eventfd descriptors.
fn eventfds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (target.to_str()? == "anon_inode:[eventfd]")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// Opens a victim channel and two good ones (one on the victim's engine, one on another), a
/// flow each to `REMOTE`:`PORT`; on `scribble` fills the victim's whole memory with seeded
/// garbage and wakes its engine. The victim must then be closed with `ChannelViolation`, the
/// other channels and the attachment must keep working.
fn role_scribbler() {
    let seed: u64 = env("SEED");
    let remote: Ipv4Addr = env("REMOTE");
    let port: u16 = env("PORT");
    let cmds = commands();
    let m = attach();
    assert!(m.engines() >= 2, "needs two engines");
    // The victim's memory and eventfds are the ones that appear when it is opened.
    let (maps0, efds0) = (channel_mappings(), eventfds());
    let mut victim = m.open_channel(Some(0)).expect("victim channel");
    let (maps1, efds1) = (channel_mappings(), eventfds());
    let mut new_maps: Vec<_> = maps1.iter().filter(|x| !maps0.contains(x)).collect();
    let new_efds: Vec<_> = efds1.iter().filter(|x| !efds0.contains(x)).collect();
    new_maps.sort();
    assert!(
        !new_maps.is_empty() && new_maps.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0),
        "one new channel: adjacent mappings {maps0:?} -> {maps1:?}"
    );
    assert_eq!(
        new_efds.len(),
        2,
        "two new eventfds: {efds0:?} -> {efds1:?}"
    );
    let mem = new_maps[0].0;
    let len = new_maps.iter().map(|m| m.1).sum::<usize>();
    let mut same_engine = m.open_channel(Some(victim.engine())).expect("channel");
    let mut other_engine = m.open_channel(Some(1)).expect("channel");
    assert_ne!(same_engine.engine(), other_engine.engine());
    let fv = victim.connect(remote, port).expect("connect");
    let f1 = same_engine.connect(remote, port).expect("connect");
    let f2 = other_engine.connect(remote, port).expect("connect");
    echo_round_trips(&mut victim, &fv, seed, 1, 5);
    echo_round_trips(&mut same_engine, &f1, seed, 2, 5);
    echo_round_trips(&mut other_engine, &f2, seed, 3, 5);
    say("ready");
    match cmds.recv() {
        Ok(c) if c == "scribble" => {}
        other => panic!("expected scribble, got {other:?}"),
    }

    // Garbage over everything: header, both rings' indices and flags, both data areas.
    let mut rng = SmallRng::seed_from_u64(seed);
    let closed_at = std::mem::offset_of!(machnet_channel::ChannelHeader, closed);
    assert_eq!(closed_at % 8, 0);
    let violation = CloseCode::ChannelViolation as u32;
    // Ascending order: the `closed` word (offset 56) gets its garbage before the ring indices
    // behind it, whose garbage is what the sidecar detects, so the sidecar's own `closed`
    // store cannot be overwritten. The garbage there is never `ChannelViolation` itself.
    // SAFETY: `mem..mem+len` is the victim's live shared mapping (the channel object keeps it
    // mapped); nothing in this process uses the victim meanwhile, and the sidecar treats the
    // memory as untrusted. Volatile writes: the sidecar reads it concurrently.
    let closed = unsafe {
        for off in (0..len).step_by(8) {
            let mut v = rng.next_u64();
            if off == closed_at && v as u32 == violation {
                v ^= 1;
            }
            std::ptr::write_volatile((mem + off) as *mut u64, v);
        }
        &*((mem + closed_at) as *const AtomicU32)
    };
    let t0 = Instant::now();
    // Wake the victim's engine (and, harmlessly, ourselves): write both new eventfds.
    for &&fd in &new_efds {
        // SAFETY: the descriptor is open (the victim channel owns it) for the whole call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::unistd::write(fd, &1u64.to_ne_bytes()).expect("eventfd write");
    }
    // The sidecar answers by setting the `closed` word (it was garbage until then).
    while closed.load(Ordering::SeqCst) != violation {
        assert!(
            t0.elapsed() < WAIT,
            "the sidecar did not close the scribbled channel within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    say(&format!("violation after_ms={}", t0.elapsed().as_millis()));
    // The victim's next call reports it.
    match victim.send(&fv, b"after the scribble") {
        Err(SendError::ChannelClosed(Some(CloseCode::ChannelViolation))) => {}
        other => panic!("victim send after the scribble: {other:?}"),
    }
    // The other channels of this process are unaffected, on both engines.
    echo_round_trips(&mut same_engine, &f1, seed, 2, 20);
    echo_round_trips(&mut other_engine, &f2, seed, 3, 20);
    close_gracefully(&mut same_engine, &f1, "same engine");
    close_gracefully(&mut other_engine, &f2, "other engine");
    drop(victim);
    // The attachment still works: a new channel, a new flow.
    let mut fresh = m
        .open_channel(Some(0))
        .expect("new channel after the violation");
    let f3 = fresh.connect(remote, port).expect("connect");
    echo_round_trips(&mut fresh, &f3, seed, 4, 5);
    close_gracefully(&mut fresh, &f3, "fresh");
    say("done");
}

/// The receiving end of the kill test's streams: checks order and content per stream.
struct StreamCheck {
    seed: u64,
    stream_of: HashMap<u32, u64>,
    next_seq: [u64; 4],
    received: u64,
    closed: HashMap<u32, Option<CloseCode>>,
}

impl StreamCheck {
    fn new(seed: u64) -> Self {
        StreamCheck {
            seed,
            stream_of: HashMap::new(),
            next_seq: [0; 4],
            received: 0,
            closed: HashMap::new(),
        }
    }

    /// Handles the next event of `ch`, if one comes within 100 ms.
    fn poll(&mut self, ch: &mut machnet::Channel) {
        let ev = match ch.next_event(Some(Duration::from_millis(100))) {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => panic!("sink: {e}"),
        };
        match ev {
            Event::Accepted { .. } => {}
            // The streamer is gone and its sidecar closed its side: close ours, as apps do.
            Event::PeerClosed { flow } => ch.close(&flow).expect("close"),
            Event::Message { flow, data } => {
                assert!(data.len() >= 16, "message of {} bytes", data.len());
                let stream = u64::from_le_bytes(data[..8].try_into().unwrap());
                let seq = u64::from_le_bytes(data[8..16].try_into().unwrap());
                assert!(stream < 4, "stream {stream}");
                let s = *self.stream_of.entry(flow.handle()).or_insert(stream);
                assert_eq!(s, stream, "{flow} carries two streams");
                let next = &mut self.next_seq[s as usize];
                assert_eq!(seq, *next, "stream {s}: message out of order");
                if let Err(e) = compare(&data, &stream_msg(self.seed, s, seq)) {
                    panic!("stream {s} message {seq}: {e}");
                }
                *next += 1;
                self.received += data.len() as u64;
            }
            Event::Closed { flow, reason } => {
                self.closed.insert(flow.handle(), reason);
            }
            other => panic!("sink: unexpected {other:?}"),
        }
    }
}

// ===================================================================================== tests

/// 100 concurrent flows from 4 client processes × 5 threads (one channel each, 5 flows per
/// channel) to an echo server process with 2 threads/channels on a 4-engine sidecar; messages
/// of 1 B … 8 MiB; every echo identical and in order per flow; every flow closes gracefully.
#[test]
fn hundred_flows_from_four_processes_echo_intact_and_close_gracefully() {
    let _serial = serial();
    let t0 = Instant::now();
    let seed = seed("hundred_flows");
    let (mut sa, mut sb, dir) = sidecars("proc-flows", 2, 4);
    let b_sock = sb.sock.to_str().unwrap().to_string();
    let a_sock = sa.sock.to_str().unwrap().to_string();
    let mut server = App::spawn(
        "echo",
        "echo",
        &dir,
        &[
            ("SOCK", b_sock),
            ("PORTS", "7400,7401".into()),
            ("EXPECT_FLOWS", "100".into()),
        ],
    );
    server.expect("listening", WAIT);
    let mut clients: Vec<App> = (0..4)
        .map(|c| {
            App::spawn(
                &format!("client{c}"),
                "flows",
                &dir,
                &[
                    ("SOCK", a_sock.clone()),
                    ("REMOTE", B.to_string()),
                    ("PORTS", "7400,7401".into()),
                    ("SEED", seed.to_string()),
                    ("CLIENT", c.to_string()),
                    ("THREADS", "5".into()),
                    ("FLOWS", "5".into()),
                    ("ROUNDS", "4".into()),
                    ("WINDOW", "3".into()),
                ],
            )
        })
        .collect();
    let (mut flows, mut msgs, mut bytes) = (0, 0, 0);
    for c in &mut clients {
        let done = c.expect("done", WAIT);
        flows += field(&done, "flows");
        msgs += field(&done, "msgs");
        bytes += field(&done, "bytes");
        c.finish(WAIT);
    }
    assert_eq!(flows, 100);
    assert_eq!(msgs, 100 * 4 * 3);
    let report = server.expect("echo", WAIT);
    server.finish(WAIT);
    println!(
        "{msgs} echoes, {:.1} MiB each way over 100 flows; server: {report}",
        bytes as f64 / MIB as f64
    );
    assert_eq!(field(&report, "accepted"), 100, "{report}");
    assert_eq!(field(&report, "graceful"), 100, "{report}");
    assert_eq!(field(&report, "reset") + field(&report, "other"), 0);
    assert_eq!(field(&report, "echoed"), msgs, "{report}");
    assert_eq!(field(&report, "bytes"), bytes, "{report}");
    assert_running(&mut sa, "A");
    assert_running(&mut sb, "B");
    assert!(sa.terminate().success());
    assert!(sb.terminate().success());
    println!("hundred_flows: {:?}", t0.elapsed());
}

/// A client process streaming on 4 flows is SIGKILLed: what it sent still arrives, in order
/// and intact (docs/CHANNEL.md §5), then its flows close gracefully; its channels and its
/// listening port are released, the sidecars keep running, and another process on the same
/// sidecar keeps its echo exchange going throughout.
#[test]
fn an_app_killed_mid_transfer_has_its_messages_delivered_and_releases_its_resources() {
    let _serial = serial();
    let t0 = Instant::now();
    let seed = seed("sigkill");
    let (mut sa, mut sb, dir) = sidecars("proc-kill", 2, 2);
    let (a_sock, b_sock) = (sa.sock.clone(), sb.sock.clone());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    const ECHO_PORT: u16 = 7000;
    const SINK_PORT: u16 = 7100;
    const HELD_PORT: u16 = 7200;

    let mut echo = App::spawn(
        "echo",
        "echo",
        &dir,
        &[("SOCK", s(&b_sock)), ("PORTS", ECHO_PORT.to_string())],
    );
    echo.expect("listening", WAIT);
    let mut pinger = App::spawn(
        "pinger",
        "pinger",
        &dir,
        &[
            ("SOCK", s(&a_sock)),
            ("REMOTE", B.to_string()),
            ("PORT", ECHO_PORT.to_string()),
            ("SEED", seed.to_string()),
        ],
    );
    pinger.expect("connected", WAIT);
    pinger.wait_progress(10, WAIT);

    // The receiving side (this process) on B.
    let mb = Machnet::attach_at(&b_sock).unwrap();
    let mut sink = mb.open_channel(None).unwrap();
    sink.listen(SINK_PORT).unwrap();

    let mut streamer = App::spawn(
        "streamer",
        "streamer",
        &dir,
        &[
            ("SOCK", s(&a_sock)),
            ("REMOTE", B.to_string()),
            ("PORT", SINK_PORT.to_string()),
            ("HOLD_PORT", HELD_PORT.to_string()),
            ("SEED", seed.to_string()),
        ],
    );
    streamer.expect("holding", WAIT);
    // The streamer holds the port: another process (this one) is refused it (a channel of the
    // streamer itself would join its listen group, docs/CHANNEL.md §2).
    {
        let ma = Machnet::attach_at(&a_sock).unwrap();
        let mut ch = ma.open_channel(None).unwrap();
        match ch.listen(HELD_PORT) {
            Err(ListenError::PortInUse(p)) => assert_eq!(p, HELD_PORT),
            other => panic!("listen on the streamer's port: {other:?}"),
        }
    }

    // Receive (checking order and content) until every stream is well under way.
    let mut rx = StreamCheck::new(seed);
    let deadline = Instant::now() + WAIT;
    while rx.next_seq.iter().any(|&n| n < 40) {
        assert!(
            Instant::now() < deadline,
            "streams stuck at {:?} messages",
            rx.next_seq
        );
        rx.poll(&mut sink);
    }
    assert!(
        rx.closed.is_empty(),
        "flows closed before the kill: {:?}",
        rx.closed
    );

    let before_kill = pinger.wait_progress(10, WAIT);
    let status = streamer.kill9();
    let killed = Instant::now();
    assert_eq!(status.signal(), Some(9), "the streamer died of SIGKILL");
    while rx.closed.len() < 4 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "only {} of 4 flows ended within 10 s of the kill: {:?}",
            rx.closed.len(),
            rx.closed
        );
        rx.poll(&mut sink);
    }
    let closed_after = killed.elapsed();
    assert_eq!(rx.stream_of.len(), 4);
    for (flow, reason) in &rx.closed {
        assert_eq!(*reason, Some(CloseCode::Graceful), "flow {flow}");
    }

    // Everything else goes on: the sidecars, and the other app on the same sidecar.
    pinger.wait_progress(before_kill + 20, WAIT);
    assert_running(&mut sa, "A");
    assert_running(&mut sb, "B");
    // The killed app's channels are gone (only the pinger's channel and flow are left on A)...
    wait_engine_totals(&sa, 2, "A after the kill", |c, f, _| c == 1 && f == 1);
    // ...and its port can be listened on by a new app, which serves a flow from B.
    let mut reuse = App::spawn(
        "reuse",
        "echo",
        &dir,
        &[
            ("SOCK", s(&a_sock)),
            ("PORTS", HELD_PORT.to_string()),
            ("LISTEN_RETRY_MS", "5000".into()),
        ],
    );
    let listening = reuse.expect("listening", WAIT);
    let mut ch = mb.open_channel(None).unwrap();
    let flow = ch
        .connect(A, HELD_PORT)
        .expect("connect to the reused port");
    echo_round_trips(&mut ch, &flow, seed, 7, 5);
    close_gracefully(&mut ch, &flow, "reused port");
    assert!(pinger.is_running());

    pinger.tell("quit");
    let pings = pinger.expect("done", WAIT);
    pinger.finish(WAIT);
    echo.tell("quit");
    let report = echo.expect("echo", WAIT);
    echo.finish(WAIT);
    reuse.tell("quit");
    reuse.expect("echo", WAIT);
    reuse.finish(WAIT);
    println!(
        "killed after {} messages ({:.1} MiB) received; all 4 flows closed {closed_after:?} \
         after the kill; pinger {before_kill} round trips before the kill, {pings}; new \
         listener: {listening}; echo server: {report}",
        rx.next_seq.iter().sum::<u64>(),
        rx.received as f64 / MIB as f64
    );
    assert_eq!(field(&report, "graceful"), 1, "{report}");
    assert_eq!(field(&report, "reset") + field(&report, "other"), 0);
    drop((ch, sink, mb));
    assert!(sa.terminate().success());
    assert!(sb.terminate().success());
    println!("sigkill: {:?}", t0.elapsed());
}

/// The figures of the same-host flows in a sidecar log, summed over the engines' latest lines:
/// (engines seen, local flows, packets sent).
fn local_figures(log: &str) -> (usize, u64, u64) {
    let mut latest: HashMap<u32, (u64, u64)> = HashMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("engine ") else {
            continue;
        };
        let Some((engine, rest)) = rest.split_once(": channels ") else {
            continue;
        };
        let num = |s: &str, key: &str| -> Option<u64> {
            s.split_once(key)?.1.split_whitespace().next()?.parse().ok()
        };
        if let (Ok(e), Some(f), Some(tx)) = (
            engine.trim().parse(),
            num(rest, "| local flows "),
            num(rest, " tx "),
        ) {
            latest.insert(e, (f, tx));
        }
    }
    let (f, t) = latest
        .values()
        .fold((0, 0), |(f, t), &(a, b)| (f + a, t + b));
    (latest.len(), f, t)
}

/// The kill test over same-host flows: a streamer process SIGKILLed while streaming on 4 local
/// flows (its two channels on either engine) to this process on the same sidecar. Every
/// message whose `send` it reported returned arrives, in order and intact, then each flow
/// closes gracefully; no local flow is left and no packet was sent.
#[test]
fn an_app_killed_mid_transfer_on_same_host_flows_has_its_messages_delivered() {
    let _serial = serial();
    let seed = seed("sigkill_local");
    let pool = machnet_sidecar::testing::free_udp_pool(&[A], 8);
    let dir = temp_dir("proc-kill-local");
    let uid = nix::unistd::getuid().as_raw().to_string();
    let mut sa = Proc::start(A, 2, pool, &dir, &["--allow-user", uid.as_str()]);
    const SINK_PORT: u16 = 7600;
    const HELD_PORT: u16 = 7601;
    let ma = Machnet::attach_at(&sa.sock).unwrap();
    let mut sink = ma.open_channel(Some(0)).unwrap();
    sink.listen(SINK_PORT).unwrap();
    let mut streamer = App::spawn(
        "streamer",
        "streamer",
        &dir,
        &[
            ("SOCK", sa.sock.to_str().unwrap().to_string()),
            ("REMOTE", A.to_string()),
            ("PORT", SINK_PORT.to_string()),
            ("HOLD_PORT", HELD_PORT.to_string()),
            ("SEED", seed.to_string()),
        ],
    );
    streamer.expect("holding", WAIT);
    let mut rx = StreamCheck::new(seed);
    let deadline = Instant::now() + WAIT;
    while rx.next_seq.iter().any(|&n| n < 40) {
        assert!(
            Instant::now() < deadline,
            "streams stuck at {:?} messages",
            rx.next_seq
        );
        rx.poll(&mut sink);
    }
    let reported = streamer.wait_progress(40, WAIT);
    let status = streamer.kill9();
    assert_eq!(status.signal(), Some(9), "the streamer died of SIGKILL");
    let deadline = Instant::now() + WAIT;
    while rx.closed.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "only {} of 4 flows ended after the kill: {:?}",
            rx.closed.len(),
            rx.closed
        );
        rx.poll(&mut sink);
    }
    for (flow, reason) in &rx.closed {
        assert_eq!(*reason, Some(CloseCode::Graceful), "flow {flow}");
    }
    println!(
        "killed after reporting {reported} sends per stream of thread 0; received {:?} \
         messages ({:.1} MiB)",
        rx.next_seq,
        rx.received as f64 / MIB as f64
    );
    assert!(
        rx.next_seq[0] >= reported && rx.next_seq[1] >= reported,
        "messages whose send returned were lost: {:?} < {reported}",
        rx.next_seq
    );
    // Nothing left: only the sink's channel, no local flow, and no packet ever sent.
    wait_engine_totals(&sa, 2, "after the kill", |c, f, _| c == 1 && f == 0);
    let deadline = Instant::now() + WAIT;
    loop {
        let (engines, flows, tx) = local_figures(&sa.log_text());
        assert_eq!(tx, 0, "packets sent for local flows");
        if engines == 2 && flows == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{flows} local flows left");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_running(&mut sa, "A");
    drop((sink, ma));
    assert!(sa.terminate().success());
}

/// A receiver process accepts a flow and stops reading while the sender (this process) offers
/// over 256 MiB: the sender is held back (`try_send` reports `WouldBlock`, `send` blocks), both
/// sidecars' memory stays bounded, and once the receiver resumes everything arrives intact
/// and in order.
#[test]
fn a_receiver_that_stops_reading_holds_the_sender_back_with_bounded_memory() {
    let _serial = serial();
    let t0 = Instant::now();
    let seed = seed("backpressure");
    let (mut sa, mut sb, dir) = sidecars("proc-bp", 1, 2);
    const PORT: u16 = 7500;
    let mut receiver = App::spawn(
        "sink",
        "sink",
        &dir,
        &[
            ("SOCK", sb.sock.to_str().unwrap().into()),
            ("PORT", PORT.to_string()),
            ("SEED", seed.to_string()),
        ],
    );
    receiver.expect("listening", WAIT);
    let ma = Machnet::attach_at(&sa.sock).unwrap();
    let max = (ma.max_message_len() as usize).min(8 * MIB);
    let sizes = sink_sizes(seed, max);
    let total: usize = sizes.iter().sum();
    let mut ch = ma.open_channel(None).unwrap();
    let flow = ch.connect(B, PORT).unwrap();
    receiver.expect("accepted", WAIT);

    let (pid_a, pid_b) = (pid(&sa), pid(&sb));
    let (rss_a0, rss_b0) = (
        proc_status_kib(pid_a, "VmRSS"),
        proc_status_kib(pid_b, "VmRSS"),
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let would_block = Arc::new(AtomicU64::new(0));
    let sender = {
        let (accepted, blocked, would_block) =
            (accepted.clone(), blocked.clone(), would_block.clone());
        let sizes = sizes.clone();
        std::thread::spawn(move || {
            let mut msg = vec![0u8; max];
            for (i, &len) in sizes.iter().enumerate() {
                fill_into(&mut msg[..len], seed, 3, i as u64);
                match ch.try_send(&flow, &msg[..len]) {
                    Ok(()) => {}
                    Err(SendError::WouldBlock) => {
                        would_block.fetch_add(1, Ordering::SeqCst);
                        blocked.store(true, Ordering::SeqCst);
                        ch.send(&flow, &msg[..len]).expect("blocking send");
                        blocked.store(false, Ordering::SeqCst);
                    }
                    Err(e) => panic!("try_send {i}: {e}"),
                }
                accepted.fetch_add(len as u64, Ordering::SeqCst);
            }
            close_gracefully(&mut ch, &flow, "sender");
        })
    };

    // Wait until the sender is blocked and has made no progress for a second.
    let deadline = Instant::now() + WAIT;
    let (mut last, mut since) = (u64::MAX, Instant::now());
    let (mut peak_a, mut peak_b) = (rss_a0, rss_b0);
    loop {
        if sender.is_finished() {
            if let Err(p) = sender.join() {
                std::panic::resume_unwind(p);
            }
            panic!("the sender finished while nobody read");
        }
        let now = accepted.load(Ordering::SeqCst);
        assert!(
            now < total as u64,
            "the sender was never held back: all {total} bytes accepted while nobody read"
        );
        peak_a = peak_a.max(proc_status_kib(pid_a, "VmRSS"));
        peak_b = peak_b.max(proc_status_kib(pid_b, "VmRSS"));
        if now != last {
            (last, since) = (now, Instant::now());
        } else if blocked.load(Ordering::SeqCst) && since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sender never stalled ({now} of {total} bytes accepted)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_stall = accepted.load(Ordering::SeqCst) as usize;
    let (rss_a1, rss_b1) = (
        proc_status_kib(pid_a, "VmRSS"),
        proc_status_kib(pid_b, "VmRSS"),
    );
    let grow = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1024.0;
    println!(
        "offered {:.0} MiB; held back after {:.1} MiB ({} WouldBlock); sidecar RSS growth while \
         stalled: A {:.1} MiB (peak {:.1}), B {:.1} MiB (peak {:.1})",
        total as f64 / MIB as f64,
        at_stall as f64 / MIB as f64,
        would_block.load(Ordering::SeqCst),
        grow(rss_a0, rss_a1),
        grow(rss_a0, peak_a),
        grow(rss_b0, rss_b1),
        grow(rss_b0, peak_b),
    );
    assert!(would_block.load(Ordering::SeqCst) > 0);
    assert!(
        at_stall < 128 * MIB,
        "{at_stall} bytes accepted before the sender was held back"
    );
    assert!(
        grow(rss_b0, peak_b) < 64.0,
        "receiving sidecar grew too much"
    );
    assert!(grow(rss_a0, peak_a) < 64.0, "sending sidecar grew too much");

    receiver.tell("resume");
    // A failure bound only (the transfer takes 1-10 s depending on load).
    let deadline = Instant::now() + 3 * WAIT;
    while !sender.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the transfer did not complete within {:?} ({} of {total} bytes sent)",
            3 * WAIT,
            accepted.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.join().expect("sender");
    let report = receiver.expect("received", WAIT);
    receiver.finish(WAIT);
    assert_eq!(field(&report, "msgs"), sizes.len() as u64);
    assert_eq!(field(&report, "bytes"), total as u64);
    // Bounded over the whole transfer, including after the resume.
    let (hwm_a, hwm_b) = (
        proc_status_kib(pid_a, "VmHWM"),
        proc_status_kib(pid_b, "VmHWM"),
    );
    println!(
        "whole transfer: peak RSS growth A {:.1} MiB, B {:.1} MiB",
        grow(rss_a0, hwm_a),
        grow(rss_b0, hwm_b)
    );
    assert!(grow(rss_b0, hwm_b) < 64.0, "receiving sidecar peak");
    // The sender's sidecar holds up to a flow send buffer (16 MiB) and reads the full request
    // ring at full speed; 41–52 MiB measured, so a looser bound (unbounded growth would be
    // hundreds of MiB).
    assert!(grow(rss_a0, hwm_a) < 96.0, "sending sidecar peak");
    assert_running(&mut sa, "A");
    assert_running(&mut sb, "B");
    drop(ma);
    assert!(sa.terminate().success());
    assert!(sb.terminate().success());
    println!("backpressure: {:?}", t0.elapsed());
}

/// An app fills one of its channels' memory with garbage: the sidecar closes that channel with
/// `ChannelViolation` (and resets its flow); the app's other channels (same engine and another
/// engine), its attachment, another app on the same sidecar and the sidecar itself go on.
#[test]
fn an_app_scribbling_over_its_channel_loses_only_that_channel() {
    let _serial = serial();
    let t0 = Instant::now();
    let seed = seed("scribble");
    let (mut sa, mut sb, dir) = sidecars("proc-scribble", 2, 1);
    let (a_sock, b_sock) = (
        sa.sock.to_str().unwrap().to_string(),
        sb.sock.to_str().unwrap().to_string(),
    );
    const PORT: u16 = 7600;
    let mut echo = App::spawn(
        "echo",
        "echo",
        &dir,
        &[("SOCK", b_sock), ("PORTS", PORT.to_string())],
    );
    echo.expect("listening", WAIT);
    let client_env = [
        ("SOCK", a_sock),
        ("REMOTE", B.to_string()),
        ("PORT", PORT.to_string()),
        ("SEED", seed.to_string()),
    ];
    let mut pinger = App::spawn("pinger", "pinger", &dir, &client_env);
    pinger.expect("connected", WAIT);
    pinger.wait_progress(10, WAIT);
    let mut scribbler = App::spawn("scribbler", "scribbler", &dir, &client_env);
    scribbler.expect("ready", WAIT);

    let before = pinger.wait_progress(10, WAIT);
    scribbler.tell("scribble");
    let violation = scribbler.expect("violation", WAIT);
    scribbler.expect("done", WAIT);
    scribbler.finish(WAIT);
    pinger.wait_progress(before + 20, WAIT);
    assert_running(&mut sa, "A");
    assert_running(&mut sb, "B");
    // Exactly one violation, and only the pinger's channel and flow are left on A.
    wait_engine_totals(&sa, 2, "A after the scribbler", |c, f, v| {
        v == 1 && c == 1 && f == 1
    });

    pinger.tell("quit");
    pinger.expect("done", WAIT);
    pinger.finish(WAIT);
    echo.tell("quit");
    let report = echo.expect("echo", WAIT);
    echo.finish(WAIT);
    println!("scribbler: {violation}; echo server: {report}");
    // The victim's flow was reset; the pinger's and the scribbler's three others closed.
    assert_eq!(field(&report, "reset"), 1, "{report}");
    assert_eq!(field(&report, "graceful"), 4, "{report}");
    assert_eq!(field(&report, "other"), 0, "{report}");
    assert!(sa.terminate().success());
    assert!(sb.terminate().success());
    println!("scribble: {:?}", t0.elapsed());
}
