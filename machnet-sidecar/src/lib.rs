//! The machnet sidecar: engines, datapaths, shared-memory channels and the control socket.
//!
//! The binary (`machnet`) is a thin wrapper around [`Sidecar`]; the library does the work so that
//! other programs (tests, language bindings) can embed a sidecar.
//!
//! - [`config`]: command line and configuration file.
//! - [`datapath`]: packet I/O (kernel UDP, in-memory, loss injection).
//! - [`netstack`]: Ethernet/ARP/IPv4/UDP/ICMP for datapaths that see raw frames (DPDK).
//! - [`shm`]: creating a channel's shared memory and eventfds.
//! - [`engine`]: one thread per engine driving a `machnet_core::Engine`.
//! - [`control`]: the control socket server.
//! - [`stats`]: per-engine counters.
//! - [`Sidecar`]: starts and stops all of it.
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod control;
pub mod datapath;
pub mod engine;
pub mod netstack;
pub mod shm;
mod sidecar;
pub mod stats;
pub mod testing;

pub use config::SidecarConfig;
pub use sidecar::{init_logging, kernel_datapaths, Sidecar, StartError};

/// 64 random bits from the operating system (for engine seeds and unseeded loss injection).
pub fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
