//! `machnet-sim`: a deterministic, seeded network simulator for [`machnet_core`] engines.
//!
//! A [`Network`] holds hosts, each with one or more sans-IO engines behind a NIC with opaque RSS,
//! joined by [`link`]s that delay, lose, duplicate, reorder and corrupt datagrams. Time is
//! simulated and every random choice derives from one seed ([`seed`]), so a failing run replays
//! exactly with `MACHNET_SIM_SEED=<seed>`. A [`Workload`] drives flows over the network and checks
//! that every message arrives exactly once, in order and byte-identical; a [`Report`] sums up what
//! a run achieved and cost.
//!
//! ```
//! use machnet_sim::{LinkConfig, NetworkBuilder, SizeMix, Workload, WorkloadConfig};
//!
//! let seed = machnet_sim::seed_from_env(42);
//! let lossy = LinkConfig { loss: 0.01, ..LinkConfig::default() };
//! let mut net = NetworkBuilder::new(seed).host(2).host(3).link(lossy).build().unwrap();
//! // 4 flows from host 0 to host 1, 1000 messages in all, both directions.
//! let mut config = WorkloadConfig::between(&net, seed, 0, 1, 4, 1000);
//! config.sizes = SizeMix::small();
//! let report = Workload::new(config, &net).run(&mut net).unwrap_or_else(|e| panic!("{e}"));
//! assert_eq!(report.messages_delivered, 1000);
//! println!("{report}");
//! ```
//!
//! Modules, one job each:
//! - [`seed`]: seeds, sub-seeds, the replay variable;
//! - [`link`]: the per-direction fault and bandwidth model;
//! - [`nic`]: RSS placement (Toeplitz key + redirection table) per host;
//! - [`network`]: hosts, engines, the clock and the event loop;
//! - [`content`]: verifiable message contents;
//! - [`workload`]: the checking application model and its size plan;
//! - [`report`]: run summaries;
//! - [`handshake`]: connection-setup experiments (RSS-- packet counts);
//! - [`engine_sequence`]: the step interpreter of the `engine_sequence` fuzz target (two engines,
//!   a hostile network and an attacker, with delivery and memory checks).

pub mod content;
pub mod engine_sequence;
pub mod handshake;
pub mod link;
pub mod network;
pub mod nic;
pub mod report;
pub mod seed;
pub mod workload;

pub use link::{Bandwidth, LinkConfig, LinkStats, Reorder};
pub use network::{host_ip, EngineAddr, Network, NetworkBuilder};
pub use report::Report;
pub use seed::{seed_from_env, SeedGuard};
pub use workload::{CloseMode, FlowSpec, SizeMix, Workload, WorkloadConfig, WorkloadError};
