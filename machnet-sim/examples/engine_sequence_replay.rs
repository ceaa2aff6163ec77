//! Replays `engine_sequence` fuzz inputs.
//!
//! - `cargo run -p machnet-sim --example engine_sequence_replay -- <file>`: one input, step by
//!   step, printing each step and the state of both engines after it (`VERBOSE=1`: every
//!   endpoint too), e.g. a crash under `machnet-core/fuzz/artifacts/engine_sequence/`;
//! - `... -- <directory>`: every input of a corpus, then how many reached each way a flow ends,
//!   each drop reason and memory reclaim (a picture of the states the corpus covers).

use std::collections::BTreeMap;
use std::path::Path;

use machnet_sim::engine_sequence::{self, decode_all, Harness, MAX_STEPS};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: engine_sequence_replay <input file | corpus directory>");
        std::process::exit(2);
    };
    let path = Path::new(&path);
    if path.is_dir() {
        summarize(path);
        return;
    }
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Harness::new();
    for (i, s) in decode_all(&data, MAX_STEPS).iter().enumerate() {
        println!("{i}: {s:?}");
        h.step(s);
        println!("   {}", h.debug_line());
        if std::env::var_os("VERBOSE").is_some() {
            print!("{}", h.describe_endpoints());
        }
    }
    println!("final drain: {:?}", h.finish());
}

/// Runs every file of `dir` and counts the inputs that reached each state.
fn summarize(dir: &Path) {
    let mut inputs = 0u64;
    let mut reached: BTreeMap<String, u64> = BTreeMap::new();
    let mut delivered = 0u64;
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let data = std::fs::read(entry.expect("entry").path()).expect("readable file");
        let o = engine_sequence::run(&data);
        inputs += 1;
        delivered += o.delivered;
        let mut states: Vec<String> = o.closed.iter().map(|c| format!("closed {c}")).collect();
        states.extend(o.drops.iter().map(|(d, _)| format!("drop {d}")));
        if o.memory_reclaims > 0 {
            states.push("memory reclaim".into());
        }
        if o.attacker_packets > 0 {
            states.push("attacker packets".into());
        }
        states.sort();
        states.dedup();
        for s in states {
            *reached.entry(s).or_default() += 1;
        }
    }
    println!("{inputs} inputs, {delivered} messages delivered and checked; inputs reaching:");
    for (state, n) in reached {
        println!("  {n:>7}  {state}");
    }
}
