//! A real agent (process runtime, real `sleep` processes) under a real control node: workloads
//! start, crash and come back, survive the agent restarting with control down (adopted, same
//! pid), scale once control is back, and stop when the node is removed.

use std::path::Path;
use std::time::Duration;

use tracing::info;
use warren_api::ServiceName;
use warren_api::clock::unix_now_ms;
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_edge_agent::agent::{self, Agent, AgentError, AgentStatus, RunEnd};
use warren_tests::{
    agent_options, agent_status, alive, propose, running_pids, sleep_service, spawn_agent,
    start_control, wait_until,
};

fn status(dir: &Path) -> Option<AgentStatus> {
    agent_status(dir)
}

/// Service create → a process runs; kill -9 → it comes back with a new pid; control stops and
/// the agent restarts with control down → the workload is adopted with the same pid, or started
/// again if it died meanwhile; control
/// returns and the service scales to 2 → two processes; node removed → every workload stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_runs_restarts_adopts_offline_and_scales() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;

    info!("--- join an agent and create a service");
    let agent_dir = dir.path().join("agent");
    let identity =
        warren_tests::join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    assert!(agent_dir.join(agent::AGENT_FILE).exists());
    let (cancel, task) = spawn_agent(&agent_dir);
    propose(&control, Op::PutService(sleep_service(1))).await;

    let long = Duration::from_secs(60);
    let first = wait_until("one running workload", long, || {
        status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|pids| pids.len() == 1)
            .map(|pids| pids[0])
    })
    .await;
    assert!(alive(first), "pid {first} runs");

    info!("--- kill -9 the workload: it comes back with a new pid");
    warren_tests::kill9(first);
    let second = wait_until("the workload restarted", long, || {
        status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|pids| pids.len() == 1 && pids[0] != first)
            .map(|pids| pids[0])
    })
    .await;
    assert!(alive(second));
    let restarts = status(&agent_dir).unwrap().replicas[0].restarts;
    assert!(restarts >= 1, "restarts counted: {restarts}");

    info!("--- stop control, then the agent: the workload keeps running");
    let control_dir = control.data_dir().to_owned();
    control.shutdown().await;
    cancel.cancel();
    let end = tokio::time::timeout(long, task).await.unwrap().unwrap();
    assert_eq!(end.unwrap(), RunEnd::Stopped);
    assert!(
        alive(second),
        "SIGTERM to the agent leaves workloads running"
    );

    info!("--- start the agent with control down: the workload is adopted, same pid");
    let started_at = unix_now_ms();
    let (cancel, task) = spawn_agent(&agent_dir);
    let adopted = wait_until("the agent's status after restart", long, || {
        status(&agent_dir).filter(|s| s.updated_at_ms >= started_at && !s.replicas.is_empty())
    })
    .await;
    assert!(!adopted.link.connected);
    assert_eq!(running_pids(&adopted), vec![second], "{adopted:?}");
    // A few passes later it is still the same process (status.json is only rewritten when
    // something changes, so look at the process itself too).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let settled = status(&agent_dir).unwrap();
    assert_eq!(running_pids(&settled), vec![second], "{settled:?}");
    assert!(alive(second));

    info!("--- the workload dies while the agent is down: the next start runs it again");
    cancel.cancel();
    let end = tokio::time::timeout(long, task).await.unwrap().unwrap();
    assert_eq!(end.unwrap(), RunEnd::Stopped);
    warren_tests::kill9(second);
    wait_until("the killed workload to vanish", long, || {
        (!alive(second)).then_some(())
    })
    .await;
    let (cancel, task) = spawn_agent(&agent_dir);
    let second = wait_until("the workload started again offline", long, || {
        status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|pids| pids.len() == 1 && pids[0] != second)
            .map(|pids| pids[0])
    })
    .await;
    assert!(alive(second));

    info!("--- control comes back; scale to 2: two processes, the first untouched");
    let control = ControlNode::run(&control_dir, ControlConfig::default())
        .await
        .unwrap();
    control
        .control()
        .propose(Op::ScaleService {
            name: ServiceName::new("web").unwrap(),
            replicas: 2,
        })
        .await
        .unwrap();
    let pids = wait_until("two running workloads", Duration::from_secs(90), || {
        status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|pids| pids.len() == 2)
    })
    .await;
    assert!(pids.contains(&second), "{pids:?}");
    assert!(pids.iter().all(|pid| alive(*pid)));

    info!("--- remove the node: every workload stops");
    propose(&control, Op::RemoveNode(identity.node_id)).await;
    let end = tokio::time::timeout(long, task).await.unwrap().unwrap();
    assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} stopped");
    }
    // A removed agent does not start again from its cache.
    let again = Agent::run(&agent_dir, agent_options(), cancel).await;
    assert!(matches!(again, Err(AgentError::Removed)), "{again:?}");
    control.shutdown().await;
}
