//! An application that verifies delivery.
//!
//! Every flow carries messages both ways. Message `i` of direction `d` of flow `f` has a length
//! fixed by the [`Plan`] and bytes fixed by [`crate::content`] — both pure functions of the seed —
//! so each receiver checks that what it reads is byte-identical to what was sent, that nothing is
//! lost, duplicated or reordered (exactly once, in order), and finally that the count is right.
//! A violation stops the run with a [`WorkloadError`] naming the seed, the flow, the message and
//! how it differs.
//!
//! Senders honour back-pressure: a message refused with `SendError::BufferFull` is kept and
//! offered again after `Event::Writable`. An optional application window
//! ([`WorkloadConfig::max_outstanding`]) bounds messages sent but not yet read by the peer. The
//! receiving (server) side can stop reading after a number of messages
//! ([`WorkloadConfig::pause_reading_after`], for all flows or only
//! [`WorkloadConfig::paused_flows`]) until [`Workload::resume_reading`].

mod config;
mod plan;

pub use config::{
    CloseMode, FlowSpec, SideProgress, WorkloadConfig, WorkloadError, LISTEN_PORT_BASE,
};
pub use plan::{Plan, SizeClass, SizeMix};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bytes::Bytes;
use machnet_core::time::Instant;
use machnet_core::{CloseReason, Event, FlowId, RecvError, SendError};

use crate::content::{self, Direction, MessageId};
use crate::network::{EngineAddr, Network};
use crate::report::Report;

#[derive(Debug, Default)]
struct Side {
    handle: Option<FlowId>,
    established: bool,
    pending: Option<Bytes>,
    close_called: bool,
    reading: bool,
    done: bool,
    progress: SideProgress,
}

#[derive(Debug)]
struct FlowState {
    spec: FlowSpec,
    tag: u32,
    /// `[client, server]`.
    sides: [Side; 2],
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

fn out_dir(side: usize) -> Direction {
    if side == CLIENT {
        Direction::ClientToServer
    } else {
        Direction::ServerToClient
    }
}

fn side_name(side: usize) -> &'static str {
    if side == CLIENT {
        "client"
    } else {
        "server"
    }
}

/// A running workload. See the module documentation.
#[derive(Debug)]
pub struct Workload {
    config: WorkloadConfig,
    plan: Plan,
    flows: Vec<FlowState>,
    handles: BTreeMap<(EngineAddr, FlowId), (usize, usize)>,
    /// (client IP, client port, server port) → flow, for flows not yet accepted.
    awaiting_accept: BTreeMap<(Ipv4Addr, u16, u16), usize>,
    sides_remaining: usize,
    started_at: Option<Instant>,
    finished_at: Option<Instant>,
    paused: bool,
}

impl Workload {
    /// Plans the workload for `net` (whose engines fix the maximum message length and fragment
    /// size). Nothing happens on the network until [`Workload::start`].
    pub fn new(config: WorkloadConfig, net: &Network) -> Workload {
        let first = config
            .flows
            .first()
            .map(|f| f.client)
            .unwrap_or(EngineAddr::new(0, 0));
        let engine_config = net.engine(first).config();
        let max_len = engine_config.max_message_len;
        let fragment = engine_config.max_fragment_payload() as u32;
        let plan = Plan::new(
            config.seed,
            config.flows.len(),
            config.messages,
            &config.sizes,
            max_len,
            fragment,
        );
        let flows = config
            .flows
            .iter()
            .enumerate()
            .map(|(i, &spec)| FlowState {
                spec,
                tag: i as u32,
                sides: Default::default(),
            })
            .collect::<Vec<_>>();
        Workload {
            sides_remaining: flows.len() * 2,
            paused: config.pause_reading_after.is_some(),
            config,
            plan,
            flows,
            handles: BTreeMap::new(),
            awaiting_accept: BTreeMap::new(),
            started_at: None,
            finished_at: None,
        }
    }

    /// The planned message sizes.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Number of flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Progress of the client (`server == false`) or server side of flow `flow`.
    pub fn progress(&self, flow: usize, server: bool) -> SideProgress {
        self.flows[flow].sides[usize::from(server)].progress
    }

    /// The engine and flow handle of one side of a flow, once connected or accepted.
    pub fn handle(&self, flow: usize, server: bool) -> Option<(EngineAddr, FlowId)> {
        let f = &self.flows[flow];
        let side = usize::from(server);
        let addr = if server { f.spec.server } else { f.spec.client };
        f.sides[side].handle.map(|h| (addr, h))
    }

    /// Messages read and verified so far, all flows and directions.
    pub fn messages_delivered(&self) -> u64 {
        self.flows
            .iter()
            .flat_map(|f| f.sides.iter())
            .map(|s| s.progress.received)
            .sum()
    }

    /// Bytes read and verified so far.
    pub fn bytes_delivered(&self) -> u64 {
        self.flows
            .iter()
            .flat_map(|f| f.sides.iter())
            .map(|s| s.progress.bytes_received)
            .sum()
    }

    /// Times any sender got `BufferFull`.
    pub fn buffer_full_count(&self) -> u64 {
        self.flows
            .iter()
            .flat_map(|f| f.sides.iter())
            .map(|s| s.progress.buffer_full)
            .sum()
    }

    /// Whether both sides of flow `flow` completed (see [`WorkloadConfig::close`]).
    pub fn flow_done(&self, flow: usize) -> bool {
        self.flows[flow].sides.iter().all(|s| s.done)
    }

    /// Whether every flow completed (see [`WorkloadConfig::close`]).
    pub fn is_done(&self) -> bool {
        self.sides_remaining == 0
    }

    fn error(&self, net: &Network, message: impl Into<String>) -> WorkloadError {
        let mut message = message.into();
        if net.seed() != net.replay_seed() {
            message = format!("{message} [network seed {}]", net.seed());
        }
        if net.seed() != self.config.seed {
            message = format!("{message} [workload seed {}]", self.config.seed);
        }
        WorkloadError {
            seed: net.replay_seed(),
            at: net.now(),
            message,
        }
    }

    fn describe_flow(&self, i: usize) -> String {
        let f = &self.flows[i];
        format!(
            "flow {i} (tag {}, {} → {} port {})",
            f.tag, f.spec.client, f.spec.server, f.spec.port
        )
    }

    /// A summary of incomplete flows (at most five) for error messages.
    pub fn progress_summary(&self) -> String {
        let mut out = String::new();
        let incomplete: Vec<usize> = (0..self.flows.len())
            .filter(|&i| self.flows[i].sides.iter().any(|s| !s.done))
            .collect();
        out.push_str(&format!(
            "{} of {} flows incomplete",
            incomplete.len(),
            self.flows.len()
        ));
        for &i in incomplete.iter().take(5) {
            out.push_str(&format!("; {}:", self.describe_flow(i)));
            for s in [CLIENT, SERVER] {
                let side = &self.flows[i].sides[s];
                let p = side.progress;
                out.push_str(&format!(
                    " {} {}sent {}/{}{}, read {}/{}{}{};",
                    side_name(s),
                    if side.established {
                        ""
                    } else {
                        "(not established) "
                    },
                    p.sent,
                    self.plan.count(i, out_dir(s)),
                    if p.blocked { " (blocked)" } else { "" },
                    p.received,
                    self.plan.count(i, out_dir(1 - s)),
                    if p.peer_closed { ", peer closed" } else { "" },
                    p.closed
                        .map(|r| format!(", closed: {r}"))
                        .unwrap_or_default(),
                ));
            }
        }
        out
    }

    /// Listens and connects every flow.
    pub fn start(&mut self, net: &mut Network) -> Result<(), WorkloadError> {
        if self.started_at.is_some() {
            return Ok(());
        }
        self.started_at = Some(net.now());
        for i in 0..self.flows.len() {
            let FlowSpec { server, port, .. } = self.flows[i].spec;
            match net.listener(server.host, port) {
                Some(existing) if existing == server => {}
                Some(existing) => {
                    return Err(self.error(
                        net,
                        format!(
                            "{}: port {port} of host {} is already listened on by {existing}",
                            self.describe_flow(i),
                            server.host
                        ),
                    ))
                }
                None => net.listen(server, port).map_err(|e| {
                    self.error(
                        net,
                        format!("{}: listen failed: {e}", self.describe_flow(i)),
                    )
                })?,
            }
        }
        for i in 0..self.flows.len() {
            let FlowSpec {
                client,
                server,
                port,
            } = self.flows[i].spec;
            let handle = net.connect(client, server.host, port).map_err(|e| {
                self.error(
                    net,
                    format!("{}: connect failed: {e}", self.describe_flow(i)),
                )
            })?;
            let key = net.engine(client).flow_key(handle).ok_or_else(|| {
                self.error(
                    net,
                    format!("{}: no flow key right after connect", self.describe_flow(i)),
                )
            })?;
            if self
                .awaiting_accept
                .insert((key.local_ip, key.local_port, port), i)
                .is_some()
            {
                return Err(self.error(
                    net,
                    format!(
                    "{}: connect reused local port {} while another flow to port {port} is open",
                    self.describe_flow(i),
                    key.local_port
                ),
                ));
            }
            self.handles.insert((client, handle), (i, CLIENT));
            self.flows[i].sides[CLIENT].handle = Some(handle);
        }
        for f in &mut self.flows {
            for s in &mut f.sides {
                s.reading = true;
            }
        }
        for i in 0..self.flows.len() {
            for s in [CLIENT, SERVER] {
                self.update_done(i, s);
            }
        }
        Ok(())
    }

    /// Handles every pending event of the network.
    pub fn poll(&mut self, net: &mut Network) -> Result<(), WorkloadError> {
        while let Some((addr, event)) = net.poll_event() {
            self.handle_event(net, addr, event)?;
        }
        Ok(())
    }

    /// Starts (if needed) and runs until every flow completed or simulated time reaches
    /// `deadline`. Returns whether the workload completed.
    pub fn run_until(
        &mut self,
        net: &mut Network,
        deadline: Instant,
    ) -> Result<bool, WorkloadError> {
        self.start(net)?;
        loop {
            self.poll(net)?;
            if self.is_done() {
                self.finished_at.get_or_insert(net.now());
                return Ok(true);
            }
            match net.next_event_time() {
                Some(t) if t <= deadline => {
                    net.step();
                }
                Some(_) => return Ok(false),
                None => {
                    return Err(self.error(
                        net,
                        format!(
                            "stalled: nothing in flight and no timer pending; {}",
                            self.progress_summary()
                        ),
                    ))
                }
            }
        }
    }

    /// Runs to completion within [`WorkloadConfig::time_limit`] and reports.
    pub fn run(&mut self, net: &mut Network) -> Result<Report, WorkloadError> {
        self.start(net)?;
        let deadline = self.started_at.unwrap_or(net.now()) + self.config.time_limit;
        if !self.run_until(net, deadline)? {
            return Err(self.error(
                net,
                format!(
                    "time limit of {:?} reached; {}",
                    self.config.time_limit,
                    self.progress_summary()
                ),
            ));
        }
        Ok(self.report(net))
    }

    /// The report so far (duration up to completion, or up to now if incomplete).
    pub fn report(&self, net: &Network) -> Report {
        let start = self.started_at.unwrap_or(net.now());
        let end = self.finished_at.unwrap_or(net.now());
        let mut r = Report::collect(
            net,
            self.flows.len(),
            self.messages_delivered(),
            self.bytes_delivered(),
            end - start,
        );
        r.send_buffer_full = self.buffer_full_count();
        r
    }

    /// Lets paused readers read again and drains what they have.
    pub fn resume_reading(&mut self, net: &mut Network) -> Result<(), WorkloadError> {
        self.paused = false;
        for i in 0..self.flows.len() {
            for s in [CLIENT, SERVER] {
                self.flows[i].sides[s].reading = true;
                self.drain(net, i, s)?;
                self.pump(net, i, 1 - s)?;
                self.maybe_close(net, i, s)?;
                self.update_done(i, s);
            }
        }
        Ok(())
    }

    fn lookup(
        &self,
        net: &Network,
        addr: EngineAddr,
        flow: FlowId,
        event: &Event,
    ) -> Result<(usize, usize), WorkloadError> {
        self.handles.get(&(addr, flow)).copied().ok_or_else(|| {
            self.error(
                net,
                format!("{addr}: event {event:?} for a flow the workload does not know"),
            )
        })
    }

    fn handle_event(
        &mut self,
        net: &mut Network,
        addr: EngineAddr,
        event: Event,
    ) -> Result<(), WorkloadError> {
        let (i, s) = match event {
            Event::Accepted { .. } => self.accept(net, addr, event)?,
            _ => self.lookup(net, addr, event_flow(&event), &event)?,
        };
        match event {
            Event::Connected { .. } => {
                if s != CLIENT || self.flows[i].sides[s].established {
                    return Err(self.error(
                        net,
                        format!("{}: unexpected {event:?}", self.describe_flow(i)),
                    ));
                }
                self.flows[i].sides[s].established = true;
                self.pump(net, i, s)?;
            }
            Event::Accepted { .. } => {
                self.pump(net, i, SERVER)?;
            }
            Event::Readable { .. } => {
                self.drain(net, i, s)?;
                self.pump(net, i, 1 - s)?;
                self.maybe_close(net, i, s)?;
            }
            Event::Writable { .. } => {
                self.flows[i].sides[s].progress.blocked = false;
                self.pump(net, i, s)?;
            }
            Event::PeerClosed { .. } => {
                self.drain(net, i, s)?;
                self.flows[i].sides[s].progress.peer_closed = true;
                let expected = self.plan.count(i, out_dir(1 - s));
                let side = &self.flows[i].sides[s];
                if side.reading && side.progress.received != expected {
                    return Err(self.error(
                        net,
                        format!(
                            "{}: {} saw the peer close after reading {} of {} messages",
                            self.describe_flow(i),
                            side_name(s),
                            side.progress.received,
                            expected
                        ),
                    ));
                }
                self.maybe_close(net, i, s)?;
            }
            Event::Closed { flow, reason } => {
                self.handles.remove(&(addr, flow));
                let side = &mut self.flows[i].sides[s];
                side.progress.closed = Some(reason);
                side.handle = None;
                let p = side.progress;
                let sent_all = p.sent == self.plan.count(i, out_dir(s));
                let read_all = p.received == self.plan.count(i, out_dir(1 - s));
                if reason != CloseReason::Graceful || !sent_all || !read_all {
                    return Err(self.error(
                        net,
                        format!(
                        "{}: {} closed ({reason}) after sending {}/{} and reading {}/{} messages",
                        self.describe_flow(i),
                        side_name(s),
                        p.sent,
                        self.plan.count(i, out_dir(s)),
                        p.received,
                        self.plan.count(i, out_dir(1 - s)),
                    ),
                    ));
                }
            }
        }
        self.update_done(i, s);
        self.update_done(i, 1 - s);
        Ok(())
    }

    /// Matches an accepted flow with the flow that connected, by its flow key.
    fn accept(
        &mut self,
        net: &mut Network,
        addr: EngineAddr,
        event: Event,
    ) -> Result<(usize, usize), WorkloadError> {
        let Event::Accepted { flow, listen_port } = event else {
            unreachable!("not an Accepted event")
        };
        let key = net.engine(addr).flow_key(flow).ok_or_else(|| {
            self.error(
                net,
                format!("{addr}: no flow key for accepted flow {flow:?}"),
            )
        })?;
        let i = self
            .awaiting_accept
            .remove(&(key.remote_ip, key.remote_port, key.local_port))
            .ok_or_else(|| {
                self.error(
                    net,
                    format!("{addr}: accepted a flow nobody connected: {key:?}"),
                )
            })?;
        let spec = self.flows[i].spec;
        if spec.server != addr || spec.port != listen_port || key.local_port != listen_port {
            return Err(self.error(
                net,
                format!(
                    "{}: accepted by {addr} on port {listen_port} (key {key:?})",
                    self.describe_flow(i)
                ),
            ));
        }
        self.handles.insert((addr, flow), (i, SERVER));
        let side = &mut self.flows[i].sides[SERVER];
        side.handle = Some(flow);
        side.established = true;
        Ok((i, SERVER))
    }

    fn update_done(&mut self, i: usize, s: usize) {
        let close = self.config.close;
        let sent_target = self.plan.count(i, out_dir(s));
        let read_target = self.plan.count(i, out_dir(1 - s));
        let side = &mut self.flows[i].sides[s];
        if side.done {
            return;
        }
        let p = side.progress;
        let done = p.sent == sent_target
            && side.pending.is_none()
            && p.received == read_target
            && (close == CloseMode::Never || p.closed == Some(CloseReason::Graceful));
        if done {
            side.done = true;
            self.sides_remaining -= 1;
        }
    }

    /// Sends side `s` of flow `i`'s next messages until blocked, windowed or finished.
    fn pump(&mut self, net: &mut Network, i: usize, s: usize) -> Result<(), WorkloadError> {
        let dir = out_dir(s);
        let total = self.plan.count(i, dir);
        let addr = if s == CLIENT {
            self.flows[i].spec.client
        } else {
            self.flows[i].spec.server
        };
        loop {
            let peer_read = self.flows[i].sides[1 - s].progress.received;
            let side = &mut self.flows[i].sides[s];
            let Some(handle) = side.handle else { break };
            if !side.established
                || side.progress.blocked
                || side.close_called
                || side.progress.sent >= total
            {
                break;
            }
            if let Some(max) = self.config.max_outstanding {
                if side.progress.sent - peer_read >= max {
                    break;
                }
            }
            let index = side.progress.sent;
            let len = self.plan.len(i, dir, index);
            let msg = match side.pending.take() {
                Some(m) => m,
                None => content::generate(
                    self.config.seed,
                    MessageId {
                        flow_tag: self.flows[i].tag,
                        direction: dir,
                        index,
                    },
                    len,
                ),
            };
            match net.send(addr, handle, msg.clone()) {
                Ok(()) => {
                    let side = &mut self.flows[i].sides[s];
                    side.progress.sent += 1;
                    side.progress.bytes_sent += len as u64;
                }
                Err(SendError::BufferFull) => {
                    let side = &mut self.flows[i].sides[s];
                    side.pending = Some(msg);
                    side.progress.blocked = true;
                    side.progress.buffer_full += 1;
                    break;
                }
                Err(SendError::UnknownFlow) => {
                    // The flow died; its `Closed` event follows and reports why.
                    self.flows[i].sides[s].pending = Some(msg);
                    break;
                }
                Err(e) => {
                    return Err(self.error(
                        net,
                        format!(
                            "{}: {} send of message #{index} ({len} B) failed: {e}",
                            self.describe_flow(i),
                            side_name(s)
                        ),
                    ))
                }
            }
        }
        self.maybe_close(net, i, s)
    }

    /// Reads everything readable on side `s` of flow `i`, verifying each message.
    fn drain(&mut self, net: &mut Network, i: usize, s: usize) -> Result<(), WorkloadError> {
        let dir = out_dir(1 - s);
        let expected = self.plan.count(i, dir);
        let addr = if s == CLIENT {
            self.flows[i].spec.client
        } else {
            self.flows[i].spec.server
        };
        loop {
            let side = &mut self.flows[i].sides[s];
            let Some(handle) = side.handle else { break };
            if !side.reading {
                break;
            }
            let pausable = self
                .config
                .paused_flows
                .as_ref()
                .is_none_or(|f| f.contains(&i));
            if let (true, true, Some(limit), SERVER) =
                (self.paused, pausable, self.config.pause_reading_after, s)
            {
                if side.progress.received >= limit {
                    side.reading = false;
                    break;
                }
            }
            let msg = match net.recv(addr, handle) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                // The flow died after the event being handled was queued; its `Closed` event
                // follows and reports why.
                Err(RecvError::UnknownFlow) => break,
            };
            let index = self.flows[i].sides[s].progress.received;
            if index >= expected {
                return Err(self.error(
                    net,
                    format!(
                    "{}: {} received an extra message ({} B{}) after all {expected} expected ones \
                     (exactly-once violated)",
                    self.describe_flow(i),
                    side_name(s),
                    msg.len(),
                    describe_header(&msg)
                ),
                ));
            }
            let len = self.plan.len(i, dir, index);
            let id = MessageId {
                flow_tag: self.flows[i].tag,
                direction: dir,
                index,
            };
            if let Err(e) = content::verify(self.config.seed, id, len, &msg) {
                return Err(self.error(
                    net,
                    format!(
                        "{}: {} expected {id} ({len} B) but read a different message: {e}{}",
                        self.describe_flow(i),
                        side_name(s),
                        describe_header(&msg)
                    ),
                ));
            }
            let p = &mut self.flows[i].sides[s].progress;
            p.received += 1;
            p.bytes_received += len as u64;
        }
        Ok(())
    }

    fn maybe_close(&mut self, net: &mut Network, i: usize, s: usize) -> Result<(), WorkloadError> {
        let sent_all = self.flows[i].sides[s].progress.sent == self.plan.count(i, out_dir(s));
        let read_all =
            self.flows[i].sides[s].progress.received == self.plan.count(i, out_dir(1 - s));
        let side = &self.flows[i].sides[s];
        let Some(handle) = side.handle else {
            return Ok(());
        };
        let wanted = match self.config.close {
            CloseMode::Never => false,
            CloseMode::AfterSending => sent_all,
            CloseMode::AfterExchange => sent_all && read_all,
        };
        if !wanted || side.close_called || !side.established {
            return Ok(());
        }
        let addr = if s == CLIENT {
            self.flows[i].spec.client
        } else {
            self.flows[i].spec.server
        };
        net.close(addr, handle).map_err(|e| {
            self.error(
                net,
                format!(
                    "{}: {} close failed: {e}",
                    self.describe_flow(i),
                    side_name(s)
                ),
            )
        })?;
        self.flows[i].sides[s].close_called = true;
        Ok(())
    }
}

fn event_flow(event: &Event) -> FlowId {
    match *event {
        Event::Connected { flow }
        | Event::Accepted { flow, .. }
        | Event::Readable { flow }
        | Event::Writable { flow }
        | Event::PeerClosed { flow }
        | Event::Closed { flow, .. } => flow,
    }
}

fn describe_header(msg: &[u8]) -> String {
    match content::decode_header(msg) {
        Some(h) => format!(
            "; its header claims flow tag {} {} message #{}",
            h.flow_tag, h.direction, h.index
        ),
        None => String::new(),
    }
}
