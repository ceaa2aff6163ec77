//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant as WallInstant};

use machnet_core::{DropReason, EngineConfig};
use machnet_sim::network::BuildError;
use machnet_sim::{
    EngineAddr, LinkConfig, Network, NetworkBuilder, Report, Workload, WorkloadConfig,
};

/// Drop reasons that only a damaged datagram can cause (the engines emit well-formed packets).
pub(crate) const DAMAGE_REASONS: &[DropReason] = &[
    DropReason::Truncated,
    DropReason::BadMagic,
    DropReason::BadVersion,
    DropReason::BadType,
    DropReason::BadFlags,
    DropReason::TooManySackBlocks,
    DropReason::LengthMismatch,
    DropReason::BadChecksum,
    DropReason::MissingChecksum,
    DropReason::Malformed,
];

/// A two-host network: host 0 with `client_engines`, host 1 with `server_engines`.
pub(crate) fn two_hosts(
    seed: u64,
    client_engines: u16,
    server_engines: u16,
    link: LinkConfig,
    tweak: impl Fn(EngineAddr, &mut EngineConfig) + 'static,
) -> Result<Network, BuildError> {
    NetworkBuilder::new(seed)
        .host(client_engines)
        .host(server_engines)
        .link(link)
        .engine_config(tweak)
        .build()
}

/// Runs `config` on `net` to completion, printing the report and the wall time; panics with the
/// workload's error (which names the seed) on any violation.
pub(crate) fn run(name: &str, net: &mut Network, config: WorkloadConfig) -> Report {
    let started = WallInstant::now();
    let mut workload = Workload::new(config, net);
    let planned = workload.plan().total_messages();
    let largest = workload.plan().largest();
    let report = match workload.run(net) {
        Ok(r) => r,
        Err(e) => panic!("{name}: {e}"),
    };
    eprintln!(
        "== {name}: {planned} messages planned (largest {largest} B), wall {:.2} s\n{report}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        report.messages_delivered,
        planned,
        "{name}: delivered count (seed {})",
        net.seed()
    );
    report
}

/// Sum of drops that only damaged datagrams cause.
pub(crate) fn damage_drops(report: &Report) -> u64 {
    DAMAGE_REASONS.iter().map(|&r| report.drops(r)).sum()
}

/// Asserts that no packet was dropped for a reason only damage explains, unless the link damaged it.
pub(crate) fn assert_no_unexplained_damage(name: &str, report: &Report) {
    assert_eq!(
        damage_drops(report),
        report.net.corrupted_delivered,
        "{name}: drops for parse/checksum reasons must equal corrupted datagrams delivered (seed {}): {report}",
        report.seed
    );
}

/// Generous engine settings for very lossy links: more retries before declaring the peer dead.
pub(crate) fn lossy_tweak(_: EngineAddr, c: &mut EngineConfig) {
    c.rto.max_retries = 40;
    c.handshake.max_syn_attempts = 12;
    c.idle_timeout = Duration::from_secs(60);
}

/// Simulator bookkeeping: every packet an engine sent was offered to a link, and every copy a
/// link scheduled was delivered, dropped at a down host, or is still in flight.
pub(crate) fn assert_conservation(name: &str, net: &Network) {
    let engines = net.total_engine_stats();
    let links = net.total_link_stats();
    let sim = net.stats();
    assert_eq!(
        links.offered + sim.unroutable + sim.from_down_host,
        engines.packets_sent,
        "{name}: packets sent vs offered to links"
    );
    assert_eq!(
        sim.delivered + sim.to_down_host + net.in_flight() as u64,
        links.scheduled,
        "{name}: scheduled copies vs delivered"
    );
    assert_eq!(
        sim.delivered, engines.packets_received,
        "{name}: delivered vs received by engines"
    );
}
