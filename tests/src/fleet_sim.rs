//! A fleet simulator: many agents in one process, each with its own certificate (from a real
//! join), its own QUIC endpoint and connection, speaking the real agent protocol — the hello
//! with the digest of its view, snapshots and deltas applied with [`NodeView::apply`], acks,
//! status reports that say its replicas run, heartbeats, reconnection with the agent's
//! jittered back-off — but running no workloads and keeping its view in memory only.
//!
//! Each agent keeps counters ([`AgentTrack`]) that a bench reads: which control node it is
//! connected to, the revision it holds, views and bytes received, and when it first met the
//! fleet's current [`Probe`] (a view that holds, or no longer holds, a service).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warren_api::clock::unix_now_ms;
use warren_api::wire::{
    AGENT_KEEP_ALIVE, AgentHello, AgentToControl, ControlToAgent, HEARTBEAT_INTERVAL,
    RefusalReason, SILENCE_LIMIT, StatusReport, ViewChange, WIRE_VERSION,
};
use warren_api::{HealthState, NodeId, NodeRole, NodeView, ReplicaStatus, Revision, TaskState};
use warren_transport::join::JoinParams;
use warren_transport::{
    Alpn, Backoff, Credentials, Endpoint, EndpointOptions, PeerConnection, TransportConfig,
    TransportMetrics,
};

use warren_edge_agent::link::{RETRY_MAX, RETRY_MIN};

/// One simulated agent's identity: what a real join gave it.
#[derive(Debug)]
pub struct SimIdentity {
    /// Its node id.
    pub node_id: NodeId,
    /// Certificate, key and CA from the join.
    pub credentials: Credentials,
    /// The control nodes' QUIC addresses.
    pub control_addrs: Vec<SocketAddr>,
    /// The loopback address its endpoint binds (and its advertised gossip IP).
    pub ip: Ipv4Addr,
}

/// The loopback address of simulated agent `index`: 127.100.0.1 and up, so each agent has its
/// own source address (control's join limits count per source).
pub fn agent_ip(index: usize) -> Ipv4Addr {
    let n = index as u32 + 1;
    Ipv4Addr::new(127, 100 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// Joins simulated agent `index` (named `sim-<index>`, in `site`) with `token` through
/// `control`, the way `warren agent join` does, advertising a gossip address on its own IP
/// (so it is a mesh peer and a catalogue address like a real agent).
///
/// # Errors
/// The join's error, as text.
pub async fn join(
    control: SocketAddr,
    token: &str,
    index: usize,
    site: &str,
) -> Result<SimIdentity, String> {
    let ip = agent_ip(index);
    let params = JoinParams {
        role: NodeRole::Agent,
        name: format!("sim-{index}"),
        site: site.to_owned(),
        labels: BTreeMap::new(),
        advertise: vec![format!("gossip={ip}:7946")],
    };
    let joined = warren_transport::join::join(
        control,
        token,
        params,
        &TransportConfig::default(),
        &TransportMetrics::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let control_addrs = joined
        .control_addrs
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    Ok(SimIdentity {
        node_id: joined.node_id,
        credentials: joined.credentials,
        control_addrs,
        ip,
    })
}

/// What the fleet waits for, with the time each agent first met it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A view whose services include this one.
    Has(String),
    /// A view whose services do not include this one.
    Lacks(String),
    /// A view that holds this service at this version or later.
    AtVersion(String, u64),
}

impl Probe {
    fn met(&self, view: &NodeView) -> bool {
        let holds = |name: &str| view.services.keys().any(|s| s.as_str() == name);
        match self {
            Probe::Has(name) => holds(name),
            Probe::Lacks(name) => !holds(name),
            Probe::AtVersion(name, version) => view
                .services
                .iter()
                .any(|(s, service)| s.as_str() == name && service.version >= *version),
        }
    }
}

/// One agent's counters, shared with the bench.
#[derive(Debug, Default)]
pub struct AgentTrack {
    /// Index (in the control address list) of the control node it is connected to, plus one;
    /// 0 while disconnected.
    pub connected_to: AtomicU64,
    /// Revision of the view it holds.
    pub revision: AtomicU64,
    /// Snapshots received.
    pub snapshots: AtomicU64,
    /// Deltas received (that changed something).
    pub deltas: AtomicU64,
    /// Encoded bytes of the snapshots and deltas received.
    pub view_bytes: AtomicU64,
    /// Peers in the view it holds.
    pub peers: AtomicU64,
    /// Sessions started.
    pub sessions: AtomicU64,
    /// When it first held a view that met the current probe, if it has.
    pub probe_met: Mutex<Option<Instant>>,
    /// Why its last attempt or session failed, if one did.
    pub last_error: Mutex<Option<String>>,
}

/// A fleet of simulated agents.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Per agent, in join order.
    pub agents: Vec<Arc<AgentTrack>>,
    probe: Arc<Mutex<Option<Probe>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    cancel: CancellationToken,
}

impl Fleet {
    /// Starts one task per identity: each binds its endpoint and connects.
    ///
    /// # Errors
    /// An endpoint that cannot be bound.
    pub fn start(identities: Vec<SimIdentity>) -> Result<Self, String> {
        let mut fleet = Fleet::default();
        for identity in identities {
            let track = Arc::new(AgentTrack::default());
            let agent = SimAgent::new(identity, track.clone(), fleet.probe.clone())?;
            let cancel = fleet.cancel.clone();
            fleet.tasks.push(tokio::spawn(agent.run(cancel)));
            fleet.agents.push(track);
        }
        Ok(fleet)
    }

    /// Sets what the agents watch for, and forgets who met the previous probe. An agent notes
    /// the probe when a view arrives: set it before the write that should meet it.
    pub fn set_probe(&self, probe: Probe) {
        for agent in &self.agents {
            *agent.probe_met.lock().expect("not poisoned") = None;
        }
        *self.probe.lock().expect("not poisoned") = Some(probe);
    }

    /// When each agent met the probe (`None`: not yet).
    pub fn probe_times(&self) -> Vec<Option<Instant>> {
        self.agents
            .iter()
            .map(|a| *a.probe_met.lock().expect("not poisoned"))
            .collect()
    }

    /// How many agents are connected to each control node (by index in the address list).
    pub fn spread(&self, controls: usize) -> Vec<usize> {
        let mut counts = vec![0; controls];
        for agent in &self.agents {
            let at = agent.connected_to.load(Ordering::Relaxed) as usize;
            if at > 0 && at <= controls {
                counts[at - 1] += 1;
            }
        }
        counts
    }

    /// Agents connected and holding at least `revision`.
    pub fn current(&self, revision: u64) -> usize {
        self.agents
            .iter()
            .filter(|a| {
                a.connected_to.load(Ordering::Relaxed) > 0
                    && a.revision.load(Ordering::Relaxed) >= revision
            })
            .count()
    }

    /// Sum of a counter over the fleet.
    pub fn total(&self, counter: impl Fn(&AgentTrack) -> &AtomicU64) -> u64 {
        self.agents
            .iter()
            .map(|a| counter(a).load(Ordering::Relaxed))
            .sum()
    }

    /// Agents whose counter moved since `before` (as returned by [`Fleet::snapshot_of`]).
    pub fn moved(&self, before: &[u64], counter: impl Fn(&AgentTrack) -> &AtomicU64) -> usize {
        self.agents
            .iter()
            .zip(before)
            .filter(|(a, b)| counter(a).load(Ordering::Relaxed) != **b)
            .count()
    }

    /// Each agent's counter now.
    pub fn snapshot_of(&self, counter: impl Fn(&AgentTrack) -> &AtomicU64) -> Vec<u64> {
        self.agents
            .iter()
            .map(|a| counter(a).load(Ordering::Relaxed))
            .collect()
    }

    /// Why agents failed last, with how many failed so, most common first.
    pub fn errors(&self) -> Vec<(usize, String)> {
        let mut counts: std::collections::BTreeMap<String, usize> = BTreeMap::new();
        for agent in &self.agents {
            if let Some(error) = agent.last_error.lock().expect("not poisoned").clone() {
                *counts.entry(error).or_default() += 1;
            }
        }
        let mut errors: Vec<(usize, String)> = counts.into_iter().map(|(e, n)| (n, e)).collect();
        errors.sort_by_key(|e| std::cmp::Reverse(e.0));
        errors
    }

    /// Stops every agent (their connections close).
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct SimAgent {
    node_id: NodeId,
    endpoint: Endpoint,
    control_addrs: Vec<SocketAddr>,
    cluster_id: [u8; 32],
    track: Arc<AgentTrack>,
    probe: Arc<Mutex<Option<Probe>>>,
    view: Option<NodeView>,
    wire_version: u16,
}

/// The wire version simulated agents speak: this build's, or `WARREN_SIM_WIRE_VERSION` (an
/// older one, to drive an older control plane: what the agents receive is read the same).
fn wire_version() -> u16 {
    std::env::var("WARREN_SIM_WIRE_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WIRE_VERSION)
}

/// Why a session ended, and how long to wait before the next.
enum SessionEnd {
    Retry,
    After(Duration),
}

impl SimAgent {
    fn new(
        identity: SimIdentity,
        track: Arc<AgentTrack>,
        probe: Arc<Mutex<Option<Probe>>>,
    ) -> Result<Self, String> {
        let mut options = EndpointOptions::default();
        options.config.keep_alive_interval = AGENT_KEEP_ALIVE;
        let bind = SocketAddr::new(IpAddr::V4(identity.ip), 0);
        let endpoint = Endpoint::client(bind, &identity.credentials, options)
            .map_err(|e| format!("bind {bind}: {e}"))?;
        Ok(Self {
            node_id: identity.node_id,
            cluster_id: identity.credentials.cluster_fingerprint(),
            endpoint,
            control_addrs: identity.control_addrs,
            track,
            probe,
            view: None,
            wire_version: wire_version(),
        })
    }

    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut avoid: Option<SocketAddr> = None;
        loop {
            let mut addrs = warren_edge_agent::link::dial_order(self.node_id, &self.targets());
            if let Some(avoid) = avoid.take() {
                addrs.sort_by_key(|a| *a == avoid);
            }
            let end = match self
                .endpoint
                .connect_any(&addrs, Alpn::Agent, &cancel)
                .await
            {
                Ok(conn) => {
                    backoff.reset();
                    let end = tokio::select! {
                        () = cancel.cancelled() => return,
                        end = self.session(&conn) => end,
                    };
                    self.track.connected_to.store(0, Ordering::Relaxed);
                    conn.close("agent reconnecting");
                    avoid = Some(conn.remote_address());
                    end
                }
                Err(warren_transport::ConnectAnyError::Cancelled) => return,
                Err(error) => {
                    self.note_error(error.to_string());
                    SessionEnd::Retry
                }
            };
            let delay = match end {
                SessionEnd::Retry => backoff.next_delay(),
                SessionEnd::After(delay) => delay,
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The control addresses of the view, else those of the join.
    fn targets(&self) -> Vec<SocketAddr> {
        let from_view: Vec<SocketAddr> = self
            .view
            .iter()
            .flat_map(|v| v.control_addrs.iter())
            .filter_map(|a| a.parse().ok())
            .collect();
        if from_view.is_empty() {
            self.control_addrs.clone()
        } else {
            from_view
        }
    }

    async fn session(&mut self, conn: &PeerConnection) -> SessionEnd {
        match self.converse(conn).await {
            Ok(end) => end,
            Err(error) => {
                self.note_error(error.to_string());
                SessionEnd::Retry
            }
        }
    }

    fn note_error(&self, error: String) {
        *self.track.last_error.lock().expect("not poisoned") = Some(error);
    }

    async fn converse(&mut self, conn: &PeerConnection) -> Result<SessionEnd, SimError> {
        let (mut send, mut recv) = conn.open_stream().await?;
        let at = self
            .targets()
            .iter()
            .position(|a| *a == conn.remote_address())
            .map_or(u64::MAX, |i| i as u64 + 1);
        self.track.connected_to.store(at, Ordering::Relaxed);
        self.track.sessions.fetch_add(1, Ordering::Relaxed);
        send.send(&AgentToControl::Hello(self.hello())).await?;
        send.send(&AgentToControl::Status(self.report())).await?;
        let mut keepalive = tokio::time::interval(HEARTBEAT_INTERVAL);
        keepalive.tick().await;
        let mut deadline = tokio::time::Instant::now() + SILENCE_LIMIT;
        loop {
            let message = tokio::select! {
                message = recv.recv::<ControlToAgent>() => message?,
                () = tokio::time::sleep_until(deadline) => return Ok(SessionEnd::Retry),
                _ = keepalive.tick() => {
                    if let Some(view) = &self.view {
                        send.send(&AgentToControl::Ack { revision: view.revision }).await?;
                    }
                    continue;
                }
            };
            deadline = tokio::time::Instant::now() + SILENCE_LIMIT;
            if matches!(
                message,
                ControlToAgent::Snapshot(_) | ControlToAgent::Delta(_)
            ) {
                let size = warren_api::wire::encode(&message).map_or(0, |b| b.len() as u64);
                self.track.view_bytes.fetch_add(size, Ordering::Relaxed);
            }
            let (next, replicas_moved) = match message {
                ControlToAgent::Heartbeat { .. } => continue,
                ControlToAgent::Refused(refusal) => {
                    self.note_error(format!("refused: {}", refusal.message));
                    return Ok(match refusal.reason {
                        RefusalReason::Overloaded { retry_after_ms } => {
                            SessionEnd::After(Duration::from_millis(retry_after_ms))
                        }
                        _ => SessionEnd::After(RETRY_MAX),
                    });
                }
                ControlToAgent::Snapshot(view) => {
                    self.track.snapshots.fetch_add(1, Ordering::Relaxed);
                    (*view, true)
                }
                ControlToAgent::Delta(delta) => {
                    if delta.is_noop() {
                        continue;
                    }
                    let Some(mut view) = self.view.take() else {
                        return Ok(SessionEnd::Retry);
                    };
                    self.track.deltas.fetch_add(1, Ordering::Relaxed);
                    if view.apply(&delta).is_err() {
                        return Ok(SessionEnd::Retry);
                    }
                    let moved = delta.changes.iter().any(|c| {
                        matches!(
                            c,
                            ViewChange::UpsertReplica(_) | ViewChange::RemoveReplica(_)
                        )
                    });
                    (view, moved)
                }
            };
            self.keep(next);
            let revision = self.view.as_ref().map_or(Revision::ZERO, |v| v.revision);
            send.send(&AgentToControl::Ack { revision }).await?;
            if replicas_moved {
                send.send(&AgentToControl::Status(self.report())).await?;
            }
        }
    }

    /// Holds `view` and notes when it first met the probe.
    fn keep(&mut self, view: NodeView) {
        self.track
            .revision
            .store(view.revision.0, Ordering::Relaxed);
        let peers = view.peers.len() as u64;
        self.track.peers.store(peers, Ordering::Relaxed);
        let probe = self.probe.lock().expect("not poisoned").clone();
        if let Some(probe) = probe
            && probe.met(&view)
        {
            let mut met = self.track.probe_met.lock().expect("not poisoned");
            met.get_or_insert_with(Instant::now);
        }
        self.view = Some(view);
    }

    fn hello(&self) -> AgentHello {
        AgentHello {
            wire_version: self.wire_version,
            node_id: self.node_id,
            last_revision: self.view.as_ref().map_or(Revision::ZERO, |v| v.revision),
            cache_cluster_id: self.view.as_ref().map(|_| self.cluster_id),
            agent_version: format!("{}-sim", env!("CARGO_PKG_VERSION")),
            have: self.view.as_ref().map(NodeView::digest),
        }
    }

    /// Every replica of the view, running since now.
    fn report(&self) -> StatusReport {
        let now = unix_now_ms();
        let replicas = self
            .view
            .iter()
            .flat_map(|v| v.replicas.iter())
            .map(|replica| ReplicaStatus {
                id: replica.id.clone(),
                node: self.node_id,
                state: TaskState::Running,
                pid: None,
                started_at_ms: Some(now),
                exit_code: None,
                restarts: 0,
                health: HealthState::Unknown,
                message: None,
                updated_at_ms: now,
                workload_hash: Some(replica.workload_hash),
            })
            .collect();
        StatusReport {
            node_id: self.node_id,
            revision: self.view.as_ref().map_or(Revision::ZERO, |v| v.revision),
            replicas,
            events: Vec::new(),
            events_dropped: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SimError {
    #[error(transparent)]
    Stream(#[from] warren_transport::endpoint::StreamError),
    #[error(transparent)]
    Frame(#[from] warren_transport::FrameError),
}
