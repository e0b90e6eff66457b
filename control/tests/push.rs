//! The desired-state push over QUIC: a joined agent gets its view as a snapshot, then deltas as
//! the state changes, and is refused once removed.

mod common;

use std::time::Duration;

use warren_api::wire::{AgentHello, AgentToControl, ControlToAgent, RefusalReason, WIRE_VERSION};
use warren_api::{
    NodeId, NodeView, ProcessSpec, Revision, ServiceMode, ServiceName, ServiceSpec, Workload,
};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode, NewNode};
use warren_transport::join::Joined;
use warren_transport::seal::node_secret_key;
use warren_transport::{Endpoint, FramedRecv, FramedSend};

async fn control_and_agent(dir: &tempfile::TempDir) -> (ControlNode, Joined) {
    warren_transport::install_crypto_provider();
    let new = NewNode::on_loopback(dir.path().join("c1"), "c1", "central");
    let (node, _) = ControlNode::init(new, ControlConfig::default())
        .await
        .unwrap();
    let joined = common::join_agent(&node).await;
    // An agent's grant carries its node secret key, derived from the cluster key.
    let keys = node.control().cluster_keys().unwrap();
    assert_eq!(
        joined.secret_key,
        Some(node_secret_key(keys.root(), joined.node_id))
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
    common::open_push(node, joined, hello).await
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

/// An agent of the release before specs said who a workload runs as (wire version 2) gets one
/// clear refusal, not views it would misread and run as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_an_older_wire_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, joined) = control_and_agent(&dir).await;
    let hello = AgentHello {
        wire_version: 2,
        node_id: joined.node_id,
        last_revision: Revision::ZERO,
        cache_cluster_id: None,
        agent_version: "older".into(),
        have: None,
    };
    let (_endpoint, _send, mut recv) = common::open_push(&node, &joined, hello).await;
    match next(&mut recv).await {
        ControlToAgent::Refused(refusal) => {
            assert_eq!(
                refusal.reason,
                RefusalReason::WireVersion {
                    supported: WIRE_VERSION
                }
            );
            assert_eq!(
                refusal.message,
                format!("agent speaks wire version 2, this control node 6 to {WIRE_VERSION}")
            );
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
/// (docs/design.md §4: "delta, not snapshot"), a heartbeat when nothing did, and an agent that has
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

    let (_endpoint, _send, mut recv) =
        common::open_push(&node, &joined, resume_hello(&cached)).await;
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
    let (_endpoint, _send, mut recv) =
        common::open_push(&node, &joined, resume_hello(&fresh)).await;
    assert!(
        matches!(first(&mut recv).await, ControlToAgent::Heartbeat { revision } if revision == fresh.revision)
    );

    // Ahead of this control node (it saw a later revision elsewhere): heartbeats, then sent
    // elsewhere — never an older view.
    let mut ahead = fresh.clone();
    ahead.revision = Revision(fresh.revision.0 + 1_000);
    let (_endpoint, _send, mut recv) =
        common::open_push(&node, &joined, resume_hello(&ahead)).await;
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

fn big_event(at_ms: u64, message_bytes: usize) -> warren_api::Event {
    warren_api::Event {
        at_ms,
        replica: None,
        kind: warren_api::EventKind::StartFailed,
        message: "é".repeat(message_bytes / 2),
    }
}

fn report_of(node: NodeId, events: Vec<warren_api::Event>) -> AgentToControl {
    AgentToControl::Status(warren_api::wire::StatusReport {
        node_id: node,
        revision: Revision::ZERO,
        replicas: vec![],
        events,
        events_dropped: u64::MAX,
    })
}

/// One authenticated agent sends reports of huge events (the attack took a control node from
/// 20 to 501 MiB): control keeps each event's text to a bound and the node's event book to a
/// byte budget, counts what it cut, lists agents without their events, and closes the stream
/// of an agent that sends a frame larger than any report needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_make_control_hold_large_events() {
    use warren_api::wire::{MAX_AGENT_MESSAGE_BYTES, MAX_EVENT_TEXT_BYTES};
    use warren_control::status::MAX_EVENT_BOOK_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let (node, joined) = control_and_agent(&dir).await;
    let (_endpoint, mut send, mut recv) = open(&node, &joined, joined.node_id).await;
    let _ = first(&mut recv).await;
    let limited = |what: &str| {
        node.metrics()
            .agent_input_limited_total
            .with_label_values(&[what])
            .get()
    };
    let book = || {
        node.control()
            .agents()
            .snapshot(true)
            .into_iter()
            .find(|r| r.node_id == joined.node_id)
            .unwrap()
    };

    // --- three reports of ten 300 kB events each (3 MB frames, under the frame limit)
    for round in 0..3u64 {
        let events = (0..10)
            .map(|i| big_event(round * 10 + i, 300_000))
            .collect();
        send.send(&report_of(joined.node_id, events)).await.unwrap();
    }
    for _ in 0..200 {
        if limited("event_text") == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limited("event_text"), 30);
    let held = book();
    assert_eq!(held.events.len(), 30);
    for event in &held.events {
        assert!(
            event.message.len() <= MAX_EVENT_TEXT_BYTES,
            "{}",
            event.message.len()
        );
        assert!(event.message.ends_with('…'));
    }
    // The agent's count cannot overflow control's.
    assert_eq!(held.events_dropped, u64::MAX);

    // --- many events of the largest allowed text: the book stays within its byte budget
    let events = (0..250).map(|i| big_event(1_000 + i, 2_000)).collect();
    send.send(&report_of(joined.node_id, events)).await.unwrap();
    for _ in 0..200 {
        if book().events.back().is_some_and(|e| e.at_ms == 1_249) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = book();
    let bytes: usize = held
        .events
        .iter()
        .map(warren_control::status::event_bytes)
        .sum();
    assert!(bytes <= MAX_EVENT_BOOK_BYTES, "{bytes}");
    assert!(held.events.len() < 250);
    assert!(limited("event_book_bytes") > 0);
    // What the leader's liveness check reads every second carries no events.
    let links = node.control().agents().snapshot(false);
    assert!(
        links
            .iter()
            .all(|r| r.events.is_empty() && r.replicas.is_empty())
    );

    // --- a frame over the agent limit ends the stream and is counted
    let oversized = vec![big_event(2_000, MAX_AGENT_MESSAGE_BYTES + 1024)];
    let _ = send.send(&report_of(joined.node_id, oversized)).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if recv.recv::<ControlToAgent>().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived an oversized frame");
    assert_eq!(limited("oversized_frame"), 1);
    node.shutdown().await;
}

/// An agent that changes its WireGuard declaration in a loop gets a burst of registry writes,
/// then its declarations are dropped and counted; one the registry holds already costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_flood_the_registry_with_wireguard_declarations() {
    use warren_api::wire::MeshDeclaration;
    use warren_control::declarations::BURST;
    let dir = tempfile::tempdir().unwrap();
    let (node, joined) = control_and_agent(&dir).await;
    let (_endpoint, mut send, mut recv) = open(&node, &joined, joined.node_id).await;
    let _ = first(&mut recv).await;
    let declare = |port: u16| {
        AgentToControl::Mesh(MeshDeclaration {
            public_key: [7; 32],
            next_public_key: None,
            endpoint: Some(format!("192.0.2.1:{port}")),
        })
    };
    let dropped = || {
        node.metrics()
            .agent_input_limited_total
            .with_label_values(&["mesh_declaration_rate"])
            .get()
    };
    let registered_port = || async {
        let state = node.control().read_stale().await;
        let endpoint = state.mesh.get(&joined.node_id)?.endpoint.clone()?;
        endpoint.rsplit(':').next()?.parse::<u16>().ok()
    };
    // One at a time, so each write lands before the next declaration is compared with it.
    let total = u16::try_from(BURST).unwrap() + 5;
    for port in 1..=total {
        send.send(&declare(port)).await.unwrap();
        for _ in 0..200 {
            if registered_port().await == Some(port) || dropped() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for _ in 0..200 {
        if dropped() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        dropped(),
        5,
        "declarations past the burst are dropped and counted"
    );
    assert_eq!(
        registered_port().await,
        Some(u16::try_from(BURST).unwrap()),
        "the registry holds the last declaration within the burst"
    );
    // Declaring what the registry holds is free: nothing more is dropped.
    send.send(&declare(u16::try_from(BURST).unwrap()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dropped(), 5);
}
