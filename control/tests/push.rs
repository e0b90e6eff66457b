//! The desired-state push over QUIC: a joined agent gets its view as a snapshot, then deltas as
//! the state changes, and is refused once removed.

use std::net::SocketAddr;
use std::time::Duration;

use warren_api::wire::{AgentHello, AgentToControl, ControlToAgent, RefusalReason, WIRE_VERSION};
use warren_api::{
    NodeId, NodeRole, NodeView, ProcessSpec, Revision, ServiceMode, ServiceName, ServiceSpec,
    Workload,
};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode, NewNode};
use warren_transport::ca::unix_now_ms;
use warren_transport::join::{JoinParams, Joined, join};
use warren_transport::seal::node_secret_key;
use warren_transport::token::mint;
use warren_transport::{Alpn, Endpoint, EndpointOptions, FramedRecv, FramedSend, MintOptions};

async fn control_and_agent(dir: &tempfile::TempDir) -> (ControlNode, Joined) {
    warren_transport::install_crypto_provider();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let new = NewNode {
        data_dir: dir.path().join("c1"),
        name: "c1".into(),
        site: "central".into(),
        quic_listen: any,
        api_listen: any,
        advertise_quic: None,
        advertise_api: None,
        metrics_listen: None,
        gossip_listen: None,
        advertise_gossip: None,
    };
    let (node, out) = ControlNode::init(new, ControlConfig::default())
        .await
        .unwrap();
    let options = MintOptions {
        role: NodeRole::Agent,
        ttl: None,
        single_use: false,
    };
    let (token, record) = mint(out.fingerprint, options, unix_now_ms());
    node.control()
        .propose(Op::AddToken(record))
        .await
        .unwrap()
        .result
        .unwrap();
    let params = JoinParams {
        role: NodeRole::Agent,
        name: "edge-1".into(),
        site: "lisbon".into(),
        labels: Default::default(),
        advertise: vec![],
    };
    let joined = join(
        node.quic_addr(),
        &token.to_string(),
        params,
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    // An agent's grant carries its node secret key, derived from the cluster key.
    let cluster_key = node.control().cluster_key().unwrap();
    assert_eq!(
        joined.secret_key,
        Some(node_secret_key(cluster_key, joined.node_id))
    );
    (node, joined)
}

async fn open(
    node: &ControlNode,
    joined: &Joined,
    claim: NodeId,
) -> (Endpoint, FramedSend, FramedRecv) {
    let hello = AgentHello {
        wire_version: WIRE_VERSION,
        node_id: claim,
        last_revision: Revision::ZERO,
        cache_cluster_id: None,
        agent_version: "test".into(),
        have: None,
    };
    open_with(node, joined, hello).await
}

async fn open_with(
    node: &ControlNode,
    joined: &Joined,
    hello: AgentHello,
) -> (Endpoint, FramedSend, FramedRecv) {
    let endpoint = Endpoint::client(
        "127.0.0.1:0".parse().unwrap(),
        &joined.credentials,
        EndpointOptions::default(),
    )
    .unwrap();
    let conn = endpoint
        .connect(node.quic_addr(), Alpn::Agent)
        .await
        .unwrap();
    let (mut send, recv) = conn.open_stream().await.unwrap();
    send.send(&AgentToControl::Hello(hello)).await.unwrap();
    (endpoint, send, recv)
}

async fn next(recv: &mut FramedRecv) -> ControlToAgent {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), recv.recv::<ControlToAgent>())
            .await
            .unwrap()
            .unwrap();
        if !matches!(message, ControlToAgent::Heartbeat { .. }) {
            return message;
        }
    }
}

fn spec(replicas: u32) -> ServiceSpec {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "1000".into()],
        working_dir: None,
    });
    let mut spec = ServiceSpec::new(ServiceName::new("web").unwrap(), workload);
    spec.mode = ServiceMode::Replicated { replicas };
    spec
}

/// Snapshot first, then a delta per change that touches the node, then refusal on removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_receives_snapshot_then_deltas_then_removal() {
    let dir = tempfile::tempdir().unwrap();
    let (node, joined) = control_and_agent(&dir).await;
    node.control()
        .propose(Op::PutService(spec(1)))
        .await
        .unwrap()
        .result
        .unwrap();
    let (_endpoint, _send, mut recv) = open(&node, &joined, joined.node_id).await;

    let ControlToAgent::Snapshot(snapshot) = next(&mut recv).await else {
        panic!("expected a snapshot")
    };
    let mut view: NodeView = *snapshot;
    assert_eq!(view.node.id, joined.node_id);
    assert_eq!(view.replicas.len(), 1, "the only agent runs the replica");
    assert!(view.services.contains_key("web"));

    node.control()
        .propose(Op::ScaleService {
            name: ServiceName::new("web").unwrap(),
            replicas: 2,
        })
        .await
        .unwrap();
    let ControlToAgent::Delta(delta) = next(&mut recv).await else {
        panic!("expected a delta")
    };
    view.apply(&delta).unwrap();
    assert_eq!(view.replicas.len(), 2);
    assert_eq!(view.services["web"].version, 2);

    node.control()
        .propose(Op::RemoveNode(joined.node_id))
        .await
        .unwrap()
        .result
        .unwrap();
    match next(&mut recv).await {
        ControlToAgent::Refused(refusal) => assert_eq!(refusal.reason, RefusalReason::NodeRemoved),
        other => panic!("expected a refusal, got {other:?}"),
    }
    node.shutdown().await;
}

/// An agent cannot ask for another node's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_for_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, joined) = control_and_agent(&dir).await;
    let (_endpoint, _send, mut recv) = open(&node, &joined, NodeId(joined.node_id.0 ^ 1)).await;
    match next(&mut recv).await {
        ControlToAgent::Refused(refusal) => {
            assert_eq!(refusal.reason, RefusalReason::NodeIdMismatch)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    node.shutdown().await;
}

fn resume_hello(view: &NodeView) -> AgentHello {
    AgentHello {
        wire_version: WIRE_VERSION,
        node_id: view.node.id,
        last_revision: view.revision,
        cache_cluster_id: Some(view.cluster_id),
        agent_version: "test".into(),
        have: Some(view.digest()),
    }
}

async fn first(recv: &mut FramedRecv) -> ControlToAgent {
    tokio::time::timeout(Duration::from_secs(10), recv.recv::<ControlToAgent>())
        .await
        .unwrap()
        .unwrap()
}

/// A reconnecting agent resumes from its cached view: a delta carrying only what changed
/// (DESIGN §4: "delta, not snapshot"), a heartbeat when nothing did, and an agent that has
/// seen a later revision than this control node is not sent back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_with_a_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (node, joined) = control_and_agent(&dir).await;
    let propose = |op: Op| async {
        node.control().propose(op).await.unwrap().result.unwrap();
    };
    propose(Op::PutService(spec(1))).await;
    let cached: NodeView = {
        let (_endpoint, _send, mut recv) = open(&node, &joined, joined.node_id).await;
        let ControlToAgent::Snapshot(view) = next(&mut recv).await else {
            panic!("expected a snapshot")
        };
        *view
    };

    // Cut off: the service scales, another service arrives.
    propose(Op::ScaleService {
        name: ServiceName::new("web").unwrap(),
        replicas: 2,
    })
    .await;
    let mut api = spec(1);
    api.name = ServiceName::new("api").unwrap();
    propose(Op::PutService(api)).await;

    let (_endpoint, _send, mut recv) = open_with(&node, &joined, resume_hello(&cached)).await;
    let ControlToAgent::Delta(delta) = first(&mut recv).await else {
        panic!("expected a delta")
    };
    assert_eq!(delta.from, cached.revision);
    let mut resumed = cached.clone();
    resumed.apply(&delta).unwrap();
    let fresh = {
        let (_endpoint, _send, mut recv) = open(&node, &joined, joined.node_id).await;
        let ControlToAgent::Snapshot(view) = next(&mut recv).await else {
            panic!("expected a snapshot")
        };
        *view
    };
    assert_eq!(resumed, fresh, "the delta reaches the current view");
    // Only what changed travels: the node entry and the control addresses did not.
    use warren_api::ViewChange;
    assert!(
        !delta.changes.iter().any(|c| matches!(
            c,
            ViewChange::SetNode(_) | ViewChange::SetControlAddrs(_) | ViewChange::SetPeers(_)
        )),
        "{delta:?}"
    );
    assert_eq!(delta.changes.len(), 5, "2 services, 3 replicas: {delta:?}");

    // Up to date: a heartbeat, nothing else.
    let (_endpoint, _send, mut recv) = open_with(&node, &joined, resume_hello(&fresh)).await;
    assert!(
        matches!(first(&mut recv).await, ControlToAgent::Heartbeat { revision } if revision == fresh.revision)
    );

    // Ahead of this control node (it saw a later revision elsewhere): heartbeats, then sent
    // elsewhere — never an older view.
    let mut ahead = fresh.clone();
    ahead.revision = Revision(fresh.revision.0 + 1_000);
    let (_endpoint, _send, mut recv) = open_with(&node, &joined, resume_hello(&ahead)).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), recv.recv::<ControlToAgent>())
            .await
            .unwrap()
            .unwrap()
        {
            ControlToAgent::Heartbeat { revision } => assert_eq!(revision, ahead.revision),
            ControlToAgent::Refused(refusal) => {
                assert!(matches!(refusal.reason, RefusalReason::Overloaded { .. }));
                break;
            }
            other => panic!("an agent ahead got {other:?}"),
        }
    }
    node.shutdown().await;
}
