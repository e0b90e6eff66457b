//! The health tracker's rules (consecutive failures, start period, messages), checked case by case and against a model with proptest.

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
