//! Gossip liveness on the control side: one control node runs a mesh, two standalone meshes
//! stand in for agents (registered nodes that never open an agent link). `GET /v1/nodes`
//! shows both alive by gossip; when one leaves, the API shows it dead and the leader marks it
//! unreachable long before `unreachable_after` (60 s here, so only gossip can explain it);
//! when it comes back in gossip only (a new generation, no agent link), it stays unreachable:
//! gossip can hasten that verdict, never undo it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;
use warren_api::rest::NodeInfo;
use warren_api::{Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_mesh::{Mesh, MeshConfig, MeshMetrics, MeshTimers};
use warren_tests::{api_get, propose, start_control_gossiping};

const AGENT_A: NodeId = NodeId(0xa0a0);
const AGENT_B: NodeId = NodeId(0xb0b0);

/// A mesh acting as agent `node_id`, seeded with the control node's gossip address.
async fn agent_mesh(
    control: &ControlNode,
    fingerprint: &[u8; 32],
    node_id: NodeId,
    listen_addr: SocketAddr,
) -> Mesh {
    let keys = control
        .control()
        .cluster_keys()
        .expect("init holds the key");
    let config = MeshConfig {
        node_id,
        name: format!("agent-{node_id}"),
        role: NodeRole::Agent,
        site: "edge".into(),
        cluster_id: warren_control::gossip::cluster_id(fingerprint),
        listen_addr,
        advertise_addr: None,
        seeds: vec![control.gossip_addr().expect("control runs a mesh")],
        keyring: warren_control::gossip::keyring(&keys, 1).expect("generation 1"),
        timers: MeshTimers::for_tests(),
        fault: None,
    };
    Mesh::start(config, MeshMetrics::unregistered())
        .await
        .expect("agent mesh starts")
}

fn agent_node(id: NodeId, gossip: SocketAddr) -> Node {
    Node {
        id,
        name: format!("agent-{id}"),
        role: NodeRole::Agent,
        site: "edge".into(),
        labels: Default::default(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: None,
        addresses: NodeAddresses {
            gossip: Some(gossip.to_string()),
            ..NodeAddresses::default()
        },
        joined_at_ms: 0,
    }
}

/// Polls `GET /v1/nodes` until `cond` holds, for up to `timeout`.
async fn wait_nodes(
    control: &ControlNode,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&[NodeInfo]) -> bool,
) -> Vec<NodeInfo> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let nodes: Vec<NodeInfo> = api_get(control, "/nodes").await;
        if cond(&nodes) {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {nodes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn gossip_of(nodes: &[NodeInfo], id: NodeId) -> Option<&str> {
    let info = nodes.iter().find(|n| n.node.id == id)?;
    info.gossip.as_ref().map(|g| g.liveness.as_str())
}

fn state_of(nodes: &[NodeInfo], id: NodeId) -> Option<NodeState> {
    nodes.iter().find(|n| n.node.id == id).map(|n| n.node.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_death_makes_an_agent_unreachable_before_the_link_grace() {
    warren_tests::init();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ControlConfig {
        unreachable_after: Duration::from_secs(60),
        mesh_timers: MeshTimers::for_tests(),
        ..ControlConfig::default()
    };
    let (control, fingerprint) = start_control_gossiping(dir.path(), config).await;
    let own_id = control.settings().node_id;
    let control_gossip = control.gossip_addr().expect("control runs a mesh");
    assert_eq!(
        control.settings().advertise_gossip,
        Some(control_gossip),
        "the registry gets the real gossip port"
    );

    info!("--- two agent meshes join");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mesh_a = agent_mesh(&control, &fingerprint, AGENT_A, any).await;
    let mesh_b = agent_mesh(&control, &fingerprint, AGENT_B, any).await;
    let addr_a = mesh_a.local_addr();
    propose(&control, Op::RegisterNode(agent_node(AGENT_A, addr_a))).await;
    propose(
        &control,
        Op::RegisterNode(agent_node(AGENT_B, mesh_b.local_addr())),
    )
    .await;
    let nodes = wait_nodes(
        &control,
        "both agents alive by gossip",
        Duration::from_secs(10),
        |n| gossip_of(n, AGENT_A) == Some("alive") && gossip_of(n, AGENT_B) == Some("alive"),
    )
    .await;
    let own = nodes.iter().find(|n| n.node.id == own_id).expect("self");
    assert_eq!(own.node.addresses.gossip, Some(control_gossip.to_string()));
    assert_eq!(gossip_of(&nodes, own_id), Some("alive"));
    let metrics = control.metrics().render();
    assert!(
        metrics.contains("warren_mesh_members{liveness=\"alive\"} 3"),
        "mesh metrics in the control node's registry:\n{metrics}"
    );

    info!("--- agent a leaves the mesh");
    let left = Instant::now();
    mesh_a.shutdown().await;
    wait_nodes(
        &control,
        "agent a dead by gossip",
        Duration::from_secs(10),
        |n| gossip_of(n, AGENT_A) == Some("dead"),
    )
    .await;
    let nodes = wait_nodes(
        &control,
        "agent a unreachable",
        Duration::from_secs(20),
        |n| matches!(state_of(n, AGENT_A), Some(NodeState::Unreachable { .. })),
    )
    .await;
    let took = left.elapsed();
    info!(?took, "agent a unreachable");
    assert!(
        took < Duration::from_secs(30),
        "unreachable after {took:?}: gossip should beat the 60 s link grace"
    );
    assert_eq!(state_of(&nodes, AGENT_B), Some(NodeState::Ready));
    assert_eq!(gossip_of(&nodes, AGENT_B), Some("alive"));

    info!("--- agent a comes back in gossip only (a new generation, no agent link)");
    let mesh_a = agent_mesh(&control, &fingerprint, AGENT_A, addr_a).await;
    wait_nodes(
        &control,
        "agent a alive by gossip again",
        Duration::from_secs(20),
        |n| gossip_of(n, AGENT_A) == Some("alive"),
    )
    .await;
    // Gossip's word is hearsay (any key holder can say it): only the agent's own link brings
    // it back, so it stays unreachable.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes: Vec<NodeInfo> = api_get(&control, "/nodes").await;
    assert!(
        matches!(
            state_of(&nodes, AGENT_A),
            Some(NodeState::Unreachable { .. })
        ),
        "gossip alone brought agent a back: {:?}",
        state_of(&nodes, AGENT_A)
    );

    mesh_a.shutdown().await;
    mesh_b.shutdown().await;
    control.shutdown().await;
}
