//! Events: what happened to replicas and links, recorded by agents and reported upward.
//!
//! An agent buffers events while it is cut off (bounded; it counts what it drops) and sends
//! them with its next [`StatusReport`](crate::wire::StatusReport), so an operator can see what
//! happened offline.

use serde::{Deserialize, Serialize};

use crate::ids::ReplicaId;
use crate::replica::HealthState;

/// One thing that happened on a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// When it happened, unix millis, by the agent's clock.
    pub at_ms: u64,
    /// The replica concerned; `None` for node-level events (links).
    pub replica: Option<ReplicaId>,
    /// What happened.
    pub kind: EventKind,
    /// A one-line explanation for people.
    pub message: String,
}

/// The kinds of [`Event`]. New kinds are added at the end only: postcard encodes variants by
/// position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The workload started.
    Started,
    /// The workload exited; `code` is `None` when it died by a signal.
    Exited {
        /// Exit code, if any.
        code: Option<i32>,
    },
    /// The workload was restarted by its restart policy.
    Restarted,
    /// The restart policy gave up (`max_attempts` reached).
    RestartsExhausted,
    /// The workload could not be started (spawn or image pull failed).
    StartFailed,
    /// The health check result changed.
    HealthChanged {
        /// The new result.
        health: HealthState,
    },
    /// The workload was killed for exceeding its memory limit.
    OomKilled,
    /// A workload found running was adopted instead of restarted.
    Adopted,
    /// The workload was stopped on request (scale down, removal, moved elsewhere).
    Stopped,
    /// The connection to the control plane was lost.
    LinkLost,
    /// The connection to the control plane was restored.
    LinkRestored,
    /// An image a start found missing was pulled from its registry (`pulled REF: 52.0 MB in
    /// 3.1 s`).
    ImagePulled,
}

impl EventKind {
    /// A short lowercase name for tables and metric labels: `started`, `exited`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Exited { .. } => "exited",
            EventKind::Restarted => "restarted",
            EventKind::RestartsExhausted => "restarts_exhausted",
            EventKind::StartFailed => "start_failed",
            EventKind::HealthChanged { .. } => "health_changed",
            EventKind::OomKilled => "oom_killed",
            EventKind::Adopted => "adopted",
            EventKind::Stopped => "stopped",
            EventKind::LinkLost => "link_lost",
            EventKind::LinkRestored => "link_restored",
            EventKind::ImagePulled => "image_pulled",
        }
    }
}
