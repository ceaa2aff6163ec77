//! Goodput and retransmissions versus loss rate, for a fixed seed and workload, compared with
//! the checked-in table `tests/snapshots/loss_sweep.txt`.
//!
//! The table is a pure function of the code (the seed is fixed here and deliberately ignores
//! `MACHNET_SIM_SEED`), so any change in protocol behaviour shows up as a diff. When the change is
//! intended, regenerate the file with
//! `UPDATE_SNAPSHOTS=1 cargo test -p machnet-sim --test snapshot` and commit it.
//!
//! Setup: two hosts with 2 engines each, 8 flows, 16 000 messages (1 B–64 KiB, mostly small)
//! in both directions, links of 10 µs delay and 10 Gbit/s with a 512 KiB drop-tail queue, and
//! random loss in both directions. Goodput counts the payload of both directions over the
//! simulated time the workload took.

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use machnet_sim::workload::{SizeClass, SizeMix};
use machnet_sim::{Bandwidth, CloseMode, LinkConfig, NetworkBuilder, WorkloadConfig};

use common::*;

const SEED: u64 = 0x5eed_105e;
const LOSS_PERCENT: [f64; 7] = [0.0, 0.1, 1.0, 5.0, 10.0, 20.0, 30.0];

fn sweep() -> String {
    let mut table = String::new();
    writeln!(table, "# machnet-sim loss sweep: seed {SEED:#x}, 2x2 engines, 8 flows, 16000 messages of 1 B-64 KiB,").unwrap();
    writeln!(table, "# 10 us delay, 10 Gbit/s, 512 KiB queue. Regenerate: UPDATE_SNAPSHOTS=1 cargo test -p machnet-sim --test snapshot").unwrap();
    writeln!(
        table,
        "{:>6} {:>14} {:>12} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "loss%", "goodput_Mbps", "duration_ms", "packets", "retx", "fast", "timeout", "link_lost"
    )
    .unwrap();
    for loss in LOSS_PERCENT {
        let link = LinkConfig {
            delay: Duration::from_micros(10),
            loss: loss / 100.0,
            bandwidth: Some(Bandwidth::gbit(10.0, 512 << 10)),
            ..LinkConfig::default()
        };
        // The snapshot is of plaintext flows, also in a run of the suite with encryption on.
        let mut net = NetworkBuilder::new(SEED)
            .host(2)
            .host(2)
            .link(link)
            .engine_config(lossy_tweak)
            .encrypted(false)
            .build()
            .unwrap();
        let mut config = WorkloadConfig::between(&net, SEED, 0, 1, 8, 16_000);
        config.sizes = SizeMix {
            classes: vec![
                SizeClass {
                    weight: 85,
                    min: 1,
                    max: 512,
                },
                SizeClass {
                    weight: 15,
                    min: 513,
                    max: 64 << 10,
                },
            ],
            max_size_messages: 0,
            edge_sizes: false,
        };
        config.close = CloseMode::AfterExchange;
        let r = run(&format!("loss {loss}%"), &mut net, config);
        writeln!(
            table,
            "{:>6.1} {:>14.1} {:>12.3} {:>10} {:>8} {:>8} {:>8} {:>10}",
            loss,
            r.goodput_mbps(),
            r.duration.as_secs_f64() * 1e3,
            r.packets_sent(),
            r.retransmits(),
            r.engines.fast_retransmits,
            r.engines.timeout_retransmits,
            r.links.lost
        )
        .unwrap();
    }
    table
}

fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => writeln!(out, "  {x}").unwrap(),
            (x, y) => {
                if let Some(x) = x {
                    writeln!(out, "- {x}").unwrap();
                }
                if let Some(y) = y {
                    writeln!(out, "+ {y}").unwrap();
                }
            }
        }
    }
    out
}

#[test]
fn loss_sweep_matches_snapshot() {
    let actual = sweep();
    eprintln!("{actual}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/loss_sweep.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("has a parent")).unwrap();
        std::fs::write(&path, &actual)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; create it with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "loss sweep differs from {} (- expected, + actual); if the change is intended, rerun with \
         UPDATE_SNAPSHOTS=1\n{}",
        path.display(),
        diff(&expected, &actual)
    );
}
