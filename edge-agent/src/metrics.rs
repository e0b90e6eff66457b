//! The agent's Prometheus metrics and its plain-HTTP listener (`/metrics`, `/health`,
//! `/ready`).
//!
//! Every series carries `node` (the name), `node_id` and `site` labels (constant labels on the
//! registry, [`warren_transport::node_metrics`], which also adds build info, process metrics and
//! the certificate's expiry), so a site-level Prometheus can federate to a central one without
//! relabelling (docs/design.md §8).
//! Gauges that mirror state are refreshed at scrape time from the link status, the reporter and
//! the cache; counters are bumped where things happen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_api::clock::unix_now_ms;
use warren_api::{Event, EventKind, HealthState, NodeView, TaskState};
use warren_transport::node_metrics::NodeLabels;
use warren_transport::plain_http::{self, Answer, Handler, Request};

use crate::cache::Cache;
use crate::link::LinkStatus;
use crate::report::Reporter;

/// Every task state, for zero-filled gauges (a state with no workload shows 0, not nothing).
const TASK_STATES: [TaskState; 10] = [
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Unhealthy,
    TaskState::Stopping,
    TaskState::Stopped,
    TaskState::Failed,
    TaskState::Completed,
    TaskState::Orphaned,
];

/// Metrics of one agent.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Revision of the cached view.
    pub revision: IntGauge,
    /// How far the cached view is behind what control last said it holds for this node.
    pub revision_lag: IntGauge,
    /// 1 while a stream to a control node is up.
    pub link_up: IntGauge,
    /// Seconds since the last message from control (at scrape time).
    pub link_last_contact_age_seconds: Gauge,
    /// Connections made to control.
    pub link_connects_total: IntCounter,
    /// Failed attempts to reach control, by `reason` ([`crate::link::FailureKind`]).
    pub link_failures_total: IntCounterVec,
    /// 1 while a configured listener (`metrics`, `dns`, `gossip`) is bound, 0 while it is
    /// being retried; no series for a listener that is off.
    pub listener_up: IntGaugeVec,
    /// Workloads by state after the last reconcile pass.
    pub workloads: IntGaugeVec,
    /// Workloads by health-check result after the last pass.
    pub workload_health: IntGaugeVec,
    /// Events by kind (started, exited, restarted, health_changed, …).
    pub events_total: IntCounterVec,
    /// Restarts done by the restart policy.
    pub workload_restarts_total: IntCounter,
    /// Workloads by service and state after the last reconcile pass.
    pub service_workloads: IntGaugeVec,
    /// Restarts done by the restart policy, by service.
    pub service_restarts_total: IntCounterVec,
    /// The `(service, state)` series of [`AgentMetrics::service_workloads`] set by the last
    /// pass, and the services given a restart series: what the next pass removes when its
    /// service is gone.
    service_series: Arc<Mutex<ServiceSeries>>,
    /// Events waiting to go up.
    pub events_buffered: IntGauge,
    /// Size of the cache on disk, bytes.
    pub cache_size_bytes: IntGauge,
    /// Cached values found corrupt (and dropped or refused).
    pub cache_corrupt_total: IntCounter,
    /// Reconcile passes.
    pub reconcile_passes_total: IntCounter,
}

/// The per-service series set so far ([`AgentMetrics::set_workloads`]).
#[derive(Debug, Default)]
struct ServiceSeries {
    workloads: BTreeSet<(String, &'static str)>,
    restarts: BTreeSet<String>,
}

/// Makes metrics and registers each in one registry. Names and help texts are literals, so
/// a bad or repeated one is a bug: it panics at start.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn metric<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("unique metric");
        metric
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.metric(IntGauge::new(name, help).expect("valid metric"))
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.metric(IntCounter::new(name, help).expect("valid metric"))
    }

    fn gauge_vec(&self, name: &str, help: &str, label: &str) -> IntGaugeVec {
        self.metric(IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, label: &str) -> IntCounterVec {
        self.metric(IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"))
    }

    fn gauge_vec2(&self, name: &str, help: &str, labels: [&str; 2]) -> IntGaugeVec {
        self.metric(IntGaugeVec::new(Opts::new(name, help), &labels).expect("valid metric"))
    }
}

/// Failed attempts to reach control, with every reason's series there from the start (at 0).
fn link_failures_total(add: &Registrar<'_>) -> IntCounterVec {
    let failures = add.counter_vec(
        "warren_agent_link_failures_total",
        "Failed attempts to reach control, by reason: resolve (no control address resolved), unreachable (nobody answered), refused, lost (a session ended).",
        "reason",
    );
    for kind in crate::link::FailureKind::ALL {
        failures.with_label_values(&[kind.as_str()]);
    }
    failures
}

impl AgentMetrics {
    /// The registry every agent series lives in (discovery adds the mesh and DNS ones).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates every metric in a fresh registry labelled with `node` (name), `node_id` and
    /// `site`, holding build info and process metrics too.
    pub fn new(labels: &NodeLabels) -> Self {
        let registry = labels.registry();
        let add = Registrar(&registry);
        AgentMetrics {
            revision: add.gauge("warren_agent_revision", "Revision of the cached view."),
            revision_lag: add.gauge(
                "warren_agent_revision_lag",
                "Revisions the cached view is behind what control last announced for this node.",
            ),
            link_up: add.gauge(
                "warren_agent_link_up",
                "1 while a stream to a control node is up.",
            ),
            link_last_contact_age_seconds: add.metric(
                Gauge::new(
                    "warren_agent_link_last_contact_age_seconds",
                    "Seconds since the last message from control (-1 before any).",
                )
                .expect("valid metric"),
            ),
            link_connects_total: add.counter(
                "warren_agent_link_connects_total",
                "Connections made to a control node.",
            ),
            link_failures_total: link_failures_total(&add),
            listener_up: add.gauge_vec(
                "warren_agent_listener_up",
                "1 while the listener (metrics, dns, gossip) is bound, 0 while it cannot bind and is being retried.",
                "listener",
            ),
            workloads: add.gauge_vec(
                "warren_agent_workloads",
                "Workloads by state after the last reconcile pass.",
                "state",
            ),
            workload_health: add.gauge_vec(
                "warren_agent_workload_health",
                "Workloads by health-check result after the last reconcile pass.",
                "health",
            ),
            events_total: add.counter_vec(
                "warren_agent_events_total",
                "Events recorded, by kind.",
                "kind",
            ),
            workload_restarts_total: add.counter(
                "warren_agent_workload_restarts_total",
                "Workloads restarted by their restart policy (exits and failed health checks).",
            ),
            service_workloads: add.gauge_vec2(
                "warren_agent_service_workloads",
                "Workloads by service and state after the last reconcile pass; the running series is there (at 0) for every service this node should run.",
                ["service", "state"],
            ),
            service_restarts_total: add.counter_vec(
                "warren_agent_service_restarts_total",
                "Workloads restarted by their restart policy, by service.",
                "service",
            ),
            service_series: Arc::default(),
            events_buffered: add.gauge(
                "warren_agent_events_buffered",
                "Events waiting to be reported to control.",
            ),
            cache_size_bytes: add.gauge(
                "warren_agent_cache_size_bytes",
                "Size of the agent cache on disk.",
            ),
            cache_corrupt_total: add.counter(
                "warren_agent_cache_corrupt_total",
                "Cached values found corrupt.",
            ),
            reconcile_passes_total: add.counter(
                "warren_agent_reconcile_passes_total",
                "Reconcile passes run.",
            ),
            registry,
        }
    }

    /// Counts events by kind (and restarts, by service).
    pub fn count_events(&self, events: &[Event]) {
        for event in events {
            self.events_total
                .with_label_values(&[event.kind.as_str()])
                .inc();
            if event.kind == EventKind::Restarted {
                self.workload_restarts_total.inc();
                if let Some(replica) = &event.replica {
                    self.service_restarts_total
                        .with_label_values(&[replica.service.as_str()])
                        .inc();
                }
            }
        }
    }

    /// Sets the workload gauges from one pass's workloads (service, state, health), and the
    /// per-service ones for `services`, the services this node should run: their `running`
    /// series is there at 0 when none runs. A service neither wanted nor found loses its
    /// series (removed one by one, not reset: a scrape meanwhile sees no gap).
    pub fn set_workloads<'a>(
        &self,
        workloads: &[(&'a str, TaskState, HealthState)],
        services: impl IntoIterator<Item = &'a str>,
    ) -> &Self {
        self.set_node_workloads(workloads.iter().map(|&(_, state, health)| (state, health)));
        let mut by_service: BTreeMap<(String, &'static str), i64> = services
            .into_iter()
            .map(|service| ((service.to_owned(), TaskState::Running.as_str()), 0))
            .collect();
        for &(service, state, _) in workloads {
            *by_service
                .entry((service.to_owned(), state.as_str()))
                .or_default() += 1;
        }
        let mut series = self
            .service_series
            .lock()
            .expect("service series lock is not poisoned");
        for (service, state) in &series.workloads {
            if !by_service.contains_key(&(service.clone(), state)) {
                let _ = self
                    .service_workloads
                    .remove_label_values(&[service.as_str(), state]);
            }
        }
        for ((service, state), n) in &by_service {
            self.service_workloads
                .with_label_values(&[service.as_str(), state])
                .set(*n);
        }
        let services: BTreeSet<String> = by_service.keys().map(|(s, _)| s.clone()).collect();
        for gone in series.restarts.difference(&services) {
            let _ = self.service_restarts_total.remove_label_values(&[gone]);
        }
        for service in &services {
            // Created at 0, so that the first restart is an increase Prometheus sees.
            self.service_restarts_total.with_label_values(&[service]);
        }
        series.restarts = services;
        series.workloads = by_service.into_keys().collect();
        self
    }

    /// Sets the per-node workload gauges from one pass's states and health results.
    fn set_node_workloads(&self, states: impl IntoIterator<Item = (TaskState, HealthState)>) {
        let mut by_state: BTreeMap<&'static str, i64> =
            TASK_STATES.iter().map(|s| (s.as_str(), 0)).collect();
        let mut by_health: BTreeMap<&'static str, i64> = [
            HealthState::Unknown,
            HealthState::Healthy,
            HealthState::Unhealthy,
        ]
        .iter()
        .map(|h| (h.as_str(), 0))
        .collect();
        for (state, health) in states {
            *by_state.entry(state.as_str()).or_default() += 1;
            *by_health.entry(health.as_str()).or_default() += 1;
        }
        for (state, n) in by_state {
            self.workloads.with_label_values(&[state]).set(n);
        }
        for (health, n) in by_health {
            self.workload_health.with_label_values(&[health]).set(n);
        }
    }

    /// Refreshes the gauges that mirror the link, the event buffer and the cache.
    pub fn refresh(&self, link: &LinkStatus, reporter: &Reporter, cache: &Cache) {
        self.revision.set(link.revision as i64);
        self.revision_lag
            .set(link.control_revision.saturating_sub(link.revision) as i64);
        self.link_up.set(i64::from(link.connected));
        let connects = self.link_connects_total.get();
        self.link_connects_total
            .inc_by(link.connects.saturating_sub(connects));
        self.link_last_contact_age_seconds.set(
            link.last_contact_ms
                .map_or(-1.0, |at| unix_now_ms().saturating_sub(at) as f64 / 1000.0),
        );
        self.events_buffered.set(reporter.buffered() as i64);
        self.cache_size_bytes.set(cache.size_on_disk() as i64);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }
}

/// What the metrics listener reads at scrape time.
#[derive(Clone, Debug)]
pub struct MetricsSources {
    /// The metrics.
    pub metrics: AgentMetrics,
    /// The link's status.
    pub link: watch::Receiver<LinkStatus>,
    /// The event buffer.
    pub reporter: Arc<Reporter>,
    /// The cache.
    pub cache: Arc<Cache>,
    /// The view the agent runs from (cached or fetched); `/ready` once there is one.
    pub views: watch::Receiver<Option<Arc<NodeView>>>,
}

/// Serves `/metrics`, `/health` (the agent runs), `/ready` (it has a view to run workloads
/// from — cached counts: an offline agent is ready), and Prometheus service discovery for its
/// site from that view (`/sd/nodes`, `/sd/workloads`: it keeps answering while the site is
/// cut off) until `cancel` fires.
///
/// # Errors
/// I/O errors binding `addr`.
pub async fn serve(
    addr: SocketAddr,
    sources: MetricsSources,
    cancel: CancellationToken,
    tasks: TaskTracker,
) -> std::io::Result<SocketAddr> {
    let handler: Handler = Arc::new(move |asked: Request| {
        let sources = sources.clone();
        Box::pin(async move {
            match asked.path.as_str() {
                "/metrics" => {
                    let link = sources.link.borrow().clone();
                    sources
                        .metrics
                        .refresh(&link, &sources.reporter, &sources.cache);
                    Answer::text(StatusCode::OK, sources.metrics.render())
                }
                "/health" => Answer::text(StatusCode::OK, "ok\n"),
                "/ready" if sources.views.borrow().is_some() => {
                    Answer::text(StatusCode::OK, "ready\n")
                }
                "/ready" => Answer::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no view yet: waiting for the first contact with control\n",
                ),
                "/sd/nodes" | "/sd/workloads" => {
                    let view = sources.views.borrow().clone();
                    let targets = view.map(|v| v.scrape.clone()).unwrap_or_default();
                    plain_http::discovery(&targets, &asked)
                }
                _ => Answer::text(StatusCode::NOT_FOUND, "not found\n"),
            }
        })
    });
    plain_http::serve(addr, handler, cancel, tasks).await
}

#[cfg(test)]
mod tests {
    use warren_api::{NodeId, ReplicaId, ServiceName};

    use super::*;

    fn labels() -> NodeLabels {
        NodeLabels {
            name: "edge-a".into(),
            node_id: NodeId(0xab),
            site: "lisbon".into(),
        }
    }

    fn restarted(service: &str) -> Event {
        Event {
            at_ms: 1,
            replica: Some(ReplicaId::replicated(
                ServiceName::new(service).expect("valid name"),
                1,
            )),
            kind: EventKind::Restarted,
            message: "restarted".into(),
        }
    }

    /// Whether `text` has a line that starts with `prefix`, carries the node's three labels
    /// and ends with `value`.
    fn has_line(text: &str, prefix: &str, value: &str) -> bool {
        let node_id = format!("node_id=\"{}\"", NodeId(0xab));
        text.lines().any(|l| {
            l.starts_with(prefix)
                && l.contains("node=\"edge-a\"")
                && l.contains(&node_id)
                && l.contains("site=\"lisbon\"")
                && l.ends_with(value)
        })
    }

    #[test]
    fn series_carry_node_and_site_and_states_are_zero_filled() {
        let metrics = AgentMetrics::new(&labels());
        metrics.set_workloads(
            &[("web", TaskState::Running, HealthState::Healthy)],
            ["web"],
        );
        metrics.count_events(&[
            restarted("web"),
            Event {
                kind: EventKind::Started,
                ..restarted("web")
            },
        ]);
        let text = metrics.render();
        let line = |prefix: &str, value: &str| has_line(&text, prefix, value);
        assert!(line("warren_agent_workloads{", " 1"), "{text}");
        assert!(text.contains("warren_agent_workloads{") && text.contains("state=\"failed\""));
        assert!(
            line("warren_agent_workload_restarts_total{", " 1"),
            "{text}"
        );
        assert!(line("warren_agent_workload_health{", " 1"), "{text}");
        assert!(line("warren_build_info{", " 1"), "{text}");
        assert!(line("process_start_time_seconds{", ""), "{text}");
    }

    #[test]
    fn service_series_follow_the_services_the_node_runs() {
        let metrics = AgentMetrics::new(&labels());
        let series = |text: &str, prefix: &str, labels: &[&str], value: &str| {
            text.lines().any(|l| {
                l.starts_with(prefix)
                    && labels.iter().all(|label| l.contains(label))
                    && l.ends_with(value)
            })
        };
        metrics.set_workloads(
            &[
                ("web", TaskState::Running, HealthState::Healthy),
                ("web", TaskState::Failed, HealthState::Unknown),
            ],
            ["web", "db"],
        );
        metrics.count_events(&[restarted("web"), restarted("web")]);
        let text = metrics.render();
        let workloads = "warren_agent_service_workloads{";
        let restarts = "warren_agent_service_restarts_total{";
        assert!(has_line(&text, workloads, ""), "{text}");
        assert!(
            series(
                &text,
                workloads,
                &["service=\"web\"", "state=\"running\""],
                " 1"
            ),
            "{text}"
        );
        assert!(
            series(
                &text,
                workloads,
                &["service=\"web\"", "state=\"failed\""],
                " 1"
            ),
            "{text}"
        );
        assert!(
            series(
                &text,
                workloads,
                &["service=\"db\"", "state=\"running\""],
                " 0"
            ),
            "a wanted service shows 0 running: {text}"
        );
        assert!(
            series(&text, restarts, &["service=\"web\""], " 2"),
            "{text}"
        );
        assert!(series(&text, restarts, &["service=\"db\""], " 0"), "{text}");

        // `db` goes away and `web` stops failing: their series go.
        metrics.set_workloads(
            &[("web", TaskState::Running, HealthState::Healthy)],
            ["web"],
        );
        let text = metrics.render();
        assert!(!text.contains("service=\"db\""), "{text}");
        assert!(
            !series(&text, workloads, &["state=\"failed\""], ""),
            "{text}"
        );
        assert!(
            series(&text, restarts, &["service=\"web\""], " 2"),
            "{text}"
        );
    }
}
