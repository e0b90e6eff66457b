//! The control node's Prometheus metrics and its plain-HTTP metrics listener (`/metrics`,
//! `/health`, `/ready`). Names follow `warren_<area>_<noun>_<unit>`; label sets are bounded
//! (routes are patterns, codes are HTTP statuses, services and agents are the cluster's).
//!
//! Every series carries `node` (the name), `node_id` and `site` (the registry's constant
//! labels, [`warren_transport::node_metrics`], which also brings build info, process metrics
//! and certificate expiry). Gauges that mirror Raft, the state and the agents' links are set at
//! each scrape ([`ControlMetrics::refresh`]):
//! - `raft`: Raft beyond term and leadership, and the count of leader changes;
//! - `fleet`: replicas per service and each agent's link and readiness.

mod fleet;
mod raft;
pub(crate) use raft::RaftMetrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_api::clock::unix_now_ms;
use warren_transport::node_metrics::NodeLabels;
use warren_transport::plain_http::{self, Answer, Handler, Request};

use crate::control::Control;

/// Metrics of one control node.
#[derive(Clone, Debug)]
pub struct ControlMetrics {
    registry: Registry,
    /// API requests by route pattern and status code.
    pub api_requests_total: IntCounterVec,
    /// API latency by route pattern.
    pub api_request_duration_seconds: HistogramVec,
    /// API connections refused at TLS (wrong CA, role, revoked).
    pub api_refused_total: IntCounter,
    /// API connections closed at once because a cap was reached, by cap (`total`,
    /// `per_source`).
    pub api_connections_limited_total: IntCounterVec,
    /// Failed `accept` calls on the API listeners (TLS and Unix socket); a rising count means
    /// the process is out of file descriptors.
    pub api_accept_errors_total: IntCounter,
    /// Agent input cut or refused by control's bounds, by what (`event_text`,
    /// `replica_text`, `event_book_bytes`, `report_events`, `oversized_frame`, `mesh_endpoint`,
    /// `mesh_declaration_rate`).
    pub agent_input_limited_total: IntCounterVec,
    /// Log requests this node sent to agents over their links, by result (`ok`, `timeout`,
    /// `failed`).
    pub agent_log_requests_total: IntCounterVec,
    /// Agents this node sent to another control node, by why (`no_quorum`: this node is out of
    /// touch with a majority; `behind`: the agent holds a later revision than this node).
    pub agents_sent_elsewhere_total: IntCounterVec,
    /// Current Raft term.
    pub raft_term: IntGauge,
    /// 1 when this node leads.
    pub raft_is_leader: IntGauge,
    /// Last applied log index (the revision).
    pub raft_applied_index: IntGauge,
    /// Proposal latency (propose → applied), seconds.
    pub raft_proposal_duration_seconds: Histogram,
    /// Replicas placed.
    pub scheduler_replicas: IntGauge,
    /// Replicas no node can take.
    pub scheduler_unschedulable_replicas: IntGauge,
    /// Registered nodes.
    pub nodes: IntGauge,
    /// Membership changes on this node as leader, by change (`add`, `remove`, `undo_join`)
    /// and result (`ok`, `busy`, `failed`).
    pub membership_changes_total: IntCounterVec,
    /// The cluster key generation in force in the state.
    pub cluster_key_generation: IntGauge,
    /// 1 while this node does not hold the generation in force (it fetches it from the others).
    pub cluster_key_missing: IntGauge,
    /// Cluster key rotations this node led, by result (`ok`, `failed`).
    pub cluster_key_rotations_total: IntCounterVec,
    /// The other Raft series.
    raft: raft::RaftSeries,
    /// Per service and per agent.
    fleet: fleet::FleetSeries,
}

impl ControlMetrics {
    /// Creates and registers every metric in a fresh registry labelled with the node's name,
    /// id and site.
    pub fn new(labels: &NodeLabels) -> Self {
        let registry = labels.registry();
        let m = Registrar(&registry);
        let (cluster_key_generation, cluster_key_missing, cluster_key_rotations_total) =
            cluster_key_metrics(&m);
        Self {
            raft: raft::RaftSeries::register(&m),
            fleet: fleet::FleetSeries::register(&m),
            api_requests_total: m.counter_vec(
                "warren_api_requests_total",
                "API requests by route and status code.",
                &["route", "code"],
            ),
            api_request_duration_seconds: m.latency_by(
                "warren_api_request_duration_seconds",
                "API request latency by route.",
                "route",
            ),
            api_refused_total: m.counter(
                "warren_api_refused_connections_total",
                "API connections refused at TLS.",
            ),
            api_connections_limited_total: m.counter_vec(
                "warren_api_connections_limited_total",
                "API connections closed at once because a connection cap was reached, by cap.",
                &["cap"],
            ),
            api_accept_errors_total: m.counter(
                "warren_api_accept_errors_total",
                "Failed accept calls on the API listeners (out of file descriptors, usually).",
            ),
            agent_input_limited_total: m.counter_vec(
                "warren_control_agent_input_limited_total",
                "Agent input cut or refused by control's bounds, by what was limited.",
                &["what"],
            ),
            agent_log_requests_total: m.counter_vec(
                "warren_control_agent_log_requests_total",
                "Log requests sent to agents over their links, by result.",
                &["result"],
            ),
            agents_sent_elsewhere_total: m.counter_vec(
                "warren_control_agents_sent_elsewhere_total",
                "Agents sent to another control node, by why (no_quorum, behind).",
                &["why"],
            ),
            membership_changes_total: m.counter_vec(
                "warren_control_membership_changes_total",
                "Control-plane membership changes led by this node, by change and result.",
                &["change", "result"],
            ),
            cluster_key_generation,
            cluster_key_missing,
            cluster_key_rotations_total,
            raft_term: m.gauge("warren_raft_term", "Current Raft term."),
            raft_is_leader: m.gauge(
                "warren_raft_is_leader",
                "1 when this node is the Raft leader.",
            ),
            raft_applied_index: m.gauge(
                "warren_raft_applied_index",
                "Last applied Raft log index (the revision).",
            ),
            raft_proposal_duration_seconds: m.latency(
                "warren_raft_proposal_duration_seconds",
                "Time from proposal to applied result.",
            ),
            scheduler_replicas: m.gauge("warren_scheduler_replicas", "Replicas placed on nodes."),
            scheduler_unschedulable_replicas: m.gauge(
                "warren_scheduler_unschedulable_replicas",
                "Replicas no eligible node can take.",
            ),
            nodes: m.gauge(
                "warren_control_nodes",
                "Registered nodes (removed ones included).",
            ),
            registry,
        }
    }

    /// Counts one API request.
    pub fn observe_request(&self, route: &str, status: u16, took: Duration) {
        self.api_requests_total
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.api_request_duration_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// The registry, for other components (transport) to register into.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }

    /// The histogram the state machine's apply time goes into.
    pub fn raft_apply_duration_seconds(&self) -> &Histogram {
        &self.raft.apply_duration_seconds
    }

    /// Counts leader changes as `control`'s Raft reports them, until `cancel` fires.
    pub(crate) fn spawn_leader_change_count(
        &self,
        control: &Control,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        tasks.spawn(raft::count_leader_changes(
            control.raft().metrics(),
            self.raft.leader_changes_total.clone(),
            cancel,
        ));
    }

    /// Refreshes the gauges that mirror Raft, the state and the agents' links: cheap enough
    /// for every scrape (one pass over the state's services, nodes and replicas and over this
    /// node's book, nothing copied but the figures).
    pub async fn refresh(&self, control: &Control) {
        let raft = control.raft().metrics().borrow().clone();
        let is_leader = raft.current_leader == Some(control.id());
        self.raft_term.set(raft.current_term as i64);
        self.raft_is_leader.set(i64::from(is_leader));
        self.raft_applied_index
            .set(raft.last_applied.map(|l| l.index as i64).unwrap_or(0));
        self.raft.refresh(&raft, control.id());
        let state = control.read_stale().await;
        let fleet = control
            .agents()
            .with_reports(|reports| fleet::figures(&state, reports, is_leader, unix_now_ms()));
        self.fleet.set(&fleet);
        self.scheduler_replicas.set(state.replicas.len() as i64);
        self.scheduler_unschedulable_replicas
            .set(state.unschedulable.values().map(|&n| i64::from(n)).sum());
        self.nodes.set(state.nodes.len() as i64);
        let generation = state.key_generation();
        self.cluster_key_generation.set(i64::from(generation));
        let held = control
            .cluster_keys()
            .is_some_and(|keys| keys.get(generation).is_some());
        self.cluster_key_missing.set(i64::from(!held));
    }
}

/// The cluster key's generation in force, whether this node misses it, and the rotations it
/// led.
fn cluster_key_metrics(m: &Registrar<'_>) -> (IntGauge, IntGauge, IntCounterVec) {
    (
        m.gauge(
            "warren_control_cluster_key_generation",
            "The cluster key generation in force.",
        ),
        m.gauge(
            "warren_control_cluster_key_missing",
            "1 while this node does not hold the cluster key generation in force.",
        ),
        m.counter_vec(
            "warren_control_cluster_key_rotations_total",
            "Cluster key rotations led by this node, by result.",
            &["result"],
        ),
    )
}

/// Latency histogram buckets, seconds: 0.5 ms to 5 s.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Creates metrics and registers them in one registry.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    /// `metric`, registered.
    fn registered<M: Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("unique metric");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.registered(IntCounter::new(name, help).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.registered(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.registered(IntGauge::new(name, help).expect("valid metric"))
    }

    /// A latency histogram ([`LATENCY_BUCKETS`]).
    fn latency(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.registered(Histogram::with_opts(opts).expect("valid metric"))
    }

    /// A latency histogram ([`LATENCY_BUCKETS`]) with one label.
    fn latency_by(&self, name: &str, help: &str, label: &str) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.registered(HistogramVec::new(opts, &[label]).expect("valid metric"))
    }
}

/// Serves `/metrics`, `/health` (the process is up), `/ready` (a leader is known and this
/// node has applied the cluster's first entries), and Prometheus service discovery for the
/// whole cluster (`/sd/nodes`, `/sd/workloads`, see [`crate::catalogue::scrape_targets`]) on
/// plain HTTP until `cancel` fires.
///
/// # Errors
/// I/O errors binding `addr`.
pub async fn serve(
    addr: SocketAddr,
    metrics: ControlMetrics,
    control: Arc<Control>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) -> std::io::Result<SocketAddr> {
    let handler: Handler = Arc::new(move |asked: Request| {
        let metrics = metrics.clone();
        let control = control.clone();
        Box::pin(async move {
            match asked.path.as_str() {
                "/metrics" => {
                    metrics.refresh(&control).await;
                    Answer::text(StatusCode::OK, metrics.render())
                }
                "/health" => Answer::text(StatusCode::OK, "ok\n"),
                "/ready" => match control.leader() {
                    Some(_) if control.applied().0 > 0 => Answer::text(StatusCode::OK, "ready\n"),
                    _ => Answer::text(StatusCode::SERVICE_UNAVAILABLE, "no leader known\n"),
                },
                "/sd/nodes" | "/sd/workloads" => {
                    let state = control.read_stale().await;
                    let targets = crate::catalogue::scrape_targets(&state, None);
                    plain_http::discovery(&targets, &asked)
                }
                _ => Answer::text(StatusCode::NOT_FOUND, "not found\n"),
            }
        })
    });
    plain_http::serve(addr, handler, cancel, tasks).await
}
