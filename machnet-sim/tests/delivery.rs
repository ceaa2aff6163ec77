//! Exactly-once, in-order, byte-identical delivery under faults.
//!
//! Every scenario moves at least 100 000 messages (summed over flows and both directions) and
//! checks each one (see `machnet_sim::workload`). Sizes come from `SizeMix::standard()` — 90 %
//! of 1–256 B, ~10 % up to 16 KiB, 0.2 % up to 1 MiB, boundary sizes (1 B, one and two fragments
//! ±1, 64 KiB ±1), and three messages of the maximum length (8 MiB) per run. The simulator is fast
//! enough (about a second of wall time per run, even at 30 % loss) that no scenario needs a
//! lighter mix. `random_scenarios` adds runs whose engine counts and faults are drawn from the
//! seed.
//!
//! The seed of every test can be replaced with `MACHNET_SIM_SEED=<n>`; failures print it.

mod common;

use std::time::Duration;

use machnet_core::{ChecksumMode, DropReason};
use machnet_sim::{
    seed, seed_from_env, Bandwidth, LinkConfig, Network, NetworkBuilder, Reorder, SeedGuard,
    Workload, WorkloadConfig,
};
use rand::Rng;

use common::*;

const MESSAGES: u64 = 100_000;

fn datacenter_link() -> LinkConfig {
    LinkConfig {
        delay: Duration::from_micros(5),
        bandwidth: Some(Bandwidth::gbit(25.0, 4 << 20)),
        ..LinkConfig::default()
    }
}

#[test]
fn clean_network_1x1() {
    let seed = seed_from_env(0x1001);
    let _g = SeedGuard::new(seed);
    let mut net = two_hosts(seed, 1, 1, datacenter_link(), |_, _| {}).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 4, MESSAGES);
    let r = run("clean 1x1", &mut net, config);
    assert_eq!(
        r.engines.total_drops() - r.drops(DropReason::Duplicate),
        0,
        "{r}"
    );
    assert_eq!(
        r.retransmits(),
        0,
        "a clean network needs no retransmission: {r}"
    );
}

#[test]
fn loss_1_percent_2x4() {
    let seed = seed_from_env(0x1002);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        loss: 0.01,
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 2, 4, link, |_, _| {}).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 16, MESSAGES);
    let r = run("1% loss 2x4", &mut net, config);
    assert!(r.retransmits() > 0, "{r}");
    assert_no_unexplained_damage("1% loss", &r);
}

#[test]
fn loss_10_percent_4x4() {
    let seed = seed_from_env(0x1003);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        loss: 0.10,
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 4, 4, link, lossy_tweak).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 16, MESSAGES);
    let r = run("10% loss 4x4", &mut net, config);
    assert!(r.retransmits() > 0, "{r}");
    assert_no_unexplained_damage("10% loss", &r);
}

#[test]
fn loss_30_percent_3x5() {
    let seed = seed_from_env(0x1004);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        loss: 0.30,
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 3, 5, link, lossy_tweak).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 30, MESSAGES);
    let r = run("30% loss 3x5", &mut net, config);
    assert!(r.retransmits() > 0, "{r}");
    assert_eq!(r.connections(), 30, "{r}");
}

#[test]
fn loss_30_percent_1x1() {
    let seed = seed_from_env(0x1005);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        loss: 0.30,
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 1, 1, link, lossy_tweak).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 8, MESSAGES);
    let r = run("30% loss 1x1", &mut net, config);
    assert!(r.retransmits() > 0, "{r}");
}

#[test]
fn reordering_8x8() {
    let seed = seed_from_env(0x1006);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        reorder: Reorder {
            probability: 0.05,
            extra_delay: Duration::from_micros(40),
        },
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 8, 8, link, |_, _| {}).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 64, MESSAGES);
    let r = run("reorder 8x8", &mut net, config);
    assert!(r.links.reordered > 1000, "{r}");
    assert_no_unexplained_damage("reorder", &r);
}

#[test]
fn duplication_2x4() {
    let seed = seed_from_env(0x1007);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        duplicate: 0.05,
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 2, 4, link, |_, _| {}).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 8, MESSAGES);
    let r = run("duplicate 2x4", &mut net, config);
    assert!(r.links.duplicated > 1000, "{r}");
    assert!(
        r.drops(DropReason::Duplicate) > 0,
        "duplicates must be recognised: {r}"
    );
    assert_no_unexplained_damage("duplicate", &r);
}

#[test]
fn corruption_4x4() {
    let seed = seed_from_env(0x1008);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        corrupt: 0.02,
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 4, 4, link, |_, _| {}).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 16, MESSAGES);
    let r = run("corrupt 4x4", &mut net, config);
    // Every corrupted datagram was dropped by the parser or the checksum, none delivered (the
    // workload verified every byte), and the checksum caught most of them.
    assert!(r.net.corrupted_delivered > 1000, "{r}");
    assert_no_unexplained_damage("corrupt", &r);
    assert!(
        r.drops(DropReason::BadChecksum) * 10 >= r.net.corrupted_delivered * 6,
        "most corruption must be caught by the checksum: {r}"
    );
}

#[test]
fn jitter_3x5() {
    let seed = seed_from_env(0x1009);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        jitter: Duration::from_micros(20),
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 3, 5, link, |_, _| {}).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 15, MESSAGES);
    run("jitter 3x5", &mut net, config);
}

#[test]
fn many_flows_100_4x4() {
    let seed = seed_from_env(0x100a);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        loss: 0.005,
        ..datacenter_link()
    };
    let mut net = two_hosts(seed, 4, 4, link, |_, _| {}).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 100, MESSAGES);
    let r = run("100 flows 4x4", &mut net, config);
    assert_eq!(r.connections(), 100, "{r}");
}

#[test]
fn everything_at_once_8x8() {
    let seed = seed_from_env(0x100b);
    let _g = SeedGuard::new(seed);
    let link = LinkConfig {
        delay: Duration::from_micros(10),
        jitter: Duration::from_micros(10),
        loss: 0.03,
        duplicate: 0.02,
        reorder: Reorder {
            probability: 0.02,
            extra_delay: Duration::from_micros(100),
        },
        corrupt: 0.01,
        bandwidth: Some(Bandwidth::gbit(10.0, 1 << 20)),
    };
    let mut net = two_hosts(seed, 8, 8, link, lossy_tweak).unwrap();
    let config = WorkloadConfig::between(&net, seed, 0, 1, 64, MESSAGES);
    let r = run("all faults 8x8", &mut net, config);
    assert_no_unexplained_damage("all faults", &r);
}

/// Ten runs whose engine counts (1–8 each side), flow count and faults are drawn from the seed,
/// 20 000 messages each.
#[test]
fn random_scenarios() {
    let seed = seed_from_env(0x100c);
    let _g = SeedGuard::new(seed);
    for k in 0..10 {
        let run_seed = seed::derive(seed, "scenario", k);
        let mut rng = seed::rng(run_seed, "params", 0);
        let (ec, es) = (rng.random_range(1..=8u16), rng.random_range(1..=8u16));
        let flows = rng.random_range(1..=48usize);
        let link = LinkConfig {
            delay: Duration::from_micros(rng.random_range(0..=50)),
            jitter: Duration::from_micros(rng.random_range(0..=20)),
            loss: rng.random_range(0.0..0.2),
            duplicate: rng.random_range(0.0..0.05),
            reorder: Reorder {
                probability: rng.random_range(0.0..0.05),
                extra_delay: Duration::from_micros(rng.random_range(0..=200)),
            },
            corrupt: rng.random_range(0.0..0.03),
            bandwidth: rng.random_bool(0.5).then(|| {
                Bandwidth::gbit(
                    rng.random_range(1.0..40.0),
                    rng.random_range(64 << 10..8 << 20),
                )
            }),
        };
        let name = format!("scenario {k} (seed {run_seed}): {ec}x{es}, {flows} flows, {link:?}");
        let mut net = NetworkBuilder::new(run_seed)
            .host(ec)
            .host(es)
            .link(link)
            .engine_config(lossy_tweak)
            .replay_seed(seed)
            .build()
            .unwrap();
        let config = WorkloadConfig::between(&net, run_seed, 0, 1, flows, 20_000);
        let r = run(&name, &mut net, config);
        assert_no_unexplained_damage(&name, &r);
    }
}

/// Two hosts (the second with `server_engines`) over a link that damages 1 % of datagrams, with
/// checksums left to a datapath that checks none.
fn unchecksummed_corrupting_network(seed: u64, server_engines: u16, encrypted: bool) -> Network {
    NetworkBuilder::new(seed)
        .host(1)
        .host(server_engines)
        .link(LinkConfig {
            corrupt: 0.01,
            ..datacenter_link()
        })
        .engine_config(|_, c| c.checksum = ChecksumMode::Datapath)
        .encrypted(encrypted)
        .build()
        .unwrap()
}

/// The checker itself: with checksums off (the engines trust the datapath) corrupted datagrams
/// reach the application, and the workload must notice and name the seed.
#[test]
fn the_checker_catches_corruption_when_checksums_are_off() {
    let seed = seed_from_env(0x100d);
    let _g = SeedGuard::new(seed);
    // Plaintext even in an encrypted run of the suite: the AEAD would catch the damage.
    let mut net = unchecksummed_corrupting_network(seed, 1, false);
    let config = WorkloadConfig::between(&net, seed, 0, 1, 4, 20_000);
    let err = Workload::new(config, &net)
        .run(&mut net)
        .expect_err("corrupted messages must not pass the checker");
    eprintln!("{err}");
    assert!(
        err.to_string()
            .contains(&format!("MACHNET_SIM_SEED={seed}")),
        "{err}"
    );
}

/// Encrypted flows (PROTOCOL.md §12) need no checksum: with checksums off, every corrupted
/// datagram fails to authenticate and is dropped (`BadSeal`, or a parse error when the damage hit
/// the header's framing), and every message still arrives intact.
#[test]
fn encryption_catches_corruption_without_checksums() {
    let seed = seed_from_env(0x100e);
    let _g = SeedGuard::new(seed);
    let mut net = unchecksummed_corrupting_network(seed, 2, true);
    let config = WorkloadConfig::between(&net, seed, 0, 1, 4, 20_000);
    let r = run("encrypted_corruption_no_checksum", &mut net, config);
    assert!(
        r.net.corrupted_delivered > 0,
        "the link must have damaged datagrams: {r}"
    );
    assert!(r.drops(DropReason::BadSeal) > 0, "{r}");
    assert!(
        r.drops(DropReason::BadSeal)
            + damage_drops(&r)
            + r.drops(DropReason::BadToken)
            + r.drops(DropReason::SealMismatch)
            + r.drops(DropReason::UnknownFlow)
            + r.drops(DropReason::StaleHandshake)
            + r.drops(DropReason::WrongEngine)
            >= r.net.corrupted_delivered,
        "every damaged datagram is dropped: {r}"
    );
}
