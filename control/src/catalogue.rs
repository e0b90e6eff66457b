//! What every node's view carries about the rest of the cluster: the service catalogue (each
//! running replica's address and ports, for the agents' DNS) and the mesh peers (every other
//! node's gossip endpoint, for the mesh's seeds and, later, WireGuard). Pure functions of the
//! state, so every control node builds the same view.
//!
//! A node's address is the IP of the gossip endpoint it advertised (its overlay address once
//! WireGuard assigns one). A node that advertised none is left out of both lists: it cannot be
//! reached by gossip, and its replicas have no address to give.

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

/// Every node but `except` (and removed ones) that advertised a gossip endpoint, by id.
pub fn peers(state: &ClusterState, except: NodeId) -> Vec<PeerInfo> {
    state
        .nodes
        .values()
        .filter(|n| n.id != except && n.state != NodeState::Removed)
        .filter_map(|node| {
            let gossip = node.addresses.gossip.clone()?;
            Some(PeerInfo {
                node_id: node.id,
                name: node.name.clone(),
                site: node.site.clone(),
                overlay_ip: None,
                wg_public_key: None,
                endpoints: vec![gossip],
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
