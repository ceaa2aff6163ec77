//! Flow events at the C boundary (`machnet_next_event`): their C form. The queue itself (bounded,
//! in ring order next to the messages, a message held back for the next receive) is the
//! client's `SharedChannel`.

use std::time::Instant;

use machnet_client::{CloseCode, ErrorKind, Event, DEFAULT_EVENT_LIMIT};

use crate::chan::{shared_err, Ctx};
use crate::error::Error;
use crate::{
    MachnetFlowEvent, MACHNET_EVENT_ACCEPTED, MACHNET_EVENT_CLOSED, MACHNET_EVENT_LIMIT_DEFAULT,
    MACHNET_EVENT_MESSAGE, MACHNET_EVENT_PEER_CLOSED, MACHNET_EVENT_REFUSED,
    MACHNET_EVENT_REQUEST_FAILED, MACHNET_EVENT_RESET, MACHNET_EVENT_TIMED_OUT,
};

// The header documents the client's default.
const _: () = assert!(MACHNET_EVENT_LIMIT_DEFAULT as usize == DEFAULT_EVENT_LIMIT);

/// The errno value for a close reason: 0 for a graceful end, else the client's one table
/// (`ErrorKind::of_close_code`), so an event's `err` is what a call failing for the same reason
/// returns.
fn reason_errno(reason: Option<CloseCode>) -> i32 {
    match reason {
        Some(CloseCode::Graceful) => 0,
        r => ErrorKind::of_close_code(r).errno(),
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

/// Why `machnet_recv_any` returned no message or event.
pub(crate) enum AnyError {
    /// The next message has this many bytes, more than the caller's buffer: it stays first.
    TooLarge(usize),
    /// Another failure, with its errno.
    Failed(Error),
}

/// The next message (copied into `buf`: the event's kind is `MACHNET_EVENT_MESSAGE`, with its
/// length) or flow event (accepts included; length 0) of `ctx`, waiting until `deadline`. A
/// message that does not fit is kept in `ctx`'s stash, first in line.
pub(crate) fn recv_any(
    ctx: &Ctx,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<Option<(MachnetFlowEvent, usize)>, AnyError> {
    let stashed = ctx
        .any_stash
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    let got = match stashed {
        Some((flow, data)) => Event::Message { flow, data },
        None => match ctx.next_any(deadline) {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(None),
            Err(e) => return Err(AnyError::Failed(shared_err(e))),
        },
    };
    match got {
        Event::Message { flow, data } => {
            let n = data.len();
            if n > buf.len() {
                let mut stash = ctx.any_stash.lock().unwrap_or_else(|p| p.into_inner());
                stash.push_front((flow, data));
                return Err(AnyError::TooLarge(n));
            }
            buf[..n].copy_from_slice(&data);
            let ev = MachnetFlowEvent {
                flow: crate::to_c(flow.local_addr(), flow.remote_addr(), false),
                kind: MACHNET_EVENT_MESSAGE,
                err: 0,
            };
            Ok(Some((ev, n)))
        }
        Event::Accepted { flow, .. } => Ok(Some((
            MachnetFlowEvent {
                flow: crate::to_c(flow.local_addr(), flow.remote_addr(), false),
                kind: MACHNET_EVENT_ACCEPTED,
                err: 0,
            },
            0,
        ))),
        ev => match flow_event(&ev) {
            Some(e) => Ok(Some((e, 0))),
            // A kind this ABI does not know (none today): report nothing rather than guess.
            None => Ok(None),
        },
    }
}
