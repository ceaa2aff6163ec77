//! Helpers for tests of this crate and its users (not part of the sidecar's function).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use machnet_core::PortPool;

use crate::datapath::kernel::probe_pool;
use crate::{Sidecar, SidecarConfig};

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

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Sidecars on the kernel-UDP datapath in this process, one per address (e.g. 127.0.0.1 and
/// 127.0.0.2), sharing a UDP port pool that was free on all of them, with their control sockets
/// in a private temporary directory. Dropping it shuts them down and removes the directory.
pub struct LoopbackSidecars {
    sidecars: Vec<Option<Sidecar>>,
    dir: PathBuf,
}

impl LoopbackSidecars {
    /// Starts one sidecar with `engines` engines on each of `ips` (panics if one cannot start).
    /// `tag` names the temporary directory.
    pub fn start(tag: &str, ips: &[Ipv4Addr], engines: u16) -> LoopbackSidecars {
        Self::start_with(tag, ips, engines, |_, _| {})
    }

    /// [`LoopbackSidecars::start`], with `configure(i, config)` adjusting the `i`-th sidecar's
    /// configuration before it starts.
    pub fn start_with(
        tag: &str,
        ips: &[Ipv4Addr],
        engines: u16,
        configure: impl Fn(usize, &mut SidecarConfig),
    ) -> LoopbackSidecars {
        let dir = std::env::temp_dir().join(format!(
            "machnet-{tag}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let pool = free_udp_pool(ips, 8);
        let sidecars = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| {
                let mut c = SidecarConfig::new();
                c.local_ip = ip;
                c.engines = engines;
                c.control_socket = dir.join(format!("sidecar-{i}.sock"));
                c.stats_interval = None;
                c.udp_ports = pool;
                configure(i, &mut c);
                Some(Sidecar::start(c).unwrap_or_else(|e| panic!("sidecar on {ip}: {e}")))
            })
            .collect();
        LoopbackSidecars { sidecars, dir }
    }

    /// The control socket of the `i`-th sidecar (in the order of `ips`).
    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("sidecar-{i}.sock"))
    }

    /// The temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine statistics of the `i`-th sidecar (empty if it was taken out).
    pub fn reports(&self, i: usize) -> Vec<crate::stats::EngineReport> {
        self.sidecars
            .get(i)
            .and_then(Option::as_ref)
            .map_or_else(Vec::new, Sidecar::reports)
    }

    /// The UDP port pool of the `i`-th sidecar (what a peer, or an attacker, sends to).
    pub fn udp_ports(&self, i: usize) -> Option<machnet_core::PortPool> {
        let s = self.sidecars.get(i)?.as_ref()?;
        Some(s.config().udp_ports)
    }

    /// Takes the `i`-th sidecar out (to shut it down in the middle of a test).
    pub fn take(&mut self, i: usize) -> Option<Sidecar> {
        self.sidecars.get_mut(i)?.take()
    }
}

impl Drop for LoopbackSidecars {
    fn drop(&mut self) {
        for s in self.sidecars.iter_mut().rev().filter_map(Option::take) {
            s.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deterministic message content for tests: `len` pseudo-random bytes from `seed` (xorshift).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
