//! The listen groups of one engine (docs/CHANNEL.md §2, "Listen groups"): for each port, the
//! channels of this engine listening on it, and which of them takes the next new flow.
//!
//! The control thread decides who may join a group (one application per port); an engine only
//! sees its own members. The core listens on a port while it has at least one member here.

use std::cell::Cell;
use std::collections::HashMap;

use super::channel::ChannelId;

/// One port's members on this engine, and where the round-robin resumes (a `Cell`, so that
/// picking needs only a shared borrow: the same-host connect path reads the map while routing).
#[derive(Debug, Default)]
struct Group {
    members: Vec<ChannelId>,
    next: Cell<usize>,
}

/// Port → the channels of this engine listening on it.
#[derive(Debug, Default)]
pub struct Listeners {
    ports: HashMap<u16, Group>,
}

/// What [`Listeners::join`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The channel is the port's first member on this engine: the core must listen on it.
    First,
    /// The port already had members here.
    Another,
    /// The channel already listened on the port; nothing changed.
    Already,
}

impl Listeners {
    /// No port listened on.
    pub fn new() -> Self {
        Listeners::default()
    }

    /// A listener map with one member per port (tests, fuzzing).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u16, ChannelId)>) -> Self {
        let mut l = Listeners::new();
        for (port, ch) in pairs {
            l.join(port, ch);
        }
        l
    }

    /// Adds `channel` to the members of `port`.
    pub fn join(&mut self, port: u16, channel: ChannelId) -> Joined {
        let g = self.ports.entry(port).or_default();
        if g.members.contains(&channel) {
            return Joined::Already;
        }
        g.members.push(channel);
        if g.members.len() == 1 {
            Joined::First
        } else {
            Joined::Another
        }
    }

    /// Removes `channel` from the members of `port`. Returns true if it was the last one (the
    /// core must stop listening on the port).
    pub fn leave(&mut self, port: u16, channel: ChannelId) -> bool {
        let Some(g) = self.ports.get_mut(&port) else {
            return false;
        };
        let Some(i) = g.members.iter().position(|&c| c == channel) else {
            return false;
        };
        g.members.remove(i);
        // Keep the rotation where it was: the member after the removed one is next.
        let next = g.next.get_mut();
        if *next > i {
            *next -= 1;
        }
        if g.members.is_empty() {
            self.ports.remove(&port);
            return true;
        }
        false
    }

    /// The members of `port` on this engine, in joining order.
    pub fn members(&self, port: u16) -> &[ChannelId] {
        self.ports.get(&port).map_or(&[], |g| &g.members)
    }

    /// Which channel of this engine takes a new flow on `port`: the members are offered the
    /// flow in round-robin order, starting after the one that took the previous flow; the first
    /// for which `takes` returns true gets it (`takes` hands the flow over, and returns false
    /// for a member that cannot take it: detaching, closed, out of handles or flow quota).
    /// `None` if no member took it (the caller aborts the flow).
    pub fn pick_listener(
        &self,
        port: u16,
        mut takes: impl FnMut(ChannelId) -> bool,
    ) -> Option<ChannelId> {
        let g = self.ports.get(&port)?;
        let n = g.members.len();
        for k in 0..n {
            let i = (g.next.get() + k) % n;
            let ch = g.members[i];
            if takes(ch) {
                g.next.set((i + 1) % n);
                return Some(ch);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_join_once_and_the_last_to_leave_says_so() {
        let mut l = Listeners::new();
        assert_eq!(l.join(80, 1), Joined::First);
        assert_eq!(l.join(80, 2), Joined::Another);
        assert_eq!(l.join(80, 1), Joined::Already);
        assert_eq!(l.join(81, 2), Joined::First);
        assert_eq!(l.members(80), &[1, 2]);
        assert!(!l.leave(80, 3), "not a member");
        assert!(!l.leave(80, 1));
        assert!(l.leave(80, 2), "last member");
        assert!(l.members(80).is_empty());
        assert!(!l.leave(80, 2), "already gone");
        assert_eq!(l.members(81), &[2]);
    }

    #[test]
    fn new_flows_go_round_robin_skipping_members_that_cannot_take_them() {
        let mut l = Listeners::from_pairs([(80, 1), (80, 2), (80, 3)]);
        let all = |_| true;
        let picks: Vec<_> = (0..6).map(|_| l.pick_listener(80, all).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        // 2 refuses: 3 is offered next, then 1 (the rotation continues after the taker).
        let mut offered = Vec::new();
        let pick = l.pick_listener(80, |c| {
            offered.push(c);
            c != 2
        });
        assert_eq!((pick, offered), (Some(1), vec![1]));
        let mut offered = Vec::new();
        let pick = l.pick_listener(80, |c| {
            offered.push(c);
            c != 2
        });
        assert_eq!((pick, offered), (Some(3), vec![2, 3]));
        // Nobody takes it: every member was offered it once.
        let mut offered = Vec::new();
        let pick = l.pick_listener(80, |c| {
            offered.push(c);
            false
        });
        assert_eq!(pick, None);
        offered.sort();
        assert_eq!(offered, [1, 2, 3]);
        assert_eq!(l.pick_listener(81, all), None, "nobody listens");
        // Leaving keeps the rotation: after 3 took a flow, 1 is next; 1 leaves, so 2 is.
        l.pick_listener(80, |c| c == 3);
        l.leave(80, 1);
        assert_eq!(l.pick_listener(80, all), Some(2));
        assert_eq!(l.pick_listener(80, all), Some(3));
    }
}
