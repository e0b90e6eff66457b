//! The reconcile planner: desired view + observed workloads + restart history → actions.
//!
//! Sans-IO, like boringtun's `Tunn` or quinn-proto: [`plan`] reads no clock, spawns nothing
//! and touches no file; time comes in as `now_ms`. The reconcile loop (the driver) lists the
//! runtime's workloads, reads the health checker's results, calls [`plan`], carries out the
//! [`Action`]s in order, folds what happened into the [`RestartBook`] with its `record_*`
//! methods, buffers the events, persists the book, and plans again when the runtime reports a
//! change, the view changes, or [`Plan::next_wakeup_ms`] comes.
//!
//! The restart history, [`RestartBook`], lives in `planner/restart_book.rs`; the planner's
//! cases in `planner/tests.rs`.
//!
//! # The invariant
//! A workload that is desired on this node, is running and has the desired workload hash is
//! never stopped, restarted or started a second time — unless its health check says it is
//! unhealthy and its restart policy asks for a restart. Reconnecting, resuming from a new
//! revision, or a spec change that leaves the workload hash alone all *adopt* it: it keeps its
//! pid.
//!
//! # Rules
//! - *Desired* means: the view places the replica on this node with `desired: running`.
//!   Anything else that runs here (the replica moved away while the node was cut off, was
//!   scaled down or removed) gets a [`Action::Stop`] with [`StopReason::Removed`]; so does
//!   an exited workload of such a replica (removed during a restart backoff), whose stop
//!   only cleans up and forgets it.
//! - A running workload is kept when its hash is the replica's `workload_hash` (what control
//!   assigned) or the service spec's current [`workload_hash`](warren_api::ServiceSpec::workload_hash).
//!   The second case covers a rolling update that has not reached this replica yet: the view
//!   carries only the newest spec, so a replica that must be (re)started mid-rollout starts
//!   from it; accepting that hash too keeps the planner from replacing it in a loop.
//! - A live workload with any other hash is replaced: [`Action::Stop`] with
//!   [`StopReason::Replaced`] first, and the [`Action::Start`] of the new workload only once no
//!   old workload of that replica is alive any more (ports and volumes are free again).
//! - An exited workload is restarted by its [`RestartPolicy`]: `always` after any exit,
//!   `on-failure` after a non-zero code, a signal or an unknown code, `never` not at all (the
//!   replica stays `completed` after exit code 0, `failed` otherwise). A workload that could
//!   not be started at all (spawn or image pull failed) has not had its run: it is retried
//!   with backoff whatever the condition, bounded by `max_attempts` like any failure.
//! - Backoff: the n-th consecutive failure waits [`backoff_delay_ms`] =
//!   `min(backoff_initial_ms · 2^(n-1), backoff_max_ms)` after the exit, meanwhile the plan says
//!   [`Action::Wait`]. A run that lasted at least [`stable_run_ms`] =
//!   `max(backoff_max_ms, 10 s)` resets the count, so its exit counts as failure 1 again. The
//!   window is never shorter than the longest backoff, so a workload that crashes within one
//!   backoff period of starting keeps backing off instead of resetting every time.
//! - `max_attempts`: failure n is restarted only while `n <= max_attempts` (restarts in a row
//!   never exceed it). Beyond that the replica stays `failed` and a
//!   [`EventKind::RestartsExhausted`] event says so, once. The limit is read from the current
//!   policy, so raising it in a spec update revives an exhausted replica.
//! - A running workload whose health is [`HealthState::Unhealthy`] counts as a failed run: it
//!   is restarted ([`Action::Restart`] with [`RestartReason::Unhealthy`]) under the same
//!   policy and `max_attempts`, right away (the health check's own `retries × interval`
//!   already paced it). With `never`, or with restarts exhausted, it is left running.
//! - Adoption: a kept running workload that the book does not show as this replica's current
//!   run at the service's current version gets an [`Action::Adopt`], so the driver records it
//!   and the operator sees an [`EventKind::Adopted`] event. After a spec change that leaves
//!   the workload hash alone, that is how the running workload moves to the new version.
//!
//! # Events
//! Facts the driver causes (started, restarted, adopted, stopped, could not start) come from
//! the `record_*` methods of [`RestartBook`]. Exits come from the planner, once each, with what
//! it decided (`exited with code 1; restarting in 4s (restart 3 of 5)`), because only the
//! planner knows the decision. The book remembers which exit it has reported, so planning
//! again emits nothing new.

mod restart_book;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use warren_api::service::DEFAULT_STOP_GRACE_PERIOD_MS;
use warren_api::{
    DesiredState, Event, EventKind, HealthState, NodeView, Replica, ReplicaId, RestartCondition,
    RestartPolicy, Service, TaskState, format_duration_ms,
};

pub use self::restart_book::{ExitRecord, RestartBook, RestartRecord, RunRecord, SIGNALLED};

/// The shortest run that counts as stable, whatever the backoff ceiling: 10 s.
pub const STABLE_RUN_MIN_MS: u64 = 10_000;

/// How long a run must last for its exit to reset the consecutive-failure count:
/// `max(backoff_max_ms, STABLE_RUN_MIN_MS)`.
pub fn stable_run_ms(policy: &RestartPolicy) -> u64 {
    policy.backoff_max_ms.max(STABLE_RUN_MIN_MS)
}

/// The wait before restarting after `failures` consecutive failures:
/// `min(backoff_initial_ms · 2^(failures-1), backoff_max_ms)`, and 0 for no failure.
///
/// Never above `backoff_max_ms` and never smaller for more failures; saturates instead of
/// overflowing.
pub fn backoff_delay_ms(policy: &RestartPolicy, failures: u32) -> u64 {
    let Some(doublings) = failures.checked_sub(1) else {
        return 0;
    };
    let factor = 1_u64.checked_shl(doublings).unwrap_or(u64::MAX);
    policy
        .backoff_initial_ms
        .saturating_mul(factor)
        .min(policy.backoff_max_ms)
}

/// One workload the runtime reports for a replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObservedWorkload {
    /// The replica it runs.
    pub replica: ReplicaId,
    /// The workload hash it was started with (recorded with the workload by the runtime).
    pub workload_hash: u64,
    /// What it is doing.
    pub state: ObservedState,
}

/// What an observed workload is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedState {
    /// Being started (spawn, image pull).
    Starting,
    /// Running since `since_ms` (unix millis, the runtime's record of the start).
    Running {
        /// When this run started.
        since_ms: u64,
    },
    /// Exited at `at_ms`; `code` is `None` when it died by a signal or the code is unknown.
    Exited {
        /// Exit code, if any.
        code: Option<i32>,
        /// When it exited, unix millis, as the runtime recorded it.
        at_ms: u64,
    },
    /// A stop is in progress (stop signal sent, grace period running).
    Stopping,
}

impl ObservedState {
    /// Whether the workload's process or container exists: starting, running or stopping.
    pub fn is_live(self) -> bool {
        !matches!(self, ObservedState::Exited { .. })
    }

    /// Whether a stop would do anything: starting or running.
    pub fn is_stoppable(self) -> bool {
        matches!(
            self,
            ObservedState::Starting | ObservedState::Running { .. }
        )
    }

    /// Lower is more alive; picks the workload that stands for a replica when there are
    /// several.
    fn liveness_rank(self) -> u8 {
        match self {
            ObservedState::Running { .. } => 0,
            ObservedState::Starting => 1,
            ObservedState::Stopping => 2,
            ObservedState::Exited { .. } => 3,
        }
    }
}

/// Everything [`plan`] reads besides the book.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The current time, unix millis.
    pub now_ms: u64,
    /// The node's cached desired state.
    pub view: &'a NodeView,
    /// Every workload the runtime knows of on this node, in any order.
    pub observed: &'a [ObservedWorkload],
    /// The health of each replica's current run; missing means [`HealthState::Unknown`]. The
    /// driver resets a replica's health when it starts a new run.
    pub health: &'a BTreeMap<ReplicaId, HealthState>,
}

/// What the driver should do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In the order to carry them out: stops, then adoptions, restarts, starts and waits.
    /// Stops come first so that ports, memory and volumes are free for what starts.
    pub actions: Vec<Action>,
    /// Exits and decisions to report upward (buffered while cut off).
    pub events: Vec<Event>,
    /// The state each replica on this node is in once the actions are carried out, for status
    /// reports: `starting` for a (re)start, `stopping` for a stop, `failed` while waiting out
    /// a backoff, `completed` / `failed` when it will not be restarted.
    pub states: BTreeMap<ReplicaId, TaskState>,
    /// The earliest [`Action::Wait`] deadline: plan again then at the latest.
    pub next_wakeup_ms: Option<u64>,
}

impl Plan {
    /// The actions concerning `replica`.
    pub fn actions_for<'a>(&'a self, replica: &'a ReplicaId) -> impl Iterator<Item = &'a Action> {
        self.actions.iter().filter(move |a| a.replica() == replica)
    }
}

/// One thing the driver should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop this workload: stop signal, then a forced kill after `grace_ms`. Once it has
    /// stopped, call [`RestartBook::record_stopped`].
    Stop {
        /// The replica.
        replica: ReplicaId,
        /// Which of the replica's workloads (during a replacement there may be two).
        workload_hash: u64,
        /// Time between the stop signal and the kill.
        grace_ms: u64,
        /// Why.
        reason: StopReason,
    },
    /// Keep this running workload as the replica's current run — never restart it — and call
    /// [`RestartBook::record_adopted`].
    Adopt {
        /// The replica.
        replica: ReplicaId,
        /// The service it belongs to (version and spec now in force).
        service: Service,
        /// The running workload's hash.
        workload_hash: u64,
        /// When the running workload started.
        since_ms: u64,
    },
    /// Run the replica again: discard the exited workload `previous_hash` (for
    /// [`RestartReason::Unhealthy`], stop it first with the spec's grace period and call
    /// [`RestartBook::record_exited`] — the unhealthy run counts as a failure), then start
    /// `service` and call [`RestartBook::record_started`] (or
    /// [`record_start_failed`](RestartBook::record_start_failed)).
    Restart {
        /// The replica.
        replica: ReplicaId,
        /// What to start.
        service: Service,
        /// The hash of what starts: `service.spec.workload_hash()`.
        workload_hash: u64,
        /// The hash of the workload being replaced by the restart.
        previous_hash: u64,
        /// Why.
        reason: RestartReason,
    },
    /// Start the replica (new, or a replacement once the old workload has stopped, or again
    /// after its workload vanished or could not start), replacing any exited workload of it.
    /// Then call [`RestartBook::record_started`] or
    /// [`record_start_failed`](RestartBook::record_start_failed).
    Start {
        /// The replica.
        replica: ReplicaId,
        /// What to start.
        service: Service,
        /// The hash of what starts: `service.spec.workload_hash()`.
        workload_hash: u64,
    },
    /// Nothing to do for the replica before `until_ms` (backoff): plan again then.
    Wait {
        /// The replica.
        replica: ReplicaId,
        /// When the backoff ends, unix millis.
        until_ms: u64,
    },
}

impl Action {
    /// The replica the action concerns.
    pub fn replica(&self) -> &ReplicaId {
        match self {
            Action::Stop { replica, .. }
            | Action::Adopt { replica, .. }
            | Action::Restart { replica, .. }
            | Action::Start { replica, .. }
            | Action::Wait { replica, .. } => replica,
        }
    }

    /// `stop`, `adopt`, `restart`, `start` or `wait`, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Stop { .. } => "stop",
            Action::Adopt { .. } => "adopt",
            Action::Restart { .. } => "restart",
            Action::Start { .. } => "start",
            Action::Wait { .. } => "wait",
        }
    }

    fn phase(&self) -> u8 {
        match self {
            Action::Stop { .. } => 0,
            Action::Adopt { .. } => 1,
            Action::Restart { .. } => 2,
            Action::Start { .. } => 3,
            Action::Wait { .. } => 4,
        }
    }
}

/// Why a workload is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The replica is no longer desired on this node: removed, scaled down, set to shut down,
    /// or moved to another node (possibly while this one was cut off).
    Removed,
    /// The replica's desired workload hash changed; the new workload starts once this one
    /// has stopped.
    Replaced,
    /// The link to control was lost and the test-only self-check knob
    /// (`AgentOptions::selfcheck_stop_on_disconnect`) is set. Never planned: the driver stops
    /// for this reason itself.
    SelfCheckLinkLost,
}

impl StopReason {
    /// `removed` or `replaced`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Removed => "removed",
            StopReason::Replaced => "replaced",
            StopReason::SelfCheckLinkLost => "self_check_link_lost",
        }
    }
}

/// Why a replica is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// It exited and the restart policy says restart; the backoff has passed.
    Exited {
        /// Exit code, if any.
        code: Option<i32>,
    },
    /// It is running but its health check says unhealthy.
    Unhealthy,
}

/// Plans what to do for every replica on the node: see the [module docs](self) for the
/// rules. Deterministic: the same input and book give the same plan and the same book,
/// whatever the order of `input.observed`.
///
/// Writes to `book` only what the planner itself learns: exits it sees in `input.observed`
/// (folded as [`RestartBook::record_exited`] would), which exits and give-ups it has reported,
/// and it drops the records of replicas that are neither desired nor observed.
pub fn plan(input: &PlanInput<'_>, book: &mut RestartBook) -> Plan {
    let desired = desired_replicas(input.view);
    let mut observed: BTreeMap<&ReplicaId, Vec<&ObservedWorkload>> = BTreeMap::new();
    for workload in input.observed {
        observed
            .entry(&workload.replica)
            .or_default()
            .push(workload);
    }
    // A canonical order, so that the plan does not depend on the runtime's listing order.
    for workloads in observed.values_mut() {
        workloads.sort_by_key(|w| (w.workload_hash, preference(w, w.workload_hash)));
    }
    let ids: BTreeSet<&ReplicaId> = desired.keys().chain(observed.keys()).copied().collect();
    let mut planner = Planner {
        now_ms: input.now_ms,
        view: input.view,
        health: input.health,
        book,
        plan: Plan::default(),
        stops: BTreeSet::new(),
    };
    for id in &ids {
        let workloads = observed.get(id).map_or(&[][..], Vec::as_slice);
        match (desired.get(id), input.view.services.get(&id.service)) {
            (Some(replica), Some(service)) => planner.desired(replica, service, workloads),
            (Some(_), None) => planner.without_spec(id, workloads),
            (None, _) => planner.removed(id, workloads),
        }
    }
    planner.book.records.retain(|id, _| ids.contains(id));
    planner.finish()
}

/// The replicas the view wants running on its node, by id (the first one wins if the view
/// repeats an id).
fn desired_replicas(view: &NodeView) -> BTreeMap<&ReplicaId, &Replica> {
    let mut desired = BTreeMap::new();
    for replica in &view.replicas {
        if replica.node == view.node.id && replica.desired == DesiredState::Running {
            desired.entry(&replica.id).or_insert(replica);
        }
    }
    desired
}

/// Orders a replica's acceptable workloads: the most alive first, then the one with the
/// assigned hash, then the latest exit, the earliest start, the lowest hash, the lowest code.
/// A total order on everything but identical workloads, so the choice does not depend on
/// input order.
type Preference = (u8, bool, Reverse<u64>, u64, u64, Option<i32>);

fn preference(workload: &ObservedWorkload, assigned_hash: u64) -> Preference {
    let (exit_ms, code, since_ms) = match workload.state {
        ObservedState::Exited { at_ms, code } => (at_ms, code, 0),
        ObservedState::Running { since_ms } => (0, None, since_ms),
        ObservedState::Starting | ObservedState::Stopping => (0, None, 0),
    };
    (
        workload.state.liveness_rank(),
        workload.workload_hash != assigned_hash,
        Reverse(exit_ms),
        since_ms,
        workload.workload_hash,
        code,
    )
}

/// What happens after a replica's last run ended.
enum AfterExit {
    /// The policy does not restart it; it stays in this state.
    NotRestarting(TaskState),
    /// `max_attempts` is used up.
    Exhausted,
    /// Restart at this time.
    RestartAt(u64),
}

fn decide_after_exit(
    record: &RestartRecord,
    exit: &ExitRecord,
    policy: &RestartPolicy,
) -> AfterExit {
    // A workload that never started has not had its run: it is retried whatever the
    // condition (an image pull that failed while the registry was unreachable), bounded only
    // by `max_attempts`.
    let by_policy = exit.start_failed
        || match policy.condition {
            RestartCondition::Always => true,
            RestartCondition::OnFailure => exit.code != Some(0),
            RestartCondition::Never => false,
        };
    if !by_policy {
        AfterExit::NotRestarting(exit.final_state())
    } else if record.is_exhausted(policy) {
        AfterExit::Exhausted
    } else {
        AfterExit::RestartAt(record.next_start_at_ms.unwrap_or(exit.at_ms))
    }
}

fn replica_event(at_ms: u64, replica: &ReplicaId, kind: EventKind, message: String) -> Event {
    Event {
        at_ms,
        replica: Some(replica.clone()),
        kind,
        message,
    }
}

/// `restart 3 of 5`, or `restart 3` without a limit.
fn restart_label(failures: u32, policy: &RestartPolicy) -> String {
    match policy.max_attempts {
        Some(max) => format!("restart {failures} of {max}"),
        None => format!("restart {failures}"),
    }
}

fn exhausted_message(failures: u32, policy: &RestartPolicy) -> String {
    let max = policy.max_attempts.unwrap_or(0);
    format!(
        "not restarting: {} restarts in a row reached max_attempts {max}",
        failures.saturating_sub(1)
    )
}

/// One planning pass.
#[derive(Debug)]
struct Planner<'a> {
    now_ms: u64,
    view: &'a NodeView,
    health: &'a BTreeMap<ReplicaId, HealthState>,
    book: &'a mut RestartBook,
    plan: Plan,
    /// `(replica, hash)` pairs already given a stop.
    stops: BTreeSet<(ReplicaId, u64)>,
}

impl Planner<'_> {
    /// A replica the view wants running here, with its service.
    fn desired(&mut self, replica: &Replica, service: &Service, workloads: &[&ObservedWorkload]) {
        let spec_hash = service.spec.workload_hash();
        let accepts = |hash: u64| hash == replica.workload_hash || hash == spec_hash;
        let current = workloads
            .iter()
            .copied()
            .filter(|w| accepts(w.workload_hash))
            .min_by_key(|w| preference(w, replica.workload_hash));
        let current_hash = current.map(|c| c.workload_hash);
        let grace = service.spec.stop_grace_period_ms;
        // Every live workload other than the current one is an old or duplicate copy. Never
        // the current hash: that would stop the workload we keep.
        let mut old_alive = false;
        for workload in workloads {
            if Some(workload.workload_hash) == current_hash || !workload.state.is_live() {
                continue;
            }
            old_alive = true;
            if workload.state.is_stoppable() {
                let hash = workload.workload_hash;
                self.stop(&replica.id, hash, grace, StopReason::Replaced);
            }
        }
        let id = &replica.id;
        match current.map(|c| (c.workload_hash, c.state)) {
            Some((hash, ObservedState::Running { since_ms })) => {
                self.running(replica, service, hash, since_ms);
            }
            Some((_, ObservedState::Starting)) => self.set_state(id, TaskState::Starting),
            Some((_, ObservedState::Stopping)) => self.set_state(id, TaskState::Stopping),
            Some((hash, ObservedState::Exited { code, at_ms })) => {
                let exit = ExitRecord {
                    code,
                    at_ms,
                    start_failed: false,
                };
                self.book.fold_exit(id, service, hash, exit);
                self.not_running(replica, service, Some(hash), old_alive);
            }
            None => self.not_running(replica, service, None, old_alive),
        }
    }

    /// A desired replica whose current workload runs: keep it, adopt it, or restart it if it
    /// is unhealthy.
    fn running(&mut self, replica: &Replica, service: &Service, hash: u64, since_ms: u64) {
        let id = &replica.id;
        let policy = &service.spec.restart;
        let unhealthy = self.health.get(id) == Some(&HealthState::Unhealthy);
        let record = self.book.get(id).filter(|r| r.workload_hash == hash);
        if unhealthy && policy.condition != RestartCondition::Never {
            let failures = record.map_or(1, |r| {
                r.failures_if_ended(Some(since_ms), self.now_ms, policy)
            });
            let exhausted = policy.max_attempts.is_some_and(|max| failures > max);
            if !exhausted {
                self.plan.actions.push(Action::Restart {
                    replica: id.clone(),
                    service: service.clone(),
                    workload_hash: service.spec.workload_hash(),
                    previous_hash: hash,
                    reason: RestartReason::Unhealthy,
                });
                self.set_state(id, TaskState::Starting);
                return;
            }
            if record.is_none_or(|r| r.reported_unhealthy_ms != Some(since_ms)) {
                let message = format!(
                    "unhealthy, left running; {}",
                    exhausted_message(failures, policy)
                );
                self.event(self.now_ms, id, EventKind::RestartsExhausted, message);
                self.book
                    .record_for(id, hash, service)
                    .reported_unhealthy_ms = Some(since_ms);
            }
        }
        // Compared with the service's version, which is what the driver records: mid-rollout
        // the replica's own version lags behind it.
        let owned = self
            .book
            .get(id)
            .is_some_and(|r| r.owns_run(hash, service.version));
        if !owned {
            self.plan.actions.push(Action::Adopt {
                replica: id.clone(),
                service: service.clone(),
                workload_hash: hash,
                since_ms,
            });
        }
        let state = if unhealthy {
            TaskState::Unhealthy
        } else {
            TaskState::Running
        };
        self.set_state(id, state);
    }

    /// A desired replica with nothing running under an acceptable hash. `exited_hash` is the
    /// exited workload that stands for it, if any; `old_alive` says an old workload of it is
    /// still alive (being stopped), so nothing may start yet.
    fn not_running(
        &mut self,
        replica: &Replica,
        service: &Service,
        exited_hash: Option<u64>,
        old_alive: bool,
    ) {
        let id = &replica.id;
        if old_alive {
            self.set_state(id, TaskState::Stopping);
            return;
        }
        let spec_hash = service.spec.workload_hash();
        let record = self
            .book
            .get(id)
            .filter(|r| r.workload_hash == replica.workload_hash || r.workload_hash == spec_hash)
            .filter(|r| r.run.is_none())
            .cloned();
        // No history, or a run the book knows of vanished (the box rebooted): start afresh,
        // without backoff — a vanished workload did not fail.
        let Some((record, exit)) = record.and_then(|r| r.last_exit.map(|e| (r, e))) else {
            self.start(id, service);
            return;
        };
        self.after_exit(replica, service, &record, &exit, exited_hash);
    }

    /// Applies the restart policy to a replica whose last run ended with `exit`, and reports
    /// the exit (once) with what was decided.
    fn after_exit(
        &mut self,
        replica: &Replica,
        service: &Service,
        record: &RestartRecord,
        exit: &ExitRecord,
        exited_hash: Option<u64>,
    ) {
        let id = &replica.id;
        let policy = &service.spec.restart;
        let failures = record.consecutive_failures;
        let decision = decide_after_exit(record, exit, policy);
        let (state, why) = match decision {
            AfterExit::NotRestarting(state) => {
                let why = format!(
                    "not restarting (restart policy {}): {}",
                    policy.condition.as_str(),
                    state.as_str()
                );
                (state, why)
            }
            AfterExit::Exhausted => (TaskState::Failed, "restarts exhausted".to_owned()),
            AfterExit::RestartAt(until_ms) if until_ms <= self.now_ms => {
                match exited_hash {
                    Some(previous_hash) => self.plan.actions.push(Action::Restart {
                        replica: id.clone(),
                        service: service.clone(),
                        workload_hash: service.spec.workload_hash(),
                        previous_hash,
                        reason: RestartReason::Exited { code: exit.code },
                    }),
                    None => self.push_start(id, service),
                }
                let why = format!("restarting ({})", restart_label(failures, policy));
                (TaskState::Starting, why)
            }
            AfterExit::RestartAt(until_ms) => {
                self.plan.actions.push(Action::Wait {
                    replica: id.clone(),
                    until_ms,
                });
                let delay = format_duration_ms(until_ms.saturating_sub(exit.at_ms));
                let label = restart_label(failures, policy);
                (
                    TaskState::Failed,
                    format!("restarting in {delay} ({label})"),
                )
            }
        };
        self.set_state(id, state);
        if record.reported_exit_ms == Some(exit.at_ms) {
            return;
        }
        // A failed start was reported by `record_start_failed` already.
        if !exit.start_failed {
            let message = format!("{}; {why}", exit.describe());
            let kind = EventKind::Exited { code: exit.code };
            self.event(exit.at_ms, id, kind, message);
        }
        if matches!(decision, AfterExit::Exhausted) {
            let message = exhausted_message(failures, policy);
            self.event(self.now_ms, id, EventKind::RestartsExhausted, message);
        }
        if let Some(record) = self.book.records.get_mut(id) {
            record.reported_exit_ms = Some(exit.at_ms);
        }
    }

    /// A replica the view places here but whose service spec is missing (a view
    /// inconsistency). Nothing is started or stopped; a running workload keeps running.
    fn without_spec(&mut self, id: &ReplicaId, workloads: &[&ObservedWorkload]) {
        let best = workloads
            .iter()
            .map(|w| w.state)
            .filter(|s| s.is_live())
            .min_by_key(|s| s.liveness_rank());
        let state = match best {
            Some(ObservedState::Running { .. }) => TaskState::Running,
            Some(ObservedState::Starting) => TaskState::Starting,
            Some(_) => TaskState::Stopping,
            None => return,
        };
        self.set_state(id, state);
    }

    /// A replica not desired here: stop every live workload of it, and let go of an exited
    /// one (its stop cleans up and forgets it; held, it would be reported as running).
    fn removed(&mut self, id: &ReplicaId, workloads: &[&ObservedWorkload]) {
        let grace = self
            .view
            .services
            .get(&id.service)
            .map(|s| s.spec.stop_grace_period_ms)
            .or_else(|| self.book.get(id).map(|r| r.stop_grace_period_ms))
            .unwrap_or(DEFAULT_STOP_GRACE_PERIOD_MS);
        let mut alive = false;
        for workload in workloads {
            if !workload.state.is_live() {
                self.stop(id, workload.workload_hash, grace, StopReason::Removed);
                continue;
            }
            alive = true;
            if workload.state.is_stoppable() {
                self.stop(id, workload.workload_hash, grace, StopReason::Removed);
            }
        }
        if alive {
            self.set_state(id, TaskState::Stopping);
        }
    }

    fn start(&mut self, id: &ReplicaId, service: &Service) {
        self.push_start(id, service);
        self.set_state(id, TaskState::Starting);
    }

    fn push_start(&mut self, id: &ReplicaId, service: &Service) {
        self.plan.actions.push(Action::Start {
            replica: id.clone(),
            service: service.clone(),
            workload_hash: service.spec.workload_hash(),
        });
    }

    fn stop(&mut self, id: &ReplicaId, workload_hash: u64, grace_ms: u64, reason: StopReason) {
        if self.stops.insert((id.clone(), workload_hash)) {
            self.plan.actions.push(Action::Stop {
                replica: id.clone(),
                workload_hash,
                grace_ms,
                reason,
            });
        }
    }

    fn set_state(&mut self, id: &ReplicaId, state: TaskState) {
        self.plan.states.insert(id.clone(), state);
    }

    fn event(&mut self, at_ms: u64, id: &ReplicaId, kind: EventKind, message: String) {
        self.plan
            .events
            .push(replica_event(at_ms, id, kind, message));
    }

    fn finish(mut self) -> Plan {
        // A stable sort: within a phase, actions stay in replica-id order.
        self.plan.actions.sort_by_key(Action::phase);
        self.plan.next_wakeup_ms = self
            .plan
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::Wait { until_ms, .. } => Some(*until_ms),
                _ => None,
            })
            .min();
        self.plan
    }
}

#[cfg(test)]
mod tests;
