//! Helpers for tests of this crate and its users (not part of the sidecar's function).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use machnet_core::PortPool;

use crate::datapath::kernel::probe_pool;

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A UDP port pool of `count` ports that is free on every address of `ips` right now, from the
/// range `20000..45000`. Successive calls in one process never return overlapping pools; the
/// starting point depends on the process id so that concurrent test processes rarely collide
/// (and a collision is detected by the probe).
pub fn free_udp_pool(ips: &[Ipv4Addr], count: u16) -> PortPool {
    const LO: u32 = 20000;
    const SPAN: u32 = 25000;
    let count32 = u32::from(count.max(1));
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id().wrapping_mul(7919)) % SPAN + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let off = NEXT_PORT.fetch_add(count32, Ordering::SeqCst) % SPAN;
        if off + count32 > SPAN {
            continue;
        }
        let pool = PortPool {
            base: (LO + off) as u16,
            count: count.max(1),
        };
        if ips.iter().all(|&ip| probe_pool(ip, pool).is_ok()) {
            return pool;
        }
    }
    panic!("no free UDP port range found");
}
