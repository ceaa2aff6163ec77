//! RSS--: connection setup across hosts with 1–8 engines each, behind opaque RSS.
//!
//! Every `connect` must establish. The handshake packets per setup (SYNs + SYN-ACKs, both sides)
//! are compared with the paper's analysis (§4.2.1): one round costs `spray_batch(Es) +
//! spray_batch(Ec)` packets (25 for 4×4 and 55 for 8×8 in the paper, which rounds; 26 and 56
//! here, rounding up) and succeeds with probability ≥ 0.95; a failed round is retried after a
//! timeout with doubled batches. [`model`] computes the mean and variance of that process
//! exactly; the measured mean must lie within a few standard errors of it.
//!
//! With the deterministic hook (each engine knows its own NIC's Toeplitz key through
//! `ToeplitzOracle`), the client names a reply path that lands on its engine, so the server
//! answers with a single SYN-ACK.

use machnet_core::rss::{spray_batch, spray_batch_for_attempt};
use machnet_core::EngineConfig;
use machnet_sim::handshake::{self, SetupCost};
use machnet_sim::{seed, seed_from_env, SeedGuard};

/// Connections per engine-count pair.
const CONNECTIONS: usize = 256;

fn measure(
    seed: u64,
    ec: u16,
    es: u16,
    oracle: bool,
    warm_up: bool,
    connections: usize,
) -> SetupCost {
    handshake::measure(seed, ec, es, oracle, warm_up, connections).unwrap_or_else(|e| panic!("{e}"))
}

/// Mean and variance of the handshake packets of one setup under the RSS-- retry process:
/// round `k` sprays `spray_batch_for_attempt(Es, k)` SYNs; if one lands on the listening engine
/// the server sprays `spray_batch_for_attempt(Ec, k)` SYN-ACKs (or one on a predicted path with
/// the oracle); the round succeeds if a SYN-ACK lands on the connecting engine. The client sizes
/// its SYN batches for `assumed_es` engines: the server's real count once it has heard from the
/// server, its own engine count before.
fn model(ec: u16, es: u16, oracle: bool, assumed_es: u16) -> (f64, f64) {
    let h = EngineConfig::new(std::net::Ipv4Addr::LOCALHOST, 0, 1).handshake;
    let hit = |engines: u16, n: u32| 1.0 - (1.0 - 1.0 / f64::from(engines)).powi(n as i32);
    // (probability, cost) of every path; at most 3^attempts of them.
    let mut open = vec![(1.0f64, 0.0f64)];
    let mut done = Vec::new();
    for k in 0..h.max_syn_attempts {
        let bs = spray_batch_for_attempt(assumed_es, h.success_target, k, h.max_batch);
        let bc = if oracle {
            1
        } else {
            spray_batch_for_attempt(ec, h.success_target, k, h.max_batch)
        };
        let a = hit(es, bs);
        let b = if oracle { 1.0 } else { hit(ec, bc) };
        let mut next = Vec::new();
        for (p, cost) in open {
            let syn_only = cost + f64::from(bs);
            let both = syn_only + f64::from(bc);
            done.push((p * a * b, both));
            next.push((p * (1.0 - a), syn_only));
            next.push((p * a * (1.0 - b), both));
        }
        open = next.into_iter().filter(|&(p, _)| p > 1e-12).collect();
    }
    let mass: f64 = done.iter().map(|(p, _)| p).sum();
    let mean = done.iter().map(|(p, c)| p * c).sum::<f64>() / mass;
    let var = done
        .iter()
        .map(|(p, c)| p * (c - mean).powi(2))
        .sum::<f64>()
        / mass;
    (mean, var)
}

/// Checks a measured mean against the model: within five standard errors plus 3 %.
fn check(ec: u16, es: u16, oracle: bool, assumed_es: u16, measured: &SetupCost) {
    let (mean, var) = model(ec, es, oracle, assumed_es);
    let tolerance = 5.0 * (var / measured.connections as f64).sqrt() + 0.03 * mean;
    let got = measured.per_setup();
    assert!(
        (got - mean).abs() <= tolerance,
        "{ec}x{es} (oracle {oracle}): {got:.2} handshake packets per setup, model {mean:.2} ± {tolerance:.2}"
    );
    let first_round =
        f64::from(spray_batch(assumed_es, 0.95) + if oracle { 1 } else { spray_batch(ec, 0.95) });
    assert!(
        got >= first_round - 1e-9,
        "{ec}x{es}: {got:.2} is below one full round ({first_round})"
    );
}

#[test]
fn every_connect_establishes_for_1_to_8_engines_each_side() {
    let seed = seed_from_env(0x2001);
    let _g = SeedGuard::new(seed);
    let mut table =
        String::from("client×server  first round  model mean  measured  (packets per setup)\n");
    let (mut total_measured, mut total_model, mut total_var) = (0.0, 0.0, 0.0);
    for ec in 1..=8u16 {
        for es in 1..=8u16 {
            let s = measure(
                seed::derive(seed, "pair", u64::from(ec * 16 + es)),
                ec,
                es,
                false,
                true,
                CONNECTIONS,
            );
            check(ec, es, false, es, &s);
            let (mean, var) = model(ec, es, false, es);
            total_measured += s.per_setup();
            total_model += mean;
            total_var += var / CONNECTIONS as f64;
            table.push_str(&format!(
                "{ec}×{es}{:>19} {mean:>11.2} {:>9.2}\n",
                spray_batch(es, 0.95) + spray_batch(ec, 0.95),
                s.per_setup()
            ));
            if ec == es && ec == 1 {
                assert_eq!(
                    s.per_setup(),
                    2.0,
                    "1x1 needs exactly one SYN and one SYN-ACK"
                );
            }
        }
    }
    eprintln!("{table}");
    // Over all 64 pairs the sum is much tighter.
    let tolerance = 4.0 * total_var.sqrt() + 0.01 * total_model;
    assert!(
        (total_measured - total_model).abs() <= tolerance,
        "sum of means over all pairs: measured {total_measured:.1}, model {total_model:.1} ± {tolerance:.1}"
    );
}

#[test]
fn paper_figures_for_square_engine_counts() {
    let seed = seed_from_env(0x2002);
    let _g = SeedGuard::new(seed);
    // n×n, success in the first round: 2 × spray_batch(n).
    assert_eq!(spray_batch(4, 0.95) * 2, 26); // paper: 25 (rounded)
    assert_eq!(spray_batch(8, 0.95) * 2, 56); // paper: 55 (rounded)
    for n in [1u16, 2, 4, 8] {
        let s = measure(
            seed::derive(seed, "square", u64::from(n)),
            n,
            n,
            false,
            true,
            512,
        );
        let first_round = f64::from(2 * spray_batch(n, 0.95));
        let (mean, _) = model(n, n, false, n);
        eprintln!("{n}×{n}: {:.2} packets per setup (one round {first_round}, model with retries {mean:.2})", s.per_setup());
        check(n, n, false, n, &s);
    }
}

#[test]
fn rss_oracle_sends_a_single_syn_ack() {
    let seed = seed_from_env(0x2003);
    let _g = SeedGuard::new(seed);
    let mut table =
        String::from("client×server  sprayed  with oracle  SYN-ACKs per setup (oracle)\n");
    for (ec, es) in [(1u16, 1u16), (2, 2), (4, 4), (8, 8), (3, 5), (8, 1), (1, 8)] {
        let pair_seed = seed::derive(seed, "oracle", u64::from(ec * 16 + es));
        let sprayed = measure(pair_seed, ec, es, false, true, CONNECTIONS);
        let hooked = measure(pair_seed, ec, es, true, true, CONNECTIONS);
        check(ec, es, true, es, &hooked);
        table.push_str(&format!(
            "{ec}×{es}{:>17.2} {:>12.2} {:>12.3}\n",
            sprayed.per_setup(),
            hooked.per_setup(),
            hooked.syn_acks_per_setup()
        ));
        // The SYN-ACK goes on the path the client named, which lands on its engine: exactly one
        // per setup.
        assert_eq!(
            hooked.syn_acks, hooked.connections as u64,
            "{ec}x{es}: SYN-ACKs sent for {} setups with the oracle",
            hooked.connections
        );
        if ec > 1 {
            assert!(
                hooked.per_setup() < sprayed.per_setup(),
                "{ec}x{es}: the oracle must save packets ({:.2} vs {:.2})",
                hooked.per_setup(),
                sprayed.per_setup()
            );
        }
    }
    eprintln!("{table}");
}

/// Before a client engine has heard from a server host it cannot know how many engines the server
/// has; it sizes its SYN batches by its own engine count. Every connect still establishes (too
/// small a batch is made up by retries), and the cost follows the model with that assumption.
#[test]
fn first_contact_sizes_syn_batches_by_own_engine_count() {
    let seed = seed_from_env(0x2004);
    let _g = SeedGuard::new(seed);
    let mut table = String::from("client×server  first contact  model  known peer model\n");
    for (ec, es) in [(1u16, 8u16), (8, 1), (2, 6), (4, 4), (3, 5)] {
        let s = handshake::measure_first_contact(
            seed::derive(seed, "first", u64::from(ec * 16 + es)),
            ec,
            es,
            16,
            16,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        check(ec, es, false, ec, &s);
        table.push_str(&format!(
            "{ec}×{es}{:>22.2} {:>6.2} {:>17.2}\n",
            s.per_setup(),
            model(ec, es, false, ec).0,
            model(ec, es, false, es).0
        ));
    }
    eprintln!("{table}");
}

/// 256 clients connecting at the same instant to one server engine: each setup asks the server
/// for a spray of SYN-ACKs, together far more than the engine's answer budget allows at once.
/// Setups may be slower, but every one must establish.
#[test]
fn a_burst_of_concurrent_connects_all_establish() {
    let seed = seed_from_env(0x2005);
    let _g = SeedGuard::new(seed);
    let mut failures = Vec::new();
    for (ec, es, count) in [(8u16, 1u16, 256usize), (4, 4, 512), (1, 1, 1024)] {
        let mut net = handshake::pair(seed, ec, es, false).unwrap_or_else(|e| panic!("{e}"));
        // Warm up so that batches are sized for the real server.
        handshake::connect_all(&mut net, 0, usize::from(ec)).unwrap_or_else(|e| panic!("{e}"));
        net.run_for(handshake::WAVE_GAP);
        let t0 = net.now();
        match handshake::connect_all(&mut net, usize::from(ec), count) {
            Ok(flows) => {
                assert_eq!(flows.len(), 2 * count);
                eprintln!(
                    "{ec}x{es}: {count} concurrent connects established in {:?}",
                    net.now() - t0
                );
            }
            Err(e) => failures.push(format!("{ec}x{es}, {count} concurrent connects: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// With the remote host's RSS table known too (PROTOCOL.md §5.4), nothing is sprayed: the first
/// connect to a listener sends one SYN to each engine of the server (one certainly lands on the
/// listener), later connects to the same listener send exactly one SYN, and every SYN-ACK is a
/// single packet on the client's reply hint.
#[test]
fn oracle_knowing_both_hosts_needs_no_spraying() {
    let seed = seed_from_env(0x2006);
    let _g = SeedGuard::new(seed);
    for (ec, es) in [(1u16, 1u16), (2, 2), (4, 4), (8, 8), (3, 5), (8, 1), (1, 8)] {
        let mut net =
            handshake::pair_with(seed, ec, es, true, true).unwrap_or_else(|e| panic!("{e}"));
        let pairs = usize::from(ec) * usize::from(es);
        let before = net.total_engine_stats();
        handshake::connect_all(&mut net, 0, pairs).unwrap_or_else(|e| panic!("{e}"));
        let first = net.total_engine_stats();
        assert_eq!(
            first.syns_sent - before.syns_sent,
            (pairs * usize::from(es)) as u64,
            "{ec}x{es}: first contact"
        );
        assert_eq!(
            first.syn_acks_sent - before.syn_acks_sent,
            pairs as u64,
            "{ec}x{es}: SYN-ACKs"
        );
        handshake::connect_all(&mut net, pairs, pairs).unwrap_or_else(|e| panic!("{e}"));
        let again = net.total_engine_stats();
        assert_eq!(
            again.syns_sent - first.syns_sent,
            pairs as u64,
            "{ec}x{es}: known listener engine"
        );
        assert_eq!(
            again.syn_acks_sent - first.syn_acks_sent,
            pairs as u64,
            "{ec}x{es}: SYN-ACKs"
        );
        eprintln!(
            "{ec}x{es}: first contact {} packets per setup, then 2",
            usize::from(es) + 1
        );
    }
}
