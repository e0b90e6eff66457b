//! Whether this control node is in touch with a majority of the control nodes, and which of its
//! agents it sends elsewhere while it is not.
//!
//! A control node cut off from the majority still holds its state and serves views from it,
//! but that state no longer moves: an agent on it would keep a stale view while the majority
//! places replicas elsewhere. So once this node has been out of touch for [`SEND_AWAY_AFTER`]
//! and the voters it cannot reach could form a majority without it (cut off, not merely slow), its push sessions send their
//! agents elsewhere (the `Overloaded` refusal, which every agent
//! answers by trying the other control nodes first). An agent that comes back within
//! [`COME_BACK_WINDOW`] found no better node — the whole control plane is without a leader, or
//! this is the only control node it reaches — and is kept; it is sent away again only once the
//! window has passed, so a fleet does not bounce between control nodes while there is no quorum
//! anywhere, and still finds the majority within a window once there is one again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_api::NodeId;

use crate::control::Control;
use crate::metrics::RaftMetrics;

/// How long this node is out of touch with a majority before it sends its agents elsewhere:
/// longer than an election after a leader's death (the election timer is under a second), so a
/// failover moves no agent.
pub const SEND_AWAY_AFTER: Duration = Duration::from_secs(3);

/// An agent sent away that comes back within this long is kept (see the module docs).
pub const COME_BACK_WINDOW: Duration = Duration::from_secs(60);

/// Whether node `me` is in touch with a majority, by its Raft metrics: it follows a leader it
/// knows, or it leads and a majority acknowledged it within `lease`. A candidate (no leader
/// known) is not.
pub(crate) fn in_touch(metrics: &RaftMetrics, me: u64, lease: Duration) -> bool {
    match metrics.current_leader {
        None => false,
        Some(leader) if leader != me => true,
        Some(_) => metrics
            .millis_since_quorum_ack
            .is_none_or(|ms| u128::from(ms) <= lease.as_millis()),
    }
}

/// Whether the `voters` that node `me` cannot reach (`failing`: calls to it failed with no
/// word since) are a majority by themselves: only then may a leader be serving over there.
/// When they are not (one of two control nodes down, say), no other node can do better than
/// this one and sending agents away is only churn.
pub(crate) fn majority_elsewhere(
    voters: impl IntoIterator<Item = u64>,
    me: u64,
    failing: impl Fn(u64) -> bool,
) -> bool {
    let (mut total, mut unreachable) = (0usize, 0usize);
    for voter in voters {
        total += 1;
        if voter != me && failing(voter) {
            unreachable += 1;
        }
    }
    unreachable * 2 > total
}

/// How often an out-of-touch node looks again at which peers answer.
const RECHECK: Duration = Duration::from_secs(1);

/// Follows `control`'s Raft metrics and keeps [`Control::away`] true while the node is cut off:
/// out of touch with a majority for [`SEND_AWAY_AFTER`] *and* the voters its calls fail to
/// reach a majority by themselves ([`majority_elsewhere`]). A node out of touch whose peers still answer is in an election that is
/// taking long (the whole control plane short of CPU, say): the others are no better, and
/// sending a fleet to them would only add to their load. Runs until `cancel` fires or Raft
/// stops.
pub(crate) fn spawn(control: Arc<Control>, cancel: CancellationToken, tasks: &TaskTracker) {
    tasks.spawn(async move {
        let mut metrics = control.raft().metrics();
        let lease = control.leader_lease();
        let me = control.id();
        let mut lost_since: Option<Instant> = None;
        loop {
            let (touch, voters) = {
                let m = metrics.borrow_and_update();
                let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                (in_touch(&m, me, lease), voters)
            };
            let now = Instant::now();
            lost_since = if touch {
                None
            } else {
                Some(lost_since.unwrap_or(now))
            };
            let away_at = lost_since.map(|since| since + SEND_AWAY_AFTER);
            let away = away_at.is_some_and(|at| at <= now)
                && majority_elsewhere(voters, me, |peer| control.peer_failing(peer));
            let changed = control.set_away(away);
            if changed && away {
                warn!(
                    out_of_touch_s = SEND_AWAY_AFTER.as_secs(),
                    "this control node is cut off from a majority of control nodes: sending its agents elsewhere"
                );
            } else if changed {
                info!("this control node is in touch with a majority again: it keeps its agents");
            }
            let wake = match away_at {
                Some(at) if at > now => Some(at),
                Some(_) => Some(now + RECHECK),
                None => None,
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                () = sleep_until_some(wake) => {}
            }
        }
    });
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The agents this node sent away lately, and when: the ones that come back within
/// [`COME_BACK_WINDOW`] are kept.
#[derive(Debug, Default)]
pub(crate) struct SentAway {
    at: Mutex<HashMap<NodeId, Instant>>,
}

impl SentAway {
    /// Whether agent `node` is to be sent away now, while this node is out of touch; if so, it
    /// is recorded as sent at `now`. Not if it was sent away within the window: it came back.
    pub(crate) fn send_away(&self, node: NodeId, now: Instant) -> bool {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        if at
            .get(&node)
            .is_some_and(|&sent| now.saturating_duration_since(sent) < COME_BACK_WINDOW)
        {
            return false;
        }
        at.retain(|_, &mut sent| now.saturating_duration_since(sent) < COME_BACK_WINDOW);
        at.insert(node, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(leader: Option<u64>, quorum_ack_ms: Option<u64>) -> RaftMetrics {
        RaftMetrics {
            current_leader: leader,
            millis_since_quorum_ack: quorum_ack_ms,
            ..RaftMetrics::new_initial(1)
        }
    }

    #[test]
    fn in_touch_follows_a_known_leader_or_a_fresh_quorum_ack() {
        let lease = Duration::from_millis(1_800);
        assert!(in_touch(&metrics(Some(2), None), 1, lease), "follower");
        assert!(!in_touch(&metrics(None, None), 1, lease), "candidate");
        assert!(
            in_touch(&metrics(Some(1), Some(100)), 1, lease),
            "leader acked"
        );
        assert!(
            in_touch(&metrics(Some(1), None), 1, lease),
            "leader, no ack time yet"
        );
        assert!(
            !in_touch(&metrics(Some(1), Some(1_801)), 1, lease),
            "leader whose majority went silent"
        );
    }

    #[test]
    fn agents_go_only_where_a_majority_may_be() {
        assert!(!majority_elsewhere([1, 2, 3], 1, |_| false), "all answer");
        assert!(!majority_elsewhere([1, 2, 3], 1, |p| p == 3), "one failing");
        assert!(
            majority_elsewhere([1, 2, 3], 1, |_| true),
            "cut off from both"
        );
        assert!(
            !majority_elsewhere([1], 1, |_| true),
            "alone in a cluster of one"
        );
        assert!(!majority_elsewhere([1, 2], 1, |_| true), "one of two down");
        assert!(
            !majority_elsewhere([1, 2, 3, 4], 1, |p| p > 2),
            "two of four"
        );
        assert!(
            majority_elsewhere([1, 2, 3, 4], 1, |p| p > 1),
            "three of four"
        );
    }

    #[test]
    fn an_agent_that_comes_back_within_the_window_is_kept() {
        let book = SentAway::default();
        let t0 = Instant::now();
        let (a, b) = (NodeId(1), NodeId(2));
        assert!(book.send_away(a, t0));
        assert!(!book.send_away(a, t0 + Duration::from_secs(5)), "came back");
        assert!(
            book.send_away(b, t0 + Duration::from_secs(5)),
            "another agent"
        );
        assert!(
            !book.send_away(a, t0 + COME_BACK_WINDOW - Duration::from_millis(1)),
            "still within the window"
        );
        assert!(
            book.send_away(a, t0 + COME_BACK_WINDOW),
            "the window passed: sent away again"
        );
        assert_eq!(book.at.lock().unwrap().len(), 2);
        assert!(book.send_away(NodeId(3), t0 + COME_BACK_WINDOW * 3));
        assert_eq!(book.at.lock().unwrap().len(), 1, "old entries are pruned");
    }
}
