//! Rate-limited logging: every log line that an application or a remote host can trigger goes
//! through [`limited!`](crate::limited!), so a flood of bad requests or packets cannot flood the
//! log (or burn the CPU formatting it).
//!
//! Each call site has its own budget of [`LINES_PER_SECOND`] lines per one-second window; lines
//! beyond it are counted, and the first line let through in a later window carries
//! `suppressed = N`, the number dropped at that call site since the last line written.
//!
//! Hand-written rather than a crate: the one `tracing` rate limiter on crates.io
//! (`tracing-throttle`) throttles per event *signature* (message and field values), so a flood
//! whose lines differ in a field (a pid, a port) passes through it unthrottled; per call site is
//! what bounds the log here, and it takes one static and two atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines one call site may write per second.
pub const LINES_PER_SECOND: u32 = 5;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The budget of one call site (a `static` made by [`limited!`](crate::limited!)).
#[derive(Debug)]
pub struct LogLimiter {
    /// The current window (seconds since [`epoch`], high 32 bits) and the lines written in it
    /// (low 32 bits).
    window: AtomicU64,
    /// Lines dropped since the last line written.
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A fresh budget.
    #[allow(clippy::new_without_default)] // used in statics
    pub const fn new() -> Self {
        LogLimiter {
            // Window u32::MAX: the first call opens a new one.
            window: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)` with `n` lines suppressed before it, or
    /// `None` (the line is counted as suppressed).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(epoch().elapsed().as_secs() as u32)
    }

    fn admit_at(&self, second: u32) -> Option<u64> {
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            let (win, n) = ((cur >> 32) as u32, cur as u32);
            let next = if win != second {
                (u64::from(second) << 32) | 1
            } else if n < LINES_PER_SECOND {
                cur + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(now) => cur = now,
            }
        }
    }
}

/// `limited!(warn, fields..., "format", args...)`: `tracing::warn!(...)` at most
/// [`LINES_PER_SECOND`] times a second from this call site; a line that follows suppressed ones
/// carries `suppressed = N`.
#[macro_export]
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelog::LogLimiter = $crate::ratelog::LogLimiter::new();
        match LIMIT.admit() {
            Some(0) => tracing::$level!($($arg)+),
            Some(suppressed) => tracing::$level!(suppressed, $($arg)+),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_writes_at_most_its_budget_per_second_and_counts_the_rest() {
        let l = LogLimiter::new();
        let admitted = (0..1000).filter(|_| l.admit_at(7).is_some()).count();
        assert_eq!(admitted, LINES_PER_SECOND as usize);
        // The next window's first line reports what was dropped.
        assert_eq!(l.admit_at(8), Some(1000 - u64::from(LINES_PER_SECOND)));
        assert_eq!(l.admit_at(8), Some(0));
    }

    #[test]
    fn the_macro_expands_with_and_without_fields() {
        for i in 0..20 {
            crate::limited!(warn, i, "line {i}");
            crate::limited!(info, "plain");
        }
    }
}
