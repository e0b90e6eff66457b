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
//! timeout; keep more than [`monitor::PROBES_CONCURRENT_MAX`] probes in flight.

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
mod tests {
    use proptest::prelude::*;
    use warren_api::service::Probe;

    use super::*;

    fn check_spec(retries: u32, start_period_ms: u64) -> HealthCheck {
        let mut check = HealthCheck::new(Probe::Tcp { port: 80 });
        check.retries = retries;
        check.start_period_ms = start_period_ms;
        check
    }

    /// Feeds `steps` (`p@ms` for a pass, `f@ms` for a failure, probes of a run started at 0)
    /// to a tracker and compares the states after each step with `expected`; a state that
    /// changed is marked with `!`.
    fn check(retries: u32, start_period_ms: u64, steps: &str, expected: &str) {
        let mut tracker = HealthTracker::new(&check_spec(retries, start_period_ms), 0);
        let mut seen = Vec::new();
        for step in steps.split_whitespace() {
            let (kind, at) = step.split_once('@').expect("step is kind@ms");
            let at_ms: u64 = at.parse().expect("step time is a number");
            let outcome = match kind {
                "p" => ProbeOutcome::Pass,
                "f" => ProbeOutcome::Fail("refused".to_owned()),
                other => panic!("unknown step kind {other}"),
            };
            let change = tracker.observe(at_ms, &outcome);
            assert_eq!(
                change.is_some(),
                change.as_ref().is_some_and(|c| c.from != c.to)
            );
            let mark = if change.is_some() { "!" } else { "" };
            seen.push(format!("{}{mark}", tracker.state().as_str()));
        }
        assert_eq!(seen.join(" "), expected, "steps: {steps}");
    }

    #[test]
    fn rules() {
        // Consecutive failures reach `retries`.
        check(3, 0, "f@1 f@2 f@3", "unknown unknown unhealthy!");
        check(1, 0, "f@1", "unhealthy!");
        // A pass resets the count.
        check(
            3,
            0,
            "f@1 f@2 p@3 f@4 f@5",
            "unknown unknown healthy! healthy healthy",
        );
        check(2, 0, "p@1 f@2 f@3", "healthy! healthy unhealthy!");
        // Recovery.
        check(
            2,
            0,
            "f@1 f@2 f@3 p@4",
            "unknown unhealthy! unhealthy healthy!",
        );
        // Failures during the start period do not count, a pass during it does.
        check(1, 100, "f@0 f@99 f@100", "unknown unknown unhealthy!");
        check(
            2,
            100,
            "f@50 p@60 f@70 f@100",
            "unknown healthy! healthy healthy",
        );
        check(2, 100, "f@50 f@100 f@200", "unknown unknown unhealthy!");
        // Retries of 0 count as 1.
        check(0, 0, "f@1", "unhealthy!");
    }

    #[test]
    fn messages_and_failure_detail() {
        let mut tracker = HealthTracker::new(&check_spec(2, 10), 0);
        let fail = ProbeOutcome::Fail("connect 127.0.0.1:80: refused".to_owned());
        assert_eq!(tracker.observe(5, &fail), None);
        assert_eq!(
            tracker.last_failure(),
            Some("in start period: connect 127.0.0.1:80: refused")
        );
        assert_eq!(tracker.observe(10, &fail), None);
        assert_eq!(
            tracker.last_failure(),
            Some("1 of 2 failures: connect 127.0.0.1:80: refused")
        );
        let change = tracker.observe(20, &fail).expect("unhealthy now");
        assert_eq!(change.from, HealthState::Unknown);
        assert_eq!(change.to, HealthState::Unhealthy);
        assert_eq!(
            change.message,
            "health check failed 2 times in a row: connect 127.0.0.1:80: refused"
        );
        assert_eq!(tracker.observe(30, &fail), None);
        assert_eq!(
            tracker.last_failure(),
            Some("2 of 2 failures: connect 127.0.0.1:80: refused")
        );
        let change = tracker.observe(40, &ProbeOutcome::Pass).expect("healthy");
        assert_eq!(change.message, "health check passes again");
        assert_eq!(tracker.last_failure(), None);
    }

    /// What the state should be after `outcomes` (start time, pass?), by the rules written out
    /// plainly: unhealthy with `retries` counted failures since the last pass, else healthy
    /// once any probe passed, else unknown.
    fn model(retries: u32, start_period_ms: u64, outcomes: &[(u64, bool)]) -> HealthState {
        let last_pass = outcomes.iter().rposition(|(_, pass)| *pass);
        let after = last_pass.map_or(0, |i| i + 1);
        let counted = outcomes[after..]
            .iter()
            .filter(|(at, pass)| !pass && *at >= start_period_ms)
            .count();
        if counted >= retries.max(1) as usize {
            HealthState::Unhealthy
        } else if last_pass.is_some() {
            HealthState::Healthy
        } else {
            HealthState::Unknown
        }
    }

    proptest! {
        /// The tracker agrees with the model after every step, and reports a change exactly
        /// when the model's state differs from the step before.
        #[test]
        fn tracker_follows_the_rules(
            retries in 0_u32..5,
            start_period_ms in 0_u64..50,
            deltas in proptest::collection::vec((0_u64..20, any::<bool>()), 0..40),
        ) {
            let mut tracker = HealthTracker::new(&check_spec(retries, start_period_ms), 0);
            let mut outcomes = Vec::new();
            let mut at_ms = 0;
            let mut before = HealthState::Unknown;
            for (delta, pass) in deltas {
                at_ms += delta;
                outcomes.push((at_ms, pass));
                let outcome = if pass {
                    ProbeOutcome::Pass
                } else {
                    ProbeOutcome::Fail("no".to_owned())
                };
                let change = tracker.observe(at_ms, &outcome);
                let expected = model(retries, start_period_ms, &outcomes);
                prop_assert_eq!(tracker.state(), expected);
                prop_assert_eq!(change.is_some(), expected != before);
                if let Some(change) = change {
                    prop_assert_eq!((change.from, change.to), (before, expected));
                }
                before = expected;
            }
        }
    }
}
