//! This node's verdict on each member: chitchat's phi-accrual failure detector, applied between
//! chitchat's rounds too.
//!
//! chitchat judges liveness once per gossip round, at the round's end, so a member whose phi
//! crossed the threshold just after a round is called dead up to a whole interval late. The
//! monitor asks here every [`CHECKS_PER_ROUND`]th of an interval instead: a member is `Dead` as
//! soon as its heartbeat has been still for chitchat's own detection timeout (its mean heartbeat
//! interval times the phi threshold, [`Chitchat::failure_detection_timeout`]), or once chitchat
//! itself says so. Nothing is sent for this: the verdicts are read from the state that gossip
//! already carries, so detection gets faster at no cost in traffic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{Chitchat, ChitchatId, Heartbeat};
use warren_api::NodeId;

use crate::config::MeshTimers;
use crate::identity::{Accepted, CheckOutcome, Verifier, is_fresh};
use crate::member::Liveness;
use crate::metrics::MeshMetrics;

/// How many times per gossip interval the monitor judges the members.
pub(crate) const CHECKS_PER_ROUND: u32 = 4;

/// The fraction of the detection timeout a live member's heartbeat may stay still before it is
/// `Suspect`: two fifths, i.e. phi 2 of the default 5, about 1.5 s at a typical mean interval.
/// Suspect only ranks DNS answers and, together with a silent QUIC connection, lets an agent
/// leave its control node (`edge-agent`'s `link_failure`); an early doubt is cheap there, a
/// late one costs seconds of a dead control node.
const SUSPECT_FRACTION: f64 = 0.4;

/// One member's verdict: its newest generation's id and liveness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub node_id: NodeId,
    pub chitchat_id: ChitchatId,
    pub liveness: Liveness,
}

/// When each node's heartbeat last advanced, as seen by this node's checks, and what each
/// member signed ([`Verifier`]).
#[derive(Debug)]
pub(crate) struct HeartbeatTracker {
    nodes: HashMap<ChitchatId, Tracked>,
    verifier: Verifier,
    metrics: MeshMetrics,
}

#[derive(Debug)]
struct Tracked {
    heartbeat: Heartbeat,
    advanced_at: Instant,
    first_seen: Instant,
    ever_alive: bool,
}

impl HeartbeatTracker {
    pub(crate) fn new(verifier: Verifier, metrics: MeshMetrics) -> Self {
        Self {
            nodes: HashMap::new(),
            verifier,
            metrics,
        }
    }

    /// The metadata member `id` last signed, if any of its state ever passed the check.
    pub(crate) fn accepted_meta(&self, id: &ChitchatId) -> Option<Arc<BTreeMap<String, String>>> {
        self.verifier.accepted(id).map(|a| a.meta.clone())
    }

    /// Checks member `id`'s state if it moved, counting the outcome.
    fn check(
        &mut self,
        id: &ChitchatId,
        node_id: NodeId,
        state: &chitchat::NodeState,
        now: Instant,
    ) {
        let outcome = match self.verifier.check(id, node_id, state, now) {
            CheckOutcome::Unchanged => return,
            CheckOutcome::Accepted => "accepted",
            CheckOutcome::Pending => "pending",
            CheckOutcome::Refused(reason) => reason.label(),
        };
        self.metrics
            .member_states_total
            .with_label_values(&[outcome])
            .inc();
    }

    fn observe(
        &mut self,
        id: &ChitchatId,
        heartbeat: Heartbeat,
        alive: bool,
        now: Instant,
    ) -> &Tracked {
        let tracked = self.nodes.entry(id.clone()).or_insert(Tracked {
            heartbeat,
            advanced_at: now,
            first_seen: now,
            ever_alive: false,
        });
        if heartbeat > tracked.heartbeat {
            tracked.heartbeat = heartbeat;
            tracked.advanced_at = now;
        }
        tracked.ever_alive |= alive;
        tracked
    }

    fn retain(&mut self, present: &HashSet<&ChitchatId>) {
        self.nodes.retain(|id, _| present.contains(id));
    }

    /// Every member's verdict now, one per node id, sorted by node id: its newest generation
    /// whose state passed the check, or its newest if none did.
    ///
    /// A member chitchat calls live is `Dead` once its heartbeat has been still for the
    /// detection timeout (chitchat would say so at its next round's end), `Suspect` once still
    /// for [`SUSPECT_FRACTION`] of it. A member chitchat does not call live is `Dead` — unless
    /// this node has never seen it alive and learned of it less than one initial detection
    /// timeout ago: a node that just joined is `Suspect` until its heartbeats are counted, so
    /// that joining never looks like coming back.
    ///
    /// Whatever the heartbeat says, a member is only as alive as its signature
    /// ([`crate::identity`]): `Dead` once its last accepted attestation is older than
    /// `attest_timeout`, and, while none was ever accepted, `Suspect` for `attest_timeout`
    /// after it was first seen, then `Dead`.
    pub(crate) fn judge(
        &mut self,
        chitchat: &Chitchat,
        timers: &MeshTimers,
        now: Instant,
        now_ms: u64,
    ) -> Vec<Verdict> {
        let self_id = chitchat.self_chitchat_id();
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let initial_timeout = timers.initial_interval.mul_f64(timers.phi_threshold);
        let mut newest: BTreeMap<NodeId, (bool, Verdict)> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            let Ok(node_id) = id.node_id.parse::<NodeId>() else {
                continue;
            };
            if id != self_id {
                self.check(id, node_id, state, now);
            }
            let accepted = id == self_id || self.verifier.accepted(id).is_some();
            if newest.get(&node_id).is_some_and(|(was_accepted, v)| {
                (*was_accepted, v.chitchat_id.generation_id) > (accepted, id.generation_id)
            }) {
                continue;
            }
            let is_live = live.contains(id);
            let tracked = self.observe(id, state.heartbeat(), is_live, now);
            let liveness = if id == self_id {
                Liveness::Alive
            } else if is_live {
                let still_for = now.saturating_duration_since(tracked.advanced_at);
                live_liveness(still_for, chitchat.failure_detection_timeout(id))
            } else if !tracked.ever_alive
                && now.saturating_duration_since(tracked.first_seen) < initial_timeout
            {
                Liveness::Suspect
            } else {
                Liveness::Dead
            };
            let liveness = if id == self_id {
                liveness
            } else {
                let first_seen = tracked.first_seen;
                vouched(
                    liveness,
                    self.verifier.accepted(id),
                    now.saturating_duration_since(first_seen),
                    timers.attest_timeout,
                    (now, now_ms),
                )
            };
            newest.insert(
                node_id,
                (
                    accepted,
                    Verdict {
                        node_id,
                        chitchat_id: id.clone(),
                        liveness,
                    },
                ),
            );
        }
        let states = chitchat.node_states();
        self.retain(&states.keys().collect());
        self.verifier.retain(|id| states.contains_key(id));
        newest.into_values().map(|(_, verdict)| verdict).collect()
    }
}

/// `heartbeat`'s verdict, as far as the member's own signature bears it out: a member whose
/// last accepted attestation is stale is dead; one that never had one accepted is at most
/// suspect while `known_for` is within `timeout`, dead after.
fn vouched(
    heartbeat: Liveness,
    accepted: Option<&Accepted>,
    known_for: Duration,
    timeout: Duration,
    (now, now_ms): (Instant, u64),
) -> Liveness {
    match accepted {
        Some(accepted) if is_fresh(accepted, timeout, now, now_ms) => heartbeat,
        Some(_) => Liveness::Dead,
        None if known_for <= timeout => match heartbeat {
            Liveness::Dead => Liveness::Dead,
            Liveness::Alive | Liveness::Suspect => Liveness::Suspect,
        },
        None => Liveness::Dead,
    }
}

/// The liveness of a member chitchat still calls live whose heartbeat has been still for
/// `still_for`, given its detection timeout (none yet: too few heartbeats to judge).
fn live_liveness(still_for: Duration, timeout: Option<Duration>) -> Liveness {
    match timeout {
        Some(timeout) if still_for > timeout => Liveness::Dead,
        Some(timeout) if still_for > timeout.mul_f64(SUSPECT_FRACTION) => Liveness::Suspect,
        _ => Liveness::Alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_only_as_alive_as_its_own_signature() {
        let now = Instant::now();
        let now_ms = 10_000_000;
        let timeout = Duration::from_secs(10);
        let signed = |ago: Duration| Accepted {
            at_ms: now_ms - ago.as_millis() as u64,
            accepted_at: now - ago,
            meta: Arc::default(),
        };
        let judge = |heartbeat, accepted: Option<&Accepted>, known_for: u64| {
            vouched(
                heartbeat,
                accepted,
                Duration::from_secs(known_for),
                timeout,
                (now, now_ms),
            )
        };
        let fresh = signed(Duration::from_secs(1));
        let stale = signed(Duration::from_secs(11));
        // A fresh signature leaves the heartbeat's verdict as it is.
        for heartbeat in [Liveness::Alive, Liveness::Suspect, Liveness::Dead] {
            assert_eq!(judge(heartbeat, Some(&fresh), 60), heartbeat);
        }
        // Heartbeats anyone can forge do not outlive the member's own signature.
        assert_eq!(judge(Liveness::Alive, Some(&stale), 60), Liveness::Dead);
        // Never signed: suspect while just learned of, then dead.
        assert_eq!(judge(Liveness::Alive, None, 2), Liveness::Suspect);
        assert_eq!(judge(Liveness::Dead, None, 2), Liveness::Dead);
        assert_eq!(judge(Liveness::Alive, None, 11), Liveness::Dead);
    }

    #[test]
    fn a_live_member_is_judged_by_how_long_its_heartbeat_stood_still() {
        let check = |still_ms: u64, timeout_ms: Option<u64>, expected: Liveness| {
            assert_eq!(
                live_liveness(
                    Duration::from_millis(still_ms),
                    timeout_ms.map(Duration::from_millis)
                ),
                expected,
                "still {still_ms} ms, timeout {timeout_ms:?} ms"
            );
        };
        check(0, Some(3_000), Liveness::Alive);
        check(1_200, Some(3_000), Liveness::Alive);
        check(1_201, Some(3_000), Liveness::Suspect);
        check(3_000, Some(3_000), Liveness::Suspect);
        check(3_001, Some(3_000), Liveness::Dead);
        // Too few heartbeats for a timeout: chitchat's own verdict stands.
        check(60_000, None, Liveness::Alive);
    }
}
