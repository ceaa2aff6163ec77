//! Flow events at the C boundary (`machnet_next_event`).
//!
//! The receive calls take everything off the channel's notification ring in order. Messages
//! go to the caller; flow events (the peer closed a flow, a flow was reset, timed out or
//! ended, a request failed) are kept in a bounded queue per channel context until the
//! application asks for them. An application that never asks loses nothing it had before: its
//! receives behave as they always did, and the queue stops growing at its limit (events beyond
//! it are counted, not kept).
//!
//! `machnet_next_event` may also have to look past the events already queued: it takes records
//! off the ring until it finds an event or a message. A message found that way is *held* (at
//! most one) and is the next one a receive call returns, so messages and events stay in ring
//! order and a program that only asks for events cannot make the context buffer messages
//! without bound.

use std::collections::VecDeque;
use std::time::Duration;

use machnet_client::{Channel, CloseCode, Event, Flow, Received, RecvError};

use crate::error::Result;
use crate::{
    MachnetFlowEvent, MACHNET_EVENT_CLOSED, MACHNET_EVENT_LIMIT_DEFAULT, MACHNET_EVENT_PEER_CLOSED,
    MACHNET_EVENT_REFUSED, MACHNET_EVENT_REQUEST_FAILED, MACHNET_EVENT_RESET,
    MACHNET_EVENT_TIMED_OUT,
};

/// What a receive found.
pub(crate) enum Incoming {
    /// A message of this many bytes was copied into the caller's buffer.
    Message(Flow, usize),
    /// The next message has this many bytes and does not fit; it stays first in line.
    TooSmall(usize),
    /// No message is waiting.
    Empty,
}

/// The events of one channel context and the message held back for the next receive.
#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: VecDeque<MachnetFlowEvent>,
    limit: usize,
    dropped: u64,
    held: Option<(Flow, Vec<u8>)>,
    /// Events were queued since the external poller was last told (see `Ctx::arm_all`).
    news: bool,
    /// A receive took the held message: events behind it may now be pulled.
    released: bool,
}

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue {
            queue: VecDeque::new(),
            limit: MACHNET_EVENT_LIMIT_DEFAULT as usize,
            dropped: 0,
            held: None,
            news: false,
            released: false,
        }
    }
}

/// The errno value for a close reason.
fn reason_errno(reason: Option<CloseCode>) -> i32 {
    match reason {
        Some(CloseCode::Graceful) => 0,
        Some(CloseCode::Refused) => libc::ECONNREFUSED,
        Some(CloseCode::TimedOut) => libc::ETIMEDOUT,
        Some(CloseCode::Reset) | Some(CloseCode::Aborted) => libc::ECONNRESET,
        Some(CloseCode::MessageTooLarge) => libc::EMSGSIZE,
        Some(CloseCode::ProtocolViolation) => libc::EPROTO,
        Some(CloseCode::UnknownFlow) | None => libc::ENOTCONN,
        Some(CloseCode::InvalidRequest) => libc::EINVAL,
        Some(CloseCode::Exhausted) => libc::EAGAIN,
        Some(_) => libc::ECONNABORTED,
    }
}

/// The C form of a client event (`None`: not a flow event the C ABI reports).
pub(crate) fn flow_event(ev: &Event) -> Option<MachnetFlowEvent> {
    let (kind, err) = match ev {
        Event::PeerClosed { .. } => (MACHNET_EVENT_PEER_CLOSED, 0),
        Event::Closed { reason, .. } => {
            let kind = match reason {
                Some(CloseCode::Reset) => MACHNET_EVENT_RESET,
                Some(CloseCode::TimedOut) => MACHNET_EVENT_TIMED_OUT,
                Some(CloseCode::Refused) => MACHNET_EVENT_REFUSED,
                _ => MACHNET_EVENT_CLOSED,
            };
            (kind, reason_errno(*reason))
        }
        Event::RequestFailed { reason, .. } => {
            let err = match reason_errno(*reason) {
                0 => libc::ENOTCONN,
                e => e,
            };
            (MACHNET_EVENT_REQUEST_FAILED, err)
        }
        _ => return None,
    };
    let f = ev.flow();
    Some(MachnetFlowEvent {
        flow: crate::to_c(f.local_addr(), f.remote_addr(), false),
        kind,
        err,
    })
}

impl EventQueue {
    /// Takes records off the ring until a message (returned) or nothing is left; queues the
    /// flow events met on the way. A flow whose peer closed is closed on this side, as the
    /// client's message-only receives do.
    fn pull(&mut self, ch: &mut Channel) -> Result<Option<(Flow, Vec<u8>)>> {
        loop {
            let Some(ev) = ch.next_event(Some(Duration::ZERO))? else {
                return Ok(None);
            };
            match ev {
                Event::Message { flow, data } => return Ok(Some((flow, data))),
                ev => self.note(ch, ev),
            }
        }
    }

    /// Queues a flow event met on the ring. A flow whose peer closed is closed on this side:
    /// as with the client's auto-close, nobody else would close it. A failure here (sidecar
    /// gone) is reported by the application's next call.
    fn note(&mut self, ch: &mut Channel, ev: Event) {
        if let Event::PeerClosed { ref flow } = ev {
            let _ = ch.close(flow);
        }
        self.push(&ev);
    }

    fn push(&mut self, ev: &Event) {
        let Some(e) = flow_event(ev) else { return };
        if self.queue.len() >= self.limit {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(e);
        self.news = true;
    }

    /// The next message into `buf`; one that does not fit stays first in line. Without a held
    /// message, the ring's next message is copied straight into `buf` (one copy), and the
    /// events before it are queued.
    pub fn next_message(&mut self, ch: &mut Channel, buf: &mut [u8]) -> Result<Incoming> {
        if let Some((flow, data)) = self.held.take() {
            self.released = true;
            let n = data.len();
            if n > buf.len() {
                self.held = Some((flow, data));
                return Ok(Incoming::TooSmall(n));
            }
            buf[..n].copy_from_slice(&data);
            return Ok(Incoming::Message(flow, n));
        }
        loop {
            match ch.try_recv_into_or_event(buf) {
                Ok(Some(Received::Message(flow, n))) => return Ok(Incoming::Message(flow, n)),
                Ok(Some(Received::Event(ev))) => self.note(ch, ev),
                Ok(None) => return Ok(Incoming::Empty),
                Err(RecvError::BufferTooSmall { needed, .. }) => {
                    return Ok(Incoming::TooSmall(needed))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next message, taken (the caller puts it back with [`EventQueue::hold`] if needed).
    pub fn take_message(&mut self, ch: &mut Channel) -> Result<Option<(Flow, Vec<u8>)>> {
        match self.held.take() {
            Some(m) => {
                self.released = true;
                Ok(Some(m))
            }
            None => self.pull(ch),
        }
    }

    /// Puts a message taken with [`EventQueue::take_message`] back first in line.
    pub fn hold(&mut self, m: (Flow, Vec<u8>)) {
        self.held = Some(m);
    }

    /// The next flow event: a queued one, else one from the ring (unless a message is held
    /// back: events behind it wait until it is received).
    pub fn next_event(&mut self, ch: &mut Channel) -> Result<Option<MachnetFlowEvent>> {
        if self.queue.is_empty() && self.held.is_none() {
            self.held = self.pull(ch)?;
        }
        Ok(self.queue.pop_front())
    }

    /// Whether events are queued.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether a message is held back for the next receive.
    pub fn holds_message(&self) -> bool {
        self.held.is_some()
    }

    /// Whether a receive took the held message since the last call.
    pub fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    /// Whether events were queued since the last call.
    pub fn take_news(&mut self) -> bool {
        std::mem::take(&mut self.news)
    }

    /// How many events were not kept because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sets the queue's limit; events beyond a lowered limit are dropped (and counted).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        while self.queue.len() > limit {
            self.queue.pop_back();
            self.dropped += 1;
        }
    }
}
