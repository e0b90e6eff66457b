//! The Raft timers openraft is not left to run (see [`crate::election`] for why): the leader's
//! heartbeat and every voter's election timer, in one task per control node.
//!
//! The leader triggers a heartbeat every `heartbeat`. Any other node looks at its Raft state
//! at least that often, and exactly when its election timer would expire, and campaigns when
//! [`ElectionTimer::decide`] says so.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::control::Control;
use crate::election::{Decision, ElectionInputs, ElectionTimer, ElectionTimes};

/// The timers the task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTimers {
    /// The leader's heartbeat period.
    pub heartbeat: Duration,
    /// The election timer's settings.
    pub election: ElectionTimes,
}

/// Runs the timers of `control`'s Raft node until `cancel` fires or Raft stops.
pub(crate) fn spawn(
    control: Arc<Control>,
    timers: RaftTimers,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) {
    tasks.spawn(async move {
        let mut election = ElectionTimer::new(timers.election, fastrand::f64());
        let started = Instant::now();
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let Some(next) = tick(&control, &mut election, timers, started).await else {
                return;
            };
            wait = next;
        }
    });
}

/// One look at the Raft state; returns how long to wait before the next, or `None` once Raft
/// has stopped.
async fn tick(
    control: &Control,
    election: &mut ElectionTimer,
    timers: RaftTimers,
    started: Instant,
) -> Option<Duration> {
    let raft = control.raft();
    let metrics = raft.metrics().borrow().clone();
    if metrics.running_state.is_err() {
        return None;
    }
    if metrics.state == ServerState::Leader {
        raft.trigger().heartbeat().await.ok()?;
        return Some(timers.heartbeat);
    }
    if control.peers().take_greater_log_seen() {
        election.saw_greater_log();
    }
    let last_modified = raft
        .with_raft_state(|state| state.vote_last_modified())
        .await
        .ok()?;
    let silent_for = Instant::now().saturating_duration_since(last_modified.unwrap_or(started));
    let membership = metrics.membership_config.membership();
    let observed = ElectionInputs {
        is_voter: membership.voter_ids().any(|voter| voter == control.id()),
        voters: membership.voter_ids().count(),
        leading: false,
        campaigning: metrics.state == ServerState::Candidate,
        vote_committed: metrics.vote.is_committed(),
        silent_for,
    };
    match election.decide(&observed, fastrand::f64()) {
        Decision::Campaign => {
            info!(
                term = metrics.current_term,
                silent_for = ?silent_for,
                "no word from a leader: campaigning"
            );
            raft.trigger().elect().await.ok()?;
            Some(timers.heartbeat)
        }
        Decision::Wait(wait) => Some(wait.min(timers.heartbeat)),
    }
}
