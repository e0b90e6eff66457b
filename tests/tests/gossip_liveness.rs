//! Gossip liveness on the control side: one control node runs a mesh, two standalone meshes
//! stand in for agents (registered nodes that never open an agent link). `GET /v1/nodes`
//! shows both alive by gossip; when one leaves, the API shows it dead and the leader marks it
//! unreachable long before `unreachable_after` (60 s here, so only gossip can explain it);
//! when it comes back in gossip only (a new generation, no agent link), it stays unreachable:
//! gossip can hasten that verdict, never undo it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;
use warren_api::clock::unix_now;
use warren_api::rest::NodeInfo;
use warren_api::{Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_mesh::{MemberConfig, Mesh, MeshConfig, MeshMetrics, MeshTimers};
use warren_tests::{api_get, propose, start_control_gossiping};
use warren_transport::current::CurrentCredentials;
use warren_transport::{
    CertRole, CertSubject, ClusterCa, Credentials, GossipSigner, MemberCertificates, TrustList,
    Validity,
};

const AGENT_A: NodeId = NodeId(0xa0a0);
const AGENT_B: NodeId = NodeId(0xb0b0);

/// Agent credentials for `node_id`, issued by the control node's cluster CA (as a join would).
async fn agent_credentials(control: &ControlNode, node_id: NodeId) -> Credentials {
    let state = control.control().read_stale().await;
    let info = state.cluster.as_ref().expect("cluster initialised");
    let keys = control
        .control()
        .cluster_keys()
        .expect("init holds the key");
    let ca = ClusterCa::from_sealed(
        &info.ca_cert_der,
        &info.ca_key_sealed,
        keys.get(state.key_generation()).expect("key in force"),
    )
    .expect("open the cluster CA");
    ca.issue_credentials(
        &CertSubject::Node {
            node_id,
            role: CertRole::Agent,
        },
        Validity::starting_at(unix_now(), Duration::from_secs(3600)),
    )
    .expect("issue agent credentials")
}

/// A mesh gossiping as agent `node_id` and signing with `creds` (its own, or another agent's
/// for an impostor), seeded with the control node's gossip address.
async fn agent_mesh(
    control: &ControlNode,
    fingerprint: &[u8; 32],
    (node_id, creds): (NodeId, &Credentials),
    listen_addr: SocketAddr,
) -> Mesh {
    let keys = control
        .control()
        .cluster_keys()
        .expect("init holds the key");
    let members = MemberCertificates::new(
        creds.ca_cert_der(),
        &TrustList::default(),
        Duration::from_secs(3600),
    )
    .expect("CA");
    let current = CurrentCredentials::new(creds).expect("credentials");
    let config = MeshConfig {
        member: MemberConfig {
            node_id,
            name: format!("agent-{node_id}"),
            role: NodeRole::Agent,
            site: "edge".into(),
            // As a real agent does: its site's mesh, which control runs once an agent of the
            // site is registered.
            scope: "edge".into(),
            cluster_id: warren_control::gossip::cluster_id(fingerprint),
            advertise_addr: None,
            seeds: vec![control.gossip_addr().expect("control runs a mesh")],
            identity: warren_control::gossip::identity(GossipSigner::new(current), members),
            timers: MeshTimers::for_tests(),
        },
        listen_addr,
        keyring: warren_control::gossip::keyring(&keys, 1).expect("generation 1"),
        fault: None,
    };
    Mesh::start(config, MeshMetrics::unregistered())
        .await
        .expect("agent mesh starts")
}

fn agent_node(id: NodeId, gossip: SocketAddr, creds: &Credentials) -> Node {
    Node {
        id,
        name: format!("agent-{id}"),
        role: NodeRole::Agent,
        site: "edge".into(),
        labels: Default::default(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: Some(creds.identity().serial.clone()),
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

/// A control node with a mesh on test timers and a 60 s link grace, so that only gossip can
/// explain an agent turning unreachable within the tests' timeouts.
async fn start_control(dir: &tempfile::TempDir) -> (ControlNode, [u8; 32]) {
    let config = ControlConfig {
        unreachable_after: Duration::from_secs(60),
        mesh_timers: MeshTimers::for_tests(),
        ..ControlConfig::default()
    };
    start_control_gossiping(dir.path(), config).await
}

fn state_of(nodes: &[NodeInfo], id: NodeId) -> Option<NodeState> {
    nodes.iter().find(|n| n.node.id == id).map(|n| n.node.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_death_makes_an_agent_unreachable_before_the_link_grace() {
    warren_tests::init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (control, fingerprint) = start_control(&dir).await;
    let own_id = control.settings().node_id;
    let control_gossip = control.gossip_addr().expect("control runs a mesh");
    assert_eq!(
        control.settings().advertise_gossip,
        Some(control_gossip),
        "the registry gets the real gossip port"
    );

    info!("--- two agent meshes join");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let creds_a = agent_credentials(&control, AGENT_A).await;
    let creds_b = agent_credentials(&control, AGENT_B).await;
    let mesh_a = agent_mesh(&control, &fingerprint, (AGENT_A, &creds_a), any).await;
    let mesh_b = agent_mesh(&control, &fingerprint, (AGENT_B, &creds_b), any).await;
    let addr_a = mesh_a.local_addr();
    propose(
        &control,
        Op::RegisterNode(agent_node(AGENT_A, addr_a, &creds_a)),
    )
    .await;
    propose(
        &control,
        Op::RegisterNode(agent_node(AGENT_B, mesh_b.local_addr(), &creds_b)),
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
        metrics
            .lines()
            .any(|l| l.starts_with("warren_mesh_members{liveness=\"alive\",")
                && l.contains("site=\"")
                && l.ends_with(" 3")),
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
    let mesh_a = agent_mesh(&control, &fingerprint, (AGENT_A, &creds_a), addr_a).await;
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

/// The red-team finding: agent a, holding the gossip key and its own certificate, gossips as
/// agent b. While b lives, the control node keeps b's own state; once b is killed, b is dead
/// by gossip and unreachable within seconds although the impostor keeps heartbeating as b,
/// and it stays so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_gossiping_as_another_cannot_keep_it_alive() {
    warren_tests::init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (control, fingerprint) = start_control(&dir).await;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let creds_a = agent_credentials(&control, AGENT_A).await;
    let creds_b = agent_credentials(&control, AGENT_B).await;
    let mesh_a = agent_mesh(&control, &fingerprint, (AGENT_A, &creds_a), any).await;
    let mesh_b = agent_mesh(&control, &fingerprint, (AGENT_B, &creds_b), any).await;
    for (id, mesh, creds) in [(AGENT_A, &mesh_a, &creds_a), (AGENT_B, &mesh_b, &creds_b)] {
        propose(
            &control,
            Op::RegisterNode(agent_node(id, mesh.local_addr(), creds)),
        )
        .await;
    }
    wait_nodes(
        &control,
        "both agents alive by gossip",
        Duration::from_secs(10),
        |n| gossip_of(n, AGENT_A) == Some("alive") && gossip_of(n, AGENT_B) == Some("alive"),
    )
    .await;

    info!("--- agent a starts gossiping as agent b, with a's certificate");
    let impostor = agent_mesh(&control, &fingerprint, (AGENT_B, &creds_a), any).await;
    impostor
        .set_endpoint("api", "192.0.2.66:443")
        .await
        .expect("impostor publishes");
    let refused = || {
        let metrics = control.metrics().render();
        metrics.lines().any(|l| {
            l.starts_with("warren_mesh_member_states_total{outcome=\"credential\",")
                && !l.ends_with(" 0")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused() {
        assert!(
            Instant::now() < deadline,
            "the impostor's state never reached control"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let members = control.control().gossip_members().expect("mesh runs");
    let b = members
        .iter()
        .find(|m| m.node_id == AGENT_B)
        .expect("b listed");
    assert_eq!(
        b.generation,
        mesh_b_generation(&mesh_b).await,
        "control follows b's own generation"
    );
    assert!(
        !b.endpoints.contains_key("api"),
        "impostor's endpoint accepted: {b:?}"
    );

    info!("--- agent b is killed; the impostor keeps heartbeating as b");
    let killed = Instant::now();
    mesh_b.shutdown().await;
    wait_nodes(
        &control,
        "agent b unreachable despite the impostor",
        Duration::from_secs(20),
        |n| {
            gossip_of(n, AGENT_B) == Some("dead")
                && matches!(state_of(n, AGENT_B), Some(NodeState::Unreachable { .. }))
        },
    )
    .await;
    info!(took = ?killed.elapsed(), "agent b unreachable");
    for _ in 0..3 {
        tokio::time::sleep(MeshTimers::for_tests().attest_timeout).await;
        let nodes: Vec<NodeInfo> = api_get(&control, "/nodes").await;
        assert_eq!(
            gossip_of(&nodes, AGENT_B),
            Some("dead"),
            "the impostor revived b"
        );
    }
    assert_eq!(
        gossip_of(&api_get::<Vec<NodeInfo>>(&control, "/nodes").await, AGENT_A),
        Some("alive")
    );

    impostor.shutdown().await;
    mesh_a.shutdown().await;
    control.shutdown().await;
}

/// The generation a mesh gossips under, as it sees itself.
async fn mesh_b_generation(mesh: &Mesh) -> u64 {
    mesh.members()
        .await
        .into_iter()
        .find(|m| m.node_id == mesh.node_id())
        .expect("a mesh lists itself")
        .generation
}
