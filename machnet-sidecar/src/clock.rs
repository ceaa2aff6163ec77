//! The sidecar's monotonic clock, mapped onto the core's [`machnet_core::Instant`].

use machnet_core::Instant;

/// A monotonic clock whose epoch is its creation. Copies share the epoch, so instants from
/// different engines are comparable.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            start: std::time::Instant::now(),
        }
    }

    /// Now, as a core instant.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
