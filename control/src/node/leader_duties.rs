//! The leader's periodic duties: the next batch of each rolling update, a tick when an
//! on-disconnect timer expires, and agents' reachability judged from their links and gossip
//! ([`crate::liveness`]).

use std::time::Duration;

use tracing::{debug, info};
use warren_api::clock::unix_now_ms;

use super::ControlNode;
use crate::command::Op;
use crate::control::Control;
use crate::liveness::LivenessJudge;
use crate::rollout::RunningSince;

impl ControlNode {
    /// On the leader: advance due rolling updates, let on-disconnect timers fire, and turn
    /// agents' links into reachability facts (see [`crate::liveness`]).
    pub(super) fn spawn_leader_duties(&self, unreachable_after: Duration) {
        let control = self.control.clone();
        let cancel = self.cancel.clone();
        // Judge liveness a few times per grace period, at most every 5 s, and at once when
        // gossip's verdict on some node changes (its failure detector has already waited).
        let liveness_every = (unreachable_after / 3).min(Duration::from_secs(5));
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut liveness: Option<LivenessJudge> = None;
            let mut last_liveness = tokio::time::Instant::now();
            let mut leader_since_ms: Option<u64> = None;
            let mut gossip = GossipVerdicts::default();
            let mut running_since = RunningSince::default();
            loop {
                let gossip_moved = tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => false,
                    moved = gossip.changed(&control) => moved,
                };
                if control.leader().map(|(id, _)| id) != Some(control.id()) {
                    liveness = None;
                    leader_since_ms = None;
                    continue;
                }
                let now = unix_now_ms();
                let since = *leader_since_ms.get_or_insert(now);
                if !gossip_moved {
                    propose_due_steps(&control, &mut running_since, now).await;
                    control.sweep_unfinished_joins(since).await;
                }
                let judge =
                    liveness.get_or_insert_with(|| LivenessJudge::new(unreachable_after, now));
                if !gossip_moved && last_liveness.elapsed() < liveness_every {
                    continue;
                }
                last_liveness = tokio::time::Instant::now();
                judge_liveness(&control, judge).await;
            }
        });
    }
}

/// Proposes the leader's time-driven steps that are due at `now`: the verdict on each
/// rolling update's watched batch ([`crate::rollout`]; agents' reports are gathered only while
/// a rollout is active), and a tick when an on-disconnect timer has expired.
async fn propose_due_steps(control: &Control, running_since: &mut RunningSince, now: u64) {
    let (rolling, tick_due) = {
        let state = control.read_stale().await;
        let rolling = state
            .services
            .values()
            .any(|r| r.rollout.as_ref().is_some_and(|r| r.is_active()));
        (rolling, state.reschedule_due(now))
    };
    if rolling {
        let agents = control.gather_agents(true).await;
        let verdicts = {
            let state = control.read_stale().await;
            running_since.judge(&state, &agents, now)
        };
        for op in verdicts {
            if let Op::RolloutBatch(verdict) = &op {
                let (name, failures) = (&verdict.name, &verdict.failures);
                info!(service = %name, failures = failures.len(), "rollout batch judged");
            }
            if let Err(e) = control.propose(op).await {
                debug!(error = %e, "rollout verdict not proposed");
            }
        }
    }
    if tick_due && let Err(e) = control.propose(Op::Tick).await {
        debug!(error = %e, "tick not proposed");
    }
}

/// Gathers every control node's agent links and this node's gossip view, and proposes what
/// [`LivenessJudge::decide`] makes of them.
async fn judge_liveness(control: &Control, judge: &mut LivenessJudge) {
    let reports = control.gather_agents(false).await;
    let gossip = control
        .gossip_members()
        .map(|members| crate::gossip::liveness_by_node(&members))
        .unwrap_or_default();
    let ops = {
        let state = control.read_stale().await;
        judge.decide(unix_now_ms(), &state, &reports, &gossip)
    };
    for op in ops {
        let node = match &op {
            Op::NodeUnreachable { node } | Op::NodeReachable { node } => Some(*node),
            _ => None,
        };
        let link = node
            .and_then(|n| reports.get(&n))
            .map_or("none", |r| if r.connected { "up" } else { "down" });
        let gossip = node
            .and_then(|n| gossip.get(&n))
            .map_or("unknown", |l| l.as_str());
        info!(op = op.name(), node_id = ?node, link, gossip, "agent reachability changed");
        if let Err(e) = control.propose(op).await {
            debug!(error = %e, "reachability not proposed");
        }
    }
}

/// The leader's view of gossip's verdicts: wakes its duties when some node's liveness changes
/// (not on metadata changes, which are far more frequent and say nothing about reachability).
#[derive(Default)]
struct GossipVerdicts {
    members: Option<tokio::sync::watch::Receiver<Vec<warren_mesh::Member>>>,
    last: std::collections::BTreeMap<warren_api::NodeId, warren_mesh::Liveness>,
}

impl GossipVerdicts {
    /// Resolves with `true` once some member's liveness differs from the last verdicts seen;
    /// pends forever while the node runs no mesh (it may start one later: call again).
    ///
    /// # Cancel safety
    /// Cancel-safe: a change seen but not returned is found again by the next call.
    async fn changed(&mut self, control: &Control) -> bool {
        if self.members.is_none() {
            self.members = control.gossip_watch();
        }
        let Some(members) = self.members.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            let verdicts = crate::gossip::liveness_by_node(&members.borrow_and_update());
            if verdicts != self.last {
                self.last = verdicts;
                return true;
            }
            if members.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}
