//! Sessions build each message from the node's own part of its view and the parts shared per
//! revision ([`FleetParts`]); an agent that applies what it is sent must hold exactly
//! [`super::node_view`] after every write, whether it speaks entries (wire 7) or whole lists (wire 6),
//! and whether it stayed connected or reconnected with its digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use warren_api::wire::{AgentHello, ControlToAgent, decode};
use warren_api::{
    Availability, MetricsEndpoint, Node, NodeAddresses, NodeId, NodeRole, NodeState, NodeView,
    ProcessSpec, Revision, ServiceMode, ServiceName, ServiceSpec, Workload,
};
use warren_transport::seal::SealKey;

use super::fleet::{FleetCache, FleetParts, Speaks};
use super::{Sent, first_message, next_delta, node_view_scoped, own_part};
use crate::command::{Command, Op};
use crate::keys::ClusterKeys;
use crate::state::ClusterState;

struct Log {
    state: ClusterState,
    index: u64,
}

impl Log {
    fn apply(&mut self, op: Op) {
        self.index += 1;
        let command = Command {
            at_ms: 1_000 + self.index,
            op,
        };
        let outcome = self.state.apply(Revision(self.index), &command);
        outcome.result.expect("applied");
    }
}

fn agent(id: u64, site: &str) -> Node {
    Node {
        id: NodeId(id),
        name: format!("edge-{id}"),
        role: NodeRole::Agent,
        site: site.into(),
        labels: BTreeMap::new(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: Some(format!("serial{id}")),
        addresses: NodeAddresses {
            gossip: Some(format!("10.0.0.{id}:7946")),
            metrics: Some(format!("10.0.0.{id}:9091")),
            ..NodeAddresses::default()
        },
        joined_at_ms: 0,
    }
}

fn service(name: &str, mode: ServiceMode, metrics: bool) -> ServiceSpec {
    let mut spec = ServiceSpec::new(
        ServiceName::new(name).unwrap(),
        Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None,
        }),
    );
    spec.mode = mode;
    spec.metrics = metrics.then(|| MetricsEndpoint {
        port: 9100,
        path: "/metrics".into(),
    });
    spec
}

/// The writes the agents follow: nodes joining in two sites, a global service, a replicated
/// one with a metrics endpoint, scaling, an address change, a node removed, a service removed.
fn writes() -> Vec<Op> {
    let mut ops: Vec<Op> = (1..=5)
        .map(|id| Op::RegisterNode(agent(id, if id % 2 == 0 { "porto" } else { "lisbon" })))
        .collect();
    let mut control = agent(100, "centre");
    control.role = NodeRole::Control;
    ops.push(Op::RegisterNode(control));
    ops.push(Op::PutService(service("dns", ServiceMode::Global, false)));
    let replicated = ServiceMode::Replicated { replicas: 2 };
    ops.push(Op::PutService(service("web", replicated, true)));
    ops.push(Op::RegisterNode(agent(6, "porto")));
    ops.push(Op::ScaleService {
        name: ServiceName::new("web").unwrap(),
        replicas: 4,
    });
    ops.push(Op::SetAddresses {
        node: NodeId(3),
        addresses: NodeAddresses {
            gossip: Some("10.0.1.3:7946".into()),
            ..NodeAddresses::default()
        },
    });
    ops.push(Op::RemoveNode(NodeId(5)));
    ops.push(Op::RemoveService(ServiceName::new("dns").unwrap()));
    // A global service larger than a whole catalogue entry: each site holds its own
    // endpoints and a few from elsewhere, which change as nodes come, go unreachable and
    // come back.
    ops.push(Op::PutService(service("edge", ServiceMode::Global, false)));
    let sites = ["lisbon", "porto", "faro"];
    ops.extend((7..=30).map(|id| Op::RegisterNode(agent(id, sites[id as usize % 3]))));
    ops.push(Op::NodeUnreachable { node: NodeId(8) });
    ops.push(Op::NodeUnreachable { node: NodeId(9) });
    ops.push(Op::RemoveNode(NodeId(10)));
    ops.push(Op::NodeReachable { node: NodeId(8) });
    ops.push(Op::RemoveService(ServiceName::new("edge").unwrap()));
    ops
}

fn own_and_parts(
    cache: &FleetCache,
    state: &ClusterState,
    node: NodeId,
    keys: &ClusterKeys,
) -> (NodeView, Arc<FleetParts>) {
    let parts = cache.parts(state).unwrap();
    let replicas = parts.replicas_of(node).to_vec();
    let own = own_part(state, node, &state.control_addrs, keys, replicas).unwrap();
    (own, parts)
}

fn hello(node: NodeId, held: Option<&NodeView>, wire_version: u16) -> AgentHello {
    AgentHello {
        wire_version,
        node_id: node,
        last_revision: held.map_or(Revision::ZERO, |v| v.revision),
        cache_cluster_id: held.map(|v| v.cluster_id),
        agent_version: "test".into(),
        have: held.map(NodeView::digest),
    }
}

/// Applies an encoded message to what the agent holds.
fn receive(held: &mut Option<NodeView>, payload: &[u8]) {
    match decode::<ControlToAgent>(payload).unwrap() {
        ControlToAgent::Snapshot(view) => *held = Some(*view),
        ControlToAgent::Delta(delta) => held.as_mut().unwrap().apply(&delta).unwrap(),
        ControlToAgent::Heartbeat { .. } => {}
        ControlToAgent::Refused(refusal) => panic!("refused: {refusal:?}"),
    }
}

/// Content equal, revisions aside (a write that does not change a view sends nothing).
fn same_content(held: &NodeView, wanted: &NodeView) -> bool {
    let mut aligned = held.clone();
    aligned.revision = wanted.revision;
    aligned == *wanted
}

fn follow(speaks: Speaks, wire_version: u16, full_mesh_up_to: usize) {
    let keys = ClusterKeys::first(SealKey::generate());
    let cache = FleetCache::full_mesh_up_to(full_mesh_up_to);
    let mut log = Log {
        state: ClusterState::default(),
        index: 0,
    };
    let mut agents: BTreeMap<NodeId, (Option<NodeView>, Option<Sent>)> = BTreeMap::new();
    for op in writes() {
        log.apply(op);
        let state = &log.state;
        for node in state.nodes.keys().copied().collect::<Vec<_>>() {
            if state.nodes[&node].state == NodeState::Removed {
                continue;
            }
            let (held, sent) = agents.entry(node).or_default();
            let (own, parts) = own_and_parts(&cache, state, node, &keys);
            let payload = match sent.as_ref() {
                None => {
                    Some(first_message(&hello(node, None, wire_version), &own, &parts).unwrap())
                }
                Some(sent) => next_delta(&cache, sent, &own, &parts, speaks).unwrap(),
            };
            if let Some(payload) = payload {
                receive(held, &payload);
                *sent = Some(Sent { own, parts });
            } else if let Some(sent) = sent {
                sent.parts = parts;
            }
            let addrs = &state.control_addrs;
            let wanted = node_view_scoped(state, node, addrs, &keys, full_mesh_up_to).unwrap();
            let held_view = held.as_ref().unwrap();
            assert!(
                same_content(held_view, &wanted),
                "node {node} after revision {}:\n{held_view:#?}\nwanted\n{wanted:#?}",
                state.revision
            );
            // Reconnecting with what it holds gets it to the same view.
            let (own, parts) = own_and_parts(&cache, state, node, &keys);
            let again = first_message(&hello(node, Some(held_view), wire_version), &own, &parts);
            let mut reconnected = Some(held_view.clone());
            receive(&mut reconnected, &again.unwrap());
            assert!(same_content(reconnected.as_ref().unwrap(), &wanted));
        }
    }
}

#[test]
fn agents_speaking_entries_hold_their_whole_view() {
    follow(Speaks::Entries, 7, crate::peer_scope::FULL_MESH_PEERS);
}

#[test]
fn agents_speaking_whole_lists_hold_their_whole_view() {
    follow(Speaks::WholeLists, 6, crate::peer_scope::FULL_MESH_PEERS);
}

/// The same with peers scoped by site however small the fleet: peers come into and leave a
/// node's scope as the catalogues change.
#[test]
fn agents_hold_their_whole_view_with_peers_scoped() {
    follow(Speaks::Entries, 7, 0);
    follow(Speaks::WholeLists, 6, 0);
}

/// A write that touches one service sends nothing to the nodes that do not run it, and the
/// shared parts of a revision are built once for every session.
#[test]
fn a_change_to_one_service_reaches_only_its_nodes() {
    let keys = ClusterKeys::first(SealKey::generate());
    let cache = FleetCache::default();
    let mut log = Log {
        state: ClusterState::default(),
        index: 0,
    };
    for id in 1..=4 {
        log.apply(Op::RegisterNode(agent(id, "lisbon")));
    }
    log.apply(Op::PutService(service(
        "web",
        ServiceMode::Replicated { replicas: 1 },
        false,
    )));
    let sent: BTreeMap<NodeId, Sent> = (1..=4)
        .map(|id| {
            let (own, parts) = own_and_parts(&cache, &log.state, NodeId(id), &keys);
            (NodeId(id), Sent { own, parts })
        })
        .collect();
    let mut spec = service("web", ServiceMode::Replicated { replicas: 1 }, false);
    spec.env.insert("LEVEL".into(), "debug".into());
    log.apply(Op::PutService(spec));
    let first = cache.parts(&log.state).unwrap();
    let mut reached = Vec::new();
    for (node, sent) in &sent {
        let (own, parts) = own_and_parts(&cache, &log.state, *node, &keys);
        assert!(Arc::ptr_eq(&parts, &first), "built once per revision");
        if next_delta(&cache, sent, &own, &parts, Speaks::Entries)
            .unwrap()
            .is_some()
        {
            reached.push(*node);
        }
    }
    let runs: Vec<NodeId> = log.state.replicas.values().map(|r| r.node).collect();
    assert_eq!(reached, runs);
}

/// Beyond a full mesh a node holds its site, what its site's catalogue names, the sites whose
/// catalogues name it and the control nodes — and the relation goes both ways, or a WireGuard
/// peer would drop the other's handshakes.
#[test]
fn scoped_peers_go_both_ways_and_cover_the_catalogue() {
    let keys = ClusterKeys::first(SealKey::generate());
    let mut log = Log {
        state: ClusterState::default(),
        index: 0,
    };
    let sites = ["lisbon", "porto", "faro", "braga", "evora"];
    for id in 1..=50 {
        log.apply(Op::RegisterNode(agent(id, sites[id as usize % 5])));
    }
    let mut control = agent(100, "centre");
    control.role = NodeRole::Control;
    log.apply(Op::RegisterNode(control));
    log.apply(Op::PutService(service("edge", ServiceMode::Global, false)));
    let small = ServiceMode::Replicated { replicas: 2 };
    log.apply(Op::PutService(service("db", small, false)));
    let state = &log.state;
    let views: BTreeMap<NodeId, NodeView> = state
        .nodes
        .keys()
        .map(|&id| {
            let view = node_view_scoped(state, id, &[], &keys, 16).unwrap();
            (id, view)
        })
        .collect();
    let holds = |a: NodeId, b: NodeId| views[&a].peers.iter().any(|p| p.node_id == b);
    for (&a, view) in &views {
        for &b in views.keys().filter(|&&b| b != a) {
            assert_eq!(holds(a, b), holds(b, a), "{a} holds {b} but not back");
            let same_site = view.node.site == views[&b].node.site;
            let control = a == NodeId(100) || b == NodeId(100);
            let named = view.catalogue.iter().any(|e| e.node == b);
            if same_site || control || named {
                assert!(holds(a, b), "{a} misses {b}");
            }
        }
    }
    // The two nodes running `db` (in every catalogue: a small service) hold every node; the
    // others far fewer.
    let agents = views.values().filter(|v| v.node.role == NodeRole::Agent);
    let mut counts: Vec<usize> = agents.map(|v| v.peers.len()).collect();
    counts.sort_unstable();
    let median = counts[counts.len() / 2];
    assert!(
        median < 35,
        "the median agent holds {median} of 50 peers: {counts:?}"
    );
    assert_eq!(
        views[&NodeId(100)].peers.len(),
        50,
        "control holds every node"
    );
    // Up to the full mesh, every node holds every other.
    let full = node_view_scoped(state, NodeId(1), &[], &keys, 256).unwrap();
    assert_eq!(full.peers.len(), 50);
}
