//! Neighbour bindings shared by the engines of one port.
//!
//! Each engine owns one RX queue, and the NIC's RSS decides which queue a frame lands on. ARP
//! frames carry no UDP ports, so the reply to engine 0's request may well arrive on engine 1's
//! queue: with per-engine caches alone, engine 0 would retry until a reply happened to land on
//! its own queue, or give up. So every engine publishes what its ARP handling learnt here, and
//! picks up what the others learnt:
//!
//! - An engine that starts resolving an address marks it *wanted* (for `want_for`). Any engine
//!   that receives a reply from a wanted (or already shared) address accepts it under the same
//!   anti-poisoning policy as its own cache (`arp.rs`): an unsolicited reply for an address no
//!   engine asked about is still ignored.
//! - Every binding an engine's cache accepts is published with its confirmation time; publishing
//!   bumps a generation counter.
//! - Engines compare the generation (one atomic load) each time they poll for frames to send and,
//!   when it moved, merge newer bindings into their own cache (completing pending resolutions,
//!   following a MAC change announced on another queue).
//! - An engine whose cache misses consults the table before sending a request of its own.
//!
//! The lock is taken only on ARP traffic, cache misses and generation changes: never per
//! datagram.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use machnet_core::Instant;

use super::wire::MacAddr;

/// A binding published by an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The neighbour's MAC.
    pub mac: MacAddr,
    /// When it was last confirmed by an ARP packet.
    pub confirmed: Instant,
}

#[derive(Debug, Default)]
struct Table {
    bindings: HashMap<Ipv4Addr, Binding>,
    /// Addresses some engine is resolving, with the time after which the wish lapses.
    wanted: HashMap<Ipv4Addr, Instant>,
}

/// The neighbour table shared by the engines of one port (see the module docs).
#[derive(Debug)]
pub struct SharedNeighbours {
    table: RwLock<Table>,
    generation: AtomicU64,
    max_entries: usize,
    timeout: Duration,
}

impl SharedNeighbours {
    /// A table holding at most `max_entries` bindings (the oldest is replaced beyond that), each
    /// usable for `timeout` after its confirmation.
    pub fn new(max_entries: usize, timeout: Duration) -> Self {
        SharedNeighbours {
            table: RwLock::new(Table::default()),
            generation: AtomicU64::new(0),
            max_entries: max_entries.max(1),
            timeout,
        }
    }

    /// Changes each time a binding is published.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records at `now` that an engine resolves `ip` until `until`.
    pub fn want(&self, ip: Ipv4Addr, now: Instant, until: Instant) {
        let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if t.wanted.len() >= self.max_entries && !t.wanted.contains_key(&ip) {
            // Forget lapsed wishes first; beyond that the table refuses (the asking engine still
            // gets replies landing on its own queue).
            t.wanted.retain(|_, u| *u > now);
            if t.wanted.len() >= self.max_entries {
                return;
            }
        }
        let e = t.wanted.entry(ip).or_insert(until);
        *e = (*e).max(until);
    }

    /// Whether a binding for `ip` may be accepted from an ARP packet not addressed to this
    /// engine's cache: some engine is resolving it, or it is already shared.
    pub fn accepts(&self, ip: Ipv4Addr, now: Instant) -> bool {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.bindings.contains_key(&ip) || t.wanted.get(&ip).is_some_and(|u| *u > now)
    }

    /// Publishes `ip` → `mac` confirmed at `confirmed` (an older confirmation than the one held
    /// changes nothing).
    pub fn publish(&self, ip: Ipv4Addr, mac: MacAddr, confirmed: Instant) {
        let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
        t.wanted.remove(&ip);
        if let Some(b) = t.bindings.get(&ip) {
            if b.mac == mac && b.confirmed >= confirmed {
                return;
            }
        } else if t.bindings.len() >= self.max_entries {
            if let Some(oldest) = t
                .bindings
                .iter()
                .min_by_key(|(ip, b)| (b.confirmed, **ip))
                .map(|(ip, _)| *ip)
            {
                t.bindings.remove(&oldest);
            }
        }
        t.bindings.insert(ip, Binding { mac, confirmed });
        drop(t);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The binding of `ip` if one is published and not expired at `now`.
    pub fn get(&self, ip: Ipv4Addr, now: Instant) -> Option<Binding> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.bindings
            .get(&ip)
            .copied()
            .filter(|b| now.saturating_since(b.confirmed) < self.timeout)
    }

    /// Every unexpired binding (for merging after a generation change).
    pub fn snapshot(&self, now: Instant) -> Vec<(Ipv4Addr, Binding)> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.bindings
            .iter()
            .filter(|(_, b)| now.saturating_since(b.confirmed) < self.timeout)
            .map(|(ip, b)| (*ip, *b))
            .collect()
    }
}
