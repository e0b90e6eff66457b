//! Agent liveness, decided on the leader: which agents turned unreachable and which came back.
//!
//! docs/design.md §2: facts from the world enter the log as entries the leader proposes. The
//! leader merges every control node's [`AgentReport`]s (an agent streams to one control node
//! at a time) and feeds them to [`LivenessJudge::decide`], a pure function of `(now, registry,
//! reports)` that returns the `NodeUnreachable` / `NodeReachable` operations to propose. The
//! scheduler then applies each service's `on_disconnect` rule; nothing is rescheduled here.
//!
//! Gossip is a second input: the leader's own mesh view of each node ([`GossipLiveness`] by
//! node id). Its failure detector has already waited before it says `Dead`, so a node whose
//! link is down and whom gossip calls dead is declared unreachable at once, without waiting for
//! `unreachable_after`. Gossip can only hasten that verdict, never hold it off: anyone holding
//! the gossip key can claim that a node is alive (one agent gossiping as another kept a killed
//! node `ready` for minutes), so `Alive` is hearsay that neither keeps a silent node reachable
//! nor brings an unreachable one back — only its own link does. `Suspect` and absence say
//! nothing either.
//!
//! A link counts as up only while it is heard from: connected, and in contact within
//! [`LINK_STALE`]. The agent pings its control node every
//! [`AGENT_KEEP_ALIVE`](warren_api::wire::AGENT_KEEP_ALIVE) and control notes each ping as
//! contact, so a killed agent's stream, which stays open until control's silence limit, stops
//! outweighing gossip's verdict after a few seconds instead of fifteen.
//!
//! A new leader knows nothing of when agents were last seen (the old leader's memory is gone
//! and the agent of a dead control node is reconnecting): it counts every agent as seen at the
//! moment it became leader, so no agent is declared unreachable before `unreachable_after` has
//! passed under this leader.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use warren_api::wire::AGENT_KEEP_ALIVE;

use warren_api::{NodeId, NodeRole, NodeState};
pub use warren_mesh::Liveness as GossipLiveness;

use crate::command::Op;
use crate::state::ClusterState;
use crate::status::AgentReport;

/// How long a connected agent may go unheard (three of its keep-alives) before its link stops
/// counting as up.
pub const LINK_STALE: Duration = Duration::from_secs(3 * AGENT_KEEP_ALIVE.as_secs());

/// The leader's memory of when each agent was last known alive.
#[derive(Debug)]
pub struct LivenessJudge {
    unreachable_after_ms: u64,
    leader_since_ms: u64,
    last_seen_ms: HashMap<NodeId, u64>,
}

impl LivenessJudge {
    /// Starts judging at `now_ms` (when this node became leader).
    pub fn new(unreachable_after: Duration, now_ms: u64) -> Self {
        LivenessJudge {
            unreachable_after_ms: unreachable_after.as_millis() as u64,
            leader_since_ms: now_ms,
            last_seen_ms: HashMap::new(),
        }
    }

    /// The operations to propose given the registry, the merged reports and the leader's
    /// gossip view.
    pub fn decide(
        &mut self,
        now_ms: u64,
        state: &ClusterState,
        reports: &BTreeMap<NodeId, AgentReport>,
        gossip: &BTreeMap<NodeId, GossipLiveness>,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        for node in state.nodes.values() {
            if node.role != NodeRole::Agent {
                continue;
            }
            let report = reports.get(&node.id);
            let connected = report.is_some_and(|r| {
                r.connected
                    && now_ms.saturating_sub(r.last_contact_ms) <= LINK_STALE.as_millis() as u64
            });
            let gossip_dead = gossip.get(&node.id) == Some(&GossipLiveness::Dead);
            let seen = self
                .last_seen_ms
                .entry(node.id)
                .or_insert(self.leader_since_ms);
            if connected {
                *seen = now_ms;
            } else if let Some(r) = report {
                *seen = (*seen).max(r.last_contact_ms);
            }
            let silent_too_long = now_ms.saturating_sub(*seen) >= self.unreachable_after_ms;
            match node.state {
                NodeState::Ready if !connected && (gossip_dead || silent_too_long) => {
                    ops.push(Op::NodeUnreachable { node: node.id });
                }
                NodeState::Unreachable { .. } | NodeState::Down if connected => {
                    ops.push(Op::NodeReachable { node: node.id });
                }
                _ => {}
            }
        }
        self.last_seen_ms
            .retain(|id, _| state.nodes.contains_key(id));
        ops
    }
}

#[cfg(test)]
mod tests;
