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
//! - `agent.rs` (this file): the options, the error type, the agent's cache keys, and
//!   [`Agent::open`] (loading the data dir and setting up the runtime).
//! - `agent/identity.rs`: `agent.json` — who this agent is and where control was.
//! - `agent/join.rs`: [`join`] — joining the cluster and preparing the data dir.
//! - `agent/status_file.rs`: `status.json` — its format, reading it, writing it only when it
//!   changed.
//! - `agent/wiring.rs`: [`Agent::serve`] — builds the link, the metrics listener, discovery
//!   and the reconciler, starts their tasks, and stops them in order.
//! - `agent/reconcile.rs`: the reconcile loop and its driver — observe the runtime, plan,
//!   report; `agent/reconcile/actions.rs` carries out the planner's actions,
//!   `agent/reconcile/reporting.rs` sends events and states up and writes `status.json`.
//!
//! Must never: stop a workload because the link is down, or because the agent itself stops
//! (SIGTERM leaves workloads running; the next agent adopts them). The one exception is the
//! test-only [`AgentOptions::selfcheck_stop_on_disconnect`], which breaks the first rule on
//! purpose so that the chaos harness can prove its checks notice.

mod identity;
mod join;
mod reconcile;
pub(crate) mod runtime_choice;
mod status_file;
mod wiring;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_transport::ca::CaError;
use warren_transport::endpoint::BindError;
use warren_transport::join::JoinError;
use warren_transport::{Credentials, EndpointOptions};

pub use self::identity::{AGENT_FILE, AgentIdentity, load_identity};
pub use self::join::{JoinAdvertise, JoinRequest, finish_interrupted_join, join};
pub use self::reconcile::{FOLLOW_UP_PASS, LOG_ROTATE_INTERVAL, RECONCILE_INTERVAL};
pub use self::runtime_choice::{
    RUNTIME_FILE, RuntimeChoice, load_runtime_choice, save_runtime_choice,
};
pub use self::status_file::{AgentStatus, LocalReplica, STATUS_FILE, STATUS_REFRESH, load_status};
use crate::cache::{Cache, CacheError, CacheIdentity, CacheTuning};
use crate::runtime::{ProcessRuntimeOptions, Runtime, RuntimeError};

pub(crate) const RECORD_PREFIX: &str = "workload/";
const BOOK_KEY: &str = "restart_book";
const REMOVED_KEY: &str = "removed";
const VIEW_KEY: &str = "view";

/// How the agent runs.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// The process runtime's settings (the container runtime shares its directories, log
    /// bounds and resolv.conf).
    pub process: ProcessRuntimeOptions,
    /// The runtime to run workloads with, kept in the data dir for later starts; `None`: the
    /// one kept there, else the process runtime.
    pub runtime: Option<RuntimeChoice>,
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
    /// The WireGuard overlay; `None` (the default here) runs none. `warren agent` sets it
    /// (`--wireguard auto` unless told otherwise).
    pub overlay: Option<crate::overlay::OverlaySettings>,
    /// The `warren` binary, which containerd's shim starts beside each new container as its
    /// log writer (through a link named `runtime::containerd::LOGGER_NAME` in the data dir):
    /// standard output and error to their own files. `None` (the default here): both go to
    /// `stdout.log`. `warren agent` sets it.
    pub container_logger: Option<PathBuf>,
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
    /// `agent.json` or `status.json` does not parse.
    #[error("{}: {source}", path.display())]
    Unparsable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The data dir's cache was claimed for another node.
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

/// Reads a JSON file of the data dir (`agent.json`, `status.json`).
fn read_json<T: serde::de::DeserializeOwned>(path: PathBuf) -> Result<T, AgentError> {
    let bytes = std::fs::read(&path).map_err(io_error("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|source| AgentError::Unparsable { path, source })
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
        let choice = runtime_choice::choose(data_dir, &options)?;
        let runtime = runtime_choice::build(
            data_dir,
            &choice,
            &process_options,
            options.container_logger.as_deref(),
        )?;
        let mut options = options;
        options.process = process_options;
        Ok(Agent {
            data_dir: data_dir.to_owned(),
            identity,
            credentials,
            cache: Arc::new(cache),
            runtime,
            options,
        })
    }

    /// This agent's identity.
    pub fn identity(&self) -> &AgentIdentity {
        &self.identity
    }
}
