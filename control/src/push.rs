//! The desired-state push: each agent holds one stream to some control node, which sends the
//! node's view (a snapshot, then deltas as entries are applied) and receives acks.
//!
//! Protocol on the `agent` ALPN (agent certificates only): the agent opens one bidirectional
//! stream and sends `AgentToControl::Hello`. Control checks it and answers with
//! `ControlToAgent::Snapshot` (or `Heartbeat` when the agent is already at the current view),
//! then a `Delta` whenever an applied entry changes the node's view, and a `Heartbeat` every
//! [`HEARTBEAT_INTERVAL`] otherwise. A removed node is refused with `NodeRemoved`.
//!
//! Control keeps no per-agent state a reconnection to another control node could not rebuild:
//! the view is a pure function of the replicated state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};
use warren_api::clock::unix_now_ms;
use warren_api::wire::{
    AgentHello, AgentToControl, ControlToAgent, Listener, ListenerStatus, MAX_AGENT_MESSAGE_BYTES,
    MAX_LISTENER_TEXT, MIN_WIRE_VERSION, MeshDeclaration, Refusal, RefusalReason, ViewDigest,
    WIRE_VERSION,
};
use warren_api::{NodeAddresses, NodeId, NodeState, NodeView, Revision};
use warren_transport::{FrameError, PeerConnection};

mod fleet;

pub(crate) use fleet::FleetCache;
use fleet::{FleetParts, Speaks, fleet_changes};

use crate::command::Op;
use crate::control::Control;
use crate::keys::ClusterKeys;
use crate::state::ClusterState;
use warren_api::wire::{HEARTBEAT_INTERVAL, SILENCE_LIMIT};

/// The view of `node` at the state's current revision: its replicas, the services they need,
/// the secrets those services reference (sealed for this node with its key, see
/// [`crate::secrets::sealed_for_node`]), the gossip key of the generation in force, and the
/// control addresses. `None` if the node is not registered, or if `keys` lacks the generation
/// in force (this control node is still fetching it: a view without it would differ from the
/// other control nodes' view of the same revision).
pub fn node_view(
    state: &ClusterState,
    node: NodeId,
    control_addrs: &[String],
    keys: &ClusterKeys,
) -> Option<NodeView> {
    let full_mesh_up_to = crate::peer_scope::FULL_MESH_PEERS;
    node_view_scoped(state, node, control_addrs, keys, full_mesh_up_to)
}

/// [`node_view`] with its peers scoped beyond `full_mesh_up_to` peers in the fleet
/// ([`crate::peer_scope`]).
pub fn node_view_scoped(
    state: &ClusterState,
    node: NodeId,
    control_addrs: &[String],
    keys: &ClusterKeys,
    full_mesh_up_to: usize,
) -> Option<NodeView> {
    let replicas: Vec<_> = state.replicas_on(node).cloned().collect();
    let mut view = own_part(state, node, control_addrs, keys, replicas)?;
    view.catalogue = crate::catalogue::catalogue_for_site(state, &view.node.site);
    view.peers = crate::peer_scope::peers_of(state, node, full_mesh_up_to);
    view.scrape = crate::catalogue::scrape_targets(state, Some(&view.node.site));
    Some(view)
}

/// [`node_view`] without what every node's view shares (the catalogue, the peers, the site's
/// scrape targets: left empty), given the node's running `replicas` sorted by id.
fn own_part(
    state: &ClusterState,
    node: NodeId,
    control_addrs: &[String],
    keys: &ClusterKeys,
    replicas: Vec<warren_api::Replica>,
) -> Option<NodeView> {
    let entry = state.nodes.get(&node)?;
    let services: BTreeMap<_, _> = replicas
        .iter()
        .filter_map(|r| {
            state
                .services
                .get(&r.id.service)
                .map(|s| (r.id.service.clone(), s.current.clone()))
        })
        .collect();
    let mut secrets =
        crate::secrets::sealed_for_node(state, services.values().map(|s| &s.spec), keys, node);
    let (name, gossip) = crate::secrets::gossip_key_for_node(keys, state.key_generation(), node)?;
    secrets.insert(name, gossip);
    let cluster_id = state
        .cluster
        .as_ref()
        .map(|c| warren_transport::identity::fingerprint(&c.ca_cert_der))
        .unwrap_or([0; 32]);
    Some(NodeView {
        revision: state.revision,
        cluster_id,
        node: entry.clone(),
        services,
        replicas,
        secrets,
        catalogue: Vec::new(),
        control_addrs: control_addrs.to_vec(),
        peers: Vec::new(),
        mesh: state.own_mesh(node),
        scrape: warren_api::scrape::ScrapeTargets::default(),
    })
}

/// Why a push stream ended.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The agent sent something unreadable or closed the stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream could not be opened.
    #[error(transparent)]
    Stream(#[from] warren_transport::endpoint::StreamError),
    /// A view over the message size limit (the agent is told nothing; it retries later).
    #[error("cannot encode the agent's view: {0}")]
    Encode(#[from] warren_api::wire::EncodeError),
    /// The agent was refused.
    #[error("agent refused: {0}")]
    Refused(&'static str),
    /// The agent's first message was not a hello.
    #[error("agent did not start with a hello")]
    NoHello,
    /// Nothing from the agent for this long (it heartbeats every 5 s): it died or is cut off
    /// without the connection noticing yet.
    #[error("no message from the agent for {0:?}")]
    Silent(Duration),
}

/// Serves one agent connection until it closes. Returns why it ended.
pub async fn serve_agent(conn: PeerConnection, control: Arc<Control>) -> PushError {
    match serve(conn.clone(), control).await {
        Ok(never) => match never {},
        Err(error) => {
            debug!(peer = %conn.remote_address(), error = %error, "agent stream ended");
            error
        }
    }
}

enum Never {}

fn refusal(reason: RefusalReason, message: impl Into<String>) -> ControlToAgent {
    ControlToAgent::Refused(Refusal {
        reason,
        message: message.into(),
    })
}

async fn serve(conn: PeerConnection, control: Arc<Control>) -> Result<Never, PushError> {
    let (mut send, mut recv) = conn.accept_stream().await?;
    // The connection allows 16 MiB frames (control's views go the other way); nothing an
    // agent sends needs more than this, and each frame is buffered whole before it is read.
    recv.limit_frames_to(MAX_AGENT_MESSAGE_BYTES);
    let hello = receive_hello(&conn, &control, &mut send, &mut recv).await?;
    let mut away = control.away();
    if go_elsewhere(&control, &mut away, hello.node_id) {
        return send_elsewhere(&conn, &control, &hello, &mut send).await;
    }
    info!(node_id = %hello.node_id, revision = %hello.last_revision, "agent connected");
    let _session = Session::open(&control, &hello, &conn);
    let mut applied = control.watch_applied();
    catch_up(&conn, &control, &hello, &mut send, &mut applied).await?;
    let mut sent: Option<Sent> = None;
    let mut last_heard = tokio::time::Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut contact = QuicContact::new(&conn);
    let speaks = if hello.wire_version >= 7 {
        Speaks::Entries
    } else {
        Speaks::WholeLists
    };
    // The revision the agent's view was last built at (see `view_if_moved`).
    let mut built_at: Option<Revision> = None;
    loop {
        if go_elsewhere(&control, &mut away, hello.node_id) {
            return send_elsewhere(&conn, &control, &hello, &mut send).await;
        }
        let view = view_if_moved(&conn, &control, &hello, &mut send, &mut built_at).await?;
        if let Some((own, parts)) = view {
            send_view(&control, &hello, &mut send, &mut sent, own, parts, speaks).await?;
        }
        // Contact checks only note the time; everything else may change the view.
        loop {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return Err(PushError::Refused("shutting down")) } else { break },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        info!(node_id = %hello.node_id, "agent silent; closing its stream");
                        return Err(PushError::Silent(SILENCE_LIMIT));
                    }
                    let revision = sent.as_ref().map(|v| v.own.revision).unwrap_or(Revision::ZERO);
                    send.send(&ControlToAgent::Heartbeat { revision }).await?;
                    break;
                }
                changed = away.changed() => if changed.is_err() { return Err(PushError::Refused("shutting down")) } else { break },
                _ = contact.tick() => {
                    if contact.heard(&conn) {
                        control.agents().contact(hello.node_id, unix_now_ms());
                    }
                }
                message = recv.recv::<AgentToControl>() => {
                    last_heard = tokio::time::Instant::now();
                    let message = message.inspect_err(|e| note_frame_error(&control, &hello, e))?;
                    handle_message(&control, &hello, message)?;
                    break;
                }
            }
        }
    }
}

/// The agent's view and the shared parts it is completed with, if the applied revision moved
/// since `built_at` (then updated): a view is a function of the state at its revision, so a
/// wake-up by the agent's own messages (acks, status reports: several per change) or a
/// heartbeat builds nothing. `None` as well while this node lacks the cluster key. Ends the
/// session, after telling the agent, when its node was removed.
async fn view_if_moved(
    conn: &PeerConnection,
    control: &Control,
    hello: &AgentHello,
    send: &mut warren_transport::FramedSend,
    built_at: &mut Option<Revision>,
) -> Result<Option<(NodeView, Arc<FleetParts>)>, PushError> {
    if *built_at == Some(control.applied()) {
        return Ok(None);
    }
    let state = control.read_stale().await;
    if state
        .nodes
        .get(&hello.node_id)
        .is_some_and(|n| n.state == NodeState::Removed)
    {
        let removed = refusal(
            RefusalReason::NodeRemoved,
            "this node was removed from the cluster",
        );
        send_last(conn, send, &removed).await?;
        control.agents().forget(hello.node_id);
        control.declaration_limit().forget(hello.node_id);
        return Err(PushError::Refused("node_removed"));
    }
    let view = current_view(control, &state, hello.node_id)?;
    if view.is_some() {
        *built_at = Some(state.revision);
    }
    Ok(view)
}

/// The agent's hello, checked against its certificate and the state; a refused agent is told
/// why before the stream ends.
async fn receive_hello(
    conn: &PeerConnection,
    control: &Control,
    send: &mut warren_transport::FramedSend,
    recv: &mut warren_transport::FramedRecv,
) -> Result<AgentHello, PushError> {
    let AgentToControl::Hello(hello) = recv.recv::<AgentToControl>().await? else {
        return Err(PushError::NoHello);
    };
    let cert_node = conn.peer().and_then(|p| p.node_id);
    if let Some(refused) = check_hello(&hello, cert_node, &*control.read_stale().await) {
        let reason = match &refused {
            ControlToAgent::Refused(r) => r.reason.as_str(),
            _ => "refused",
        };
        send_last(conn, send, &refused).await?;
        return Err(PushError::Refused(reason));
    }
    Ok(hello)
}

/// Sends the agent what moves it to `own` and `parts` (the first message of the session, or a
/// delta from what it was `sent`), if anything does.
async fn send_view(
    control: &Control,
    hello: &AgentHello,
    send: &mut warren_transport::FramedSend,
    sent: &mut Option<Sent>,
    own: NodeView,
    parts: Arc<FleetParts>,
    speaks: Speaks,
) -> Result<(), PushError> {
    let frame = match sent.as_ref() {
        None => Some(first_message(hello, &own, &parts)?),
        Some(sent) => next_delta(control.fleet_cache(), sent, &own, &parts, speaks)?,
    };
    match frame {
        Some(payload) => {
            send.send_payload(&payload).await?;
            *sent = Some(Sent { own, parts });
        }
        // Nothing moved for this agent: what it holds of the shared parts is what these hold.
        None => {
            if let Some(sent) = sent {
                sent.parts = parts;
            }
        }
    }
    Ok(())
}

/// What a session last sent its agent: the node's own part of the view (see [`own_part`])
/// and the shared parts it was completed with.
struct Sent {
    own: NodeView,
    parts: Arc<FleetParts>,
}

/// The node's view at the state's revision, as its own part and the shared parts; `None`
/// when [`node_view`] would give none.
fn current_view(
    control: &Control,
    state: &ClusterState,
    node: NodeId,
) -> Result<Option<(NodeView, Arc<FleetParts>)>, PushError> {
    // A control node still joining has no cluster key: it sends no view until it has.
    let Some(keys) = control.cluster_keys() else {
        return Ok(None);
    };
    let parts = control.fleet_cache().parts(state)?;
    let replicas = parts.replicas_of(node).to_vec();
    Ok(own_part(state, node, &state.control_addrs, &keys, replicas).map(|own| (own, parts)))
}

/// The delta that takes the agent from what it was `sent` to `own` and `parts`, encoded;
/// `None` when its view has not moved in content (a new revision alone does not warrant a
/// delta: a view is a function of the state at its revision, and an agent refuses a delta
/// that changes its view without moving it forward).
fn next_delta(
    cache: &FleetCache,
    sent: &Sent,
    own: &NodeView,
    parts: &Arc<FleetParts>,
    speaks: Speaks,
) -> Result<Option<Vec<u8>>, PushError> {
    if own.revision <= sent.own.revision {
        return Ok(None);
    }
    let sites = (sent.own.node.site.as_str(), own.node.site.as_str());
    let shared = fleet_changes(cache, &sent.parts, parts, own.node.id, sites, speaks)?;
    let changes = sent.own.diff(own).changes;
    if changes.is_empty() && shared.is_empty() {
        return Ok(None);
    }
    Ok(Some(delta_payload(
        sent.own.revision,
        own.revision,
        &changes,
        &shared,
    )?))
}

/// `ControlToAgent::Delta` of the node's own `changes` and the `shared` ones encoded already.
fn delta_payload(
    from: Revision,
    to: Revision,
    changes: &[warren_api::wire::ViewChange],
    shared: &[Vec<u8>],
) -> Result<Vec<u8>, warren_api::wire::EncodeError> {
    let own: Vec<Vec<u8>> = changes
        .iter()
        .map(warren_api::wire::encode)
        .collect::<Result<_, _>>()?;
    let count = own.len() + shared.len();
    let parts = own.iter().chain(shared).map(Vec::as_slice);
    warren_api::wire::encode_delta_from_parts(from, to, count, parts)
}

/// Sends the last message of a stream (a refusal), finishes the stream and gives the agent
/// a moment to read it before the connection goes.
async fn send_last(
    conn: &PeerConnection,
    send: &mut warren_transport::FramedSend,
    message: &ControlToAgent,
) -> Result<(), PushError> {
    send.send(message).await?;
    send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    Ok(())
}

/// Records what an agent sent on its stream.
fn handle_message(
    control: &Arc<Control>,
    hello: &AgentHello,
    message: AgentToControl,
) -> Result<(), PushError> {
    match message {
        AgentToControl::Ack { revision } => {
            debug!(node_id = %hello.node_id, revision = %revision, "agent acked");
            control
                .agents()
                .acked(hello.node_id, revision, unix_now_ms());
        }
        AgentToControl::Status(report) => {
            if report.node_id != hello.node_id {
                return Err(PushError::Refused("status for another node"));
            }
            debug!(node_id = %report.node_id, replicas = report.replicas.len(), events = report.events.len(), "agent status");
            let limited = control.agents().report(report, unix_now_ms());
            for (what, n) in limited.counts() {
                control
                    .metrics()
                    .agent_input_limited_total
                    .with_label_values(&[what])
                    .inc_by(n);
            }
        }
        AgentToControl::Listeners(listeners) => {
            debug!(node_id = %hello.node_id, listeners = listeners.len(), "agent listeners");
            record_metrics_address(control, hello.node_id, &listeners);
            control
                .agents()
                .listeners(hello.node_id, listeners, unix_now_ms());
        }
        AgentToControl::Mesh(declaration) => record_mesh(control, hello.node_id, declaration),
        AgentToControl::MeshPeers(peers) => {
            debug!(node_id = %hello.node_id, peers = peers.len(), "agent WireGuard peers");
            control
                .agents()
                .mesh_peers(hello.node_id, peers, unix_now_ms());
        }
        AgentToControl::Hello(_) => return Err(PushError::NoHello),
    }
    Ok(())
}

/// Records an agent's WireGuard declaration in the registry, unless it holds it already. The
/// write runs on its own task: the stream keeps flowing meanwhile, and an agent that declares
/// again (it does at every session start) finds it done. An endpoint that is not a `host:port`
/// socket address is dropped (counted), the keys are still recorded.
fn record_mesh(control: &Arc<Control>, node: NodeId, declaration: MeshDeclaration) {
    let endpoint = declaration.endpoint.filter(|e| {
        let valid = e.len() <= MAX_LISTENER_TEXT && e.parse::<std::net::SocketAddr>().is_ok();
        if !valid {
            control
                .metrics()
                .agent_input_limited_total
                .with_label_values(&["mesh_endpoint"])
                .inc();
        }
        valid
    });
    let declaration = MeshDeclaration {
        endpoint,
        ..declaration
    };
    let control = Arc::clone(control);
    tokio::spawn(async move { record_declaration(&control, node, &declaration).await });
}

/// Records where an agent's metrics listener is, from its listener report, unless the registry
/// holds it already: an agent started again with `--metrics` elsewhere (or `none`) stays
/// discoverable (`/sd/nodes`). A listener on an unspecified IP keeps the IP the registry has
/// for the node (the one its join advertised); one that is down (being retried) changes
/// nothing.
fn record_metrics_address(control: &Arc<Control>, node: NodeId, listeners: &[ListenerStatus]) {
    let reported = listeners.iter().find(|l| l.listener == Listener::Metrics);
    let bound = match reported {
        None => None,
        Some(l) if !l.up => return,
        Some(l) => match l.addr.parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => return,
        },
    };
    let control = Arc::clone(control);
    tokio::spawn(async move {
        let addresses = {
            let state = control.read_stale().await;
            let Some(entry) = state.nodes.get(&node) else {
                return;
            };
            let Some(metrics) = metrics_address(bound, &entry.addresses) else {
                return;
            };
            if entry.addresses.metrics == metrics || entry.state == NodeState::Removed {
                return;
            }
            NodeAddresses {
                metrics,
                ..entry.addresses.clone()
            }
        };
        if !control
            .declaration_limit()
            .take(node, std::time::Instant::now())
        {
            return;
        }
        if let Err(error) = control.propose(Op::SetAddresses { node, addresses }).await {
            debug!(node_id = %node, error = %error, "agent's metrics address not recorded");
        }
    });
}

/// The metrics address to record for a listener bound at `bound` (`None`: off), given the
/// node's registered addresses; `None` when an unspecified IP leaves nothing to go by.
fn metrics_address(
    bound: Option<std::net::SocketAddr>,
    registered: &NodeAddresses,
) -> Option<Option<String>> {
    let Some(bound) = bound else {
        return Some(None);
    };
    if !bound.ip().is_unspecified() {
        return Some(Some(bound.to_string()));
    }
    let known = [&registered.metrics, &registered.gossip]
        .into_iter()
        .flatten()
        .find_map(|a| a.parse::<std::net::SocketAddr>().ok())?;
    Some(Some(
        std::net::SocketAddr::new(known.ip(), bound.port()).to_string(),
    ))
}

/// Records what `node` declares of its WireGuard identity (an agent on its stream, a control
/// node for itself), unless the registry holds it already. A write that fails is logged: the
/// node declares again when it changes, and at its next session or start.
pub(crate) async fn record_declaration(
    control: &Control,
    node: NodeId,
    declaration: &MeshDeclaration,
) {
    let held = control.read_stale().await.mesh.get(&node).is_some_and(|e| {
        e.public_key == Some(declaration.public_key)
            && e.next_public_key == declaration.next_public_key
            && e.endpoint == declaration.endpoint
    });
    if held {
        return;
    }
    if !control
        .declaration_limit()
        .take(node, std::time::Instant::now())
    {
        control
            .metrics()
            .agent_input_limited_total
            .with_label_values(&["mesh_declaration_rate"])
            .inc();
        warn!(node_id = %node, "the node changes its WireGuard declaration too often; this one is dropped (it is sent again at the node's next session)");
        return;
    }
    let op = Op::SetMesh {
        node,
        public_key: declaration.public_key,
        next_public_key: declaration.next_public_key,
        endpoint: declaration.endpoint.clone(),
    };
    match control.propose(op).await {
        Ok(outcome) => match outcome.result {
            Ok(_) => info!(node_id = %node, "recorded the node's WireGuard key and endpoint"),
            Err(rejection) => {
                warn!(node_id = %node, reason = %rejection.message, "cannot record the node's WireGuard key")
            }
        },
        Err(error) => {
            warn!(node_id = %node, error = %error, "cannot record the node's WireGuard key; it is declared again at the node's next session")
        }
    }
}

/// Counts and reports a frame from an agent that was refused for its size: the stream ends,
/// and the agent reconnects.
fn note_frame_error(control: &Control, hello: &AgentHello, error: &FrameError) {
    if let FrameError::TooLarge { len, max } = error {
        control
            .metrics()
            .agent_input_limited_total
            .with_label_values(&["oversized_frame"])
            .inc();
        info!(node_id = %hello.node_id, len, max, "agent sent an oversized frame; closing its stream");
    }
}

/// Whether anything at all (the agent's QUIC keep-alive included, every
/// [`AGENT_KEEP_ALIVE`](warren_api::wire::AGENT_KEEP_ALIVE)) arrived on an agent's connection
/// since the last check. Its contact time then reflects the connection, not only the stream's
/// messages (every 5 s), which is what lets the leader tell a dead agent from a quiet one within
/// seconds ([`crate::liveness`]).
struct QuicContact {
    datagrams_seen: u64,
    every: tokio::time::Interval,
}

impl QuicContact {
    fn new(conn: &PeerConnection) -> Self {
        let mut every = tokio::time::interval(warren_api::wire::AGENT_KEEP_ALIVE);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        QuicContact {
            datagrams_seen: conn.datagrams_received(),
            every,
        }
    }

    async fn tick(&mut self) {
        self.every.tick().await;
    }

    fn heard(&mut self, conn: &PeerConnection) -> bool {
        let received = conn.datagrams_received();
        let heard = received != self.datagrams_seen;
        self.datagrams_seen = received;
        heard
    }
}

/// Whether this session's agent is to go to another control node now: this node is out of
/// touch with a majority and did not send the agent away lately ([`crate::quorum`]). Checked
/// at the start, whenever that changes, and with each heartbeat, so an agent kept after coming
/// back is sent again once the window has passed.
fn go_elsewhere(
    control: &Control,
    away: &mut tokio::sync::watch::Receiver<bool>,
    node: NodeId,
) -> bool {
    *away.borrow_and_update()
        && control
            .sent_away()
            .send_away(node, tokio::time::Instant::now())
}

/// Tells the agent to try another control node (the `Overloaded` refusal, after a jittered
/// pause so that a fleet does not arrive there all at once) and ends the session.
async fn send_elsewhere(
    conn: &PeerConnection,
    control: &Control,
    hello: &AgentHello,
    send: &mut warren_transport::FramedSend,
) -> Result<Never, PushError> {
    info!(node_id = %hello.node_id, "out of touch with a majority of control nodes; sending the agent elsewhere");
    control
        .metrics()
        .agents_sent_elsewhere_total
        .with_label_values(&["no_quorum"])
        .inc();
    let away = refusal(
        RefusalReason::Overloaded {
            retry_after_ms: fastrand::u64(250..2_000),
        },
        "this control node is out of touch with a majority of control nodes: try another",
    );
    send_last(conn, send, &away).await?;
    Err(PushError::Refused("no quorum here"))
}

/// How long a control node that is behind the agent's cached view waits to catch up before
/// sending the agent elsewhere.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// An agent may have seen a later revision (from the leader) than this control node has
/// applied (a lagging follower): sending it this node's view would move it back in time. Wait
/// until this node has caught up, heartbeating meanwhile; refuse with `Overloaded` (the agent
/// tries another control node) if it does not within [`CATCH_UP_LIMIT`].
async fn catch_up(
    conn: &PeerConnection,
    control: &Control,
    hello: &AgentHello,
    send: &mut warren_transport::FramedSend,
    applied: &mut tokio::sync::watch::Receiver<Revision>,
) -> Result<(), PushError> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_LIMIT;
    while control.applied() < hello.last_revision {
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return Err(PushError::Refused("shutting down")) },
            () = tokio::time::sleep(HEARTBEAT_INTERVAL) => {
                send.send(&ControlToAgent::Heartbeat { revision: hello.last_revision }).await?;
            }
            () = tokio::time::sleep_until(deadline) => {
                info!(node_id = %hello.node_id, revision = %hello.last_revision, applied = %control.applied(), "agent is ahead of this control node; sending it elsewhere");
                let behind = refusal(
                    RefusalReason::Overloaded { retry_after_ms: 1_000 },
                    format!(
                        "this control node has applied revision {}, behind the agent's {}",
                        control.applied(),
                        hello.last_revision
                    ),
                );
                control
                    .metrics()
                    .agents_sent_elsewhere_total
                    .with_label_values(&["behind"])
                    .inc();
                send_last(conn, send, &behind).await?;
                return Err(PushError::Refused("behind the agent"));
            }
        }
    }
    Ok(())
}

/// Marks the agent connected in the control node's status book, and its connection the one
/// its log requests take, for as long as it lives.
struct Session<'a> {
    control: &'a Control,
    node: NodeId,
    connection: u64,
}

impl<'a> Session<'a> {
    fn open(control: &'a Control, hello: &AgentHello, conn: &PeerConnection) -> Self {
        control
            .agents()
            .connected(hello.node_id, &hello.agent_version, unix_now_ms());
        let connection = control
            .agent_connections()
            .attach(hello.node_id, conn.clone());
        Session {
            control,
            node: hello.node_id,
            connection,
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.control
            .agent_connections()
            .detach(self.node, self.connection);
        self.control.agents().disconnected(self.node);
    }
}

/// What a new session starts with, encoded: a heartbeat when the agent already holds this
/// view, a delta from the agent's digest when it holds an older view of this cluster, a
/// snapshot otherwise (no cache, another cluster's cache, or a digest that does not lead
/// forward).
fn first_message(
    hello: &AgentHello,
    own: &NodeView,
    parts: &FleetParts,
) -> Result<Vec<u8>, PushError> {
    let same_cluster = hello.cache_cluster_id == Some(own.cluster_id);
    let message = match &hello.have {
        Some(have) if same_cluster && have.revision == hello.last_revision => {
            // The own part's fields for the shared parts are empty; compare those apart.
            let empty = own.digest();
            let have_own = ViewDigest {
                catalogue: empty.catalogue,
                peers: empty.peers,
                scrape: empty.scrape,
                ..have.clone()
            };
            let changes = own.delta_since(&have_own).changes;
            let shared = parts.changes_since_digest(own.node.id, &own.node.site, have)?;
            if have.revision == own.revision && changes.is_empty() && shared.is_empty() {
                ControlToAgent::Heartbeat {
                    revision: own.revision,
                }
            } else if have.revision < own.revision {
                return Ok(delta_payload(
                    have.revision,
                    own.revision,
                    &changes,
                    &shared,
                )?);
            } else {
                ControlToAgent::Snapshot(Box::new(parts.complete(own.clone())))
            }
        }
        _ => ControlToAgent::Snapshot(Box::new(parts.complete(own.clone()))),
    };
    Ok(warren_api::wire::encode(&message)?)
}

fn check_hello(
    hello: &AgentHello,
    cert_node: Option<NodeId>,
    state: &ClusterState,
) -> Option<ControlToAgent> {
    if !(MIN_WIRE_VERSION..=WIRE_VERSION).contains(&hello.wire_version) {
        return Some(refusal(
            RefusalReason::WireVersion {
                supported: WIRE_VERSION,
            },
            format!(
                "agent speaks wire version {}, this control node {MIN_WIRE_VERSION} to {WIRE_VERSION}",
                hello.wire_version
            ),
        ));
    }
    if cert_node != Some(hello.node_id) {
        return Some(refusal(
            RefusalReason::NodeIdMismatch,
            "hello names another node than the certificate",
        ));
    }
    match state.nodes.get(&hello.node_id) {
        None => Some(refusal(
            RefusalReason::NotRegistered,
            "this node is not in the cluster's registry",
        )),
        Some(node) if node.state == NodeState::Removed => Some(refusal(
            RefusalReason::NodeRemoved,
            "this node was removed from the cluster",
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod fleet_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_metrics_address_follows_its_listener() {
        let registered = NodeAddresses {
            metrics: Some("10.0.0.7:9091".into()),
            gossip: Some("10.0.0.7:7946".into()),
            ..NodeAddresses::default()
        };
        let bound = |text: &str| Some(text.parse::<std::net::SocketAddr>().unwrap());
        let moved = metrics_address(bound("10.0.0.7:9191"), &registered);
        assert_eq!(moved, Some(Some("10.0.0.7:9191".to_owned())));
        let any_ip = metrics_address(bound("0.0.0.0:9292"), &registered);
        assert_eq!(
            any_ip,
            Some(Some("10.0.0.7:9292".to_owned())),
            "keeps the IP it had"
        );
        assert_eq!(metrics_address(None, &registered), Some(None), "turned off");
        let gossip_only = NodeAddresses {
            metrics: None,
            ..registered.clone()
        };
        let from_gossip = metrics_address(bound("[::]:9091"), &gossip_only);
        assert_eq!(from_gossip, Some(Some("10.0.0.7:9091".to_owned())));
        assert_eq!(
            metrics_address(bound("0.0.0.0:9091"), &NodeAddresses::default()),
            None,
            "nothing to go by"
        );
    }
}
