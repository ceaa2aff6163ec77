//! Stateless SYN cookies (PROTOCOL.md §5.5): the server's ISN and flow token for a connection
//! attempt, computed from the attempt and a secret instead of stored, so that an engine under a
//! flood of SYNs answers without keeping state until the client shows it receives our packets.

use std::hash::Hasher;
use std::net::Ipv4Addr;

use siphasher::sip128::{Hasher128, SipHasher24};

use crate::time::Instant;
use crate::wire::Repr;

/// How long one cookie key epoch lasts; a cookie is accepted in its epoch and the next, so a
/// handshake must complete within 16–32 s of the SYN-ACK (a client gives up after 5.11 s).
pub(crate) const EPOCH_NANOS: u64 = 16_000_000_000;

/// What a connection attempt is identified by: everything the client's SYN and its handshake
/// ACK both carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) client_ip: Ipv4Addr,
    pub(crate) client_port: u16,
    pub(crate) server_port: u16,
    pub(crate) client_token: u64,
    pub(crate) client_isn: u32,
}

impl Attempt {
    /// The attempt a client packet from `client_ip` with these ports (a SYN, or a handshake
    /// ACK) belongs to, whose handshake block names `client_token` and ISN `client_isn`.
    pub(crate) fn of(
        client_ip: Ipv4Addr,
        packet: &Repr,
        client_token: u64,
        client_isn: u32,
    ) -> Self {
        Attempt {
            client_ip,
            client_port: packet.src_port,
            server_port: packet.dst_port,
            client_token,
            client_isn,
        }
    }
}

/// Most cookie-established flows remembered at once (see [`UsedCookies`]).
pub(crate) const MAX_USED_COOKIES: usize = 65_536;

/// The client tokens of flows established from cookies, kept as long as their cookies are
/// valid (two epochs): a delayed duplicate or a replay of a handshake packet must not
/// establish the flow a second time and deliver its message again (at most once).
#[derive(Default)]
pub(crate) struct UsedCookies {
    tokens: std::collections::HashSet<u64>,
    /// (when, client token), oldest first.
    order: std::collections::VecDeque<(Instant, u64)>,
}

/// Why a cookie may not establish a flow now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieRefusal {
    /// This attempt already established a flow.
    Used,
    /// [`MAX_USED_COOKIES`] flows came from cookies within two epochs.
    Full,
}

impl UsedCookies {
    /// Records that the attempt with `client_token` establishes a flow at `now`.
    pub(crate) fn take(&mut self, client_token: u64, now: Instant) -> Result<(), CookieRefusal> {
        let horizon = now.as_nanos().saturating_sub(2 * EPOCH_NANOS);
        while let Some(&(t, tok)) = self.order.front() {
            if t.as_nanos() >= horizon {
                break;
            }
            self.order.pop_front();
            self.tokens.remove(&tok);
        }
        if self.tokens.contains(&client_token) {
            return Err(CookieRefusal::Used);
        }
        if self.tokens.len() >= MAX_USED_COOKIES {
            return Err(CookieRefusal::Full);
        }
        self.tokens.insert(client_token);
        self.order.push_back((now, client_token));
        Ok(())
    }
}

/// The server's side of a cookie handshake: its ISN and flow token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cookie {
    pub(crate) isn: u32,
    pub(crate) token: u64,
}

/// An engine's cookie secret (random per engine; cookies are checked by the engine that made
/// them, the flow's designated engine).
#[derive(Clone)]
pub(crate) struct CookieJar {
    key: [u8; 16],
}

impl CookieJar {
    pub(crate) fn new(key: [u8; 16]) -> Self {
        CookieJar { key }
    }

    /// The cookie for `a` issued at `now`.
    pub(crate) fn issue(&self, a: &Attempt, now: Instant) -> Cookie {
        self.for_epoch(a, now.as_nanos() / EPOCH_NANOS)
    }

    /// The cookie `token` and `isn` prove `a` was answered by us in this epoch or the last.
    pub(crate) fn check(&self, a: &Attempt, now: Instant, token: u64, isn: u32) -> Option<Cookie> {
        let epoch = now.as_nanos() / EPOCH_NANOS;
        [epoch, epoch.saturating_sub(1)]
            .into_iter()
            .map(|e| self.for_epoch(a, e))
            .find(|c| c.token == token && c.isn == isn)
    }

    fn for_epoch(&self, a: &Attempt, epoch: u64) -> Cookie {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(&a.client_ip.octets());
        h.write(&a.client_port.to_be_bytes());
        h.write(&a.server_port.to_be_bytes());
        h.write(&a.client_token.to_be_bytes());
        h.write(&a.client_isn.to_be_bytes());
        h.write(&epoch.to_be_bytes());
        let v = h.finish128();
        Cookie {
            // A token is never 0 (§4.1).
            token: v.h1.max(1),
            isn: v.h2 as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt() -> Attempt {
        Attempt {
            client_ip: Ipv4Addr::new(10, 0, 0, 1),
            client_port: 50_000,
            server_port: 7000,
            client_token: 0x1234_5678_9ABC_DEF0,
            client_isn: 42,
        }
    }

    #[test]
    fn a_cookie_establishes_one_flow_within_its_lifetime() {
        let mut used = UsedCookies::default();
        let t0 = Instant::from_nanos(5);
        assert_eq!(used.take(7, t0), Ok(()));
        assert_eq!(used.take(7, t0), Err(CookieRefusal::Used));
        assert_eq!(used.take(8, t0), Ok(()));
        // Once no cookie of that time can be valid any more, the token is forgotten.
        let later = Instant::from_nanos(5 + 2 * EPOCH_NANOS + 1);
        assert_eq!(used.take(7, later), Ok(()));
        assert_eq!(used.tokens.len(), 1);
    }

    #[test]
    fn a_cookie_is_accepted_in_its_epoch_and_the_next_only() {
        let jar = CookieJar::new([7; 16]);
        let t0 = Instant::from_nanos(EPOCH_NANOS * 10 + 5);
        let c = jar.issue(&attempt(), t0);
        assert_eq!(jar.check(&attempt(), t0, c.token, c.isn), Some(c));
        let next = Instant::from_nanos(EPOCH_NANOS * 11 + 1);
        assert_eq!(jar.check(&attempt(), next, c.token, c.isn), Some(c));
        let later = Instant::from_nanos(EPOCH_NANOS * 12);
        assert_eq!(jar.check(&attempt(), later, c.token, c.isn), None);
    }

    #[test]
    fn every_field_and_the_key_change_the_cookie() {
        let jar = CookieJar::new([7; 16]);
        let t = Instant::from_nanos(1);
        let c = jar.issue(&attempt(), t);
        let variants = [
            Attempt {
                client_ip: Ipv4Addr::new(10, 0, 0, 2),
                ..attempt()
            },
            Attempt {
                client_port: 50_001,
                ..attempt()
            },
            Attempt {
                server_port: 7001,
                ..attempt()
            },
            Attempt {
                client_token: 1,
                ..attempt()
            },
            Attempt {
                client_isn: 43,
                ..attempt()
            },
        ];
        for v in variants {
            assert_eq!(jar.check(&v, t, c.token, c.isn), None, "{v:?}");
        }
        assert_ne!(CookieJar::new([8; 16]).issue(&attempt(), t), c);
        assert_eq!(jar.check(&attempt(), t, c.token ^ 1, c.isn), None);
        assert_eq!(jar.check(&attempt(), t, c.token, c.isn ^ 1), None);
    }
}
