//! Work on the data dir of an agent that is not running.
//!
//! [`stop_workloads`] stops every workload an agent recorded, as if the box were powered off:
//! the cached view, the restart history and the node's place in the cluster stay, so the next
//! `Agent::run` starts the workloads again from the cache. `warren dev` uses it so that
//! stopping the dev cluster leaves no process behind. It never runs while an agent does: the
//! cache lock says so.

use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};
use warren_api::service::DEFAULT_STOP_GRACE_PERIOD_MS;
use warren_api::{ReplicaId, TaskState};
use warren_transport::write_atomic;

use crate::agent::{AgentError, AgentOptions, RECORD_PREFIX, STATUS_FILE};
use crate::cache::Cache;
use crate::runtime::WorkloadRecord;
use warren_api::clock::unix_now_ms;

/// One workload [`stop_workloads`] dealt with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoppedWorkload {
    /// The replica.
    pub replica: ReplicaId,
    /// Its process id.
    pub pid: Option<u32>,
    /// Whether it was still running (and was stopped) or had already gone.
    pub was_running: bool,
}

/// Stops every workload recorded in the (stopped) agent's `data_dir` with the node's runtime:
/// SIGTERM, SIGKILL after its service's stop grace period. Forgets the records and marks the
/// replicas stopped in `status.json`; keeps the view, so the next run starts them again.
///
/// # Errors
/// [`AgentError::Cache`] when the cache cannot be opened (`Locked`: the agent still runs);
/// [`AgentError::Runtime`] when a workload cannot be signalled. Workloads stopped before the
/// error stay stopped.
pub async fn stop_workloads(
    data_dir: &Path,
    options: &AgentOptions,
) -> Result<Vec<StoppedWorkload>, AgentError> {
    let cache = Cache::open(data_dir, options.cache)?;
    let mut process = options.process.clone();
    if process.workloads_dir.is_none() {
        process.workloads_dir = crate::agent::load_identity(data_dir)
            .ok()
            .and_then(|identity| identity.workloads_dir);
    }
    let choice = crate::agent::runtime_choice::choose(data_dir, options)?;
    let runtime = crate::agent::runtime_choice::build(
        data_dir,
        &choice,
        &process,
        options.container_logger.as_deref(),
    )?;
    let view = cache.view()?;
    let grace_of = |replica: &ReplicaId| {
        let grace_ms = view
            .as_ref()
            .and_then(|v| v.services.get(&replica.service))
            .map_or(DEFAULT_STOP_GRACE_PERIOD_MS, |s| {
                s.spec.stop_grace_period_ms
            });
        Duration::from_millis(grace_ms)
    };
    let mut stopped = Vec::new();
    for key in cache.keys_with_prefix(RECORD_PREFIX) {
        let record = match cache.get::<WorkloadRecord>(&key) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(error) => {
                warn!(error = %error, key, "dropping an unreadable workload record");
                cache.remove(&key)?;
                continue;
            }
        };
        let was_running = match runtime.adopt(&record).await {
            Some(handle) => {
                runtime.stop(&handle, grace_of(&record.replica)).await?;
                info!(replica = %record.replica, pid = ?record.pid(), "workload stopped");
                true
            }
            None => false,
        };
        runtime.cleanup(&record.replica).await?;
        cache.remove(&key)?;
        stopped.push(StoppedWorkload {
            replica: record.replica.clone(),
            pid: record.pid(),
            was_running,
        });
    }
    cache.flush().await?;
    mark_stopped(data_dir, &stopped);
    Ok(stopped)
}

/// Rewrites `status.json` so that `warren agent status` does not show stopped workloads as
/// running. A missing or unreadable status file is left alone: the next run writes a new one.
fn mark_stopped(data_dir: &Path, stopped: &[StoppedWorkload]) {
    let Ok(mut status) = crate::agent::load_status(data_dir) else {
        return;
    };
    for replica in &mut status.replicas {
        if stopped.iter().any(|s| s.replica == replica.replica) {
            replica.state = TaskState::Stopped;
            replica.pid = None;
        }
    }
    status.link.connected = false;
    status.updated_at_ms = unix_now_ms();
    let path = data_dir.join(STATUS_FILE);
    let json = serde_json::to_vec_pretty(&status).expect("status serializes");
    if let Err(error) = write_atomic(&path, &json, 0o644) {
        warn!(error = %error, path = %path.display(), "cannot write agent status");
    }
}
