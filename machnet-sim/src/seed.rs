//! Seeds: where every random choice of a simulation comes from.
//!
//! A run is a pure function of one `u64` seed. Sub-seeds for independent consumers (each engine,
//! the links, the workload plan, each host's RSS key) are derived with [`derive()`], so adding a
//! consumer never shifts the random stream of another.
//!
//! Tests take their seed from [`seed_from_env`]: `MACHNET_SIM_SEED=<n>` (decimal or `0x` hex)
//! replays a failing run. [`SeedGuard`] prints that command line if a test panics.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random generator used throughout the simulator: portable and reproducible across
/// platforms and crate versions (unlike `SmallRng`).
pub type SimRng = ChaCha8Rng;

/// Environment variable that overrides a test's default seed.
pub const SEED_ENV: &str = "MACHNET_SIM_SEED";

/// The seed named by `MACHNET_SIM_SEED`, or `default` when it is unset.
///
/// # Panics
/// If the variable is set but is not a decimal or `0x`-prefixed hexadecimal `u64`: silently
/// ignoring a typo would replay the wrong run.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(text) => parse_seed(&text)
            .unwrap_or_else(|| panic!("{SEED_ENV}={text:?} is not a decimal or 0x-hex u64")),
        Err(_) => default,
    }
}

/// Parses a seed written in decimal or as `0x`-prefixed hexadecimal.
pub fn parse_seed(text: &str) -> Option<u64> {
    let t = text.trim().replace('_', "");
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// SplitMix64 finaliser: a bijective mix of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A sub-seed of `seed` for the consumer named by `label` and `index`.
pub fn derive(seed: u64, label: &str, index: u64) -> u64 {
    // FNV-1a over the label keeps distinct labels apart without a hash map or `Hash` impls
    // (whose output is not guaranteed stable).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(mix64(seed ^ h).wrapping_add(mix64(index.wrapping_add(0x9e37_79b9_7f4a_7c15))))
}

/// A generator for the consumer named by `label` and `index`.
pub fn rng(seed: u64, label: &str, index: u64) -> SimRng {
    SimRng::seed_from_u64(derive(seed, label, index))
}

/// Prints how to replay the run when the test holding it panics.
///
/// ```
/// let seed = machnet_sim::seed::seed_from_env(42);
/// let _guard = machnet_sim::seed::SeedGuard::new(seed);
/// // ... assertions: a failure prints `MACHNET_SIM_SEED=42` ...
/// ```
#[derive(Debug)]
pub struct SeedGuard {
    seed: u64,
}

impl SeedGuard {
    /// Arms the guard for `seed`.
    pub fn new(seed: u64) -> Self {
        SeedGuard { seed }
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {seed} (0x{seed:x}); replay with {SEED_ENV}={seed}",
                seed = self.seed
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed("0x2a"), Some(42));
        assert_eq!(parse_seed(" 0X2A "), Some(42));
        assert_eq!(parse_seed("1_000"), Some(1000));
        assert_eq!(parse_seed("forty"), None);
    }

    #[test]
    fn derived_seeds_differ_by_label_and_index() {
        let a = derive(1, "engine", 0);
        assert_ne!(a, derive(1, "engine", 1));
        assert_ne!(a, derive(1, "link", 0));
        assert_ne!(a, derive(2, "engine", 0));
        assert_eq!(a, derive(1, "engine", 0));
    }
}
