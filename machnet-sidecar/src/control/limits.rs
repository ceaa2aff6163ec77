//! Per-application limits (docs/CHANNEL.md §2): what each application, and each user, may hold
//! at once, so that no local app can exhaust what the others need.
//!
//! An *application* is a process: the pid `SO_PEERCRED` reports when its control connection is
//! accepted. Its user (uid) has a second, larger cap, so that one user's many processes cannot
//! take the whole sidecar either; the sidecar-wide caps sit above both. The [`Ledger`] counts
//! control connections, channels and listening ports (all handled by the control thread);
//! flows are created by engines and counted by the shared [`FlowCounter`]s it hands out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::channel::Flow;
use crate::engine::{AppConnects, ChannelConnects, ConnectLimits, FlowCounter, FlowQuota};

use super::socket::PeerCred;

/// How many of each resource one holder (an application, or a user) may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Control connections.
    pub connections: usize,
    /// Open channels.
    pub channels: usize,
    /// Listening Machnet ports.
    pub ports: usize,
    /// Flows (connected or accepted, not yet closed).
    pub flows: usize,
}

/// Default caps of one application (process).
pub const DEFAULT_APP_CAPS: Caps = Caps {
    connections: 256,
    channels: 4096,
    ports: 256,
    flows: 16384,
};

/// Default caps of one user (all its processes together).
pub const DEFAULT_USER_CAPS: Caps = Caps {
    connections: 1024,
    channels: 8192,
    ports: 4096,
    flows: 65536,
};

/// Default sidecar-wide cap on control connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default time a new control connection has to send `hello`.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time after which a connection without channels that sends nothing is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The control plane's limits (part of [`crate::SidecarConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// Per application (process).
    pub app: Caps,
    /// Per user.
    pub user: Caps,
    /// Control connections served at once, sidecar-wide.
    pub max_connections: usize,
    /// A connection that has not sent `hello` this long after it was accepted is closed.
    pub hello_timeout: Duration,
    /// A connection that said `hello`, holds no channel and has sent nothing for this long is
    /// closed (`None`: never). A connection holding a channel is never idle.
    pub idle_timeout: Option<Duration>,
    /// Budgets on the connects an application may have in progress and start.
    pub connects: ConnectLimits,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            app: DEFAULT_APP_CAPS,
            user: DEFAULT_USER_CAPS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            connects: ConnectLimits::default(),
        }
    }
}

/// Something the ledger counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A control connection.
    Connection,
    /// A channel.
    Channel,
    /// A listening port.
    Port,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Connection => "control connections",
            Resource::Channel => "channels",
            Resource::Port => "listening ports",
        }
    }
}

/// Whose cap was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The application (process).
    App,
    /// The application's user.
    User,
    /// The whole sidecar.
    Sidecar,
}

/// A refused charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LimitReached {
    /// What was asked for.
    pub resource: Resource,
    /// Whose cap it hit.
    pub scope: Scope,
    /// The cap.
    pub limit: usize,
}

impl LimitReached {
    fn describe(&self) -> String {
        let who = match self.scope {
            Scope::App => "this application (process) holds",
            Scope::User => "this application's user holds",
            Scope::Sidecar => "the sidecar serves",
        };
        format!(
            "{who} its maximum of {} {}",
            self.limit,
            self.resource.name()
        )
    }
}

#[derive(Debug)]
struct Usage {
    connections: usize,
    channels: usize,
    ports: usize,
    flows: Arc<FlowCounter>,
    /// An application's connect budgets (made by its first channel; unused for users).
    connects: Option<Arc<AppConnects>>,
}

impl Usage {
    fn new(flow_limit: usize) -> Self {
        Usage {
            connections: 0,
            channels: 0,
            ports: 0,
            flows: FlowCounter::new(flow_limit),
            connects: None,
        }
    }
    fn held(&self, r: Resource) -> usize {
        match r {
            Resource::Connection => self.connections,
            Resource::Channel => self.channels,
            Resource::Port => self.ports,
        }
    }
    fn count(&mut self, r: Resource) -> &mut usize {
        match r {
            Resource::Connection => &mut self.connections,
            Resource::Channel => &mut self.channels,
            Resource::Port => &mut self.ports,
        }
    }
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.channels == 0 && self.ports == 0
    }
}

fn cap(c: &Caps, r: Resource) -> usize {
    match r {
        Resource::Connection => c.connections,
        Resource::Channel => c.channels,
        Resource::Port => c.ports,
    }
}

/// What every application and user holds. Only the control thread uses it.
#[derive(Debug)]
pub struct Ledger {
    app_caps: Caps,
    user_caps: Caps,
    connect_limits: ConnectLimits,
    /// Sidecar-wide caps (flows: the engines' own `max_flows`).
    total_caps: Caps,
    total: Usage,
    apps: HashMap<i32, Usage>,
    users: HashMap<u32, Usage>,
}

impl Ledger {
    /// A ledger enforcing `limits`, with at most `max_channels` channels sidecar-wide.
    pub fn new(limits: &ControlLimits, max_channels: usize) -> Self {
        Ledger {
            app_caps: limits.app,
            user_caps: limits.user,
            connect_limits: limits.connects,
            total_caps: Caps {
                connections: limits.max_connections,
                channels: max_channels,
                ports: usize::MAX,
                flows: usize::MAX,
            },
            total: Usage::new(usize::MAX),
            apps: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// Counts one more `r` for `peer`, or says whose cap it would exceed.
    pub fn charge(&mut self, peer: PeerCred, r: Resource) -> Result<(), LimitReached> {
        let refuse = |scope, limit| LimitReached {
            resource: r,
            scope,
            limit,
        };
        let app = self.apps.get(&peer.pid).map_or(0, |u| u.held(r));
        if app >= cap(&self.app_caps, r) {
            return Err(refuse(Scope::App, cap(&self.app_caps, r)));
        }
        let user = self.users.get(&peer.uid).map_or(0, |u| u.held(r));
        if user >= cap(&self.user_caps, r) {
            return Err(refuse(Scope::User, cap(&self.user_caps, r)));
        }
        if self.total.held(r) >= cap(&self.total_caps, r) {
            return Err(refuse(Scope::Sidecar, cap(&self.total_caps, r)));
        }
        let (app_flows, user_flows) = (self.app_caps.flows, self.user_caps.flows);
        *self
            .apps
            .entry(peer.pid)
            .or_insert_with(|| Usage::new(app_flows))
            .count(r) += 1;
        *self
            .users
            .entry(peer.uid)
            .or_insert_with(|| Usage::new(user_flows))
            .count(r) += 1;
        *self.total.count(r) += 1;
        Ok(())
    }

    /// Gives back one `r` of `peer` (charged before).
    pub fn release(&mut self, peer: PeerCred, r: Resource) {
        if let Some(u) = self.apps.get_mut(&peer.pid) {
            let n = u.count(r);
            *n = n.saturating_sub(1);
            if u.is_empty() {
                self.apps.remove(&peer.pid);
            }
        }
        if let Some(u) = self.users.get_mut(&peer.uid) {
            let n = u.count(r);
            *n = n.saturating_sub(1);
            if u.is_empty() {
                self.users.remove(&peer.uid);
            }
        }
        let n = self.total.count(r);
        *n = n.saturating_sub(1);
    }

    /// The flow counters of `peer`'s application and user (which must hold a connection).
    /// Flows that outlive every connection of their application keep their counter; a new
    /// connection of the same pid starts a fresh one.
    pub fn flow_quota(&mut self, peer: PeerCred) -> FlowQuota {
        let (app_flows, user_flows) = (self.app_caps.flows, self.user_caps.flows);
        let app = self
            .apps
            .entry(peer.pid)
            .or_insert_with(|| Usage::new(app_flows))
            .flows
            .clone();
        let user = self
            .users
            .entry(peer.uid)
            .or_insert_with(|| Usage::new(user_flows))
            .flows
            .clone();
        FlowQuota::new(app, user)
    }

    /// The connect budgets of a new channel of `peer`'s application (which must hold a
    /// connection): its own in-progress budget, and its application's, shared by all the
    /// application's channels. Like flows, connects that outlive every connection of their
    /// application keep their budgets; a new connection of the same pid starts fresh ones.
    pub fn connect_budget(&mut self, peer: PeerCred) -> ChannelConnects<Flow> {
        let (app_flows, limits) = (self.app_caps.flows, self.connect_limits);
        let app = self
            .apps
            .entry(peer.pid)
            .or_insert_with(|| Usage::new(app_flows))
            .connects
            .get_or_insert_with(|| AppConnects::new(&limits))
            .clone();
        ChannelConnects::new(limits.per_channel, app)
    }

    /// How many `r` the sidecar holds in all.
    pub fn total(&self, r: Resource) -> usize {
        self.total.held(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(pid: i32, uid: u32) -> PeerCred {
        PeerCred { pid, uid, gid: uid }
    }

    #[test]
    fn apps_and_users_are_capped_separately_and_releases_make_room() {
        let limits = ControlLimits {
            app: Caps {
                connections: 2,
                channels: 1,
                ports: 1,
                flows: 1,
            },
            user: Caps {
                connections: 3,
                channels: 8,
                ports: 8,
                flows: 8,
            },
            max_connections: 4,
            ..ControlLimits::default()
        };
        let mut l = Ledger::new(&limits, 100);
        let (a, b, c, other_user) = (peer(10, 1), peer(11, 1), peer(12, 1), peer(20, 2));
        l.charge(a, Resource::Connection).unwrap();
        l.charge(a, Resource::Connection).unwrap();
        let e = l.charge(a, Resource::Connection).unwrap_err();
        assert_eq!((e.scope, e.limit), (Scope::App, 2));
        assert!(
            e.to_string().contains("maximum of 2 control connections"),
            "{e}"
        );
        l.charge(b, Resource::Connection).unwrap();
        // User 1 holds 3: its next process is refused, another user is not.
        let e = l.charge(c, Resource::Connection).unwrap_err();
        assert_eq!((e.scope, e.limit), (Scope::User, 3));
        l.charge(other_user, Resource::Connection).unwrap();
        // The sidecar holds 4.
        let e = l.charge(peer(30, 3), Resource::Connection).unwrap_err();
        assert_eq!(e.scope, Scope::Sidecar);
        l.release(a, Resource::Connection);
        l.charge(c, Resource::Connection).unwrap();
        assert_eq!(l.total(Resource::Connection), 4);

        l.charge(b, Resource::Channel).unwrap();
        assert_eq!(
            l.charge(b, Resource::Channel).unwrap_err().scope,
            Scope::App
        );
        l.charge(c, Resource::Channel).unwrap();
        l.release(b, Resource::Channel);
        l.charge(b, Resource::Channel).unwrap();

        // Flows: the counters are shared by every quota of the same process and user.
        let q1 = l.flow_quota(b);
        let q2 = l.flow_quota(b);
        let p = q1.acquire().unwrap();
        assert!(q2.acquire().is_err(), "one flow per app");
        drop(p);
        q2.acquire().unwrap();
    }

    #[test]
    fn connect_budgets_are_shared_by_an_apps_channels_not_by_other_apps() {
        let limits = ControlLimits {
            connects: ConnectLimits {
                per_channel: 2,
                per_app: 3,
                ..ConnectLimits::default()
            },
            ..ControlLimits::default()
        };
        let mut l = Ledger::new(&limits, 10);
        let (a, other) = (peer(10, 1), peer(11, 1));
        l.charge(a, Resource::Connection).unwrap();
        l.charge(other, Resource::Connection).unwrap();
        let now = machnet_core::Instant::ZERO;
        let (mut c1, mut c2, mut o) = (
            l.connect_budget(a),
            l.connect_budget(a),
            l.connect_budget(other),
        );
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(c1.admit(now).unwrap());
        }
        held.push(c2.admit(now).unwrap());
        assert_eq!(
            c2.admit(now).err(),
            Some(machnet_channel::ConnectBudget::AppInProgress)
        );
        for _ in 0..2 {
            held.push(o.admit(now).unwrap());
        }
    }

    #[test]
    fn an_application_that_leaves_entirely_is_forgotten() {
        let mut l = Ledger::new(&ControlLimits::default(), 10);
        let a = peer(10, 1);
        l.charge(a, Resource::Connection).unwrap();
        l.charge(a, Resource::Channel).unwrap();
        l.charge(a, Resource::Port).unwrap();
        for r in [Resource::Port, Resource::Channel, Resource::Connection] {
            l.release(a, r);
        }
        assert!(l.apps.is_empty() && l.users.is_empty());
        assert_eq!(l.total(Resource::Channel), 0);
    }
}
