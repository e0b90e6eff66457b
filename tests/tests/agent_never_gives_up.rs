//! An agent never gives up on the control plane: whatever keeps it from control — names that do
//! not resolve (DNS down on the box), a control node that is down — only changes its link
//! status, which says why; it keeps its workloads, keeps trying, and connects once it can.

use std::path::Path;
use std::time::Duration;

use tracing::info;
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_edge_agent::agent::{AGENT_FILE, AgentIdentity, RunEnd, load_identity};
use warren_edge_agent::cache::{Cache, CacheTuning};
use warren_tests::{
    agent_status, alive, join_agent, kill9, propose, running_pids, sleep_service, spawn_agent,
    start_control, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// A name that never resolves (RFC 6761 reserves `.invalid`).
const UNRESOLVABLE: &str = "warren-control.invalid";

/// Points a stopped agent at `addrs` only: `agent.json`'s seeds and the cached view's control
/// addresses (which the link tries first), as if it had joined by those names.
async fn set_control_addrs(agent_dir: &Path, addrs: &[String]) {
    let mut identity: AgentIdentity = load_identity(agent_dir).unwrap();
    identity.control_addrs = addrs.to_vec();
    let json = serde_json::to_vec_pretty(&identity).unwrap();
    std::fs::write(agent_dir.join(AGENT_FILE), json).unwrap();
    let cache = Cache::open(agent_dir, CacheTuning::default()).unwrap();
    let mut view = cache.view().unwrap().expect("a cached view");
    view.control_addrs = addrs.to_vec();
    cache.store_view(&view).await.unwrap();
}

/// The agent runs a workload, then restarts with only a name that does not resolve as its
/// control address: it keeps running (the link used to end as "cancelled", and `agent run`
/// exited 0), adopts the workload, keeps looking the name up, and its status says it cannot
/// resolve it. Then it restarts with that name and `localhost:<port>` while the control node is
/// down: the status says nobody answered; when the control node comes back on that port the
/// agent connects, and the workload never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_keeps_trying_when_names_do_not_resolve_and_connects_once_control_answers() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let (cancel, task) = spawn_agent(&agent_dir);
    propose(&control, Op::PutService(sleep_service(1))).await;
    let pid = wait_until("one running workload", LONG, || {
        agent_status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|p| p.len() == 1)
    })
    .await[0];
    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap(), RunEnd::Stopped);
    let port = control.quic_addr().port();
    let unresolvable = format!("{UNRESOLVABLE}:{port}");

    info!("--- the only control address is a name that does not resolve");
    set_control_addrs(&agent_dir, std::slice::from_ref(&unresolvable)).await;
    let (cancel, task) = spawn_agent(&agent_dir);
    let status = wait_until("three failed lookups", LONG, || {
        agent_status(&agent_dir).filter(|s| s.link.failures >= 3)
    })
    .await;
    assert!(!task.is_finished(), "the agent runs on: {:?}", status.link);
    assert!(!status.link.connected);
    let reason = status.link.down_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("cannot resolve any control address") && reason.contains(UNRESOLVABLE),
        "{reason}"
    );
    assert_eq!(
        status.link.control_addrs,
        std::slice::from_ref(&unresolvable)
    );
    assert_eq!(running_pids(&status), [pid], "the workload is adopted");
    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap(), RunEnd::Stopped);

    info!("--- that name and localhost, with the control node down; then it comes back");
    let data_dir = control.data_dir().to_owned();
    control.shutdown().await;
    let reachable_later = format!("localhost:{port}");
    set_control_addrs(&agent_dir, &[unresolvable, reachable_later]).await;
    let (cancel, task) = spawn_agent(&agent_dir);
    let status = wait_until("a failed round of dials", LONG, || {
        agent_status(&agent_dir).filter(|s| {
            s.link
                .down_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("no control node answered"))
        })
    })
    .await;
    let reason = status.link.down_reason.unwrap_or_default();
    assert!(
        reason.contains(UNRESOLVABLE),
        "names what did not resolve: {reason}"
    );
    let control = ControlNode::run(&data_dir, ControlConfig::default())
        .await
        .unwrap();
    let status = wait_until("the link up again", LONG, || {
        agent_status(&agent_dir).filter(|s| s.link.connected)
    })
    .await;
    assert_eq!(status.link.down_reason, None);
    assert_eq!(running_pids(&status), [pid], "never restarted");
    assert!(alive(pid));

    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap(), RunEnd::Stopped);
    control.shutdown().await;
    kill9(pid);
}
