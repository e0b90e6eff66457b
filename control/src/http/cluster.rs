//! `/cluster`: the cluster's status (members, term, node counts) and key rotation.

use std::collections::BTreeMap;

use warren_api::NodeId;
use warren_api::NodeState;
use warren_api::rest::{
    ClusterStatus, KeysRotated, MemberContact, MemberHealth, MemberInfo, NodeCounts,
};

use super::Api;
use super::respond::{ApiResult, ok};
use crate::state::ClusterState;

impl Api {
    pub(super) async fn rotate_keys(&self) -> ApiResult {
        let reason = "an operator asked (`warren cluster rotate-keys`)";
        let generation = self.control.rotate_cluster_key(reason).await?;
        ok(&KeysRotated { generation })
    }

    pub(super) async fn cluster_status(&self, stale: bool) -> ApiResult {
        let contacts = self.control.member_contacts().await;
        let state = self.read(stale).await?;
        let metrics = self.control.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| MemberInfo {
                id: NodeId(*id),
                name: member.name.clone(),
                quic_addr: member.quic_addr.clone(),
                api_addr: member.api_addr.clone(),
                voter: voters.contains(id),
                leader: metrics.current_leader == Some(*id),
                contact: contacts.get(id).cloned(),
            })
            .collect();
        let nodes = node_counts(&state, &contacts);
        let cluster = state.cluster.as_ref();
        ok(&ClusterStatus {
            name: cluster.map(|c| c.name.clone()).unwrap_or_default(),
            fingerprint: cluster
                .map(|c| {
                    data_encoding::HEXLOWER
                        .encode(&warren_transport::identity::fingerprint(&c.ca_cert_der))
                })
                .unwrap_or_default(),
            answered_by: NodeId(self.control.id()),
            members,
            term: metrics.current_term,
            commit_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            revision: state.revision.0,
            nodes,
            services: state.services.len(),
        })
    }
}

/// Nodes by state; a control member the leader cannot reach counts as unreachable, whatever
/// the registry says (control nodes are not judged by the liveness duty).
fn node_counts(state: &ClusterState, contacts: &BTreeMap<u64, MemberContact>) -> NodeCounts {
    let mut nodes = NodeCounts::default();
    for node in state.nodes.values() {
        nodes.total += 1;
        let member_down = contacts
            .get(&node.id.0)
            .is_some_and(|c| c.health == MemberHealth::Unreachable);
        match node.state {
            NodeState::Ready if member_down => nodes.unreachable += 1,
            NodeState::Ready => nodes.ready += 1,
            NodeState::Unreachable { .. } => nodes.unreachable += 1,
            NodeState::Down => nodes.down += 1,
            NodeState::Removed => nodes.removed += 1,
        }
    }
    nodes
}
