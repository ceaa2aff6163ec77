//! Giving memory back to the operating system after load.
//!
//! Received data lives in many small allocations (one per out-of-order packet) made by engine
//! threads in glibc's per-thread arenas. When a flood of such data is freed, the arenas keep the
//! pages: the process's RSS stays where the peak left it (287 MB after 32 attacker flows, issue
//! 14; 155–177 MiB of a 256 MiB budget in our measurement).
//!
//! [`Trimmer`], ticked by each engine: after the engine's held bytes fell by [`TRIM_STEP`] from
//! their high-water mark, `malloc_trim(0)` (glibc; a no-op elsewhere) returns every arena's free
//! pages (11–14 MiB left after the same attack). Each trim is paid for by at least `TRIM_STEP`
//! bytes received and released, so no traffic pattern makes trims frequent. A pooled-buffer
//! design or another allocator would do it too, at the cost of a second memory manager or a
//! dependency in every process that embeds the sidecar.

/// Bytes the engine's held data must fall by, from its high-water mark, before a trim.
pub const TRIM_STEP: usize = 16 << 20;
/// Shortest time between two trims of an engine going idle.
pub const IDLE_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Allocations up to this size come from glibc's arenas, never from their own `mmap`.
///
/// glibc serves large allocations (128 KiB at first, raised on the fly as such blocks are
/// freed) with their own `mmap`, and shrinks an arena's top whenever more than twice that lies
/// free there. Which of the two a 1 MiB message buffer meets depends on how earlier traffic left
/// the arenas: measured (issue 16), after some small-message runs an engine moving 1 MiB
/// messages between two apps took ~390k page faults a second and ran at a third of its usual
/// goodput, until the sidecar restarted. Fixed thresholds make the engines' behaviour
/// independent of that history: every message (≤ 8 MiB) is carved from the arenas, and free
/// memory goes back to the system through [`Trimmer`]'s explicit trims instead of as a side
/// effect of a `free`.
pub const ARENA_ALLOCATION_LIMIT: usize = 32 << 20;
/// Free bytes at an arena's top before `free` itself gives them back (see
/// [`ARENA_ALLOCATION_LIMIT`]; [`Trimmer`] does it earlier once the load has fallen).
pub const AUTO_TRIM_THRESHOLD: usize = 64 << 20;

/// Sets the process's allocator policy for a sidecar: see [`ARENA_ALLOCATION_LIMIT`]. Called
/// once by the `machnet` binary before any engine starts (a process that embeds the library
/// keeps its own policy). A no-op where the allocator is not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes tunables; called before the engine threads exist.
    unsafe {
        let limit = ARENA_ALLOCATION_LIMIT as libc::c_int;
        let trim = AUTO_TRIM_THRESHOLD as libc::c_int;
        if libc::mallopt(libc::M_MMAP_THRESHOLD, limit) == 0
            || libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 0
        {
            tracing::warn!("mallopt refused the allocator thresholds; keeping glibc's defaults");
        }
    }
}

/// Returns free allocator memory to the operating system (all arenas).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Decides when an engine trims: see the module documentation.
#[derive(Debug, Default)]
pub struct Trimmer {
    high_water: usize,
    last_idle_trim: Option<machnet_core::Instant>,
    /// Trims done (for reports and tests).
    pub trims: u64,
}

impl Trimmer {
    /// Notes the engine's held bytes now; trims if they fell far enough. Returns whether it
    /// trimmed.
    pub fn tick(&mut self, held: usize) -> bool {
        self.high_water = self.high_water.max(held);
        if self.high_water - held < TRIM_STEP {
            return false;
        }
        self.trim(held);
        true
    }

    /// The engine is going to sleep (no work for a while) holding `held` bytes: trims if
    /// anything was released since the high-water mark and the last idle trim is
    /// [`IDLE_TRIM_INTERVAL`] old, so what the tail of a load freed (less than [`TRIM_STEP`])
    /// goes back too. Costs a busy engine nothing, an idle one at most a trim a second.
    pub fn idle(&mut self, held: usize, now: machnet_core::Instant) -> bool {
        self.high_water = self.high_water.max(held);
        let recent = self
            .last_idle_trim
            .is_some_and(|t| now - t < IDLE_TRIM_INTERVAL);
        if self.high_water == held || recent {
            return false;
        }
        self.last_idle_trim = Some(now);
        self.trim(held);
        true
    }

    fn trim(&mut self, held: usize) {
        release_free_memory();
        self.high_water = held;
        self.trims += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_step_released_from_the_high_water_mark() {
        let mut t = Trimmer::default();
        assert!(!t.tick(TRIM_STEP * 3));
        assert!(!t.tick(TRIM_STEP * 2 + 1), "released less than a step");
        assert!(t.tick(TRIM_STEP * 2));
        assert!(!t.tick(TRIM_STEP + 1));
        assert!(!t.tick(TRIM_STEP * 4), "growing never trims");
        assert!(t.tick(0));
        assert_eq!(t.trims, 2);
        // Going idle trims smaller releases too, at most once per interval.
        let t0 = machnet_core::Instant::ZERO + IDLE_TRIM_INTERVAL;
        assert!(!t.tick(1000));
        assert!(!t.idle(1000, t0), "nothing released");
        assert!(t.idle(999, t0));
        assert!(!t.tick(5000));
        assert!(!t.idle(0, t0 + IDLE_TRIM_INTERVAL / 2), "too soon");
        assert!(t.idle(0, t0 + IDLE_TRIM_INTERVAL));
        assert_eq!(t.trims, 4);
    }
}
