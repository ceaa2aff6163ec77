//! Routing transport events (the core's, and the same-host flows' of [`super::local`]) to the
//! channels owning their flows: one function for the worker and the channel fuzz target, so
//! that what is fuzzed is what runs.

use std::collections::HashMap;

use machnet_channel::CloseCode;
use machnet_core::{Engine, Event, FlowId};

use super::channel::{close_code, Chan, ChannelId, Ctx, Flow};
use super::listen::Listeners;
use super::local::{LocalEvent, LocalEventKind};

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Handed to `channel`, which now has work: `flush` if it has notifications to write
    /// (otherwise a stalled send to retry).
    Delivered {
        /// The channel.
        channel: ChannelId,
        /// Whether it has notifications to write.
        flush: bool,
    },
    /// Dealt with, nothing to schedule: the owning channel is detaching (nobody reads its
    /// notifications) or gone.
    Absorbed,
    /// An accepted flow no channel takes; it was aborted (a local one: its connect refused).
    AcceptRefused,
    /// A core event for a flow no channel owns (an orphan of a detached channel, or a flow
    /// whose channel closed); the caller decides.
    Unowned(Event),
    /// The same for a local flow's event.
    UnownedLocal(LocalEvent),
}

/// What happened to a flow, whichever transport it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Happened {
    Accepted { port: u16 },
    Connected,
    Readable,
    Writable,
    PeerClosed,
    Closed(CloseCode),
}

/// Hands `ev` to the channel owning its flow (`ctx.owners`; for an accepted flow, a member of
/// this engine's listen group of its port: [`Listeners::pick_listener`]).
pub fn route(
    ev: Event,
    ctx: &mut Ctx<'_>,
    listeners: &Listeners,
    chans: &mut HashMap<ChannelId, Chan>,
) -> Routed {
    let (flow, what) = match ev {
        Event::Accepted { flow, listen_port } => (flow, Happened::Accepted { port: listen_port }),
        Event::Connected { flow } => (flow, Happened::Connected),
        Event::Readable { flow } => (flow, Happened::Readable),
        Event::Writable { flow } => (flow, Happened::Writable),
        Event::PeerClosed { flow } => (flow, Happened::PeerClosed),
        Event::Closed { flow, reason } => (flow, Happened::Closed(close_code(reason))),
    };
    match deliver(Flow::Net(flow), what, ctx, listeners, chans) {
        Some(r) => r,
        None => Routed::Unowned(ev),
    }
}

/// Hands a local flow's event to the channel owning its end (for an accepted flow, a member of
/// this engine's listen group of its port).
pub fn route_local(
    ev: LocalEvent,
    ctx: &mut Ctx<'_>,
    listeners: &Listeners,
    chans: &mut HashMap<ChannelId, Chan>,
) -> Routed {
    let what = match ev.kind {
        LocalEventKind::Accepted { port } => Happened::Accepted { port },
        LocalEventKind::Connected => Happened::Connected,
        LocalEventKind::Readable => Happened::Readable,
        LocalEventKind::Writable => Happened::Writable,
        LocalEventKind::PeerClosed => Happened::PeerClosed,
        LocalEventKind::Closed(code) => Happened::Closed(code),
    };
    match deliver(Flow::Local(ev.end), what, ctx, listeners, chans) {
        Some(r) => r,
        None => Routed::UnownedLocal(ev),
    }
}

/// `None`: no channel owns the flow.
fn deliver(
    flow: Flow,
    what: Happened,
    ctx: &mut Ctx<'_>,
    listeners: &Listeners,
    chans: &mut HashMap<ChannelId, Chan>,
) -> Option<Routed> {
    if let Happened::Accepted { port } = what {
        let info = ctx.flow_info(flow);
        let taken = listeners.pick_listener(port, |ch| {
            chans.get_mut(&ch).is_some_and(|c| {
                c.detach_deadline().is_none() && c.on_accepted(ctx, flow, port, info)
            })
        });
        return Some(match (taken, flow) {
            (Some(channel), _) => {
                if let (Flow::Local(end), Some(l)) = (flow, ctx.local) {
                    l.hub.established(end);
                }
                Routed::Delivered {
                    channel,
                    flush: true,
                }
            }
            (None, Flow::Net(id)) => {
                let _ = ctx.core.abort(ctx.now, id);
                Routed::AcceptRefused
            }
            (None, Flow::Local(end)) => {
                if let Some(l) = ctx.local {
                    l.hub.refused(end);
                }
                Routed::AcceptRefused
            }
        });
    }
    let owner = if matches!(what, Happened::Closed(_)) {
        ctx.owners.remove(&flow)
    } else {
        ctx.owners.get(&flow).copied()
    };
    let (ch, h) = owner?;
    let Some(c) = chans.get_mut(&ch) else {
        ctx.discard(flow);
        return Some(Routed::Absorbed);
    };
    if matches!(what, Happened::Connected | Happened::Closed(_)) {
        c.connect_ended(flow);
    }
    if c.detach_deadline().is_some() {
        // Nobody reads this channel's notifications any more.
        match what {
            Happened::Readable => ctx.discard_received(flow),
            Happened::Writable => c.on_writable(flow),
            Happened::Closed(_) => {
                c.forget(ctx, h);
                c.on_writable(flow);
            }
            _ => {}
        }
        return Some(Routed::Absorbed);
    }
    match what {
        Happened::Connected => c.on_connected(h, ctx.flow_info(flow)),
        Happened::Readable => c.on_readable(h),
        // A stalled send to retry: the run list does it.
        Happened::Writable => c.on_writable(flow),
        Happened::PeerClosed => c.on_peer_closed(h),
        Happened::Closed(code) => c.on_closed(h, flow, code),
        Happened::Accepted { .. } => unreachable!("handled above"),
    }
    Some(Routed::Delivered {
        channel: ch,
        flush: !matches!(what, Happened::Writable),
    })
}

/// Reads and drops every message the core holds for `flow` (its app is gone).
pub fn discard_received(core: &mut Engine, flow: FlowId) {
    while let Ok(Some(_)) = core.recv(flow) {}
}
