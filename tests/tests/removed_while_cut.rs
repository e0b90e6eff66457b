//! docs/design.md §4, "node removed while cut off": the agent cannot hear the removal while cut off;
//! when it dials again, the TLS handshake refuses its revoked certificate, and that refusal
//! must end the agent like a refusal on the stream does: workloads stopped, secrets wiped.
//! (Found by `warren-chaos run chaos/scenarios/node-removed-while-cut.yaml`: the agent took
//! the handshake's refusal for a passing trust problem and kept its workloads for ever.)

use std::time::Duration;

use tracing::info;
use warren_control::Op;
use warren_edge_agent::agent::{RunEnd, load_status};
use warren_tests::{
    agent_options_behind, alive, join_agent, propose, running_pids, sleep_service,
    spawn_agent_with, start_control, wait_until,
};
use warren_transport::FaultSwitch;

/// The link's silence limit (15 s) plus a reconnect dominate the slowest step.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_removed_while_cut_off_stops_its_workloads_on_reconnect() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("edge");
    let identity = join_agent(&control, fingerprint, &agent_dir, "edge-1", "a").await;
    let switch = FaultSwitch::new();
    let options = agent_options_behind(&switch);
    let (_cancel, task) = spawn_agent_with(&agent_dir, options);
    propose(&control, Op::PutService(sleep_service(1))).await;
    let pid = wait_until("web running", STEP_TIMEOUT, || {
        load_status(&agent_dir)
            .ok()
            .filter(|s| s.link.connected)
            .map(|s| running_pids(&s))
            .filter(|pids| pids.len() == 1)
    })
    .await[0];

    info!("--- cut the agent off until it notices, then remove its node");
    switch.cut();
    wait_until("the agent notices the cut", STEP_TIMEOUT, || {
        load_status(&agent_dir).ok().filter(|s| !s.link.connected)
    })
    .await;
    propose(&control, Op::RemoveNode(identity.node_id)).await;
    assert!(
        alive(pid),
        "cut off, the agent cannot know: its workload runs on"
    );

    info!("--- heal: the handshake refuses the revoked certificate and the agent stops");
    switch.heal();
    let end = tokio::time::timeout(STEP_TIMEOUT, task)
        .await
        .expect("the agent ends after the refusal")
        .expect("agent task");
    assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    assert!(!alive(pid), "the removed node's workload stopped");
    control.shutdown().await;
}
