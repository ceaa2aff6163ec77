//! Per-application flow limits shared by every engine (docs/CHANNEL.md §2).
//!
//! Flows are created in engine threads (a `Connect` request, an accepted SYN), while the
//! application they count against is known to the control thread. The control thread hands each
//! channel a [`FlowQuota`]: counters of its process and of its user, shared by all the channels
//! (on any engine) of that process or user. Each flow holds a [`FlowPermit`]; dropping the permit
//! (the flow's entry leaves its channel) gives the slot back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A counter with a limit, shared between engines.
#[derive(Debug)]
pub struct FlowCounter {
    used: AtomicUsize,
    limit: usize,
}

impl FlowCounter {
    /// A counter allowing `limit` flows.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(FlowCounter {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Flows counted now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes one place, held by the returned slot until it is dropped; `None` at the limit.
    pub fn take_slot(self: &Arc<Self>) -> Option<FlowSlot> {
        self.take().then(|| FlowSlot {
            counter: self.clone(),
        })
    }

    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn give(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One place in a [`FlowCounter`]; given back when dropped.
#[derive(Debug)]
pub struct FlowSlot {
    counter: Arc<FlowCounter>,
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        self.counter.give();
    }
}

/// Which limit refused a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowLimit {
    /// The application (process) holds its maximum.
    #[error("the application holds its maximum number of flows")]
    App,
    /// The application's user holds its maximum.
    #[error("the application's user holds its maximum number of flows")]
    User,
}

/// The flow counters a channel's flows count against.
#[derive(Debug, Clone)]
pub struct FlowQuota {
    app: Arc<FlowCounter>,
    user: Arc<FlowCounter>,
}

impl FlowQuota {
    /// Flows count against `app` (the process) and `user`.
    pub fn new(app: Arc<FlowCounter>, user: Arc<FlowCounter>) -> Self {
        FlowQuota { app, user }
    }

    /// A quota without limits (unit tests of a channel).
    pub fn unlimited() -> Self {
        FlowQuota::new(FlowCounter::new(usize::MAX), FlowCounter::new(usize::MAX))
    }

    /// Takes a slot for one more flow.
    pub fn acquire(&self) -> Result<FlowPermit, FlowLimit> {
        if !self.app.take() {
            return Err(FlowLimit::App);
        }
        if !self.user.take() {
            self.app.give();
            return Err(FlowLimit::User);
        }
        Ok(FlowPermit {
            quota: self.clone(),
        })
    }
}

/// One flow's slot; given back when dropped.
#[derive(Debug)]
pub struct FlowPermit {
    quota: FlowQuota,
}

impl Drop for FlowPermit {
    fn drop(&mut self) {
        self.quota.app.give();
        self.quota.user.give();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_against_app_and_user_and_come_back_when_dropped() {
        let user = FlowCounter::new(3);
        let a = FlowQuota::new(FlowCounter::new(2), user.clone());
        let b = FlowQuota::new(FlowCounter::new(2), user.clone());
        let a1 = a.acquire().unwrap();
        let _a2 = a.acquire().unwrap();
        assert_eq!(a.acquire().unwrap_err(), FlowLimit::App);
        let _b1 = b.acquire().unwrap();
        assert_eq!(b.acquire().unwrap_err(), FlowLimit::User);
        assert_eq!(
            b.app.used(),
            1,
            "a refusal by the user counter gives the app slot back"
        );
        drop(a1);
        assert_eq!(user.used(), 2);
        b.acquire().unwrap();
    }
}
