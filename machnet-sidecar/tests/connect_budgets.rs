//! Connect budgets (docs/CHANNEL.md §2, "Connect budgets"): an application connecting to a
//! silent host cannot make its sidecar send more than its in-progress budgets allow. Connects
//! beyond a budget fail at once with the budget's code; places come back when connects end;
//! another application has budgets of its own; the SYNs sent stay within
//! (connects started) x (SYNs one connect may send).

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use common::*;
use machnet_channel::control::Response;
use machnet_channel::{CloseCode, RecordKind};
use machnet_core::rss::spray_batch_for_attempt;
use machnet_sidecar::datapath::mem::MemHub;
use machnet_sidecar::{Sidecar, SidecarConfig};

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
/// No host has this address: SYNs to it are never answered.
const SILENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 99);
const PORT: u16 = 7000;
const PER_CHANNEL: usize = 4;
const PER_APP: usize = 6;

/// Environment of the helper process (see [`other_app_role`]).
const SOCK_ENV: &str = "MACHNET_BUDGETS_SOCK";

/// Sends `n` connects to the silent host, then reads notifications until the answer to the
/// last one, which must be a refusal (so every earlier refusal has been written before it:
/// the sidecar answers requests in order, and a started connect to a silent host does not end
/// for seconds). Returns the refused request ids (in order 1..=n) with their codes.
fn connect_burst(ch: &mut AppChannel, n: usize) -> BTreeMap<usize, Option<CloseCode>> {
    let ids: Vec<u32> = (0..n).map(|_| ch.connect_request(SILENT, PORT)).collect();
    let last = *ids.last().expect("n > 0");
    let mut refused = BTreeMap::new();
    loop {
        let note = ch.expect_next();
        assert_eq!(note.kind, RecordKind::ConnectFailed, "{note:?}");
        let pos = ids
            .iter()
            .position(|&i| i == note.aux)
            .expect("one of ours")
            + 1;
        refused.insert(pos, code(&note));
        if note.aux == last {
            return refused;
        }
    }
}

/// The most SYNs one connect to a host that never answers may send: every batch of the
/// handshake schedule (docs/PROTOCOL.md §5.1), sized for the engine count a client assumes of
/// an unknown peer (its own).
fn syns_per_connect(cfg: &SidecarConfig) -> u64 {
    let e = cfg.engine_config(0);
    let h = &e.handshake;
    (0..h.max_syn_attempts)
        .map(|a| {
            u64::from(spray_batch_for_attempt(
                e.engine_count,
                h.success_target,
                a,
                h.max_batch,
            ))
        })
        .sum()
}

fn syns_sent(s: &Sidecar) -> u64 {
    s.reports().iter().map(|r| r.core.syns_sent).sum()
}

/// (connects in progress, refusals by the channel budget, by the app budget, by the rate).
fn budget_stats(s: &Sidecar) -> (usize, u64, u64, u64) {
    s.reports().iter().fold((0, 0, 0, 0), |acc, r| {
        let c = r.engine_loop.connect_refusals;
        (
            acc.0 + r.connects_in_progress,
            acc.1 + c.channel,
            acc.2 + c.app,
            acc.3 + c.rate,
        )
    })
}

/// The other application: a separate process (so a separate pid, a separate application to
/// the sidecar) that connects `PER_CHANNEL + 1` times to the silent host on one channel and
/// prints the refusals. Does nothing unless run by the test below.
#[test]
#[ignore = "an application role, run in a child process by another test of this file"]
fn other_app_role() {
    let Ok(sock) = std::env::var(SOCK_ENV) else {
        return;
    };
    let c = RawClient::connect(sock.as_ref()).expect("connect");
    assert!(matches!(c.hello(), Response::Hello { .. }));
    let mut ch = c.open_channel(None);
    for (pos, code) in connect_burst(&mut ch, PER_CHANNEL + 1) {
        println!("OTHER-APP refused {pos} {code:?}");
    }
}

fn run_other_app(sock: &std::path::Path) -> Vec<String> {
    common::run_other_app(&[(SOCK_ENV, sock.display().to_string())])
}

/// Waits until every connect started on `ch` (`started` of them) has failed, and checks that
/// they timed out.
fn wait_timeouts(ch: &mut AppChannel, started: usize) {
    for _ in 0..started {
        let n = ch.expect_next();
        assert_eq!(
            (n.kind, code(&n)),
            (RecordKind::ConnectFailed, Some(CloseCode::TimedOut)),
            "{n:?}"
        );
    }
}

#[test]
fn connects_to_a_silent_host_beyond_the_budgets_fail_at_once_and_bound_the_syns() {
    let hub = MemHub::new(1);
    let mut cfg = test_config(IP_A, 1, &temp_dir("budgets").join("m.sock"));
    cfg.limits.connects.per_channel = PER_CHANNEL;
    cfg.limits.connects.per_app = PER_APP;
    let per_connect = syns_per_connect(&cfg);
    let s = mem_sidecar(&hub, cfg);
    let client = RawClient::connect(s.control_socket()).unwrap();
    assert!(matches!(client.hello(), Response::Hello { .. }));
    let (mut c1, mut c2) = (client.open_channel(None), client.open_channel(None));
    use CloseCode::{AppConnectLimit, ChannelConnectLimit};

    // Channel 1: its budget of 4 starts, the next 2 are refused by the channel budget.
    let refused = connect_burst(&mut c1, PER_CHANNEL + 2);
    let want: BTreeMap<usize, Option<CloseCode>> = [
        (5, Some(ChannelConnectLimit)),
        (6, Some(ChannelConnectLimit)),
    ]
    .into();
    assert_eq!(refused, want);
    // Channel 2 of the same application: 2 more fill the application's budget of 6.
    let refused = connect_burst(&mut c2, 4);
    let want: BTreeMap<usize, Option<CloseCode>> =
        [(3, Some(AppConnectLimit)), (4, Some(AppConnectLimit))].into();
    assert_eq!(refused, want);
    assert_eq!(budget_stats(&s), (PER_APP, 2, 2, 0));

    // Another application is not held back by this one's budget: its channel starts its 4.
    let lines = run_other_app(s.control_socket());
    assert_eq!(
        lines,
        [format!(
            "refused {} Some(ChannelConnectLimit)",
            PER_CHANNEL + 1
        )],
        "{lines:?}"
    );

    // The started connects time out; their places come back.
    wait_timeouts(&mut c1, PER_CHANNEL);
    wait_timeouts(&mut c2, PER_APP - PER_CHANNEL);
    let after_first_wave = syns_sent(&s);
    assert!(
        after_first_wave >= PER_APP as u64,
        "each started connect sent a SYN: {after_first_wave}"
    );
    let refused = connect_burst(&mut c2, PER_CHANNEL + 1);
    let want: BTreeMap<usize, Option<CloseCode>> =
        [(PER_CHANNEL + 1, Some(ChannelConnectLimit))].into();
    assert_eq!(refused, want, "channel 2 has its whole budget again");
    let refused = connect_burst(&mut c1, 3);
    let want: BTreeMap<usize, Option<CloseCode>> = [(3, Some(AppConnectLimit))].into();
    assert_eq!(refused, want, "and the application its whole budget");
    let (in_progress, channel, app, rate) = budget_stats(&s);
    assert_eq!(in_progress, PER_APP);
    assert_eq!((channel, app, rate), (2 + 1 + 1, 2 + 1, 0));

    // What the budgets bound: SYNs sent ≤ connects started × SYNs per connect.
    let started = PER_APP + PER_CHANNEL + PER_APP;
    let syns = syns_sent(&s);
    println!("{syns} SYNs for {started} connects, bound {per_connect} per connect");
    assert!(
        syns <= started as u64 * per_connect,
        "{syns} SYNs sent for {started} connects of at most {per_connect} SYNs each"
    );
    s.shutdown();
}

/// The scenario, measured (run by hand with `--ignored --nocapture`): an application
/// starts 2,000 connects to a silent host from 8 channels of a 1- and a 2-engine sidecar; prints the
/// SYNs its sidecar sent until every started connect timed out, without budgets (every budget
/// at its maximum) and with the defaults, and checks the bound.
#[test]
#[ignore = "a measurement (about 25 s)"]
fn measure_syns_of_2000_connects_to_a_silent_host() {
    for (engines, unlimited) in [(1, true), (1, false), (2, true), (2, false)] {
        let hub = MemHub::new(1);
        let mut cfg = test_config(IP_A, engines, &temp_dir("budgets-measure").join("m.sock"));
        if unlimited {
            cfg.limits.connects.per_channel = usize::MAX;
            cfg.limits.connects.per_app = usize::MAX;
            cfg.limits.connects.rate_per_app = 1_000_000;
            cfg.limits.connects.burst_per_app = u32::MAX;
        }
        let per_connect = syns_per_connect(&cfg);
        let limits = cfg.limits.connects;
        let s = mem_sidecar(&hub, cfg);
        let client = RawClient::connect(s.control_socket()).unwrap();
        assert!(matches!(client.hello(), Response::Hello { .. }));
        let mut chans: Vec<AppChannel> = (0..8).map(|_| client.open_channel(None)).collect();
        let start = std::time::Instant::now();
        for ch in &mut chans {
            for _ in 0..250 {
                ch.connect_request(SILENT, PORT);
            }
        }
        // Every started connect runs its whole schedule, then times out.
        let deadline = start + WAIT;
        let (refused, started) = loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (in_progress, channel, app, rate) = budget_stats(&s);
            let refused = channel + app + rate;
            let consumed: u64 = s.reports().iter().map(|r| r.engine_loop.requests).sum();
            if in_progress == 0 && consumed >= 2_000 {
                break (refused, 2_000 - refused);
            }
            assert!(std::time::Instant::now() < deadline, "connects never ended");
        };
        let (secs, syns) = (start.elapsed().as_secs_f64(), syns_sent(&s));
        println!(
            "{engines} engine(s), {} ({limits:?}): {started} of 2000 connects started, {refused} refused at once; \
             {syns} SYNs in {secs:.1} s = {:.0} SYN/s; bound {} SYNs",
            if unlimited {
                "no budgets"
            } else {
                "default budgets"
            },
            syns as f64 / secs,
            started * per_connect
        );
        assert!(syns <= started * per_connect);
        s.shutdown();
    }
}
