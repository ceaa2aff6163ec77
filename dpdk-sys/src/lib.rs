//! Raw FFI bindings to DPDK (22.11 or newer), generated at build time by bindgen from the headers
//! found with `pkg-config libdpdk`.
//!
//! - `static inline` functions of the fast path (`rte_eth_rx_burst`, `rte_pktmbuf_alloc`, ...)
//!   are reached through C wrappers that bindgen generates (`wrap_static_fns`) and `cc` compiles.
//! - What bindgen cannot bind (macros such as `rte_errno` and `rte_pktmbuf_mtod`) is provided by
//!   small C helpers named `rte_sys_*` (see `csrc/helpers.h`).
//!
//! When DPDK is not installed the crate still builds, so that a workspace depending on it
//! optionally builds everywhere; it then contains only [`AVAILABLE`] (`false`) and
//! [`unavailable_reason`]. Enable the `require` feature to turn that case into a build error.

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]
#![allow(clippy::all, clippy::pedantic)]
#![allow(unsafe_op_in_unsafe_fn, rustdoc::all, improper_ctypes)]

/// Whether this build has DPDK bindings.
pub const AVAILABLE: bool = !cfg!(dpdk_unavailable);

/// How to get a build with DPDK.
pub const HOW_TO_ENABLE: &str = "this build has no DPDK: install libdpdk-dev (Debian: apt-get \
install dpdk dpdk-dev libdpdk-dev libclang-dev clang) and rebuild with --features dpdk";

/// Why this build has no DPDK bindings (`None` when it has them).
pub fn unavailable_reason() -> Option<&'static str> {
    #[cfg(dpdk_unavailable)]
    {
        Some(env!("DPDK_SYS_UNAVAILABLE_REASON"))
    }
    #[cfg(not(dpdk_unavailable))]
    {
        None
    }
}

#[cfg(all(dpdk_unavailable, feature = "require"))]
compile_error!(concat!(
    "dpdk-sys: this build has no DPDK (",
    env!("DPDK_SYS_UNAVAILABLE_REASON"),
    "): install libdpdk-dev (Debian: apt-get install dpdk dpdk-dev libdpdk-dev libclang-dev clang) \
and rebuild with --features dpdk"
));

#[cfg(not(dpdk_unavailable))]
pub use bindings::*;

/// The bindgen output: DPDK's own names and layouts, undocumented here (see DPDK's API docs).
#[cfg(not(dpdk_unavailable))]
mod bindings {
    #![allow(missing_docs, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}
