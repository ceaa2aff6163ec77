//! A channel context: the client's [`Channel`] behind a mutex, and blocking waits that do not
//! hold that mutex while they sleep.
//!
//! # Threads
//!
//! The C API hands out one `void *channel_ctx` that the application may use from several
//! threads, but a [`Channel`] is `Send` and not `Sync`. Every operation therefore takes the
//! context's mutex for as long as it touches the channel (microseconds). A blocking call
//! (`machnet_recv_timeout`, or `machnet_send` waiting for ring space) does **not** hold it
//! while it sleeps: a thread blocked in a receive must never stop another thread from sending
//! (the peer's echo that would wake the receiver may need that send), and a sender blocked by
//! back-pressure must never stop the receiver from draining. The exceptions are
//! `machnet_connect` (it holds the mutex until the sidecar answers: one round trip, or the
//! handshake timeout) and `machnet_close` when the request ring is full (it waits for room for
//! a 16-byte record, which the sidecar frees without help from the application).
//!
//! # Waking without lost wake-ups (docs/CHANNEL.md §4)
//!
//! All sleepers of a channel poll its app eventfd; a write wakes them all. The sidecar writes it
//! only after it cleared a `data_waiting`/`space_waiting` flag that someone set. The rule kept
//! here, under the mutex, is: *whoever drains the eventfd re-arms every flag that some sleeper
//! needs and re-checks every such condition; if one already holds, it writes the eventfd
//! itself* ([`Ctx::arm_all`]). So whenever a thread sleeps, either the eventfd is readable or
//! every flag it depends on is set with its condition false at the time. Sleepers are counted
//! (`rx_waiters`, `tx_needs`), as is an application polling `machnet_channel_fd` after a
//! `machnet_recv` that returned 0 (`ext_armed`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use machnet_client::{Channel, Machnet};

use crate::error::{Error, Result};
use crate::events::EventQueue;

/// One attached channel.
pub(crate) struct Ctx {
    state: Mutex<State>,
    /// Duplicate of the channel's app eventfd: stays open until every thread using this
    /// context is done, even after `machnet_detach` closed the channel.
    efd: OwnedFd,
    /// Duplicate of the control socket, polled for hang-up (sidecar gone).
    ctl: OwnedFd,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("efd", &self.efd)
            .finish_non_exhaustive()
    }
}

pub(crate) struct State {
    /// `None` once detached.
    pub ch: Option<Channel>,
    rx_waiters: u32,
    /// Threads blocked in `machnet_next_event_timeout`.
    ev_waiters: u32,
    /// Message sizes the threads waiting for ring space need.
    tx_needs: Vec<usize>,
    /// An application may be polling the channel fd after `machnet_recv` returned 0.
    ext_armed: bool,
    /// Bumped by `machnet_interrupt`; sleepers that started earlier return `EINTR`.
    interrupts: u64,
    /// The application asked for the channel fd: an empty `machnet_recv` arms it.
    external: bool,
    /// Flow events the receive calls came across, for `machnet_next_event`, and a message
    /// taken off the ring but not delivered yet (it did not fit, or `machnet_next_event` met
    /// it while looking for events).
    pub events: EventQueue,
}

/// What a blocking call waits for.
#[derive(Clone, Copy)]
pub(crate) enum Want {
    Data,
    Space(usize),
    /// A flow event (`machnet_next_event_timeout`).
    Event,
}

/// What `Ctx::arm_all` found ready.
struct Ready {
    data: bool,
    space: bool,
    event: bool,
}

fn dup(fd: i32, what: &str) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold; the result is owned by the OwnedFd.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot duplicate the {what}: {e}"),
        ));
    }
    // SAFETY: `d` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

pub(crate) fn bad_ctx() -> Error {
    Error::new(libc::EBADF, "the channel context was detached")
}

impl Ctx {
    pub fn new(machnet: &Machnet, ch: Channel) -> Result<Ctx> {
        Ok(Ctx {
            efd: dup(ch.as_raw_fd(), "channel eventfd")?,
            ctl: dup(machnet.as_raw_fd(), "control socket")?,
            state: Mutex::new(State {
                ch: Some(ch),
                rx_waiters: 0,
                ev_waiters: 0,
                tx_needs: Vec::new(),
                ext_armed: false,
                interrupts: 0,
                external: false,
                events: EventQueue::default(),
            }),
        })
    }

    /// The eventfd an application may poll (`machnet_channel_fd`).
    pub fn fd(&self) -> i32 {
        self.efd.as_raw_fd()
    }

    /// Locks the state. A panic while locked (caught at the boundary) leaves the channel in a
    /// state the client library keeps consistent, so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the channel. With `rearm`, re-establishes the wake-up invariant afterwards
    /// (for operations that may wait inside the client library, which clears the flags).
    pub fn with<T>(&self, rearm: bool, f: impl FnOnce(&mut Channel) -> Result<T>) -> Result<T> {
        let mut st = self.lock();
        let r = f(st.ch.as_mut().ok_or_else(bad_ctx)?);
        if rearm
            && (st.rx_waiters > 0 || st.ev_waiters > 0 || !st.tx_needs.is_empty() || st.ext_armed)
        {
            let _ = self.arm_all(&mut st);
        }
        r
    }

    /// Runs `f` on the channel and its event queue (the receive paths).
    pub fn with_events<T>(
        &self,
        f: impl FnOnce(&mut Channel, &mut EventQueue) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.lock();
        let r = {
            let st = &mut *st;
            f(st.ch.as_mut().ok_or_else(bad_ctx)?, &mut st.events)
        };
        self.release_event_waiters(&mut st);
        r
    }

    /// A receive took the message `machnet_next_event` held back: a thread waiting for an
    /// event may now pull the events behind it (it cannot see that on its own: those records
    /// were on the ring when it went to sleep).
    fn release_event_waiters(&self, st: &mut State) {
        if st.events.take_released() && st.ev_waiters > 0 {
            self.kick();
        }
    }

    /// Drains the eventfd and re-arms every flag some sleeper needs (see the module docs).
    /// Returns what is ready: data, space for the smallest waiting sender, a queued event.
    fn arm_all(&self, st: &mut State) -> Result<Ready> {
        let ch = st.ch.as_mut().ok_or_else(bad_ctx)?;
        let data = st.events.holds_message() || ch.arm_wakeup().map_err(Error::from)?;
        let space = match st.tx_needs.iter().min() {
            Some(&need) => ch.arm_send_wakeup(need).map_err(Error::from)?,
            None => false,
        };
        // Events another thread's receive queued since the external poller armed: it is told
        // as it is told of a message (it then calls machnet_next_event).
        let news = st.ext_armed && st.events.take_news();
        // An event waiter can use a queued event, or ring records when no message blocks them.
        let event = st.events.has_queued() || (data && !st.events.holds_message());
        let wanted_data = data && (st.rx_waiters > 0 || st.ext_armed);
        if wanted_data || space || news || (event && st.ev_waiters > 0) {
            if wanted_data || news {
                // The external poller is told once; it re-arms with its next machnet_recv.
                st.ext_armed = false;
            }
            self.kick();
        }
        Ok(Ready { data, space, event })
    }

    /// Makes the eventfd readable: wakes every thread polling it.
    pub fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to our eventfd (EAGAIN: already readable, fine).
        unsafe { libc::write(self.efd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// `machnet_channel_fd` was called: from now on an empty `machnet_recv` arms the fd.
    pub fn enable_external(&self) {
        self.lock().external = true;
    }

    /// `machnet_recv` found nothing: arm the eventfd for an application that polls it (only
    /// once it asked for the fd, so that busy-polling programs pay nothing). Returns whether
    /// data raced in (receive again instead of reporting "nothing").
    pub fn arm_external(&self) -> Result<bool> {
        let mut st = self.lock();
        if !st.external {
            return Ok(false);
        }
        st.ext_armed = true;
        // The application's own receive found nothing: it learns of the events it queued by
        // calling machnet_next_event next (the documented loop), not by another wake-up.
        st.events.take_news();
        let data = self.arm_all(&mut st)?.data;
        if data {
            st.ext_armed = false;
        }
        Ok(data)
    }

    /// `machnet_interrupt`: every thread blocked on this channel now returns `EINTR`.
    pub fn interrupt(&self) {
        let mut st = self.lock();
        st.interrupts += 1;
        drop(st);
        self.kick();
    }

    /// Calls `attempt` until it yields a value, sleeping on the eventfd in between without
    /// holding the lock. `Ok(None)`: `deadline` passed.
    pub fn wait<T>(
        &self,
        want: Want,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(&mut Channel, &mut EventQueue) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let mut st = self.lock();
        let started = st.interrupts;
        match want {
            Want::Data => st.rx_waiters += 1,
            Want::Space(n) => st.tx_needs.push(n),
            Want::Event => st.ev_waiters += 1,
        }
        let result = loop {
            let st_ = &mut *st;
            let Some(ch) = st_.ch.as_mut() else {
                break Err(bad_ctx());
            };
            match attempt(ch, &mut st_.events) {
                Ok(None) => {}
                other => break other,
            }
            if st.interrupts != started {
                break Err(Error::new(libc::EINTR, "interrupted by machnet_interrupt"));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Ok(None);
            }
            let r = match self.arm_all(&mut st) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let ready = match want {
                Want::Data => r.data,
                Want::Space(_) => r.space,
                Want::Event => r.event,
            };
            if ready {
                continue;
            }
            drop(st);
            let slept = self.sleep(deadline);
            st = self.lock();
            if let Err(e) = slept {
                break Err(e);
            }
        };
        self.release_event_waiters(&mut st);
        match want {
            Want::Data => st.rx_waiters -= 1,
            Want::Event => st.ev_waiters -= 1,
            Want::Space(n) => {
                if let Some(i) = st.tx_needs.iter().position(|&x| x == n) {
                    st.tx_needs.swap_remove(i);
                }
            }
        }
        result
    }

    /// Sleeps until the eventfd is readable, the control socket hangs up, or `deadline`.
    fn sleep(&self, deadline: Option<Instant>) -> Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: self.efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.ctl.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: left.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            }
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: two valid pollfds, an optional valid timespec, no signal mask.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(Error::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("poll: {e}"),
            ));
        }
        let hup = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL;
        if fds[1].revents & hup != 0 {
            return Err(Error::new(
                libc::ECONNRESET,
                "the Machnet sidecar is gone (control connection closed)",
            ));
        }
        Ok(())
    }
}
