//! Routing core events to the channels owning their flows: one function for the worker and
//! the channel fuzz target, so that what is fuzzed is what runs.

use std::collections::HashMap;

use machnet_channel::FlowInfo;
use machnet_core::{Engine, Event, FlowId};

use super::channel::{close_code, Chan, ChannelId, Ctx};
use super::listen::Listeners;

/// What became of a core event.
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
    /// An accepted flow no channel takes; it was aborted.
    AcceptRefused,
    /// For a flow no channel owns (an orphan of a detached channel, or a flow whose channel
    /// closed); the caller decides.
    Unowned(Event),
}

/// Hands `ev` to the channel owning its flow (`ctx.owners`; for an accepted flow, a member of
/// this engine's listen group of its port: [`Listeners::pick_listener`]).
pub fn route(
    ev: Event,
    ctx: &mut Ctx<'_>,
    listeners: &mut Listeners,
    chans: &mut HashMap<ChannelId, Chan>,
) -> Routed {
    if let Event::Accepted { flow, listen_port } = ev {
        let info = flow_info(ctx.core, flow);
        let taken = listeners.pick_listener(listen_port, |ch| {
            chans.get_mut(&ch).is_some_and(|c| {
                c.detach_deadline().is_none() && c.on_accepted(ctx, flow, listen_port, info)
            })
        });
        return match taken {
            Some(channel) => Routed::Delivered {
                channel,
                flush: true,
            },
            None => {
                let _ = ctx.core.abort(ctx.now, flow);
                Routed::AcceptRefused
            }
        };
    }
    let flow = match ev {
        Event::Connected { flow }
        | Event::Readable { flow }
        | Event::Writable { flow }
        | Event::PeerClosed { flow }
        | Event::Closed { flow, .. }
        | Event::Accepted { flow, .. } => flow,
    };
    let owner = if matches!(ev, Event::Closed { .. }) {
        ctx.owners.remove(&flow)
    } else {
        ctx.owners.get(&flow).copied()
    };
    let Some((ch, h)) = owner else {
        return Routed::Unowned(ev);
    };
    let Some(c) = chans.get_mut(&ch) else {
        ctx.core.discard(flow);
        return Routed::Absorbed;
    };
    if c.detach_deadline().is_some() {
        // Nobody reads this channel's notifications any more.
        match ev {
            Event::Readable { flow } => discard_received(ctx.core, flow),
            Event::Writable { flow } => c.on_writable(flow),
            Event::Closed { flow, .. } => {
                c.forget(ctx, h);
                c.on_writable(flow);
            }
            _ => {}
        }
        return Routed::Absorbed;
    }
    match ev {
        Event::Connected { .. } => c.on_connected(h, flow_info(ctx.core, flow)),
        Event::Readable { .. } => c.on_readable(h),
        // A stalled send to retry: the run list does it.
        Event::Writable { .. } => c.on_writable(flow),
        Event::PeerClosed { .. } => c.on_peer_closed(h),
        Event::Closed { reason, .. } => c.on_closed(h, flow, close_code(reason)),
        Event::Accepted { .. } => unreachable!("handled above"),
    }
    Routed::Delivered {
        channel: ch,
        flush: !matches!(ev, Event::Writable { .. }),
    }
}

/// The addresses of a core flow, as the channel announces them.
fn flow_info(core: &Engine, id: FlowId) -> Option<FlowInfo> {
    core.flow_key(id).map(|k| FlowInfo {
        local_ip: k.local_ip,
        local_port: k.local_port,
        remote_ip: k.remote_ip,
        remote_port: k.remote_port,
    })
}

/// Reads and drops every message the core holds for `flow` (its app is gone).
pub fn discard_received(core: &mut Engine, flow: FlowId) {
    while let Ok(Some(_)) = core.recv(flow) {}
}
