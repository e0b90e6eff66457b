//! Health checks end to end: a real agent (process runtime, real `sleep` processes) under a
//! real control node restarts a workload whose health check fails, and leaves one whose check
//! passes alone. No root needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use warren_api::service::{HealthCheck, Probe};
use warren_api::{HealthState, ServiceName, TaskState};
use warren_control::Op;
use warren_edge_agent::agent::{
    Agent, AgentError, AgentOptions, AgentStatus, LocalReplica, RunEnd, load_status,
};
use warren_edge_agent::runtime::ProcessRuntimeOptions;
use warren_tests::{propose, sleep_service, start_control};

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
async fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = cond() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn replica(dir: &Path, service: &str) -> Option<LocalReplica> {
    let status: AgentStatus = load_status(dir).ok()?;
    status
        .replicas
        .into_iter()
        .find(|r| r.replica.service.as_str() == service)
}

fn spawn_agent(dir: &Path) -> (CancellationToken, JoinHandle<Result<RunEnd, AgentError>>) {
    let cancel = CancellationToken::new();
    let dir: PathBuf = dir.to_owned();
    let options = AgentOptions {
        process: ProcessRuntimeOptions {
            secrets_tmpfs: false,
            ..ProcessRuntimeOptions::default()
        },
        ..AgentOptions::default()
    };
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { Agent::run(&dir, options, cancel).await }
    });
    (cancel, task)
}

/// The shortest check the validator allows: every 1 s, 500 ms timeout, `retries` failures.
fn fast_check(probe: Probe, retries: u32) -> HealthCheck {
    HealthCheck {
        probe,
        interval_ms: 1_000,
        timeout_ms: 500,
        retries,
        start_period_ms: 0,
    }
}

/// A port on 127.0.0.1 that nothing listens on (the kernel picked it, then it was closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `web` runs `sleep`, which serves nothing, under a TCP check of a closed port with 2
/// retries: the agent reports the failures, then restarts it (new pid, restart count up),
/// again and again. `ok` runs `sleep` under an exec check of `true`: it turns healthy and is
/// never restarted. Removing the node stops both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_health_check_restarts_the_workload() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    let identity =
        warren_tests::join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let (_cancel, task) = spawn_agent(&agent_dir);

    info!("--- create a service failing its tcp check and one passing its exec check");
    let port = closed_port();
    let mut web = sleep_service(1);
    web.health = Some(fast_check(Probe::Tcp { port }, 2));
    propose(&control, Op::PutService(web)).await;
    let mut ok = sleep_service(1);
    ok.name = ServiceName::new("ok").unwrap();
    ok.health = Some(fast_check(
        Probe::Exec {
            command: vec!["true".into()],
        },
        2,
    ));
    propose(&control, Op::PutService(ok)).await;

    let long = Duration::from_secs(60);
    let healthy = wait_until("ok to be healthy", long, || {
        replica(&agent_dir, "ok").filter(|r| r.health == HealthState::Healthy)
    })
    .await;
    assert_eq!(healthy.state, TaskState::Running);
    assert_eq!(healthy.health_detail, None);

    info!("--- web's failures show in the status, then it is restarted");
    let failing = wait_until("a failed probe of web in the status", long, || {
        replica(&agent_dir, "web").and_then(|r| r.health_detail)
    })
    .await;
    assert!(
        failing.contains(&format!("tcp connect 127.0.0.1:{port}")),
        "{failing}"
    );
    let first = wait_until("web to run", long, || {
        replica(&agent_dir, "web").and_then(|r| r.pid.map(|pid| (pid, r.restarts)))
    })
    .await;
    let restarted = wait_until("web restarted twice", long, || {
        replica(&agent_dir, "web").filter(|r| r.restarts >= first.1 + 2 && r.pid.is_some())
    })
    .await;
    assert_ne!(restarted.pid, Some(first.0));

    info!("--- ok was left alone all along");
    let ok_now = replica(&agent_dir, "ok").unwrap();
    assert_eq!(ok_now.restarts, 0, "{ok_now:?}");
    assert_eq!(ok_now.pid, healthy.pid);
    assert_eq!(ok_now.health, HealthState::Healthy);

    info!("--- remove the node: the workloads stop");
    propose(&control, Op::RemoveNode(identity.node_id)).await;
    let end = tokio::time::timeout(long, task).await.unwrap().unwrap();
    assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    control.shutdown().await;
}
