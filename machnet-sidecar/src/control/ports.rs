//! The host-wide registry of listening Machnet ports: one owner channel per port.

use std::collections::HashMap;

use machnet_core::PortPool;

use crate::engine::ChannelId;

/// Who listens on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortOwner {
    /// The channel accepted flows are announced on.
    pub channel: ChannelId,
    /// That channel's engine.
    pub engine: u16,
}

/// Why a port cannot be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Port 0 is invalid.
    #[error("port 0 cannot be listened on")]
    Zero,
    /// The port is in the ephemeral range used for outgoing connections.
    #[error("port {0} is in the ephemeral range")]
    Ephemeral(u16),
    /// Someone already listens on it.
    #[error("port {0} is already in use")]
    InUse(u16),
}

/// The registry. See the module documentation.
#[derive(Debug)]
pub struct PortRegistry {
    ephemeral: PortPool,
    owners: HashMap<u16, PortOwner>,
}

impl PortRegistry {
    /// An empty registry refusing ports of `ephemeral`.
    pub fn new(ephemeral: PortPool) -> Self {
        PortRegistry {
            ephemeral,
            owners: HashMap::new(),
        }
    }

    /// Checks that `port` could be claimed now.
    pub fn check(&self, port: u16) -> Result<(), ClaimError> {
        if port == 0 {
            return Err(ClaimError::Zero);
        }
        if self.ephemeral.contains(port) {
            return Err(ClaimError::Ephemeral(port));
        }
        if self.owners.contains_key(&port) {
            return Err(ClaimError::InUse(port));
        }
        Ok(())
    }

    /// Records `owner` as the listener of `port`.
    pub fn claim(&mut self, port: u16, owner: PortOwner) -> Result<(), ClaimError> {
        self.check(port)?;
        self.owners.insert(port, owner);
        Ok(())
    }

    /// The owner of `port`.
    pub fn owner(&self, port: u16) -> Option<PortOwner> {
        self.owners.get(&port).copied()
    }

    /// Releases `port` if `channel` owns it; returns whether it did.
    pub fn release(&mut self, port: u16, channel: ChannelId) -> bool {
        if self.owner(port).is_some_and(|o| o.channel == channel) {
            self.owners.remove(&port);
            true
        } else {
            false
        }
    }

    /// Releases every port of `channel`; returns them.
    pub fn release_channel(&mut self, channel: ChannelId) -> Vec<u16> {
        let ports: Vec<u16> = self
            .owners
            .iter()
            .filter(|(_, o)| o.channel == channel)
            .map(|(&p, _)| p)
            .collect();
        for p in &ports {
            self.owners.remove(p);
        }
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_per_port_and_ephemeral_refused() {
        let mut r = PortRegistry::new(PortPool {
            base: 49152,
            count: 16384,
        });
        let a = PortOwner {
            channel: 1,
            engine: 0,
        };
        let b = PortOwner {
            channel: 2,
            engine: 1,
        };
        assert_eq!(r.claim(0, a), Err(ClaimError::Zero));
        assert_eq!(r.claim(50000, a), Err(ClaimError::Ephemeral(50000)));
        r.claim(80, a).unwrap();
        r.claim(81, a).unwrap();
        assert_eq!(r.claim(80, b), Err(ClaimError::InUse(80)));
        assert!(!r.release(80, 2), "only the owner releases");
        assert!(r.release(80, 1));
        r.claim(80, b).unwrap();
        assert_eq!(r.release_channel(1), vec![81]);
        assert_eq!(r.owner(80), Some(b));
        assert_eq!(r.owner(81), None);
    }
}
