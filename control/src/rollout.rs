//! The leader's pure judge of rollouts: from the watched batch's replicas, what their agents
//! report and the time, whether the batch passed, failed or must still be waited for.
//!
//! A new replica counts once its agent reports the new workload (`workload_hash`) running —
//! and healthy, when the service has a health check ([`crate::status::counts_as_running`], the
//! count `service ls` shows) — continuously for `update.monitor_ms`, measured on the leader's
//! clock from when it first saw that run ([`RunningSince`]). One reported failed, exited,
//! unable to start or unhealthy counts as a failure; one on an unreachable node is passed over.
//! The verdict ([`Op::RolloutBatch`]) goes when every replica has one and `update.delay_ms`
//! has passed since the last passed, or at once when failures pass `max_failure_ratio`.
//! What a verdict does is the state machine's (`state/rollout.rs`).

use std::collections::{BTreeMap, BTreeSet};

use warren_api::{NodeId, NodeState, Replica, ReplicaId, ReplicaStatus, TaskState, UpdateConfig};

use crate::command::{Op, RolloutFailure, RolloutVerdict};
use crate::state::{ClusterState, Rollout};
use crate::status::{AgentReport, counts_as_running};

/// What the leader knows of one replica of the watched batch.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The replica as the state has it (its new `workload_hash`).
    pub replica: &'a Replica,
    /// Its node's name, for messages.
    pub node_name: &'a str,
    /// Whether the state holds its node unreachable (link down past the grace).
    pub node_unreachable: bool,
    /// Its agent's last report of it, if any.
    pub report: Option<&'a ReplicaStatus>,
    /// Since when (leader clock) the leader has seen this run of the new workload running.
    pub running_since_ms: Option<u64>,
    /// Restarts the agent reported since the leader first saw the new workload: a crash loop
    /// whose failed moments fall between two reports still counts as a failure.
    pub restarts_seen: u32,
}

/// One replica's standing in its monitor window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not yet running the new workload, or not yet for `monitor_ms`.
    Waiting,
    /// Ran for its whole monitor window, which ended at this time.
    Passed(u64),
    /// Failed, in words (`exited with code 127`).
    Failed(String),
    /// Its node is unreachable.
    Unreachable,
}

/// Where one replica stands at `now`.
pub fn standing(observed: &Observed<'_>, checked: bool, monitor_ms: u64, now: u64) -> Standing {
    if observed.node_unreachable {
        return Standing::Unreachable;
    }
    let Some(report) = observed
        .report
        .filter(|r| r.workload_hash == Some(observed.replica.workload_hash))
    else {
        return Standing::Waiting;
    };
    let why = || {
        report
            .message
            .clone()
            .unwrap_or_else(|| report.state.as_str().to_owned())
    };
    match report.state {
        TaskState::Failed | TaskState::Completed => return Standing::Failed(why()),
        TaskState::Unhealthy => return Standing::Failed(format!("unhealthy: {}", why())),
        _ => {}
    }
    if checked && report.health == warren_api::HealthState::Unhealthy {
        return Standing::Failed("health check failing".to_owned());
    }
    if observed.restarts_seen > 0 {
        return Standing::Failed(format!(
            "restarted {} time(s) within its monitor window",
            observed.restarts_seen
        ));
    }
    match observed.running_since_ms {
        Some(since) if counts_as_running(report, checked) => {
            let ends = since.saturating_add(monitor_ms);
            if ends <= now {
                Standing::Passed(ends)
            } else {
                Standing::Waiting
            }
        }
        _ => Standing::Waiting,
    }
}

/// The verdict on `rollout`'s watched batch at `now`, or `None` while it must still be
/// watched. `batch` holds the batch's replicas still placed.
pub fn decide(
    name: &warren_api::ServiceName,
    rollout: &Rollout,
    update: &UpdateConfig,
    checked: bool,
    batch: &[Observed<'_>],
    now: u64,
) -> Option<Op> {
    if !rollout.is_active() {
        return None;
    }
    let mut failures = Vec::new();
    let mut unreachable = Vec::new();
    let mut waiting = false;
    let mut ready_at = rollout.last_step_at_ms;
    for observed in batch {
        match standing(observed, checked, update.monitor_ms, now) {
            Standing::Waiting => waiting = true,
            Standing::Passed(at) => ready_at = ready_at.max(at),
            Standing::Unreachable => unreachable.push(observed.replica.id.clone()),
            Standing::Failed(why) => failures.push(RolloutFailure {
                replica: observed.replica.id.clone(),
                reason: format!(
                    "{} on {} failed: {why}",
                    observed.replica.id, observed.node_name
                ),
            }),
        }
    }
    let failed = rollout.failed.saturating_add(count(failures.len()));
    let act_now = !failures.is_empty()
        && update
            .max_failure_ratio
            .exceeded_by(failed, rollout.updated);
    let done = !waiting && ready_at.saturating_add(update.delay_ms) <= now;
    (act_now || done).then(|| {
        Op::RolloutBatch(RolloutVerdict {
            name: name.clone(),
            version: rollout.version,
            step_at_ms: rollout.last_step_at_ms,
            failures,
            unreachable,
        })
    })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The leader's memory of when it first saw each watched replica's current run running (the
/// agent's `started_at_ms` names the run), so that a monitor window is measured on one clock.
/// Soft state: a new leader starts the windows again, which only delays a batch.
#[derive(Debug, Default)]
pub struct RunningSince {
    /// Each watched replica's current run (its `started_at_ms`) and when it was first seen
    /// running.
    seen: BTreeMap<ReplicaId, (Option<u64>, u64)>,
    /// Each watched replica's restart count when its new workload was first reported.
    restarts_at_first_report: BTreeMap<ReplicaId, u32>,
}

impl RunningSince {
    /// The verdicts due at `now` for every active rollout in `state`, given the agents'
    /// reports; remembers runs first seen now and forgets replicas no longer watched.
    pub fn judge(
        &mut self,
        state: &ClusterState,
        agents: &BTreeMap<NodeId, AgentReport>,
        now: u64,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut watched = BTreeSet::new();
        for record in state.services.values() {
            let Some(rollout) = record.rollout.as_ref().filter(|r| r.is_active()) else {
                continue;
            };
            let checked = record.current.spec.health.is_some();
            let mut batch = Vec::new();
            for id in &rollout.batch {
                let Some(replica) = state.replicas.get(id) else {
                    continue;
                };
                let node = state.nodes.get(&replica.node);
                let report = agents
                    .get(&replica.node)
                    .and_then(|a| a.replicas.iter().find(|s| &s.id == id));
                let (since, restarts_seen) = self.note(id, report, replica, checked, now);
                watched.insert(id.clone());
                batch.push(Observed {
                    replica,
                    node_name: node.map_or("an unknown node", |n| n.name.as_str()),
                    node_unreachable: node
                        .is_some_and(|n| matches!(n.state, NodeState::Unreachable { .. })),
                    report,
                    running_since_ms: since,
                    restarts_seen,
                });
            }
            let name = &record.current.spec.name;
            let update = &record.current.spec.update;
            ops.extend(decide(name, rollout, update, checked, &batch, now));
        }
        self.seen.retain(|id, _| watched.contains(id));
        self.restarts_at_first_report
            .retain(|id, _| watched.contains(id));
        ops
    }

    /// Since when the replica's current run of its new workload has been seen running, and
    /// how often it restarted since its new workload was first reported.
    fn note(
        &mut self,
        id: &ReplicaId,
        report: Option<&ReplicaStatus>,
        replica: &Replica,
        checked: bool,
        now: u64,
    ) -> (Option<u64>, u32) {
        let new = report.filter(|r| r.workload_hash == Some(replica.workload_hash));
        let restarts_seen = new.map_or(0, |r| {
            let first = *self
                .restarts_at_first_report
                .entry(id.clone())
                .or_insert(r.restarts);
            r.restarts.saturating_sub(first)
        });
        let Some(report) = new.filter(|r| counts_as_running(r, checked)) else {
            self.seen.remove(id);
            return (None, restarts_seen);
        };
        let entry = self
            .seen
            .entry(id.clone())
            .or_insert((report.started_at_ms, now));
        if entry.0 != report.started_at_ms {
            *entry = (report.started_at_ms, now);
        }
        (Some(entry.1), restarts_seen)
    }
}

#[cfg(test)]
mod tests;
