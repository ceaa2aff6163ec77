//! Flow events at the C boundary (`machnet_next_event`): their C form. The queue itself (bounded,
//! in ring order next to the messages, a message held back for the next receive) is the
//! client's `SharedChannel`.

use machnet_client::{CloseCode, ErrorKind, Event, DEFAULT_EVENT_LIMIT};

use crate::{
    MachnetFlowEvent, MACHNET_EVENT_CLOSED, MACHNET_EVENT_LIMIT_DEFAULT, MACHNET_EVENT_PEER_CLOSED,
    MACHNET_EVENT_REFUSED, MACHNET_EVENT_REQUEST_FAILED, MACHNET_EVENT_RESET,
    MACHNET_EVENT_TIMED_OUT,
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
