//! A control node's life: `init` (first node of a new cluster), `join` (with a control
//! token), `run` (restart from the data dir), and `shutdown`.
//!
//! Data dir layout (all files written atomically):
//! - `node.json`: id, name, site, listen and advertised addresses (QUIC, API, metrics, gossip);
//! - `node.crt`, `node.key` (0600), `ca.crt`: this node's credentials;
//! - `cluster.key` (0600): the key that seals the CA key and secret values in the replicated
//!   state — every control node holds it; agents never do;
//! - `raft/`: the sled database (log, vote, snapshot).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use warren_api::{Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState};
use warren_mesh::{Mesh, MeshConfig, MeshMetrics, MeshTimers};
use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME, unix_now, unix_now_ms};
use warren_transport::join::{random_node_id, serve_join};
use warren_transport::seal::SealKey;
use warren_transport::{
    Alpn, CertRole, CertSubject, ClusterCa, Credentials, Endpoint, EndpointOptions, GossipSigner,
    MemberCertificates, PeerConnection, TransportConfig, TransportMetrics, TrustList, Validity,
    write_atomic,
};

use crate::command::Op;
use crate::control::{Control, ControlParts, Timeouts};
use crate::election::ElectionTimes;
use crate::http::{Api, ApiLimits};
use crate::keys::ClusterKeys;
use crate::liveness::Liveness;
use crate::metrics::ControlMetrics;
use crate::network::{PeerTimers, Peers};
use crate::rpc::{ControlRpc, ProposeError};
use crate::store::{self, StoreTuning};
use crate::timers::RaftTimers;
use crate::types::{Member, Raft};
use warren_transport::https::ApiListener;

mod joining;

pub use joining::{JOIN_MEMBER_TIMEOUT, JoinHooks, JoinProgress};

const SETTINGS_FILE: &str = "node.json";
const CLUSTER_KEY_FILE: &str = "cluster.key";
/// The longest wait between two attempts to renew a certificate that is due.
const RENEW_RETRY_MAX: Duration = Duration::from_secs(30);
/// The Unix socket of the local API (no TLS; guarded by file permissions).
pub const SOCKET_FILE: &str = "control.sock";

/// What a control node is and where it listens; persisted as `node.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Assigned at init or join.
    pub node_id: NodeId,
    /// Node name (DNS label).
    pub name: String,
    /// Site (DNS label).
    pub site: String,
    /// QUIC listen address (Raft, agents, joins).
    pub quic_listen: SocketAddr,
    /// HTTP API listen address.
    pub api_listen: SocketAddr,
    /// Address other nodes dial for QUIC.
    pub advertise_quic: String,
    /// Address clients use for the API.
    pub advertise_api: String,
    /// Plain-HTTP metrics, `/health` and `/ready`; `None` = not served.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the gossip mesh listens (UDP); `None` = no mesh.
    #[serde(default)]
    pub gossip_listen: Option<SocketAddr>,
    /// The gossip address peers use, recorded in the node registry; `None` when there is no
    /// mesh (or no address could be worked out, see [`crate::gossip::advertise_addr`]).
    #[serde(default)]
    pub advertise_gossip: Option<SocketAddr>,
}

/// Default for [`ControlConfig::unreachable_after`].
pub const DEFAULT_UNREACHABLE_AFTER: Duration = Duration::from_secs(30);

/// Default for [`ControlConfig::member_unreachable_after`].
pub const DEFAULT_MEMBER_UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

/// Tuning that is not persisted (defaults suit a central site on a LAN).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// How often the leader sends heartbeats (driven by [`crate::timers`]).
    pub heartbeat: Duration,
    /// A voter that hears nothing from a leader for a random time in `[min, max)` campaigns.
    /// `min` is also the voters' lease: they refuse to vote for another node while they have
    /// heard from their leader within it. The Raft RPC deadlines derive from it
    /// ([`ControlConfig::rpc_timeout`], [`ControlConfig::vote_timeout`]).
    pub election_timeout: (Duration, Duration),
    /// Upper bound on a write or a linearizable read.
    pub write_timeout: Duration,
    /// QUIC transport tuning.
    pub transport: TransportConfig,
    /// sled tuning.
    pub store: StoreTuning,
    /// Entries between snapshots.
    pub snapshot_every: u64,
    /// How long an agent may have no stream to any control node before the leader marks its
    /// node unreachable (services with `on_disconnect: reschedule` then move after their own
    /// delay). Longer than an agent's reconnect after a control node dies (~15 s). Gossip can
    /// be quicker: see [`crate::liveness`].
    pub unreachable_after: Duration,
    /// A control member whose calls have failed this long, with no word from it, is shown
    /// `unreachable` (and logged once); see [`crate::contact`].
    pub member_unreachable_after: Duration,
    /// The gossip mesh's timers (used only when the node has a gossip address).
    pub mesh_timers: MeshTimers,
    /// How long the leader waits for a joining control node to receive the log before it
    /// undoes the join (its advertised QUIC address is not reachable, say).
    pub learner_catch_up: Duration,
    /// How long a control node's unfinished join (registered, not a voter yet) may go
    /// unheard of before the leader undoes it: its joiner died or gave up.
    pub join_abandoned_after: Duration,
    /// Caps and timeouts of the HTTP API's TLS listener.
    pub api_limits: ApiLimits,
    /// How long node certificates last (control and agents; default 90 days). Each node
    /// renews its own once a third of the lifetime is left.
    pub cert_lifetime: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(700), Duration::from_millis(900)),
            write_timeout: Duration::from_secs(5),
            transport: TransportConfig {
                connect_timeout: Duration::from_secs(2),
                ..TransportConfig::default()
            },
            store: StoreTuning::default(),
            snapshot_every: 5_000,
            unreachable_after: DEFAULT_UNREACHABLE_AFTER,
            member_unreachable_after: DEFAULT_MEMBER_UNREACHABLE_AFTER,
            mesh_timers: MeshTimers::default(),
            learner_catch_up: Duration::from_secs(30),
            join_abandoned_after: Duration::from_secs(60),
            api_limits: ApiLimits::default(),
            cert_lifetime: NODE_CERT_LIFETIME,
        }
    }
}

impl ControlConfig {
    /// The timers of the write, read and membership paths.
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            write: self.write_timeout,
            election_max: self.election_timeout.1,
            learner_catch_up: self.learner_catch_up,
            join_abandoned_after: self.join_abandoned_after,
            cert_lifetime: self.cert_lifetime,
        }
    }

    /// Checks relations between timers.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the first broken relation.
    pub fn validate(&self) -> Result<(), NodeError> {
        let (min, max) = self.election_timeout;
        if self.heartbeat.is_zero() || self.heartbeat * 2 > min {
            return Err(NodeError::Config(
                "heartbeat must be positive and at most half the election timeout".into(),
            ));
        }
        if min >= max {
            return Err(NodeError::Config(
                "election timeout min must be below max".into(),
            ));
        }
        if self.unreachable_after < Duration::from_secs(1) {
            return Err(NodeError::Config(
                "unreachable_after must be at least 1 s".into(),
            ));
        }
        if self.member_unreachable_after < max {
            return Err(NodeError::Config(
                "member_unreachable_after must be at least the election timeout max".into(),
            ));
        }
        if self.write_timeout < max {
            return Err(NodeError::Config(
                "write timeout must be at least the election timeout".into(),
            ));
        }
        if self.learner_catch_up < max {
            return Err(NodeError::Config(
                "learner_catch_up must be at least the election timeout".into(),
            ));
        }
        if self.join_abandoned_after < Duration::from_secs(1) {
            return Err(NodeError::Config(
                "join_abandoned_after must be at least 1 s".into(),
            ));
        }
        if self.cert_lifetime < Duration::from_secs(6) {
            return Err(NodeError::Config(
                "cert_lifetime must be at least 6 s".into(),
            ));
        }
        self.api_limits.validate().map_err(NodeError::Config)?;
        self.mesh_timers
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        self.transport
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))
    }

    /// Deadline of an AppendEntries RPC (replication, heartbeat, read barrier): half the lease.
    /// Several heartbeats long, so a follower slowed by a busy disk or a long link answers in
    /// time, yet short enough that a lost round is retried well before the lease runs out.
    pub fn rpc_timeout(&self) -> Duration {
        self.election_timeout.0 / 2
    }

    /// Deadline of a vote request: between the RPC deadline and the lease.
    pub fn vote_timeout(&self) -> Duration {
        self.election_timeout.0 * 3 / 4
    }

    /// The timers [`crate::timers`] runs.
    pub fn raft_timers(&self) -> RaftTimers {
        let (min, max) = self.election_timeout;
        RaftTimers {
            heartbeat: self.heartbeat,
            election: ElectionTimes {
                lease: min,
                spread: max - min,
                retry: self.vote_timeout(),
            },
        }
    }

    /// The peer layer's timers: an unreachable peer is retried after a heartbeat at first, then
    /// less often, but at least every RPC deadline (half the lease): a restarted member must
    /// hear from the leader before its election timer runs out, or it campaigns and deposes
    /// the leader.
    pub fn peer_timers(&self) -> PeerTimers {
        PeerTimers {
            unreachable_after: self.member_unreachable_after,
            redial_after: self.rpc_timeout(),
            retry_initial: self.heartbeat,
            retry_max: self.rpc_timeout(),
        }
    }

    /// openraft's configuration. openraft's `heartbeat_interval` is its AppendEntries deadline
    /// (and its tick is 1.5 times that); its election timeout bounds are the vote deadline and
    /// the lease. Its own heartbeat and election timers are off: [`crate::timers`] runs them.
    fn raft_config(&self) -> Result<openraft::Config, NodeError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "warren".into(),
            heartbeat_interval: ms(self.rpc_timeout()),
            election_timeout_min: ms(self.vote_timeout()),
            election_timeout_max: ms(self.election_timeout.0),
            // One snapshot chunk is bounded like a write: it is sent and stored in one go.
            install_snapshot_timeout: ms(self.write_timeout),
            enable_heartbeat: false,
            enable_elect: false,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))
    }
}

/// Why a control node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Inconsistent configuration.
    #[error("invalid control config: {0}")]
    Config(String),
    /// The data dir holds (or lacks) a node.
    #[error("{0}")]
    DataDir(String),
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA or credentials.
    #[error(transparent)]
    Ca(#[from] warren_transport::ca::CaError),
    /// The Raft store.
    #[error(transparent)]
    Store(#[from] store::OpenError),
    /// The QUIC endpoint.
    #[error(transparent)]
    Bind(#[from] warren_transport::endpoint::BindError),
    /// openraft refused to start or initialise.
    #[error("raft: {0}")]
    Raft(String),
    /// Joining the cluster failed.
    #[error(transparent)]
    Join(#[from] warren_transport::join::JoinError),
    /// A write during start-up failed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A joining control node did not become a voter.
    #[error("{0}")]
    NotMember(String),
    /// The join was cancelled before the node became a voter.
    #[error("the join was cancelled before this node became a member")]
    Cancelled,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |source| NodeError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What `init` hands back besides the running node: the operator's admin credentials.
#[derive(Debug)]
pub struct InitOutput {
    /// An admin certificate for the CLI (written into admin.conf by the caller).
    pub admin: Credentials,
    /// The cluster CA fingerprint.
    pub fingerprint: [u8; 32],
}

/// What to create a node with (`init` and `join`).
#[derive(Clone, Debug)]
pub struct NewNode {
    /// Where its files go.
    pub data_dir: PathBuf,
    /// Node name.
    pub name: String,
    /// Site.
    pub site: String,
    /// QUIC listen address.
    pub quic_listen: SocketAddr,
    /// API listen address.
    pub api_listen: SocketAddr,
    /// Address others dial for QUIC; defaults to the bound QUIC address.
    pub advertise_quic: Option<String>,
    /// Address clients use for the API; defaults to the bound API address.
    pub advertise_api: Option<String>,
    /// Metrics listen address (`/metrics`, `/health`, `/ready`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the gossip mesh listens (UDP), if anywhere. Port 0 picks a free port.
    pub gossip_listen: Option<SocketAddr>,
    /// The gossip address peers use; defaults per [`crate::gossip::advertise_addr`].
    pub advertise_gossip: Option<SocketAddr>,
}

/// A running control node.
#[derive(Debug)]
pub struct ControlNode {
    control: Arc<Control>,
    endpoint: Arc<Endpoint>,
    settings: NodeSettings,
    data_dir: PathBuf,
    cancel: CancellationToken,
    tasks: TaskTracker,
    metrics: TransportMetrics,
    control_metrics: ControlMetrics,
    api_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    mesh_timers: MeshTimers,
    /// Checks gossip members' certificates (CA, trust list, renewal grace).
    member_certs: MemberCertificates,
    mesh: Option<Mesh>,
}

fn check_fresh(dir: &Path) -> Result<(), NodeError> {
    if dir.join(SETTINGS_FILE).exists() {
        return Err(NodeError::DataDir(format!(
            "{} already holds a control node; start it with `warren control run --data-dir {}`",
            dir.display(),
            dir.display()
        )));
    }
    keep_private(dir)
}

/// Makes the data dir readable by its owner only (created 0700, tightened if wider): it holds
/// the cluster key, the node's key and the replicated state.
fn keep_private(dir: &Path) -> Result<(), NodeError> {
    let tightened = warren_transport::private_dir(dir).map_err(io("create data dir", dir))?;
    if tightened {
        tracing::info!(path = %dir.display(), "data dir was readable by other local users; it is 0700 now");
    }
    Ok(())
}

fn save_settings(dir: &Path, settings: &NodeSettings) -> Result<(), NodeError> {
    let path = dir.join(SETTINGS_FILE);
    let json = serde_json::to_vec_pretty(settings).expect("settings serialize to JSON");
    write_atomic(&path, &json, 0o644).map_err(io("write", &path))
}

fn save_cluster_keys(dir: &Path, keys: &ClusterKeys) -> Result<(), NodeError> {
    let path = dir.join(CLUSTER_KEY_FILE);
    write_atomic(&path, keys.to_text().as_bytes(), 0o600).map_err(io("write", &path))
}

fn load_cluster_keys(dir: &Path) -> Result<Option<ClusterKeys>, NodeError> {
    let path = dir.join(CLUSTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => ClusterKeys::from_text(&text)
            .map(Some)
            .map_err(|e| NodeError::DataDir(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

fn member_of(settings: &NodeSettings) -> Member {
    Member {
        quic_addr: settings.advertise_quic.clone(),
        api_addr: settings.advertise_api.clone(),
        name: settings.name.clone(),
    }
}

fn settings_for(new: &NewNode, node_id: NodeId) -> NodeSettings {
    NodeSettings {
        node_id,
        name: new.name.clone(),
        site: new.site.clone(),
        quic_listen: new.quic_listen,
        api_listen: new.api_listen,
        advertise_quic: new
            .advertise_quic
            .clone()
            .unwrap_or_else(|| new.quic_listen.to_string()),
        advertise_api: new
            .advertise_api
            .clone()
            .unwrap_or_else(|| new.api_listen.to_string()),
        metrics_listen: new.metrics_listen,
        gossip_listen: new.gossip_listen,
        advertise_gossip: new.advertise_gossip,
    }
}

/// openraft refuses to initialise a Raft store that already holds state; its own text prints
/// its types' Debug output, so say what it means.
fn unfinished_init(dir: &Path) -> NodeError {
    NodeError::DataDir(format!(
        "{} holds the Raft state of an earlier, unfinished init; remove it and try again",
        dir.join(store::RAFT_DIR).display()
    ))
}

/// Fills in the gossip port (for port 0, by binding and letting go: the mesh binds it again
/// once the node has the cluster key) and the gossip address to advertise.
async fn resolve_gossip(new: &mut NewNode) -> Result<(), NodeError> {
    let Some(mut listen) = new.gossip_listen else {
        new.advertise_gossip = None;
        return Ok(());
    };
    if listen.port() == 0 {
        listen = std::net::UdpSocket::bind(listen)
            .and_then(|socket| socket.local_addr())
            .map_err(io("bind gossip port", &new.data_dir))?;
        new.gossip_listen = Some(listen);
    }
    let advertise_quic = new
        .advertise_quic
        .clone()
        .unwrap_or_else(|| new.quic_listen.to_string());
    let mut advertise =
        crate::gossip::advertise_addr(listen, new.advertise_gossip, &advertise_quic);
    if advertise.is_none() {
        // The QUIC address is a host name: gossip on the address it resolves to.
        advertise = tokio::net::lookup_host(&advertise_quic)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|quic| SocketAddr::new(quic.ip(), listen.port()));
    }
    if advertise.is_none() {
        warn!(gossip = %listen, "no gossip address to advertise: other nodes will not find this node by gossip");
    }
    new.advertise_gossip = advertise;
    Ok(())
}

impl ControlNode {
    /// Creates a new cluster with this node as its only member.
    ///
    /// # Errors
    /// [`NodeError`]; a data dir that already holds a node is refused.
    pub async fn init(
        new: NewNode,
        config: ControlConfig,
    ) -> Result<(Self, InitOutput), NodeError> {
        config.validate()?;
        warren_api::validate_node_name(&new.name).map_err(|e| NodeError::Config(e.to_string()))?;
        warren_api::validate_site(&new.site).map_err(|e| NodeError::Config(e.to_string()))?;
        check_fresh(&new.data_dir)?;
        let ca = ClusterCa::generate(&new.name, Validity::starting_at(unix_now(), CA_LIFETIME))?;
        let cluster_keys = ClusterKeys::first(SealKey::generate());
        let node_id = NodeId(random_node_id());
        let creds = ca.issue_credentials(
            &CertSubject::Node {
                node_id,
                role: CertRole::Control,
            },
            Validity::starting_at(unix_now(), config.cert_lifetime),
        )?;
        let admin = ca.issue_credentials(
            &CertSubject::Admin {
                name: "admin".into(),
            },
            Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
        )?;
        // Bind first so that port 0 resolves to a real port before it is recorded.
        let endpoint = bind(&new.quic_listen, &creds, &config)?;
        let api = bind_api(new.api_listen, &endpoint).await?;
        let mut new = new;
        new.quic_listen = endpoint.0.local_addr();
        new.api_listen = api.local_addr();
        resolve_gossip(&mut new).await?;
        let settings = settings_for(&new, node_id);
        creds.save(&new.data_dir)?;
        save_cluster_keys(&new.data_dir, &cluster_keys)?;
        let mut node = Self::start(
            &new.data_dir,
            settings.clone(),
            Some(cluster_keys.clone()),
            config,
            endpoint,
            api,
        )
        .await?;
        let mut members = std::collections::BTreeMap::new();
        members.insert(node_id.0, member_of(&settings));
        let initialized = node.control.raft().initialize(members).await;
        initialized.map_err(|_| unfinished_init(&new.data_dir))?;
        node.control
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .current_leader(node_id.0, "init: self elected")
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let init = Op::InitCluster {
            name: new.name.clone(),
            ca_cert_der: ca.cert_der().to_vec(),
            ca_key_sealed: ca.sealed_key(cluster_keys.root()),
        };
        node.control.propose(init).await?;
        // The first admin certificate is recorded like any other, so it can be listed and
        // revoked (`warren admin ls|revoke`).
        node.control
            .propose(Op::AddAdmin(crate::state::AdminCert::issued_now(
                admin.identity(),
                "admin",
                unix_now_ms(),
            )))
            .await?;
        let me = Node {
            id: node_id,
            name: settings.name.clone(),
            role: NodeRole::Control,
            site: settings.site.clone(),
            labels: Default::default(),
            availability: Availability::Active,
            state: NodeState::Ready,
            cert_serial: Some(creds.identity().serial.clone()),
            addresses: NodeAddresses {
                quic: Some(settings.advertise_quic.clone()),
                api: Some(settings.advertise_api.clone()),
                gossip: settings.advertise_gossip.map(|a| a.to_string()),
                metrics: settings.metrics_listen.map(|a| a.to_string()),
                dns: None,
            },
            joined_at_ms: unix_now_ms(),
        };
        node.control.propose(Op::RegisterNode(me)).await?;
        // Only now is the data dir a complete node: `run` can restart it.
        save_settings(&new.data_dir, &settings)?;
        node.start_mesh().await;
        info!(node_id = %node_id, "cluster initialised");
        Ok((
            node,
            InitOutput {
                admin,
                fingerprint: ca.fingerprint(),
            },
        ))
    }

    /// Restarts a control node from its data dir.
    ///
    /// # Errors
    /// [`NodeError`] when the data dir is incomplete or corrupt.
    pub async fn run(data_dir: &Path, config: ControlConfig) -> Result<Self, NodeError> {
        config.validate()?;
        let path = data_dir.join(SETTINGS_FILE);
        let text = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NodeError::DataDir(format!(
                    "{} holds no control node (no {SETTINGS_FILE}); create one with `warren control init` or `warren control join`",
                    data_dir.display()
                ))
            } else {
                io("read", &path)(e)
            }
        })?;
        let settings: NodeSettings = serde_json::from_slice(&text)
            .map_err(|e| NodeError::DataDir(format!("{}: {e}", path.display())))?;
        keep_private(data_dir)?;
        let creds = Credentials::load(data_dir)?;
        let cluster_keys = load_cluster_keys(data_dir)?;
        let endpoint = bind(&settings.quic_listen, &creds, &config)?;
        let api = bind_api(settings.api_listen, &endpoint).await?;
        let mut node = Self::start(data_dir, settings, cluster_keys, config, endpoint, api).await?;
        node.start_mesh().await;
        Ok(node)
    }

    /// Joins the gossip mesh, if this node has a gossip address and the cluster key. A mesh
    /// that cannot start (the port is taken, say) is logged and the node runs on without one,
    /// as it does without a metrics listener: gossip is soft state, the control plane does not
    /// depend on it.
    async fn start_mesh(&mut self) {
        let Some(listen_addr) = self.settings.gossip_listen else {
            return;
        };
        let Some(keys) = self.control.cluster_keys() else {
            warn!("no cluster key yet: running without the gossip mesh");
            return;
        };
        // The generation in force if held yet, else the newest held: the key follower rotates
        // the mesh once the one in force arrives.
        let in_force = self.control.read_stale().await.key_generation();
        let Some(keyring) = crate::gossip::keyring(&keys, in_force)
            .or_else(|| crate::gossip::keyring(&keys, keys.newest()))
        else {
            warn!("no gossip key: running without the gossip mesh");
            return;
        };
        let seeds = crate::gossip::seeds(&*self.control.read_stale().await, self.settings.node_id);
        let config = MeshConfig {
            node_id: self.settings.node_id,
            name: self.settings.name.clone(),
            role: NodeRole::Control,
            site: self.settings.site.clone(),
            cluster_id: crate::gossip::cluster_id(&self.control.fingerprint()),
            listen_addr,
            // A node.json from before the mesh landed records no advertised address.
            advertise_addr: self.settings.advertise_gossip.or_else(|| {
                crate::gossip::advertise_addr(listen_addr, None, &self.settings.advertise_quic)
            }),
            seeds,
            keyring,
            identity: crate::gossip::identity(
                GossipSigner::new(self.endpoint.credentials().clone()),
                self.member_certs.clone(),
            ),
            timers: self.mesh_timers.clone(),
            fault: None,
        };
        let metrics = MeshMetrics::register(self.control_metrics.registry()).unwrap_or_else(|e| {
            warn!(error = %e, "mesh metrics not registered");
            MeshMetrics::unregistered()
        });
        match Mesh::start(config, metrics).await {
            Ok(mesh) => {
                // Hints for peers (the registry stays the authority).
                for (purpose, addr) in [
                    ("quic", &self.settings.advertise_quic),
                    ("api", &self.settings.advertise_api),
                ] {
                    if let Err(e) = mesh.set_endpoint(purpose, addr).await {
                        warn!(error = %e, purpose, "cannot publish an endpoint by gossip");
                    }
                }
                self.control.set_gossip(mesh.watch(), mesh.key_rotator());
                self.mesh = Some(mesh);
            }
            Err(e) => {
                warn!(gossip = %listen_addr, error = %e, "gossip mesh not started: running without it");
            }
        }
    }

    async fn start(
        data_dir: &Path,
        settings: NodeSettings,
        cluster_keys: Option<ClusterKeys>,
        config: ControlConfig,
        (endpoint, revocations): (Arc<Endpoint>, TrustList),
        api_listener: ApiListener,
    ) -> Result<Self, NodeError> {
        let (log_store, sm_store) = store::open(data_dir, config.store)?;
        let state = sm_store.state();
        let applied = sm_store.watch_applied();
        let tasks = TaskTracker::new();
        let peers = Peers::new(endpoint.clone(), tasks.clone(), config.peer_timers());
        let raft_config = config.raft_config()?;
        let raft = Raft::new(
            settings.node_id.0,
            Arc::new(raft_config),
            peers.clone(),
            log_store,
            sm_store,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let timeouts = config.timeouts();
        let control_metrics = ControlMetrics::new();
        // The endpoint counts from its start; its metrics are served with the control node's.
        if let Err(e) = endpoint.metrics().register_into(control_metrics.registry()) {
            warn!(error = %e, "transport metrics not registered");
        }
        let unreachable_after = config.unreachable_after;
        let mesh_timers = config.mesh_timers.clone();
        let member_certs = MemberCertificates::new(
            endpoint.credentials().get().ca_cert_der(),
            &revocations,
            config.transport.renew_grace,
        )
        .map_err(|e| NodeError::DataDir(format!("cluster CA certificate: {e}")))?;
        let api_limits = config.api_limits.clone();
        let control = Arc::new(Control::new(ControlParts {
            id: settings.node_id.0,
            raft,
            state: state.clone(),
            applied: applied.clone(),
            peers,
            cluster_keys,
            keys_file: data_dir.join(CLUSTER_KEY_FILE),
            timeouts,
            metrics: control_metrics.clone(),
            fingerprint: endpoint.cluster_fingerprint(),
        }));
        let cancel = CancellationToken::new();
        crate::timers::spawn(
            control.clone(),
            config.raft_timers(),
            cancel.clone(),
            &tasks,
        );
        let api_addr = api_listener.local_addr();
        let api = Api::new(
            control.clone(),
            control_metrics.clone(),
            revocations.clone(),
        );
        tasks.spawn(
            api.clone()
                .serve_tls(api_listener, api_limits, cancel.clone(), tasks.clone()),
        );
        let socket = data_dir.join(SOCKET_FILE);
        api.serve_unix(&socket, cancel.clone(), tasks.clone())
            .await
            .map_err(io("bind unix socket", &socket))?;
        let metrics_addr = match settings.metrics_listen {
            Some(addr) => Some(
                crate::metrics::serve(
                    addr,
                    control_metrics.clone(),
                    control.clone(),
                    cancel.clone(),
                    tasks.clone(),
                )
                .await
                .map_err(io("bind metrics listener", data_dir))?,
            ),
            None => None,
        };
        let endpoint_metrics = endpoint.metrics().clone();
        let node = Self {
            control,
            endpoint,
            settings,
            data_dir: data_dir.to_owned(),
            cancel,
            tasks,
            metrics: endpoint_metrics,
            control_metrics,
            api_addr,
            metrics_addr,
            mesh_timers,
            member_certs,
            mesh: None,
        };
        node.spawn_revocation_feed(state, applied.clone(), revocations);
        node.tasks.spawn(crate::keys::follow(
            node.control.clone(),
            applied,
            node.cancel.clone(),
        ));
        node.spawn_acceptor();
        node.spawn_leader_duties(unreachable_after);
        node.spawn_renewal();
        Ok(node)
    }

    /// Keeps the endpoint's and the API's trust list (revoked serials, recorded certificates)
    /// equal to the replicated state, and notices this node's own removal in the state it
    /// applies.
    fn spawn_revocation_feed(
        &self,
        state: Arc<tokio::sync::RwLock<crate::state::ClusterState>>,
        mut applied: tokio::sync::watch::Receiver<warren_api::Revision>,
        revocations: TrustList,
    ) {
        let cancel = self.cancel.clone();
        let control = self.control.clone();
        let me = self.settings.node_id;
        self.tasks.spawn(async move {
            let mut seen_epoch = None;
            loop {
                let (trust, removed) = {
                    let state = state.read().await;
                    let removed = state
                        .nodes
                        .get(&me)
                        .is_some_and(|node| node.state == warren_api::NodeState::Removed);
                    // Rebuilt only when an entry touched certificates: not at every write.
                    let trust = (seen_epoch != Some(state.certs_epoch.0)).then(|| {
                        seen_epoch = Some(state.certs_epoch.0);
                        (state.revoked_serials.clone(), state.known_certificates())
                    });
                    (trust, removed)
                };
                if let Some((serials, known)) = trust {
                    revocations.replace(serials);
                    revocations.replace_known(known);
                }
                if removed {
                    control.note_removed("its removal reached this node's log".into());
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = applied.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// Keeps this node's certificate renewed ([`warren_transport::renew::keep_renewed`]):
    /// asked of the other control members first (a node whose certificate expired while it was
    /// cut off cannot write through its own Raft link), then of itself.
    fn spawn_renewal(&self) {
        let control = self.control.clone();
        let me = self.settings.node_id.0;
        let own = self.settings.advertise_quic.clone();
        let addrs = move || {
            let metrics = control.raft().metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let mut addrs: Vec<SocketAddr> = membership
                .nodes()
                .filter(|(id, _)| **id != me)
                .filter_map(|(_, member)| member.quic_addr.parse().ok())
                .collect();
            addrs.extend(own.parse::<SocketAddr>().ok());
            std::future::ready(addrs)
        };
        self.tasks.spawn(warren_transport::renew::keep_renewed(
            self.endpoint.clone(),
            self.data_dir.clone(),
            addrs,
            RENEW_RETRY_MAX,
            self.cancel.clone(),
        ));
    }

    fn spawn_acceptor(&self) {
        let endpoint = self.endpoint.clone();
        let control = self.control.clone();
        let cancel = self.cancel.clone();
        let tasks = self.tasks.clone();
        let metrics = self.metrics.clone();
        self.tasks.spawn(async move {
            loop {
                let incoming = tokio::select! {
                    () = cancel.cancelled() => return,
                    incoming = endpoint.accept() => match incoming { Some(i) => i, None => return },
                };
                let control = control.clone();
                let metrics = metrics.clone();
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    let Ok(conn) = incoming.admit().await else {
                        return;
                    };
                    let serve = async {
                        match conn.alpn() {
                            Alpn::Raft => {
                                let handler = move |rpc: ControlRpc, conn: PeerConnection| {
                                    let control = control.clone();
                                    // Any RPC from a member shows it is alive.
                                    if let Some(peer) = conn.peer().and_then(|p| p.node_id) {
                                        control.peers().heard_from(peer.0);
                                    }
                                    async move { control.handle_rpc(rpc).await }
                                };
                                warren_transport::serve_requests(conn.clone(), handler).await;
                            }
                            Alpn::Join => {
                                serve_join(conn.clone(), control.as_ref(), &metrics).await
                            }
                            Alpn::Agent => {
                                crate::push::serve_agent(conn.clone(), control.clone()).await;
                            }
                            Alpn::Renew => {
                                let authority = control.clone();
                                warren_transport::renew::serve_renewals(conn.clone(), authority)
                                    .await;
                            }
                        }
                    };
                    tokio::select! {
                        () = cancel.cancelled() => conn.close("shutting down"),
                        () = serve => {}
                    }
                });
            }
        });
    }

    /// On the leader: advance due rolling updates, let on-disconnect timers fire, and turn
    /// agents' links into reachability facts (see [`crate::liveness`]).
    fn spawn_leader_duties(&self, unreachable_after: Duration) {
        let control = self.control.clone();
        let cancel = self.cancel.clone();
        // Judge liveness a few times per grace period, at most every 5 s, and at once when
        // gossip's verdict on some node changes (its failure detector has already waited).
        let liveness_every = (unreachable_after / 3).min(Duration::from_secs(5));
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut liveness: Option<Liveness> = None;
            let mut last_liveness = tokio::time::Instant::now();
            let mut leader_since_ms: Option<u64> = None;
            let mut gossip = GossipVerdicts::default();
            loop {
                let gossip_moved = tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => false,
                    moved = gossip.changed(&control) => moved,
                };
                if control.leader().map(|(id, _)| id) != Some(control.id()) {
                    liveness = None;
                    leader_since_ms = None;
                    continue;
                }
                let now = unix_now_ms();
                let since = *leader_since_ms.get_or_insert(now);
                if !gossip_moved {
                    propose_due_steps(&control, now).await;
                    control.sweep_unfinished_joins(since).await;
                }
                let judge = liveness.get_or_insert_with(|| Liveness::new(unreachable_after, now));
                if !gossip_moved && last_liveness.elapsed() < liveness_every {
                    continue;
                }
                last_liveness = tokio::time::Instant::now();
                judge_liveness(&control, judge).await;
            }
        });
    }

    /// Waits until this node learns that it was removed from the cluster (`warren node rm`):
    /// another control node refused its certificate as revoked, or it applied its own
    /// removal. Returns why, in words. Never returns on a node that stays a member.
    pub async fn removed(&self) -> String {
        let mut removed = self.control.removed();
        let found = removed
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        match found {
            Ok(why) => why,
            // The sender lives as long as the node: wait for ever.
            Err(_) => std::future::pending().await,
        }
    }

    /// The QUIC endpoint's metrics (connections, frames, joins).
    pub fn transport_metrics(&self) -> &TransportMetrics {
        &self.metrics
    }

    /// The shared handle (for the API and tests).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// This node's settings.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The bound API address (TLS).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The bound gossip address, if the mesh runs.
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.mesh.as_ref().map(Mesh::local_addr)
    }

    /// The bound metrics address, if served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.control_metrics
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the node: gossip left, no new connections, Raft stopped, storage flushed, and the QUIC port
    /// released before this returns (so the node can be started again at once).
    pub async fn shutdown(mut self) {
        let addr = self.endpoint.local_addr();
        if let Some(mesh) = self.mesh.take() {
            mesh.shutdown().await;
        }
        self.cancel.cancel();
        let _ = std::fs::remove_file(self.data_dir.join(SOCKET_FILE));
        if let Err(e) = self.control.raft().shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        }
        self.endpoint.close();
        self.tasks.close();
        self.tasks.wait().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        drop(self);
        // quinn releases the socket when its driver task ends, shortly after the last handle
        // is dropped; wait for that rather than leave a restart racing it.
        for _ in 0..100 {
            if std::net::UdpSocket::bind(addr).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        warn!(addr = %addr, "QUIC port still in use after shutdown");
    }
}

/// Proposes the leader's time-driven steps that are due at `now`: the next batch of each
/// rolling update, and a tick when an on-disconnect timer has expired.
async fn propose_due_steps(control: &Control, now: u64) {
    let (rollouts, tick_due) = {
        let state = control.read_stale().await;
        (state.due_rollouts(now), state.reschedule_due(now))
    };
    for (name, version) in rollouts {
        if let Err(e) = control.propose(Op::RolloutStep { name, version }).await {
            debug!(error = %e, "rollout step not proposed");
        }
    }
    if tick_due && let Err(e) = control.propose(Op::Tick).await {
        debug!(error = %e, "tick not proposed");
    }
}

/// Gathers every control node's agent links and this node's gossip view, and proposes what
/// [`Liveness::decide`] makes of them.
async fn judge_liveness(control: &Control, judge: &mut Liveness) {
    let reports = control.gather_agents(false).await;
    let gossip = control
        .gossip_members()
        .map(|members| crate::gossip::liveness_by_node(&members))
        .unwrap_or_default();
    let ops = {
        let state = control.read_stale().await;
        judge.decide(unix_now_ms(), &state, &reports, &gossip)
    };
    for op in ops {
        let node = match &op {
            Op::NodeUnreachable { node } | Op::NodeReachable { node } => Some(*node),
            _ => None,
        };
        let link = node
            .and_then(|n| reports.get(&n))
            .map_or("none", |r| if r.connected { "up" } else { "down" });
        let gossip = node
            .and_then(|n| gossip.get(&n))
            .map_or("unknown", |l| l.as_str());
        info!(op = op.name(), node_id = ?node, link, gossip, "agent reachability changed");
        if let Err(e) = control.propose(op).await {
            debug!(error = %e, "reachability not proposed");
        }
    }
}

/// The leader's view of gossip's verdicts: wakes its duties when some node's liveness changes
/// (not on metadata changes, which are far more frequent and say nothing about reachability).
#[derive(Default)]
struct GossipVerdicts {
    members: Option<tokio::sync::watch::Receiver<Vec<warren_mesh::Member>>>,
    last: std::collections::BTreeMap<warren_api::NodeId, warren_mesh::Liveness>,
}

impl GossipVerdicts {
    /// Resolves with `true` once some member's liveness differs from the last verdicts seen;
    /// pends forever while the node runs no mesh (it may start one later: call again).
    ///
    /// # Cancel safety
    /// Cancel-safe: a change seen but not returned is found again by the next call.
    async fn changed(&mut self, control: &Control) -> bool {
        if self.members.is_none() {
            self.members = control.gossip_watch();
        }
        let Some(members) = self.members.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            let verdicts = crate::gossip::liveness_by_node(&members.borrow_and_update());
            if verdicts != self.last {
                self.last = verdicts;
                return true;
            }
            if members.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Binds the API's TLS listener.
/// Binds the API listener, presenting the QUIC endpoint's credentials (a renewal covers both)
/// and checking clients against its trust list.
async fn bind_api(
    addr: SocketAddr,
    (endpoint, trust): &(Arc<Endpoint>, TrustList),
) -> Result<ApiListener, NodeError> {
    ApiListener::bind_current(addr, endpoint.credentials(), trust)
        .await
        .map_err(|e| NodeError::DataDir(e.to_string()))
}

/// Binds the QUIC endpoint with a fresh revocation list.
fn bind(
    addr: &SocketAddr,
    creds: &Credentials,
    config: &ControlConfig,
) -> Result<(Arc<Endpoint>, TrustList), NodeError> {
    let revocations = TrustList::default();
    let options = EndpointOptions {
        config: config.transport.clone(),
        metrics: TransportMetrics::unregistered(),
        revocations: revocations.clone(),
        fault: None,
    };
    Ok((
        Arc::new(Endpoint::bind(*addr, creds, options)?),
        revocations,
    ))
}
