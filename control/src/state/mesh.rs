//! The WireGuard registry in the state: the overlay range, each node's slot in it, and the
//! keys and endpoint each node declared. Pure functions of the log, like the rest of the
//! state: every control node allocates the same slot in the same entry.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use tracing::warn;
use warren_api::{MeshEntry, NodeId, NodeState, OverlayRange, OwnMesh};

use super::{Applied, ClusterState};
use crate::command::{Effect, Rejection};

impl ClusterState {
    /// Gives `node` the lowest free slot of the overlay range, if it has none. A full range
    /// leaves the node without one (it joins, outside the mesh) and says so in the log.
    pub(super) fn give_overlay_slot(&mut self, node: NodeId) -> Option<u32> {
        if let Some(entry) = self.mesh.get(&node) {
            return Some(entry.slot);
        }
        let used: BTreeSet<u32> = self.mesh.values().map(|e| e.slot).collect();
        let Some(slot) = self.overlay.allocate(&used) else {
            warn!(node = %node, range = %self.overlay, "the overlay range is full; the node stays outside the WireGuard mesh");
            return None;
        };
        self.mesh.insert(
            node,
            MeshEntry {
                slot,
                ..MeshEntry::default()
            },
        );
        Some(slot)
    }

    pub(super) fn set_overlay_range(&mut self, range: OverlayRange) -> Applied {
        if range == self.overlay {
            return Ok(Effect::None);
        }
        if !self.mesh.is_empty() {
            return Err(Rejection::conflict(format!(
                "the overlay range is {} and {} node(s) hold addresses in it; it can only be set before any node joins",
                self.overlay,
                self.mesh.len()
            )));
        }
        self.overlay = range;
        Ok(Effect::Done)
    }

    pub(super) fn set_mesh(
        &mut self,
        node: NodeId,
        public_key: [u8; 32],
        next_public_key: Option<[u8; 32]>,
        endpoint: Option<&str>,
    ) -> Applied {
        match self.nodes.get(&node) {
            None => return Err(Rejection::not_found(format!("node {node}"))),
            Some(n) if n.state == NodeState::Removed => {
                return Err(Rejection::conflict(format!("node {node} has been removed")));
            }
            Some(_) => {}
        }
        let Some(slot) = self.give_overlay_slot(node) else {
            return Err(Rejection::conflict(format!(
                "the overlay range {} is full ({} nodes); node {node} stays outside the mesh",
                self.overlay,
                self.overlay.slot_count() - 1
            )));
        };
        let entry = self.mesh.get_mut(&node).expect("given a slot above");
        let wanted = MeshEntry {
            slot,
            public_key: Some(public_key),
            next_public_key: next_public_key.filter(|next| *next != public_key),
            endpoint: endpoint.map(str::to_owned),
            rotations_requested: entry.rotations_requested,
        };
        if *entry == wanted {
            return Ok(Effect::None);
        }
        *entry = wanted;
        Ok(Effect::Done)
    }

    pub(super) fn request_key_rotation(&mut self, node: NodeId) -> Applied {
        match self.nodes.get(&node) {
            None => return Err(Rejection::not_found(format!("node {node}"))),
            Some(n) if n.state == NodeState::Removed => {
                return Err(Rejection::conflict(format!("node {node} has been removed")));
            }
            Some(_) => {}
        }
        let Some(entry) = self.mesh.get_mut(&node).filter(|e| e.public_key.is_some()) else {
            return Err(Rejection::conflict(format!(
                "node {node} has no WireGuard key to roll: its overlay is off or it never started"
            )));
        };
        entry.rotations_requested = entry.rotations_requested.saturating_add(1);
        Ok(Effect::Done)
    }

    /// The overlay address of `node`, if it holds a slot.
    pub fn overlay_address(&self, node: NodeId) -> Option<Ipv4Addr> {
        self.mesh
            .get(&node)
            .and_then(|entry| self.overlay.node_address(entry.slot))
    }

    /// `node`'s own mesh settings, as its view carries them.
    pub fn own_mesh(&self, node: NodeId) -> Option<OwnMesh> {
        let entry = self.mesh.get(&node)?;
        Some(OwnMesh {
            range: self.overlay,
            address: self.overlay.node_address(entry.slot)?,
            public_key: entry.public_key,
            next_public_key: entry.next_public_key,
            rotations_requested: entry.rotations_requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warren_api::{Availability, Node, NodeAddresses, NodeRole, Revision};

    use super::*;
    use crate::command::{Command, Op, RejectionCode};

    fn apply(state: &mut ClusterState, op: Op) -> Applied {
        let revision = Revision(state.revision.0 + 1);
        let command = Command { at_ms: 1_000, op };
        state.apply(revision, &command).result
    }

    fn agent(id: u64) -> Node {
        Node {
            id: NodeId(id),
            name: format!("edge-{id}"),
            role: NodeRole::Agent,
            site: "lisbon".into(),
            labels: BTreeMap::new(),
            availability: Availability::Active,
            state: NodeState::Ready,
            cert_serial: Some(format!("serial{id}")),
            addresses: NodeAddresses::default(),
            joined_at_ms: 0,
        }
    }

    fn declare(node: u64, key: u8, next: Option<u8>) -> Op {
        Op::SetMesh {
            node: NodeId(node),
            public_key: [key; 32],
            next_public_key: next.map(|n| [n; 32]),
            endpoint: Some(format!("10.0.0.{node}:51820")),
        }
    }

    #[test]
    fn nodes_get_slots_in_join_order_and_a_removed_nodes_slot_is_given_again() {
        let mut state = ClusterState::default();
        for id in 1..=3 {
            apply(&mut state, Op::RegisterNode(agent(id))).unwrap();
        }
        let address = |state: &ClusterState, id| state.overlay_address(NodeId(id));
        assert_eq!(address(&state, 1), Some(Ipv4Addr::new(10, 42, 1, 1)));
        assert_eq!(address(&state, 3), Some(Ipv4Addr::new(10, 42, 3, 1)));
        apply(&mut state, Op::RemoveNode(NodeId(2))).unwrap();
        assert_eq!(address(&state, 2), None);
        apply(&mut state, Op::RegisterNode(agent(4))).unwrap();
        assert_eq!(address(&state, 4), Some(Ipv4Addr::new(10, 42, 2, 1)));
        let error = apply(&mut state, declare(2, 9, None)).unwrap_err();
        assert_eq!(error.code, RejectionCode::Conflict, "{}", error.message);
    }

    #[test]
    fn a_declared_key_is_recorded_and_a_rotation_holds_both_keys_until_committed() {
        let mut state = ClusterState::default();
        apply(&mut state, Op::RegisterNode(agent(1))).unwrap();
        apply(&mut state, Op::RegisterNode(agent(2))).unwrap();
        apply(&mut state, declare(1, 1, None)).unwrap();
        assert_eq!(
            apply(&mut state, declare(1, 1, None)).unwrap(),
            Effect::None
        );
        let own = state.own_mesh(NodeId(1)).unwrap();
        assert_eq!(own.public_key, Some([1; 32]));
        assert_eq!(own.address, Ipv4Addr::new(10, 42, 1, 1));

        apply(&mut state, declare(1, 1, Some(5))).unwrap();
        let peers = crate::catalogue::peers(&state, NodeId(2));
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].wg_public_key, Some([1; 32]));
        assert_eq!(peers[0].wg_next_public_key, Some([5; 32]));
        assert_eq!(peers[0].overlay_ip.as_deref(), Some("10.42.1.1"));
        assert_eq!(peers[0].wg_endpoint.as_deref(), Some("10.0.0.1:51820"));

        apply(&mut state, Op::RequestKeyRotation(NodeId(1))).unwrap();
        assert_eq!(state.own_mesh(NodeId(1)).unwrap().rotations_requested, 1);
        let error = apply(&mut state, Op::RequestKeyRotation(NodeId(2))).unwrap_err();
        assert!(
            error.message.contains("no WireGuard key to roll"),
            "{}",
            error.message
        );
        apply(&mut state, declare(1, 5, None)).unwrap();
        assert_eq!(
            state.own_mesh(NodeId(1)).unwrap().rotations_requested,
            1,
            "a declaration keeps the count"
        );
        let peers = crate::catalogue::peers(&state, NodeId(2));
        assert_eq!(peers[0].wg_public_key, Some([5; 32]));
        assert_eq!(peers[0].wg_next_public_key, None);

        // Node 2 never declared a key and has no gossip address: it is nobody's peer.
        assert!(
            crate::catalogue::peers(&state, NodeId(1)).is_empty(),
            "a node without a key or gossip address is left out"
        );
        apply(&mut state, Op::RemoveNode(NodeId(1))).unwrap();
        assert!(crate::catalogue::peers(&state, NodeId(2)).is_empty());
    }

    #[test]
    fn the_range_is_set_before_the_first_node_only() {
        let mut state = ClusterState::default();
        let range: OverlayRange = "10.99.0.0/20".parse().unwrap();
        apply(&mut state, Op::SetOverlayRange(range)).unwrap();
        apply(&mut state, Op::RegisterNode(agent(1))).unwrap();
        assert_eq!(
            state.overlay_address(NodeId(1)),
            Some(Ipv4Addr::new(10, 99, 1, 1))
        );
        let error = apply(&mut state, Op::SetOverlayRange(OverlayRange::default())).unwrap_err();
        assert!(
            error
                .message
                .contains("can only be set before any node joins"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_full_range_leaves_a_joining_node_outside_the_mesh() {
        let mut state = ClusterState::default();
        apply(
            &mut state,
            Op::SetOverlayRange("10.42.0.0/23".parse().unwrap()),
        )
        .unwrap();
        apply(&mut state, Op::RegisterNode(agent(1))).unwrap();
        apply(&mut state, Op::RegisterNode(agent(2))).unwrap();
        assert_eq!(state.overlay_address(NodeId(2)), None);
        let error = apply(&mut state, declare(2, 2, None)).unwrap_err();
        assert!(error.message.contains("is full"), "{}", error.message);
    }
}
