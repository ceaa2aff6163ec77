//! The message sizes of a run, decided up front from the seed so that sender and receiver agree
//! on every message's length without telling each other.

use rand::Rng;

use crate::content::{self, Direction};
use crate::seed;

/// Sizes drawn log-uniformly from `min ..= max` with relative weight `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeClass {
    /// Relative weight of the class in the mix.
    pub weight: u32,
    /// Smallest size, in bytes.
    pub min: u32,
    /// Largest size, in bytes.
    pub max: u32,
}

/// The distribution of message sizes of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeMix {
    /// Classes picked by weight for each message.
    pub classes: Vec<SizeClass>,
    /// Messages of exactly the maximum message length, placed at random positions of the run.
    pub max_size_messages: u32,
    /// Whether to place boundary sizes (1 and 2 bytes, the content header size ±1, one and two
    /// fragments ±1, 64 KiB ±1) at random positions of the run.
    pub edge_sizes: bool,
}

impl SizeMix {
    /// Mostly small messages, some medium, a few large, and three of the maximum length:
    /// 90 % of 1 B–256 B, 9.8 % of 257 B–16 KiB, 0.2 % of 16 KiB–1 MiB (log-uniform within a class).
    pub fn standard() -> Self {
        SizeMix {
            classes: vec![
                SizeClass {
                    weight: 9000,
                    min: 1,
                    max: 256,
                },
                SizeClass {
                    weight: 980,
                    min: 257,
                    max: 16 << 10,
                },
                SizeClass {
                    weight: 20,
                    min: (16 << 10) + 1,
                    max: 1 << 20,
                },
            ],
            max_size_messages: 3,
            edge_sizes: true,
        }
    }

    /// Small and medium messages only (1 B–4 KiB, 95 % of them at most 256 B), for runs at high
    /// loss where large messages would make a run slow.
    pub fn small() -> Self {
        SizeMix {
            classes: vec![
                SizeClass {
                    weight: 95,
                    min: 1,
                    max: 256,
                },
                SizeClass {
                    weight: 5,
                    min: 257,
                    max: 4 << 10,
                },
            ],
            max_size_messages: 0,
            edge_sizes: true,
        }
    }

    /// Every message exactly `len` bytes.
    pub fn fixed(len: u32) -> Self {
        SizeMix {
            classes: vec![SizeClass {
                weight: 1,
                min: len,
                max: len,
            }],
            max_size_messages: 0,
            edge_sizes: false,
        }
    }
}

/// Draws a size log-uniformly from `min ..= max` using integers only (portable): a bit length
/// uniformly, then a value of that bit length uniformly.
fn log_uniform(rng: &mut seed::SimRng, min: u32, max: u32) -> u32 {
    let (min, max) = (min.max(1), max.max(min.max(1)));
    let lo_bits = 32 - min.leading_zeros();
    let hi_bits = 32 - max.leading_zeros();
    let bits = rng.random_range(lo_bits..=hi_bits);
    let lo = (1u32 << (bits - 1)).max(min);
    let hi = if bits == 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
    .min(max);
    rng.random_range(lo..=hi)
}

/// Every message length of a run, per flow and direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    sizes: Vec<[Vec<u32>; 2]>,
}

impl Plan {
    /// Plans `per_direction[d]` messages in direction `d` of each of `flows` flows, with sizes
    /// from `mix` capped at `max_len`; `fragment` (the payload of a full packet) positions the
    /// boundary sizes.
    pub fn new(
        run_seed: u64,
        flows: usize,
        per_direction: [u64; 2],
        mix: &SizeMix,
        max_len: u32,
        fragment: u32,
    ) -> Plan {
        let mut rng = seed::rng(run_seed, "plan", 0);
        let total_weight: u64 = mix.classes.iter().map(|c| u64::from(c.weight)).sum();
        let mut sizes: Vec<[Vec<u32>; 2]> = Vec::with_capacity(flows);
        for _ in 0..flows {
            let mut per_flow: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
            for (d, list) in per_flow.iter_mut().enumerate() {
                *list = (0..per_direction[d])
                    .map(|_| {
                        let mut pick = if total_weight == 0 {
                            0
                        } else {
                            rng.random_range(0..total_weight)
                        };
                        let class = mix
                            .classes
                            .iter()
                            .find(|c| {
                                let hit = pick < u64::from(c.weight);
                                pick = pick.saturating_sub(u64::from(c.weight));
                                hit
                            })
                            .copied()
                            .unwrap_or(SizeClass {
                                weight: 1,
                                min: 1,
                                max: 1,
                            });
                        log_uniform(&mut rng, class.min, class.max).clamp(1, max_len.max(1))
                    })
                    .collect();
            }
            sizes.push(per_flow);
        }
        let mut special: Vec<u32> = vec![max_len; mix.max_size_messages as usize];
        if mix.edge_sizes {
            let h = content::HEADER_LEN as u32;
            special.extend([
                1,
                2,
                h - 1,
                h,
                h + 1,
                fragment - 1,
                fragment,
                fragment + 1,
                2 * fragment - 1,
                2 * fragment,
                2 * fragment + 1,
                (64 << 10) - 1,
                64 << 10,
                (64 << 10) + 1,
            ]);
        }
        let mut plan = Plan { sizes };
        plan.place(&mut rng, &special, max_len);
        plan
    }

    /// Overwrites the sizes of distinct random positions with `special`, as far as positions go.
    fn place(&mut self, rng: &mut seed::SimRng, special: &[u32], max_len: u32) {
        let total = self.total_messages();
        let mut used: Vec<u64> = Vec::new();
        for &len in special.iter().take(total as usize) {
            let pos = loop {
                let p = rng.random_range(0..total);
                if !used.contains(&p) {
                    break p;
                }
            };
            used.push(pos);
            let (f, d, i) = self.locate(pos);
            self.sizes[f][d][i] = len.clamp(1, max_len.max(1));
        }
    }

    /// Flow, direction and index of the `pos`-th message in plan order.
    fn locate(&self, mut pos: u64) -> (usize, usize, usize) {
        for (f, dirs) in self.sizes.iter().enumerate() {
            for (d, list) in dirs.iter().enumerate() {
                if pos < list.len() as u64 {
                    return (f, d, pos as usize);
                }
                pos -= list.len() as u64;
            }
        }
        unreachable!("position beyond the plan")
    }

    /// Messages in direction `dir` of flow `flow`.
    pub fn count(&self, flow: usize, dir: Direction) -> u64 {
        self.sizes[flow][dir.index()].len() as u64
    }

    /// Length of message `index` in direction `dir` of flow `flow`.
    pub fn len(&self, flow: usize, dir: Direction, index: u64) -> usize {
        self.sizes[flow][dir.index()][index as usize] as usize
    }

    /// Messages in the whole run.
    pub fn total_messages(&self) -> u64 {
        self.sizes
            .iter()
            .flat_map(|d| d.iter())
            .map(|l| l.len() as u64)
            .sum()
    }

    /// Bytes in the whole run.
    pub fn total_bytes(&self) -> u64 {
        self.sizes
            .iter()
            .flat_map(|d| d.iter())
            .flat_map(|l| l.iter())
            .map(|&s| u64::from(s))
            .sum()
    }

    /// The largest message of the run.
    pub fn largest(&self) -> u32 {
        self.sizes
            .iter()
            .flat_map(|d| d.iter())
            .flat_map(|l| l.iter())
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Number of messages of exactly `len` bytes.
    pub fn count_of_len(&self, len: u32) -> usize {
        self.sizes
            .iter()
            .flat_map(|d| d.iter())
            .flat_map(|l| l.iter())
            .filter(|&&s| s == len)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_mix_covers_one_byte_to_max() {
        let plan = Plan::new(1, 10, [5000, 5000], &SizeMix::standard(), 8 << 20, 1408);
        assert_eq!(plan.total_messages(), 100_000);
        assert_eq!(plan.count_of_len(8 << 20), 3);
        assert!(plan.count_of_len(1) >= 1);
        assert_eq!(plan.largest(), 8 << 20);
        let small = (0..10)
            .flat_map(|f| (0..5000).map(move |i| (f, i)))
            .filter(|&(f, i)| plan.len(f, Direction::ClientToServer, i) <= 256)
            .count();
        assert!(small > 40_000, "{small}");
        // Deterministic.
        assert_eq!(
            plan,
            Plan::new(1, 10, [5000, 5000], &SizeMix::standard(), 8 << 20, 1408)
        );
    }

    #[test]
    fn log_uniform_stays_in_range() {
        let mut rng = seed::rng(3, "t", 0);
        for (min, max) in [(1, 1), (1, 256), (257, 16384), (5, 6), (100, u32::MAX)] {
            for _ in 0..1000 {
                let v = log_uniform(&mut rng, min, max);
                assert!((min..=max).contains(&v), "{v} not in {min}..={max}");
            }
        }
    }
}
