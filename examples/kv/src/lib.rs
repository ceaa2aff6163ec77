//! `machnet-kv`: a key-value store served over Machnet (and, for comparison, over kernel TCP),
//! on the redb embedded storage engine, with a pipelining load generator. The request format is
//! in this crate's README.

pub mod bench;
pub mod client;
pub mod protocol;
pub mod server;
pub mod service;
pub mod store;
