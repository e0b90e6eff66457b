//! The state machine's side of rollouts: what each verdict does, by `failure_action`.

use std::collections::BTreeMap;

use warren_api::{
    Availability, FailureAction, FailureRatio, Node, NodeAddresses, NodeId, NodeRole, NodeState,
    ProcessSpec, ReplicaId, Revision, ServiceMode, ServiceName, ServiceSpec, Workload,
};

use crate::command::{Command, Op, RolloutFailure, RolloutVerdict};
use crate::state::{ClusterState, RolloutPhase};

struct Log {
    state: ClusterState,
    index: u64,
    now: u64,
}

impl Log {
    /// One agent node and `web` (3 replicas, one at a time) at version 1, then version 2 with
    /// another command: its first batch moved.
    fn updating(action: FailureAction, ratio_per_mille: u16) -> Log {
        let mut v1 = ServiceSpec::new(
            web(),
            Workload::Process(ProcessSpec {
                command: vec!["sleep".into(), "100".into()],
                working_dir: None,
            }),
        );
        v1.mode = ServiceMode::Replicated { replicas: 3 };
        v1.update.failure_action = action;
        v1.update.max_failure_ratio = FailureRatio::from_per_mille(ratio_per_mille).unwrap();
        let mut v2 = v1.clone();
        v2.workload = Workload::Process(ProcessSpec {
            command: vec!["/nonexistent".into()],
            working_dir: None,
        });
        Log::with(&[], v1, v2)
    }

    /// One agent node, `before` applied (after `ops`), then `after`.
    fn with(ops: &[Op], before: ServiceSpec, after: ServiceSpec) -> Log {
        let mut log = Log {
            state: ClusterState::default(),
            index: 0,
            now: 1_000,
        };
        log.apply(Op::RegisterNode(Node {
            id: NodeId(1),
            name: "edge-1".into(),
            role: NodeRole::Agent,
            site: "a".into(),
            labels: BTreeMap::new(),
            availability: Availability::Active,
            state: NodeState::Ready,
            cert_serial: Some("s1".into()),
            addresses: NodeAddresses::default(),
            joined_at_ms: 0,
        }));
        for op in ops {
            log.apply(op.clone());
        }
        log.apply(Op::PutService(before));
        log.apply(Op::PutService(after));
        log
    }

    fn apply(&mut self, op: Op) {
        self.index += 1;
        self.now += 10;
        let command = Command {
            at_ms: self.now,
            op,
        };
        self.state
            .apply(Revision(self.index), &command)
            .result
            .expect("applied");
    }

    fn rollout(&self) -> &crate::state::Rollout {
        self.state.services[&web()]
            .rollout
            .as_ref()
            .expect("a rollout")
    }

    fn at_version(&self, version: u64) -> usize {
        self.state
            .replicas
            .values()
            .filter(|r| r.service_version == version)
            .count()
    }

    /// The verdict on the watched batch: its first replica failed (`failed`) or all passed.
    fn verdict(&mut self, failed: bool) {
        let rollout = self.rollout().clone();
        let failures = if failed {
            vec![RolloutFailure {
                replica: rollout.batch[0].clone(),
                reason: format!(
                    "{} on edge-1 failed: exited with code 127",
                    rollout.batch[0]
                ),
            }]
        } else {
            Vec::new()
        };
        self.apply(Op::RolloutBatch(RolloutVerdict {
            name: web(),
            version: rollout.version,
            step_at_ms: rollout.last_step_at_ms,
            failures,
            unreachable: Vec::new(),
        }));
    }
}

fn web() -> ServiceName {
    ServiceName::new("web").unwrap()
}

/// A good update moves one batch per passing verdict and completes after the last is watched.
#[test]
fn passing_verdicts_move_each_batch_and_complete() {
    let mut log = Log::updating(FailureAction::Pause, 0);
    assert_eq!((log.at_version(2), log.rollout().updated), (1, 1));
    log.verdict(false);
    log.verdict(false);
    assert_eq!(log.at_version(2), 3);
    assert_eq!(
        log.rollout().phase,
        RolloutPhase::Updating,
        "last batch watched"
    );
    log.verdict(false);
    assert_eq!(log.rollout().phase, RolloutPhase::Completed);
    assert_eq!((log.rollout().updated, log.rollout().failed), (3, 0));
}

/// `pause`: the first failure stops the rollout with the reason; nothing else moves, a stale
/// verdict changes nothing, and re-sending the spec resumes it.
#[test]
fn a_failure_pauses_with_the_reason_and_the_same_spec_resumes() {
    let mut log = Log::updating(FailureAction::Pause, 0);
    let stale = log.rollout().last_step_at_ms;
    log.verdict(true);
    let rollout = log.rollout().clone();
    assert_eq!(rollout.phase, RolloutPhase::Paused);
    assert_eq!(
        rollout.message,
        "paused: web.1 on edge-1 failed: exited with code 127 (monitor 5s)"
    );
    assert_eq!((log.at_version(2), rollout.failed), (1, 1));
    log.apply(Op::RolloutBatch(RolloutVerdict {
        name: web(),
        version: 2,
        step_at_ms: stale,
        failures: Vec::new(),
        unreachable: Vec::new(),
    }));
    assert_eq!(log.at_version(2), 1, "a paused rollout moves nothing");
    let spec = log.state.services[&web()].current.spec.clone();
    log.apply(Op::PutService(spec));
    assert_eq!(log.rollout().phase, RolloutPhase::Updating);
    assert_eq!(log.at_version(2), 2, "resumed: the next batch goes");
}

/// `rollback`: the previous spec comes back as version 3; only the failed batch restarts
/// (the untouched replicas are adopted in place), and the rollback itself is watched.
#[test]
fn a_failure_rolls_back_and_only_the_failed_batch_restarts() {
    let mut log = Log::updating(FailureAction::Rollback, 0);
    let v1_hash = log.state.services[&web()]
        .previous
        .as_ref()
        .unwrap()
        .workload_hash();
    let untouched: Vec<ReplicaId> = log
        .state
        .replicas
        .values()
        .filter(|r| r.service_version == 1)
        .map(|r| r.id.clone())
        .collect();
    log.verdict(true);
    let record = &log.state.services[&web()];
    assert_eq!(record.current.version, 3);
    assert_eq!(record.current.spec.workload_hash(), v1_hash);
    let rollout = log.rollout().clone();
    assert_eq!(rollout.phase, RolloutPhase::RollingBack);
    assert!(
        rollout.message.starts_with(
            "rolling back from version 2: web.1 on edge-1 failed: exited with code 127"
        ),
        "{}",
        rollout.message
    );
    assert_eq!(rollout.batch.len(), 1, "only the failed replica moves back");
    assert!(!untouched.contains(&rollout.batch[0]));
    assert!(
        log.state
            .replicas
            .values()
            .all(|r| r.workload_hash == v1_hash)
    );
    log.verdict(false);
    assert_eq!(log.rollout().phase, RolloutPhase::RolledBack);
    assert!(
        log.rollout()
            .message
            .starts_with("rolled back from version 2")
    );
}

/// `continue`, and a ratio that allows the failures so far: the rollout goes on.
#[test]
fn continue_and_an_allowed_ratio_go_on() {
    let mut log = Log::updating(FailureAction::Continue, 0);
    log.verdict(true);
    assert_eq!(log.rollout().phase, RolloutPhase::Updating);
    assert_eq!((log.at_version(2), log.rollout().failed), (2, 1));

    // Half may fail: 1 of 1 is over, so pause; with 1 of 2 it is within.
    let mut log = Log::updating(FailureAction::Pause, 500);
    log.verdict(false);
    log.verdict(true);
    assert_eq!(log.rollout().phase, RolloutPhase::Updating);
    assert_eq!(log.rollout().failed, 1);
}

/// A verdict that passes over an unreachable node's replica says so and moves on.
#[test]
fn unreachable_replicas_are_passed_over_and_said() {
    let mut log = Log::updating(FailureAction::Pause, 0);
    let rollout = log.rollout().clone();
    log.apply(Op::RolloutBatch(RolloutVerdict {
        name: web(),
        version: 2,
        step_at_ms: rollout.last_step_at_ms,
        failures: Vec::new(),
        unreachable: rollout.batch.clone(),
    }));
    assert_eq!(log.at_version(2), 2);
    assert_eq!(log.rollout().unreachable, 1);
    assert_eq!(
        log.rollout().message,
        format!("pending: node unreachable ({})", rollout.batch[0])
    );
}

/// `rollback` to a previous spec the state no longer accepts (its volume was removed since):
/// the rollout pauses and says why; the verdict itself is applied.
#[test]
fn a_rollback_the_state_refuses_pauses_instead() {
    let volume = warren_api::Volume {
        name: "data".into(),
        driver: warren_api::VolumeDriver::Local,
        size_limit_bytes: None,
        labels: BTreeMap::new(),
    };
    let mut v1 = ServiceSpec::new(
        web(),
        Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "100".into()],
            working_dir: None,
        }),
    );
    v1.mode = ServiceMode::Replicated { replicas: 2 };
    v1.update.failure_action = FailureAction::Rollback;
    v1.volumes = vec![warren_api::VolumeMount {
        volume: "data".into(),
        target: "data".into(),
        read_only: false,
    }];
    let mut v2 = v1.clone();
    v2.volumes.clear();
    v2.workload = Workload::Process(ProcessSpec {
        command: vec!["/nonexistent".into()],
        working_dir: None,
    });
    let mut log = Log::with(&[Op::PutVolume(volume)], v1, v2);
    log.apply(Op::RemoveVolume("data".into()));
    log.verdict(true);
    let rollout = log.rollout();
    assert_eq!(rollout.phase, RolloutPhase::Paused);
    assert!(
        rollout
            .message
            .ends_with("; rollback refused: volumes[0].volume: volume data does not exist"),
        "{}",
        rollout.message
    );
    assert_eq!(log.state.services[&web()].current.version, 2);
}
