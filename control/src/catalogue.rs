//! What every node's view carries about the rest of the cluster: the service catalogue (each
//! running replica's address and ports, for the agents' DNS) and the mesh peers (every other
//! node's gossip endpoint, for the mesh's seeds, and its WireGuard keys, overlay address and
//! endpoint). Pure functions of the state, so every control node builds the same view.
//!
//! A replica's catalogue address is the IP of its node's gossip endpoint: every agent can reach
//! it, mesh or not. An agent whose WireGuard mesh is up answers DNS with the node's overlay
//! address instead (from the peers list). A node that advertised no gossip endpoint is left
//! out of the catalogue, and out of the peers unless it holds a WireGuard key.

use std::net::SocketAddr;

use warren_api::wire::{PeerInfo, ServiceEndpoint};
use warren_api::{DesiredState, Node, NodeId, NodeState};

use crate::state::ClusterState;

/// The IP other nodes and workloads reach `node` at, if it advertised one.
pub fn node_ip(node: &Node) -> Option<String> {
    let gossip = node.addresses.gossip.as_deref()?;
    gossip
        .parse::<SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_string())
}

/// Every replica control wants running, with its node's address and its service's ports,
/// sorted by replica id. Replicas on removed nodes or nodes without an address are left out.
pub fn catalogue(state: &ClusterState) -> Vec<ServiceEndpoint> {
    state
        .replicas
        .values()
        .filter(|r| r.desired == DesiredState::Running)
        .filter_map(|replica| {
            let node = state.nodes.get(&replica.node)?;
            if node.state == NodeState::Removed {
                return None;
            }
            let address = node_ip(node)?;
            let service = state.services.get(&replica.id.service)?;
            Some(ServiceEndpoint {
                service: replica.id.service.clone(),
                replica: replica.id.clone(),
                node: replica.node,
                address,
                ports: service.current.spec.ports.clone(),
            })
        })
        .collect()
}

/// Every node but `except` (and removed ones) that advertised a gossip endpoint or holds a
/// WireGuard key, by id, with its overlay address, keys and WireGuard endpoint from the
/// registry: the one authority on who may join the overlay.
pub fn peers(state: &ClusterState, except: NodeId) -> Vec<PeerInfo> {
    state
        .nodes
        .values()
        .filter(|n| n.id != except && n.state != NodeState::Removed)
        .filter_map(|node| {
            let mesh = state.mesh.get(&node.id);
            let wg_public_key = mesh.and_then(|m| m.public_key);
            if node.addresses.gossip.is_none() && wg_public_key.is_none() {
                return None;
            }
            Some(PeerInfo {
                node_id: node.id,
                name: node.name.clone(),
                site: node.site.clone(),
                overlay_ip: state.overlay_address(node.id).map(|ip| ip.to_string()),
                wg_public_key,
                endpoints: node.addresses.gossip.iter().cloned().collect(),
                wg_next_public_key: mesh.and_then(|m| m.next_public_key),
                wg_endpoint: mesh.and_then(|m| m.endpoint.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warren_api::{
        Availability, NodeAddresses, NodeRole, PortSpec, ProcessSpec, Protocol, Revision,
        ServiceMode, ServiceName, ServiceSpec, Workload,
    };

    use super::*;
    use crate::command::{Command, Op};

    fn apply(state: &mut ClusterState, index: u64, op: Op) {
        let command = Command {
            at_ms: 1_000 + index,
            op,
        };
        state
            .apply(Revision(index), &command)
            .result
            .expect("applied");
    }

    fn agent(id: u64, gossip: Option<&str>) -> Node {
        Node {
            id: NodeId(id),
            name: format!("edge-{id}"),
            role: NodeRole::Agent,
            site: "lisbon".into(),
            labels: BTreeMap::new(),
            availability: Availability::Active,
            state: NodeState::Ready,
            cert_serial: Some(format!("serial{id}")),
            addresses: NodeAddresses {
                gossip: gossip.map(str::to_owned),
                ..NodeAddresses::default()
            },
            joined_at_ms: 0,
        }
    }

    /// Three agents, two with a gossip address; a global service with a port runs on all
    /// three: the catalogue lists the two reachable replicas with the node's IP and the port,
    /// the peers of node 1 are node 2 only (node 3 has no address), and a removed node drops
    /// out of both.
    #[test]
    fn the_catalogue_and_peers_list_reachable_nodes_only() {
        let mut state = ClusterState::default();
        apply(
            &mut state,
            1,
            Op::RegisterNode(agent(1, Some("10.0.0.1:7946"))),
        );
        apply(
            &mut state,
            2,
            Op::RegisterNode(agent(2, Some("[fd00::2]:7946"))),
        );
        apply(&mut state, 3, Op::RegisterNode(agent(3, None)));
        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["sleep".into(), "1000".into()],
                working_dir: None,
            }),
        );
        spec.mode = ServiceMode::Global;
        spec.ports = vec![PortSpec {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }];
        apply(&mut state, 4, Op::PutService(spec));

        let listed = catalogue(&state);
        let addresses: Vec<(&str, NodeId)> = listed
            .iter()
            .map(|e| (e.address.as_str(), e.node))
            .collect();
        assert_eq!(addresses, [("10.0.0.1", NodeId(1)), ("fd00::2", NodeId(2))]);
        assert!(listed.iter().all(|e| e.ports[0].port == 8080));
        let names: Vec<String> = peers(&state, NodeId(1))
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["edge-2"]);

        apply(&mut state, 5, Op::RemoveNode(NodeId(2)));
        assert_eq!(catalogue(&state).len(), 1);
        assert!(peers(&state, NodeId(1)).is_empty());
    }
}
