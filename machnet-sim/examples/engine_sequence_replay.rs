//! Replays one `engine_sequence` fuzz input step by step, printing each step and the state of
//! both engines after it: `cargo run -p machnet-sim --example engine_sequence_replay -- <file>`
//! (e.g. a crash under `machnet-core/fuzz/artifacts/engine_sequence/`).

use machnet_sim::engine_sequence::{decode_all, Harness, MAX_STEPS};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: engine_sequence_replay <input file>");
        std::process::exit(2);
    };
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
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
