//! The agent's link to the control plane: one QUIC connection (agent ALPN) to any reachable
//! control node, the desired-state stream on it, and reconnection with jittered backoff.
//!
//! Every view received is persisted (and flushed) before it is acked and before the reconcile
//! loop sees it. The link never decides anything about workloads: losing it changes nothing
//! but [`LinkStatus`]; only a permanent refusal (the node was removed) ends it. When to give
//! up on a silent control node is [`crate::link_failure`]'s decision.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_api::wire::{
    AgentHello, AgentToControl, ControlToAgent, Refusal, RefusalReason, WIRE_VERSION,
};
use warren_api::{Event, EventKind, NodeId, NodeView, Revision};
use warren_mesh::Member;
use warren_transport::{Alpn, Backoff, Endpoint, PeerConnection};

use crate::cache::{Cache, CacheError};
use crate::link_failure::{CHECK_INTERVAL, GossipWitness, LinkFailureDetector, Verdict};
use crate::report::Reporter;
use warren_transport::ca::unix_now_ms as now_ms;

/// How long a status change waits for others to join it in one report.
pub const REPORT_COALESCE: Duration = Duration::from_millis(200);

/// How often the agent speaks when it has nothing to say (control does the same).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

pub use crate::link_failure::SILENCE_LIMIT;

/// What the rest of the agent can see of the link.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStatus {
    /// Whether a stream to a control node is up.
    pub connected: bool,
    /// The control node it is up to.
    pub control: Option<String>,
    /// Last message from control (unix ms).
    pub last_contact_ms: Option<u64>,
    /// Revision of the view on disk.
    pub revision: u64,
    /// Connections made since start.
    pub connects: u64,
    /// The revision control last announced for this node's view (heartbeats, snapshots,
    /// deltas); ahead of `revision` while a view is not yet stored.
    #[serde(default)]
    pub control_revision: u64,
}

/// Why the link ended for good.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The agent is shutting down.
    Cancelled,
    /// The node was removed from the cluster: stop workloads, wipe secrets.
    Removed(String),
}

/// Why one session ended (the link then reconnects).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Stream(#[from] warren_transport::endpoint::StreamError),
    #[error(transparent)]
    Frame(#[from] warren_transport::FrameError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("control refused: {0}")]
    Refused(String),
    #[error("control node busy or behind: {message}")]
    Elsewhere {
        message: String,
        retry_after: Duration,
    },
    #[error("view from control does not follow ours: {0}")]
    Resync(String),
    #[error("view is for node {0}, not us")]
    WrongNode(NodeId),
    #[error("no message from control for {0:?}")]
    Silent(Duration),
    #[error(
        "control silent for {:.1} s and gossip calls it {} while another control node is alive",
        silent_for.as_secs_f64(),
        gossip.as_str()
    )]
    GossipLostIt {
        silent_for: Duration,
        gossip: warren_mesh::Liveness,
    },
}

/// Everything the link needs.
#[derive(Debug)]
pub struct Link {
    /// The agent's endpoint (agent certificate).
    pub endpoint: Arc<Endpoint>,
    /// This node.
    pub node_id: NodeId,
    /// Where views are persisted.
    pub cache: Arc<Cache>,
    /// Control addresses to start from (the cached view's list takes over once known).
    pub seeds: Vec<String>,
    /// The latest persisted view, for the reconcile loop.
    pub views: watch::Sender<Option<Arc<NodeView>>>,
    /// Link state for status and metrics.
    pub status: watch::Sender<LinkStatus>,
    /// Status going up.
    pub reporter: Arc<Reporter>,
    /// This agent's gossip view (empty without a mesh): a witness for the failure detector.
    pub gossip: watch::Receiver<Vec<Member>>,
}

async fn resolve(addrs: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for addr in addrs {
        if let Ok(found) = tokio::net::lookup_host(addr.as_str()).await {
            out.extend(found);
        }
    }
    out
}

impl Link {
    /// Runs until cancelled or the node is removed.
    pub async fn run(self, cancel: CancellationToken) -> LinkEnd {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut force_snapshot = false;
        // A control node that sent us elsewhere is tried last next time.
        let mut avoid: Option<SocketAddr> = None;
        loop {
            let addrs = {
                let cached = self
                    .views
                    .borrow()
                    .as_ref()
                    .map(|v| v.control_addrs.clone());
                let mut addrs = cached.unwrap_or_default();
                for seed in &self.seeds {
                    if !addrs.contains(seed) {
                        addrs.push(seed.clone());
                    }
                }
                let mut resolved = resolve(&addrs).await;
                if let Some(avoid) = avoid.take() {
                    resolved.sort_by_key(|a| *a == avoid);
                }
                resolved
            };
            let conn = match self
                .endpoint
                .connect_any(&addrs, Alpn::Agent, &mut backoff, &cancel)
                .await
            {
                None => return LinkEnd::Cancelled,
                Some(Ok(conn)) => conn,
                // Removed while cut off: the stream's refusal never came, the handshake's
                // does. Same end as a refusal on the stream.
                Some(Err(error)) if error.is_revoked() => {
                    return LinkEnd::Removed(format!("control refused this node: {error}"));
                }
                Some(Err(error)) => {
                    // Trust failures cannot be retried away quickly, but workloads must keep
                    // running: wait the longest backoff and try again.
                    warn!(error = %error, "control refused the connection");
                    tokio::select! {
                        () = cancel.cancelled() => return LinkEnd::Cancelled,
                        () = tokio::time::sleep(Duration::from_secs(30)) => continue,
                    }
                }
            };
            let control = conn.remote_address().to_string();
            self.status.send_modify(|s| {
                s.connected = true;
                s.control = Some(control.clone());
                s.last_contact_ms = Some(now_ms());
                s.connects += 1;
            });
            info!(control = %control, "link up");
            self.reporter.push_events([link_event(
                EventKind::LinkRestored,
                format!("connected to control at {control}"),
            )]);
            let result = tokio::select! {
                () = cancel.cancelled() => Ok(None),
                result = self.session(&conn, force_snapshot) => result.map(Some),
            };
            self.status.send_modify(|s| s.connected = false);
            conn.close("agent reconnecting");
            if let Err(error) = &result {
                self.reporter.push_events([link_event(
                    EventKind::LinkLost,
                    format!("lost control at {control}: {error}"),
                )]);
            }
            match result {
                Ok(None) => return LinkEnd::Cancelled,
                Ok(Some(end)) => return end,
                Err(SessionError::Elsewhere {
                    message,
                    retry_after,
                }) => {
                    info!(%message, "trying another control node");
                    avoid = Some(conn.remote_address());
                    tokio::select! {
                        () = cancel.cancelled() => return LinkEnd::Cancelled,
                        () = tokio::time::sleep(retry_after) => {}
                    }
                }
                Err(SessionError::Refused(message)) => {
                    warn!(%message, "control refused this agent; workloads keep running");
                    tokio::select! {
                        () = cancel.cancelled() => return LinkEnd::Cancelled,
                        () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
                Err(error) => {
                    force_snapshot = matches!(error, SessionError::Resync(_));
                    info!(error = %error, "link down; workloads keep running");
                    // The node we lost is likely dead or cut off: dial the others first, so a
                    // dead leader costs the silence limit, not a connect timeout on top.
                    avoid = Some(conn.remote_address());
                    let delay = backoff.next_delay();
                    tokio::select! {
                        () = cancel.cancelled() => return LinkEnd::Cancelled,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        conn: &PeerConnection,
        force_snapshot: bool,
    ) -> Result<LinkEnd, SessionError> {
        let (mut send, mut recv) = conn.open_stream().await?;
        let cached = self.views.borrow().clone();
        let identity = self.cache.identity()?;
        let hello = AgentHello {
            wire_version: WIRE_VERSION,
            node_id: self.node_id,
            last_revision: if force_snapshot {
                Revision::ZERO
            } else {
                cached.as_ref().map_or(Revision::ZERO, |v| v.revision)
            },
            cache_cluster_id: identity.map(|i| i.cluster_id),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            have: if force_snapshot {
                None
            } else {
                cached.as_ref().map(|v| v.digest())
            },
        };
        send.send(&AgentToControl::Hello(hello)).await?;
        // A new session reports everything at once: this control node may know nothing of us.
        self.send_report(&mut send).await?;
        let mut current = cached;
        let mut deadline = tokio::time::Instant::now() + SILENCE_LIMIT;
        // The agent speaks every HEARTBEAT_INTERVAL too (its ack, repeated), so control can tell
        // a dead or cut-off agent from a quiet one without waiting for QUIC's idle timeout.
        let mut keepalive = tokio::time::interval(HEARTBEAT_INTERVAL);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        let mut report_at: Option<tokio::time::Instant> = None;
        let mut detector =
            LinkFailureDetector::new(std::time::Instant::now(), conn.datagrams_received());
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Control sends a heartbeat every 5 s; silence for three of them means the control
            // node died without closing the connection (kill -9, power loss): reconnect to
            // another one instead of waiting out the QUIC idle timeout.
            let message = tokio::select! {
                received = recv.recv::<ControlToAgent>() => received?,
                () = tokio::time::sleep_until(deadline) => return Err(SessionError::Silent(SILENCE_LIMIT)),
                // Changes within REPORT_COALESCE go up in one report; views keep being read
                // meanwhile (a burst of deltas must not wait on the reports it causes).
                () = self.reporter.changed(), if report_at.is_none() => {
                    report_at = Some(tokio::time::Instant::now() + REPORT_COALESCE);
                    continue;
                }
                () = sleep_until_some(report_at) => {
                    report_at = None;
                    self.send_report(&mut send).await?;
                    continue;
                }
                _ = keepalive.tick() => {
                    if let Some(view) = &current {
                        send.send(&AgentToControl::Ack { revision: view.revision }).await?;
                    }
                    continue;
                }
                _ = check.tick() => {
                    self.judge(&mut detector, conn)?;
                    continue;
                }
            };
            deadline = tokio::time::Instant::now() + SILENCE_LIMIT;
            self.status
                .send_modify(|s| s.last_contact_ms = Some(now_ms()));
            let next = match message {
                ControlToAgent::Snapshot(view) => *view,
                ControlToAgent::Delta(delta) => {
                    let mut view = current.as_deref().cloned().ok_or_else(|| {
                        SessionError::Resync("a delta without a base view".into())
                    })?;
                    view.apply(&delta)
                        .map_err(|e| SessionError::Resync(e.to_string()))?;
                    view
                }
                ControlToAgent::Heartbeat { revision } => {
                    debug!(revision = %revision, "heartbeat");
                    self.status
                        .send_modify(|s| s.control_revision = s.control_revision.max(revision.0));
                    continue;
                }
                ControlToAgent::Refused(refusal) if refusal.reason.is_permanent() => {
                    return Ok(LinkEnd::Removed(refusal.message));
                }
                ControlToAgent::Refused(Refusal {
                    reason: RefusalReason::Overloaded { retry_after_ms },
                    message,
                }) => {
                    return Err(SessionError::Elsewhere {
                        message,
                        retry_after: Duration::from_millis(retry_after_ms.min(30_000)),
                    });
                }
                ControlToAgent::Refused(refusal) => {
                    return Err(SessionError::Refused(refusal.message));
                }
            };
            if next.node.id != self.node_id {
                return Err(SessionError::WrongNode(next.node.id));
            }
            // Durable before acknowledged, and before the reconcile loop acts on it.
            self.cache.store_view(&next).await?;
            let revision = next.revision;
            let next = Arc::new(next);
            self.views.send_replace(Some(next.clone()));
            self.status.send_modify(|s| {
                s.revision = revision.0;
                s.control_revision = s.control_revision.max(revision.0);
            });
            send.send(&AgentToControl::Ack { revision }).await?;
            current = Some(next);
        }
    }

    /// Asks the failure detector whether `conn`'s control node is gone (QUIC silent, and gossip
    /// hears another control node but not this one; or silent for the limit).
    fn judge(
        &self,
        detector: &mut LinkFailureDetector,
        conn: &PeerConnection,
    ) -> Result<(), SessionError> {
        let ours = conn.peer().and_then(|peer| peer.node_id);
        let witness = GossipWitness::from_members(&self.gossip.borrow(), ours);
        let verdict = detector.observe(
            std::time::Instant::now(),
            conn.datagrams_received(),
            conn.rtt(),
            witness,
        );
        match verdict {
            Verdict::Keep => Ok(()),
            Verdict::GossipLostIt { silent_for, gossip } => {
                Err(SessionError::GossipLostIt { silent_for, gossip })
            }
            Verdict::Silent { silent_for } => Err(SessionError::Silent(silent_for)),
        }
    }

    /// Sends the reporter's status, and more reports while events wait.
    async fn send_report(
        &self,
        send: &mut warren_transport::FramedSend,
    ) -> Result<(), SessionError> {
        loop {
            let (report, receipt) = self.reporter.take();
            send.send(&AgentToControl::Status(report)).await?;
            if !self.reporter.commit(receipt) {
                return Ok(());
            }
        }
    }
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn link_event(kind: EventKind, message: String) -> Event {
    Event {
        at_ms: now_ms(),
        replica: None,
        kind,
        message,
    }
}
