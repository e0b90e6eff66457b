//! Applying rollouts: a spec change starts one, each batch is moved, and the leader's verdict
//! on a watched batch ([`Op::RolloutBatch`](crate::command::Op::RolloutBatch)) moves the next,
//! pauses, rolls back or ends it. Pure, like the rest of [`ClusterState::apply`]: the leader
//! decides when a batch is judged ([`crate::rollout`]); what the verdict does is decided here,
//! from the spec's `update` config.

use warren_api::{FailureAction, ReplicaId, ServiceName, format_duration_ms};

use super::{Applied, ClusterState, Rollout, RolloutPhase};
use crate::command::{Effect, Rejection, RolloutVerdict};

impl ClusterState {
    /// After a spec change: replicas whose workload is unchanged move to the new version in
    /// place (the agent adopts them, no restart); if the workload changed, a rolling update
    /// starts with its first batch now.
    pub(super) fn after_spec_change(&mut self, name: &ServiceName, now: u64) {
        let record = self
            .services
            .get_mut(name)
            .expect("caller checked the service exists");
        let version = record.current.version;
        let hash = record.current.spec.workload_hash();
        let mut restart_needed = false;
        for replica in self.replicas.values_mut().filter(|r| &r.id.service == name) {
            if replica.workload_hash == hash {
                replica.service_version = version;
            } else {
                restart_needed = true;
            }
        }
        record.rollout =
            restart_needed.then(|| Rollout::start(version, RolloutPhase::Updating, now));
        self.reschedule_one(name, now);
        if restart_needed {
            self.advance_rollout(name, now);
        }
    }

    /// A step an older leader proposed by time alone: moves the next batch of an active
    /// rollout of `version`.
    pub(super) fn rollout_step(&mut self, name: &ServiceName, version: u64, now: u64) -> Applied {
        let record = self
            .services
            .get(name)
            .ok_or_else(|| Rejection::not_found(format!("service {name}")))?;
        match &record.rollout {
            Some(rollout) if rollout.version == version && rollout.is_active() => {
                self.advance_rollout(name, now);
                Ok(Effect::Done)
            }
            _ => Ok(Effect::None),
        }
    }

    /// The leader's verdict on the batch moved at `step_at_ms`: counts its failures and
    /// unreachable replicas, then does the spec's `failure_action` if failures passed
    /// `max_failure_ratio`, or moves the next batch. A verdict on another batch, version or a
    /// rollout no longer active changes nothing.
    pub(super) fn rollout_batch(&mut self, verdict: &RolloutVerdict, now: u64) -> Applied {
        let RolloutVerdict {
            name,
            version,
            step_at_ms,
            failures,
            unreachable,
        } = verdict;
        let record = self
            .services
            .get_mut(name)
            .ok_or_else(|| Rejection::not_found(format!("service {name}")))?;
        let update = record.current.spec.update;
        let has_previous = record.previous.is_some();
        let Some(rollout) = record
            .rollout
            .as_mut()
            .filter(|r| r.is_active() && r.version == *version && r.last_step_at_ms == *step_at_ms)
        else {
            return Ok(Effect::None);
        };
        rollout.failed = rollout.failed.saturating_add(count(failures.len()));
        rollout.unreachable = rollout.unreachable.saturating_add(count(unreachable.len()));
        if !unreachable.is_empty() {
            rollout.message = unreachable_message(unreachable);
        }
        let over = !failures.is_empty()
            && update
                .max_failure_ratio
                .exceeded_by(rollout.failed, rollout.updated);
        if !over {
            self.advance_rollout(name, now);
            return Ok(Effect::Done);
        }
        let why = format!(
            "{} (monitor {})",
            failures[0].reason,
            format_duration_ms(update.monitor_ms)
        );
        match (update.failure_action, rollout.phase) {
            (FailureAction::Continue, _) => {
                rollout.message = format!("continuing past {why}");
                self.advance_rollout(name, now);
            }
            (FailureAction::Rollback, RolloutPhase::Updating) if has_previous => {
                self.roll_back_after_failure(name, &why, now);
            }
            _ => {
                rollout.phase = RolloutPhase::Paused;
                rollout.batch.clear();
                rollout.message = format!("paused: {why}");
            }
        }
        Ok(Effect::Done)
    }

    /// `failure_action: rollback`: the previous spec comes back as a new version, rolled out
    /// as any change is (replicas never moved are adopted in place: only the failed batch
    /// restarts), its rollout marked as a rollback with the reason. A previous spec the state
    /// no longer accepts (it names a secret or volume since removed) pauses the rollout
    /// instead, saying why: the verdict itself is never refused.
    fn roll_back_after_failure(&mut self, name: &ServiceName, why: &str, now: u64) {
        let failed_version = self.services[name].current.version;
        if let Err(refused) = self.rollback(name, now) {
            let rollout = self
                .services
                .get_mut(name)
                .and_then(|r| r.rollout.as_mut())
                .expect("the caller found the rollout");
            rollout.phase = RolloutPhase::Paused;
            rollout.batch.clear();
            rollout.message = format!("paused: {why}; rollback refused: {}", refused.message);
            return;
        }
        let record = self
            .services
            .get_mut(name)
            .expect("rollback keeps the service");
        let message = format!("rolling back from version {failed_version}: {why}");
        match record.rollout.as_mut() {
            Some(rollout) if rollout.is_active() => {
                rollout.phase = RolloutPhase::RollingBack;
                rollout.message = message;
            }
            Some(rollout) => {
                rollout.phase = RolloutPhase::RolledBack;
                rollout.message = message.replacen("rolling back", "rolled back", 1);
            }
            None => {
                let mut rollout =
                    Rollout::start(record.current.version, RolloutPhase::RolledBack, now);
                rollout.message = message.replacen("rolling back", "rolled back", 1);
                record.rollout = Some(rollout);
            }
        }
    }

    /// Re-sending the spec of a paused rollout resumes it: the next batch goes now. Returns
    /// whether there was a paused rollout.
    pub(super) fn resume_rollout(&mut self, name: &ServiceName, now: u64) -> bool {
        let Some(rollout) = self
            .services
            .get_mut(name)
            .and_then(|r| r.rollout.as_mut())
            .filter(|r| r.phase == RolloutPhase::Paused)
        else {
            return false;
        };
        rollout.phase = RolloutPhase::Updating;
        rollout.message = "resumed".to_owned();
        self.advance_rollout(name, now);
        true
    }

    /// Moves up to `parallelism` outdated replicas to the current version and watches them;
    /// with none left, the rollout ends (`completed`, or `rolled_back` for a rollback).
    pub(super) fn advance_rollout(&mut self, name: &ServiceName, now: u64) {
        let record = self
            .services
            .get_mut(name)
            .expect("caller checked the service exists");
        let version = record.current.version;
        let hash = record.current.spec.workload_hash();
        let batch_size = record.current.spec.update.parallelism.max(1) as usize;
        let Some(rollout) = record.rollout.as_mut() else {
            return;
        };
        let batch: Vec<ReplicaId> = self
            .replicas
            .values_mut()
            .filter(|r| &r.id.service == name && r.service_version != version)
            .take(batch_size)
            .map(|replica| {
                replica.service_version = version;
                replica.workload_hash = hash;
                replica.id.clone()
            })
            .collect();
        rollout.last_step_at_ms = now;
        if batch.is_empty() {
            if rollout.phase == RolloutPhase::RollingBack {
                rollout.phase = RolloutPhase::RolledBack;
                rollout.message = rollout.message.replacen("rolling back", "rolled back", 1);
            } else {
                rollout.phase = RolloutPhase::Completed;
                rollout.message = match rollout.unreachable {
                    0 => String::new(),
                    n => format!("completed; {n} replica(s) pending: node unreachable"),
                };
            }
        }
        rollout.updated = rollout.updated.saturating_add(count(batch.len()));
        rollout.batch = batch;
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `pending: node unreachable (web.2)`: replicas passed over, or nothing.
fn unreachable_message(unreachable: &[ReplicaId]) -> String {
    if unreachable.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = unreachable.iter().map(ToString::to_string).collect();
    format!("pending: node unreachable ({})", ids.join(", "))
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
