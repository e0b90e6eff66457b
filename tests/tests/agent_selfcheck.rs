//! The self-check knob (`AgentOptions::selfcheck_stop_on_disconnect`) breaks the agent's promise
//! on purpose: cut off, the agent stops its workloads. The promise itself (knob off: they keep
//! running) is `site_partition.rs`.

use std::time::Duration;

use tracing::info;
use warren_control::Op;
use warren_edge_agent::agent::{RunEnd, load_status};
use warren_tests::{
    agent_options_behind, alive, join_agent, propose, running_pids, sleep_service,
    spawn_agent_with, start_control, wait_until,
};
use warren_transport::FaultSwitch;

/// The link's silence limit (15 s) plus the workload's stop dominate the slowest step.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

/// An agent with the knob set runs `web`; cut its link at the transport → once it notices,
/// the workload's process is gone; heal → the normal reconcile starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_selfcheck_knob_a_cut_off_agent_stops_its_workloads() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("edge");
    let identity = join_agent(&control, fingerprint, &agent_dir, "edge-1", "a").await;
    let switch = FaultSwitch::new();
    let mut options = agent_options_behind(&switch);
    options.selfcheck_stop_on_disconnect = true;
    let (_cancel, task) = spawn_agent_with(&agent_dir, options);
    propose(&control, Op::PutService(sleep_service(1))).await;
    let running = |dir: &std::path::Path| {
        load_status(dir)
            .ok()
            .filter(|s| s.link.connected)
            .map(|s| running_pids(&s))
            .filter(|pids| pids.len() == 1)
    };
    let pid = wait_until("web running", STEP_TIMEOUT, || running(&agent_dir)).await[0];

    info!("--- cut the agent off: the knob stops its workload");
    switch.cut();
    wait_until("the workload stopped", STEP_TIMEOUT, || {
        let status = load_status(&agent_dir).ok()?;
        let stopped = !status.link.connected && running_pids(&status).is_empty();
        (stopped && !alive(pid)).then_some(())
    })
    .await;

    info!("--- heal: the workload starts again");
    switch.heal();
    let restarted = wait_until("web running again", STEP_TIMEOUT, || {
        running(&agent_dir).filter(|pids| pids[0] != pid)
    })
    .await;

    propose(&control, Op::RemoveNode(identity.node_id)).await;
    let end = tokio::time::timeout(STEP_TIMEOUT, task)
        .await
        .expect("agent ends")
        .expect("agent task");
    assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    assert!(!alive(restarted[0]), "removal stopped the workload");
    control.shutdown().await;
}
