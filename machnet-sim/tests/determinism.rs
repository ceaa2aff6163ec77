//! A run is a pure function of its seed: the same seed gives the same report (every engine, link
//! and simulator counter) and the same event trace; another seed gives another run.

mod common;

use std::time::Duration;

use machnet_core::time::Instant;
use machnet_core::Event;
use machnet_sim::{
    seed_from_env, Bandwidth, EngineAddr, LinkConfig, Network, Reorder, Report, SeedGuard,
    Workload, WorkloadConfig,
};

use common::*;

fn faulty_link() -> LinkConfig {
    LinkConfig {
        delay: Duration::from_micros(7),
        jitter: Duration::from_micros(5),
        loss: 0.05,
        duplicate: 0.02,
        reorder: Reorder {
            probability: 0.02,
            extra_delay: Duration::from_micros(50),
        },
        corrupt: 0.01,
        bandwidth: Some(Bandwidth::gbit(10.0, 1 << 20)),
    }
}

/// Runs a workload and returns its report and the full trace of (time, engine, event).
fn run_traced(seed: u64) -> (Report, Vec<(Instant, EngineAddr, Event)>) {
    let mut net: Network = two_hosts(seed, 3, 4, faulty_link(), lossy_tweak).unwrap();
    net.record_events(true);
    let mut wl = Workload::new(WorkloadConfig::between(&net, seed, 0, 1, 12, 20_000), &net);
    let report = wl.run(&mut net).unwrap_or_else(|e| panic!("{e}"));
    (report, net.recorded_events().to_vec())
}

#[test]
fn same_seed_same_run() {
    let seed = seed_from_env(0x4001);
    let _g = SeedGuard::new(seed);
    let (r1, t1) = run_traced(seed);
    let (r2, t2) = run_traced(seed);
    assert_eq!(r1, r2, "reports of two runs with seed {seed}");
    assert_eq!(t1.len(), t2.len(), "event counts (seed {seed})");
    if let Some(i) = (0..t1.len()).find(|&i| t1[i] != t2[i]) {
        panic!(
            "traces diverge at event {i}: {:?} vs {:?} (seed {seed})",
            t1[i], t2[i]
        );
    }
    let (r3, _) = run_traced(seed ^ 0x9e37_79b9);
    assert_ne!(
        r1.engines, r3.engines,
        "a different seed must give a different run"
    );
}
