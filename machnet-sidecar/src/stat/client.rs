//! The `machnet stat` command: connects to a running sidecar's control socket, says `hello`,
//! asks for `stats` and prints the document as JSON or as tables.

use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use machnet_channel::control::{
    ControlError, Request, Response, CONTROL_VERSION, MAX_CONTROL_MESSAGE, MAX_STATS_RESPONSE,
};
use nix::sys::socket::{
    connect, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::time::TimeVal;

use super::schema::{Stats, STATS_VERSION};

/// How long `machnet stat` waits for each answer (engines answer within one loop iteration;
/// the control thread gives up on an engine after 10 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why `machnet stat` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatError {
    /// The control socket could not be reached.
    #[error(
        "cannot connect to {path}: {source} (is the sidecar running, and may this user use it?)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The sidecar did not answer in time, or hung up.
    #[error("the sidecar did not answer")]
    NoAnswer,
    /// The sidecar refused the request.
    #[error("the sidecar refused: {message} ({code:?})")]
    Refused {
        /// The code.
        code: ControlError,
        /// Its message.
        message: String,
    },
    /// The answer is not what this version of `machnet stat` understands.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// What to ask for.
#[derive(Debug, Clone)]
pub struct StatRequest {
    /// The control socket.
    pub socket: PathBuf,
    /// Most flows to list (the sidecar's default if `None`).
    pub max_flows: Option<u32>,
    /// Most channels to list.
    pub max_channels: Option<u32>,
}

/// Asks the sidecar for its statistics; returns the raw document (`stats` of the answer).
pub fn fetch(req: &StatRequest) -> Result<serde_json::Value, StatError> {
    let fd = connect_to(&req.socket)?;
    send_request(
        &fd,
        &Request::Hello {
            version: CONTROL_VERSION,
            client: "machnet stat".into(),
        },
    )?;
    match Response::decode(&recv_answer(&fd, MAX_CONTROL_MESSAGE)?) {
        Ok(Response::Hello { .. }) => {}
        Ok(Response::Error { code, message }) => return Err(StatError::Refused { code, message }),
        other => return Err(StatError::Protocol(format!("{other:?}"))),
    }
    send_request(
        &fd,
        &Request::Stats {
            max_flows: req.max_flows,
            max_channels: req.max_channels,
        },
    )?;
    match Response::decode_stats(&recv_answer(&fd, MAX_STATS_RESPONSE)?) {
        Ok(Response::Stats { stats }) => Ok(stats),
        Ok(Response::Error { code, message }) => Err(StatError::Refused { code, message }),
        other => Err(StatError::Protocol(format!("{other:?}"))),
    }
}

fn connect_to(path: &Path) -> Result<OwnedFd, StatError> {
    let err = |e: nix::Error| StatError::Connect {
        path: path.to_owned(),
        source: e.into(),
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path).map_err(err)?).map_err(err)?;
    let t = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &t).map_err(std::io::Error::from)?;
    Ok(fd)
}

fn send_request(fd: &OwnedFd, r: &Request) -> Result<(), StatError> {
    send(fd.as_raw_fd(), &r.encode(), MsgFlags::MSG_NOSIGNAL).map_err(std::io::Error::from)?;
    Ok(())
}

/// One packet of at most `max` bytes (a longer one is refused as malformed by the decoder).
fn recv_answer(fd: &OwnedFd, max: usize) -> Result<Vec<u8>, StatError> {
    let mut buf = vec![0u8; max + 1];
    match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
        Ok(0) | Err(nix::Error::EAGAIN) | Err(nix::Error::ECONNRESET) => Err(StatError::NoAnswer),
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(e) => Err(StatError::Io(e.into())),
    }
}

/// Runs `machnet stat`: prints the document (pretty JSON with `json`, tables otherwise).
/// Returns the exit status: 0, or 1 with a message on standard error.
pub fn run(req: &StatRequest, json: bool) -> u8 {
    let doc = match fetch(req) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("machnet stat: {e}");
            return 1;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("a JSON value serialises")
        );
        return 0;
    }
    match serde_json::from_value::<Stats>(doc) {
        Ok(s) if s.version == STATS_VERSION => {
            print!("{}", render(&s));
            0
        }
        Ok(s) => {
            eprintln!(
                "machnet stat: the sidecar sent statistics version {} (this machnet reads {STATS_VERSION}); use --json",
                s.version
            );
            1
        }
        Err(e) => {
            eprintln!("machnet stat: unexpected statistics ({e}); use --json");
            1
        }
    }
}

/// The document as tables for people.
pub fn render(s: &Stats) -> String {
    let mut o = String::new();
    let m = &s.memory;
    let _ = writeln!(
        o,
        "machnet {} (pid {}) on {}, {} control connection(s)",
        s.sidecar.build, s.sidecar.pid, s.sidecar.local_ip, s.sidecar.control_connections
    );
    let _ = writeln!(
        o,
        "memory: core held {} B of budget {} B, sidecar held {} B, same-host queued {} B, channel rings {} B",
        m.core_held_bytes, m.memory_budget_bytes, m.sidecar_held_bytes, m.local_queued_bytes, m.channel_memory_bytes
    );
    let mut t = Table::new(&[
        "ENGINE", "CHANNELS", "FLOWS", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES", "RETRANS",
        "CONNECTS", "ACCEPTS", "RSTS", "DROPS",
    ]);
    for e in &s.engines {
        t.row(vec![
            e.engine.to_string(),
            e.channels.to_string(),
            e.flows.to_string(),
            e.rx_packets.to_string(),
            e.rx_bytes.to_string(),
            e.tx_packets.to_string(),
            e.tx_bytes.to_string(),
            (e.fast_retransmits + e.timeout_retransmits).to_string(),
            e.connects.to_string(),
            e.accepts.to_string(),
            e.rsts.to_string(),
            e.drops.values().sum::<u64>().to_string(),
        ]);
    }
    o.push('\n');
    o.push_str(&t.render());
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    let _ = writeln!(
        o,
        "drops: {}",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(" ")
        }
    );
    let mut t = Table::new(&[
        "CHANNEL",
        "ENGINE",
        "PID",
        "UID",
        "FLOWS",
        "MSGS_OUT",
        "BYTES_OUT",
        "MSGS_IN",
        "BYTES_IN",
        "HELD",
        "MEMORY",
        "PORTS",
    ]);
    for c in &s.channels {
        let ports: Vec<String> = c.ports.iter().map(u16::to_string).collect();
        t.row(vec![
            c.channel.to_string(),
            c.engine.to_string(),
            c.pid.to_string(),
            c.uid.to_string(),
            c.flows.to_string(),
            c.messages_out.to_string(),
            c.bytes_out.to_string(),
            c.messages_in.to_string(),
            c.bytes_in.to_string(),
            c.held_bytes.to_string(),
            c.memory_bytes.to_string(),
            ports.join(","),
        ]);
    }
    o.push('\n');
    o.push_str(&t.render());
    if s.channels_omitted > 0 {
        let _ = writeln!(o, "({} more channels not listed)", s.channels_omitted);
    }
    let mut t = Table::new(&[
        "CHANNEL",
        "FLOW",
        "ENGINE",
        "KIND",
        "STATE",
        "LOCAL",
        "REMOTE",
        "MSGS_OUT",
        "MSGS_IN",
        "BYTES_OUT",
        "BYTES_IN",
        "SRTT_US",
        "RETRANS",
    ]);
    let addr = |ip: Option<std::net::Ipv4Addr>, port: Option<u16>| match (ip, port) {
        (Some(ip), Some(p)) => format!("{ip}:{p}"),
        _ => "-".to_owned(),
    };
    for f in &s.flows {
        let n = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let tr = f.transport.as_ref();
        t.row(vec![
            f.channel.to_string(),
            f.handle.to_string(),
            f.engine.to_string(),
            f.kind.clone(),
            f.state.clone(),
            addr(f.local_ip, f.local_port),
            addr(f.remote_ip, f.remote_port),
            n(tr.map(|t| t.messages_sent)),
            n(tr.map(|t| t.messages_received)),
            n(tr.map(|t| t.bytes_sent)),
            n(tr.map(|t| t.bytes_received)),
            n(tr.and_then(|t| t.srtt_us)),
            n(tr.map(|t| t.fast_retransmits + t.timeout_retransmits)),
        ]);
    }
    o.push('\n');
    o.push_str(&t.render());
    if s.flows_omitted > 0 {
        let _ = writeln!(o, "({} more flows not listed)", s.flows_omitted);
    }
    o
}

/// A plain-text table with columns as wide as their widest cell.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let cols = self.rows[0].len();
        let width: Vec<usize> = (0..cols)
            .map(|i| self.rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut o = String::new();
        for r in &self.rows {
            let line: Vec<String> = r
                .iter()
                .zip(&width)
                .map(|(c, &w)| format!("{c:<w$}"))
                .collect();
            o.push_str(line.join("  ").trim_end());
            o.push('\n');
        }
        o
    }
}
