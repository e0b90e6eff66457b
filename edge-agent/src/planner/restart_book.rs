//! The restart history: per replica, the current run, how the last one ended, failures in a
//! row and the backoff deadline. The planner reads it and notes which exits it has reported;
//! the driver folds in what it did with the `record_*` methods; the agent's cache keeps it,
//! so backoff and `max_attempts` survive an agent restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warren_api::{Event, EventKind, ReplicaId, RestartPolicy, Service, TaskState};

use super::{StopReason, backoff_delay_ms, replica_event, stable_run_ms};

/// Restart history per replica, shared by the planner (which reads it and notes what it has
/// reported) and the driver (which folds in what it did with the `record_*` methods). Persist
/// it with the agent's cache so that backoff and `max_attempts` survive an agent restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartBook {
    pub(super) records: BTreeMap<ReplicaId, RestartRecord>,
}

/// One replica's restart history, for one workload hash: a new hash starts a new history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// The workload this history is about.
    pub workload_hash: u64,
    /// The current run as the driver knows it (started or adopted); `None` once it ended.
    pub run: Option<RunRecord>,
    /// Runs in a row that ended before [`stable_run_ms`] (with `always`, clean exits count
    /// too); reset by a stable run. The backoff and `max_attempts` count these.
    pub consecutive_failures: u32,
    /// Restarts of this workload on this node, for status reports.
    pub restarts: u32,
    /// How the last run ended.
    pub last_exit: Option<ExitRecord>,
    /// Backoff: the earliest restart after `last_exit`, fixed when the exit was recorded.
    pub next_start_at_ms: Option<u64>,
    /// The grace period of the spec the workload was started with, for stopping it after its
    /// service has left the view.
    pub stop_grace_period_ms: u64,
    /// The `at_ms` of the last exit the planner has reported.
    pub reported_exit_ms: Option<u64>,
    /// The `since_ms` of the unhealthy run whose exhausted restarts the planner has reported.
    pub reported_unhealthy_ms: Option<u64>,
}

/// A run of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The service version it was started with or adopted under.
    pub service_version: u64,
    /// When it started, unix millis.
    pub started_at_ms: u64,
}

/// How [`ExitRecord::describe`] says a signal ended a run.
pub const SIGNALLED: &str = "exited by a signal";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code; `None` for a signal, an unknown code, or a failed start.
    pub code: Option<i32>,
    /// When, unix millis.
    pub at_ms: u64,
    /// The workload could not be started at all.
    pub start_failed: bool,
}

impl ExitRecord {
    /// A line for people: `exited with code 1`, `could not start`, ….
    pub fn describe(&self) -> String {
        match (self.start_failed, self.code) {
            (true, _) => "could not start".to_owned(),
            (false, Some(code)) => format!("exited with code {code}"),
            (false, None) => SIGNALLED.to_owned(),
        }
    }

    /// `completed` for a clean exit, `failed` otherwise.
    pub(super) fn final_state(&self) -> TaskState {
        if self.code == Some(0) && !self.start_failed {
            TaskState::Completed
        } else {
            TaskState::Failed
        }
    }
}

impl RestartRecord {
    fn new(workload_hash: u64, stop_grace_period_ms: u64) -> Self {
        RestartRecord {
            workload_hash,
            run: None,
            consecutive_failures: 0,
            restarts: 0,
            last_exit: None,
            next_start_at_ms: None,
            stop_grace_period_ms,
            reported_exit_ms: None,
            reported_unhealthy_ms: None,
        }
    }

    /// Whether `policy` forbids another restart: more failures in a row than `max_attempts`.
    pub fn is_exhausted(&self, policy: &RestartPolicy) -> bool {
        policy
            .max_attempts
            .is_some_and(|max| self.consecutive_failures > max)
    }

    /// The consecutive-failure count if a run that started at `run_started_ms` ended at
    /// `ended_at_ms`.
    pub(super) fn failures_if_ended(
        &self,
        run_started_ms: Option<u64>,
        ended_at_ms: u64,
        policy: &RestartPolicy,
    ) -> u32 {
        let stable = run_started_ms
            .is_some_and(|started| ended_at_ms.saturating_sub(started) >= stable_run_ms(policy));
        if stable {
            1
        } else {
            self.consecutive_failures.saturating_add(1)
        }
    }

    /// The latest time this record knows of.
    fn latest_ms(&self) -> u64 {
        let exit = self.last_exit.map_or(0, |e| e.at_ms);
        let run = self.run.map_or(0, |r| r.started_at_ms);
        exit.max(run)
    }

    /// Whether the record shows `workload_hash`, at `service_version`, as the current run.
    pub(super) fn owns_run(&self, workload_hash: u64, service_version: u64) -> bool {
        self.workload_hash == workload_hash
            && self
                .run
                .is_some_and(|run| run.service_version == service_version)
    }
}

impl RestartBook {
    /// An empty book.
    pub fn new() -> Self {
        RestartBook::default()
    }

    /// The history of `replica`, if any.
    pub fn get(&self, replica: &ReplicaId) -> Option<&RestartRecord> {
        self.records.get(replica)
    }

    /// Every record, by replica id.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaId, &RestartRecord)> {
        self.records.iter()
    }

    /// How many replicas have a record.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no replica has a record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops `replica`'s history.
    pub fn forget(&mut self, replica: &ReplicaId) -> Option<RestartRecord> {
        self.records.remove(replica)
    }

    /// The driver started `workload_hash` of `service` for `replica` at `at_ms` (a
    /// [`Action::Start`](super::Action::Start) or [`Action::Restart`](super::Action::Restart)). Returns the `started` event, or
    /// `restarted` when the same workload ran before.
    pub fn record_started(
        &mut self,
        replica: &ReplicaId,
        service: &Service,
        workload_hash: u64,
        at_ms: u64,
    ) -> Event {
        let record = self.record_for(replica, workload_hash, service);
        let restart = record.last_exit.is_some();
        if restart {
            record.restarts = record.restarts.saturating_add(1);
        }
        record.run = Some(RunRecord {
            service_version: service.version,
            started_at_ms: at_ms,
        });
        let (kind, message) = match (restart, record.last_exit) {
            (true, Some(exit)) => (
                EventKind::Restarted,
                format!(
                    "restarted (restart {}; last run {})",
                    record.restarts,
                    exit.describe()
                ),
            ),
            _ => (
                EventKind::Started,
                format!("started (service version {})", service.version),
            ),
        };
        replica_event(at_ms, replica, kind, message)
    }

    /// The driver adopted the running workload `workload_hash` of `replica` (an
    /// [`Action::Adopt`](super::Action::Adopt)), which has run since `since_ms`. Returns the `adopted` event.
    pub fn record_adopted(
        &mut self,
        replica: &ReplicaId,
        service: &Service,
        workload_hash: u64,
        since_ms: u64,
        at_ms: u64,
    ) -> Event {
        let record = self.record_for(replica, workload_hash, service);
        record.run = Some(RunRecord {
            service_version: service.version,
            started_at_ms: since_ms,
        });
        let message = format!(
            "adopted the running workload instead of restarting it (service version {})",
            service.version
        );
        replica_event(at_ms, replica, EventKind::Adopted, message)
    }

    /// The runtime reports that `workload_hash` of `replica` exited at `at_ms` (pass the
    /// runtime's time, the same as in [`ObservedState::Exited`](super::ObservedState::Exited), so that the planner does
    /// not count it twice). Counts the failure and fixes the backoff. Idempotent; an exit
    /// older than what the book knows is ignored. Returns whether the book changed.
    ///
    /// The exit is reported by the next [`plan`](super::plan), together with what it decides.
    pub fn record_exited(
        &mut self,
        replica: &ReplicaId,
        service: &Service,
        workload_hash: u64,
        code: Option<i32>,
        at_ms: u64,
    ) -> bool {
        let exit = ExitRecord {
            code,
            at_ms,
            start_failed: false,
        };
        self.fold_exit(replica, service, workload_hash, exit)
    }

    /// Starting `workload_hash` of `replica` failed at `at_ms` with `error` (spawn failed,
    /// image pull failed). Counts as a failed run, with backoff. Returns the `start_failed`
    /// event.
    pub fn record_start_failed(
        &mut self,
        replica: &ReplicaId,
        service: &Service,
        workload_hash: u64,
        at_ms: u64,
        error: &str,
    ) -> Event {
        let exit = ExitRecord {
            code: None,
            at_ms,
            start_failed: true,
        };
        self.fold_exit(replica, service, workload_hash, exit);
        let message = format!("could not start: {error}");
        replica_event(at_ms, replica, EventKind::StartFailed, message)
    }

    /// The driver stopped `workload_hash` of `replica` on request (an [`Action::Stop`](super::Action::Stop)).
    /// Not a failure: the history of that workload is dropped. Returns the `stopped` event.
    pub fn record_stopped(
        &mut self,
        replica: &ReplicaId,
        workload_hash: u64,
        reason: StopReason,
        at_ms: u64,
    ) -> Event {
        if self
            .records
            .get(replica)
            .is_some_and(|r| r.workload_hash == workload_hash)
        {
            self.records.remove(replica);
        }
        let message = match reason {
            StopReason::Removed => "stopped: no longer placed on this node",
            StopReason::Replaced => "stopped: replaced by a new workload",
            StopReason::SelfCheckLinkLost => {
                "stopped: the link to control is lost and the self-check knob is set"
            }
        };
        replica_event(at_ms, replica, EventKind::Stopped, message.to_owned())
    }

    /// The record of `replica` for `workload_hash`, starting a new history if the record is
    /// about another workload.
    pub(super) fn record_for(
        &mut self,
        replica: &ReplicaId,
        workload_hash: u64,
        service: &Service,
    ) -> &mut RestartRecord {
        let grace = service.spec.stop_grace_period_ms;
        let record = self
            .records
            .entry(replica.clone())
            .or_insert_with(|| RestartRecord::new(workload_hash, grace));
        if record.workload_hash != workload_hash {
            *record = RestartRecord::new(workload_hash, grace);
        }
        record.stop_grace_period_ms = grace;
        record
    }

    /// Folds an exit in once: counts the failure (or resets the count after a stable run) and
    /// fixes the backoff. Ignores an exit the book already has or that is older than what it
    /// knows. Returns whether the book changed.
    pub(super) fn fold_exit(
        &mut self,
        replica: &ReplicaId,
        service: &Service,
        workload_hash: u64,
        exit: ExitRecord,
    ) -> bool {
        let newer_other = self
            .records
            .get(replica)
            .is_some_and(|r| r.workload_hash != workload_hash && r.latest_ms() > exit.at_ms);
        if newer_other {
            return false;
        }
        let policy = &service.spec.restart;
        let record = self.record_for(replica, workload_hash, service);
        // With a run in progress, any exit from its start on is new (even in the same
        // millisecond as the previous exit); without one, the book has folded it already.
        let seen = record.run.is_none()
            && record
                .last_exit
                .is_some_and(|last| last.at_ms >= exit.at_ms);
        let earlier_run = record.run.is_some_and(|run| run.started_at_ms > exit.at_ms);
        if seen || earlier_run {
            return false;
        }
        let started = record.run.map(|run| run.started_at_ms);
        record.consecutive_failures = record.failures_if_ended(started, exit.at_ms, policy);
        let delay = backoff_delay_ms(policy, record.consecutive_failures);
        record.next_start_at_ms = Some(exit.at_ms.saturating_add(delay));
        record.last_exit = Some(exit);
        record.run = None;
        true
    }
}
