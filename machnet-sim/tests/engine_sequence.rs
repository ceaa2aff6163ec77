//! The `engine_sequence` fuzz target's interpreter under the normal test suite: the committed
//! seeds are current and replay without findings, each reaching what it was written for, and
//! random inputs run through the same checks.

use std::path::PathBuf;

use machnet_sim::engine_sequence::{self, decode_all, encode_all, seeds, Outcome, MAX_STEPS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../machnet-core/fuzz/seeds-engine_sequence")
}

/// Keeps the committed seeds in step with the scenarios and the input grammar. Set
/// `MACHNET_REGEN_FUZZ_SEEDS=1` to (re)write them after an intentional change.
#[test]
fn seeds_are_current() {
    let dir = seed_dir();
    let regen = std::env::var_os("MACHNET_REGEN_FUZZ_SEEDS").is_some();
    if regen {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, steps) in seeds::scenarios() {
        assert!(steps.len() <= MAX_STEPS, "{name}: too many steps");
        let bytes = encode_all(&steps);
        assert_eq!(
            decode_all(&bytes, MAX_STEPS),
            steps,
            "{name}: encoding does not round-trip"
        );
        let path = dir.join(name);
        if regen {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{} is stale; rerun with MACHNET_REGEN_FUZZ_SEEDS=1",
                path.display()
            );
        }
    }
}

/// Every file in the seed directory, sorted.
fn seed_names() -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(seed_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn replay(name: &str) -> Outcome {
    let bytes = std::fs::read(seed_dir().join(name)).unwrap();
    engine_sequence::run(&bytes)
}

/// Every committed seed (and any other file in the seed directory) runs without a finding.
#[test]
fn committed_seeds_replay() {
    let names = seed_names();
    assert!(names.len() >= seeds::scenarios().len());
    for name in names {
        let o = replay(&name);
        println!("{name}: {o:?}");
    }
}

/// The same seeds with both engines encrypted (the `engine_sequence_encrypted` fuzz target):
/// no finding, and the honest traffic still gets through — forged packets reach sealed flows
/// only to be dropped.
#[test]
fn committed_seeds_replay_encrypted() {
    let names = seed_names();
    let mut delivered = 0;
    for name in names {
        let bytes = std::fs::read(seed_dir().join(&name)).unwrap();
        let o = engine_sequence::run_encrypted(&bytes);
        println!("{name}: {o:?}");
        delivered += o.delivered;
    }
    assert!(delivered > 0, "encrypted seeds deliver nothing");
}

/// The seeds reach what they were written for (so the fuzzer starts from deep states).
#[test]
fn seeds_reach_their_states() {
    let closed = |o: &Outcome, r: &str| o.closed.iter().any(|c| c == r);

    let o = replay("messages_and_close");
    assert_eq!(o.delivered, 4, "{o:?}");
    assert!(closed(&o, "Graceful"), "{o:?}");

    let o = replay("lossy_reorder");
    assert_eq!(o.delivered, 3, "{o:?}");

    let o = replay("refused_and_timeout");
    assert!(closed(&o, "Refused") && closed(&o, "TimedOut"), "{o:?}");

    let o = replay("no_reader");
    assert_eq!(o.connected, 4, "{o:?}");
    assert!(o.delivered > 0, "{o:?}");

    // Forged DATA, FIN, ACK and RST with guessed tokens change nothing (protocol v2).
    let o = replay("blind_injection");
    assert_eq!(o.attacker_packets, 4, "{o:?}");
    assert_eq!((o.delivered, o.unchecked), (3, 0), "{o:?}");
    assert!(o.closed.is_empty(), "{o:?}");

    let o = replay("syn_flood");
    assert_eq!(o.attacker_packets, 7, "{o:?}");

    let o = replay("abort_and_leftovers");
    assert!(closed(&o, "Aborted") && closed(&o, "Reset"), "{o:?}");

    let o = replay("idle_timeout");
    assert!(closed(&o, "TimedOut"), "{o:?}");
}

/// Random inputs (seeded; the seed is printed) decode, re-encode to the same steps, and run
/// without a finding.
#[test]
fn random_inputs_run_clean() {
    let seed = machnet_sim::seed_from_env(17);
    println!("MACHNET_SIM_SEED={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..200 {
        let len = rng.random_range(0..2000);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let steps = decode_all(&data, MAX_STEPS);
        assert_eq!(decode_all(&encode_all(&steps), MAX_STEPS), steps);
        engine_sequence::run_steps(&steps);
    }
}

/// Found by the fuzzer (reproducer: the seed `regress_cookie_replay`): a delayed duplicate
/// of a client DATA packet that still carries its handshake block and a valid SYN cookie,
/// arriving after the cookie-created server flow ended (within the cookie's 16–32 s), created a
/// new flow that delivered the old message again. A cookie now establishes one flow
/// (`UsedCookies`, PROTOCOL.md §5.5).
#[test]
fn cookie_replay_does_not_deliver_a_message_twice() {
    replay("regress_cookie_replay");
}
