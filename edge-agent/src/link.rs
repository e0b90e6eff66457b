//! The agent's link to the control plane: one QUIC connection (agent ALPN) to any reachable
//! control node, the desired-state stream on it, and reconnection with jittered backoff.
//!
//! Every view received is persisted (and flushed) before it is acked and before the reconcile
//! loop sees it. The link never decides anything about workloads: losing it changes nothing
//! but [`LinkStatus`] (which says why it is down); only a permanent refusal (the node was
//! removed) ends it. Addresses are looked up again before every round of dials, so a name that
//! did not resolve (DNS down on the box) or that moved is picked up once it does. When to give
//! up on a silent control node is [`crate::link_failure`]'s decision.
//!
//! This file keeps a connection: dialing, backoff, and why the link is down. One session on a
//! connection (views in, acks and reports out) is `link/session.rs`.

mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warren_api::wire::MeshDeclaration;
use warren_api::{NodeId, NodeView};
use warren_mesh::Member;
use warren_transport::{Alpn, Backoff, ConnectAnyError, Endpoint, PeerConnection};

use self::session::SessionError;
use crate::cache::Cache;
use crate::report::Reporter;
use warren_api::clock::unix_now_ms;

/// How long a status change waits for others to join it in one report.
pub const REPORT_COALESCE: Duration = Duration::from_millis(200);

/// First wait after a failed attempt to reach control; it doubles (with jitter) up to
/// [`RETRY_MAX`] while attempts keep failing, and starts over once a session is up.
pub const RETRY_MIN: Duration = Duration::from_millis(200);

/// Longest wait between two attempts to reach control, and the wait after a refusal that
/// retrying soon cannot fix (an untrusted server, a control node that refuses this agent).
pub const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// Why the link is down, while it is down and the link has tried: one sentence
    /// (`cannot resolve any control address: …`, `no control node answered: …`).
    #[serde(default)]
    pub down_reason: Option<String>,
    /// Attempts to reach control that failed since the agent started: lookups that found no
    /// address, rounds of dials nobody answered, refusals, and sessions lost.
    #[serde(default)]
    pub failures: u64,
    /// When the next attempt is due (unix ms), while the link waits for it.
    #[serde(default)]
    pub retry_at_ms: Option<u64>,
    /// The control addresses the link tries, in order: the cached view's, then those from
    /// `agent.json` that the view lacks.
    #[serde(default)]
    pub control_addrs: Vec<String>,
}

/// Why the link ended for good.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The agent is shutting down.
    Cancelled,
    /// The node was removed from the cluster: stop workloads, wipe secrets.
    Removed(String),
}

/// What kind of attempt to reach control failed: the `reason` label of
/// `warren_agent_link_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// No control address resolved (DNS down on the box, a name that does not exist).
    Resolve,
    /// Addresses resolved but no control node answered.
    Unreachable,
    /// A control node refused the connection or the agent.
    Refused,
    /// A session that was up ended.
    Lost,
}

impl FailureKind {
    /// Every kind, for zero-filled metrics.
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Resolve,
        FailureKind::Unreachable,
        FailureKind::Refused,
        FailureKind::Lost,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Resolve => "resolve",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Refused => "refused",
            FailureKind::Lost => "lost",
        }
    }
}

/// One failed attempt: its kind and the sentence `agent status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Failure {
    kind: FailureKind,
    reason: String,
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
    /// Failed attempts by [`FailureKind`] (`warren_agent_link_failures_total`).
    pub failures_total: IntCounterVec,
    /// This agent's gossip view (empty without a mesh): a witness for the failure detector.
    pub gossip: watch::Receiver<Vec<Member>>,
    /// What this agent declares of its WireGuard identity (`None` while the overlay is off):
    /// sent at the start of every session and whenever it changes.
    pub mesh: watch::Receiver<Option<MeshDeclaration>>,
    /// What the overlay is doing: its peers go up to control (`node inspect`).
    pub overlay: watch::Receiver<crate::overlay::OverlayStatus>,
    /// The workloads' log lines and their times: control asks for them on streams of its own.
    pub logs: Arc<crate::logs::LogTimes>,
}

/// The cached view's control addresses, then the seeds it lacks.
fn targets_of(views: &watch::Sender<Option<Arc<NodeView>>>, seeds: &[String]) -> Vec<String> {
    let cached = views.borrow().as_ref().map(|v| v.control_addrs.clone());
    let mut addrs = cached.unwrap_or_default();
    for seed in seeds {
        if !addrs.contains(seed) {
            addrs.push(seed.clone());
        }
    }
    addrs
}

/// The order this node dials control nodes in: a permutation of `addrs` that depends on the
/// node id (rendezvous hashing), so a fleet spreads evenly over the control nodes instead of
/// piling onto the first address of the list, and the agents of a control node that dies
/// spread over the others. A control node cut off from the majority sends its agents on to
/// the next in their order.
pub fn dial_order(node: NodeId, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut ordered = addrs.to_vec();
    ordered.sort_by_cached_key(|addr| {
        warren_api::service::mix64(warren_api::service::stable_hash(&(node.0, addr)))
    });
    ordered
}

/// Looks every address up (names may resolve to several addresses); returns what resolved,
/// without duplicates and in order, and `(address, why)` for each that did not.
async fn resolve(addrs: &[String]) -> (Vec<SocketAddr>, Vec<(String, String)>) {
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for addr in addrs {
        match tokio::net::lookup_host(addr.as_str()).await {
            Ok(resolved) => {
                for socket in resolved {
                    if !found.contains(&socket) {
                        found.push(socket);
                    }
                }
            }
            Err(error) => failed.push((addr.clone(), error.to_string())),
        }
    }
    (found, failed)
}

/// `a (why); b (why)`: the addresses that did not resolve, for a reason sentence.
fn unresolved_list(unresolved: &[(String, String)]) -> String {
    unresolved
        .iter()
        .map(|(addr, why)| format!("{addr} ({why})"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Failure {
    /// Nothing to dial: no address resolved, or only to IPv6 addresses (`skipped_v6`) that
    /// this agent's IPv4 endpoint cannot dial.
    fn resolve(unresolved: &[(String, String)], skipped_v6: &[SocketAddr]) -> Self {
        let mut reason = if unresolved.is_empty() && skipped_v6.is_empty() {
            "no control address known: agent.json and the cached view list none".to_owned()
        } else if unresolved.is_empty() {
            "no control address to dial".to_owned()
        } else {
            format!(
                "cannot resolve any control address: {}",
                unresolved_list(unresolved)
            )
        };
        if !skipped_v6.is_empty() {
            let list: Vec<String> = skipped_v6.iter().map(ToString::to_string).collect();
            reason.push_str(&format!(
                "; {} (IPv6) cannot be dialled from this agent's IPv4 endpoint",
                list.join(", ")
            ));
        }
        Failure {
            kind: FailureKind::Resolve,
            reason,
        }
    }

    /// A round of dials failed (some addresses may not have resolved either).
    fn dial(error: &ConnectAnyError, unresolved: &[(String, String)]) -> Self {
        let (kind, mut reason) = match error {
            ConnectAnyError::Fatal(error) => (
                FailureKind::Refused,
                format!("control refused the connection: {error}"),
            ),
            other => (
                FailureKind::Unreachable,
                format!("no control node answered: {other}"),
            ),
        };
        if !unresolved.is_empty() {
            reason.push_str(&format!("; cannot resolve {}", unresolved_list(unresolved)));
        }
        Failure { kind, reason }
    }

    /// A session that was up ended with `error`.
    fn session(control: &str, error: &SessionError) -> Self {
        match error {
            SessionError::Refused(message) => Failure {
                kind: FailureKind::Refused,
                reason: format!("control at {control} refused this agent: {message}"),
            },
            SessionError::Elsewhere { message, .. } => Failure {
                kind: FailureKind::Refused,
                reason: format!(
                    "control at {control} sent this agent to another control node: {message}"
                ),
            },
            other => Failure {
                kind: FailureKind::Lost,
                reason: format!("lost control at {control}: {other}"),
            },
        }
    }
}

impl Link {
    /// Runs until cancelled or the node is removed. Losing the control plane, for whatever
    /// reason (names that do not resolve, nobody answering, a refusal, a session lost), only
    /// changes [`LinkStatus`]: the link says why, waits a jittered, growing delay, looks the
    /// addresses up again and retries — for as long as the agent runs.
    pub async fn run(self, cancel: CancellationToken) -> LinkEnd {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut force_snapshot = false;
        // A control node we lost, or that sent us elsewhere, is tried last next time: it is
        // likely dead or cut off, and a dead leader should cost the silence limit, not a
        // connect timeout on top.
        let mut avoid: Option<SocketAddr> = None;
        loop {
            let conn = match self.connect(&mut backoff, avoid.take(), &cancel).await {
                Ok(conn) => conn,
                Err(end) => return end,
            };
            let control = conn.remote_address().to_string();
            let error = match self.attend(&conn, &control, force_snapshot, &cancel).await {
                Ok(None) => return LinkEnd::Cancelled,
                Ok(Some(end)) => return end,
                Err(error) => error,
            };
            force_snapshot = matches!(
                error,
                SessionError::Resync(_) | SessionError::DeltaRefused(_)
            );
            avoid = Some(conn.remote_address());
            let delay = match &error {
                SessionError::Elsewhere { retry_after, .. } => *retry_after,
                SessionError::Refused(_) => RETRY_MAX,
                _ => backoff.next_delay(),
            };
            self.note_down(&Failure::session(&control, &error), delay);
            if self.pause(delay, &cancel).await.is_err() {
                return LinkEnd::Cancelled;
            }
        }
    }

    /// The addresses to try: the cached view's control addresses, then the seeds it lacks.
    fn targets(&self) -> Vec<String> {
        targets_of(&self.views, &self.seeds)
    }

    /// Keeps the agent's certificate renewed ([`warren_transport::renew::keep_renewed`]), with
    /// the control nodes this link would dial; the certificate and key go to `data_dir`.
    pub fn keep_renewed(
        &self,
        data_dir: std::path::PathBuf,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let views = self.views.clone();
        let seeds = self.seeds.clone();
        let addrs = move || {
            let targets = targets_of(&views, &seeds);
            async move { resolve(&targets).await.0 }
        };
        warren_transport::renew::keep_renewed(
            self.endpoint.clone(),
            data_dir,
            addrs,
            RETRY_MAX,
            cancel,
        )
    }

    /// Connects to some control node: looks the addresses up afresh and dials them, round
    /// after round with backoff, until one admits us. Ends only when the agent stops or the
    /// handshake says the node was removed.
    async fn connect(
        &self,
        backoff: &mut Backoff,
        mut avoid: Option<SocketAddr>,
        cancel: &CancellationToken,
    ) -> Result<PeerConnection, LinkEnd> {
        loop {
            let targets = self.targets();
            self.status
                .send_if_modified(|s| replace_if_changed(&mut s.control_addrs, &targets));
            let (mut addrs, unresolved) = tokio::select! {
                () = cancel.cancelled() => return Err(LinkEnd::Cancelled),
                found = resolve(&targets) => found,
            };
            // An IPv4 endpoint cannot dial IPv6 addresses (a name may resolve to both).
            let mut skipped_v6 = Vec::new();
            if self.endpoint.local_addr().is_ipv4() {
                skipped_v6 = addrs.iter().filter(|a| a.is_ipv6()).copied().collect();
                addrs.retain(SocketAddr::is_ipv4);
            }
            addrs = dial_order(self.node_id, &addrs);
            if let Some(avoid) = avoid.take() {
                addrs.sort_by_key(|a| *a == avoid);
            }
            let failure = if addrs.is_empty() {
                Failure::resolve(&unresolved, &skipped_v6)
            } else {
                match self.endpoint.connect_any(&addrs, Alpn::Agent, cancel).await {
                    Ok(conn) => {
                        backoff.reset();
                        return Ok(conn);
                    }
                    Err(ConnectAnyError::Cancelled) => return Err(LinkEnd::Cancelled),
                    // Removed while cut off: the stream's refusal never came, the handshake's
                    // does. Same end as a refusal on the stream.
                    Err(ConnectAnyError::Fatal(error)) if error.is_revoked() => {
                        return Err(LinkEnd::Removed(format!(
                            "control refused this node: {error}"
                        )));
                    }
                    Err(error) => Failure::dial(&error, &unresolved),
                }
            };
            // Trust failures cannot be retried away quickly, but workloads must keep running:
            // wait the longest backoff and try again.
            let delay = match failure.kind {
                FailureKind::Refused => RETRY_MAX,
                _ => backoff.next_delay(),
            };
            self.note_down(&failure, delay);
            self.pause(delay, cancel).await?;
        }
    }

    /// Records a failed attempt: the status says why and when the next one comes, the counter
    /// goes up, and the log says so when the reason changed (a repeat is only a debug line).
    fn note_down(&self, failure: &Failure, delay: Duration) {
        self.failures_total
            .with_label_values(&[failure.kind.as_str()])
            .inc();
        let retry_at_ms = unix_now_ms().saturating_add(delay.as_millis() as u64);
        let mut repeated = false;
        self.status.send_modify(|s| {
            repeated = s.down_reason.as_deref() == Some(failure.reason.as_str());
            s.connected = false;
            s.down_reason = Some(failure.reason.clone());
            s.failures += 1;
            s.retry_at_ms = Some(retry_at_ms);
        });
        let retry_in_ms = delay.as_millis() as u64;
        if repeated {
            debug!(reason = %failure.reason, retry_in_ms, "still cannot reach control");
        } else {
            warn!(reason = %failure.reason, retry_in_ms, "cannot reach control; workloads keep running");
        }
    }

    /// Waits `delay` before the next attempt.
    async fn pause(&self, delay: Duration, cancel: &CancellationToken) -> Result<(), LinkEnd> {
        tokio::select! {
            () = cancel.cancelled() => Err(LinkEnd::Cancelled),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// Sets `slot` to `value` if it differs; returns whether it did.
fn replace_if_changed<T: PartialEq + Clone>(slot: &mut T, value: &T) -> bool {
    if slot == value {
        return false;
    }
    slot.clone_from(value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_addrs() -> Vec<SocketAddr> {
        (1..=3)
            .map(|i| SocketAddr::from(([127, 0, 91, i], 7101)))
            .collect()
    }

    /// Each control node comes first for about a third of a fleet, and losing one moves only
    /// its agents: everyone else keeps their first choice.
    #[test]
    fn dial_order_spreads_a_fleet_and_moves_only_a_dead_nodes_agents() {
        let addrs = control_addrs();
        let mut first = [0usize; 3];
        for id in 0..3_000u64 {
            let node = NodeId(id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let order = dial_order(node, &addrs);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, addrs, "a permutation");
            let at = addrs.iter().position(|a| *a == order[0]).unwrap();
            first[at] += 1;
            let without_third: Vec<SocketAddr> = addrs[..2].to_vec();
            let reduced = dial_order(node, &without_third);
            let kept: Vec<SocketAddr> = order.into_iter().filter(|a| *a != addrs[2]).collect();
            assert_eq!(reduced, kept, "the others keep their relative order");
        }
        for count in first {
            assert!((800..=1_200).contains(&count), "uneven spread: {first:?}");
        }
    }
}
