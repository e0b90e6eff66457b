//! Cross-crate integration tests for Warren. The tests live in `tests/`; this library holds the
//! fixtures they share: a control node on loopback, agent tokens, a sample service, agents
//! (also behind a transport fault switch that cuts them off), `wait_until`, and [`require`],
//! the one gate for tests that need something of the host (root, a port).

pub mod fleet_sim;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use warren_api::clock::unix_now_ms;
use warren_api::{NodeRole, ProcessSpec, ServiceMode, ServiceName, ServiceSpec, Workload};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode, NewNode};
use warren_transport::token::mint;
use warren_transport::{FaultSwitch, MintOptions};

/// Installs the crypto provider and a `warn` log filter for the test's output.
pub fn init() {
    warren_transport::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

/// Service `web` running `sleep 1000` with `replicas` replicas.
pub fn sleep_service(replicas: u32) -> ServiceSpec {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "1000".into()],
        working_dir: None,
    });
    let mut spec = ServiceSpec::new(ServiceName::new("web").expect("valid name"), workload);
    spec.mode = ServiceMode::Replicated { replicas };
    spec
}

/// A fresh single-node cluster (`c1`) on 127.0.0.1 with kernel-picked ports, its data under
/// `dir/c1`. Returns the node and the cluster fingerprint.
pub async fn start_control(dir: &Path) -> (ControlNode, [u8; 32]) {
    start_control_with(dir, ControlConfig::default()).await
}

/// As [`start_control`], with `config`.
pub async fn start_control_with(dir: &Path, config: ControlConfig) -> (ControlNode, [u8; 32]) {
    start_control_node(dir, config, None).await
}

/// As [`start_control_with`], with a gossip mesh on 127.0.0.1 (kernel-picked port; timers from
/// `config.mesh_timers`).
pub async fn start_control_gossiping(dir: &Path, config: ControlConfig) -> (ControlNode, [u8; 32]) {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    start_control_node(dir, config, Some(any)).await
}

async fn start_control_node(
    dir: &Path,
    config: ControlConfig,
    gossip_listen: Option<SocketAddr>,
) -> (ControlNode, [u8; 32]) {
    let new = NewNode {
        gossip_listen,
        ..NewNode::on_loopback(dir.join("c1"), "c1", "central")
    };
    let (control, out) = ControlNode::init(new, config).await.expect("control init");
    (control, out.fingerprint)
}

/// Joins a control node named `name` (data under `dir/<name>`, kernel-picked ports on
/// 127.0.0.1, no gossip) to the cluster of `first`, with a fresh control token.
///
/// # Panics
/// When the join fails.
pub async fn join_control(
    first: &ControlNode,
    fingerprint: [u8; 32],
    dir: &Path,
    name: &str,
) -> ControlNode {
    let options = MintOptions {
        role: NodeRole::Control,
        ttl: Some(Duration::from_secs(600)),
        single_use: true,
    };
    let (token, record) = mint(fingerprint, options, unix_now_ms());
    propose(first, Op::AddToken(record)).await;
    let new = NewNode::on_loopback(dir.join(name), name, "central");
    ControlNode::join(
        new,
        first.quic_addr(),
        &token.to_string(),
        ControlConfig::default(),
    )
    .await
    .expect("control node joins")
}

/// Proposes `op` and asserts it was applied.
pub async fn propose(control: &ControlNode, op: Op) {
    control
        .control()
        .propose(op)
        .await
        .expect("committed")
        .result
        .expect("applied");
}

/// Mints a single-use agent token, records it in the cluster, and returns its text.
pub async fn agent_token(control: &ControlNode, fingerprint: [u8; 32]) -> String {
    let options = MintOptions {
        role: NodeRole::Agent,
        ttl: Some(Duration::from_secs(600)),
        single_use: true,
    };
    let (token, record) = mint(fingerprint, options, unix_now_ms());
    propose(control, Op::AddToken(record)).await;
    token.to_string()
}

/// `GET path` on the control node's HTTP API (through its Unix socket), decoded from JSON.
///
/// # Panics
/// When the request fails or the answer is not a 200 with a `T`: this is a test fixture.
pub async fn api_get<T: serde::de::DeserializeOwned>(control: &ControlNode, path: &str) -> T {
    let (status, body) = api_call(control, hyper::Method::GET, path).await;
    assert!(
        status.is_success(),
        "GET {path}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("api answers JSON of the expected type")
}

/// `method path` (no body) on the control node's HTTP API through its Unix socket: the status
/// and the body, whatever they are.
///
/// # Panics
/// When the socket or the exchange fails: this is a test fixture.
pub async fn api_call(
    control: &ControlNode,
    method: hyper::Method,
    path: &str,
) -> (hyper::StatusCode, bytes::Bytes) {
    api_send(control, method, path, Vec::new()).await
}

/// `method path` with `body` (JSON, or empty) on the control node's HTTP API through its Unix
/// socket: the status and the body, whatever they are.
///
/// # Panics
/// When the socket or the exchange fails: this is a test fixture.
pub async fn api_send(
    control: &ControlNode,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> (hyper::StatusCode, bytes::Bytes) {
    use http_body_util::BodyExt;
    let socket = control.data_dir().join(warren_control::node::SOCKET_FILE);
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect to the control socket");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("http handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://warren{}{path}", warren_api::rest::PREFIX))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("valid request");
    let response = sender.send_request(request).await.expect("api answers");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("api body")
        .to_bytes();
    (status, body)
}

/// Polls `cond` every 50 ms until it gives a value or `timeout` passes.
///
/// # Panics
/// On timeout, naming `what`.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
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

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// `kill -9 pid`, by the system call (no `kill` program needed).
///
/// # Panics
/// When the signal cannot be sent.
pub fn kill9(pid: u32) {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap_or_else(|| panic!("{pid} is no process id"));
    rustix::process::kill_process(target, rustix::process::Signal::KILL)
        .unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}

/// Whether `test` may run: `true` when no entry of `missing` is `Some`. Otherwise the first
/// reason is printed as `skipping TEST: WHY` straight to stderr (past the test harness's
/// capture, so `cargo test` shows it) and the test should return — or, under `CI=true` (where
/// `.ci/run` provides everything), the test fails, so that CI proves it ran.
///
/// # Panics
/// Under `CI=true`, when something is missing.
#[track_caller]
pub fn require(test: &str, missing: impl IntoIterator<Item = Option<String>>) -> bool {
    let Some(reason) = missing.into_iter().flatten().next() else {
        return true;
    };
    let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !under_ci,
        "{test} needs what this host lacks: {reason} (CI=true: a missing prerequisite is a \
         failure, not a skip)"
    );
    let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
    false
}

/// For [`require`]: why not, unless this process runs as root.
pub fn root() -> Option<String> {
    (!rustix::process::geteuid().is_root()).then(|| "needs root".to_owned())
}

/// For [`require`]: why not, unless `program` is an executable file in a directory of the
/// workloads' default `PATH` (where a workload finds it, whatever this process's `PATH`).
pub fn program(program: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let found = warren_edge_agent::runtime::process::DEFAULT_PATH
        .split(':')
        .any(|dir| {
            std::fs::metadata(Path::new(dir).join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    (!found).then(|| format!("needs `{program}` in the workloads' PATH"))
}

/// The agent's `status.json`, if it is there and parses.
pub fn agent_status(dir: &Path) -> Option<warren_edge_agent::agent::AgentStatus> {
    warren_edge_agent::agent::load_status(dir).ok()
}

/// Pids of the replicas an agent status shows running, in replica order.
pub fn running_pids(status: &warren_edge_agent::agent::AgentStatus) -> Vec<u32> {
    status
        .replicas
        .iter()
        .filter(|r| r.state == warren_api::TaskState::Running)
        .filter_map(|r| r.pid)
        .collect()
}

/// Lets users other than the test's own pass through `dir` (mode 0711, not listable): a
/// test's temp dir is 0700, and workloads running as their own users (the agent is root) must
/// reach their files below it by path, as under `/var/lib` on a real box.
///
/// # Panics
/// When the mode cannot be set.
pub fn passable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .unwrap_or_else(|e| panic!("chmod 0711 {}: {e}", dir.display()));
}

/// Agent options for tests: secrets in a plain 0700 dir (no tmpfs, no root needed).
pub fn agent_options() -> warren_edge_agent::agent::AgentOptions {
    warren_edge_agent::agent::AgentOptions {
        process: warren_edge_agent::runtime::ProcessRuntimeOptions {
            secrets_tmpfs: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// [`agent_options`] with the agent's QUIC endpoint behind `switch`: `switch.cut()` drops every
/// datagram of its link both ways, a real partition as QUIC sees it. Dials give up after 2 s
/// (not the WAN-sized 10 s) so that a healed agent's next attempt comes soon.
pub fn agent_options_behind(switch: &FaultSwitch) -> warren_edge_agent::agent::AgentOptions {
    let mut options = agent_options();
    options.endpoint.fault = Some(switch.clone());
    options.endpoint.config.connect_timeout = Duration::from_secs(2);
    options
}

/// Runs the agent in `dir` in a task; cancel the token to stop it (workloads keep running).
pub fn spawn_agent(
    dir: &Path,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<
        Result<warren_edge_agent::agent::RunEnd, warren_edge_agent::agent::AgentError>,
    >,
) {
    spawn_agent_with(dir, agent_options())
}

/// [`spawn_agent`] with these options (a fault switch, discovery, a test-only knob, …).
pub fn spawn_agent_with(
    dir: &Path,
    options: warren_edge_agent::agent::AgentOptions,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<
        Result<warren_edge_agent::agent::RunEnd, warren_edge_agent::agent::AgentError>,
    >,
) {
    let cancel = tokio_util::sync::CancellationToken::new();
    let dir = dir.to_owned();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { warren_edge_agent::agent::Agent::run(&dir, options, cancel).await }
    });
    (cancel, task)
}

/// Joins an agent named `name` at `site` into `dir` with a fresh token.
///
/// # Panics
/// When the join fails.
pub async fn join_agent(
    control: &ControlNode,
    fingerprint: [u8; 32],
    dir: &Path,
    name: &str,
    site: &str,
) -> warren_edge_agent::agent::AgentIdentity {
    let token = agent_token(control, fingerprint).await;
    let request = warren_edge_agent::agent::JoinRequest {
        control_addrs: vec![control.quic_addr().to_string()],
        token,
        name: name.into(),
        site: site.into(),
        ..Default::default()
    };
    warren_edge_agent::agent::join(dir, request)
        .await
        .expect("agent joins")
}

/// Creates (or replaces) secret `name` the way `POST /secrets` does: sealed with the cluster
/// key generation in force by the proposer, then proposed.
pub async fn put_secret(control: &ControlNode, name: &str, value: &[u8]) {
    let keys = control
        .control()
        .cluster_keys()
        .expect("an initialised control node holds the cluster key");
    let generation = control.control().read_stale().await.key_generation();
    let sealed = warren_control::secrets::seal_at_rest(&keys, generation, value)
        .expect("the generation in force is held");
    let op = Op::PutSecret {
        name: name.to_owned(),
        size_bytes: value.len() as u64,
        sealed,
    };
    propose(control, op).await;
}
