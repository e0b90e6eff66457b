//! The metrics of a running control node and agent, end to end: every series carries the node's
//! name, id and site; the per-service and per-agent series follow a service placed on the
//! agent; and both expositions pass `promtool check metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::info;
use warren_api::ServiceName;
use warren_control::Op;
use warren_control::node::ControlNode;
use warren_edge_agent::agent::RunEnd;
use warren_edge_agent::overlay::OverlayMetrics;
use warren_tests::{
    agent_options, agent_status, join_agent, program, propose, require, sleep_service,
    spawn_agent_with, start_control, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// For [`require`]: why not, unless `promtool` (Prometheus 2) runs.
fn promtool() -> Option<String> {
    let runs = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    (!runs).then(|| "needs `promtool` (prometheus) on PATH".to_owned())
}

/// `promtool check metrics` on `text`: its complaints, if any (it reads stdin).
fn promtool_complaints(text: &str) -> Option<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the exposition");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.status.success() || !said.trim().is_empty()).then_some(said)
}

/// The control node's exposition, refreshed as a scrape would.
async fn control_metrics(control: &ControlNode) -> String {
    control.metrics().refresh(control.control()).await;
    control.metrics().render()
}

/// The body of `GET /metrics` at `addr`.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("response");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the series of `name` whose labels include every one of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls `fetch` every 100 ms until `cond` holds on what it returns, or fails after [`LONG`].
async fn wait_metrics<F: Future<Output = String>>(
    what: &str,
    mut fetch: impl FnMut() -> F,
    cond: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let text = fetch().await;
        if cond(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One control node and one agent running `web` (one replica): control counts it desired,
/// running and healthy and shows the agent connected and ready; the agent shows the workload
/// by service; both carry build, process and certificate series with their node's labels;
/// promtool finds nothing to say about either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_and_agent_metrics_follow_the_fleet_and_pass_promtool() {
    if !require(
        "control_and_agent_metrics_follow_the_fleet_and_pass_promtool",
        [promtool(), program("sleep")],
    ) {
        return;
    }
    warren_tests::init();
    let dir = tempfile::tempdir().expect("temp dir");
    let (control, fingerprint) = start_control(dir.path()).await;
    // What `warren control init` adds to the node's registry when it runs the overlay.
    let _overlay = OverlayMetrics::new(control.metrics().registry());
    let agent_dir = dir.path().join("agent");
    let agent = join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let mut options = agent_options();
    options.metrics_listen = Some("127.0.0.1:0".parse().expect("valid address"));
    let (cancel, task) = spawn_agent_with(&agent_dir, options);
    propose(&control, Op::PutService(sleep_service(1))).await;

    info!("--- control counts web's replica and sees the agent");
    let edge = [
        "agent=\"edge-1\"".to_owned(),
        format!("agent_id=\"{}\"", agent.node_id),
        "agent_site=\"lisbon\"".to_owned(),
    ];
    let edge: Vec<&str> = edge.iter().map(String::as_str).collect();
    let web = ["service=\"web\"", "node=\"c1\""];
    let text = wait_metrics(
        "web running and healthy on control",
        || control_metrics(&control),
        |t| value(t, "warren_service_replicas_healthy", &web) == Some(1.0),
    )
    .await;
    assert_eq!(
        value(&text, "warren_service_replicas_desired", &web),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warren_service_replicas_running", &web),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warren_control_agent_connected", &edge),
        Some(1.0)
    );
    assert_eq!(value(&text, "warren_control_agent_ready", &edge), Some(1.0));
    let age = value(
        &text,
        "warren_control_agent_last_contact_age_seconds",
        &edge,
    );
    assert!(age.is_some_and(|age| (0.0..30.0).contains(&age)), "{text}");
    let c1 = ["node=\"c1\"", "site=\"central\"", "node_id=\""];
    for (name, expected) in [
        ("warren_raft_has_leader", Some(1.0)),
        ("warren_raft_voters", Some(1.0)),
        ("warren_raft_leader_changes_total", Some(1.0)),
    ] {
        assert_eq!(value(&text, name, &c1), expected, "{name} in {text}");
    }
    for name in [
        "warren_build_info",
        "warren_raft_commit_index",
        "warren_raft_last_log_index",
        "warren_raft_quorum_ack_age_seconds",
        "warren_raft_apply_duration_seconds_count",
        "warren_cert_expiry_timestamp_seconds",
        "warren_ca_expiry_timestamp_seconds",
        "process_start_time_seconds",
        "process_resident_memory_bytes",
        "warren_transport_connections_active",
        "warren_wg_sent_bytes_total",
    ] {
        assert!(value(&text, name, &c1).is_some(), "{name} in {text}");
    }
    assert_eq!(promtool_complaints(&text), None, "control's exposition");

    info!("--- the agent shows web's workload by service, under its own name");
    let status = wait_until("the agent's metrics listener", LONG, || {
        agent_status(&agent_dir).and_then(|s| s.metrics_addr)
    })
    .await;
    let node_id = format!("node_id=\"{}\"", agent.node_id);
    let me = ["node=\"edge-1\"", node_id.as_str(), "site=\"lisbon\""];
    let running: Vec<&str> = me
        .iter()
        .copied()
        .chain(["service=\"web\"", "state=\"running\""])
        .collect();
    let text = wait_metrics(
        "web running on the agent",
        || scrape(status),
        |t| value(t, "warren_agent_service_workloads", &running) == Some(1.0),
    )
    .await;
    let web_restarts: Vec<&str> = me.iter().copied().chain(["service=\"web\""]).collect();
    assert_eq!(
        value(&text, "warren_agent_service_restarts_total", &web_restarts),
        Some(0.0)
    );
    for name in [
        "warren_build_info",
        "warren_cert_expiry_timestamp_seconds",
        "process_open_fds",
        "warren_agent_link_up",
    ] {
        assert!(value(&text, name, &me).is_some(), "{name} in {text}");
    }
    assert!(
        !text.contains("warren_ca_expiry_timestamp_seconds"),
        "{text}"
    );
    assert_eq!(promtool_complaints(&text), None, "the agent's exposition");

    info!("--- web removed: its series go, on control and on the agent");
    propose(
        &control,
        Op::RemoveService(ServiceName::new("web").expect("valid")),
    )
    .await;
    wait_metrics(
        "web gone from the agent",
        || scrape(status),
        |t| !t.contains("service=\"web\""),
    )
    .await;
    wait_metrics(
        "web gone from control",
        || control_metrics(&control),
        |t| !t.contains("service=\"web\""),
    )
    .await;
    cancel.cancel();
    assert_eq!(
        task.await.expect("agent task").expect("agent runs"),
        RunEnd::Stopped
    );
    control.shutdown().await;
}
