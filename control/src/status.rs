//! What agents report: per agent, the link (connected, last contact, acked revision), its last
//! status report and a bounded tail of its events.
//!
//! Soft state (docs/design.md §2: "the agent is the truth; control holds the last report"): kept in
//! memory on the control node the agent streams to, lost on restart and rebuilt when the agent
//! reconnects. An agent talks to one control node at a time, so readers merge every control
//! node's book with [`merge`] (the API does that through [`crate::rpc::ControlRpc::AgentReports`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use warren_api::wire::{
    ListenerStatus, MAX_EVENT_TEXT_BYTES, MAX_EVENTS_PER_REPORT, MAX_LISTENER_TEXT, MAX_LISTENERS,
    MAX_MESH_PEERS, MeshPeerReport, StatusReport,
};
use warren_api::{Event, NodeId, ReplicaStatus, Revision};

/// Events kept per agent on each control node; older ones are dropped and counted.
pub const EVENTS_KEPT_PER_NODE: usize = 256;

/// Bytes of events ([`event_bytes`]) kept per agent on each control node; older ones are
/// dropped and counted. Typical events are ~150 bytes, so this rarely binds before
/// [`EVENTS_KEPT_PER_NODE`]; it bounds what a misbehaving agent can make control hold, with
/// 10,000 agents, to well under 1 GiB.
pub const MAX_EVENT_BOOK_BYTES: usize = 64 * 1024;

/// Roughly what an event costs in memory: its texts plus a fixed allowance for the rest.
pub fn event_bytes(event: &Event) -> usize {
    64 + event.message.len() + event.replica.as_ref().map_or(0, |r| r.to_string().len())
}

/// What a report carried past control's bounds, by kind; the caller counts it in
/// `warren_control_agent_input_limited_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limited {
    /// Event messages cut to [`MAX_EVENT_TEXT_BYTES`].
    pub event_text: u64,
    /// Replica status messages cut to [`MAX_EVENT_TEXT_BYTES`].
    pub replica_text: u64,
    /// Events dropped to keep the book within [`MAX_EVENT_BOOK_BYTES`].
    pub event_book_bytes: u64,
    /// Events past [`MAX_EVENTS_PER_REPORT`] in one report, dropped unread.
    pub report_events: u64,
}

impl Limited {
    /// Each non-zero count with its metric label.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("event_text", self.event_text),
            ("replica_text", self.replica_text),
            ("event_book_bytes", self.event_book_bytes),
            ("report_events", self.report_events),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
    }
}

/// One agent as this control node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The agent's node.
    pub node_id: NodeId,
    /// The control node that holds (or held) the stream.
    pub control_id: u64,
    /// Whether a stream is up now.
    pub connected: bool,
    /// Last message from the agent (unix ms, control clock).
    pub last_contact_ms: u64,
    /// Last revision the agent acked as durably cached.
    pub revision_acked: Revision,
    /// The agent's software version.
    pub agent_version: String,
    /// Replicas as last reported (empty before the first report).
    pub replicas: Vec<ReplicaStatus>,
    /// When the last report arrived (unix ms, control clock); 0 before any.
    pub reported_at_ms: u64,
    /// Most recent events, oldest first, at most [`EVENTS_KEPT_PER_NODE`].
    pub events: VecDeque<Event>,
    /// Events the agent dropped while cut off, plus those this book dropped.
    pub events_dropped: u64,
    /// The agent's listeners as it last reported them (empty before any report, and from
    /// agents too old to report them).
    pub listeners: Vec<ListenerStatus>,
    /// The agent's WireGuard peers as it last reported them (empty without an overlay).
    pub mesh_peers: Vec<MeshPeerReport>,
    /// Of those, how many were up and how many there were; `None` before any report.
    pub mesh_peers_up: Option<(u32, u32)>,
}

impl AgentReport {
    fn new(node_id: NodeId, control_id: u64) -> Self {
        AgentReport {
            node_id,
            control_id,
            connected: false,
            last_contact_ms: 0,
            revision_acked: Revision::ZERO,
            agent_version: String::new(),
            replicas: Vec::new(),
            reported_at_ms: 0,
            events: VecDeque::new(),
            events_dropped: 0,
            listeners: Vec::new(),
            mesh_peers: Vec::new(),
            mesh_peers_up: None,
        }
    }

    /// The same report without replicas and events: what the leader's liveness check needs
    /// (every few seconds), built field by field so the events and replicas are never copied.
    pub fn link_only(&self) -> AgentReport {
        AgentReport {
            node_id: self.node_id,
            control_id: self.control_id,
            connected: self.connected,
            last_contact_ms: self.last_contact_ms,
            revision_acked: self.revision_acked,
            agent_version: self.agent_version.clone(),
            replicas: Vec::new(),
            reported_at_ms: self.reported_at_ms,
            events: VecDeque::new(),
            events_dropped: self.events_dropped,
            listeners: self.listeners.clone(),
            mesh_peers: Vec::new(),
            mesh_peers_up: self.mesh_peers_up,
        }
    }

    /// The report with its control-clock times moved from the clock of the control node that
    /// wrote them (`their_now_ms` when it answered) to this node's (`our_now_ms`): an age
    /// measured on one clock, applied to the other, so a peer whose clock is ahead or behind
    /// does not make an agent look recently seen or long silent to the leader.
    #[must_use]
    pub fn on_our_clock(mut self, their_now_ms: u64, our_now_ms: u64) -> AgentReport {
        let rebase = |at_ms: u64| {
            if at_ms == 0 {
                0
            } else {
                our_now_ms.saturating_sub(their_now_ms.saturating_sub(at_ms))
            }
        };
        self.last_contact_ms = rebase(self.last_contact_ms);
        self.reported_at_ms = rebase(self.reported_at_ms);
        self
    }

    /// Appends `events` (their texts already cut), dropping the oldest to stay within
    /// [`EVENTS_KEPT_PER_NODE`] and `*book_bytes` within [`MAX_EVENT_BOOK_BYTES`]. Returns how
    /// many were dropped for bytes.
    fn push_events(&mut self, events: Vec<Event>, book_bytes: &mut usize) -> u64 {
        let mut dropped_for_bytes = 0;
        for event in events {
            let size = event_bytes(&event);
            while !self.events.is_empty()
                && (self.events.len() == EVENTS_KEPT_PER_NODE
                    || *book_bytes + size > MAX_EVENT_BOOK_BYTES)
            {
                let over_bytes = self.events.len() < EVENTS_KEPT_PER_NODE;
                let oldest = self.events.pop_front().expect("checked non-empty");
                *book_bytes = book_bytes.saturating_sub(event_bytes(&oldest));
                self.events_dropped = self.events_dropped.saturating_add(1);
                dropped_for_bytes += u64::from(over_bytes);
            }
            *book_bytes += size;
            self.events.push_back(event);
        }
        dropped_for_bytes
    }
}

#[derive(Debug)]
struct Entry {
    report: AgentReport,
    /// Streams open from this agent: a quick reconnect may open the new one before the old one
    /// has noticed it is dead.
    sessions: u32,
    /// [`event_bytes`] of the events in the book, counted here rather than trusted from the
    /// agent.
    event_bytes: usize,
}

/// Whether a reported replica counts as running for `service ls` and for a rollout's monitor
/// window: running, and healthy when the service has a health check (a replica whose first
/// check has not passed does not count).
pub fn counts_as_running(reported: &ReplicaStatus, checked: bool) -> bool {
    reported.state == warren_api::TaskState::Running
        && (!checked || reported.health == warren_api::HealthState::Healthy)
}

/// This control node's book of agents.
#[derive(Debug)]
pub struct StatusBook {
    control_id: u64,
    agents: Mutex<HashMap<NodeId, Entry>>,
}

impl StatusBook {
    /// An empty book for control node `control_id`.
    pub fn new(control_id: u64) -> Self {
        StatusBook {
            control_id,
            agents: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, node: NodeId, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut agents = self
            .agents
            .lock()
            .expect("status book lock is not poisoned");
        let control_id = self.control_id;
        let entry = agents.entry(node).or_insert_with(|| Entry {
            report: AgentReport::new(node, control_id),
            sessions: 0,
            event_bytes: 0,
        });
        f(entry)
    }

    /// A stream from `node` was accepted.
    pub fn connected(&self, node: NodeId, agent_version: &str, now_ms: u64) {
        self.with(node, |e| {
            e.sessions += 1;
            e.report.connected = true;
            e.report.last_contact_ms = now_ms;
            e.report.agent_version = agent_version.to_owned();
        });
    }

    /// A message arrived from `node`.
    pub fn contact(&self, node: NodeId, now_ms: u64) {
        self.with(node, |e| e.report.last_contact_ms = now_ms);
    }

    /// `node` acked `revision`.
    pub fn acked(&self, node: NodeId, revision: Revision, now_ms: u64) {
        self.with(node, |e| {
            e.report.last_contact_ms = now_ms;
            e.report.revision_acked = e.report.revision_acked.max(revision);
        });
    }

    /// `node` sent a status report. Control enforces its own bounds whatever the agent
    /// claims: at most [`MAX_EVENTS_PER_REPORT`] events are read, texts are cut to
    /// [`MAX_EVENT_TEXT_BYTES`], and the book keeps within [`EVENTS_KEPT_PER_NODE`] and
    /// [`MAX_EVENT_BOOK_BYTES`]. Returns what was cut or dropped.
    pub fn report(&self, mut report: StatusReport, now_ms: u64) -> Limited {
        let mut limited = Limited::default();
        let excess = report.events.len().saturating_sub(MAX_EVENTS_PER_REPORT);
        if excess > 0 {
            report.events.drain(..excess);
            limited.report_events = excess as u64;
        }
        for event in &mut report.events {
            limited.event_text += u64::from(clip_bytes(&mut event.message));
        }
        for replica in &mut report.replicas {
            if let Some(message) = &mut replica.message {
                limited.replica_text += u64::from(clip_bytes(message));
            }
        }
        self.with(report.node_id, |e| {
            e.report.last_contact_ms = now_ms;
            e.report.reported_at_ms = now_ms;
            e.report.replicas = report.replicas;
            e.report.events_dropped = e
                .report
                .events_dropped
                .saturating_add(report.events_dropped)
                .saturating_add(excess as u64);
            limited.event_book_bytes = e.report.push_events(report.events, &mut e.event_bytes);
        });
        limited
    }

    /// `node` reported its listeners; entries past [`MAX_LISTENERS`] are ignored, and text
    /// past [`MAX_LISTENER_TEXT`] bytes is cut.
    pub fn listeners(&self, node: NodeId, mut listeners: Vec<ListenerStatus>, now_ms: u64) {
        listeners.truncate(MAX_LISTENERS);
        for listener in &mut listeners {
            clip_to(&mut listener.addr, MAX_LISTENER_TEXT);
            if let Some(error) = &mut listener.error {
                clip_to(error, MAX_LISTENER_TEXT);
            }
        }
        self.with(node, |e| {
            e.report.last_contact_ms = now_ms;
            e.report.listeners = listeners;
        });
    }

    /// `node` reported its WireGuard peers; entries past [`MAX_MESH_PEERS`] are ignored, and
    /// text past [`MAX_LISTENER_TEXT`] bytes is cut.
    pub fn mesh_peers(&self, node: NodeId, mut peers: Vec<MeshPeerReport>, now_ms: u64) {
        peers.truncate(MAX_MESH_PEERS);
        for peer in &mut peers {
            clip_to(&mut peer.name, MAX_LISTENER_TEXT);
            if let Some(endpoint) = &mut peer.endpoint {
                clip_to(endpoint, MAX_LISTENER_TEXT);
            }
        }
        let up = peers.iter().filter(|p| p.up).count();
        let counts = (
            u32::try_from(up).unwrap_or(u32::MAX),
            u32::try_from(peers.len()).unwrap_or(u32::MAX),
        );
        self.with(node, |e| {
            e.report.last_contact_ms = now_ms;
            e.report.mesh_peers = peers;
            e.report.mesh_peers_up = Some(counts);
        });
    }

    /// A stream from `node` ended.
    pub fn disconnected(&self, node: NodeId) {
        self.with(node, |e| {
            e.sessions = e.sessions.saturating_sub(1);
            e.report.connected = e.sessions > 0;
        });
    }

    /// Forgets `node` (it was removed from the cluster).
    pub fn forget(&self, node: NodeId) {
        self.agents
            .lock()
            .expect("status book lock is not poisoned")
            .remove(&node);
    }

    /// Calls `f` with every agent's report, borrowed: nothing is copied (the metrics read
    /// the book at each scrape). The book is locked meanwhile, so `f` must be quick.
    pub fn with_reports<R>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &AgentReport>) -> R,
    ) -> R {
        let agents = self
            .agents
            .lock()
            .expect("status book lock is not poisoned");
        f(&mut agents.values().map(|e| &e.report))
    }

    /// Every agent's report; `full = false` leaves out replicas and events.
    pub fn snapshot(&self, full: bool) -> Vec<AgentReport> {
        let agents = self
            .agents
            .lock()
            .expect("status book lock is not poisoned");
        agents
            .values()
            .map(|e| {
                if full {
                    e.report.clone()
                } else {
                    e.report.link_only()
                }
            })
            .collect()
    }
}

/// Cuts `text` to at most [`MAX_EVENT_TEXT_BYTES`] bytes (see [`clip_to`]). Returns whether
/// it cut.
fn clip_bytes(text: &mut String) -> bool {
    clip_to(text, MAX_EVENT_TEXT_BYTES)
}

/// Cuts `text` to at most `max` bytes (at a character boundary, the `…` that marks the cut
/// included). Returns whether it cut.
fn clip_to(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut at = max - '…'.len_utf8();
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    text.push('…');
    true
}

/// Merges the books of several control nodes into one report per agent: the stream that is up
/// wins, else the most recent contact; events from every book are combined (deduplicated,
/// oldest first, bounded).
pub fn merge(books: impl IntoIterator<Item = AgentReport>) -> BTreeMap<NodeId, AgentReport> {
    let mut merged: BTreeMap<NodeId, AgentReport> = BTreeMap::new();
    for report in books {
        match merged.get_mut(&report.node_id) {
            None => {
                merged.insert(report.node_id, report);
            }
            Some(current) => {
                let mut events: Vec<Event> = current.events.drain(..).collect();
                events.extend(report.events.iter().cloned());
                let dropped = current.events_dropped.max(report.events_dropped);
                let acked = current.revision_acked.max(report.revision_acked);
                let newer = (report.connected, report.last_contact_ms)
                    > (current.connected, current.last_contact_ms);
                if newer {
                    *current = report;
                }
                // Replicas come from the latest report, whichever book it is in.
                events.sort_by_key(|e| e.at_ms);
                events.dedup();
                let excess = events.len().saturating_sub(EVENTS_KEPT_PER_NODE);
                current.events = events.into_iter().skip(excess).collect();
                current.events_dropped = dropped;
                current.revision_acked = acked;
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::{EventKind, HealthState, ReplicaId, TaskState};

    fn event(at_ms: u64, kind: EventKind) -> Event {
        Event {
            at_ms,
            replica: None,
            kind,
            message: format!("event at {at_ms}"),
        }
    }

    fn status(node: NodeId, state: TaskState) -> StatusReport {
        StatusReport {
            node_id: node,
            revision: Revision(3),
            replicas: vec![ReplicaStatus {
                id: "web.1".parse::<ReplicaId>().unwrap(),
                node,
                state,
                pid: Some(42),
                started_at_ms: Some(1),
                exit_code: None,
                restarts: 0,
                health: HealthState::Unknown,
                message: None,
                updated_at_ms: 1,
                workload_hash: None,
            }],
            events: vec![event(10, EventKind::Started)],
            events_dropped: 2,
        }
    }

    #[test]
    fn overlapping_sessions_keep_the_agent_connected_until_the_last_ends() {
        let book = StatusBook::new(1);
        let node = NodeId(7);
        book.connected(node, "0.1.0", 100);
        book.connected(node, "0.1.0", 200);
        book.disconnected(node);
        assert!(book.snapshot(false)[0].connected);
        book.disconnected(node);
        assert!(!book.snapshot(false)[0].connected);
        book.disconnected(node);
        assert!(!book.snapshot(false)[0].connected, "no underflow");
    }

    #[test]
    fn events_are_bounded_and_drops_counted() {
        let book = StatusBook::new(1);
        let node = NodeId(7);
        let mut report = status(node, TaskState::Running);
        report.events = (0..EVENTS_KEPT_PER_NODE as u64 + 10)
            .map(|i| event(i, EventKind::Restarted))
            .collect();
        book.report(report, 5);
        let got = &book.snapshot(true)[0];
        assert_eq!(got.events.len(), EVENTS_KEPT_PER_NODE);
        assert_eq!(got.events.front().unwrap().at_ms, 10);
        assert_eq!(got.events_dropped, 2 + 10);
        assert!(book.snapshot(false)[0].events.is_empty());
    }

    #[test]
    fn merge_prefers_the_live_stream_and_combines_events() {
        let node = NodeId(7);
        let old = StatusBook::new(1);
        old.connected(node, "0.1.0", 100);
        old.report(status(node, TaskState::Running), 100);
        old.disconnected(node);
        let live = StatusBook::new(2);
        live.connected(node, "0.1.0", 50);
        let mut second = status(node, TaskState::Failed);
        second.events = vec![event(20, EventKind::Exited { code: Some(1) })];
        live.report(second, 50);
        let merged = merge(old.snapshot(true).into_iter().chain(live.snapshot(true)));
        let got = &merged[&node];
        assert!(got.connected);
        assert_eq!(got.control_id, 2);
        assert_eq!(got.replicas[0].state, TaskState::Failed);
        let at: Vec<u64> = got.events.iter().map(|e| e.at_ms).collect();
        assert_eq!(at, vec![10, 20]);
    }

    /// An agent's listeners are kept (bounded) and are part of the link-only view `node ls`
    /// reads.
    #[test]
    fn listeners_are_kept_bounded_and_listed_without_replicas() {
        use warren_api::wire::{Listener, ListenerStatus, MAX_LISTENERS};
        let book = StatusBook::new(1);
        let node = NodeId(7);
        book.connected(node, "0.1.0", 100);
        let dns_down = ListenerStatus {
            listener: Listener::Dns,
            addr: "127.0.0.11:53".into(),
            up: false,
            error: Some("Address in use (os error 98); retrying".into()),
        };
        book.listeners(node, vec![dns_down.clone(); MAX_LISTENERS + 3], 200);
        let got = &book.snapshot(false)[0];
        assert_eq!(got.listeners.len(), MAX_LISTENERS);
        assert_eq!(got.listeners[0], dns_down);
        assert_eq!(got.last_contact_ms, 200);
        // An agent's text is kept to a bounded length.
        let long = ListenerStatus {
            addr: "é".repeat(10_000),
            error: Some("x".repeat(10_000)),
            ..dns_down
        };
        book.listeners(node, vec![long], 300);
        let got = &book.snapshot(false)[0].listeners[0];
        let limit = warren_api::wire::MAX_LISTENER_TEXT;
        assert!(
            got.addr.len() <= limit && got.addr.len() > limit - 4,
            "{}",
            got.addr.len()
        );
        assert!(got.addr.ends_with('…'));
        assert_eq!(got.error.as_ref().map(String::len), Some(limit));
    }

    /// A peer's clock 10 s ahead: an agent it heard 1 s ago is 1 s ago here too, not 9 s in
    /// the future; "never" stays never.
    #[test]
    fn a_peer_report_is_moved_to_our_clock() {
        let mut report = AgentReport::new(NodeId(1), 2);
        report.last_contact_ms = 109_000;
        report.reported_at_ms = 105_000;
        let moved = report.clone().on_our_clock(110_000, 100_000);
        assert_eq!(
            (moved.last_contact_ms, moved.reported_at_ms),
            (99_000, 95_000)
        );
        let behind = report.on_our_clock(110_000, 200_000);
        assert_eq!(behind.last_contact_ms, 199_000);
        let never = AgentReport::new(NodeId(1), 2).on_our_clock(110_000, 100_000);
        assert_eq!((never.last_contact_ms, never.reported_at_ms), (0, 0));
    }

    #[test]
    fn merge_without_a_live_stream_takes_the_latest_contact() {
        let node = NodeId(7);
        let a = StatusBook::new(1);
        a.connected(node, "0.1.0", 100);
        a.disconnected(node);
        let b = StatusBook::new(2);
        b.connected(node, "0.1.0", 300);
        b.disconnected(node);
        let merged = merge(a.snapshot(true).into_iter().chain(b.snapshot(true)));
        assert_eq!(merged[&node].control_id, 2);
        assert_eq!(merged[&node].last_contact_ms, 300);
    }
}
