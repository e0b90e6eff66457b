//! [`HealthMonitor`]: the async driver of the health checks, owned by the reconcile loop.
//!
//! Each pass the loop hands it the checked, running workloads ([`HealthMonitor::sync`]). The
//! monitor keeps one probe task per replica run: a task probes every `interval_ms`, each probe
//! bounded by `timeout_ms` and by a semaphore of [`MAX_PROBES_CONCURRENT`] probes in flight,
//! and sends the raw outcome over a channel of [`MAX_RESULTS_QUEUE`]. `sync` stops the tasks
//! of replicas that stopped, restarted, changed hash or changed check, starts the new ones,
//! and folds the outcomes that arrived into each run's [`HealthTracker`] — on the loop's own
//! task, so the trackers need no lock. Outcomes of a replaced run carry an old generation and
//! are dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use warren_api::clock::unix_now_ms;
use warren_api::service::HealthCheck;
use warren_api::{Event, EventKind, HealthState, ReplicaId};

use super::HealthTracker;
use super::probe::{self, ExecContext, ProbeOutcome};

/// Probes in flight at once, across all replicas.
pub const MAX_PROBES_CONCURRENT: usize = 16;
/// Probe outcomes waiting for the reconcile loop; a full queue makes probe tasks wait.
pub const MAX_RESULTS_QUEUE: usize = 256;
/// `HealthChanged` events waiting for the reconcile loop; beyond it new ones are dropped
/// (counted and logged).
pub const MAX_EVENTS: usize = 1024;
/// The shortest probe interval the monitor runs. Validated specs never go below 1 s; this
/// only keeps a zero from an unvalidated spec from spinning.
const PROBE_INTERVAL_FLOOR: Duration = Duration::from_millis(100);

/// One running workload to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthTarget {
    /// The replica.
    pub replica: ReplicaId,
    /// Its service's check, as the view has it now.
    pub check: HealthCheck,
    /// When the running workload started, unix millis: the start period counts from here.
    pub started_at_ms: u64,
    /// The running workload's hash.
    pub workload_hash: u64,
    /// Environment and directory for exec probes.
    pub exec: ExecContext,
}

/// One probe's outcome, on its way from a task to the monitor.
#[derive(Debug)]
struct ProbeResult {
    replica: ReplicaId,
    generation: u64,
    /// When the probe began, unix millis.
    at_ms: u64,
    outcome: ProbeOutcome,
}

/// A replica run being checked.
#[derive(Debug)]
struct Watched {
    target: HealthTarget,
    generation: u64,
    tracker: HealthTracker,
    cancel: CancellationToken,
}

/// Runs the health checks of the running workloads and keeps their [`HealthState`].
#[derive(Debug)]
pub struct HealthMonitor {
    cancel: CancellationToken,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    results_tx: mpsc::Sender<ProbeResult>,
    results_rx: mpsc::Receiver<ProbeResult>,
    watched: BTreeMap<ReplicaId, Watched>,
    next_generation: u64,
    events: Vec<Event>,
    events_dropped: u64,
}

impl HealthMonitor {
    /// A monitor with no targets; its probe tasks stop when `cancel` is cancelled.
    pub fn new(cancel: CancellationToken) -> Self {
        let (results_tx, results_rx) = mpsc::channel(MAX_RESULTS_QUEUE);
        HealthMonitor {
            cancel,
            tasks: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(MAX_PROBES_CONCURRENT)),
            results_tx,
            results_rx,
            watched: BTreeMap::new(),
            next_generation: 0,
            events: Vec::new(),
            events_dropped: 0,
        }
    }

    /// Makes the probed set exactly `targets` (one per replica; a later duplicate wins), then
    /// folds in the outcomes that arrived since the last call.
    ///
    /// A replica whose target differs from before in any way (a new run, another hash, another
    /// check) starts over in [`HealthState::Unknown`]. Must be called within a tokio runtime.
    pub fn sync(&mut self, targets: impl IntoIterator<Item = HealthTarget>) {
        let mut wanted: BTreeMap<ReplicaId, HealthTarget> = targets
            .into_iter()
            .map(|target| (target.replica.clone(), target))
            .collect();
        self.watched.retain(|replica, watched| {
            let keep = wanted.get(replica) == Some(&watched.target);
            if !keep {
                debug!(%replica, "health check stopped");
                watched.cancel.cancel();
            }
            keep
        });
        wanted.retain(|replica, _| !self.watched.contains_key(replica));
        for target in wanted.into_values() {
            self.watch(target);
        }
        self.fold_results();
    }

    /// The state of every checked replica; a replica without a check is absent (unknown).
    pub fn health(&self) -> BTreeMap<ReplicaId, HealthState> {
        self.watched
            .iter()
            .map(|(replica, watched)| (replica.clone(), watched.tracker.state()))
            .collect()
    }

    /// Why the replica's latest probe failed, while it does.
    pub fn last_failure(&self, replica: &ReplicaId) -> Option<&str> {
        self.watched.get(replica)?.tracker.last_failure()
    }

    /// The `HealthChanged` events since the last call, oldest first.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Stops every probe task (an exec probe in flight is killed) and waits for them.
    ///
    /// # Cancel safety
    /// Safe: the tasks are cancelled before the first await; dropping the future only skips
    /// waiting for them.
    pub async fn shutdown(&mut self) {
        self.cancel.cancel();
        self.watched.clear();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn watch(&mut self, target: HealthTarget) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let cancel = self.cancel.child_token();
        debug!(replica = %target.replica, probe = ?target.check.probe, "health check started");
        self.tasks.spawn(probe_loop(
            target.clone(),
            generation,
            self.permits.clone(),
            self.results_tx.clone(),
            cancel.clone(),
        ));
        let tracker = HealthTracker::new(&target.check, target.started_at_ms);
        self.watched.insert(
            target.replica.clone(),
            Watched {
                target,
                generation,
                tracker,
                cancel,
            },
        );
    }

    fn fold_results(&mut self) {
        while let Ok(result) = self.results_rx.try_recv() {
            let Some(watched) = self
                .watched
                .get_mut(&result.replica)
                .filter(|w| w.generation == result.generation)
            else {
                continue; // from a run that has been replaced or stopped
            };
            if let ProbeOutcome::Fail(reason) = &result.outcome {
                debug!(replica = %result.replica, %reason, "health probe failed");
            }
            let Some(change) = watched.tracker.observe(result.at_ms, &result.outcome) else {
                continue;
            };
            if self.events.len() >= MAX_EVENTS {
                self.events_dropped += 1;
                warn!(
                    replica = %result.replica,
                    dropped = self.events_dropped,
                    "health event queue full; dropping the event"
                );
                continue;
            }
            self.events.push(Event {
                at_ms: result.at_ms,
                replica: Some(result.replica),
                kind: EventKind::HealthChanged { health: change.to },
                message: change.message,
            });
        }
    }
}

impl Drop for HealthMonitor {
    /// A monitor dropped without [`shutdown`](HealthMonitor::shutdown) still stops its tasks.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Probes `target` every interval until cancelled. The first probe comes one interval after
/// the task starts, so that a workload gets that long to open its port.
async fn probe_loop(
    target: HealthTarget,
    generation: u64,
    permits: Arc<Semaphore>,
    results: mpsc::Sender<ProbeResult>,
    cancel: CancellationToken,
) {
    let interval = Duration::from_millis(target.check.interval_ms).max(PROBE_INTERVAL_FLOOR);
    let timeout = Duration::from_millis(target.check.timeout_ms);
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (at_ms, outcome) = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            probed = probe_once(&target, timeout, &permits) => probed,
        };
        let result = ProbeResult {
            replica: target.replica.clone(),
            generation,
            at_ms,
            outcome,
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            sent = results.send(result) => if sent.is_err() {
                return; // the monitor is gone
            },
        }
    }
}

/// One probe once a permit is free; returns when it began (unix millis) and its outcome.
async fn probe_once(
    target: &HealthTarget,
    timeout: Duration,
    permits: &Semaphore,
) -> (u64, ProbeOutcome) {
    let _permit = permits
        .acquire()
        .await
        .expect("the probe semaphore is never closed");
    let at_ms = unix_now_ms();
    let outcome = probe::run(&target.check.probe, timeout, &target.exec).await;
    (at_ms, outcome)
}

#[cfg(test)]
mod tests {
    use warren_api::ServiceName;
    use warren_api::service::Probe;

    use super::*;

    fn target(slot: u32, command: &[&str], started_at_ms: u64) -> HealthTarget {
        let mut check = HealthCheck::new(Probe::Exec {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
        });
        check.interval_ms = 100;
        check.timeout_ms = 2_000;
        check.retries = 2;
        HealthTarget {
            replica: ReplicaId::replicated(ServiceName::new("web").expect("valid"), slot),
            check,
            started_at_ms,
            workload_hash: 1,
            exec: ExecContext::default(),
        }
    }

    /// Syncs `targets` every 50 ms until `cond` holds on the health map (or 20 s pass).
    async fn sync_until(
        monitor: &mut HealthMonitor,
        targets: &[HealthTarget],
        cond: impl Fn(&BTreeMap<ReplicaId, HealthState>) -> bool,
    ) -> BTreeMap<ReplicaId, HealthState> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            monitor.sync(targets.iter().cloned());
            let health = monitor.health();
            if cond(&health) {
                return health;
            }
            assert!(Instant::now() < deadline, "timed out; health: {health:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A passing and a failing exec check reach healthy and unhealthy with one event each; a
    /// new run of the failing replica starts over in unknown; dropping a target forgets it.
    #[tokio::test]
    async fn runs_checks_and_reports_changes_once() {
        let mut monitor = HealthMonitor::new(CancellationToken::new());
        let good = target(0, &["true"], 0);
        let bad = target(1, &["false"], 0);
        let targets = [good.clone(), bad.clone()];
        sync_until(&mut monitor, &targets, |h| {
            h.get(&good.replica) == Some(&HealthState::Healthy)
                && h.get(&bad.replica) == Some(&HealthState::Unhealthy)
        })
        .await;
        // A few more probes change nothing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        monitor.sync(targets.iter().cloned());
        let events = monitor.drain_events();
        let kinds: Vec<(String, EventKind)> = events
            .iter()
            .map(|e| (e.replica.as_ref().expect("replica").to_string(), e.kind))
            .collect();
        assert_eq!(kinds.len(), 2, "{events:?}");
        assert!(kinds.contains(&(
            good.replica.to_string(),
            EventKind::HealthChanged {
                health: HealthState::Healthy
            }
        )));
        let unhealthy = events
            .iter()
            .find(|e| e.replica.as_ref() == Some(&bad.replica))
            .expect("an event for the failing replica");
        assert_eq!(
            unhealthy.message,
            "health check failed 2 times in a row: exec false: exit code 1"
        );
        assert_eq!(
            monitor.last_failure(&bad.replica),
            Some("2 of 2 failures: exec false: exit code 1")
        );

        let restarted = target(1, &["false"], 5);
        monitor.sync([good.clone(), restarted]);
        assert_eq!(
            monitor.health().get(&bad.replica),
            Some(&HealthState::Unknown)
        );
        monitor.sync([good.clone()]);
        assert_eq!(monitor.health().len(), 1);
        monitor.shutdown().await;
        assert!(monitor.health().is_empty());
    }
}
