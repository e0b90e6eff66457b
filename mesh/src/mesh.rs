//! The running mesh node: chitchat on the sealed transport, this node's metadata, the member
//! list and its watch.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};
use warren_api::NodeId;

use crate::config::{ConfigError, MemberConfig, MeshConfig, MeshTimers};
use crate::identity::{Attester, Verifier};
use crate::keyring::{GossipKey, KeyId, RotateError};
use crate::member::{
    ENDPOINT_PREFIX, KEY_AGENT_REVISION, KEY_NAME, KEY_OVERLAY_ADDR, KEY_ROLE, KEY_SITE,
    KEY_WG_PUBLIC_KEY, Liveness, Member, SERVICE_PREFIX, format_endpoints,
};
use crate::metrics::MeshMetrics;
use crate::socket::{GossipSocket, ScopeError};
use crate::transport::{SealedTransport, TransportShared};
use crate::verdict::{CHECKS_PER_ROUND, HeartbeatTracker, Verdict};
use warren_api::clock::unix_now_ms;

/// Longest metadata key, in bytes.
pub const MAX_META_KEY_BYTES: usize = 128;
/// Longest metadata value, in bytes: room for a service's endpoint list, small enough that a
/// node's whole state stays a few KB.
pub const MAX_META_VALUE_BYTES: usize = 4_096;
/// Most metadata keys one node publishes.
pub const MAX_META_KEYS: usize = 256;

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshStartError {
    /// The configuration contradicts itself.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The gossip socket could not be bound.
    #[error("bind gossip socket {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// chitchat refused to start.
    #[error("start gossip: {0}")]
    Gossip(String),
    /// The socket already carries a mesh of this scope.
    #[error(transparent)]
    Scope(#[from] ScopeError),
}

/// Metadata this node may not publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Empty, or longer than [`MAX_META_KEY_BYTES`].
    #[error("metadata key must be 1..={MAX_META_KEY_BYTES} bytes")]
    BadKey,
    /// Longer than [`MAX_META_VALUE_BYTES`].
    #[error("metadata value of {0} bytes exceeds {MAX_META_VALUE_BYTES}")]
    ValueTooLarge(usize),
    /// The node already publishes [`MAX_META_KEYS`] keys.
    #[error("node already publishes {MAX_META_KEYS} metadata keys")]
    TooManyKeys,
}

/// A running mesh node. Drop or [`shutdown`](Mesh::shutdown) to leave; peers then see it dead
/// after their failure detector's timeout.
pub struct Mesh {
    chitchat: ChitchatHandle,
    shared: Arc<TransportShared>,
    node_id: NodeId,
    chitchat_id: ChitchatId,
    local_addr: SocketAddr,
    timers: MeshTimers,
    tracker: Arc<Mutex<HeartbeatTracker>>,
    attester: Arc<Mutex<Attester>>,
    members_rx: watch::Receiver<Vec<Member>>,
    monitor: JoinHandle<()>,
    cancel: DropGuard,
    /// Whether this mesh bound its socket ([`Mesh::start`]) and so closes it at shutdown.
    owns_socket: bool,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node_id", &self.node_id)
            .field("chitchat_id", &self.chitchat_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Binds the gossip socket, starts chitchat on the sealed transport and the member
    /// monitor. Publishes name, role and site at once.
    ///
    /// # Errors
    /// [`MeshStartError`] if the config is invalid, the socket cannot be bound, or chitchat fails.
    pub async fn start(config: MeshConfig, metrics: MeshMetrics) -> Result<Self, MeshStartError> {
        config.validate()?;
        let MeshConfig {
            member,
            listen_addr,
            keyring,
            fault,
        } = config;
        let socket = GossipSocket::bind(listen_addr, keyring, metrics, fault.unwrap_or_default())
            .await
            .map_err(|source| MeshStartError::Bind {
                addr: listen_addr,
                source,
            })?;
        let mut mesh = Self::start_on(&socket, member).await?;
        mesh.owns_socket = true;
        Ok(mesh)
    }

    /// Joins the mesh of `config.scope` on a socket this node already gossips on (a control
    /// node's site meshes share its one gossip port). Leaving it leaves the socket open.
    ///
    /// # Errors
    /// [`MeshStartError`] if the config is invalid, the socket already carries this scope, or
    /// chitchat fails.
    pub async fn start_on(
        socket: &GossipSocket,
        config: MemberConfig,
    ) -> Result<Self, MeshStartError> {
        config.validate()?;
        let bind_error = |source| MeshStartError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        };
        let local_addr = socket.local_addr().map_err(bind_error)?;
        let advertise_addr = advertise_addr(config.advertise_addr, local_addr)?;
        let chitchat_id =
            ChitchatId::new(config.node_id.to_string(), unix_now_ms(), advertise_addr);
        let timers = config.timers.clone();
        let chitchat_config = chitchat_config(&config, chitchat_id.clone(), local_addr);
        let inbox = socket.route(&config.scope)?;
        let shared = Arc::new(TransportShared {
            socket: socket.clone(),
            scope: config.scope.clone(),
            metrics: socket.metrics().clone(),
            gossip_interval: timers.gossip_interval,
            peers_per_round: timers.peers_per_round,
            live_peers: Mutex::new(HashSet::new()),
            counts_members: AtomicBool::new(true),
        });
        let transport = SealedTransport::new(shared.clone(), inbox);
        let initial = vec![
            (KEY_NAME.to_owned(), config.name),
            (KEY_ROLE.to_owned(), config.role.as_str().to_owned()),
            (KEY_SITE.to_owned(), config.site),
        ];
        let chitchat = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|err| MeshStartError::Gossip(format!("{err:#}")))?;
        let attester = Arc::new(Mutex::new(Attester::new(
            config.identity.clone(),
            config.cluster_id.clone(),
            config.node_id,
            chitchat_id.generation_id,
        )));
        attest(&chitchat.chitchat(), &attester, &shared.metrics).await;
        let verifier = Verifier::new(config.identity, config.cluster_id);
        let tracker = Arc::new(Mutex::new(HeartbeatTracker::new(
            verifier,
            shared.metrics.clone(),
        )));
        let (members_tx, members_rx) = watch::channel(Vec::new());
        let cancel = CancellationToken::new();
        let monitor = tokio::spawn(monitor(
            chitchat.chitchat(),
            tracker.clone(),
            attester.clone(),
            timers.clone(),
            shared.clone(),
            members_tx,
            cancel.clone(),
        ));
        info!(node_id = %config.node_id, scope = %config.scope, gossip = %local_addr, advertise = %advertise_addr, "mesh started");
        Ok(Self {
            chitchat,
            shared,
            node_id: config.node_id,
            chitchat_id,
            local_addr,
            timers,
            tracker,
            attester,
            members_rx,
            monitor,
            cancel: cancel.drop_guard(),
            owns_socket: false,
        })
    }

    /// The socket this mesh gossips on, to join more meshes on it ([`Mesh::start_on`]).
    pub fn socket(&self) -> &GossipSocket {
        &self.shared.socket
    }

    /// Stops this mesh setting the `warren_mesh_members` gauge: a node that runs several
    /// meshes on one socket sets it from their union ([`MeshMetrics::set_members`]).
    pub fn leave_member_gauge(&self) {
        self.shared.counts_members.store(false, Ordering::Relaxed);
    }

    /// The mesh's scope (`""`: the unnamed mesh).
    pub fn scope(&self) -> &str {
        &self.shared.scope
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound gossip address (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address peers gossip to.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.chitchat_id.gossip_advertise_addr
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &MeshMetrics {
        &self.shared.metrics
    }

    /// Publishes `key` = `value` in this node's metadata.
    ///
    /// # Errors
    /// [`MetaError`] when the key or value is out of bounds or the node has too many keys.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), MetaError> {
        if key.is_empty() || key.len() > MAX_META_KEY_BYTES {
            return Err(MetaError::BadKey);
        }
        if value.len() > MAX_META_VALUE_BYTES {
            return Err(MetaError::ValueTooLarge(value.len()));
        }
        let chitchat = self.chitchat.chitchat();
        let mut chitchat = chitchat.lock().await;
        let state = chitchat.self_node_state();
        if !state.contains_key(key) && state.num_key_values() >= MAX_META_KEYS {
            return Err(MetaError::TooManyKeys);
        }
        if state.get(key) != Some(value) {
            state.set(key, value);
            self.attester.lock().expect("attester lock").attest_or_warn(
                state,
                unix_now_ms(),
                &self.shared.metrics,
            );
        }
        Ok(())
    }

    /// Deletes `key` from this node's metadata (a tombstone that gossip spreads).
    pub async fn delete_meta(&self, key: &str) {
        let chitchat = self.chitchat.chitchat();
        let mut chitchat = chitchat.lock().await;
        if chitchat.self_node_state().contains_key(key) {
            let state = chitchat.self_node_state();
            state.delete(key);
            self.attester.lock().expect("attester lock").attest_or_warn(
                state,
                unix_now_ms(),
                &self.shared.metrics,
            );
        }
    }

    /// Publishes the WireGuard overlay address (claimed: peers verify it against the registry).
    ///
    /// # Errors
    /// See [`set_meta`](Self::set_meta).
    pub async fn set_overlay_addr(&self, addr: IpAddr) -> Result<(), MetaError> {
        self.set_meta(KEY_OVERLAY_ADDR, &addr.to_string()).await
    }

    /// Publishes the WireGuard public key (claimed: peers verify it against the registry).
    ///
    /// # Errors
    /// See [`set_meta`](Self::set_meta).
    pub async fn set_wg_public_key(&self, public_key: &str) -> Result<(), MetaError> {
        self.set_meta(KEY_WG_PUBLIC_KEY, public_key).await
    }

    /// Publishes an advertised endpoint for `purpose` (`quic`, `api`, `metrics`, `dns`, …).
    ///
    /// # Errors
    /// See [`set_meta`](Self::set_meta).
    pub async fn set_endpoint(&self, purpose: &str, addr: &str) -> Result<(), MetaError> {
        self.set_meta(&format!("{ENDPOINT_PREFIX}{purpose}"), addr)
            .await
    }

    /// Publishes the desired-state revision the agent has applied.
    ///
    /// # Errors
    /// See [`set_meta`](Self::set_meta).
    pub async fn set_agent_revision(&self, revision: u64) -> Result<(), MetaError> {
        self.set_meta(KEY_AGENT_REVISION, &revision.to_string())
            .await
    }

    /// Publishes the endpoints of a running service on this node; an empty list deletes them.
    ///
    /// # Errors
    /// See [`set_meta`](Self::set_meta).
    pub async fn set_service_endpoints(
        &self,
        service: &str,
        endpoints: &[SocketAddr],
    ) -> Result<(), MetaError> {
        let key = format!("{SERVICE_PREFIX}{service}");
        if endpoints.is_empty() {
            self.delete_meta(&key).await;
            return Ok(());
        }
        self.set_meta(&key, &format_endpoints(endpoints)).await
    }

    /// The members as this node sees them now (self included), one per node id (its newest
    /// generation), sorted by node id.
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.chitchat.chitchat();
        let chitchat = chitchat.lock().await;
        let tracker = &mut self.tracker.lock().expect("tracker lock");
        let verdicts = tracker.judge(&chitchat, &self.timers, Instant::now(), unix_now_ms());
        collect_members(&chitchat, tracker, verdicts)
    }

    /// A watch of the member list, refreshed every gossip interval; it changes when a member
    /// joins, changes liveness or changes metadata (not on heartbeats).
    pub fn watch(&self) -> watch::Receiver<Vec<Member>> {
        self.members_rx.clone()
    }

    /// Makes `new` the key this node seals with; the current key stays accepted for `overlap`.
    ///
    /// # Errors
    /// [`RotateError`] if `new`'s id is already in the keyring.
    pub fn rotate_key(&self, new: GossipKey, overlap: Duration) -> Result<(), RotateError> {
        self.key_rotator().rotate(new, overlap)
    }

    /// A handle that rotates this mesh's key, for a task that does not own the mesh.
    pub fn key_rotator(&self) -> KeyRotator {
        KeyRotator {
            socket: self.shared.socket.clone(),
            node_id: self.node_id,
        }
    }

    /// Leaves the mesh: stops the monitor and chitchat, and closes the socket. Peers see this
    /// node dead after their failure detector's timeout (chitchat has no "leave" message).
    pub async fn shutdown(self) {
        let Self {
            chitchat,
            monitor,
            cancel,
            node_id,
            shared,
            owns_socket,
            ..
        } = self;
        drop(cancel);
        let _ = monitor.await;
        if let Err(err) = chitchat.shutdown().await {
            warn!(node_id = %node_id, error = %err, "gossip server ended with an error");
        }
        let socket = shared.socket.clone();
        drop(shared);
        if owns_socket {
            // Free the port before returning, unless another mesh still gossips on it.
            socket.close().await;
        }
    }
}

/// chitchat's settings for this node: its id and socket, the cluster id, the seeds and the
/// failure detector from the mesh's timers.
fn chitchat_config(
    config: &MemberConfig,
    chitchat_id: ChitchatId,
    local_addr: SocketAddr,
) -> ChitchatConfig {
    let timers = &config.timers;
    ChitchatConfig {
        chitchat_id,
        cluster_id: config.cluster_id.clone(),
        gossip_interval: timers.gossip_interval,
        listen_addr: local_addr,
        seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
        failure_detector_config: FailureDetectorConfig::new(
            timers.phi_threshold,
            timers.sampling_window,
            timers.max_interval,
            timers.initial_interval,
            timers.dead_node_grace,
        ),
        marked_for_deletion_grace_period: timers.marked_for_deletion_grace,
        catchup_callback: None,
        extra_liveness_predicate: None,
        // Every Warren node speaks V1 (compressed digests) from its first release.
        protocol_version: ProtocolVersion::V1,
    }
}

fn advertise_addr(
    configured: Option<SocketAddr>,
    local: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    let mut addr = configured.unwrap_or(local);
    if addr.port() == 0 {
        addr.set_port(local.port());
    }
    if addr.ip().is_unspecified() {
        return Err(ConfigError(
            "advertise_addr is required when listening on an unspecified address",
        ));
    }
    Ok(addr)
}

/// Signs this node's state now.
async fn attest(
    chitchat: &tokio::sync::Mutex<Chitchat>,
    attester: &Mutex<Attester>,
    metrics: &MeshMetrics,
) {
    let mut chitchat = chitchat.lock().await;
    attester.lock().expect("attester lock").attest_or_warn(
        chitchat.self_node_state(),
        unix_now_ms(),
        metrics,
    );
}

/// The member list: this node's verdicts ([`HeartbeatTracker::judge`]) with each member's
/// metadata — this node's own as it stands, every other member's as it last signed it (none
/// for a member whose state never passed the check).
fn collect_members(
    chitchat: &Chitchat,
    tracker: &HeartbeatTracker,
    verdicts: Vec<Verdict>,
) -> Vec<Member> {
    let self_id = chitchat.self_chitchat_id();
    verdicts
        .into_iter()
        .map(|verdict| {
            let meta = if &verdict.chitchat_id == self_id {
                chitchat
                    .node_state(&verdict.chitchat_id)
                    .map(|state| {
                        state
                            .key_values()
                            .map(|(key, value)| (key.to_owned(), value.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                tracker
                    .accepted_meta(&verdict.chitchat_id)
                    .map(|meta| (*meta).clone())
                    .unwrap_or_default()
            };
            Member::from_meta(
                verdict.node_id,
                verdict.chitchat_id.generation_id,
                verdict.chitchat_id.gossip_advertise_addr,
                verdict.liveness,
                meta,
            )
        })
        .collect()
}

/// The gossip addresses of the members held alive or suspect (self included: chitchat never
/// sends itself a SYN).
fn live_peers(verdicts: &[Verdict]) -> HashSet<SocketAddr> {
    verdicts
        .iter()
        .filter(|verdict| verdict.liveness != Liveness::Dead)
        .map(|verdict| verdict.chitchat_id.gossip_advertise_addr)
        .collect()
}

async fn monitor(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    tracker: Arc<Mutex<HeartbeatTracker>>,
    attester: Arc<Mutex<Attester>>,
    timers: MeshTimers,
    shared: Arc<TransportShared>,
    members_tx: watch::Sender<Vec<Member>>,
    cancel: CancellationToken,
) {
    let metrics = &shared.metrics;
    // Verdicts are cheap (no metadata is copied), so they are checked several times a round;
    // the member list is rebuilt when one changes, and once a round for metadata changes.
    let mut tick = tokio::time::interval(timers.gossip_interval / CHECKS_PER_ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // chitchat re-judges liveness at the end of each of its rounds and says so on this watch
    // when the live set changes: a return (or a death it saw first) is read at once.
    let mut live_nodes = chitchat.lock().await.live_nodes_watcher();
    // This node re-signs its state on its own clock: its attestation is what keeps it alive in
    // everyone else's eyes.
    let mut attest_tick = tokio::time::interval(timers.attest_interval);
    attest_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_verdicts: Vec<Verdict> = Vec::new();
    let mut checks: u32 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = attest_tick.tick() => {
                attest(&chitchat, &attester, metrics).await;
                continue;
            }
            _ = tick.tick() => checks += 1,
            changed = live_nodes.changed() => if changed.is_err() { return },
        }
        let members = {
            let chitchat = chitchat.lock().await;
            let tracker = &mut tracker.lock().expect("tracker lock");
            let verdicts = tracker.judge(&chitchat, &timers, Instant::now(), unix_now_ms());
            if verdicts == last_verdicts && checks < CHECKS_PER_ROUND {
                continue;
            }
            checks = 0;
            *shared.live_peers.lock().expect("live peers lock") = live_peers(&verdicts);
            last_verdicts.clone_from(&verdicts);
            collect_members(&chitchat, tracker, verdicts)
        };
        if shared.counts_members.load(Ordering::Relaxed) {
            metrics.set_members(&members);
        }
        members_tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            *current = members;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_defaults_to_the_bound_address() {
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertise_addr(None, local), Ok(local));
        assert_eq!(
            advertise_addr(Some("192.0.2.1:0".parse().unwrap()), local),
            Ok("192.0.2.1:4000".parse().unwrap())
        );
        assert!(advertise_addr(None, "0.0.0.0:4000".parse().unwrap()).is_err());
    }
}

/// Rotates a running mesh's gossip key ([`Mesh::key_rotator`]).
#[derive(Clone)]
pub struct KeyRotator {
    socket: GossipSocket,
    node_id: NodeId,
}

impl std::fmt::Debug for KeyRotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRotator({})", self.node_id)
    }
}

impl KeyRotator {
    /// The id of the key the mesh seals with.
    pub fn current_id(&self) -> KeyId {
        self.socket
            .core()
            .keyring
            .lock()
            .expect("keyring lock")
            .current_id()
    }

    /// Makes `new` the key the mesh seals with; the current key stays accepted for `overlap`.
    ///
    /// # Errors
    /// [`RotateError`] if `new`'s id is already in the keyring.
    pub fn rotate(&self, new: GossipKey, overlap: Duration) -> Result<(), RotateError> {
        let new_id = new.id();
        self.socket
            .core()
            .keyring
            .lock()
            .expect("keyring lock")
            .rotate(new, overlap.as_millis() as u64, unix_now_ms())?;
        info!(node_id = %self.node_id, key_id = %new_id, "gossip key rotated");
        Ok(())
    }
}
