//! Congestion control over a bottleneck (PROTOCOL.md §7): a drop-tail queue in front of a
//! 1 Gbit/s link, bulk messages in both directions on 8 flows.
//!
//! The delay-based default must keep the queue from overflowing while still filling the link; a
//! huge fixed window (what a sender without congestion control does) must overflow it. Both must
//! still deliver everything exactly once (checked by the workload).

mod common;

use std::time::Duration;

use machnet_core::cc::CongestionConfig;
use machnet_sim::workload::{SizeClass, SizeMix};
use machnet_sim::{Bandwidth, LinkConfig, Report, SeedGuard, WorkloadConfig};

use common::*;

const LINK_GBIT: f64 = 1.0;

fn bulk_run(name: &str, seed: u64, cc: CongestionConfig) -> Report {
    let link = LinkConfig {
        delay: Duration::from_micros(20),
        bandwidth: Some(Bandwidth::gbit(LINK_GBIT, 256 << 10)),
        ..LinkConfig::default()
    };
    let mut net = two_hosts(seed, 2, 2, link, move |_, c| {
        c.congestion = cc.clone();
        c.rto.max_retries = 40;
    })
    .unwrap();
    let mut config = WorkloadConfig::between(&net, seed, 0, 1, 8, 3_000);
    config.sizes = SizeMix {
        classes: vec![SizeClass {
            weight: 1,
            min: 16 << 10,
            max: 64 << 10,
        }],
        max_size_messages: 0,
        edge_sizes: false,
    };
    run(name, &mut net, config)
}

fn goodput_gbit(r: &Report) -> f64 {
    r.bytes_delivered as f64 * 8.0 / r.duration.as_secs_f64() / 1e9
}

#[test]
fn swift_fills_the_bottleneck_without_overflowing_it() {
    let seed = machnet_sim::seed_from_env(0xcc01);
    let _g = SeedGuard::new(seed);
    let swift = bulk_run("swift", seed, CongestionConfig::default());
    let fixed = bulk_run("fixed 512", seed, CongestionConfig::Fixed { window: 512 });
    let (gs, gf) = (goodput_gbit(&swift), goodput_gbit(&fixed));
    eprintln!(
        "swift: {gs:.3} Gbit/s, {} queue drops of {} offered; fixed: {gf:.3} Gbit/s, {} queue drops of {} offered",
        swift.links.queue_drops, swift.links.offered, fixed.links.queue_drops, fixed.links.offered
    );
    // Two directions of a 1 Gbit/s link: at most 2 Gbit/s of goodput.
    assert!(
        gs > 0.6 * 2.0 * LINK_GBIT,
        "swift leaves the link idle: {gs:.3} Gbit/s (seed {seed})"
    );
    assert!(
        swift.links.queue_drops * 100 <= swift.links.offered,
        "swift overflows the queue: {} drops of {} (seed {seed})",
        swift.links.queue_drops,
        swift.links.offered
    );
    assert!(
        fixed.links.queue_drops > 10 * swift.links.queue_drops.max(1),
        "a 512-packet fixed window should overflow a 256 KiB queue: {} drops (seed {seed})",
        fixed.links.queue_drops
    );
}
