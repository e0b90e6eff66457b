//! What every node's view carries about the rest of the cluster: the service catalogue (each
//! running replica's address and ports, for the agents' DNS) and the mesh peers (every other
//! node's gossip endpoint, for the mesh's seeds, and its WireGuard keys, overlay address and
//! endpoint). Pure functions of the state, so every control node builds the same view.
//!
//! A replica's catalogue address is the IP of its node's gossip endpoint: every agent can reach
//! it, mesh or not. An agent whose WireGuard mesh is up answers DNS with the node's overlay
//! address instead (from the peers list). A node that advertised no gossip endpoint is left
//! out of the catalogue, and out of the peers unless it holds a WireGuard key.
//!
//! Also what Prometheus scrapes ([`scrape_targets`]): every node's registered metrics
//! address, and every replica whose service declares a metrics endpoint, at its node's
//! catalogue IP. Agents get their own site's in their views, for discovery while cut off.

use std::net::SocketAddr;

use warren_api::scrape::{NodeTarget, ScrapeTargets, WorkloadTarget};
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

/// The metrics endpoints of the cluster, or of `site` only: every node (but removed ones)
/// that registered a metrics address, and every replica control wants running whose service
/// declares a metrics endpoint and whose node has an address (see [`catalogue`]).
pub fn scrape_targets(state: &ClusterState, site: Option<&str>) -> ScrapeTargets {
    let wanted =
        |node: &Node| node.state != NodeState::Removed && site.is_none_or(|site| site == node.site);
    let nodes = state
        .nodes
        .values()
        .filter(|node| wanted(node))
        .filter_map(|node| {
            Some(NodeTarget {
                node_id: node.id,
                name: node.name.clone(),
                site: node.site.clone(),
                role: node.role,
                address: node.addresses.metrics.clone()?,
            })
        })
        .collect();
    let workloads = state
        .replicas
        .values()
        .filter(|r| r.desired == DesiredState::Running)
        .filter_map(|replica| {
            let node = state.nodes.get(&replica.node).filter(|n| wanted(n))?;
            let service = state.services.get(&replica.id.service)?;
            let metrics = service.current.spec.metrics.as_ref()?;
            Some(WorkloadTarget {
                replica: replica.id.clone(),
                node_id: node.id,
                node: node.name.clone(),
                site: node.site.clone(),
                address: format_host_port(&node_ip(node)?, metrics.port),
                path: metrics.path.clone(),
            })
        })
        .collect();
    ScrapeTargets { nodes, workloads }
}

/// `host:port`, with an IPv6 host in brackets.
fn format_host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
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

    /// Nodes that registered a metrics address are targets, in their site; replicas of a
    /// service that declares an endpoint are targets at their node's IP (IPv6 in brackets),
    /// with its path; a site filter keeps that site's only; a removed node drops out.
    #[test]
    fn scrape_targets_list_metrics_endpoints_by_site() {
        let mut state = ClusterState::default();
        let mut lisbon = agent(1, Some("10.0.0.1:7946"));
        lisbon.addresses.metrics = Some("10.0.0.1:9091".into());
        let mut porto = agent(2, Some("[fd00::2]:7946"));
        porto.site = "porto".into();
        porto.addresses.metrics = Some("[fd00::2]:9091".into());
        apply(&mut state, 1, Op::RegisterNode(lisbon));
        apply(&mut state, 2, Op::RegisterNode(porto));
        apply(
            &mut state,
            3,
            Op::RegisterNode(agent(3, Some("10.0.0.3:7946"))),
        );
        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["sleep".into(), "1000".into()],
                working_dir: None,
            }),
        );
        spec.mode = ServiceMode::Global;
        spec.metrics = Some(warren_api::MetricsEndpoint {
            port: 8080,
            path: "/stats".into(),
        });
        apply(&mut state, 4, Op::PutService(spec.clone()));
        spec.name = ServiceName::new("quiet").unwrap();
        spec.metrics = None;
        apply(&mut state, 5, Op::PutService(spec));

        let all = scrape_targets(&state, None);
        let nodes: Vec<(&str, &str)> = all
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.address.as_str()))
            .collect();
        assert_eq!(
            nodes,
            [("edge-1", "10.0.0.1:9091"), ("edge-2", "[fd00::2]:9091")]
        );
        let workloads: Vec<(String, &str, &str)> = all
            .workloads
            .iter()
            .map(|w| (w.replica.to_string(), w.address.as_str(), w.path.as_str()))
            .collect();
        assert_eq!(workloads.len(), 3, "{workloads:?}");
        assert!(workloads.contains(&("web.0000000000000002".into(), "[fd00::2]:8080", "/stats")));
        assert!(workloads.contains(&("web.0000000000000003".into(), "10.0.0.3:8080", "/stats")));

        let porto = scrape_targets(&state, Some("porto"));
        assert_eq!(porto.nodes.len(), 1);
        assert_eq!(porto.workloads.len(), 1);
        assert_eq!(porto, all.of_site("porto"));

        apply(&mut state, 6, Op::RemoveNode(NodeId(2)));
        assert_eq!(
            scrape_targets(&state, Some("porto")),
            ScrapeTargets::default()
        );
    }
}
