//! The agent itself: joining a cluster, and the driver that ties the cache, the link, the
//! planner and the runtime together.
//!
//! [`join`] turns a join token into a data dir (`agent.json`, credentials, a claimed cache).
//! [`Agent::open`] loads that data dir and [`Agent::serve`] runs the reconcile loop: it seeds
//! the desired state from the cache (so cached workloads start with no control plane at all),
//! re-adopts the workloads an earlier agent left running, and plans on every view change,
//! every [`RECONCILE_INTERVAL`] and at each backoff deadline. After every pass it writes
//! `status.json`, which `warren agent status` reads, offline too.
//!
//! Must never: stop a workload because the link is down, or because the agent itself stops
//! (SIGTERM leaves workloads running; the next agent adopts them). The one exception is the
//! test-only [`AgentOptions::selfcheck_stop_on_disconnect`], which breaks the first rule on
//! purpose so that the chaos harness can prove its checks notice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_api::service::DEFAULT_STOP_GRACE_PERIOD_MS;
use warren_api::wire::{Listener, ListenerStatus};
use warren_api::{
    Event, HealthState, NodeId, NodeRole, NodeView, ReplicaId, ReplicaStatus, Revision, SealedBlob,
    Service, TaskState, Workload,
};
use warren_mesh::MeshIdentity;
use warren_transport::ca::CaError;
use warren_transport::endpoint::BindError;
use warren_transport::join::{JoinError, JoinParams};
use warren_transport::{
    Credentials, Endpoint, EndpointOptions, GossipSigner, MemberCertificates, write_atomic,
};

use crate::cache::{Cache, CacheError, CacheIdentity, CacheTuning};
use crate::health::probe::ExecContext;
use crate::health::{HealthMonitor, HealthTarget};
use crate::link::{Link, LinkEnd, LinkStatus};
use crate::listeners::{BindRetry, ListenSettings, ListenerBook};
use crate::metrics::{AgentMetrics, MetricsSources};
use crate::planner::{self, Action, Observed, ObservedState, PlanInput, RestartBook};
use crate::report::Reporter;
use crate::runtime::{
    ProcessRuntime, ProcessRuntimeOptions, Runtime, RuntimeError, WorkloadHandle, WorkloadRecord,
};
use crate::secrets::{self, NodeSecrets, StartError};
use warren_transport::ca::unix_now_ms as now_ms;

/// The agent's identity file in its data dir.
pub const AGENT_FILE: &str = "agent.json";
/// The local status file `warren agent status` reads.
pub const STATUS_FILE: &str = "status.json";
/// The longest time between two writes of `status.json` when nothing in it changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// How soon a pass that acted is followed by another (to see what it started running).
pub const FOLLOW_UP_PASS: Duration = Duration::from_millis(100);
/// The longest time between two reconcile passes.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// How often log files are checked against their size bound.
pub const LOG_ROTATE_INTERVAL: Duration = Duration::from_secs(60);
/// How long the link gets to wind down when the agent stops.
const LINK_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) const RECORD_PREFIX: &str = "workload/";
const BOOK_KEY: &str = "restart_book";
const REMOVED_KEY: &str = "removed";
const VIEW_KEY: &str = "view";

/// What `agent.json` holds: who this agent is and where control was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    /// The node id control assigned.
    pub node_id: NodeId,
    /// Node name.
    pub name: String,
    /// Site.
    pub site: String,
    /// Labels given at join.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Control addresses to start from (the cached view's list takes over once known).
    pub control_addrs: Vec<String>,
    /// SHA-256 of the cluster CA, lowercase hex.
    pub cluster_fingerprint: String,
    /// The gossip address registered at join (`IP:PORT`), which peers dial.
    #[serde(default)]
    pub gossip: Option<String>,
    /// Where the agent listens, as `agent join` was told (port 0 resolved): `agent run` listens
    /// there unless told otherwise. `None` in an `agent.json` from before this was kept.
    #[serde(default)]
    pub listen: Option<ListenSettings>,
    /// Where replica directories go, as `agent join` was told (`--workloads-dir`): `agent run`
    /// uses it unless told otherwise. `None`: the default, beside the data dir
    /// ([`crate::runtime::default_workloads_dir`]).
    #[serde(default)]
    pub workloads_dir: Option<PathBuf>,
}

/// What an agent advertises when it joins (recorded in the node registry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinAdvertise {
    /// The gossip address peers dial; its IP is also the node's address in the service
    /// catalogue (what DNS answers for its replicas).
    pub gossip: Option<SocketAddr>,
    /// The agent's DNS server.
    pub dns: Option<SocketAddr>,
    /// Its metrics address.
    pub metrics: Option<SocketAddr>,
}

impl JoinAdvertise {
    /// The join request's `kind=addr` entries.
    fn entries(&self) -> Vec<String> {
        let mut entries = Vec::new();
        if let Some(addr) = self.gossip {
            entries.push(format!("gossip={addr}"));
        }
        if let Some(addr) = self.dns {
            entries.push(format!("dns={addr}"));
        }
        if let Some(addr) = self.metrics {
            entries.push(format!("metrics={addr}"));
        }
        entries
    }
}

/// How the agent runs.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// The process runtime's settings.
    pub process: ProcessRuntimeOptions,
    /// sled tuning.
    pub cache: CacheTuning,
    /// QUIC endpoint settings for the link.
    pub endpoint: EndpointOptions,
    /// Plain-HTTP `/metrics`, `/health` and `/ready`; `None` = not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Test only; breaks the agent's promise on purpose. Once the link to control has been
    /// up and is then lost, the agent stops every workload and starts none until the link is
    /// back (the normal reconcile then starts them again). The chaos harness's self-check sets
    /// it (`cli` reads `WARREN_SELFCHECK_STOP_ON_DISCONNECT=1`) to prove that its invariant
    /// checks can fail. Never in production.
    pub selfcheck_stop_on_disconnect: bool,
    /// Gossip membership and the DNS server (both off by default).
    pub discovery: crate::discovery::DiscoveryOptions,
}

/// How [`Agent::serve`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Cancelled (SIGTERM): workloads left running for the next agent to adopt.
    Stopped,
    /// The node was removed from the cluster: workloads stopped, secrets wiped.
    Removed(String),
}

/// Why joining or running the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No control address resolved.
    #[error("no control address to join: {0}")]
    NoControl(String),
    /// The data dir cannot hold an agent (a file, not writable, …).
    #[error("data dir {}: {detail}", path.display())]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The data dir already holds an agent.
    #[error("{} already holds a joined agent; use `warren agent run`", path.display())]
    AlreadyJoined {
        /// The data dir.
        path: PathBuf,
    },
    /// Joining failed.
    #[error("join {addr}: {source}")]
    Join {
        /// The control address tried last.
        addr: String,
        /// Why.
        source: JoinError,
    },
    /// Credentials could not be saved or loaded.
    #[error("agent credentials: {0}")]
    Credentials(#[from] CaError),
    /// A file of the data dir could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `agent.json` does not parse.
    #[error("{}: {detail}", path.display())]
    BadAgentFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The cache could not be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The runtime could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The QUIC endpoint could not be created.
    #[error("agent endpoint: {0}")]
    Bind(#[from] BindError),
    /// The node was removed from the cluster earlier; it has to join again.
    #[error("this agent was removed from the cluster; join again with a new data dir")]
    Removed,
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an agent joins with.
#[derive(Clone, Debug, Default)]
pub struct JoinRequest {
    /// Control addresses (`host:port`), tried in order.
    pub control_addrs: Vec<String>,
    /// The agent join token.
    pub token: String,
    /// Node name (a DNS label).
    pub name: String,
    /// Site (a DNS label).
    pub site: String,
    /// Node labels, for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// What to record in the node registry.
    pub advertise: JoinAdvertise,
    /// Where the agent listens, kept in `agent.json` for `agent run`; checked (and port 0
    /// resolved) by the caller with [`crate::listeners::check`] before it works out what to
    /// advertise. `None`: nothing kept (`agent run` then uses its defaults).
    pub listen: Option<ListenSettings>,
    /// Where replica directories go, kept in `agent.json` for `agent run`; `None`: the
    /// default.
    pub workloads_dir: Option<PathBuf>,
}

/// Joins the cluster as an agent through the first reachable control address, then writes the
/// data dir: credentials, `agent.json` and a cache claimed for this cluster and node. Before
/// control is contacted, the data dir must be usable: a directory (created 0700 if missing)
/// this process can write to, whose cache it can open — so that a bad `--data-dir` leaves no
/// node registered in the cluster for an agent that never comes.
///
/// # Errors
/// [`AgentError::AlreadyJoined`] when `data_dir` already holds an agent;
/// [`AgentError::DataDir`] when it cannot hold one; [`AgentError::Join`] when every address
/// failed (the last error); file and cache errors.
///
/// # Cancel safety
/// Not cancel safe: a dropped join may leave a half-written data dir.
pub async fn join(data_dir: &Path, request: JoinRequest) -> Result<AgentIdentity, AgentError> {
    let agent_file = data_dir.join(AGENT_FILE);
    if agent_file.exists() {
        return Err(AgentError::AlreadyJoined {
            path: data_dir.to_owned(),
        });
    }
    let cache = prepare_data_dir(data_dir)?;
    let params = JoinParams {
        role: NodeRole::Agent,
        name: request.name.clone(),
        site: request.site.clone(),
        labels: request.labels.clone(),
        advertise: request.advertise.entries(),
    };
    let joined = join_any(&request.control_addrs, &request.token, &params).await?;
    joined.credentials.save(data_dir)?;
    match &joined.secret_key {
        Some(key) => {
            let path = data_dir.join(secrets::SECRET_KEY_FILE);
            secrets::save_key(data_dir, key).map_err(io_error("write", &path))?;
        }
        None => warn!("control sent no node secret key: workloads that use secrets will not start"),
    }
    let fingerprint = joined.credentials.cluster_fingerprint();
    let mut seeds = request.control_addrs.clone();
    for addr in joined.control_addrs {
        if !seeds.contains(&addr) {
            seeds.push(addr);
        }
    }
    let identity = AgentIdentity {
        node_id: joined.node_id,
        name: request.name,
        site: request.site,
        labels: request.labels,
        control_addrs: seeds,
        cluster_fingerprint: hex(&fingerprint),
        gossip: request.advertise.gossip.map(|a| a.to_string()),
        listen: request.listen,
        workloads_dir: request.workloads_dir,
    };
    cache
        .claim(CacheIdentity {
            cluster_id: fingerprint,
            node_id: joined.node_id,
        })
        .await?;
    drop(cache);
    let json = serde_json::to_vec_pretty(&identity).expect("agent identity serializes");
    write_atomic(&agent_file, &json, 0o644).map_err(io_error("write", &agent_file))?;
    info!(node_id = %identity.node_id, "joined the cluster as an agent");
    Ok(identity)
}

/// Joins through the first control address that answers: each is resolved and tried in turn;
/// a refusal that another address cannot change (a bad token) ends the attempt at once.
async fn join_any(
    control_addrs: &[String],
    token: &str,
    params: &JoinParams,
) -> Result<warren_transport::join::Joined, AgentError> {
    let mut last_error = None;
    for addr in control_addrs {
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(addr.as_str()).await {
            Ok(found) => found.collect(),
            Err(error) => {
                warn!(control = %addr, error = %error, "cannot resolve control address");
                last_error = Some(AgentError::NoControl(format!("{addr}: {error}")));
                continue;
            }
        };
        for socket in resolved {
            let result = warren_transport::join::join(
                socket,
                token,
                params.clone(),
                &Default::default(),
                &Default::default(),
            )
            .await;
            match result {
                Ok(joined) => return Ok(joined),
                Err(source) if source.is_retryable() => {
                    warn!(control = %socket, error = %source, "join failed; trying the next address");
                    last_error = Some(AgentError::Join {
                        addr: addr.clone(),
                        source,
                    });
                }
                Err(source) => {
                    return Err(AgentError::Join {
                        addr: addr.clone(),
                        source,
                    });
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| AgentError::NoControl(control_addrs.join(","))))
}

/// Makes sure `data_dir` can hold an agent, before control is asked anything: a directory
/// (created 0700 if missing) that this process can write to, with a cache it can open (not
/// held by another agent). Returns the open cache.
fn prepare_data_dir(data_dir: &Path) -> Result<Cache, AgentError> {
    let refuse = |detail: String| AgentError::DataDir {
        path: data_dir.to_owned(),
        detail,
    };
    match std::fs::metadata(data_dir) {
        Ok(meta) if !meta.is_dir() => return Err(refuse("is not a directory".to_owned())),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(refuse(format!("cannot be read: {error}"))),
    }
    warren_transport::private_dir(data_dir)
        .map_err(|e| refuse(format!("cannot be created: {e}")))?;
    let probe = data_dir.join(".warren-write-check");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| refuse(format!("is not writable: {e}")))?;
    Ok(Cache::open(data_dir, CacheTuning::default())?)
}

/// Reads `agent.json` from `data_dir`.
///
/// # Errors
/// [`AgentError::Io`] when missing, [`AgentError::BadAgentFile`] when it does not parse.
pub fn load_identity(data_dir: &Path) -> Result<AgentIdentity, AgentError> {
    let path = data_dir.join(AGENT_FILE);
    let bytes = std::fs::read(&path).map_err(io_error("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| AgentError::BadAgentFile {
        path,
        detail: e.to_string(),
    })
}

/// One replica in `status.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReplica {
    /// The replica.
    pub replica: ReplicaId,
    /// Its state as of the last pass.
    pub state: TaskState,
    /// The workload's process id, while the agent holds a workload for it.
    pub pid: Option<u32>,
    /// Restarts of the current workload.
    pub restarts: u32,
    /// The workload hash, 16 hex digits.
    pub workload_hash: Option<String>,
    /// When the workload started, unix millis.
    pub started_at_ms: Option<u64>,
    /// The health check's verdict on the current run: `unknown` without a check or before
    /// enough results.
    #[serde(default)]
    pub health: HealthState,
    /// Why the latest health probe failed, while it does (`2 of 3 failures: …`).
    #[serde(default)]
    pub health_detail: Option<String>,
}

/// What `status.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This node.
    pub node_id: NodeId,
    /// Node name.
    pub name: String,
    /// Site.
    pub site: String,
    /// The agent's own process id.
    pub agent_pid: u32,
    /// When the file was written, unix millis.
    pub updated_at_ms: u64,
    /// Revision of the view the agent acts on (0 before any).
    pub revision: u64,
    /// The link to control.
    pub link: LinkStatus,
    /// Every replica the agent knows of.
    pub replicas: Vec<LocalReplica>,
    /// Where the agent serves `/metrics`, if it does.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Where it serves DNS and gossips, once started.
    #[serde(default)]
    pub discovery: crate::discovery::DiscoveryStatus,
    /// Each configured listener (metrics, DNS, gossip): its address, whether it is up, and
    /// why not while it is down (it is being retried).
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// Reads `status.json` from `data_dir`.
///
/// # Errors
/// [`AgentError::Io`] when missing, [`AgentError::BadAgentFile`] when it does not parse.
pub fn load_status(data_dir: &Path) -> Result<AgentStatus, AgentError> {
    let path = data_dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).map_err(io_error("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| AgentError::BadAgentFile {
        path,
        detail: e.to_string(),
    })
}

/// File workloads see as `/etc/resolv.conf` when the agent serves DNS on port 53 (a resolver
/// cannot name another port): `<data dir>/resolv.conf`. It starts as a copy of the host's, so
/// workloads resolve as before until the DNS server is up; discovery then points it at the
/// agent's server. `None` without DNS on port 53.
fn workload_resolv_conf(data_dir: &Path, options: &AgentOptions) -> Option<PathBuf> {
    let dns = options.discovery.dns.as_ref()?;
    if dns.listen.port() != 53 {
        return None;
    }
    let path = data_dir.join(crate::discovery::RESOLV_CONF_FILE);
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if let Err(error) = std::fs::write(&path, host) {
        warn!(error = %error, path = %path.display(), "cannot write the workloads' resolv.conf; they keep the host's");
        return None;
    }
    Some(path)
}

/// An agent opened from its data dir, ready to [`serve`](Agent::serve).
#[derive(Debug)]
pub struct Agent {
    data_dir: PathBuf,
    identity: AgentIdentity,
    credentials: Credentials,
    cache: Arc<Cache>,
    runtime: Arc<dyn Runtime>,
    options: AgentOptions,
}

impl Agent {
    /// Opens the agent in `data_dir` and runs it until `cancel` or removal.
    ///
    /// # Errors
    /// As [`Agent::open`] and [`Agent::serve`].
    pub async fn run(
        data_dir: &Path,
        options: AgentOptions,
        cancel: CancellationToken,
    ) -> Result<RunEnd, AgentError> {
        Agent::open(data_dir, options)?.serve(cancel).await
    }

    /// Loads `agent.json` and the credentials, opens the cache and the process runtime.
    ///
    /// # Errors
    /// Missing or corrupt files, a locked or foreign cache, an unusable runtime, or
    /// [`AgentError::Removed`] for a node removed earlier.
    pub fn open(data_dir: &Path, options: AgentOptions) -> Result<Agent, AgentError> {
        let identity = load_identity(data_dir)?;
        // Only its owner may read the node's keys and cache (a dir made by hand may be wider).
        match warren_transport::private_dir(data_dir) {
            Ok(true) => {
                info!(path = %data_dir.display(), "data dir was readable by other local users; it is 0700 now");
            }
            Ok(false) => {}
            Err(error) => {
                return Err(AgentError::DataDir {
                    path: data_dir.to_owned(),
                    detail: format!("cannot be made private: {error}"),
                });
            }
        }
        let credentials = Credentials::load(data_dir)?;
        let cache = Cache::open(data_dir, options.cache)?;
        let expected = CacheIdentity {
            cluster_id: credentials.cluster_fingerprint(),
            node_id: identity.node_id,
        };
        if let Some(found) = cache.identity()?
            && found != expected
        {
            return Err(AgentError::BadAgentFile {
                path: data_dir.join("cache"),
                detail: format!(
                    "the cache belongs to node {}, not {}",
                    found.node_id, identity.node_id
                ),
            });
        }
        if cache.get::<bool>(REMOVED_KEY)?.unwrap_or(false) {
            return Err(AgentError::Removed);
        }
        let mut process_options = options.process.clone();
        if process_options.resolv_conf.is_none() {
            process_options.resolv_conf = workload_resolv_conf(data_dir, &options);
        }
        if process_options.workloads_dir.is_none() {
            process_options.workloads_dir = identity.workloads_dir.clone();
        }
        let runtime = ProcessRuntime::for_agent(data_dir, process_options.clone())?;
        let mut options = options;
        options.process = process_options;
        Ok(Agent {
            data_dir: data_dir.to_owned(),
            identity,
            credentials,
            cache: Arc::new(cache),
            runtime: Arc::new(runtime),
            options,
        })
    }

    /// This agent's identity.
    pub fn identity(&self) -> &AgentIdentity {
        &self.identity
    }

    /// Runs the link and the reconcile loop until `cancel` (workloads keep running) or the
    /// node's removal (workloads stopped, records and secrets wiped).
    ///
    /// # Errors
    /// [`AgentError::Bind`] when the QUIC endpoint cannot be created.
    ///
    /// # Cancel safety
    /// Cancel through `cancel`, not by dropping the future: a dropped future may leave a
    /// started workload unrecorded.
    pub async fn serve(self, cancel: CancellationToken) -> Result<RunEnd, AgentError> {
        let metrics = AgentMetrics::new(self.identity.node_id, &self.identity.site);
        let cached = self.cached_view(&metrics)?;
        let revision = cached.as_ref().map_or(0, |v| v.revision.0);
        let (views_tx, views) = watch::channel(cached);
        let (status_tx, link_status) = watch::channel(LinkStatus {
            revision,
            ..LinkStatus::default()
        });
        let reporter = Arc::new(Reporter::open(self.identity.node_id, self.cache.clone()));
        // Discovery publishes its gossip view here; the link reads it as a witness.
        let (gossip_tx, gossip_rx) = watch::channel(Vec::new());
        let link = self.link(views_tx, status_tx, gossip_rx, &reporter, &metrics)?;
        let gossip_identity = self.gossip_identity(link.endpoint.credentials().clone())?;
        // Renewal ends with the agent, whichever way it returns.
        let renewal_cancel = cancel.child_token();
        let _renewal_guard = renewal_cancel.clone().drop_guard();
        tokio::spawn(link.keep_renewed(self.data_dir.clone(), renewal_cancel));
        let link_cancel = cancel.child_token();
        let link_task = tokio::spawn(link.run(link_cancel.clone()));

        let tasks = TaskTracker::new();
        let book = ListenerBook::new(metrics.listener_up.clone(), reporter.clone());
        if let Some(addr) = self.options.metrics_listen {
            let sources = MetricsSources {
                metrics: metrics.clone(),
                link: link_status.clone(),
                reporter: reporter.clone(),
                cache: self.cache.clone(),
                views: views.clone(),
            };
            book.expect(Listener::Metrics, addr);
            let cancel = cancel.child_token();
            tasks.spawn(serve_metrics(
                addr,
                sources,
                book.clone(),
                cancel,
                tasks.clone(),
            ));
        }
        self.warn_of_selfcheck();
        // Discovery ends with the agent, whichever way it returns.
        let discovery_cancel = cancel.child_token();
        let _discovery_guard = discovery_cancel.clone().drop_guard();
        let discovery = self.start_discovery(
            &tasks,
            (views.clone(), gossip_identity),
            &metrics,
            &book,
            gossip_tx,
            discovery_cancel,
        );
        let mut reconciler =
            Reconciler::new(&self, cancel.child_token(), reporter, metrics, book.clone());
        reconciler.discovery = discovery.clone();
        reconciler.adopt_recorded().await;
        info!(node_id = %self.identity.node_id, "agent running");
        let watches = Watches {
            views,
            link_status,
            discovery,
            listeners: book.subscribe(),
        };
        let end = self
            .reconcile_until_end(&mut reconciler, watches, link_task, &cancel)
            .await;
        link_cancel.cancel();
        tasks.close();
        reconciler.health_monitor.shutdown().await;
        let end = match end {
            Ended::Removed(message) => return Ok(RunEnd::Removed(message)),
            Ended::Stopped(link_task) => link_task,
        };
        if let Some(link_task) = end
            && !link_task.is_finished()
        {
            let _ = tokio::time::timeout(LINK_SHUTDOWN_TIMEOUT, link_task).await;
        }
        reconciler.link.connected = false;
        reconciler.write_status(None, true);
        reconciler.flush().await;
        info!(node_id = %self.identity.node_id, "agent stopped; workloads keep running");
        Ok(RunEnd::Stopped)
    }

    fn warn_of_selfcheck(&self) {
        if self.options.selfcheck_stop_on_disconnect {
            warn!(
                "self-check knob WARREN_SELFCHECK_STOP_ON_DISCONNECT is set: this agent stops its workloads when the link to control is lost — never use this in production"
            );
        }
    }

    /// The cached view to start from. A corrupt one is dropped (and counted): it can be fetched
    /// again, and the workload records (kept apart) still let the running workloads be
    /// adopted, so nothing restarts meanwhile.
    fn cached_view(&self, metrics: &AgentMetrics) -> Result<Option<Arc<NodeView>>, AgentError> {
        match self.cache.view() {
            Ok(view) => Ok(view.map(Arc::new)),
            Err(error @ CacheError::Corrupt { .. }) => {
                warn!(error = %error, "cached view dropped; fetching it again from control, running workloads are kept");
                metrics.cache_corrupt_total.inc();
                self.cache.remove(VIEW_KEY)?;
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The link to control, on a client endpoint of its own.
    fn link(
        &self,
        views: watch::Sender<Option<Arc<NodeView>>>,
        status: watch::Sender<LinkStatus>,
        gossip: watch::Receiver<Vec<warren_mesh::Member>>,
        reporter: &Arc<Reporter>,
        metrics: &AgentMetrics,
    ) -> Result<Link, AgentError> {
        // No name lookups here: an offline box must reach the reconcile loop without waiting
        // on DNS. The link resolves the seeds itself, in its own task.
        let bind: SocketAddr = if self.first_seed_is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let mut endpoint_options = self.options.endpoint.clone();
        // The link pings control this often when idle, so that silence on the connection means
        // something to its failure detector (`link_failure`).
        endpoint_options.config.keep_alive_interval = endpoint_options
            .config
            .keep_alive_interval
            .min(crate::link_failure::LINK_KEEP_ALIVE);
        let endpoint = Endpoint::client(bind, &self.credentials, endpoint_options)?;
        Ok(Link {
            endpoint: Arc::new(endpoint),
            node_id: self.identity.node_id,
            cache: self.cache.clone(),
            seeds: self.identity.control_addrs.clone(),
            views,
            status,
            reporter: reporter.clone(),
            failures_total: metrics.link_failures_total.clone(),
            gossip,
        })
    }

    /// How the mesh signs this agent's gossip state (with the certificate the link presents,
    /// renewed in place) and checks other members' (against the cluster CA).
    fn gossip_identity(
        &self,
        current: warren_transport::current::CurrentCredentials,
    ) -> Result<MeshIdentity, AgentError> {
        let members = MemberCertificates::new(
            self.credentials.ca_cert_der(),
            &self.options.endpoint.revocations,
            self.options.endpoint.config.renew_grace,
        )
        .map_err(|e| AgentError::Bind(BindError::Tls(format!("cluster CA certificate: {e}"))))?;
        let signer = GossipSigner::new(current);
        let sign = signer.clone();
        Ok(MeshIdentity::new(
            move || signer.credential(),
            move |message| sign.sign(message),
            move |node, credential| members.public_key(node, credential),
        ))
    }

    /// Starts gossip and DNS (each only if configured) in a task of `tasks`; returns where
    /// they serve.
    fn start_discovery(
        &self,
        tasks: &TaskTracker,
        (views, gossip_identity): (watch::Receiver<Option<Arc<NodeView>>>, MeshIdentity),
        metrics: &AgentMetrics,
        book: &ListenerBook,
        gossip: watch::Sender<Vec<warren_mesh::Member>>,
        cancel: CancellationToken,
    ) -> watch::Receiver<crate::discovery::DiscoveryStatus> {
        let options = crate::discovery::DiscoveryOptions {
            // Peers dial what was registered at join, unless told otherwise.
            gossip_advertise: self
                .options
                .discovery
                .gossip_advertise
                .or_else(|| self.identity.gossip.as_deref().and_then(|a| a.parse().ok())),
            ..self.options.discovery.clone()
        };
        let local = crate::discovery::Local {
            node_id: self.identity.node_id,
            name: self.identity.name.clone(),
            site: self.identity.site.clone(),
            cluster_fingerprint: self.identity.cluster_fingerprint.clone(),
            data_dir: self.data_dir.clone(),
            resolv_conf: self.options.process.resolv_conf.clone(),
            gossip_identity,
        };
        let (status_tx, status) = watch::channel(Default::default());
        tasks.spawn(crate::discovery::run(
            local,
            options,
            views,
            metrics.registry().clone(),
            crate::discovery::Reporting {
                status: status_tx,
                listeners: book.clone(),
                gossip,
            },
            cancel,
        ));
        status
    }

    /// Runs reconcile passes — on every change of the view, the link, discovery or a listener,
    /// at the planner's wake-ups and at least every [`RECONCILE_INTERVAL`] — until `cancel`,
    /// the link's end, or the node's removal (workloads then stopped and wiped).
    async fn reconcile_until_end(
        &self,
        reconciler: &mut Reconciler,
        mut watches: Watches,
        mut link_task: tokio::task::JoinHandle<LinkEnd>,
        cancel: &CancellationToken,
    ) -> Ended {
        let mut last_rotate = tokio::time::Instant::now();
        loop {
            let view = watches.views.borrow_and_update().clone();
            let status = watches.link_status.borrow_and_update().clone();
            watches.listeners.borrow_and_update();
            let wakeup_ms = reconciler.pass(view.as_deref(), status).await;
            if last_rotate.elapsed() >= LOG_ROTATE_INTERVAL {
                last_rotate = tokio::time::Instant::now();
                if let Err(error) = self.runtime.rotate_logs().await {
                    warn!(error = %error, "cannot rotate workload logs");
                }
            }
            let delay = wakeup_ms.map_or(RECONCILE_INTERVAL, |at| {
                Duration::from_millis(at.saturating_sub(now_ms())).min(RECONCILE_INTERVAL)
            });
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ended::Stopped(Some(link_task)),
                end = &mut link_task => match end {
                    Ok(LinkEnd::Removed(message)) => {
                        warn!(%message, "node removed from the cluster; stopping every workload");
                        reconciler.teardown().await;
                        return Ended::Removed(message);
                    }
                    Ok(LinkEnd::Cancelled) => return Ended::Stopped(None),
                    Err(error) => {
                        // Workloads must keep running whatever happened to the link.
                        warn!(error = %error, "link task failed; agent stopping, workloads keep running");
                        return Ended::Stopped(None);
                    }
                },
                _ = watches.views.changed() => {}
                _ = watches.link_status.changed() => {}
                Ok(()) = watches.discovery.changed() => {}
                Ok(()) = watches.listeners.changed() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Whether the first control seed is a literal IPv6 address (host names count as IPv4).
    fn first_seed_is_ipv6(&self) -> bool {
        self.identity
            .control_addrs
            .first()
            .and_then(|seed| seed.parse::<SocketAddr>().ok())
            .is_some_and(|addr| addr.is_ipv6())
    }
}

/// What the reconcile loop wakes on besides its timers.
struct Watches {
    views: watch::Receiver<Option<Arc<NodeView>>>,
    link_status: watch::Receiver<LinkStatus>,
    discovery: watch::Receiver<crate::discovery::DiscoveryStatus>,
    listeners: watch::Receiver<BTreeMap<Listener, ListenerStatus>>,
}

/// How the reconcile loop ended.
enum Ended {
    /// Stopped (cancelled, or the link ended); the link task, if it still runs.
    Stopped(Option<tokio::task::JoinHandle<LinkEnd>>),
    /// The node was removed; the workloads are stopped and wiped.
    Removed(String),
}

/// Serves metrics at `addr` once it can be bound, retrying with backoff meanwhile (workloads
/// come before observability: the agent runs on, and the listener shows as down). The
/// listener's connections go in `tasks`.
async fn serve_metrics(
    addr: SocketAddr,
    sources: MetricsSources,
    book: ListenerBook,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let mut retry = BindRetry::new(Listener::Metrics);
    loop {
        let served = crate::metrics::serve(addr, sources.clone(), cancel.clone(), tasks.clone());
        let delay = match served.await {
            Ok(bound) => {
                info!(addr = %bound, "metrics served");
                retry.bound(&book, bound);
                return;
            }
            Err(error) => retry.failed(&book, addr, &error),
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The reconcile driver's state: the handles it holds, exits it has seen, the restart book.
#[derive(Debug)]
struct Reconciler {
    data_dir: PathBuf,
    identity: AgentIdentity,
    cache: Arc<Cache>,
    runtime: Arc<dyn Runtime>,
    handles: BTreeMap<ReplicaId, WorkloadHandle>,
    /// When each exited workload was first seen exited (keyed by its start), so that the
    /// planner sees one exit time per run.
    exits: BTreeMap<ReplicaId, (u64, u64)>,
    book: RestartBook,
    /// The node secret key and what each workload's secret files hold.
    secrets: NodeSecrets,
    health: BTreeMap<ReplicaId, warren_api::HealthState>,
    /// Runs the health checks whose results fill `health`.
    health_monitor: HealthMonitor,
    states: BTreeMap<ReplicaId, TaskState>,
    link: LinkStatus,
    revision: u64,
    reporter: Arc<Reporter>,
    metrics: AgentMetrics,
    /// The listeners' states (and where metrics are served), for `status.json`.
    listeners: ListenerBook,
    /// The statuses last reported, to keep `updated_at_ms` at the last real change.
    reported: BTreeMap<ReplicaId, ReplicaStatus>,
    /// What `status.json` last held (without its timestamps), and when it was written.
    written: Option<(AgentStatus, tokio::time::Instant)>,
    /// [`AgentOptions::selfcheck_stop_on_disconnect`].
    selfcheck_stop_on_disconnect: bool,
    /// Where discovery serves, for `status.json`.
    discovery: watch::Receiver<crate::discovery::DiscoveryStatus>,
}

impl Reconciler {
    fn new(
        agent: &Agent,
        cancel: CancellationToken,
        reporter: Arc<Reporter>,
        metrics: AgentMetrics,
        listeners: ListenerBook,
    ) -> Self {
        let book = match agent.cache.get::<RestartBook>(BOOK_KEY) {
            Ok(book) => book.unwrap_or_default(),
            Err(error) => {
                warn!(error = %error, "restart history unreadable; starting afresh");
                RestartBook::new()
            }
        };
        Reconciler {
            data_dir: agent.data_dir.clone(),
            identity: agent.identity.clone(),
            cache: agent.cache.clone(),
            runtime: agent.runtime.clone(),
            handles: BTreeMap::new(),
            exits: BTreeMap::new(),
            book,
            secrets: NodeSecrets::load(&agent.data_dir),
            health: BTreeMap::new(),
            health_monitor: HealthMonitor::new(cancel),
            states: BTreeMap::new(),
            link: LinkStatus::default(),
            revision: 0,
            reporter,
            metrics,
            listeners,
            reported: BTreeMap::new(),
            written: None,
            selfcheck_stop_on_disconnect: agent.options.selfcheck_stop_on_disconnect,
            discovery: watch::channel(Default::default()).1,
        }
    }

    /// Re-attaches to the workloads an earlier agent recorded; forgets records of workloads
    /// that are gone (the planner starts them again).
    async fn adopt_recorded(&mut self) {
        for key in self.cache.keys_with_prefix(RECORD_PREFIX) {
            let record = match self.cache.get::<WorkloadRecord>(&key) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(error) => {
                    warn!(error = %error, "dropping an unreadable workload record");
                    self.remove_key(&key);
                    continue;
                }
            };
            match self.runtime.adopt(&record).await {
                Some(handle) => {
                    info!(replica = %record.replica, pid = ?record.pid(), "re-adopted workload");
                    self.handles.insert(record.replica.clone(), handle);
                }
                None => {
                    info!(replica = %record.replica, "recorded workload is gone");
                    self.remove_key(&key);
                }
            }
        }
        self.flush().await;
    }

    fn remove_key(&self, key: &str) {
        if let Err(error) = self.cache.remove(key) {
            warn!(error = %error, key, "cannot update the agent cache");
        }
    }

    async fn flush(&self) {
        if let Err(error) = self.cache.flush().await {
            warn!(error = %error, "cannot flush the agent cache");
        }
    }

    /// One reconcile pass; returns the planner's next wake-up.
    async fn pass(&mut self, view: Option<&NodeView>, link: LinkStatus) -> Option<u64> {
        self.link = link;
        self.metrics.reconcile_passes_total.inc();
        let observed = self.observe().await;
        if self.selfcheck_stop_on_disconnect && self.link.connects > 0 && !self.link.connected {
            self.stop_while_link_lost().await;
            self.write_status(view, false);
            return None;
        }
        let Some(view) = view else {
            // Never had a view: keep whatever was adopted, decide nothing.
            self.write_status(None, false);
            return None;
        };
        self.revision = view.revision.0;
        let targets = health_targets(&self.handles, view, &observed);
        self.health_monitor.sync(targets);
        self.health = self.health_monitor.health();
        let health_events = self.health_monitor.drain_events();
        self.record_events(health_events);
        let before = self.book.clone();
        let now = now_ms();
        let plan = planner::plan(
            &PlanInput {
                now_ms: now,
                view,
                observed: &observed,
                health: &self.health,
            },
            &mut self.book,
        );
        self.record_events(plan.events.clone());
        for action in &plan.actions {
            let events = self.execute(action, view).await;
            self.record_events(events);
        }
        self.secrets
            .refresh(&*self.runtime, view, &self.handles)
            .await;
        self.states = plan.states.clone();
        self.report(view.revision);
        if self.book != before {
            if let Err(error) = self.cache.put(BOOK_KEY, &self.book) {
                warn!(error = %error, "cannot store the restart history");
            }
            self.flush().await;
        }
        self.write_status(Some(view), false);
        // Something was started, restarted or stopped: look again soon, so that a started
        // workload shows `running` and a stopped one's replacement starts without waiting out
        // the whole reconcile interval.
        let acted = plan
            .actions
            .iter()
            .any(|a| !matches!(a, Action::Wait { .. } | Action::Adopt { .. }));
        if acted {
            let soon = now_ms() + FOLLOW_UP_PASS.as_millis() as u64;
            return Some(plan.next_wakeup_ms.map_or(soon, |at| at.min(soon)));
        }
        plan.next_wakeup_ms
    }

    /// The self-check knob ([`AgentOptions::selfcheck_stop_on_disconnect`]) with the link
    /// lost: stops every workload and plans nothing, so none starts again until the link is
    /// back. Deliberately the opposite of what the agent promises.
    async fn stop_while_link_lost(&mut self) {
        self.health_monitor.sync(Vec::new());
        self.health.clear();
        if self.handles.is_empty() {
            return;
        }
        warn!(
            n_workloads = self.handles.len(),
            "self-check knob WARREN_SELFCHECK_STOP_ON_DISCONNECT fired: the link to control is lost, stopping every workload"
        );
        let now = now_ms();
        let mut events = Vec::new();
        for (replica, workload_hash) in self.stop_every_workload().await {
            self.states.insert(replica.clone(), TaskState::Stopped);
            events.push(self.book.record_stopped(
                &replica,
                workload_hash,
                planner::StopReason::SelfCheckLinkLost,
                now,
            ));
        }
        self.record_events(events);
        if let Err(error) = self.cache.put(BOOK_KEY, &self.book) {
            warn!(error = %error, "cannot store the restart history");
        }
        self.flush().await;
    }

    fn record_events(&self, events: Vec<Event>) {
        log_events(&events);
        self.metrics.count_events(events.iter().map(|e| e.kind));
        self.reporter.push_events(events);
    }

    /// Hands the replicas' states to the reporter (the link sends them if they changed).
    fn report(&mut self, revision: Revision) {
        let now = now_ms();
        let mut statuses = Vec::new();
        let mut known: BTreeMap<ReplicaId, TaskState> = self.states.clone();
        for replica in self.handles.keys() {
            known.entry(replica.clone()).or_insert(TaskState::Running);
        }
        for (replica, state) in known {
            let record = self.handles.get(&replica).map(WorkloadHandle::record);
            let history = self.book.get(&replica);
            let last_exit = history.and_then(|h| h.last_exit.as_ref());
            let mut status = ReplicaStatus {
                id: replica.clone(),
                node: self.identity.node_id,
                state,
                pid: record.and_then(WorkloadRecord::pid),
                started_at_ms: record.map(|r| r.started_at_ms),
                exit_code: last_exit.and_then(|e| e.code),
                restarts: history.map_or(0, |h| h.restarts),
                health: self.health.get(&replica).copied().unwrap_or_default(),
                message: match state {
                    TaskState::Running | TaskState::Starting => None,
                    _ => last_exit.map(planner::ExitRecord::describe),
                },
                updated_at_ms: now,
            };
            if let Some(previous) = self.reported.get(&replica) {
                let unchanged = ReplicaStatus {
                    updated_at_ms: previous.updated_at_ms,
                    ..status.clone()
                };
                if unchanged == *previous {
                    status.updated_at_ms = previous.updated_at_ms;
                }
            }
            statuses.push(status);
        }
        self.metrics
            .set_workloads(statuses.iter().map(|s| (s.state, s.health)));
        self.reported = statuses.iter().map(|s| (s.id.clone(), s.clone())).collect();
        self.reporter.set_replicas(revision, statuses);
    }

    /// Observes every held workload, in the planner's terms.
    async fn observe(&mut self) -> Vec<Observed> {
        let mut out = Vec::with_capacity(self.handles.len());
        let mut gone = Vec::new();
        for (replica, handle) in &self.handles {
            let record = handle.record();
            let state = match self.runtime.observe(handle).await {
                Ok(crate::runtime::Observed::Running) => ObservedState::Running {
                    since_ms: record.started_at_ms,
                },
                Ok(crate::runtime::Observed::Exited { code, signal }) => {
                    let seen = self
                        .exits
                        .entry(replica.clone())
                        .or_insert((record.started_at_ms, now_ms()));
                    if seen.0 != record.started_at_ms {
                        *seen = (record.started_at_ms, now_ms());
                    }
                    ObservedState::Exited {
                        code: if signal.is_some() { None } else { code },
                        at_ms: seen.1,
                    }
                }
                Ok(crate::runtime::Observed::Gone) => {
                    gone.push(replica.clone());
                    continue;
                }
                Err(error) => {
                    // Cannot tell: assume it runs rather than start a second copy.
                    warn!(%replica, error = %error, "cannot observe workload");
                    ObservedState::Running {
                        since_ms: record.started_at_ms,
                    }
                }
            };
            out.push(Observed {
                replica: replica.clone(),
                workload_hash: record.workload_hash,
                state,
            });
        }
        for replica in gone {
            info!(%replica, "workload vanished");
            self.handles.remove(&replica);
            self.remove_key(&record_key(&replica));
        }
        out
    }

    /// Carries out one action; returns the events it caused.
    async fn execute(&mut self, action: &Action, view: &NodeView) -> Vec<Event> {
        let now = now_ms();
        match action {
            Action::Stop {
                replica,
                workload_hash,
                grace_ms,
                reason,
            } => {
                if self.stop(replica, Duration::from_millis(*grace_ms)).await {
                    vec![
                        self.book
                            .record_stopped(replica, *workload_hash, *reason, now),
                    ]
                } else {
                    vec![]
                }
            }
            Action::Adopt {
                replica,
                service,
                workload_hash,
                since_ms,
            } => vec![
                self.book
                    .record_adopted(replica, service, *workload_hash, *since_ms, now),
            ],
            Action::Restart {
                replica,
                service,
                workload_hash,
                previous_hash,
                reason,
            } => {
                if self.is_live(replica).await {
                    let grace = Duration::from_millis(service.spec.stop_grace_period_ms);
                    if !self.stop(replica, grace).await {
                        return vec![];
                    }
                    if matches!(reason, planner::RestartReason::Unhealthy) {
                        self.book
                            .record_exited(replica, service, *previous_hash, None, now);
                    }
                }
                self.health.remove(replica);
                vec![
                    self.start(replica, service, *workload_hash, &view.secrets)
                        .await,
                ]
            }
            Action::Start {
                replica,
                service,
                workload_hash,
            } => {
                if self.is_live(replica).await {
                    // The planner starts only once the old workload has stopped; a live one
                    // here is a race with its exit: plan again next pass.
                    return vec![];
                }
                self.health.remove(replica);
                vec![
                    self.start(replica, service, *workload_hash, &view.secrets)
                        .await,
                ]
            }
            Action::Wait { .. } => vec![],
        }
    }

    async fn is_live(&self, replica: &ReplicaId) -> bool {
        let Some(handle) = self.handles.get(replica) else {
            return false;
        };
        matches!(
            self.runtime.observe(handle).await,
            Ok(crate::runtime::Observed::Running) | Err(_)
        )
    }

    /// Stops every held workload, each with its service's stop grace period; returns the
    /// replicas stopped, with their workload hashes.
    async fn stop_every_workload(&mut self) -> Vec<(ReplicaId, u64)> {
        let held: Vec<(ReplicaId, u64)> = self
            .handles
            .iter()
            .map(|(replica, handle)| (replica.clone(), handle.record().workload_hash))
            .collect();
        let mut stopped = Vec::with_capacity(held.len());
        for (replica, workload_hash) in held {
            let grace_ms = self
                .book
                .get(&replica)
                .map_or(DEFAULT_STOP_GRACE_PERIOD_MS, |r| r.stop_grace_period_ms);
            if self.stop(&replica, Duration::from_millis(grace_ms)).await {
                stopped.push((replica, workload_hash));
            }
        }
        stopped
    }

    /// Stops the replica's workload and forgets it; returns whether it is stopped.
    async fn stop(&mut self, replica: &ReplicaId, grace: Duration) -> bool {
        if let Some(handle) = self.handles.get(replica) {
            if let Err(error) = self.runtime.stop(handle, grace).await {
                warn!(%replica, error = %error, "cannot stop workload; trying again next pass");
                return false;
            }
        }
        if let Err(error) = self.runtime.cleanup(replica).await {
            warn!(%replica, error = %error, "cannot clean up after workload");
        }
        self.handles.remove(replica);
        self.exits.remove(replica);
        self.secrets.forget(replica);
        self.remove_key(&record_key(replica));
        self.flush().await;
        true
    }

    async fn start(
        &mut self,
        replica: &ReplicaId,
        service: &Service,
        workload_hash: u64,
        sealed: &BTreeMap<String, SealedBlob>,
    ) -> Event {
        let now = now_ms();
        let started = match self.secrets.request(replica, &service.spec, sealed) {
            Ok(request) => self.runtime.start(&request).await.map_err(StartError::from),
            Err(error) => Err(error),
        };
        match started {
            Ok(handle) => {
                if let Err(error) = self.cache.put(&record_key(replica), handle.record()) {
                    warn!(%replica, error = %error, "cannot record the started workload");
                }
                self.flush().await;
                let runs_as = handle.record().credentials.as_ref().map(|c| c.describe());
                self.handles.insert(replica.clone(), handle);
                self.exits.remove(replica);
                let mut event = self
                    .book
                    .record_started(replica, service, workload_hash, now);
                // Who it runs as, said with every start: `service ps` and the events show it.
                if let Some(runs_as) = runs_as {
                    event.message.push_str(&format!(" as {runs_as}"));
                }
                event
            }
            Err(error) => {
                warn!(%replica, error = %error, "cannot start workload");
                self.book.record_start_failed(
                    replica,
                    service,
                    workload_hash,
                    now,
                    &error.to_string(),
                )
            }
        }
    }

    /// The node was removed: stop everything, wipe records, secrets and the view, and mark
    /// the cache so that an offline boot does not start the workloads again.
    async fn teardown(&mut self) {
        self.health_monitor.shutdown().await;
        self.health.clear();
        self.stop_every_workload().await;
        // Stopping removed the stopped replicas' secrets; this catches any left behind (a
        // workload that would not stop, one the agent lost track of).
        if let Err(error) = self.runtime.wipe_secrets().await {
            warn!(error = %error, "cannot remove every secret file");
        }
        if let Err(error) = secrets::remove_key(&self.data_dir) {
            warn!(error = %error, "cannot remove the node secret key");
        }
        self.secrets.clear();
        for key in self.cache.keys_with_prefix(RECORD_PREFIX) {
            self.remove_key(&key);
        }
        self.remove_key(BOOK_KEY);
        self.remove_key(VIEW_KEY);
        if let Err(error) = self.cache.put(REMOVED_KEY, &true) {
            warn!(error = %error, "cannot mark the cache as removed");
        }
        self.flush().await;
        self.book = RestartBook::new();
        self.states.clear();
        self.reporter.clear();
        self.link.connected = false;
        self.write_status(None, true);
    }

    /// Writes `status.json` when what it says changed, or [`STATUS_REFRESH`] after the last
    /// write (so its link contact time stays roughly current) — not on every pass: the data
    /// dir may sit on flash, and each write is an fsync.
    fn write_status(&mut self, view: Option<&NodeView>, force: bool) {
        let mut replicas: BTreeMap<ReplicaId, LocalReplica> = BTreeMap::new();
        for (replica, state) in &self.states {
            replicas.insert(replica.clone(), self.replica_status(replica, *state));
        }
        for replica in self.handles.keys() {
            replicas
                .entry(replica.clone())
                .or_insert_with(|| self.replica_status(replica, TaskState::Running));
        }
        let status = AgentStatus {
            node_id: self.identity.node_id,
            name: self.identity.name.clone(),
            site: self.identity.site.clone(),
            agent_pid: std::process::id(),
            updated_at_ms: now_ms(),
            revision: view.map_or(self.revision, |v| v.revision.0),
            link: self.link.clone(),
            replicas: replicas.into_values().collect(),
            metrics_addr: self.listeners.bound(Listener::Metrics),
            listeners: self.listeners.snapshot(),
            discovery: self.discovery.borrow().clone(),
        };
        let comparable = AgentStatus {
            updated_at_ms: 0,
            link: LinkStatus {
                last_contact_ms: None,
                ..status.link.clone()
            },
            ..status.clone()
        };
        let fresh = self
            .written
            .as_ref()
            .is_some_and(|(last, at)| *last == comparable && at.elapsed() < STATUS_REFRESH);
        if fresh && !force {
            return;
        }
        let path = self.data_dir.join(STATUS_FILE);
        let json = serde_json::to_vec_pretty(&status).expect("status serializes");
        if let Err(error) = write_atomic(&path, &json, 0o644) {
            warn!(error = %error, path = %path.display(), "cannot write agent status");
            return;
        }
        self.written = Some((comparable, tokio::time::Instant::now()));
    }

    fn replica_status(&self, replica: &ReplicaId, state: TaskState) -> LocalReplica {
        let record = self.handles.get(replica).map(WorkloadHandle::record);
        let health = self.health.get(replica).copied();
        LocalReplica {
            replica: replica.clone(),
            state,
            pid: record.and_then(WorkloadRecord::pid),
            restarts: self.book.get(replica).map_or(0, |r| r.restarts),
            workload_hash: record.map(|r| format!("{:016x}", r.workload_hash)),
            started_at_ms: record.map(|r| r.started_at_ms),
            health: health.unwrap_or_default(),
            health_detail: health
                .and_then(|_| self.health_monitor.last_failure(replica))
                .map(str::to_owned),
        }
    }
}

fn record_key(replica: &ReplicaId) -> String {
    format!("{RECORD_PREFIX}{replica}")
}

/// The health checks to run: one per running workload whose service has a check. Exec probes
/// get the service's environment and run in the workload's working directory, as its user.
fn health_targets(
    handles: &BTreeMap<ReplicaId, WorkloadHandle>,
    view: &NodeView,
    observed: &[Observed],
) -> Vec<HealthTarget> {
    observed
        .iter()
        .filter_map(|workload| {
            let ObservedState::Running { since_ms } = workload.state else {
                return None;
            };
            let spec = &view.services.get(&workload.replica.service)?.spec;
            let check = spec.health.clone()?;
            let record = handles.get(&workload.replica).map(WorkloadHandle::record);
            let working_dir = match &spec.workload {
                Workload::Process(_) => record.map(|r| r.working_dir.clone()),
                // Exec probes in containers come with the container runtime.
                Workload::Image(_) => None,
            };
            Some(HealthTarget {
                replica: workload.replica.clone(),
                check,
                started_at_ms: since_ms,
                workload_hash: workload.workload_hash,
                exec: ExecContext {
                    env: spec.env.clone(),
                    working_dir,
                    credentials: record.and_then(|r| r.credentials.clone()),
                },
            })
        })
        .collect()
}

fn log_events(events: &[Event]) {
    for event in events {
        match &event.replica {
            Some(replica) => info!(%replica, kind = ?event.kind, "{}", event.message),
            None => info!(kind = ?event.kind, "{}", event.message),
        }
    }
}
