//! `offline::stop_workloads` on a stopped agent's data dir: its workloads stop, `status.json`
//! says so, and the next run starts them again from the cache (the view is kept).

use std::time::Duration;

use tracing::info;
use warren_api::TaskState;
use warren_control::Op;
use warren_edge_agent::agent::{RunEnd, load_status};
use warren_edge_agent::offline;
use warren_tests::{
    agent_options, alive, join_agent, propose, sleep_service, spawn_agent, start_control,
    wait_until,
};

const TIMEOUT: Duration = Duration::from_secs(30);

fn running_pid(dir: &std::path::Path) -> Option<u32> {
    load_status(dir)
        .ok()?
        .replicas
        .iter()
        .find(|r| r.state == TaskState::Running)
        .and_then(|r| r.pid)
}

/// A running workload → the agent stops (it keeps running) → stop_workloads stops it and marks
/// it stopped → the agent runs again, with control down, and starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_workloads_powers_a_stopped_agent_off_and_the_next_run_starts_them() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("edge-1");
    join_agent(&control, fingerprint, &agent_dir, "edge-1", "a").await;
    propose(&control, Op::PutService(sleep_service(1))).await;
    let (cancel, task) = spawn_agent(&agent_dir);
    let pid = wait_until("a running workload", TIMEOUT, || running_pid(&agent_dir)).await;

    info!("--- stop the agent: the workload keeps running");
    cancel.cancel();
    let end = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    assert_eq!(end.unwrap(), RunEnd::Stopped);
    assert!(alive(pid));

    info!("--- stop its workloads offline");
    let stopped = offline::stop_workloads(&agent_dir, &agent_options())
        .await
        .unwrap();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert!(stopped[0].was_running && stopped[0].pid == Some(pid));
    assert!(!alive(pid));
    let status = load_status(&agent_dir).unwrap();
    assert_eq!(status.replicas[0].state, TaskState::Stopped, "{status:?}");
    assert_eq!(status.replicas[0].pid, None);

    info!("--- run the agent again with control down: it starts the workload from its cache");
    control.shutdown().await;
    let (cancel, task) = spawn_agent(&agent_dir);
    let again = wait_until("the workload started again", TIMEOUT, || {
        running_pid(&agent_dir).filter(|p| *p != pid)
    })
    .await;
    assert!(alive(again));
    cancel.cancel();
    tokio::time::timeout(TIMEOUT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let stopped = offline::stop_workloads(&agent_dir, &agent_options())
        .await
        .unwrap();
    assert_eq!(stopped.len(), 1);
    assert!(!alive(again));
}
