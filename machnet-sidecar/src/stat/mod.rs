//! `machnet stat`: a statistics snapshot of a running sidecar, asked for over its control
//! socket.
//!
//! - [`schema`]: the versioned JSON document (docs/STATS.md).
//! - [`collect`]: what each engine answers, and how the control thread puts the document
//!   together within [`machnet_channel::control::MAX_STATS_RESPONSE`].
//! - [`client`]: the `machnet stat` command (asks, prints JSON or a table).

pub mod client;
pub mod collect;
pub mod schema;

pub use schema::{Stats, STATS_VERSION};
