//! The host-wide registry of listening Machnet ports (docs/CHANNEL.md §2, "Listen groups"):
//! each port belongs to one application, whose channels on any engines form its listen group.
//!
//! An application is what the [`super::limits`] ledger counts: the user and pid of the control
//! connection (`SO_PEERCRED`). A channel of the same application joins the group; any other
//! application is refused the port. The registry also tells the control thread when an engine
//! gets its first member of a group (the other engines must learn that it listens) and when
//! the last one leaves.

use std::collections::HashMap;

use machnet_core::PortPool;

use super::socket::PeerCred;
use crate::engine::ChannelId;

/// The application a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppId {
    /// Its user.
    pub uid: u32,
    /// Its process.
    pub pid: i32,
}

impl AppId {
    /// The application of a control connection's peer.
    pub fn of(peer: PeerCred) -> Self {
        AppId {
            uid: peer.uid,
            pid: peer.pid,
        }
    }
}

/// A member of a port's listen group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortOwner {
    /// The channel accepted flows are announced on.
    pub channel: ChannelId,
    /// That channel's engine.
    pub engine: u16,
}

/// Why a port cannot be listened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Port 0 is invalid.
    #[error("port 0 cannot be listened on")]
    Zero,
    /// The port is in the ephemeral range used for outgoing connections.
    #[error("port {0} is in the ephemeral range")]
    Ephemeral(u16),
    /// Another application listens on it.
    #[error("port {0} is already in use by another application")]
    InUse(u16),
    /// The channel already listens on it.
    #[error("this channel already listens on port {0}")]
    AlreadyListening(u16),
}

/// What joining a group does (see [`PortRegistry::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The port had no listener: it now counts against the application's port caps.
    pub new_port: bool,
    /// The channel is the group's first member on its engine: the other engines must be told
    /// that this engine listens.
    pub first_on_engine: bool,
}

/// What leaving a group did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// The port.
    pub port: u16,
    /// The member's engine.
    pub engine: u16,
    /// No member of the group is left on that engine: the other engines must be told.
    pub last_on_engine: bool,
    /// No member is left at all: the port is free (and no longer counts against the caps).
    pub port_freed: bool,
}

/// One port's group.
#[derive(Debug)]
struct Group {
    app: AppId,
    members: Vec<PortOwner>,
}

/// The registry. See the module documentation.
#[derive(Debug)]
pub struct PortRegistry {
    ephemeral: PortPool,
    groups: HashMap<u16, Group>,
}

impl PortRegistry {
    /// An empty registry refusing ports of `ephemeral`.
    pub fn new(ephemeral: PortPool) -> Self {
        PortRegistry {
            ephemeral,
            groups: HashMap::new(),
        }
    }

    /// What [`PortRegistry::join`] would do for `owner` of `app` on `port`, changing nothing.
    pub fn plan(&self, port: u16, app: AppId, owner: PortOwner) -> Result<Joined, ClaimError> {
        if port == 0 {
            return Err(ClaimError::Zero);
        }
        if self.ephemeral.contains(port) {
            return Err(ClaimError::Ephemeral(port));
        }
        let Some(g) = self.groups.get(&port) else {
            return Ok(Joined {
                new_port: true,
                first_on_engine: true,
            });
        };
        if g.app != app {
            return Err(ClaimError::InUse(port));
        }
        if g.members.iter().any(|m| m.channel == owner.channel) {
            return Err(ClaimError::AlreadyListening(port));
        }
        Ok(Joined {
            new_port: false,
            first_on_engine: !g.members.iter().any(|m| m.engine == owner.engine),
        })
    }

    /// Adds `owner` of `app` to the listen group of `port` (creating it if the port is free).
    pub fn join(&mut self, port: u16, app: AppId, owner: PortOwner) -> Result<Joined, ClaimError> {
        let joined = self.plan(port, app, owner)?;
        self.groups
            .entry(port)
            .or_insert_with(|| Group {
                app,
                members: Vec::new(),
            })
            .members
            .push(owner);
        Ok(joined)
    }

    /// The members of `port`'s group, in joining order.
    pub fn members(&self, port: u16) -> &[PortOwner] {
        self.groups.get(&port).map_or(&[], |g| &g.members)
    }

    /// Removes `channel` from the group of `port`; `None` if it was not a member.
    pub fn leave(&mut self, port: u16, channel: ChannelId) -> Option<Left> {
        let g = self.groups.get_mut(&port)?;
        let i = g.members.iter().position(|m| m.channel == channel)?;
        let engine = g.members.remove(i).engine;
        let left = Left {
            port,
            engine,
            last_on_engine: !g.members.iter().any(|m| m.engine == engine),
            port_freed: g.members.is_empty(),
        };
        if left.port_freed {
            self.groups.remove(&port);
        }
        Some(left)
    }

    /// Removes `channel` from every group it is in.
    pub fn leave_all(&mut self, channel: ChannelId) -> Vec<Left> {
        let ports: Vec<u16> = self
            .groups
            .iter()
            .filter(|(_, g)| g.members.iter().any(|m| m.channel == channel))
            .map(|(&p, _)| p)
            .collect();
        ports
            .into_iter()
            .filter_map(|p| self.leave(p, channel))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: AppId = AppId { uid: 1000, pid: 10 };

    fn owner(channel: ChannelId, engine: u16) -> PortOwner {
        PortOwner { channel, engine }
    }

    fn registry() -> PortRegistry {
        PortRegistry::new(PortPool {
            base: 49152,
            count: 16384,
        })
    }

    #[test]
    fn invalid_ports_are_refused() {
        let mut r = registry();
        assert_eq!(r.join(0, APP, owner(1, 0)), Err(ClaimError::Zero));
        assert_eq!(
            r.join(50000, APP, owner(1, 0)),
            Err(ClaimError::Ephemeral(50000))
        );
        assert!(r.members(0).is_empty() && r.members(50000).is_empty());
    }

    #[test]
    fn only_the_owning_application_joins_a_port() {
        let mut r = registry();
        let other_pid = AppId { pid: 11, ..APP };
        let other_uid = AppId { uid: 0, ..APP };
        assert_eq!(
            r.join(80, APP, owner(1, 0)),
            Ok(Joined {
                new_port: true,
                first_on_engine: true
            })
        );
        for app in [other_pid, other_uid] {
            assert_eq!(r.join(80, app, owner(9, 1)), Err(ClaimError::InUse(80)));
        }
        assert_eq!(
            r.join(80, APP, owner(1, 0)),
            Err(ClaimError::AlreadyListening(80))
        );
        // Same application: a second channel on the same engine, then one on another engine.
        assert_eq!(
            r.join(80, APP, owner(2, 0)),
            Ok(Joined {
                new_port: false,
                first_on_engine: false
            })
        );
        assert_eq!(
            r.join(80, APP, owner(3, 1)),
            Ok(Joined {
                new_port: false,
                first_on_engine: true
            })
        );
        assert_eq!(r.members(80), &[owner(1, 0), owner(2, 0), owner(3, 1)]);
        // A refused join changed nothing.
        assert_eq!(r.members(80).len(), 3);
    }

    #[test]
    fn leaving_reports_the_last_member_per_engine_and_frees_the_port_with_the_last() {
        let mut r = registry();
        for (ch, e) in [(1, 0), (2, 0), (3, 1)] {
            r.join(80, APP, owner(ch, e)).unwrap();
        }
        r.join(81, APP, owner(1, 0)).unwrap();
        assert_eq!(r.leave(80, 9), None, "not a member");
        assert_eq!(
            r.leave(80, 1),
            Some(Left {
                port: 80,
                engine: 0,
                last_on_engine: false,
                port_freed: false
            })
        );
        assert_eq!(
            r.leave(80, 3),
            Some(Left {
                port: 80,
                engine: 1,
                last_on_engine: true,
                port_freed: false
            })
        );
        // Another application still cannot take it while channel 2 listens.
        let other = AppId { pid: 11, ..APP };
        assert_eq!(r.join(80, other, owner(7, 1)), Err(ClaimError::InUse(80)));
        let mut left = r.leave_all(2);
        left.extend(r.leave_all(1));
        assert_eq!(
            left,
            [
                Left {
                    port: 80,
                    engine: 0,
                    last_on_engine: true,
                    port_freed: true
                },
                Left {
                    port: 81,
                    engine: 0,
                    last_on_engine: true,
                    port_freed: true
                }
            ]
        );
        // Free again: anyone may take it.
        assert!(r.join(80, other, owner(7, 1)).unwrap().new_port);
    }
}
