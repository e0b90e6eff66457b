//! One session on one connection to a control node: the hello (our cached revision and
//! digest), views in (snapshots and deltas, each stored and flushed before it is acked),
//! status reports out (coalesced), the agent's own heartbeat, and the silence check that ends
//! a session whose control node has gone quiet ([`crate::link_failure`]). Beside the session,
//! control's log requests on streams of their own ([`crate::logs`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_api::clock::unix_now_ms;
use warren_api::logs::{AgentLogReply, AgentLogRequest};
use warren_api::wire::{
    AgentHello, AgentToControl, ControlToAgent, Refusal, RefusalReason, WIRE_VERSION,
};
use warren_api::{Event, EventKind, NodeId, NodeView, Revision};
use warren_transport::PeerConnection;

use super::{Link, LinkEnd, REPORT_COALESCE};
use crate::cache::CacheError;
use crate::link_failure::{CHECK_INTERVAL, GossipWitness, LinkFailureDetector, Verdict};
use warren_api::wire::{HEARTBEAT_INTERVAL, SILENCE_LIMIT};

/// Why one session ended (the link then reconnects).
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Stream(#[from] warren_transport::endpoint::StreamError),
    #[error(transparent)]
    Frame(#[from] warren_transport::FrameError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("control refused: {0}")]
    Refused(String),
    #[error("control node sent this agent elsewhere: {message}")]
    Elsewhere {
        message: String,
        retry_after: Duration,
    },
    #[error("view from control does not follow ours: {0}")]
    Resync(String),
    /// A delta that does not apply to our view: reconnect and ask for a snapshot, as for
    /// [`SessionError::Resync`].
    #[error("view from control does not follow ours: {0}")]
    DeltaRefused(#[source] warren_api::ApplyError),
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

/// What one message from control means for the session.
enum Received {
    /// A new view, to store, flush and ack.
    View(Box<NodeView>),
    /// Nothing to store (a heartbeat, an empty delta).
    Nothing,
    /// The session, and the link, end.
    End(LinkEnd),
}

impl Link {
    /// Runs one session on `conn` with the status and events that frame it. `Ok(None)` when
    /// cancelled.
    pub(super) async fn attend(
        &self,
        conn: &PeerConnection,
        control: &str,
        force_snapshot: bool,
        cancel: &CancellationToken,
    ) -> Result<Option<LinkEnd>, SessionError> {
        self.status.send_modify(|s| {
            s.connected = true;
            s.control = Some(control.to_owned());
            s.last_contact_ms = Some(unix_now_ms());
            s.connects += 1;
            s.down_reason = None;
            s.retry_at_ms = None;
        });
        info!(control = %control, "link up");
        self.reporter.push_events([link_event(
            EventKind::LinkRestored,
            format!("connected to control at {control}"),
        )]);
        // Control asks for logs on streams of its own; they end with the connection.
        tokio::spawn(self.serve_logs(conn.clone()));
        let result = tokio::select! {
            () = cancel.cancelled() => Ok(None),
            result = self.session(conn, force_snapshot) => result.map(Some),
        };
        self.status.send_modify(|s| s.connected = false);
        conn.close("agent reconnecting");
        if let Err(error) = &result {
            info!(control = %control, error = %error, "link down; workloads keep running");
            self.reporter.push_events([link_event(
                EventKind::LinkLost,
                format!("lost control at {control}: {error}"),
            )]);
        }
        result
    }

    /// Answers control's log requests on `conn` until it closes, each from a blocking task
    /// (file reads) within the request's byte budget, a few at a time
    /// ([`crate::logs::LOG_REQUESTS_AT_ONCE_MAX`]).
    fn serve_logs(&self, conn: PeerConnection) -> impl Future<Output = ()> + Send + 'static {
        let logs = self.logs.clone();
        let cache = self.cache.clone();
        let handler = move |request: AgentLogRequest, _conn: PeerConnection| {
            let logs = logs.clone();
            let cache = cache.clone();
            async move {
                let turn = logs.turn().await;
                let answer = tokio::task::spawn_blocking(move || logs.answer(&cache, &request))
                    .await
                    .unwrap_or_else(|error| {
                        warn!(error = %error, "log request task failed");
                        AgentLogReply::default()
                    });
                drop(turn);
                answer
            }
        };
        warren_transport::serve_requests(conn, handler)
    }

    async fn session(
        &self,
        conn: &PeerConnection,
        force_snapshot: bool,
    ) -> Result<LinkEnd, SessionError> {
        let (mut send, mut recv) = conn.open_stream().await?;
        let cached = self.views.borrow().clone();
        let hello = self.hello(cached.as_deref(), force_snapshot)?;
        send.send(&AgentToControl::Hello(hello)).await?;
        // A new session reports everything at once: this control node may know nothing of us.
        let mut listeners_sent = 0;
        self.send_report(&mut send, &mut listeners_sent).await?;
        let mut mesh = self.mesh.clone();
        let declaration = mesh.borrow_and_update().clone();
        if let Some(declaration) = declaration {
            send.send(&AgentToControl::Mesh(declaration)).await?;
        }
        let mut overlay = self.overlay.clone();
        let mut peers_sent = PeersSent::default();
        peers_sent.maybe_send(&mut overlay, &mut send).await?;
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
                    self.send_report(&mut send, &mut listeners_sent).await?;
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
                Ok(()) = mesh.changed() => {
                    let declaration = mesh.borrow_and_update().clone();
                    if let Some(declaration) = declaration {
                        send.send(&AgentToControl::Mesh(declaration)).await?;
                    }
                    continue;
                }
                Ok(()) = overlay.changed() => {
                    peers_sent.maybe_send(&mut overlay, &mut send).await?;
                    continue;
                }
            };
            deadline = tokio::time::Instant::now() + SILENCE_LIMIT;
            self.status
                .send_modify(|s| s.last_contact_ms = Some(unix_now_ms()));
            let next = match self.receive(message, current.as_deref())? {
                Received::View(view) => *view,
                Received::Nothing => continue,
                Received::End(end) => return Ok(end),
            };
            current = Some(self.keep(next, &mut send).await?);
        }
    }

    /// What one message from control means for the session, given the view it holds.
    fn receive(
        &self,
        message: ControlToAgent,
        current: Option<&NodeView>,
    ) -> Result<Received, SessionError> {
        let received = match message {
            ControlToAgent::Snapshot(view) => Received::View(view),
            // Nothing to store or ack: the view is where it was (an older control node
            // sends these when only something outside the replicated state moved).
            ControlToAgent::Delta(delta)
                if delta.is_noop() && current.is_some_and(|v| v.revision == delta.from) =>
            {
                debug!(revision = %delta.to, "empty delta");
                Received::Nothing
            }
            ControlToAgent::Delta(delta) => {
                let mut view = current
                    .cloned()
                    .ok_or_else(|| SessionError::Resync("a delta without a base view".into()))?;
                view.apply(&delta).map_err(SessionError::DeltaRefused)?;
                Received::View(Box::new(view))
            }
            ControlToAgent::Heartbeat { revision } => {
                debug!(revision = %revision, "heartbeat");
                self.status
                    .send_modify(|s| s.control_revision = s.control_revision.max(revision.0));
                Received::Nothing
            }
            ControlToAgent::Refused(refusal) if refusal.reason.is_permanent() => {
                Received::End(LinkEnd::Removed(refusal.message))
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
        Ok(received)
    }

    /// The hello of a new session: our cached view's revision and digest, so that control
    /// answers with a delta — or nothing of them, to ask for a snapshot.
    fn hello(
        &self,
        cached: Option<&NodeView>,
        force_snapshot: bool,
    ) -> Result<AgentHello, SessionError> {
        let cached = cached.filter(|_| !force_snapshot);
        Ok(AgentHello {
            wire_version: WIRE_VERSION,
            node_id: self.node_id,
            last_revision: cached.map_or(Revision::ZERO, |v| v.revision),
            cache_cluster_id: self.cache.identity()?.map(|i| i.cluster_id),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            have: cached.map(NodeView::digest),
        })
    }

    /// Keeps a view from control: persisted and flushed (durable before acknowledged, and
    /// before the reconcile loop acts on it), handed to the reconcile loop, then acked.
    async fn keep(
        &self,
        next: NodeView,
        send: &mut warren_transport::FramedSend,
    ) -> Result<Arc<NodeView>, SessionError> {
        if next.node.id != self.node_id {
            return Err(SessionError::WrongNode(next.node.id));
        }
        self.cache.store_view(&next).await?;
        let revision = next.revision;
        let next = Arc::new(next);
        self.views.send_replace(Some(next.clone()));
        let targets = self.targets();
        self.status.send_modify(|s| {
            s.revision = revision.0;
            s.control_revision = s.control_revision.max(revision.0);
            s.control_addrs = targets;
        });
        send.send(&AgentToControl::Ack { revision }).await?;
        Ok(next)
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

    /// Sends the reporter's status, and more reports while events wait; then the listeners'
    /// states if they changed since `listeners_sent` (the version this session last sent).
    async fn send_report(
        &self,
        send: &mut warren_transport::FramedSend,
        listeners_sent: &mut u64,
    ) -> Result<(), SessionError> {
        loop {
            let (report, receipt) = self.reporter.take();
            send.send(&AgentToControl::Status(report)).await?;
            if !self.reporter.commit(receipt) {
                break;
            }
        }
        if let Some((version, listeners)) = self.reporter.listeners_after(*listeners_sent) {
            send.send(&AgentToControl::Listeners(listeners)).await?;
            *listeners_sent = version;
        }
        Ok(())
    }
}

/// How often the overlay's peer counters go up when nothing else about the peers changed.
const MESH_PEERS_EVERY: Duration = Duration::from_secs(60);

/// What this session last told control of the overlay's peers, and when.
#[derive(Default)]
struct PeersSent {
    shape: Option<Vec<(String, Option<String>, bool)>>,
    at: Option<tokio::time::Instant>,
}

impl PeersSent {
    /// Sends the overlay's peers if they changed in shape (a peer came or went, moved, or
    /// its handshake went stale or fresh), or if the last report is a minute old.
    async fn maybe_send(
        &mut self,
        overlay: &mut watch::Receiver<crate::overlay::OverlayStatus>,
        send: &mut warren_transport::FramedSend,
    ) -> Result<(), SessionError> {
        let status = overlay.borrow_and_update().clone();
        if status.state != "up" {
            return Ok(());
        }
        let now_ms = unix_now_ms();
        let shape = status.peer_shape(now_ms);
        let due = self.at.is_none_or(|at| at.elapsed() >= MESH_PEERS_EVERY);
        if self.shape.as_ref() == Some(&shape) && !due {
            return Ok(());
        }
        send.send(&AgentToControl::MeshPeers(status.peer_report(now_ms)))
            .await?;
        self.shape = Some(shape);
        self.at = Some(tokio::time::Instant::now());
        Ok(())
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
        at_ms: unix_now_ms(),
        replica: None,
        kind,
        message,
    }
}
