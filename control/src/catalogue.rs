//! What every node's view carries about the rest of the cluster: the service catalogue (each
//! running replica's address and ports, for the agents' DNS; of a large service only the
//! node's site's and a few more, [`scoped_to_site`]) and the mesh peers (other nodes' gossip
//! endpoints, for the mesh's seeds, and their WireGuard keys, overlay addresses and endpoints;
//! which nodes a node holds is [`crate::peer_scope`]'s). Pure functions of the state, so every control node builds the same view.
//!
//! A replica's catalogue address is the IP of its node's gossip endpoint: every agent can reach
//! it, mesh or not. An agent whose WireGuard mesh is up answers DNS with the node's overlay
//! address instead (from the peers list). A node that advertised no gossip endpoint is left
//! out of the catalogue, and out of the peers unless it holds a WireGuard key.
//!
//! Also what Prometheus scrapes ([`scrape_targets`]): every node's registered metrics
//! address, and every replica whose service declares a metrics endpoint, at its node's
//! catalogue IP. Agents get their own site's in their views, for discovery while cut off.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use warren_api::scrape::{NodeTarget, ScrapeTargets, WorkloadTarget};
use warren_api::wire::{PeerInfo, ServiceEndpoint};
use warren_api::{DesiredState, Node, NodeId, NodeState, ServiceName};

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

/// A service with up to this many endpoints is in every node's catalogue whole.
pub const WHOLE_SERVICE_ENDPOINTS: usize = 16;

/// How many endpoints of a larger service a node's catalogue holds from outside its site.
pub const FAR_ENDPOINTS: usize = 8;

/// What a node in `site` finds in its view's catalogue: `all` (a [`catalogue`]) scoped to the
/// site, as indices into `all`, in order. A service with up to [`WHOLE_SERVICE_ENDPOINTS`]
/// endpoints is there whole; of a larger one (a global service, a service scaled out over the
/// fleet) the site's own endpoints and [`FAR_ENDPOINTS`] from elsewhere: those on ready nodes
/// first, then by a hash of the site and the replica, so that each site leans on its own few
/// and the sites together on all of them. Without this every view held every replica of a
/// global service: a global create sent every agent the whole fleet (O(fleet²) bytes).
/// `node_of` gives an endpoint's node's site and whether it is ready.
pub fn scoped_to_site<'a>(
    all: &[ServiceEndpoint],
    node_of: impl Fn(NodeId) -> Option<(&'a str, bool)>,
    site: &str,
) -> Vec<usize> {
    let mut by_service: BTreeMap<&ServiceName, Vec<usize>> = BTreeMap::new();
    for (index, endpoint) in all.iter().enumerate() {
        by_service.entry(&endpoint.service).or_default().push(index);
    }
    let mut kept = Vec::with_capacity(all.len().min(1_024));
    for indices in by_service.into_values() {
        if indices.len() <= WHOLE_SERVICE_ENDPOINTS {
            kept.extend(indices);
            continue;
        }
        let mut far = Vec::new();
        for index in indices {
            match node_of(all[index].node) {
                Some((node_site, _)) if node_site == site => kept.push(index),
                Some((_, ready)) => far.push((!ready, far_rank(site, &all[index]), index)),
                None => far.push((true, far_rank(site, &all[index]), index)),
            }
        }
        if far.len() > FAR_ENDPOINTS {
            far.select_nth_unstable(FAR_ENDPOINTS);
            far.truncate(FAR_ENDPOINTS);
        }
        kept.extend(far.into_iter().map(|(_, _, index)| index));
    }
    kept.sort_unstable();
    kept
}

/// Where `endpoint` ranks among the far endpoints a node of `site` might hold.
fn far_rank(site: &str, endpoint: &ServiceEndpoint) -> u64 {
    warren_api::service::mix64(warren_api::service::stable_hash(&(site, &endpoint.replica)))
}

/// A node's site and whether it is ready, as [`scoped_to_site`] takes them.
fn site_and_readiness<'a>(
    state: &'a ClusterState,
) -> impl Fn(NodeId) -> Option<(&'a str, bool)> + 'a {
    |id: NodeId| {
        state
            .nodes
            .get(&id)
            .map(|n| (n.site.as_str(), n.state == NodeState::Ready))
    }
}

/// What the nodes of each site (every site with a node, in order) hold of `all` (a
/// [`catalogue`]): [`scoped_to_site`].
pub fn scoped_by_site<'a>(
    state: &'a ClusterState,
    all: &[ServiceEndpoint],
) -> Vec<(&'a str, Vec<usize>)> {
    let sites: BTreeSet<&str> = state.nodes.values().map(|n| n.site.as_str()).collect();
    let node_of = site_and_readiness(state);
    sites
        .into_iter()
        .map(|site| (site, scoped_to_site(all, &node_of, site)))
        .collect()
}

/// [`catalogue`] as a node of `site` holds it ([`scoped_to_site`]).
pub fn catalogue_for_site(state: &ClusterState, site: &str) -> Vec<ServiceEndpoint> {
    let all = catalogue(state);
    scoped_to_site(&all, site_and_readiness(state), site)
        .into_iter()
        .map(|index| all[index].clone())
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

    fn endpoint(service: &str, node: u64) -> ServiceEndpoint {
        let service = ServiceName::new(service).unwrap();
        ServiceEndpoint {
            replica: warren_api::ReplicaId {
                service: service.clone(),
                key: warren_api::ReplicaKey::Node(NodeId(node)),
            },
            service,
            node: NodeId(node),
            address: format!("10.0.0.{node}"),
            ports: Vec::new(),
        }
    }

    /// 30 nodes in three sites of ten: `edge` runs on all, `db` on four.
    fn fleet() -> Vec<ServiceEndpoint> {
        let mut all: Vec<ServiceEndpoint> = (0..30).map(|n| endpoint("edge", n)).collect();
        all.extend([0, 10, 20, 21].map(|n| endpoint("db", n)));
        all.sort_by(|a, b| a.replica.cmp(&b.replica));
        all
    }

    fn site_of(node: NodeId) -> &'static str {
        ["lisbon", "porto", "faro"][node.0 as usize / 10]
    }

    /// A small service is whole in every site's catalogue; a large one holds the site's own
    /// endpoints and a few from elsewhere, ready nodes first.
    #[test]
    fn a_site_holds_its_own_endpoints_and_a_few_from_elsewhere() {
        let all = fleet();
        let ready = |_: NodeId| true;
        for site in ["lisbon", "porto", "faro"] {
            let kept: Vec<&ServiceEndpoint> =
                scoped_to_site(&all, |n| Some((site_of(n), ready(n))), site)
                    .into_iter()
                    .map(|i| &all[i])
                    .collect();
            assert!(
                kept.windows(2).all(|w| w[0].replica < w[1].replica),
                "in order"
            );
            let db = kept.iter().filter(|e| e.service.as_str() == "db").count();
            assert_eq!(db, 4, "a small service is whole");
            let (own, far): (Vec<&&ServiceEndpoint>, Vec<&&ServiceEndpoint>) = kept
                .iter()
                .filter(|e| e.service.as_str() == "edge")
                .partition(|e| site_of(e.node) == site);
            assert_eq!(own.len(), 10, "every endpoint of the site");
            assert_eq!(far.len(), FAR_ENDPOINTS, "a few from elsewhere");
        }
        // Of porto's and faro's twenty, only five are on ready nodes: lisbon holds those five.
        let unready = |n: NodeId| n.0 >= 10 && !n.0.is_multiple_of(4);
        let kept = scoped_to_site(&all, |n| Some((site_of(n), !unready(n))), "lisbon");
        let far_ready = kept
            .iter()
            .map(|&i| &all[i])
            .filter(|e| e.service.as_str() == "edge" && site_of(e.node) != "lisbon")
            .filter(|e| !unready(e.node))
            .count();
        assert_eq!(far_ready, 5);
        // The same inputs give the same catalogue: every control node builds the same view.
        let again = scoped_to_site(&all, |n| Some((site_of(n), !unready(n))), "lisbon");
        assert_eq!(kept, again);
    }
}
