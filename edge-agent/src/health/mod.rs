//! Health checks: HTTP, TCP and exec probes against running workloads, and the rules that turn
//! their outcomes into a [`HealthState`].
//!
//! Split like the planner: [`HealthTracker`] is the sans-IO core — it takes `(at_ms, outcome)`
//! and returns the new state and whether it changed; it reads no clock and runs no probe.
//! [`monitor::HealthMonitor`] is the thin async driver the reconcile loop owns: one task per
//! checked replica runs the probes of [`probe`] and sends raw outcomes back over a bounded
//! channel; the monitor folds them into the trackers on the reconcile loop's own task, so
//! data flows one way (probe → tracker → planner) and nothing is shared under a lock.
//!
//! # Rules
//! - A tracker belongs to one run of one replica (its workload's start time and hash). A new
//!   run, or a changed check, starts a new tracker in [`HealthState::Unknown`].
//! - A pass makes the replica [`HealthState::Healthy`] and resets the failure count.
//! - A failure whose probe began within `start_period_ms` of the workload's start is ignored:
//!   it neither counts nor resets anything.
//! - Any other failure counts; `retries` of them in a row make the replica
//!   [`HealthState::Unhealthy`]. Fewer leave the state as it was (a healthy replica stays
//!   healthy through a single blip).
//! - The planner restarts an unhealthy replica under its restart policy; the restarted run
//!   gets a fresh tracker.
//!
//! Must never: block the reconcile loop on a probe; leave a probe's process running past its
//! timeout; keep more than [`monitor::MAX_PROBES_CONCURRENT`] probes in flight.

pub mod monitor;
pub mod probe;

use warren_api::HealthState;
use warren_api::service::HealthCheck;

pub use monitor::{HealthMonitor, HealthTarget};
pub use probe::ProbeOutcome;

/// What changed when a probe outcome was folded in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChange {
    /// The state before.
    pub from: HealthState,
    /// The state now.
    pub to: HealthState,
    /// One line for the `HealthChanged` event: what made the state change.
    pub message: String,
}

/// The health of one run of one replica, decided from probe outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthTracker {
    /// Counted failures in a row that make the replica unhealthy; at least 1.
    retries: u32,
    /// Failures of probes that began before this time (unix millis) do not count.
    start_period_ends_ms: u64,
    /// Counted failures since the last pass.
    failures_in_a_row: u32,
    state: HealthState,
    /// The reason of the last probe failure, while the latest probe failed.
    last_failure: Option<String>,
}

impl HealthTracker {
    /// A tracker for a run that started at `started_at_ms` (unix millis), checked by `check`.
    /// A `retries` of 0 (never valid in a spec) is taken as 1.
    pub fn new(check: &HealthCheck, started_at_ms: u64) -> Self {
        HealthTracker {
            retries: check.retries.max(1),
            start_period_ends_ms: started_at_ms.saturating_add(check.start_period_ms),
            failures_in_a_row: 0,
            state: HealthState::Unknown,
            last_failure: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Why the latest probe failed, while it did: `2 of 3 failures: connect …: refused`, or
    /// `in start period: …` for a failure that did not count.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Folds in the outcome of a probe that began at `at_ms`; returns the change, if the
    /// state changed.
    pub fn observe(&mut self, at_ms: u64, outcome: &ProbeOutcome) -> Option<HealthChange> {
        let from = self.state;
        match outcome {
            ProbeOutcome::Pass => {
                self.failures_in_a_row = 0;
                self.last_failure = None;
                self.state = HealthState::Healthy;
            }
            ProbeOutcome::Fail(reason) if at_ms < self.start_period_ends_ms => {
                self.last_failure = Some(format!("in start period: {reason}"));
            }
            ProbeOutcome::Fail(reason) => {
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                self.last_failure = Some(format!(
                    "{} of {} failures: {reason}",
                    self.failures_in_a_row.min(self.retries),
                    self.retries
                ));
                if self.failures_in_a_row >= self.retries {
                    self.state = HealthState::Unhealthy;
                }
            }
        }
        if from == self.state {
            return None;
        }
        let message = match (self.state, outcome) {
            (HealthState::Unhealthy, ProbeOutcome::Fail(reason)) => format!(
                "health check failed {} times in a row: {reason}",
                self.failures_in_a_row
            ),
            (HealthState::Healthy, _) if from == HealthState::Unhealthy => {
                "health check passes again".to_owned()
            }
            _ => "health check passes".to_owned(),
        };
        Some(HealthChange {
            from,
            to: self.state,
            message,
        })
    }
}

#[cfg(test)]
mod tests;
