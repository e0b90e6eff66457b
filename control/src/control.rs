//! The control node's shared handle: propose writes (forwarding to the leader), serve
//! linearizable or stale reads, answer peer RPCs, and decide joins.
//!
//! Writes never hang: every path is bounded by the write timeout, and a node that cannot reach
//! a leader with quorum answers [`ProposeError::NoQuorum`] (HTTP 503) — at once when it leads
//! but its leader lease has lapsed. A forwarded request follows the leader: it leaves a leader
//! that stopped answering as soon as another is known, and asks a leader that still stands
//! again on a new connection (see `Control::to_leader`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::sync::{RwLock, RwLockReadGuard, watch};
use tracing::{debug, warn};
use warren_api::clock::{unix_now, unix_now_ms};
use warren_api::{Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState, Revision};
use warren_transport::identity::parse_identity;
use warren_transport::join::{
    CheckedJoin, JoinAuthority, JoinGrant, JoinRequest, Refused, random_node_id,
};
use warren_transport::seal::node_secret_key;
use warren_transport::{CertRole, CertSubject, ClusterCa, TokenError, Validity};

use warren_api::rest::MemberContact;

use crate::command::{Command, Effect, Op, Outcome, Rejection, RejectionCode};
use crate::contact::Health;
use crate::keys::ClusterKeys;
use crate::metrics::ControlMetrics;
use crate::network::Peers;
use crate::rpc::{ControlRpc, ControlRpcReply, ProposeError};
use crate::state::ClusterState;
use crate::status::{self, AgentReport, StatusBook};
use crate::types::{Raft, RaftMember};

mod membership;
mod renewal;
mod rotation;

pub use membership::MEMBERSHIP_BUSY_WAIT;

/// How long [`Control::gather_agents`] waits for each other control node.
pub const AGENT_REPORTS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`Control::gather_agents`] waits for a member whose calls are failing right now
/// (it may have just died: until it is judged unreachable and skipped, every `service ps`
/// would otherwise wait the full [`AGENT_REPORTS_TIMEOUT`] on it). Enough for a live member on
/// the control nodes' LAN to answer on a new connection.
pub const AGENT_REPORTS_TIMEOUT_FAILING: Duration = Duration::from_millis(200);

/// How long [`Control::member_contacts`] waits for the leader's view before it answers with
/// this node's own.
pub const MEMBER_CONTACTS_TIMEOUT: Duration = Duration::from_secs(1);

/// Bounds of the pause before a forwarded request is asked again of the same leader.
pub const RETRY_PAUSE_MIN: Duration = Duration::from_millis(20);
/// See [`RETRY_PAUSE_MIN`].
pub const RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);

/// Timers of the write and read paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Upper bound on a write (propose, forward, commit, apply).
    pub write: Duration,
    /// The Raft election timeout upper bound; a leader that has not heard from a quorum for
    /// twice this long refuses writes at once.
    pub election_max: Duration,
    /// How long the leader waits for a new learner to receive the log before it gives the
    /// join up (the learner's advertised QUIC address is not reachable, say).
    pub learner_catch_up: Duration,
    /// How long an unfinished control-node join may go unheard of before the leader undoes
    /// it (see [`crate::state::PendingJoin`]).
    pub join_abandoned_after: Duration,
    /// How long the node certificates this node issues last (at join, at renewal).
    pub cert_lifetime: Duration,
}

/// The shared handle on one control node.
pub struct Control {
    id: u64,
    raft: Raft,
    state: Arc<RwLock<ClusterState>>,
    applied: watch::Receiver<Revision>,
    peers: Peers,
    cluster_keys: std::sync::RwLock<Option<ClusterKeys>>,
    keys_file: std::path::PathBuf,
    timeouts: Timeouts,
    metrics: ControlMetrics,
    fingerprint: [u8; 32],
    agents: StatusBook,
    agent_connections: crate::agent_logs::AgentConnections,
    declarations: crate::declarations::DeclarationLimit,
    gossip: std::sync::OnceLock<watch::Receiver<Vec<warren_mesh::Member>>>,
    gossip_keys: std::sync::OnceLock<warren_mesh::KeyRotator>,
    membership: membership::Gate,
    fleet_cache: crate::push::FleetCache,
    /// True while this node has been out of touch with a majority long enough to send its
    /// agents elsewhere ([`crate::quorum`]).
    away: watch::Sender<bool>,
    sent_away: crate::quorum::SentAway,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("id", &format_args!("{:016x}", self.id))
            .finish_non_exhaustive()
    }
}

/// What a [`Control`] is built from.
pub(crate) struct ControlParts {
    pub id: u64,
    pub raft: Raft,
    pub state: Arc<RwLock<ClusterState>>,
    pub applied: watch::Receiver<Revision>,
    pub peers: Peers,
    pub cluster_keys: Option<ClusterKeys>,
    /// Where the cluster keys are kept (`cluster.key` in the data dir).
    pub keys_file: std::path::PathBuf,
    pub timeouts: Timeouts,
    pub metrics: ControlMetrics,
    pub fingerprint: [u8; 32],
}

impl Control {
    pub(crate) fn new(parts: ControlParts) -> Self {
        Self {
            id: parts.id,
            raft: parts.raft,
            state: parts.state,
            applied: parts.applied,
            peers: parts.peers,
            cluster_keys: std::sync::RwLock::new(parts.cluster_keys),
            keys_file: parts.keys_file,
            timeouts: parts.timeouts,
            metrics: parts.metrics,
            fingerprint: parts.fingerprint,
            agents: StatusBook::new(parts.id),
            agent_connections: Default::default(),
            declarations: crate::declarations::DeclarationLimit::default(),
            gossip: std::sync::OnceLock::new(),
            gossip_keys: std::sync::OnceLock::new(),
            membership: membership::Gate::default(),
            fleet_cache: crate::push::FleetCache::default(),
            away: watch::Sender::new(false),
            sent_away: crate::quorum::SentAway::default(),
        }
    }

    /// Whether this node sends its agents elsewhere (out of touch with a majority for
    /// [`crate::quorum::SEND_AWAY_AFTER`]); fires when that changes.
    pub(crate) fn away(&self) -> watch::Receiver<bool> {
        self.away.subscribe()
    }

    /// Sets [`Control::away`]; returns whether it changed.
    pub(crate) fn set_away(&self, away: bool) -> bool {
        self.away.send_if_modified(|current| {
            let changed = *current != away;
            *current = away;
            changed
        })
    }

    /// Whether calls to control peer `peer` fail now, with no word from it since.
    pub(crate) fn peer_failing(&self, peer: u64) -> bool {
        self.peers.failing(peer)
    }

    /// The agents this node sent elsewhere lately.
    pub(crate) fn sent_away(&self) -> &crate::quorum::SentAway {
        &self.sent_away
    }

    /// How long a leader goes without a majority's acknowledgement before it counts as cut off
    /// (writes refused at once, agents sent elsewhere).
    pub(crate) fn leader_lease(&self) -> Duration {
        2 * self.timeouts.election_max
    }

    /// What every agent's view shares, per revision, for the push sessions.
    pub(crate) fn fleet_cache(&self) -> &crate::push::FleetCache {
        &self.fleet_cache
    }

    /// Hands this node's mesh member watch to the API and the leader's duties (once, when the
    /// mesh starts).
    pub(crate) fn set_gossip(
        &self,
        members: watch::Receiver<Vec<warren_mesh::Member>>,
        keys: warren_mesh::KeyRotator,
    ) {
        let _ = self.gossip.set(members);
        let _ = self.gossip_keys.set(keys);
    }

    /// Rotates this node's mesh key, once the mesh runs.
    pub(crate) fn gossip_keys(&self) -> Option<&warren_mesh::KeyRotator> {
        self.gossip_keys.get()
    }

    /// A watch of this node's mesh members, once the mesh runs: the leader judges liveness
    /// when it changes.
    pub(crate) fn gossip_watch(&self) -> Option<watch::Receiver<Vec<warren_mesh::Member>>> {
        self.gossip.get().cloned()
    }

    /// The members as this node's mesh last saw them (refreshed every gossip interval); `None`
    /// when this node runs no mesh. Soft state: claims, not facts.
    pub fn gossip_members(&self) -> Option<Vec<warren_mesh::Member>> {
        self.gossip.get().map(|members| members.borrow().clone())
    }

    /// The cluster CA fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// How often each node may change its WireGuard declaration in the registry.
    pub(crate) fn declaration_limit(&self) -> &crate::declarations::DeclarationLimit {
        &self.declarations
    }

    /// What this node knows of the agents streaming to it.
    pub fn agents(&self) -> &StatusBook {
        &self.agents
    }

    /// The agents' connections this node holds, where their log requests go.
    pub fn agent_connections(&self) -> &crate::agent_logs::AgentConnections {
        &self.agent_connections
    }

    /// The QUIC address of control member `id`, as the membership this node holds says.
    pub fn member_quic_addr(&self, id: u64) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .find(|(member, _)| **member == id)
            .map(|(_, member)| member.quic_addr.clone())
    }

    /// Every control node's knowledge of the agents, merged (one report per agent). Members
    /// that do not answer within [`AGENT_REPORTS_TIMEOUT`] (or [`AGENT_REPORTS_TIMEOUT_FAILING`]
    /// while calls to them fail) are left out, and members this node found unreachable a
    /// moment ago are not asked again yet ([`Peers::skip`]): this is soft state, and a partial
    /// answer now beats a full one later.
    pub async fn gather_agents(&self, full: bool) -> BTreeMap<NodeId, AgentReport> {
        let metrics = self.raft.metrics().borrow().clone();
        let mut members: Vec<(u64, RaftMember)> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        members.retain(|(id, _)| !self.peers.skip(*id));
        let mut calls = tokio::task::JoinSet::new();
        for (id, member) in members {
            let peers = self.peers.clone();
            let timeout = if peers.failing(id) {
                AGENT_REPORTS_TIMEOUT_FAILING
            } else {
                AGENT_REPORTS_TIMEOUT
            };
            calls.spawn(async move {
                let rpc = ControlRpc::AgentReports { full };
                let reply = peers.call(id, &member.quic_addr, &rpc, timeout).await;
                (id, reply)
            });
        }
        let mut books = self.agents.snapshot(full);
        while let Some(joined) = calls.join_next().await {
            let Ok((id, reply)) = joined else { continue };
            match reply {
                Ok(ControlRpcReply::AgentReports { as_of_ms, reports }) => {
                    let now_ms = unix_now_ms();
                    books.extend(
                        reports
                            .into_iter()
                            .map(|r| r.on_our_clock(as_of_ms, now_ms)),
                    );
                }
                Ok(_) => {
                    debug!(peer = %format_args!("{id:016x}"), "unexpected reply to agent reports")
                }
                Err(error) => {
                    debug!(peer = %format_args!("{id:016x}"), error = %error, "no agent reports from peer");
                }
            }
        }
        status::merge(books)
    }

    /// How each control member answers, by member id, as the leader judges it from its Raft
    /// traffic: asked of the leader when this node follows (a follower hears from no one else);
    /// this node's own view when it leads, or when the leader does not answer within
    /// [`MEMBER_CONTACTS_TIMEOUT`] (`judged_by` tells which).
    pub async fn member_contacts(&self) -> BTreeMap<u64, MemberContact> {
        if let Some((leader, member)) = self.leader().filter(|(id, _)| *id != self.id) {
            let rpc = ControlRpc::MemberContacts;
            let reply = self
                .peers
                .call(leader, &member.quic_addr, &rpc, MEMBER_CONTACTS_TIMEOUT)
                .await;
            match reply {
                Ok(ControlRpcReply::MemberContacts(contacts)) => {
                    return contacts.into_iter().collect();
                }
                Ok(_) => debug!("unexpected reply to member contacts"),
                Err(error) => {
                    debug!(peer = %format_args!("{leader:016x}"), error = %error, "leader did not say how members answer");
                }
            }
        }
        self.own_member_contacts()
    }

    /// How each control member answers this node (itself: reachable).
    fn own_member_contacts(&self) -> BTreeMap<u64, MemberContact> {
        let members: Vec<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        self.peers.retain(|peer| members.contains(&peer));
        let now = tokio::time::Instant::now();
        let now_ms = unix_now_ms();
        let mut health = self
            .peers
            .health(members.iter().copied().filter(|id| *id != self.id));
        if members.contains(&self.id) {
            health.insert(self.id, Health::Reachable { last_heard: now });
        }
        health
            .into_iter()
            .map(|(id, health)| (id, health.to_api(self.id, now, now_ms)))
            .collect()
    }

    /// The peer layer (connections to the other control nodes, and who answers).
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Changes the cluster keys this node holds with `change` (given the current ones, `None`
    /// on a joining node), on disk first (atomically, 0600) and then in memory, when `change`
    /// says it changed something.
    ///
    /// # Errors
    /// In words: what `change` refused, or the file cannot be written.
    pub(crate) fn update_cluster_keys(
        &self,
        change: impl FnOnce(Option<ClusterKeys>) -> Result<Option<ClusterKeys>, String>,
    ) -> Result<(), String> {
        let mut held = self.cluster_keys.write().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = change(held.clone())? {
            warren_transport::write_atomic(&self.keys_file, next.to_text().as_bytes(), 0o600)
                .map_err(|e| format!("cannot write {}: {e}", self.keys_file.display()))?;
            *held = Some(next);
        }
        Ok(())
    }

    /// Becomes `Some(why)` once this node learns it was removed from the cluster.
    pub fn removed(&self) -> watch::Receiver<Option<String>> {
        self.peers.removed()
    }

    pub(crate) fn note_removed(&self, why: String) {
        self.peers.note_removed(why);
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The cluster keys this node holds (they seal the CA key and secrets at rest); `None` on a
    /// joining control node until it is a member.
    pub fn cluster_keys(&self) -> Option<ClusterKeys> {
        self.cluster_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(u64, RaftMember)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&id)?
            .clone();
        Some((id, member))
    }

    /// A receiver that fires whenever an entry is applied on this node.
    pub fn watch_applied(&self) -> watch::Receiver<Revision> {
        self.applied.clone()
    }

    /// The revision of the last applied entry on this node.
    pub fn applied(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Reads the state without any freshness guarantee (what this node has applied).
    pub async fn read_stale(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().await
    }

    /// Reads the state after a read barrier: everything committed before the call is visible.
    ///
    /// # Errors
    /// [`ProposeError::NoQuorum`] when no leader with quorum confirms within the write timeout.
    pub async fn read_linearizable(
        &self,
    ) -> Result<RwLockReadGuard<'_, ClusterState>, ProposeError> {
        let index = self.read_index().await?;
        self.wait_applied(index).await?;
        Ok(self.state.read().await)
    }

    async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        let mut applied = self.applied.clone();
        let wait = applied.wait_for(|revision| revision.0 >= index);
        match tokio::time::timeout(self.timeouts.write, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ProposeError::ShuttingDown),
            Err(_) => Err(ProposeError::NoQuorum(format!(
                "this node did not catch up to revision {index} within {:?}",
                self.timeouts.write
            ))),
        }
    }

    fn no_quorum_timeout(&self, what: &str) -> ProposeError {
        ProposeError::NoQuorum(format!(
            "{what} did not complete within {:?}: a majority of control nodes is not reachable from here",
            self.timeouts.write
        ))
    }

    /// Refuses at once when this node leads but has not heard from a quorum recently.
    fn check_leader_lease(&self) -> Result<(), ProposeError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Ok(());
        }
        let lapsed = metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| u128::from(ms) > self.leader_lease().as_millis());
        if lapsed {
            return Err(ProposeError::NoQuorum(
                "this node leads but has not heard from a majority of control nodes".into(),
            ));
        }
        Ok(())
    }

    async fn read_index(&self) -> Result<u64, ProposeError> {
        match self.leader_read_index().await {
            Err(ProposeError::NotLeader { leader }) => {
                let deadline = Instant::now() + self.timeouts.write;
                match self
                    .to_leader(&ControlRpc::ReadIndex, leader, deadline)
                    .await
                {
                    Ok(ControlRpcReply::ReadIndex(reply)) => reply,
                    Ok(_) => Err(ProposeError::NoQuorum(
                        "leader answered a read index with something else".into(),
                    )),
                    // This node became the leader meanwhile: its own barrier decides.
                    Err(ProposeError::NotLeader { .. }) => self.leader_read_index().await,
                    Err(error) => Err(error),
                }
            }
            other => other,
        }
    }

    /// Proposes an operation, stamped with the current time, forwarding to the leader if this
    /// node does not lead.
    ///
    /// # Errors
    /// [`ProposeError`]; on a timeout the write may still be applied later.
    pub async fn propose(&self, op: Op) -> Result<Outcome, ProposeError> {
        let command = Command {
            at_ms: unix_now_ms(),
            op,
        };
        let deadline = Instant::now() + self.timeouts.write;
        let mut hint: Option<(u64, RaftMember)> = None;
        loop {
            let leader = match self.propose_local(command.clone()).await {
                Err(ProposeError::NotLeader { leader }) => hint.take().or(leader),
                other => return other,
            };
            let asked = leader.as_ref().map(|(id, _)| *id);
            let rpc = ControlRpc::Propose(command.clone());
            match self.to_leader(&rpc, leader, deadline).await {
                Ok(ControlRpcReply::Proposed(Err(ProposeError::NotLeader { leader: next })))
                    if Instant::now() < deadline =>
                {
                    // Leadership moved while we asked: follow the answer's hint if it names
                    // another node, else give this node a moment to learn of the move.
                    match next {
                        Some(next) if Some(next.0) != asked => hint = Some(next),
                        _ => self.pause_for_leader_change(asked, deadline).await,
                    }
                }
                Err(ProposeError::NotLeader { .. }) if Instant::now() < deadline => {
                    // This node is, or is about to be, the leader: propose here again.
                    tokio::time::sleep(RETRY_PAUSE_MIN).await;
                }
                Ok(ControlRpcReply::Proposed(reply)) => return reply,
                Ok(_) => {
                    return Err(ProposeError::NoQuorum(
                        "leader answered a proposal with something else".into(),
                    ));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends `rpc` to the leader, until `deadline`. Returns `NotLeader` naming this node if it
    /// is (or became) the leader.
    ///
    /// Stops waiting for a leader's answer as soon as this node learns of another leader, or of
    /// an election: a leader killed mid-request never answers. While the same leader stands, a
    /// failed call is retried on a new connection (the old one broke, or reached the previous
    /// run of a restarted leader) after a pause that grows from nothing to
    /// [`RETRY_PAUSE_MAX`]. With no leader known, waits for one to be elected.
    ///
    /// A forwarded write whose leader died mid-request may be retried against the new leader;
    /// every operation is safe to repeat (re-applying an identical spec is "unchanged").
    async fn to_leader(
        &self,
        rpc: &ControlRpc,
        known: Option<(u64, RaftMember)>,
        deadline: Instant,
    ) -> Result<ControlRpcReply, ProposeError> {
        let mut leader = known;
        let mut last_error = None;
        let mut pause = Duration::ZERO;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProposeError::NoQuorum(last_error.unwrap_or_else(|| {
                    "no leader: a majority of control nodes is not reachable from here".into()
                })));
            }
            let (id, member) = match leader.take() {
                Some(known) => known,
                None => match self.wait_for_leader_within(remaining).await {
                    Some(found) => found,
                    None => continue,
                },
            };
            if id == self.id {
                return Err(ProposeError::NotLeader {
                    leader: Some((id, member)),
                });
            }
            // What this node believes now: the call is abandoned only when that changes to
            // something other than the node called. (`id` may be a hint from another node's
            // answer that this node has not learned yet; waiting for "not `id`" would fire at
            // once and drop the call.)
            let believed = self.raft.metrics().borrow().current_leader;
            let call = self.peers.call(id, &member.quic_addr, rpc, remaining);
            let error = tokio::select! {
                reply = call => match reply {
                    Ok(reply) => return Ok(reply),
                    Err(error) => error,
                },
                () = self.leader_changed(believed, id) => {
                    tokio::time::sleep(RETRY_PAUSE_MIN).await;
                    leader = self.leader();
                    continue;
                }
            };
            debug!(peer = %format_args!("{id:016x}"), error = %error, "leader did not answer");
            last_error = Some(format!(
                "leader {id:016x} ({}) is not reachable: {error}",
                member.quic_addr
            ));
            let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.leader_changed(believed, id) => {}
            }
            pause = (pause * 2).clamp(RETRY_PAUSE_MIN, RETRY_PAUSE_MAX);
            leader = self.leader();
        }
    }

    /// Returns once this node's idea of the leader is neither `believed` (what it was when the
    /// caller started) nor `called` (the node the caller is asking): another leader, or an
    /// election under way. Never returns after Raft has stopped.
    async fn leader_changed(&self, believed: Option<u64>, called: u64) {
        let mut metrics = self.raft.metrics();
        let moved = |m: &openraft::RaftMetrics<u64, RaftMember>| {
            m.current_leader != believed && m.current_leader != Some(called)
        };
        if metrics.wait_for(moved).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits up to [`RETRY_PAUSE_MAX`] (and at most until `deadline`) for the leader this node
    /// knows to change from `asked`.
    async fn pause_for_leader_change(&self, asked: Option<u64>, deadline: Instant) {
        let wait = RETRY_PAUSE_MAX.min(deadline.saturating_duration_since(Instant::now()));
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(wait, metrics.wait_for(|m| m.current_leader != asked)).await;
    }

    async fn wait_for_leader_within(&self, timeout: Duration) -> Option<(u64, RaftMember)> {
        let wait = self
            .raft
            .wait(Some(timeout.min(self.timeouts.election_max * 2)));
        let _ = wait
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        self.leader()
    }

    /// Proposes on this node only (used for forwarded proposals: no second hop).
    pub async fn propose_local(&self, command: Command) -> Result<Outcome, ProposeError> {
        self.check_leader_lease()?;
        let started = std::time::Instant::now();
        let write =
            tokio::time::timeout(self.timeouts.write, self.raft.client_write(command)).await;
        match write {
            Err(_) => Err(self.no_quorum_timeout("write")),
            Ok(Ok(response)) => {
                let took = started.elapsed().as_secs_f64();
                self.metrics.raft_proposal_duration_seconds.observe(took);
                Ok(response.data)
            }
            Ok(Err(error)) => Err(write_error(error)),
        }
    }

    /// Answers one RPC from another control node.
    pub async fn handle_rpc(&self, rpc: ControlRpc) -> ControlRpcReply {
        match rpc {
            ControlRpc::AppendEntries(req) => {
                ControlRpcReply::AppendEntries(self.raft.append_entries(req).await)
            }
            ControlRpc::Vote(req) => ControlRpcReply::Vote(self.raft.vote(req).await),
            ControlRpc::InstallSnapshot(req) => {
                ControlRpcReply::InstallSnapshot(self.raft.install_snapshot(req).await)
            }
            ControlRpc::Propose(command) => {
                ControlRpcReply::Proposed(self.propose_local(command).await)
            }
            ControlRpc::ReadIndex => ControlRpcReply::ReadIndex(self.leader_read_index().await),
            ControlRpc::RemoveMember { node_id } => {
                ControlRpcReply::MemberRemoved(self.remove_member_local(node_id).await)
            }
            ControlRpc::AddMember { node_id, member } => {
                ControlRpcReply::MemberAdded(self.add_member(node_id, member).await)
            }
            ControlRpc::AgentLogs { node, request } => {
                ControlRpcReply::AgentLogs(self.agent_logs_here(node, &request).await)
            }
            ControlRpc::AgentReports { full } => ControlRpcReply::AgentReports {
                as_of_ms: unix_now_ms(),
                reports: self.agents.snapshot(full),
            },
            ControlRpc::Removed => {
                self.note_removed("the leader took it out of the membership".into());
                ControlRpcReply::RemovedNoted
            }
            ControlRpc::MemberContacts => {
                ControlRpcReply::MemberContacts(self.own_member_contacts().into_iter().collect())
            }
            ControlRpc::InstallClusterKey {
                generation,
                key_hex,
            } => ControlRpcReply::ClusterKeyInstalled(
                self.install_cluster_key(generation, &key_hex).await,
            ),
            ControlRpc::FetchClusterKeys => {
                ControlRpcReply::ClusterKeys(self.cluster_secrets().map_err(|e| e.to_string()))
            }
            ControlRpc::RotateClusterKey { reason } => {
                ControlRpcReply::ClusterKeyRotated(self.rotate_cluster_key_local(&reason).await)
            }
        }
    }

    /// A read index confirmed by a quorum, on this node as the leader. A round that misses the
    /// quorum (connections to restarted peers still being set up, a slow disk) is tried again,
    /// within the write timeout, while the leader lease holds.
    async fn leader_read_index(&self) -> Result<u64, ProposeError> {
        let deadline = Instant::now() + self.timeouts.write;
        loop {
            self.check_leader_lease()?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let round = tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await;
            match round {
                Err(_) => return Err(self.no_quorum_timeout("read barrier")),
                Ok(Ok(log_id)) => return Ok(log_id.map(|id| id.index).unwrap_or(0)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(ProposeError::NotLeader {
                        leader: f.leader_id.zip(f.leader_node),
                    });
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    if Instant::now() + RETRY_PAUSE_MAX >= deadline {
                        return Err(ProposeError::NoQuorum(
                            "the leader could not confirm its leadership with a majority of control nodes"
                                .into(),
                        ));
                    }
                    tokio::time::sleep(RETRY_PAUSE_MIN).await;
                }
                Ok(Err(RaftError::Fatal(_))) => return Err(ProposeError::ShuttingDown),
            }
        }
    }

    /// Signs an admin certificate named `name` for the key in `csr_der` (only the key is
    /// taken from it), valid for `lifetime` from now, with the cluster CA. The caller records
    /// it ([`Op::AddAdmin`]).
    ///
    /// # Errors
    /// In words: no CA on this node yet, or a bad CSR.
    pub async fn sign_admin_csr(
        &self,
        name: &str,
        csr_der: &[u8],
        lifetime: Duration,
    ) -> Result<Vec<u8>, String> {
        let ca = self.ca().await.map_err(|refused| refused.refusal.message)?;
        let subject = CertSubject::Admin {
            name: name.to_owned(),
        };
        ca.sign_csr(
            csr_der,
            &subject,
            Validity::starting_at(unix_now(), lifetime),
        )
        .map(|cert| cert.to_vec())
        .map_err(|e| format!("csr: {e}"))
    }

    /// The cluster CA, unsealed from the replicated state with the cluster key.
    async fn ca(&self) -> Result<ClusterCa, Refused> {
        let state = self.state.read().await;
        let info = state
            .cluster
            .as_ref()
            .ok_or_else(|| Refused::unavailable("cluster is not initialised yet"))?;
        let generation = state.key_generation();
        let keys = self
            .cluster_keys()
            .ok_or_else(|| Refused::unavailable("this control node has no cluster key yet"))?;
        let key = keys.get(generation).ok_or_else(|| {
            Refused::unavailable(format!(
                "this control node does not hold cluster key generation {generation} yet (it is fetching it from the other control nodes)"
            ))
        })?;
        ClusterCa::from_sealed(&info.ca_cert_der, &info.ca_key_sealed, key)
            .map_err(|e| Refused::unavailable(format!("cannot open the cluster CA: {e}")))
    }

    /// The key a joining node opens its secrets with. Only agents run workloads, so only they
    /// get one.
    fn secret_key_for(
        &self,
        role: NodeRole,
        node_id: NodeId,
    ) -> Option<warren_transport::seal::SealKey> {
        (role == NodeRole::Agent)
            .then(|| {
                self.cluster_keys()
                    .map(|keys| node_secret_key(keys.root(), node_id))
            })
            .flatten()
    }

    /// QUIC addresses of the control members in the applied membership, for joiners and
    /// agents (see [`ClusterState::control_addrs`]).
    pub async fn control_addrs(&self) -> Vec<String> {
        self.state.read().await.control_addrs.clone()
    }
}

impl JoinAuthority for Control {
    async fn authorize(&self, join: CheckedJoin) -> Result<JoinGrant, Refused> {
        let request = &join.request;
        warren_api::validate_node_name(&request.name)
            .map_err(|e| Refused::bad_request(e.to_string()))?;
        warren_api::validate_site(&request.site)
            .map_err(|e| Refused::bad_request(e.to_string()))?;
        let now_ms = unix_now_ms();
        // Check the token here first for a precise refusal; the state machine checks again,
        // atomically, when the join is applied.
        {
            let state = self.state.read().await;
            let record = state.tokens.get(join.token.id).ok_or(TokenError::Unknown)?;
            record.check(&join.token, request.role, now_ms)?;
        }
        let ca = self.ca().await?;
        let node_id = NodeId(random_node_id());
        let subject = CertSubject::Node {
            node_id,
            role: CertRole::from(request.role),
        };
        let cert = ca
            .sign_csr(
                &request.csr_der,
                &subject,
                Validity::starting_at(unix_now(), self.timeouts.cert_lifetime),
            )
            .map_err(|e| Refused::bad_request(e.to_string()))?;
        let serial = parse_identity(&cert)
            .map_err(|e| Refused::bad_request(e.to_string()))?
            .serial;
        let node = joined_node(request, node_id, serial, now_ms);
        let op = Op::Join {
            token_id: join.token.id,
            secret_sha256: join.token.secret_sha256(),
            role: request.role,
            node,
        };
        match self.propose(op).await {
            Ok(Outcome {
                result: Ok(Effect::Node(_)),
                ..
            }) => Ok(JoinGrant {
                node_id,
                cert_der: cert.to_vec(),
                ca_cert_der: ca.cert_der().to_vec(),
                control_addrs: self.control_addrs().await,
                secret_key: self.secret_key_for(request.role, node_id),
            }),
            Ok(Outcome { result: Ok(_), .. }) => Err(Refused::unavailable(
                "join applied without registering a node",
            )),
            Ok(Outcome {
                result: Err(rejection),
                ..
            }) => Err(join_rejected(rejection)),
            Err(error) => {
                warn!(error = %error, "join could not be committed");
                Err(Refused::unavailable(format!(
                    "the control plane cannot commit the join now: {error}"
                )))
            }
        }
    }

    fn cluster_fingerprint(&self) -> [u8; 32] {
        // Fixed for the cluster's life: taken from this node's own CA certificate at start, so
        // a join never depends on winning a lock race with `apply`.
        self.fingerprint
    }
}

/// The registry entry of a node admitted by `request`.
fn joined_node(request: &JoinRequest, node_id: NodeId, serial: String, now_ms: u64) -> Node {
    Node {
        id: node_id,
        name: request.name.clone(),
        role: request.role,
        site: request.site.clone(),
        labels: request.labels.clone(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: Some(serial),
        addresses: advertised_addresses(&request.advertise),
        joined_at_ms: now_ms,
    }
}

/// The joiner's answer when the state machine rejected its join.
fn join_rejected(rejection: Rejection) -> Refused {
    match rejection.code {
        RejectionCode::TokenRefused => Refused {
            refusal: warren_transport::join::JoinRefusal {
                reason: warren_transport::join::JoinRefusalReason::InvalidToken,
                message: rejection.message,
            },
            metric_label: "token_refused",
        },
        _ => Refused::bad_request(rejection.message),
    }
}

/// What a failed Raft write (client write or membership change) means to a caller, in our
/// words: openraft's own messages print its types' Debug output (`Some(LogId { .. })`).
fn write_error(error: RaftError<u64, ClientWriteError<u64, RaftMember>>) -> ProposeError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => match e {
            ChangeMembershipError::InProgress(_) => ProposeError::MembershipBusy(
                "the previous membership change is not committed yet".into(),
            ),
            ChangeMembershipError::EmptyMembership(_) => ProposeError::Membership(
                "the change would leave the cluster without control nodes".into(),
            ),
            ChangeMembershipError::LearnerNotFound(e) => ProposeError::Membership(format!(
                "node {:016x} must be added as a learner before it can vote",
                e.node_id
            )),
        },
        RaftError::Fatal(_) => ProposeError::ShuttingDown,
    }
}

/// Parses `kind=addr` advertised addresses (`quic=…`, `api=…`, `gossip=…`, `metrics=…`,
/// `dns=…`); unknown kinds are ignored.
fn advertised_addresses(advertise: &[String]) -> NodeAddresses {
    let mut addresses = NodeAddresses::default();
    for entry in advertise {
        let Some((kind, addr)) = entry.split_once('=') else {
            continue;
        };
        let slot = match kind {
            "quic" => &mut addresses.quic,
            "api" => &mut addresses.api,
            "gossip" => &mut addresses.gossip,
            "metrics" => &mut addresses.metrics,
            "dns" => &mut addresses.dns,
            _ => continue,
        };
        *slot = Some(addr.to_owned());
    }
    addresses
}

/// Shared pointer type used by servers.
pub type SharedControl = Arc<Control>;
