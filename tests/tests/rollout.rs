//! Health-gated rollouts with a real control node and a real agent running processes: a bad
//! update (a command that does not exist) stops at its first batch and rolls back by itself,
//! or pauses with the reason; a good one completes once each batch has run for its monitor
//! window.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::info;
use warren_api::NodeState;
use warren_api::rest::{ReplicaInfo, RolloutInfo, ServiceInfo};
use warren_api::{FailureAction, ProcessSpec, ServiceSpec, TaskState, Workload};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_tests::{
    agent_status, api_get, join_agent, propose, sleep_service, spawn_agent, start_control,
    start_control_with, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// Running replicas on the agent in `dir`: replica → pid.
fn running(dir: &Path) -> BTreeMap<String, u32> {
    agent_status(dir)
        .map(|s| {
            s.replicas
                .iter()
                .filter(|r| r.state == TaskState::Running)
                .filter_map(|r| Some((r.replica.to_string(), r.pid?)))
                .collect()
        })
        .unwrap_or_default()
}

/// `web`: three `sleep` replicas, one at a time, each watched for 1 s, `action` on failure.
fn web(action: FailureAction) -> ServiceSpec {
    let mut spec = sleep_service(3);
    spec.update.monitor_ms = 1_000;
    spec.update.failure_action = action;
    spec
}

/// `spec` with a command that does not exist.
fn broken(mut spec: ServiceSpec) -> ServiceSpec {
    spec.workload = Workload::Process(ProcessSpec {
        command: vec!["/nonexistent".into()],
        working_dir: None,
    });
    spec
}

/// A control node and one agent running `spec`, its three replicas running: their pids.
async fn running_service(
    dir: &Path,
    spec: ServiceSpec,
) -> (
    ControlNode,
    tokio_util::sync::CancellationToken,
    BTreeMap<String, u32>,
) {
    let (control, fingerprint) = start_control(dir).await;
    let agent = dir.join("a");
    join_agent(&control, fingerprint, &agent, "edge-1", "lisbon").await;
    let (cancel, _task) = spawn_agent(&agent);
    propose(&control, Op::PutService(spec)).await;
    let pids = wait_until("three replicas running", LONG, || {
        let pids = running(&agent);
        (pids.len() == 3).then_some(pids)
    })
    .await;
    (control, cancel, pids)
}

/// Removes `web`, waits for the agent in `agent` to stop its processes, then stops the agent:
/// a test leaves no workload behind.
async fn remove_and_stop(
    control: &ControlNode,
    agent: &Path,
    cancel: tokio_util::sync::CancellationToken,
) {
    propose(
        control,
        Op::RemoveService(warren_api::ServiceName::new("web").unwrap()),
    )
    .await;
    wait_until("web's processes stopped", LONG, || {
        running(agent).is_empty().then_some(())
    })
    .await;
    cancel.cancel();
}

/// Polls the service until its rollout is in `state`; returns it and the most replicas ever
/// seen placed at `version`.
async fn wait_for_rollout(
    control: &ControlNode,
    state: &str,
    version: u64,
) -> (RolloutInfo, usize) {
    let deadline = tokio::time::Instant::now() + LONG;
    let mut most_at_version = 0;
    loop {
        let replicas: Vec<ReplicaInfo> = api_get(control, "/services/web/replicas").await;
        let at_version = replicas
            .iter()
            .filter(|r| r.service_version == version)
            .count();
        most_at_version = most_at_version.max(at_version);
        let info: ServiceInfo = api_get(control, "/services/web").await;
        if let Some(rollout) = info.rollout.filter(|r| r.state == state) {
            return (rollout, most_at_version);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout never {state}: {replicas:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An update to `/nonexistent` with `failure_action: rollback`: only the first batch ever runs
/// the bad version, the service goes back to the previous spec by itself (version 3, the
/// reason recorded), and the replicas it never touched keep their processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_update_rolls_back_after_its_first_batch() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let spec = web(FailureAction::Rollback);
    let (control, cancel, before) = running_service(dir.path(), spec.clone()).await;

    info!("--- update to a command that does not exist");
    propose(&control, Op::PutService(broken(spec))).await;
    let (rollout, most_broken) = wait_for_rollout(&control, "rolled_back", 2).await;
    assert_eq!(most_broken, 1, "only the first batch ran the bad version");
    assert_eq!(rollout.version, 3);
    assert!(
        rollout
            .message
            .starts_with("rolled back from version 2: web."),
        "{}",
        rollout.message
    );
    assert!(
        rollout.message.contains("(monitor 1s)"),
        "{}",
        rollout.message
    );
    let info: ServiceInfo = api_get(&control, "/services/web").await;
    assert_eq!(info.version, 3);
    assert_eq!(info.spec.workload, sleep_service(3).workload);

    info!("--- the untouched replicas kept their pids; the rolled-back one runs again");
    let agent = dir.path().join("a");
    let after = wait_until("three replicas running again", LONG, || {
        let pids = running(&agent);
        (pids.len() == 3).then_some(pids)
    })
    .await;
    let kept = before
        .iter()
        .filter(|(replica, pid)| after.get(*replica) == Some(pid))
        .count();
    assert_eq!(kept, 2, "before {before:?}, after {after:?}");
    remove_and_stop(&control, &dir.path().join("a"), cancel).await;
}

/// The same update with `failure_action: pause`: the rollout stops after its first batch with
/// the reason in the service's JSON (what `service inspect -o json` prints).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_update_pauses_with_the_reason() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let spec = web(FailureAction::Pause);
    let (control, cancel, _before) = running_service(dir.path(), spec.clone()).await;

    propose(&control, Op::PutService(broken(spec))).await;
    let (rollout, most_broken) = wait_for_rollout(&control, "paused", 2).await;
    assert_eq!(most_broken, 1);
    assert_eq!((rollout.updated, rollout.total, rollout.failed), (1, 3, 1));
    assert!(
        rollout.message.starts_with("paused: web.")
            && rollout.message.contains(" on edge-1 failed: "),
        "{}",
        rollout.message
    );
    let json: serde_json::Value = api_get(&control, "/services/web").await;
    assert_eq!(json["rollout"]["state"], "paused");
    assert_eq!(json["rolling_out"], serde_json::Value::Null);
    let replicas: Vec<ReplicaInfo> = api_get(&control, "/services/web/replicas").await;
    assert_eq!(
        replicas.iter().filter(|r| r.service_version == 2).count(),
        1
    );
    remove_and_stop(&control, &dir.path().join("a"), cancel).await;
}

/// A good update with a 1 s monitor completes, one batch at a time: three batches, each run for
/// its monitor window before the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_update_completes_batch_by_batch() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let spec = web(FailureAction::Pause);
    let (control, cancel, before) = running_service(dir.path(), spec.clone()).await;

    let mut updated = spec;
    updated.env.insert("RELEASE".into(), "2".into());
    let started = Instant::now();
    propose(&control, Op::PutService(updated)).await;
    let (rollout, _) = wait_for_rollout(&control, "completed", 2).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "three monitor windows of 1 s: {:?}",
        started.elapsed()
    );
    assert_eq!((rollout.updated, rollout.failed), (3, 0));
    let agent = dir.path().join("a");
    let after = wait_until("three new processes", LONG, || {
        let pids = running(&agent);
        (pids.len() == 3 && pids.values().all(|p| !before.values().any(|b| b == p))).then_some(pids)
    })
    .await;
    assert_eq!(after.len(), 3);
    remove_and_stop(&control, &dir.path().join("a"), cancel).await;
}

/// Two agents, `web` with one replica on each; edge-b stops and the leader marks it
/// unreachable (grace 2 s). An update does not wait for edge-b's replica for ever: it is passed
/// over as `pending: node unreachable`, and the rollout completes saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_node_does_not_block_a_rollout() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let config = ControlConfig {
        unreachable_after: Duration::from_secs(2),
        ..ControlConfig::default()
    };
    let (control, fingerprint) = start_control_with(dir.path(), config).await;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    join_agent(&control, fingerprint, &a, "edge-a", "lisbon").await;
    let edge_b = join_agent(&control, fingerprint, &b, "edge-b", "porto").await;
    let (cancel_a, _task_a) = spawn_agent(&a);
    let (cancel_b, task_b) = spawn_agent(&b);
    let mut spec = sleep_service(2);
    spec.update.monitor_ms = 1_000;
    propose(&control, Op::PutService(spec.clone())).await;
    wait_until("one replica on each agent", LONG, || {
        (running(&a).len() == 1 && running(&b).len() == 1).then_some(())
    })
    .await;

    info!("--- stop edge-b until control holds it unreachable");
    let b_pids: Vec<u32> = running(&b).into_values().collect();
    cancel_b.cancel();
    let _ = task_b.await;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let state = control.control().read_stale().await;
        if state
            .nodes
            .get(&edge_b.node_id)
            .is_some_and(|n| matches!(n.state, NodeState::Unreachable { .. }))
        {
            break;
        }
        drop(state);
        assert!(
            tokio::time::Instant::now() < deadline,
            "edge-b never unreachable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    info!("--- update: edge-a's replica is watched, edge-b's passed over");
    spec.env.insert("RELEASE".into(), "2".into());
    propose(&control, Op::PutService(spec)).await;
    let (rollout, _) = wait_for_rollout(&control, "completed", 2).await;
    assert_eq!(
        (rollout.updated, rollout.unreachable),
        (2, 1),
        "{rollout:?}"
    );
    assert_eq!(
        rollout.message, "completed; 1 replica(s) pending: node unreachable",
        "{rollout:?}"
    );
    remove_and_stop(&control, &a, cancel_a).await;
    // edge-b's agent is gone; its workload still runs, as on a box cut off.
    b_pids.into_iter().for_each(warren_tests::kill9);
}
