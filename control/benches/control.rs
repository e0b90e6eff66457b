//! Control-plane figures on loopback: `service create` latency and throughput through the HTTPS
//! API of a 3-node cluster, the time a cluster takes to accept writes again after losing its
//! leader, and the memory of one control node that holds a fleet.
//!
//! This prints figures for people to read and compare between commits; it asserts nothing
//! about speed. Run it with `cargo bench -p warren-control --bench control`;
//! `WARREN_BENCH_QUICK=1` shrinks every count for a smoke run, and `RUST_LOG` shows the nodes'
//! logs on stderr (errors only by default). Everything runs in one process on 127.0.0.1: real
//! QUIC with mutual TLS between the control nodes, real sled databases (with their fsyncs) in
//! temp dirs and real TLS on the API, so the figures include storage and crypto but no network.
// The point of this binary is to print a table, and its progress on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;
use warren_api::Revision;
use warren_api::clock::unix_now_ms;
use warren_api::{
    Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState, ProcessSpec, ServiceMode,
    ServiceName, ServiceSpec, Workload,
};
use warren_control::control::Control;
use warren_control::node::{ControlConfig, ControlNode, NewNode};
use warren_control::{ClusterState, Command, Op};
use warren_transport::token::mint;
use warren_transport::{Credentials, MintOptions};

/// How much work each section does.
#[derive(Clone, Copy, Debug)]
struct Counts {
    /// Creates measured per sequential run (one run via a follower, one via the leader).
    sequential_creates: usize,
    /// Creates sent first on each sequential connection and not measured.
    warmup_creates: usize,
    /// Clients creating at once, each on its own API connection.
    concurrent_clients: usize,
    /// Creates per concurrent client.
    creates_per_client: usize,
    /// Leader kills measured.
    failover_rounds: usize,
    /// Agent nodes registered on the memory node.
    fleet_nodes: usize,
    /// Sites the agent nodes are spread over.
    fleet_sites: usize,
    /// Services created on the memory node.
    fleet_services: usize,
    /// Replicas per service on the memory node.
    replicas_per_service: u32,
    /// Proposals in flight while the memory node is filled (it is filled, not measured for
    /// latency, so it may as well be filled quickly).
    fill_in_flight: usize,
}

const FULL: Counts = Counts {
    sequential_creates: 500,
    warmup_creates: 20,
    concurrent_clients: 64,
    creates_per_client: 20,
    failover_rounds: 10,
    fleet_nodes: 1_000,
    fleet_sites: 5,
    fleet_services: 1_000,
    replicas_per_service: 3,
    fill_in_flight: 32,
};

/// `WARREN_BENCH_QUICK=1`: the same sections, smaller.
const QUICK: Counts = Counts {
    sequential_creates: 50,
    warmup_creates: 5,
    concurrent_clients: 16,
    creates_per_client: 5,
    failover_rounds: 3,
    fleet_nodes: 100,
    fleet_sites: 5,
    fleet_services: 100,
    replicas_per_service: 3,
    fill_in_flight: 32,
};

/// Control nodes in the API and failover cluster.
const CLUSTER_SIZE: usize = 3;
/// Bound on anything the bench waits for (a leader, a restarted node catching up, a write
/// after a leader kill); reaching it fails the run rather than printing a figure.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// How long a node is left alone before its idle memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    let quick = std::env::var("WARREN_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let counts = if quick { QUICK } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(run(counts, quick))
}

async fn run(counts: Counts, quick: bool) -> anyhow::Result<()> {
    warren_transport::install_crypto_provider();
    // openraft logs every failed RPC at ERROR, which the failover section causes on purpose.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let started = *STARTED.get_or_init(Instant::now);

    // Memory first, while the process holds nothing but the runtime: later sections leave
    // freed pages in the allocator that would blur the node's own growth.
    let memory = memory(counts).await.context("memory section")?;
    progress("starting a 3-node cluster");
    let mut cluster = Cluster::start(CLUSTER_SIZE)
        .await
        .context("start the cluster")?;
    let api = api_latency(&cluster, counts).await.context("API section")?;
    let failover = failovers(&mut cluster, counts)
        .await
        .context("failover section")?;
    cluster.shutdown().await;

    print_header(quick);
    print_api(&api);
    println!();
    print_failover(&failover);
    println!();
    print_memory(&memory, counts);
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// When the bench started, for the progress lines.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn progress(what: &str) {
    let started = STARTED.get_or_init(Instant::now);
    eprintln!("bench {:6.1} s: {what}", started.elapsed().as_secs_f64());
}

fn config() -> ControlConfig {
    ControlConfig::default()
}

fn new_node(dir: &Path, name: &str) -> NewNode {
    NewNode::on_loopback(dir.to_owned(), name, "central")
}

fn spec(name: &str, replicas: u32) -> anyhow::Result<ServiceSpec> {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "1000".into()],
        working_dir: None,
    });
    let name = ServiceName::new(name).with_context(|| format!("service name {name}"))?;
    let mut spec = ServiceSpec::new(name, workload);
    spec.mode = ServiceMode::Replicated { replicas };
    Ok(spec)
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// An in-process cluster: c1 inits, the others join with a control token.
struct Cluster {
    nodes: Vec<Option<ControlNode>>,
    dirs: Vec<TempDir>,
    admin: Credentials,
}

impl Cluster {
    async fn start(size: usize) -> anyhow::Result<Self> {
        let dirs = (0..size)
            .map(|_| tempfile::tempdir())
            .collect::<Result<Vec<_>, _>>()
            .context("create data dirs")?;
        let (first, out) = ControlNode::init(new_node(dirs[0].path(), "c1"), config())
            .await
            .context("init c1")?;
        let options = MintOptions {
            role: NodeRole::Control,
            ttl: Some(Duration::from_secs(600)),
            single_use: false,
        };
        let (token, record) = mint(out.fingerprint, options, unix_now_ms());
        first
            .control()
            .propose(Op::AddToken(record))
            .await
            .context("propose the control token")?
            .result
            .context("control token refused")?;
        let join_addr = first.quic_addr();
        let mut nodes = vec![Some(first)];
        for (node_idx, dir) in dirs.iter().enumerate().skip(1) {
            let name = format!("c{}", node_idx + 1);
            let node = ControlNode::join(
                new_node(dir.path(), &name),
                join_addr,
                &token.to_string(),
                config(),
            )
            .await
            .with_context(|| format!("join {name}"))?;
            nodes.push(Some(node));
        }
        Ok(Self {
            nodes,
            dirs,
            admin: out.admin,
        })
    }

    fn node(&self, node_idx: usize) -> &ControlNode {
        self.nodes[node_idx]
            .as_ref()
            .expect("the bench only asks for running nodes")
    }

    /// The leader every running node agrees on, if it is running.
    fn agreed_leader(&self) -> Option<usize> {
        let mut running = self.nodes.iter().flatten();
        let leader_id = running.next()?.control().leader()?.0;
        if !running.all(|node| node.control().leader().map(|l| l.0) == Some(leader_id)) {
            return None;
        }
        self.nodes
            .iter()
            .position(|node| node.as_ref().is_some_and(|n| n.control().id() == leader_id))
    }

    async fn wait_leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(leader_idx) = self.agreed_leader() {
                return Ok(leader_idx);
            }
            ensure!(
                Instant::now() < deadline,
                "no agreed leader within {WAIT_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn shutdown(self) {
        for node in self.nodes.into_iter().flatten() {
            node.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. service create through the HTTPS API
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 connection over TLS with the admin certificate, kept alive across requests.
struct ApiClient {
    sender: SendRequest<Full<Bytes>>,
}

impl ApiClient {
    async fn connect(addr: SocketAddr, creds: &Credentials) -> anyhow::Result<Self> {
        let stream = warren_transport::https::connect(addr, creds, Duration::from_secs(5))
            .await
            .with_context(|| format!("TLS connect to the API at {addr}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::warn!(error = %error, "bench API connection failed");
            }
        });
        Ok(Self { sender })
    }

    /// `POST /v1/services`; anything but 201 Created is an error.
    async fn create_service(&mut self, name: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&spec(name, 1)?).context("encode the service spec")?;
        let request = Request::builder()
            .method(Method::POST)
            .uri("http://warren/v1/services")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("build the request")?;
        self.sender.ready().await.context("API connection closed")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .with_context(|| format!("create {name}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("read the answer to create {name}"))?
            .to_bytes();
        ensure!(
            status == StatusCode::CREATED,
            "create {name}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// A measured run: per-request latencies and the wall time of the whole run.
struct Run {
    what: String,
    samples: Vec<Duration>,
    elapsed: Duration,
    /// Services in the replicated state when the run started (every write reschedules them
    /// all, so the cost of a write grows with them).
    services_before: usize,
}

/// The API section: its runs, and the pure cost of one `PutService` apply before and after.
struct ApiFigures {
    runs: Vec<Run>,
    apply_before: ApplyCost,
    apply_after: ApplyCost,
}

async fn api_latency(cluster: &Cluster, counts: Counts) -> anyhow::Result<ApiFigures> {
    let leader_idx = cluster.wait_leader().await?;
    let follower_idx = (leader_idx + 1) % CLUSTER_SIZE;
    let leader = cluster.node(leader_idx).control();
    let apply_before = apply_cost(&*leader.read_stale().await, 1)?;
    progress("sequential creates via a follower");
    let services_before = leader.read_stale().await.services.len();
    let follower_run = sequential_creates(cluster, follower_idx, "seq-f", counts).await?;
    progress("sequential creates via the leader");
    let services_before_leader = leader.read_stale().await.services.len();
    let leader_run = sequential_creates(cluster, leader_idx, "seq-l", counts).await?;
    ensure!(
        cluster.agreed_leader() == Some(leader_idx),
        "the leader changed during the sequential runs; the figures would mix roles"
    );
    progress("concurrent creates");
    let services_before_concurrent = leader.read_stale().await.services.len();
    let concurrent = concurrent_creates(cluster, counts).await?;
    let apply_after = apply_cost(&*leader.read_stale().await, 1)?;
    let runs = vec![
        Run {
            what: "sequential, via a follower (forwarded)".into(),
            services_before,
            ..follower_run
        },
        Run {
            what: "sequential, via the leader".into(),
            services_before: services_before_leader,
            ..leader_run
        },
        Run {
            what: format!(
                "{} clients x {} at once, over all {CLUSTER_SIZE} nodes",
                counts.concurrent_clients, counts.creates_per_client
            ),
            services_before: services_before_concurrent,
            ..concurrent
        },
    ];
    Ok(ApiFigures {
        runs,
        apply_before,
        apply_after,
    })
}

/// `PutService` applies timed per [`apply_cost`] probe.
const APPLY_SAMPLES: usize = 20;

/// The mean time `ClusterState::apply` takes to create one more service on a copy of a state:
/// the state machine alone, without Raft, sled or the network.
struct ApplyCost {
    services: usize,
    replicas: usize,
    nodes: usize,
    mean: Duration,
}

fn apply_cost(state: &ClusterState, replicas: u32) -> anyhow::Result<ApplyCost> {
    let mut probe = state.clone();
    let mut revision = probe.revision.0;
    let mut took = Duration::ZERO;
    for sample_idx in 0..APPLY_SAMPLES {
        revision += 1;
        let command = Command {
            at_ms: unix_now_ms(),
            op: Op::PutService(spec(&format!("apply-probe-{sample_idx}"), replicas)?),
        };
        let started = Instant::now();
        let outcome = probe.apply(Revision(revision), &command);
        took += started.elapsed();
        outcome
            .result
            .map_err(|rejection| anyhow!("apply probe refused: {rejection}"))?;
    }
    Ok(ApplyCost {
        services: state.services.len(),
        replicas: state.replicas.len(),
        nodes: state.nodes.len(),
        mean: took / APPLY_SAMPLES as u32,
    })
}

async fn sequential_creates(
    cluster: &Cluster,
    node_idx: usize,
    prefix: &str,
    counts: Counts,
) -> anyhow::Result<Run> {
    let mut client = ApiClient::connect(cluster.node(node_idx).api_addr(), &cluster.admin).await?;
    for warm_idx in 0..counts.warmup_creates {
        client
            .create_service(&format!("{prefix}-warm-{warm_idx}"))
            .await?;
    }
    let mut samples = Vec::with_capacity(counts.sequential_creates);
    let started = Instant::now();
    for create_idx in 0..counts.sequential_creates {
        let sent = Instant::now();
        client
            .create_service(&format!("{prefix}-{create_idx}"))
            .await?;
        samples.push(sent.elapsed());
    }
    Ok(Run {
        what: String::new(),
        samples,
        elapsed: started.elapsed(),
        services_before: 0,
    })
}

/// Every client connects first; the clock starts when all are connected. Client `i` talks to
/// node `i % 3`, so two thirds of the writes are forwarded by a follower.
async fn concurrent_creates(cluster: &Cluster, counts: Counts) -> anyhow::Result<Run> {
    let barrier = Arc::new(tokio::sync::Barrier::new(counts.concurrent_clients + 1));
    let mut clients = JoinSet::new();
    for client_idx in 0..counts.concurrent_clients {
        let addr = cluster.node(client_idx % CLUSTER_SIZE).api_addr();
        let creds = cluster.admin.clone();
        let barrier = barrier.clone();
        let creates = counts.creates_per_client;
        clients.spawn(async move {
            let client = ApiClient::connect(addr, &creds).await;
            // Wait whatever happened, so one failed connect does not leave the others waiting.
            barrier.wait().await;
            let mut client = client?;
            let mut samples = Vec::with_capacity(creates);
            for create_idx in 0..creates {
                let sent = Instant::now();
                client
                    .create_service(&format!("conc-{client_idx}-{create_idx}"))
                    .await?;
                samples.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut samples = Vec::with_capacity(counts.concurrent_clients * counts.creates_per_client);
    while let Some(joined) = clients.join_next().await {
        samples.extend(joined.context("a client task panicked")??);
    }
    Ok(Run {
        what: String::new(),
        samples,
        elapsed: started.elapsed(),
        services_before: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. leader failover
// ---------------------------------------------------------------------------------------------

/// One leader kill.
struct FailoverRound {
    /// Which node led and was stopped, and which survivor retried the write.
    killed_idx: usize,
    survivor_idx: usize,
    /// Whether the survivor is the node restarted by the round before.
    survivor_just_restarted: bool,
    /// From the start of the leader's shutdown to the first write a survivor got committed by
    /// a new leader.
    first_write: Duration,
    /// From the same start until the survivor knew the new leader.
    new_leader_known: Duration,
    /// Proposals the survivor made until then (the last one succeeded).
    attempts: u32,
    /// The longest failed proposal and its error.
    slowest_failure: Option<(Duration, String)>,
    /// How long `ControlNode::shutdown` took on the old leader (it runs alongside the writes).
    shutdown: Duration,
    /// From `ControlNode::run` on the old leader's data dir until it returned.
    run_returned: Duration,
    /// From the same start until it has applied every write and agrees with the others on the
    /// leader.
    rejoin: Duration,
    /// Times `ControlNode::run` found the old leader's port still bound and was retried.
    bind_retries: u32,
}

async fn failovers(cluster: &mut Cluster, counts: Counts) -> anyhow::Result<Vec<FailoverRound>> {
    let mut rounds: Vec<FailoverRound> = Vec::with_capacity(counts.failover_rounds);
    for round_idx in 0..counts.failover_rounds {
        progress(&format!(
            "failover {} of {}",
            round_idx + 1,
            counts.failover_rounds
        ));
        let last_restarted = rounds.last().map(|round| round.killed_idx);
        rounds.push(failover_round(cluster, round_idx, last_restarted).await?);
    }
    Ok(rounds)
}

async fn failover_round(
    cluster: &mut Cluster,
    round_idx: usize,
    last_restarted: Option<usize>,
) -> anyhow::Result<FailoverRound> {
    let leader_idx = cluster.wait_leader().await?;
    let survivor_idx = (leader_idx + 1) % CLUSTER_SIZE;
    let survivor = cluster.node(survivor_idx).control().clone();
    let term_before = survivor.raft().metrics().borrow().current_term;
    let leader = cluster.nodes[leader_idx]
        .take()
        .expect("wait_leader returns a running node");
    let killed_at = Instant::now();
    let shutdown = tokio::spawn(async move {
        let started = Instant::now();
        leader.shutdown().await;
        started.elapsed()
    });
    let survived = first_write_in_new_term(&survivor, term_before, killed_at, round_idx).await?;
    let first_write = killed_at.elapsed();
    let shutdown = shutdown.await.context("the leader's shutdown panicked")?;

    let restarted_at = Instant::now();
    let (node, bind_retries) = restart(cluster.dirs[leader_idx].path()).await?;
    let run_returned = restarted_at.elapsed();
    cluster.nodes[leader_idx] = Some(node);
    let revision_target = survivor.applied().0;
    loop {
        let caught_up = cluster.node(leader_idx).control().applied().0 >= revision_target;
        if caught_up && cluster.agreed_leader().is_some() {
            break;
        }
        ensure!(
            restarted_at.elapsed() < WAIT_LIMIT,
            "restarted c{} did not catch up to revision {revision_target} within {WAIT_LIMIT:?}",
            leader_idx + 1
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(FailoverRound {
        killed_idx: leader_idx,
        survivor_idx,
        survivor_just_restarted: last_restarted == Some(survivor_idx),
        first_write,
        new_leader_known: survived.new_leader_known,
        attempts: survived.attempts,
        slowest_failure: survived.slowest_failure,
        shutdown,
        run_returned,
        rejoin: restarted_at.elapsed(),
        bind_retries,
    })
}

/// `ControlNode::run` on `dir`, retried while its ports are still held by the stopped node
/// (`shutdown` waits a bounded time for the QUIC socket to be released and may return before
/// it is). Returns the node and the retries it took.
async fn restart(dir: &Path) -> anyhow::Result<(ControlNode, u32)> {
    let started = Instant::now();
    let mut retries = 0;
    loop {
        match ControlNode::run(dir, config()).await {
            Ok(node) => return Ok((node, retries)),
            Err(error) if is_addr_in_use(&error) && started.elapsed() < WAIT_LIMIT => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("restart the node in {}", dir.display()));
            }
        }
    }
}

fn is_addr_in_use(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        let in_use = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse);
        if in_use {
            return true;
        }
        source = error.source();
    }
    false
}

/// What the survivor saw while it retried.
struct FirstWrite {
    /// Proposals made, the last one the success.
    attempts: u32,
    /// From the leader kill until the survivor knew a new leader in a later term.
    new_leader_known: Duration,
    /// The longest failed proposal and its error.
    slowest_failure: Option<(Duration, String)>,
}

/// Proposes in a tight loop until a write succeeds in a later term than `term_before`. The
/// term check discards a write the old leader committed in the moment before it stopped,
/// which would measure nothing.
async fn first_write_in_new_term(
    survivor: &Control,
    term_before: u64,
    killed_at: Instant,
    round_idx: usize,
) -> anyhow::Result<FirstWrite> {
    let op = Op::PutService(spec(&format!("failover-{round_idx}"), 1)?);
    let mut attempts = 0;
    let mut new_leader_known = None;
    let mut slowest_failure: Option<(Duration, String)> = None;
    loop {
        attempts += 1;
        let sent = Instant::now();
        let result = survivor.propose(op.clone()).await;
        let took = sent.elapsed();
        let (term, leader) = {
            let metrics = survivor.raft().metrics().borrow().clone();
            (metrics.current_term, metrics.current_leader)
        };
        if term > term_before && leader.is_some() && new_leader_known.is_none() {
            new_leader_known = Some(killed_at.elapsed());
        }
        let error = match result {
            Ok(outcome) if term > term_before => {
                outcome
                    .result
                    .map_err(|rejection| anyhow!("failover write refused: {rejection}"))?;
                return Ok(FirstWrite {
                    attempts,
                    new_leader_known: new_leader_known.unwrap_or_else(|| killed_at.elapsed()),
                    slowest_failure,
                });
            }
            Ok(_) => "committed by the old leader".to_owned(),
            Err(error) => error.to_string(),
        };
        if slowest_failure
            .as_ref()
            .is_none_or(|(slowest, _)| took > *slowest)
        {
            slowest_failure = Some((took, error.clone()));
        }
        ensure!(
            killed_at.elapsed() < WAIT_LIMIT,
            "no write within {WAIT_LIMIT:?} of the leader's shutdown ({attempts} attempts); last: {error}"
        );
        // Not a pause: only lets the runtime run the election this loop is waiting for.
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. memory of one control node
// ---------------------------------------------------------------------------------------------

/// What one control node costs, read from this process's `/proc/self/status` (KiB).
struct MemoryFigures {
    baseline_kib: Option<u64>,
    idle_kib: Option<u64>,
    after_nodes_kib: Option<u64>,
    after_services_kib: Option<u64>,
    peak_kib: Option<u64>,
    apply_after_nodes: ApplyCost,
    apply_after_services: ApplyCost,
    register_took: Duration,
    services_took: Duration,
    replicas_placed: usize,
    replicas_unschedulable: u32,
    snapshot_bytes: usize,
    data_dir_bytes: u64,
}

async fn memory(counts: Counts) -> anyhow::Result<MemoryFigures> {
    let baseline_kib = proc_status_kib("VmRSS");
    progress("memory: init one control node");
    let dir = tempfile::tempdir().context("create the data dir")?;
    let (node, _init) = ControlNode::init(new_node(dir.path(), "c1"), config())
        .await
        .context("init the memory node")?;
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_kib = proc_status_kib("VmRSS");

    progress(&format!("memory: register {} nodes", counts.fleet_nodes));
    let register: Vec<Op> = (0..counts.fleet_nodes)
        .map(|node_idx| Op::RegisterNode(agent(node_idx, counts.fleet_sites)))
        .collect();
    let register_took = propose_all(node.control(), register, counts.fill_in_flight).await?;
    let after_nodes_kib = proc_status_kib("VmRSS");
    let apply_after_nodes = apply_cost(
        &*node.control().read_stale().await,
        counts.replicas_per_service,
    )?;

    progress(&format!(
        "memory: create {} services x {} replicas",
        counts.fleet_services, counts.replicas_per_service
    ));
    let services = (0..counts.fleet_services)
        .map(|service_idx| {
            spec(
                &format!("svc-{service_idx:04}"),
                counts.replicas_per_service,
            )
            .map(Op::PutService)
        })
        .collect::<anyhow::Result<Vec<Op>>>()?;
    let services_took = propose_all(node.control(), services, counts.fill_in_flight).await?;
    tokio::time::sleep(IDLE_SETTLE).await;
    let after_services_kib = proc_status_kib("VmRSS");

    let (replicas_placed, replicas_unschedulable) = {
        let state = node.control().read_stale().await;
        ensure!(
            state.services.len() == counts.fleet_services,
            "{} services in the state, {} created",
            state.services.len(),
            counts.fleet_services
        );
        (state.replicas.len(), state.unschedulable.values().sum())
    };
    let apply_after_services = apply_cost(
        &*node.control().read_stale().await,
        counts.replicas_per_service,
    )?;
    progress("memory: build a snapshot");
    let snapshot_bytes = snapshot_bytes(node.control()).await?;
    let peak_kib = proc_status_kib("VmHWM");
    node.shutdown().await;
    let data_dir_bytes = dir_bytes(dir.path()).context("measure the data dir")?;
    Ok(MemoryFigures {
        baseline_kib,
        idle_kib,
        after_nodes_kib,
        after_services_kib,
        peak_kib,
        apply_after_nodes,
        apply_after_services,
        register_took,
        services_took,
        replicas_placed,
        replicas_unschedulable,
        snapshot_bytes,
        data_dir_bytes,
    })
}

/// Agent `node_idx` of the fleet, in site `node_idx % sites`.
fn agent(node_idx: usize, sites: usize) -> Node {
    Node {
        id: NodeId(0x00be_0000_0000_0000 + node_idx as u64),
        name: format!("agent-{node_idx:04}"),
        role: NodeRole::Agent,
        site: format!("site-{}", node_idx % sites),
        labels: Default::default(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: Some(format!("{node_idx:032x}")),
        addresses: NodeAddresses::default(),
        joined_at_ms: 0,
    }
}

/// Proposes every op with `in_flight` proposals at a time; returns the wall time. A rejected
/// op fails the run: the figures would describe a smaller state than the table says.
async fn propose_all(
    control: &Arc<Control>,
    ops: Vec<Op>,
    in_flight: usize,
) -> anyhow::Result<Duration> {
    let ops = Arc::new(ops);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..in_flight {
        let (control, ops, next) = (control.clone(), ops.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let op_idx = next.fetch_add(1, Ordering::Relaxed);
                let Some(op) = ops.get(op_idx) else {
                    return Ok::<_, anyhow::Error>(());
                };
                control
                    .propose(op.clone())
                    .await
                    .with_context(|| format!("propose {} #{op_idx}", op.name()))?
                    .result
                    .map_err(|rejection| anyhow!("{} #{op_idx} refused: {rejection}", op.name()))?;
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a proposer task panicked")??;
    }
    Ok(started.elapsed())
}

/// Builds a snapshot of everything applied and returns the size of its data.
async fn snapshot_bytes(control: &Control) -> anyhow::Result<usize> {
    let raft = control.raft();
    let revision = control.applied().0;
    raft.trigger()
        .snapshot()
        .await
        .context("trigger a snapshot")?;
    raft.wait(Some(WAIT_LIMIT))
        .metrics(
            |metrics| {
                metrics
                    .snapshot
                    .is_some_and(|log_id| log_id.index >= revision)
            },
            "snapshot covers every applied entry",
        )
        .await
        .context("wait for the snapshot")?;
    let snapshot = raft
        .get_snapshot()
        .await
        .context("read the snapshot")?
        .context("no snapshot after building one")?;
    Ok(snapshot.snapshot.get_ref().len())
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`); `None` where there is no procfs.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Apparent size of every file under `dir`.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if file_type.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

/// Nearest-rank percentiles of a set of durations.
struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(samples: &[Duration]) -> Self {
        assert!(!samples.is_empty(), "every run takes samples");
        let mut samples = samples.to_vec();
        samples.sort_unstable();
        let rank = |quantile: f64| {
            let rank = (quantile * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

/// The median (mean of the middle two for an even count) and the maximum.
fn median_max(values: impl Iterator<Item = Duration>) -> (Duration, Duration) {
    let mut values: Vec<Duration> = values.collect();
    assert!(!values.is_empty(), "every round is measured");
    values.sort_unstable();
    let mid = values.len() / 2;
    let median = if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2
    } else {
        values[mid]
    };
    (median, values[values.len() - 1])
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".into(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

fn mib_delta(kib: Option<u64>, from: Option<u64>) -> String {
    match (kib, from) {
        (Some(kib), Some(from)) => format!("{:+.1} MiB", (kib as f64 - from as f64) / 1024.0),
        _ => "n/a".into(),
    }
}

fn print_header(quick: bool) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "optimized"
    };
    let config = config();
    println!(
        "warren-control on loopback: {profile} build, {cpus} CPUs{}",
        if quick { ", WARREN_BENCH_QUICK" } else { "" }
    );
    println!(
        "default ControlConfig: heartbeat {} ms, election timeout {}-{} ms (Raft RPC deadline {} \
         ms, vote deadline {} ms), write timeout {} s; sled in temp dirs (every acknowledged \
         write is flushed)",
        config.heartbeat.as_millis(),
        config.election_timeout.0.as_millis(),
        config.election_timeout.1.as_millis(),
        config.rpc_timeout().as_millis(),
        config.vote_timeout().as_millis(),
        config.write_timeout.as_secs(),
    );
    println!();
}

fn print_api(api: &ApiFigures) {
    println!(
        "1. service create: POST /v1/services over TLS with the admin certificate, {CLUSTER_SIZE} \
         control nodes, one kept-alive HTTP/1.1 connection per client"
    );
    println!(
        "{:<44} {:>8} {:>7} {:>10} {:>10} {:>10} {:>9}",
        "", "services", "creates", "p50", "p99", "max", "writes/s"
    );
    for run in &api.runs {
        let summary = Summary::of(&run.samples);
        println!(
            "{:<44} {:>8} {:>7} {:>10} {:>10} {:>10} {:>9.0}",
            run.what,
            run.services_before,
            run.samples.len(),
            ms(summary.p50),
            ms(summary.p99),
            ms(summary.max),
            run.samples.len() as f64 / run.elapsed.as_secs_f64(),
        );
    }
    println!(
        "services = already in the state when the run started; writes/s = creates / wall time. \
         The API answers a create once a majority has flushed it to disk and the leader has \
         applied it."
    );
    for cost in [&api.apply_before, &api.apply_after] {
        print_apply_cost(cost, "leader's state");
    }
}

fn print_apply_cost(cost: &ApplyCost, whose: &str) {
    println!(
        "ClusterState::apply of one more PutService on a copy of the {whose} ({} nodes, {} \
         services, {} replicas): {} (mean of {APPLY_SAMPLES}, no I/O)",
        cost.nodes,
        cost.services,
        cost.replicas,
        ms_fine(cost.mean),
    );
}

fn ms_fine(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1e3)
}

fn print_failover(rounds: &[FailoverRound]) {
    println!(
        "2. leader failover, {} rounds: ControlNode::shutdown on the leader, Control::propose in \
         a tight loop on a survivor, then ControlNode::run on the old leader's data dir",
        rounds.len()
    );
    println!("{:<58} {:>10} {:>10}", "", "median", "max");
    let rows = [
        (
            "shutdown start -> survivor knows the new leader",
            median_max(rounds.iter().map(|r| r.new_leader_known)),
        ),
        (
            "shutdown start -> first write committed in a new term",
            median_max(rounds.iter().map(|r| r.first_write)),
        ),
        (
            "ControlNode::shutdown of the old leader",
            median_max(rounds.iter().map(|r| r.shutdown)),
        ),
        (
            "ControlNode::run on its data dir -> returned",
            median_max(rounds.iter().map(|r| r.run_returned)),
        ),
        (
            "ControlNode::run -> caught up, leader agreed by all",
            median_max(rounds.iter().map(|r| r.rejoin)),
        ),
    ];
    for (what, (median, max)) in rows {
        println!("{what:<58} {:>10} {:>10}", ms(median), ms(max));
    }
    println!();
    println!(
        "{:>5} {:>8} {:>10} {:>10} {:>10} {:>9}",
        "round", "killed", "survivor", "1st write", "restart", "proposals"
    );
    for (round_idx, round) in rounds.iter().enumerate() {
        let survivor = format!(
            "c{}{}",
            round.survivor_idx + 1,
            if round.survivor_just_restarted {
                "*"
            } else {
                ""
            }
        );
        let retried = if round.bind_retries > 0 {
            format!("port busy: {} run retries", round.bind_retries)
        } else {
            String::new()
        };
        println!(
            "{:>5} {:>8} {:>10} {:>10} {:>10} {:>9}  {retried}",
            round_idx + 1,
            format!("c{}", round.killed_idx + 1),
            survivor,
            ms(round.first_write),
            ms(round.rejoin),
            round.attempts,
        );
        if let Some((took, error)) = &round.slowest_failure {
            println!("{:>5} failed proposal took {}: {error}", "", ms(*took));
        }
    }
    println!(
        "* the survivor is the node restarted in the round before. 'port busy': ControlNode::run \
         found the QUIC port still bound after shutdown returned and was retried every 20 ms \
         (the wait is in the restart figure)."
    );
}

fn print_memory(memory: &MemoryFigures, counts: Counts) {
    println!("3. memory: one control node (single-member cluster, default config) in this process");
    println!("{:<58} {:>10} {:>12}", "", "VmRSS", "vs baseline");
    let rows = [
        (
            "bench process before the node (runtime, TLS, binary)",
            memory.baseline_kib,
        ),
        ("node idle after init", memory.idle_kib),
        (
            &*format!(
                "+ {} agent nodes registered over {} sites",
                counts.fleet_nodes, counts.fleet_sites
            ),
            memory.after_nodes_kib,
        ),
        (
            &*format!(
                "+ {} services x {} replicas",
                counts.fleet_services, counts.replicas_per_service
            ),
            memory.after_services_kib,
        ),
        (
            "peak (VmHWM, includes building the snapshot)",
            memory.peak_kib,
        ),
    ];
    for (what, kib) in rows {
        println!(
            "{what:<58} {:>10} {:>12}",
            mib(kib),
            mib_delta(kib, memory.baseline_kib)
        );
    }
    let rate = |ops: usize, took: Duration| ops as f64 / took.as_secs_f64();
    println!(
        "filled with {} proposals in flight: {} RegisterNode in {:.2} s ({:.0}/s), {} PutService \
         in {:.2} s ({:.0}/s)",
        counts.fill_in_flight,
        counts.fleet_nodes,
        memory.register_took.as_secs_f64(),
        rate(counts.fleet_nodes, memory.register_took),
        counts.fleet_services,
        memory.services_took.as_secs_f64(),
        rate(counts.fleet_services, memory.services_took),
    );
    for cost in [&memory.apply_after_nodes, &memory.apply_after_services] {
        print_apply_cost(cost, "node's state");
    }
    println!(
        "replicas placed: {}, unschedulable: {}",
        memory.replicas_placed, memory.replicas_unschedulable
    );
    println!(
        "snapshot data (postcard): {:.1} KiB; sled data dir on disk: {:.1} MiB",
        memory.snapshot_bytes as f64 / 1024.0,
        memory.data_dir_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "VmRSS is the whole process: it includes the bench's runtime and allocator slack, and \
         the node's sled page cache (64 MiB cap) as it fills; the 'vs baseline' column is the \
         closest figure to the node's own cost."
    );
}
