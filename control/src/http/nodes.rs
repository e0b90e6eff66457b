//! `/nodes`: what the cluster knows of each node (registry, agent link, gossip, Raft
//! membership), drain and activate, and removal.

use std::collections::BTreeMap;

use hyper::StatusCode;
use warren_api::rest::{AgentLinkInfo, MemberContact, MeshInfo, NodeInfo, WriteResult};
use warren_api::scrape::SdFilter;
use warren_api::{Availability, NodeId, NodeState};

use super::respond::{ApiResult, json, ok, written};
use super::{Api, ApiError};
use crate::command::{Effect, Op};
use crate::state::ClusterState;
use crate::status::AgentReport;

/// What the registry holds of `node`'s place in the overlay.
fn mesh_info(state: &ClusterState, node: NodeId) -> Option<MeshInfo> {
    let entry = state.mesh.get(&node)?;
    let base64 = |key: &[u8; 32]| data_encoding::BASE64.encode(key);
    Some(MeshInfo {
        overlay_ip: state.overlay_address(node)?.to_string(),
        public_key: entry.public_key.as_ref().map(base64),
        next_public_key: entry.next_public_key.as_ref().map(base64),
        endpoint: entry.endpoint.clone(),
    })
}

impl Api {
    pub(super) fn node_info(
        &self,
        state: &ClusterState,
        node: &warren_api::Node,
        agent: Option<&AgentReport>,
        gossip: Option<&[warren_mesh::Member]>,
        contacts: &BTreeMap<u64, MemberContact>,
    ) -> NodeInfo {
        let metrics = self.control.raft().metrics().borrow().clone();
        let raft_member = metrics
            .membership_config
            .membership()
            .get_node(&node.id.0)
            .is_some();
        NodeInfo {
            node: node.clone(),
            replicas: state.replicas_on(node.id).count(),
            raft_member,
            agent: agent.map(|a| AgentLinkInfo {
                connected: a.connected,
                control_node: format!("{:016x}", a.control_id),
                last_contact_ms: a.last_contact_ms,
                revision_acked: a.revision_acked.0,
                agent_version: a.agent_version.clone(),
                events: a.events.iter().cloned().collect(),
                events_dropped: a.events_dropped,
                listeners: a.listeners.clone(),
                mesh_peers: a.mesh_peers.clone(),
                mesh_peers_up: a.mesh_peers_up,
            }),
            gossip: gossip
                .and_then(|members| members.iter().find(|m| m.node_id == node.id))
                .map(crate::gossip::info),
            member: raft_member
                .then(|| contacts.get(&node.id.0).cloned())
                .flatten(),
            mesh: mesh_info(state, node.id),
            peers: None,
        }
    }

    /// Prometheus HTTP service discovery of `kind` (`nodes` or `workloads`), the same document
    /// the metrics listener serves at `/sd/{kind}` (see [`crate::catalogue::scrape_targets`]).
    pub(super) async fn discovery(
        &self,
        kind: &str,
        query: Option<&str>,
        stale: bool,
    ) -> ApiResult {
        let filter = SdFilter::from_query(query.unwrap_or_default()).map_err(ApiError::Invalid)?;
        let state = self.read(stale).await?;
        let targets = crate::catalogue::scrape_targets(&state, filter.site.as_deref());
        match kind {
            "nodes" => ok(&targets.node_groups(&filter)),
            "workloads" => ok(&targets.workload_groups(&filter)),
            other => Err(ApiError::NotFound(format!(
                "no discovery of {other:?}: ask for nodes or workloads"
            ))),
        }
    }

    pub(super) async fn list_nodes(&self, stale: bool) -> ApiResult {
        let (agents, contacts) = tokio::join!(
            self.control.gather_agents(false),
            self.control.member_contacts()
        );
        let state = self.read(stale).await?;
        let gossip = self.control.gossip_members();
        ok(&state
            .nodes
            .values()
            .map(|n| {
                let agent = agents.get(&n.id);
                self.node_info(&state, n, agent, gossip.as_deref(), &contacts)
            })
            .collect::<Vec<_>>())
    }

    pub(super) async fn get_node(&self, key: &str, stale: bool) -> ApiResult {
        let (agents, contacts) = tokio::join!(
            self.control.gather_agents(true),
            self.control.member_contacts()
        );
        let state = self.read(stale).await?;
        let node = find_node(&state, key)?;
        let gossip = self.control.gossip_members();
        let agent = agents.get(&node.id);
        let mut info = self.node_info(&state, node, agent, gossip.as_deref(), &contacts);
        let full_mesh_up_to = crate::peer_scope::FULL_MESH_PEERS;
        let peers = crate::peer_scope::peers_of(&state, node.id, full_mesh_up_to);
        info.peers = Some(peers.into_iter().map(|p| p.node_id).collect());
        ok(&info)
    }

    pub(super) async fn set_availability(
        &self,
        key: &str,
        availability: Availability,
    ) -> ApiResult {
        let id = find_node(&*self.control.read_stale().await, key)?.id;
        written(
            self.control
                .propose(Op::SetAvailability {
                    node: id,
                    availability,
                })
                .await?,
        )
    }

    pub(super) async fn rotate_node_key(&self, key: &str) -> ApiResult {
        let id = find_node(&*self.control.read_stale().await, key)?.id;
        written(self.control.propose(Op::RequestKeyRotation(id)).await?)
    }

    pub(super) async fn remove_node(&self, key: &str) -> ApiResult {
        let (id, role) = {
            let state = self.control.read_stale().await;
            match find_node(&state, key) {
                Ok(node) => (node.id, node.role),
                Err(not_found) => match memberless_entry(&state, key) {
                    Some(id) => return self.remove_member_without_entry(id).await,
                    None => return Err(not_found),
                },
            }
        };
        if id.0 == self.control.id() {
            return Err(ApiError::Conflict(
                "a control node cannot remove itself; ask another control node".into(),
            ));
        }
        if role == warren_api::NodeRole::Control {
            // Leave the Raft membership first, so quorum is computed without it.
            self.control.remove_member(id.0).await?;
        }
        let outcome = self.control.propose(Op::RemoveNode(id)).await?;
        if matches!(outcome.result, Ok(Effect::Done)) {
            // What the removed node holds — the cluster keys of a control node, the gossip key
            // of any node — stops working from the next generation on.
            let reason = format!("node {key} was removed");
            if let Err(error) = self.control.rotate_cluster_key(&reason).await {
                return Err(ApiError::NoQuorum(format!(
                    "node {key} is removed, but the cluster key was not rotated ({error}); run `warren cluster rotate-keys`"
                )));
            }
        }
        written(outcome)
    }

    /// Takes a control member that has no node entry out of the Raft membership, so that it
    /// stops counting toward quorum (its entry is gone, e.g. an undone join whose node a
    /// leader had added meanwhile; its certificate was revoked with the entry).
    pub(super) async fn remove_member_without_entry(&self, id: NodeId) -> ApiResult {
        if id.0 == self.control.id() {
            return Err(ApiError::Conflict(
                "a control node cannot remove itself; ask another control node".into(),
            ));
        }
        self.control.remove_member(id.0).await?;
        let revision = self.control.read_stale().await.revision.0;
        let result = WriteResult {
            revision,
            changed: true,
            created: false,
            version: None,
        };
        Ok(json(StatusCode::OK, &result))
    }
}

fn find_node<'a>(state: &'a ClusterState, key: &str) -> Result<&'a warren_api::Node, ApiError> {
    let by_id = key
        .parse::<NodeId>()
        .ok()
        .and_then(|id| state.nodes.get(&id));
    by_id
        .or_else(|| {
            state
                .nodes
                .values()
                .filter(|n| n.state != NodeState::Removed)
                .find(|n| n.name == key)
        })
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "node {key} not found (give its name or 16-digit id)"
            ))
        })
}

/// The id `key` names when it is a control member of the applied membership without a node
/// entry.
fn memberless_entry(state: &ClusterState, key: &str) -> Option<NodeId> {
    let id = key.parse::<NodeId>().ok()?;
    (state.control_members.contains(&id) && !state.nodes.contains_key(&id)).then_some(id)
}
