//! Replicas (tasks): the scheduler's assignments, and what agents report about them.
//!
//! [`Replica`] is desired state, decided by control. [`ReplicaStatus`] is actual state, owned
//! by the agent that runs the replica.

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ReplicaId};

/// The scheduler's decision that a replica runs (or stops) on a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// Service and slot (or node, for global services).
    pub id: ReplicaId,
    /// The node it is assigned to.
    pub node: NodeId,
    /// The [`Service::version`](crate::Service::version) it was created or updated from.
    pub service_version: u64,
    /// [`ServiceSpec::workload_hash`](crate::ServiceSpec::workload_hash) of that version; the
    /// agent adopts a running workload with the same hash instead of restarting it.
    pub workload_hash: u64,
    /// Whether the workload should run.
    pub desired: DesiredState,
}

/// What control wants for a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// Keep it running.
    Running,
    /// Stop it (graceful stop, then removal).
    Shutdown,
}

/// Lifecycle of a replica on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Known to control, not yet assigned to a node.
    Pending,
    /// Assigned; the agent has not started it yet.
    Assigned,
    /// Being started (image pull, process spawn, start period).
    Starting,
    /// Running and, if it has a health check, healthy.
    Running,
    /// Running but failing its health check.
    Unhealthy,
    /// Being stopped.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Exited with failure and will not be restarted (or is waiting out a backoff).
    Failed,
    /// Exited 0 with restart policy `never` or `on-failure`.
    Completed,
    /// Running on a node that no longer holds the assignment (it moved while the node was cut
    /// off); the agent stops it once it learns so.
    Orphaned,
}

impl TaskState {
    /// The state as `service ps -o json` and metric labels spell it: `running`, `failed`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Unhealthy => "unhealthy",
            TaskState::Stopping => "stopping",
            TaskState::Stopped => "stopped",
            TaskState::Failed => "failed",
            TaskState::Completed => "completed",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Whether the workload is not running and will not run again without a new decision.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Stopped | TaskState::Failed | TaskState::Completed
        )
    }
}

/// Result of a replica's health check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No check configured, or no result yet.
    #[default]
    Unknown,
    /// The last check passed.
    Healthy,
    /// `retries` consecutive checks failed.
    Unhealthy,
}

impl HealthState {
    /// `unknown`, `healthy` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// What an agent reports about one replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Which replica.
    pub id: ReplicaId,
    /// The node reporting (and running) it.
    pub node: NodeId,
    /// Lifecycle state.
    pub state: TaskState,
    /// OS process id of a native workload while it runs.
    pub pid: Option<u32>,
    /// When the current run started, unix millis.
    pub started_at_ms: Option<u64>,
    /// Exit code of the last run, if it exited with one.
    pub exit_code: Option<i32>,
    /// Restarts since the replica was assigned to this node.
    pub restarts: u32,
    /// Health check result.
    pub health: HealthState,
    /// A one-line explanation for people (`exit code 1`, `image pull failed: …`).
    pub message: Option<String>,
    /// When this status last changed, unix millis.
    pub updated_at_ms: u64,
    /// [`Replica::workload_hash`] of the workload the agent last started (or is starting) for
    /// it, `None` before the first start: tells a rollout the new workload from the old one.
    pub workload_hash: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_state_as_str_matches_json() {
        let all = [
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Unhealthy,
            TaskState::Stopping,
            TaskState::Stopped,
            TaskState::Failed,
            TaskState::Completed,
            TaskState::Orphaned,
        ];
        for state in all {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }
}
