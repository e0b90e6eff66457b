//! [`figures`] on a small state and book, and the series [`FleetSeries`] leaves.

use std::collections::VecDeque;

use prometheus::{Encoder, Registry, TextEncoder};
use warren_api::{
    Availability, Node, ProcessSpec, ReplicaStatus, Revision, ServiceMode, ServiceName,
    ServiceSpec, Workload,
};

use super::*;
use crate::command::{Command, Op};

fn apply(state: &mut ClusterState, op: Op) {
    let index = state.revision.0 + 1;
    let command = Command { at_ms: 1_000, op };
    state
        .apply(Revision(index), &command)
        .result
        .expect("applied");
}

fn agent(id: u64) -> Node {
    Node {
        id: NodeId(id),
        name: format!("edge-{id}"),
        role: NodeRole::Agent,
        site: "lisbon".into(),
        labels: Default::default(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: Some(format!("serial{id}")),
        addresses: Default::default(),
        joined_at_ms: 0,
    }
}

/// Agents 1 and 2 ready, 3 down; `web` wants 2 replicas.
fn state() -> ClusterState {
    let mut state = ClusterState::default();
    for id in 1..=3 {
        apply(&mut state, Op::RegisterNode(agent(id)));
    }
    // As the leader's liveness check would have it.
    (state.nodes.get_mut(&NodeId(3)).expect("registered")).state = NodeState::Down;
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "1000".into()],
        working_dir: None,
    });
    let mut spec = ServiceSpec::new(ServiceName::new("web").expect("valid"), workload);
    spec.mode = ServiceMode::Replicated { replicas: 2 };
    apply(&mut state, Op::PutService(spec));
    state
}

/// What agent `id` reports: every replica the state places on it, in `task_state`.
fn report(state: &ClusterState, id: u64, connected: bool, task_state: TaskState) -> AgentReport {
    let replicas = (state.replicas.values())
        .filter(|r| r.node == NodeId(id))
        .map(|r| ReplicaStatus {
            id: r.id.clone(),
            node: r.node,
            state: task_state,
            pid: None,
            started_at_ms: None,
            exit_code: None,
            restarts: 0,
            health: Default::default(),
            message: None,
            updated_at_ms: 0,
            workload_hash: None,
        })
        .collect();
    AgentReport {
        node_id: NodeId(id),
        control_id: 1,
        connected,
        last_contact_ms: 8_000,
        revision_acked: Revision::ZERO,
        agent_version: String::new(),
        replicas,
        reported_at_ms: 0,
        events: VecDeque::new(),
        events_dropped: 0,
        listeners: vec![],
        mesh_peers: vec![],
        mesh_peers_up: None,
    }
}

#[test]
fn leader_adds_desired_and_readiness_and_counts_only_held_links() {
    let state = state();
    let on = |id: u64| {
        (state.replicas.values())
            .filter(|r| r.node == NodeId(id))
            .count() as i64
    };
    let reports = [
        report(&state, 1, true, TaskState::Running),
        // Its stream ended: its replicas are another control node's to count, or nobody's.
        report(&state, 2, false, TaskState::Running),
        // Removed from the registry, or never in it: no series.
        report(&state, 9, true, TaskState::Running),
    ];
    let fleet = figures(&state, &reports, true, 10_000);
    let web = &fleet.services["web"];
    assert_eq!(web.desired, Some(2));
    assert_eq!((web.running, web.healthy), (on(1), on(1)), "{fleet:?}");
    let edge1 = &fleet.agents[&NodeId(1)];
    assert_eq!(
        edge1.labels,
        [
            "edge-1".to_owned(),
            NodeId(1).to_string(),
            "lisbon".to_owned()
        ]
    );
    assert_eq!((edge1.link, edge1.ready), (Some((true, 2.0)), Some(true)));
    assert_eq!(fleet.agents[&NodeId(2)].link, Some((false, 2.0)));
    let down = &fleet.agents[&NodeId(3)];
    assert_eq!((down.link, down.ready), (None, Some(false)));
    assert!(!fleet.agents.contains_key(&NodeId(9)));

    let follower = figures(&state, &reports, false, 10_000);
    assert_eq!(follower.services["web"].desired, None);
    assert_eq!(follower.agents[&NodeId(1)].ready, None);
    assert!(
        !follower.agents.contains_key(&NodeId(3)),
        "no link here, no readiness: no series"
    );
}

#[test]
fn replicas_not_running_count_nowhere() {
    let state = state();
    let reports = [
        report(&state, 1, true, TaskState::Starting),
        report(&state, 2, true, TaskState::Failed),
    ];
    let web = &figures(&state, &reports, true, 10_000).services["web"];
    assert_eq!((web.running, web.healthy), (0, 0));
}

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding cannot fail");
    String::from_utf8(out).expect("UTF-8")
}

#[test]
fn series_of_services_and_agents_that_went_away_disappear() {
    let registry = Registry::new();
    let series = FleetSeries::register(&crate::metrics::Registrar(&registry));
    let state = state();
    let reports = [report(&state, 1, true, TaskState::Running)];
    series.set(&figures(&state, &reports, true, 10_000));
    let text = render(&registry);
    for line in [
        "warren_service_replicas_desired{service=\"web\"} 2",
        "warren_service_replicas_healthy{service=\"web\"}",
        "warren_control_agent_connected{agent=\"edge-1\",agent_id=\"0000000000000001\",agent_site=\"lisbon\"} 1",
        "warren_control_agent_last_contact_age_seconds{agent=\"edge-1\",agent_id=\"0000000000000001\",agent_site=\"lisbon\"} 2",
        "warren_control_agent_ready{agent=\"edge-3\",agent_id=\"0000000000000003\",agent_site=\"lisbon\"} 0",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }

    // This node lost the leadership, and agent 1's entry left its book.
    series.set(&figures(&state, [], false, 10_000));
    let text = render(&registry);
    assert!(
        text.contains("warren_service_replicas_running{service=\"web\"} 0"),
        "{text}"
    );
    for gone in ["warren_service_replicas_desired{", "agent=\""] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }
}
