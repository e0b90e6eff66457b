//! The reconcile loop and its driver: each pass observes the held workloads through the
//! runtime, asks the [planner](crate::planner) what to do, has the actions carried out, keeps
//! the restart history in the cache, and reports.
//!
//! - this file: the loop ([`Reconciler::reconcile_until_end`]), the driver's state, a pass
//!   ([`Reconciler::pass`]), re-adopting recorded workloads, observing held ones.
//! - [`actions`]: carrying out the planner's actions on the runtime (start, stop, restart,
//!   adopt), the node's removal, the self-check knob.
//! - [`reporting`]: events, replica states for the link, and `status.json`.

mod actions;
mod reporting;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_api::clock::unix_now_ms;
use warren_api::wire::{Listener, ListenerStatus};
use warren_api::{Event, EventKind, NodeView, ReplicaId, ReplicaStatus, TaskState, Workload};

use super::status_file::StatusWriter;
use super::{Agent, AgentIdentity, BOOK_KEY, RECORD_PREFIX};
use crate::cache::Cache;
use crate::health::probe::ExecContext;
use crate::health::{HealthMonitor, HealthTarget};
use crate::link::{LinkEnd, LinkStatus};
use crate::listeners::ListenerBook;
use crate::metrics::AgentMetrics;
use crate::planner::{self, Action, ObservedState, ObservedWorkload, PlanInput, RestartBook};
use crate::report::Reporter;
use crate::runtime::{Runtime, WorkloadHandle, WorkloadRecord};
use crate::secrets::NodeSecrets;

/// How soon a pass that acted is followed by another (to see what it started running).
pub const FOLLOW_UP_PASS: Duration = Duration::from_millis(100);
/// The longest time between two reconcile passes.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `status.json` waits, while passes keep acting, for a pass that does not.
const STATUS_DEFER_MAX: Duration = Duration::from_secs(1);
/// How often log files are checked against their size bound.
pub const LOG_ROTATE_INTERVAL: Duration = Duration::from_secs(60);

/// What the reconcile loop wakes on besides its timers.
pub(super) struct Watches {
    pub(super) views: watch::Receiver<Option<Arc<NodeView>>>,
    pub(super) link_status: watch::Receiver<LinkStatus>,
    pub(super) discovery: watch::Receiver<crate::discovery::DiscoveryStatus>,
    pub(super) listeners: watch::Receiver<BTreeMap<Listener, ListenerStatus>>,
}

/// How the reconcile loop ended.
pub(super) enum Ended {
    /// Stopped (cancelled, or the link ended); the link task, if it still runs.
    Stopped(Option<tokio::task::JoinHandle<LinkEnd>>),
    /// The node was removed; the workloads are stopped and wiped.
    Removed(String),
}

impl Reconciler {
    /// Runs reconcile passes — on every change of the view, the link, discovery or a listener,
    /// at the planner's wake-ups and at least every [`RECONCILE_INTERVAL`] — until `cancel`,
    /// the link's end, or the node's removal (workloads then stopped and wiped).
    pub(super) async fn reconcile_until_end(
        &mut self,
        mut watches: Watches,
        mut link_task: tokio::task::JoinHandle<LinkEnd>,
        cancel: &CancellationToken,
    ) -> Ended {
        let mut last_rotate = tokio::time::Instant::now();
        loop {
            let view = watches.views.borrow_and_update().clone();
            let status = watches.link_status.borrow_and_update().clone();
            watches.listeners.borrow_and_update();
            let wakeup_ms = self.pass(view.as_deref(), status).await;
            if last_rotate.elapsed() >= LOG_ROTATE_INTERVAL {
                last_rotate = tokio::time::Instant::now();
                if let Err(error) = self.runtime.rotate_logs().await {
                    warn!(error = %error, "cannot rotate workload logs");
                }
            }
            let delay = wakeup_ms.map_or(RECONCILE_INTERVAL, |at| {
                Duration::from_millis(at.saturating_sub(unix_now_ms())).min(RECONCILE_INTERVAL)
            });
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ended::Stopped(Some(link_task)),
                end = &mut link_task => match end {
                    Ok(LinkEnd::Removed(message)) => {
                        warn!(%message, "node removed from the cluster; stopping every workload");
                        self.teardown().await;
                        return Ended::Removed(message);
                    }
                    Ok(LinkEnd::Cancelled) => return Ended::Stopped(None),
                    Err(error) => {
                        // Workloads must keep running whatever happened to the link.
                        warn!(error = %error, "link task failed; agent stopping, workloads keep running");
                        return Ended::Stopped(None);
                    }
                },
                _ = watches.views.changed() => {}
                _ = watches.link_status.changed() => {}
                Ok(()) = watches.discovery.changed() => {}
                Ok(()) = watches.listeners.changed() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// The reconcile driver's state: the handles it holds, exits it has seen, the restart book.
#[derive(Debug)]
pub(super) struct Reconciler {
    data_dir: PathBuf,
    identity: AgentIdentity,
    cache: Arc<Cache>,
    runtime: Arc<dyn Runtime>,
    handles: BTreeMap<ReplicaId, WorkloadHandle>,
    /// When each exited workload was first seen exited (keyed by its start), so that the
    /// planner sees one exit time per run.
    exits: BTreeMap<ReplicaId, (u64, u64)>,
    /// Why each replica's last start failed (`image unavailable: …`, `this node runs
    /// processes; …`), so that `service ps` says why and not only that. Not kept across
    /// restarts of the agent: the next attempt says it again.
    start_errors: BTreeMap<ReplicaId, String>,
    /// Each replica whose last run the OOM killer ended: when the exit was seen (the
    /// planner's `at_ms`) and what `service ps` says instead of `exited by a signal`. Not kept
    /// across restarts of the agent.
    oom_kills: BTreeMap<ReplicaId, (u64, String)>,
    book: RestartBook,
    /// The restart book as last put in the cache: a pass stores the book only when it differs.
    book_stored: RestartBook,
    /// The node secret key and what each workload's secret files hold.
    secrets: NodeSecrets,
    health: BTreeMap<ReplicaId, warren_api::HealthState>,
    /// Runs the health checks whose results fill `health`.
    health_monitor: HealthMonitor,
    states: BTreeMap<ReplicaId, TaskState>,
    link: LinkStatus,
    revision: u64,
    reporter: Arc<Reporter>,
    metrics: AgentMetrics,
    /// The listeners' states (and where metrics are served), for `status.json`.
    listeners: ListenerBook,
    /// The statuses last reported, to keep `updated_at_ms` at the last real change.
    reported: BTreeMap<ReplicaId, ReplicaStatus>,
    status_file: StatusWriter,
    /// Since when passes that acted have left `status.json` for a pass that did not.
    status_deferred_since: Option<tokio::time::Instant>,
    /// [`AgentOptions::selfcheck_stop_on_disconnect`].
    selfcheck_stop_on_disconnect: bool,
    /// Where discovery serves, for `status.json`.
    discovery: watch::Receiver<crate::discovery::DiscoveryStatus>,
}

impl Reconciler {
    pub(super) fn new(
        agent: &Agent,
        cancel: CancellationToken,
        reporter: Arc<Reporter>,
        metrics: AgentMetrics,
        listeners: ListenerBook,
        discovery: watch::Receiver<crate::discovery::DiscoveryStatus>,
    ) -> Self {
        let book = match agent.cache.get::<RestartBook>(BOOK_KEY) {
            Ok(book) => book.unwrap_or_default(),
            Err(error) => {
                warn!(error = %error, "restart history unreadable; starting afresh");
                RestartBook::new()
            }
        };
        Reconciler {
            data_dir: agent.data_dir.clone(),
            identity: agent.identity.clone(),
            cache: agent.cache.clone(),
            runtime: agent.runtime.clone(),
            handles: BTreeMap::new(),
            exits: BTreeMap::new(),
            start_errors: BTreeMap::new(),
            oom_kills: BTreeMap::new(),
            book_stored: book.clone(),
            book,
            secrets: NodeSecrets::load(&agent.data_dir),
            health: BTreeMap::new(),
            health_monitor: HealthMonitor::new(cancel),
            states: BTreeMap::new(),
            link: LinkStatus::default(),
            revision: 0,
            reporter,
            metrics,
            listeners,
            reported: BTreeMap::new(),
            status_file: StatusWriter::new(&agent.data_dir),
            status_deferred_since: None,
            selfcheck_stop_on_disconnect: agent.options.selfcheck_stop_on_disconnect,
            discovery,
        }
    }

    /// Re-attaches to the workloads an earlier agent recorded; forgets records of workloads
    /// that are gone (the planner starts them again).
    pub(super) async fn adopt_recorded(&mut self) {
        for key in self.cache.keys_with_prefix(RECORD_PREFIX) {
            let record = match self.cache.get::<WorkloadRecord>(&key) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(error) => {
                    warn!(error = %error, "dropping an unreadable workload record");
                    self.remove_key(&key);
                    continue;
                }
            };
            match self.runtime.adopt(&record).await {
                Some(handle) => {
                    info!(replica = %record.replica, pid = ?record.pid(), "re-adopted workload");
                    self.handles.insert(record.replica.clone(), handle);
                }
                None => {
                    info!(replica = %record.replica, "recorded workload is gone");
                    self.remove_key(&key);
                }
            }
        }
        self.flush().await;
    }

    fn remove_key(&self, key: &str) {
        if let Err(error) = self.cache.remove(key) {
            warn!(error = %error, key, "cannot update the agent cache");
        }
    }

    /// Puts the restart book in the cache if it changed since it was last put there (not
    /// flushed: the caller flushes it with whatever else it wrote). Returns whether it did.
    fn put_book(&mut self) -> bool {
        if self.book == self.book_stored {
            return false;
        }
        if let Err(error) = self.cache.put(BOOK_KEY, &self.book) {
            warn!(error = %error, "cannot store the restart history");
            return false;
        }
        self.book_stored = self.book.clone();
        true
    }

    async fn flush(&self) {
        if let Err(error) = self.cache.flush().await {
            warn!(error = %error, "cannot flush the agent cache");
        }
    }

    /// One reconcile pass; returns the planner's next wake-up.
    async fn pass(&mut self, view: Option<&NodeView>, link: LinkStatus) -> Option<u64> {
        self.link = link;
        self.metrics.reconcile_passes_total.inc();
        let observed = self.observe().await;
        if self.selfcheck_stop_on_disconnect && self.link.connects > 0 && !self.link.connected {
            self.stop_while_link_lost().await;
            self.write_status(view, false);
            return None;
        }
        let Some(view) = view else {
            // Never had a view: keep whatever was adopted, decide nothing.
            self.write_status(None, false);
            return None;
        };
        self.revision = view.revision.0;
        let targets = health_targets(self.runtime.as_ref(), &self.handles, view, &observed);
        self.health_monitor.sync(targets);
        self.health = self.health_monitor.health();
        let health_events = self.health_monitor.drain_events();
        self.record_events(health_events);
        let now = unix_now_ms();
        let plan = planner::plan(
            &PlanInput {
                now_ms: now,
                view,
                observed: &observed,
                health: &self.health,
            },
            &mut self.book,
        );
        self.record_events(plan.events.clone());
        for action in &plan.actions {
            let events = self.execute(action, view).await;
            self.record_events(events);
        }
        let runtime_events = self.runtime.take_events();
        if !runtime_events.is_empty() {
            self.record_events(runtime_events);
        }
        self.secrets
            .refresh(&*self.runtime, view, &self.handles)
            .await;
        self.states = plan.states.clone();
        self.report(view);
        // A start stored the book with its workload record already; anything else that
        // changed it (an exit, a failed start) is stored here.
        if self.put_book() {
            self.flush().await;
        }
        // Something was started, restarted or stopped: look again soon, so that a started
        // workload shows `running` and a stopped one's replacement starts without waiting out
        // the whole reconcile interval.
        let acted = plan
            .actions
            .iter()
            .any(|a| !matches!(a, Action::Wait { .. } | Action::Adopt { .. }));
        // `status.json` waits for that pass: written now it would say `starting` for
        // FOLLOW_UP_PASS, at the price of a new file, two fsyncs and a rename — per agent per
        // change, on a box's flash, while other agents wait for the disk and the CPU. Passes
        // that act one after the other still write it every STATUS_DEFER_MAX.
        let deferred_since = *self
            .status_deferred_since
            .get_or_insert_with(tokio::time::Instant::now);
        if !acted || deferred_since.elapsed() >= STATUS_DEFER_MAX {
            self.status_deferred_since = None;
            self.write_status(Some(view), false);
        }
        if !acted {
            return plan.next_wakeup_ms;
        }
        let soon = unix_now_ms() + FOLLOW_UP_PASS.as_millis() as u64;
        Some(plan.next_wakeup_ms.map_or(soon, |at| at.min(soon)))
    }

    /// Observes every held workload, in the planner's terms.
    async fn observe(&mut self) -> Vec<ObservedWorkload> {
        let mut out = Vec::with_capacity(self.handles.len());
        let mut gone = Vec::new();
        let mut oom_events = Vec::new();
        for (replica, handle) in &self.handles {
            let record = handle.record();
            let state = match self.runtime.observe(handle).await {
                Ok(crate::runtime::RuntimeObservation::Running) => ObservedState::Running {
                    since_ms: record.started_at_ms,
                },
                Ok(crate::runtime::RuntimeObservation::Exited { code, signal }) => {
                    ObservedState::Exited {
                        code: if signal.is_some() { None } else { code },
                        at_ms: first_seen_exit(&mut self.exits, replica, record),
                    }
                }
                Ok(crate::runtime::RuntimeObservation::OomKilled { memory_limit_bytes }) => {
                    let at_ms = first_seen_exit(&mut self.exits, replica, record);
                    if self.oom_kills.get(replica).map(|(at, _)| *at) != Some(at_ms) {
                        let message = crate::runtime::describe_oom_kill(memory_limit_bytes);
                        oom_events.push(Event {
                            at_ms,
                            replica: Some(replica.clone()),
                            kind: EventKind::OomKilled,
                            message: message.clone(),
                        });
                        self.oom_kills.insert(replica.clone(), (at_ms, message));
                    }
                    ObservedState::Exited { code: None, at_ms }
                }
                Ok(crate::runtime::RuntimeObservation::Gone) => {
                    gone.push(replica.clone());
                    continue;
                }
                Err(error) => {
                    // Cannot tell: assume it runs rather than start a second copy.
                    warn!(%replica, error = %error, "cannot observe workload");
                    ObservedState::Running {
                        since_ms: record.started_at_ms,
                    }
                }
            };
            out.push(ObservedWorkload {
                replica: replica.clone(),
                workload_hash: record.workload_hash,
                state,
            });
        }
        for replica in gone {
            info!(%replica, "workload vanished");
            self.handles.remove(&replica);
            self.remove_key(&record_key(&replica));
        }
        if !oom_events.is_empty() {
            self.record_events(oom_events);
        }
        out
    }

    /// The agent stops (its workloads keep running): stops the health checks.
    pub(super) async fn stop_health_checks(&mut self) {
        self.health_monitor.shutdown().await;
    }
}

fn record_key(replica: &ReplicaId) -> String {
    format!("{RECORD_PREFIX}{replica}")
}

/// The health checks to run: one per running workload whose service has a check. Exec probes
/// get the service's environment and run in the workload's working directory, as its user;
/// a container's run inside it, as its process does.
fn health_targets(
    runtime: &dyn Runtime,
    handles: &BTreeMap<ReplicaId, WorkloadHandle>,
    view: &NodeView,
    observed: &[ObservedWorkload],
) -> Vec<HealthTarget> {
    observed
        .iter()
        .filter_map(|workload| {
            let ObservedState::Running { since_ms } = workload.state else {
                return None;
            };
            let spec = &view.services.get(&workload.replica.service)?.spec;
            let check = spec.health.clone()?;
            let record = handles.get(&workload.replica).map(WorkloadHandle::record);
            let working_dir = match &spec.workload {
                Workload::Process(_) => record.map(|r| r.working_dir.clone()),
                // Inside the container: its own working directory.
                Workload::Image(_) => None,
            };
            Some(HealthTarget {
                replica: workload.replica.clone(),
                check,
                started_at_ms: since_ms,
                workload_hash: workload.workload_hash,
                exec: ExecContext {
                    env: spec.env.clone(),
                    working_dir,
                    credentials: record.and_then(|r| r.credentials.clone()),
                    container: record.and_then(|r| runtime.exec_target(r)),
                },
            })
        })
        .collect()
}

/// When `replica`'s run of `record` was first seen exited, noted now if this is the first
/// time: the planner sees one exit time per run.
fn first_seen_exit(
    exits: &mut BTreeMap<ReplicaId, (u64, u64)>,
    replica: &ReplicaId,
    record: &WorkloadRecord,
) -> u64 {
    let seen = exits
        .entry(replica.clone())
        .or_insert((record.started_at_ms, unix_now_ms()));
    if seen.0 != record.started_at_ms {
        *seen = (record.started_at_ms, unix_now_ms());
    }
    seen.1
}
