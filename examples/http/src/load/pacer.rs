//! The run's clock (CLOCK_MONOTONIC) and a sleep with sub-millisecond precision: tokio's timer
//! ticks in milliseconds, which would add up to 1 ms to every latency measured from the
//! intended send time, so requests are paced with a timerfd on the reactor instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::{clock_gettime, ClockId as Clock};
use tokio::io::unix::AsyncFd;

/// Nanoseconds of CLOCK_MONOTONIC.
fn monotonic_ns() -> u64 {
    let t = clock_gettime(Clock::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC exists");
    (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64
}

/// Time since the start of a run, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    start_ns: u64,
}

impl RunClock {
    /// A run starting `lead` from now.
    pub fn starting_in(lead: Duration) -> RunClock {
        RunClock {
            start_ns: monotonic_ns() + lead.as_nanos() as u64,
        }
    }

    /// Nanoseconds since the start (0 before it).
    pub fn now_ns(&self) -> u64 {
        monotonic_ns().saturating_sub(self.start_ns)
    }
}

/// The timerfd with the raw-fd access tokio's reactor wants.
#[derive(Debug)]
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Sleeps until a point of a [`RunClock`] on a one-shot timerfd registered with tokio.
#[derive(Debug)]
pub struct Pacer {
    fd: AsyncFd<Timer>,
}

impl Pacer {
    /// A pacer on the current tokio runtime.
    pub fn new() -> io::Result<Pacer> {
        let tfd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: the Timer owns its descriptor, which stays open until the AsyncFd (and with
        // it the registration) is dropped.
        let fd = unsafe { AsyncFd::register(Timer(tfd)) }.map_err(|e| e.into_parts().1)?;
        Ok(Pacer { fd })
    }

    /// Returns at (or just after) `at_ns` of `clock`; at once if that has passed.
    pub async fn sleep_until(&self, clock: &RunClock, at_ns: u64) -> io::Result<()> {
        let abs = clock.start_ns + at_ns;
        if monotonic_ns() >= abs {
            return Ok(());
        }
        let when = TimeSpec::from_duration(Duration::from_nanos(abs));
        self.fd.get_ref().0.set(
            Expiration::OneShot(when),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        loop {
            let mut guard = self.fd.readable().await?;
            // wait() reads the expiry count; EAGAIN (not expired yet) clears the readiness.
            if let Ok(r) = guard.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                return r;
            }
        }
    }
}
