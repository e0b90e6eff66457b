//! The leader's judge of a watched batch, table-driven: reports and time in, verdict out.

use warren_api::{
    DesiredState, FailureAction, FailureRatio, HealthState, NodeId, Replica, ReplicaId,
    ReplicaStatus, ServiceName, TaskState, UpdateConfig,
};

use super::*;
use crate::state::{Rollout, RolloutPhase};

const HASH: u64 = 0xabc;
const STEP_MS: u64 = 10_000;

fn replica(slot: u32) -> Replica {
    Replica {
        id: format!("web.{slot}").parse::<ReplicaId>().unwrap(),
        node: NodeId(1),
        service_version: 2,
        workload_hash: HASH,
        desired: DesiredState::Running,
    }
}

fn report(replica: &Replica, state: TaskState, hash: u64, message: Option<&str>) -> ReplicaStatus {
    ReplicaStatus {
        id: replica.id.clone(),
        node: replica.node,
        state,
        pid: None,
        started_at_ms: Some(1),
        exit_code: None,
        restarts: 0,
        health: HealthState::Unknown,
        message: message.map(str::to_owned),
        updated_at_ms: 1,
        workload_hash: Some(hash),
    }
}

fn rollout(updated: u32) -> Rollout {
    let mut rollout = Rollout::start(2, RolloutPhase::Updating, STEP_MS);
    rollout.updated = updated;
    rollout
}

fn update(monitor_ms: u64, delay_ms: u64, ratio_per_mille: u16) -> UpdateConfig {
    UpdateConfig {
        parallelism: 1,
        delay_ms,
        monitor_ms,
        failure_action: FailureAction::Pause,
        max_failure_ratio: FailureRatio::from_per_mille(ratio_per_mille).unwrap(),
    }
}

/// What `decide` says of one replica: `None` (wait), or the verdict's failures and unreachable
/// counts.
fn check(
    status: Option<ReplicaStatus>,
    running_since_ms: Option<u64>,
    unreachable: bool,
    update: UpdateConfig,
    now: u64,
    expected: Option<(Vec<&str>, usize)>,
) {
    let replica = replica(0);
    let observed = Observed {
        replica: &replica,
        node_name: "edge-1",
        node_unreachable: unreachable,
        report: status.as_ref(),
        running_since_ms,
        restarts_seen: 0,
    };
    let name = ServiceName::new("web").unwrap();
    let verdict = decide(&name, &rollout(1), &update, false, &[observed], now);
    let got = verdict.map(|op| match op {
        Op::RolloutBatch(RolloutVerdict {
            failures,
            unreachable,
            step_at_ms,
            ..
        }) => {
            assert_eq!(step_at_ms, STEP_MS);
            (
                failures.into_iter().map(|f| f.reason).collect::<Vec<_>>(),
                unreachable.len(),
            )
        }
        other => panic!("{other:?}"),
    });
    let expected = expected.map(|(f, u)| (f.into_iter().map(str::to_owned).collect(), u));
    assert_eq!(got, expected);
}

#[test]
fn a_batch_passes_only_after_its_monitor_window_and_the_delay() {
    let r = replica(0);
    let running = || Some(report(&r, TaskState::Running, HASH, None));
    // Running since 11 s, monitor 5 s, delay 2 s: passes at 18 s.
    check(
        running(),
        Some(11_000),
        false,
        update(5_000, 2_000, 0),
        15_999,
        None,
    );
    check(
        running(),
        Some(11_000),
        false,
        update(5_000, 2_000, 0),
        17_999,
        None,
    );
    check(
        running(),
        Some(11_000),
        false,
        update(5_000, 2_000, 0),
        18_000,
        Some((vec![], 0)),
    );
    // The old workload still running is not the new one.
    let old = Some(report(&r, TaskState::Running, 0x1, None));
    check(old, Some(11_000), false, update(0, 0, 0), 60_000, None);
    // Never reported, or reported but not seen running yet: wait.
    check(None, None, false, update(0, 0, 0), 60_000, None);
    let starting = Some(report(&r, TaskState::Starting, HASH, None));
    check(starting, None, false, update(0, 0, 0), 60_000, None);
}

#[test]
fn a_failure_of_the_new_workload_is_judged_at_once() {
    let r = replica(0);
    let failed = Some(report(
        &r,
        TaskState::Failed,
        HASH,
        Some("could not start: No such file or directory"),
    ));
    check(
        failed,
        None,
        false,
        update(5_000, 60_000, 0),
        STEP_MS + 1,
        Some((
            vec!["web.0 on edge-1 failed: could not start: No such file or directory"],
            0,
        )),
    );
    let unhealthy = Some(report(&r, TaskState::Unhealthy, HASH, Some("HTTP 503")));
    check(
        unhealthy,
        None,
        false,
        update(5_000, 0, 0),
        STEP_MS + 1,
        Some((vec!["web.0 on edge-1 failed: unhealthy: HTTP 503"], 0)),
    );
    // The old workload's failure is not the new one's.
    let old = Some(report(&r, TaskState::Failed, 0x1, Some("exit code 1")));
    check(old, None, false, update(5_000, 0, 0), STEP_MS + 1, None);
}

#[test]
fn a_failure_within_the_ratio_waits_for_the_rest_of_the_batch() {
    let (a, b) = (replica(0), replica(1));
    let failed = report(&a, TaskState::Failed, HASH, Some("exit code 1"));
    let observed = |since| {
        vec![
            Observed {
                replica: &a,
                node_name: "edge-1",
                node_unreachable: false,
                report: Some(&failed),
                running_since_ms: None,
                restarts_seen: 0,
            },
            Observed {
                replica: &b,
                node_name: "edge-1",
                node_unreachable: false,
                report: None,
                running_since_ms: since,
                restarts_seen: 0,
            },
        ]
    };
    let name = ServiceName::new("web").unwrap();
    // 1 failure of 4 updated, 50% allowed: not yet; the other replica still waits.
    let update = update(1_000, 0, 500);
    assert!(decide(&name, &rollout(4), &update, false, &observed(None), 20_000).is_none());
    // 1 of 1 updated is over 50%: at once.
    assert!(decide(&name, &rollout(1), &update, false, &observed(None), 20_000).is_some());
}

#[test]
fn an_unreachable_node_does_not_block_the_batch() {
    check(
        None,
        None,
        true,
        update(5_000, 0, 0),
        STEP_MS,
        Some((vec![], 1)),
    );
}

#[test]
fn the_running_window_restarts_with_a_new_run() {
    let mut seen = RunningSince::default();
    let r = replica(0);
    let mut status = report(&r, TaskState::Running, HASH, None);
    assert_eq!(
        seen.note(&r.id, Some(&status), &r, false, 100),
        (Some(100), 0)
    );
    assert_eq!(
        seen.note(&r.id, Some(&status), &r, false, 200),
        (Some(100), 0)
    );
    status.started_at_ms = Some(2);
    status.restarts = 1;
    assert_eq!(
        seen.note(&r.id, Some(&status), &r, false, 300),
        (Some(300), 1)
    );
    status.state = TaskState::Failed;
    assert_eq!(seen.note(&r.id, Some(&status), &r, false, 400), (None, 1));
}

/// A replica that restarted since the leader first saw its new workload failed, even if every
/// report caught it running.
#[test]
fn a_restart_within_the_window_is_a_failure() {
    let replica = replica(0);
    let status = report(&replica, TaskState::Running, HASH, None);
    let observed = Observed {
        replica: &replica,
        node_name: "edge-1",
        node_unreachable: false,
        report: Some(&status),
        running_since_ms: Some(STEP_MS),
        restarts_seen: 2,
    };
    assert_eq!(
        standing(&observed, false, 5_000, STEP_MS + 1),
        Standing::Failed("restarted 2 time(s) within its monitor window".to_owned())
    );
}

proptest::proptest! {
    /// The verdict goes exactly when the batch is over (nobody waiting, delay passed) or its
    /// failures pass the ratio; it counts each failure and unreachable replica once.
    #[test]
    fn the_verdict_goes_exactly_when_due(
        kinds in proptest::collection::vec(0u8..4, 1..6),
        ratio_per_mille in 0u16..=1000,
        earlier_failures in 0u32..3,
        delay_ms in 0u64..3_000,
        after_ms in 0u64..10_000,
    ) {
        let monitor_ms = 1_000;
        let now = STEP_MS + after_ms;
        let mut rollout = rollout(u32::try_from(kinds.len()).unwrap() + earlier_failures);
        rollout.failed = earlier_failures;
        // Each replica's kind: 0 waiting (never reported), 1 running since the step, 2 failed,
        // 3 on an unreachable node.
        let replicas: Vec<Replica> = (0..kinds.len())
            .map(|slot| replica(u32::try_from(slot).unwrap()))
            .collect();
        let statuses: Vec<ReplicaStatus> = replicas
            .iter()
            .zip(&kinds)
            .map(|(r, kind)| {
                let state = if *kind == 2 { TaskState::Failed } else { TaskState::Running };
                report(r, state, HASH, Some("exit code 1"))
            })
            .collect();
        let observed: Vec<Observed<'_>> = replicas
            .iter()
            .zip(&statuses)
            .zip(&kinds)
            .map(|((replica, status), kind)| Observed {
                replica,
                node_name: "edge-1",
                node_unreachable: *kind == 3,
                report: (*kind != 0).then_some(status),
                running_since_ms: Some(STEP_MS),
                restarts_seen: 0,
            })
            .collect();
        let update = update(monitor_ms, delay_ms, ratio_per_mille);
        let name = ServiceName::new("web").unwrap();
        let verdict = decide(&name, &rollout, &update, false, &observed, now);

        let failed = kinds.iter().filter(|k| **k == 2).count() as u32;
        let unreachable = kinds.iter().filter(|k| **k == 3).count();
        let passed_all_by = STEP_MS + monitor_ms;
        let waiting = kinds.contains(&0) || (kinds.contains(&1) && now < passed_all_by);
        let ready_at = if kinds.contains(&1) { passed_all_by } else { STEP_MS };
        let over = failed > 0
            && update.max_failure_ratio.exceeded_by(earlier_failures + failed, rollout.updated);
        let due = over || (!waiting && ready_at + delay_ms <= now);
        proptest::prop_assert_eq!(verdict.is_some(), due);
        if let Some(Op::RolloutBatch(verdict)) = verdict {
            proptest::prop_assert_eq!(verdict.failures.len() as u32, failed);
            proptest::prop_assert_eq!(verdict.unreachable.len(), unreachable);
        }
    }
}
