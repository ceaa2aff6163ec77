//! The ARP cache (RFC 826), sans-IO: time is passed in, requests to send and datagrams released
//! by a resolution are pulled with [`ArpCache::poll_request`] / [`ArpCache::poll_released`].
//!
//! - Entries age out `timeout` after they were last confirmed (default 60 s). Traffic from the
//!   peer with the cached MAC refreshes them ([`ArpCache::refresh`]); using an entry within
//!   `refresh_before` of expiry sends one request to re-confirm it while it stays usable.
//! - At most `max_entries` entries (resolved + resolving); a new one evicts the oldest resolved
//!   entry (or, if none, the oldest resolution, whose queue is dropped and counted).
//! - Each resolution queues at most `max_queue_per_ip` datagrams (beyond: refused, counted). On
//!   success they are released in the order they were queued.
//! - Requests are retransmitted with exponential backoff (`retry_initial`, ×2 each time);
//!   after `max_requests` unanswered requests the resolution gives up and drops its queue
//!   (counted) — the next datagram to that address starts a new resolution.
//!
//! # Learning policy (anti-poisoning)
//!
//! RFC 826's merge rule updates an existing entry from any ARP packet whose sender is known, and
//! adds the sender when the packet is addressed to us. We apply exactly that and nothing more:
//!
//! - A request whose target is our address creates/updates the sender's entry (the requester is
//!   about to talk to us; this saves it a round trip) — [`Learn::Create`].
//! - Any other ARP packet (replies, gratuitous ARP, requests for other hosts) only updates an
//!   address that is already cached or being resolved — [`Learn::UpdateOnly`]. An unsolicited
//!   reply or gratuitous announcement for an address we have never asked about is ignored and
//!   counted, so a stranger cannot fill the cache or plant entries for addresses we will use later.
//!   Updating a known address is still allowed: that is what gratuitous ARP is for (failover).
//! - Senders with a group/zero MAC or an unspecified/broadcast/multicast IP are never learnt.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use machnet_core::Instant;

use super::wire::MacAddr;

/// Configuration of an [`ArpCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpConfig {
    /// How long an entry lives after its last confirmation.
    pub timeout: Duration,
    /// Most entries (resolved + resolving).
    pub max_entries: usize,
    /// Most datagrams queued per address awaiting resolution.
    pub max_queue_per_ip: usize,
    /// Delay before the first retransmission of a request; doubled after each.
    pub retry_initial: Duration,
    /// Requests sent (first one included) before giving up.
    pub max_requests: u32,
    /// A lookup hitting an entry this close to expiry sends one request to re-confirm it while
    /// still using it (no stall for a one-way sender). Zero disables.
    pub refresh_before: Duration,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            timeout: Duration::from_secs(60),
            max_entries: 1024,
            max_queue_per_ip: 16,
            retry_initial: Duration::from_millis(250),
            max_requests: 4,
            refresh_before: Duration::from_secs(15),
        }
    }
}

/// Counters of an [`ArpCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArpStats {
    /// Requests to transmit (first ones and retransmissions).
    pub requests: u64,
    /// Requests re-confirming an entry close to expiry (included in `requests`).
    pub refreshes: u64,
    /// Retransmitted requests (included in `requests`).
    pub retransmits: u64,
    /// Resolutions completed.
    pub resolved: u64,
    /// Entries created without a resolution (request addressed to us).
    pub learnt: u64,
    /// Existing entries updated (refresh or MAC change).
    pub updated: u64,
    /// Entries whose MAC changed.
    pub mac_changes: u64,
    /// Entries removed by aging.
    pub expired: u64,
    /// Entries evicted to make room.
    pub evicted: u64,
    /// Resolutions that gave up.
    pub failures: u64,
    /// Datagrams refused because the per-address queue was full.
    pub queue_full_drops: u64,
    /// Datagrams dropped because their resolution gave up.
    pub failed_drops: u64,
    /// Datagrams dropped because their resolution was evicted.
    pub evicted_drops: u64,
    /// ARP information ignored by the learning policy (unsolicited, bad addresses).
    pub ignored: u64,
}

/// What an ARP packet may do to the cache (see the module's learning policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// May create a new entry (request addressed to us).
    Create,
    /// May only update an entry that exists or is being resolved.
    UpdateOnly,
}

/// Outcome of [`ArpCache::learn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learnt {
    /// Nothing changed (policy or bad address).
    Ignored,
    /// A new entry was created.
    Created,
    /// An entry was refreshed or changed.
    Updated,
    /// A pending resolution completed; its datagrams are ready in [`ArpCache::poll_released`].
    Resolved,
}

#[derive(Debug)]
struct Resolved {
    mac: MacAddr,
    confirmed: Instant,
    refresh_sent: bool,
}

#[derive(Debug)]
struct Pending<P> {
    queue: VecDeque<P>,
    started: Instant,
    requests_sent: u32,
    next_retry: Instant,
}

/// An ARP cache queueing datagrams of type `P` while their next hop is being resolved.
#[derive(Debug)]
pub struct ArpCache<P> {
    cfg: ArpConfig,
    resolved: HashMap<Ipv4Addr, Resolved>,
    pending: HashMap<Ipv4Addr, Pending<P>>,
    requests: VecDeque<Ipv4Addr>,
    released: VecDeque<(MacAddr, P)>,
    next_sweep: Option<Instant>,
    stats: ArpStats,
}

/// Whether `ip` may be cached: not unspecified, broadcast, multicast (or class E).
pub fn learnable_ip(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.octets()[0] >= 240)
}

impl<P> ArpCache<P> {
    /// An empty cache. Limits of zero are raised to one.
    pub fn new(mut cfg: ArpConfig) -> Self {
        cfg.max_entries = cfg.max_entries.max(1);
        cfg.max_queue_per_ip = cfg.max_queue_per_ip.max(1);
        cfg.max_requests = cfg.max_requests.max(1);
        ArpCache {
            cfg,
            resolved: HashMap::new(),
            pending: HashMap::new(),
            requests: VecDeque::new(),
            released: VecDeque::new(),
            next_sweep: None,
            stats: ArpStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ArpConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> ArpStats {
        self.stats
    }

    /// Number of entries (resolved + resolving).
    pub fn len(&self) -> usize {
        self.resolved.len() + self.pending.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `ip` is being resolved.
    pub fn is_pending(&self, ip: Ipv4Addr) -> bool {
        self.pending.contains_key(&ip)
    }

    /// The MAC of `ip` if cached and not expired (an expired entry is removed). A hit within
    /// `refresh_before` of expiry also schedules one request to re-confirm the entry.
    pub fn lookup(&mut self, ip: Ipv4Addr, now: Instant) -> Option<MacAddr> {
        let e = self.resolved.get_mut(&ip)?;
        let age = now.saturating_since(e.confirmed);
        if age >= self.cfg.timeout {
            self.resolved.remove(&ip);
            self.stats.expired += 1;
            return None;
        }
        if !e.refresh_sent
            && !self.cfg.refresh_before.is_zero()
            && age.saturating_add(self.cfg.refresh_before) >= self.cfg.timeout
        {
            e.refresh_sent = true;
            self.requests.push_back(ip);
            self.stats.requests += 1;
            self.stats.refreshes += 1;
        }
        Some(e.mac)
    }

    /// Queues `pkt` until `ip` is resolved, starting a resolution (and its first request) if
    /// none is under way. Returns the datagram back if the queue for `ip` is full.
    pub fn enqueue(&mut self, ip: Ipv4Addr, pkt: P, now: Instant) -> Result<(), P> {
        if let Some(p) = self.pending.get_mut(&ip) {
            if p.queue.len() >= self.cfg.max_queue_per_ip {
                self.stats.queue_full_drops += 1;
                return Err(pkt);
            }
            p.queue.push_back(pkt);
            return Ok(());
        }
        // A stale resolved entry for the same address would be a duplicate: drop it.
        self.resolved.remove(&ip);
        self.make_room();
        let mut queue = VecDeque::new();
        queue.push_back(pkt);
        self.pending.insert(
            ip,
            Pending {
                queue,
                started: now,
                requests_sent: 1,
                next_retry: now + self.cfg.retry_initial,
            },
        );
        self.requests.push_back(ip);
        self.stats.requests += 1;
        Ok(())
    }

    /// Applies an ARP sender binding `ip` → `mac` under `policy` (module docs).
    pub fn learn(&mut self, ip: Ipv4Addr, mac: MacAddr, policy: Learn, now: Instant) -> Learnt {
        if !learnable_ip(ip) || !mac.is_unicast() {
            self.stats.ignored += 1;
            return Learnt::Ignored;
        }
        if let Some(p) = self.pending.remove(&ip) {
            self.stats.resolved += 1;
            self.released
                .extend(p.queue.into_iter().map(|pkt| (mac, pkt)));
            self.insert_resolved(ip, mac, now);
            return Learnt::Resolved;
        }
        if let Some(e) = self.resolved.get_mut(&ip) {
            if e.mac != mac {
                self.stats.mac_changes += 1;
                e.mac = mac;
            }
            e.confirmed = now;
            e.refresh_sent = false;
            self.stats.updated += 1;
            return Learnt::Updated;
        }
        match policy {
            Learn::UpdateOnly => {
                self.stats.ignored += 1;
                Learnt::Ignored
            }
            Learn::Create => {
                self.make_room();
                self.insert_resolved(ip, mac, now);
                self.stats.learnt += 1;
                Learnt::Created
            }
        }
    }

    /// Merges a binding another engine's cache accepted (`neighbours.rs`): completes a pending
    /// resolution, or updates a cached entry confirmed earlier than `confirmed`. Never creates an
    /// entry, never goes back in time, counts nothing when it changes nothing.
    pub fn merge(&mut self, ip: Ipv4Addr, mac: MacAddr, confirmed: Instant) -> Learnt {
        let newer = match self.resolved.get(&ip) {
            Some(e) => e.confirmed < confirmed,
            None => self.pending.contains_key(&ip),
        };
        if newer {
            self.learn(ip, mac, Learn::UpdateOnly, confirmed)
        } else {
            Learnt::Ignored
        }
    }

    /// How long a resolution started now may take before it gives up (all its retries).
    pub fn resolution_span(&self) -> Duration {
        let shift = self.cfg.max_requests.min(16);
        self.cfg.retry_initial.saturating_mul(1 << shift)
    }

    /// Refreshes `ip`'s entry if it is cached with exactly `mac` (traffic from the peer confirms
    /// reachability; it never changes a MAC). Returns whether it did.
    pub fn refresh(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) -> bool {
        match self.resolved.get_mut(&ip) {
            Some(e) if e.mac == mac && now.saturating_since(e.confirmed) < self.cfg.timeout => {
                e.confirmed = now;
                e.refresh_sent = false;
                true
            }
            _ => false,
        }
    }

    /// The next address to send an ARP request for.
    pub fn poll_request(&mut self) -> Option<Ipv4Addr> {
        self.requests.pop_front()
    }

    /// The next datagram released by a resolution, with its next hop's MAC, in queueing order.
    pub fn poll_released(&mut self) -> Option<(MacAddr, P)> {
        self.released.pop_front()
    }

    /// When [`ArpCache::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.pending.values().map(|p| p.next_retry).min();
        match (retry, self.next_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Retransmits due requests, gives up on exhausted resolutions and ages out entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for (ip, p) in self.pending.iter_mut() {
            if p.next_retry > now {
                continue;
            }
            if p.requests_sent >= self.cfg.max_requests {
                failed.push(*ip);
                continue;
            }
            p.requests_sent += 1;
            let shift = (p.requests_sent - 1).min(16);
            p.next_retry = now + self.cfg.retry_initial.saturating_mul(1 << shift);
            self.requests.push_back(*ip);
            self.stats.requests += 1;
            self.stats.retransmits += 1;
        }
        failed.sort_unstable();
        for ip in failed {
            if let Some(p) = self.pending.remove(&ip) {
                self.stats.failures += 1;
                self.stats.failed_drops += p.queue.len() as u64;
            }
        }
        if self.next_sweep.is_some_and(|t| t <= now) {
            let timeout = self.cfg.timeout;
            let before = self.resolved.len();
            self.resolved
                .retain(|_, e| now.saturating_since(e.confirmed) < timeout);
            self.stats.expired += (before - self.resolved.len()) as u64;
            self.schedule_sweep(now);
        }
    }

    fn schedule_sweep(&mut self, now: Instant) {
        self.next_sweep = if self.resolved.is_empty() {
            None
        } else {
            // Sweep every quarter timeout: entries live at most 1.25 × timeout in memory, but
            // `lookup` never returns an expired one.
            Some(now + (self.cfg.timeout / 4).max(Duration::from_millis(1)))
        };
    }

    fn insert_resolved(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) {
        self.resolved.insert(
            ip,
            Resolved {
                mac,
                confirmed: now,
                refresh_sent: false,
            },
        );
        if self.next_sweep.is_none() {
            self.schedule_sweep(now);
        }
    }

    /// Evicts until there is room for one more entry: the least recently confirmed resolved
    /// entry first, else the oldest resolution (O(n) scan; only when full).
    fn make_room(&mut self) {
        while self.len() >= self.cfg.max_entries {
            if let Some(ip) = self
                .resolved
                .iter()
                .min_by_key(|(ip, e)| (e.confirmed, **ip))
                .map(|(ip, _)| *ip)
            {
                self.resolved.remove(&ip);
                self.stats.evicted += 1;
            } else if let Some(ip) = self
                .pending
                .iter()
                .min_by_key(|(ip, p)| (p.started, **ip))
                .map(|(ip, _)| *ip)
            {
                if let Some(p) = self.pending.remove(&ip) {
                    self.stats.evicted += 1;
                    self.stats.evicted_drops += p.queue.len() as u64;
                }
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
