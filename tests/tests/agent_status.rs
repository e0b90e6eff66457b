//! Status going up, and liveness coming back down as facts in the log: `service ps` shows what
//! the agents report (state, pid, restarts), node inspect shows their events, an agent gone
//! silent is marked unreachable by the leader and its replica is rescheduled per
//! `on_disconnect`, and when it returns it is reachable again and stops the stale copy.

use std::time::Duration;

use tracing::info;
use warren_api::rest::{NodeInfo, ReplicaInfo};
use warren_api::{EventKind, OnDisconnect, ServiceName};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_edge_agent::agent::RunEnd;
use warren_tests::{
    alive, api_get, join_agent, kill9, propose, sleep_service, spawn_agent, start_control_with,
    wait_until,
};

async fn replicas(control: &ControlNode) -> Vec<ReplicaInfo> {
    api_get(control, "/services/web/replicas").await
}

/// Polls the API (async) until `cond` holds on the replicas.
async fn wait_replicas(
    control: &ControlNode,
    what: &str,
    cond: impl Fn(&[ReplicaInfo]) -> bool,
) -> Vec<ReplicaInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = replicas(control).await;
        if cond(&found) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_node(
    control: &ControlNode,
    node: &str,
    what: &str,
    cond: impl Fn(&NodeInfo) -> bool,
) -> NodeInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found: NodeInfo = api_get(control, &format!("/nodes/{node}")).await;
        if cond(&found) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running_on(replicas: &[ReplicaInfo], node: &str) -> Vec<u32> {
    replicas
        .iter()
        .filter(|r| r.node_name == node && r.state == "running")
        .filter_map(|r| r.pid)
        .collect()
}

/// Two agents at two sites run `web` (2 replicas, reschedule 1 s after a disconnect). `service
/// ps` shows both running with the real pids; kill -9 one → ps shows the restart and node
/// inspect the exit event; stop agent b → the leader marks it unreachable, ps marks its
/// replica as last known and the replica moves to a; start b again → reachable, and b stops
/// the stale copy it was still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_ps_shows_reports_and_unreachable_agents_are_rescheduled() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let config = ControlConfig {
        unreachable_after: Duration::from_secs(2),
        ..ControlConfig::default()
    };
    let (control, fingerprint) = start_control_with(dir.path(), config).await;
    let dir_a = dir.path().join("a");
    let dir_b = dir.path().join("b");
    join_agent(&control, fingerprint, &dir_a, "edge-a", "lisbon").await;
    join_agent(&control, fingerprint, &dir_b, "edge-b", "porto").await;
    let (cancel_a, task_a) = spawn_agent(&dir_a);
    let (cancel_b, task_b) = spawn_agent(&dir_b);

    info!("--- create web with 2 replicas: ps shows both running with real pids");
    let mut spec = sleep_service(2);
    spec.on_disconnect = OnDisconnect::Reschedule { after_ms: 1_000 };
    propose(&control, Op::PutService(spec)).await;
    let ps = wait_replicas(&control, "two running replicas", |r| {
        running_on(r, "edge-a").len() == 1 && running_on(r, "edge-b").len() == 1
    })
    .await;
    let pid_a = running_on(&ps, "edge-a")[0];
    let pid_b = running_on(&ps, "edge-b")[0];
    assert!(alive(pid_a) && alive(pid_b), "{ps:#?}");
    assert!(ps.iter().all(|r| !r.stale && r.updated_at_ms.is_some()));

    info!("--- kill -9 the workload on a: ps shows the restart, inspect the exit");
    kill9(pid_a);
    let ps = wait_replicas(&control, "a's replica restarted", |r| {
        r.iter()
            .any(|x| x.node_name == "edge-a" && x.state == "running" && x.restarts >= 1)
    })
    .await;
    let new_pid_a = running_on(&ps, "edge-a")[0];
    assert_ne!(new_pid_a, pid_a);
    let node_a = wait_node(&control, "edge-a", "the exit event", |n| {
        n.agent.as_ref().is_some_and(|a| {
            a.connected
                && a.events
                    .iter()
                    .any(|e| matches!(e.kind, EventKind::Exited { .. }))
        })
    })
    .await;
    assert!(node_a.agent.unwrap().revision_acked > 0);

    info!("--- stop agent b: unreachable, its replica moves to a");
    cancel_b.cancel();
    assert_eq!(task_b.await.unwrap().unwrap(), RunEnd::Stopped);
    assert!(
        alive(pid_b),
        "stopping the agent leaves its workload running"
    );
    wait_node(&control, "edge-b", "b unreachable", |n| {
        n.node.state.as_str() == "unreachable" && n.agent.as_ref().is_some_and(|a| !a.connected)
    })
    .await;
    let ps = wait_replicas(&control, "both replicas on a", |r| {
        running_on(r, "edge-a").len() == 2
    })
    .await;
    assert!(
        running_on(&ps, "edge-a").contains(&new_pid_a),
        "the replica already on a is not restarted: {ps:#?}"
    );

    info!("--- start agent b again: reachable, the stale copy stops");
    let (cancel_b, task_b) = spawn_agent(&dir_b);
    wait_node(&control, "edge-b", "b ready and connected", |n| {
        n.node.state.as_str() == "ready" && n.agent.as_ref().is_some_and(|a| a.connected)
    })
    .await;
    wait_until("b's stale copy stopped", Duration::from_secs(30), || {
        (!alive(pid_b)).then_some(())
    })
    .await;
    let ps = replicas(&control).await;
    assert_eq!(running_on(&ps, "edge-a").len(), 2, "{ps:#?}");
    assert!(alive(new_pid_a), "a's workloads untouched");

    info!("--- clean up");
    propose(
        &control,
        Op::RemoveService(ServiceName::new("web").unwrap()),
    )
    .await;
    wait_until("workloads stopped", Duration::from_secs(30), || {
        (!alive(new_pid_a)).then_some(())
    })
    .await;
    cancel_a.cancel();
    cancel_b.cancel();
    let _ = task_a.await;
    let _ = task_b.await;
    control.shutdown().await;
}
