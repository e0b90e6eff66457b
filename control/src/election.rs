//! When a follower campaigns: the election timer, run by this crate instead of openraft's tick.
//!
//! openraft 0.9 ties three things to its `heartbeat_interval`: the leader's heartbeat period,
//! the deadline of every AppendEntries RPC (heartbeats, replication, read barriers), and — at
//! 1.5 times it — the tick on which a follower looks at its election timer. A follower then
//! waits the voters' leader lease (`election_timeout_max`) plus a random `[min, max)` before it
//! campaigns. With a 100 ms heartbeat that means a 100 ms RPC deadline (too short for a loaded
//! box or a WAN); with a longer one, rarer heartbeats and slower, coarser elections.
//!
//! So openraft gets the RPC deadline as its `heartbeat_interval`, with its own heartbeat and
//! election timers switched off, and [`crate::timers`] drives both: the leader triggers a
//! heartbeat every `heartbeat`, and every voter that is not leading asks [`ElectionTimer::decide`]
//! whether to campaign. The rule is openraft's, at a finer grain:
//!
//! - while its vote is committed (it follows a leader), a voter campaigns after the lease plus a
//!   random part, redrawn for every campaign, of silence (no AppendEntries from the leader and
//!   no vote change) — before the lease has passed the other voters would refuse the vote
//!   anyway;
//! - after a campaign that did not win (the vote is not committed), it tries again after a
//!   random `[retry, retry + spread)`;
//! - a voter that learnt from a vote response that another voter holds a longer log waits an
//!   extra lease plus spread before its next campaign, so that the voter with the longer log
//!   wins instead of both campaigning in turn forever;
//! - the only voter of a cluster campaigns at once;
//! - a node that has just started waits an extra lease before its first campaign, unless it
//!   hears from a leader first: the leader backs off from a peer it could not reach, and a
//!   restarted follower that campaigned before the leader found it would depose that leader
//!   for nothing (openraft 0.9 has no pre-vote).
//!
//! A longer log seen in an earlier round stops counting once a leader is heard from again.
//!
//! Pure: time and the random draw are arguments.

use std::time::Duration;

/// What the election timer looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionInputs {
    /// This node is a voter (learners never campaign).
    pub is_voter: bool,
    /// Voters in the effective membership.
    pub voters: usize,
    /// This node leads now.
    pub leading: bool,
    /// A campaign of this node is under way (its vote is for itself, not yet committed).
    pub campaigning: bool,
    /// This node's vote is committed: it follows (or leads) an elected leader.
    pub vote_committed: bool,
    /// Time since the vote last changed or the leader was last heard.
    pub silent_for: Duration,
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a campaign.
    Campaign,
    /// Nothing to do for at least this long.
    Wait(Duration),
}

/// The election timer's settings (derived from `ControlConfig::election_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTimes {
    /// How long voters refuse to vote after hearing from their leader (openraft's lease); a
    /// follower waits at least this long before it campaigns.
    pub lease: Duration,
    /// Upper bound of the random part added to every wait.
    pub spread: Duration,
    /// Base wait before a campaign that did not win is retried.
    pub retry: Duration,
}

/// A voter's election timer.
#[derive(Clone, Debug)]
pub struct ElectionTimer {
    times: ElectionTimes,
    /// The random part of the current wait.
    jitter: Duration,
    /// A longer log than ours was seen since our last campaign.
    greater_log_seen: bool,
    /// This node has heard from a leader, or campaigned, since it started.
    settled: bool,
}

impl ElectionTimer {
    /// A timer whose first random part comes from `unit` (uniform in `[0, 1)`).
    pub fn new(times: ElectionTimes, unit: f64) -> Self {
        Self {
            times,
            jitter: times.spread.mul_f64(unit.clamp(0.0, 1.0)),
            greater_log_seen: false,
            settled: false,
        }
    }

    /// A vote response showed a voter with a longer log than this node's.
    pub fn saw_greater_log(&mut self) {
        self.greater_log_seen = true;
    }

    /// How long this voter lets the leader be silent before it campaigns, as things stand.
    pub fn timeout(&self, vote_committed: bool) -> Duration {
        let base = if vote_committed {
            self.times.lease
        } else {
            self.times.retry
        };
        let greater_log = if self.greater_log_seen {
            self.times.lease + self.times.spread
        } else {
            Duration::ZERO
        };
        let startup = if self.settled {
            Duration::ZERO
        } else {
            self.times.lease
        };
        base + self.jitter + greater_log + startup
    }

    /// Whether to campaign now; `unit` (uniform in `[0, 1)`) redraws the random part when it
    /// says so.
    pub fn decide(&mut self, observed: &ElectionInputs, unit: f64) -> Decision {
        let idle = Decision::Wait(self.times.lease);
        if !observed.is_voter || observed.leading {
            return idle;
        }
        if observed.voters == 1 {
            return if observed.campaigning {
                idle
            } else {
                Decision::Campaign
            };
        }
        if observed.vote_committed && observed.silent_for < self.times.lease {
            // A leader is speaking: whatever was seen in earlier rounds is past.
            self.settled = true;
            self.greater_log_seen = false;
        }
        let timeout = self.timeout(observed.vote_committed);
        if observed.silent_for < timeout {
            return Decision::Wait(timeout - observed.silent_for);
        }
        self.jitter = self.times.spread.mul_f64(unit.clamp(0.0, 1.0));
        self.greater_log_seen = false;
        self.settled = true;
        Decision::Campaign
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: ElectionTimes = ElectionTimes {
        lease: Duration::from_millis(500),
        spread: Duration::from_millis(200),
        retry: Duration::from_millis(300),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn follower(silent_ms: u64) -> ElectionInputs {
        ElectionInputs {
            is_voter: true,
            voters: 3,
            leading: false,
            campaigning: false,
            vote_committed: true,
            silent_for: ms(silent_ms),
        }
    }

    /// A timer that has heard from a leader since it started.
    fn settled(unit: f64) -> ElectionTimer {
        let mut timer = ElectionTimer::new(TIMES, unit);
        assert!(matches!(timer.decide(&follower(0), 0.0), Decision::Wait(_)));
        timer
    }

    /// Table: (observed, random draw at creation) → decision.
    #[test]
    fn decisions() {
        let check = |observed: ElectionInputs, unit: f64, expected: Decision| {
            let mut timer = settled(unit);
            assert_eq!(
                timer.decide(&observed, 0.0),
                expected,
                "{observed:?} {unit}"
            );
        };
        // Following: lease + jitter.
        check(follower(0), 0.5, Decision::Wait(ms(600)));
        check(follower(599), 0.5, Decision::Wait(ms(1)));
        check(follower(600), 0.5, Decision::Campaign);
        check(follower(500), 0.0, Decision::Campaign);
        // After a lost campaign: retry + jitter.
        let lost = ElectionInputs {
            vote_committed: false,
            ..follower(350)
        };
        check(lost, 0.25, Decision::Campaign);
        check(lost, 0.5, Decision::Wait(ms(50)));
        // Learners and leaders never campaign.
        let learner = ElectionInputs {
            is_voter: false,
            ..follower(10_000)
        };
        check(learner, 0.0, Decision::Wait(TIMES.lease));
        let leader = ElectionInputs {
            leading: true,
            ..follower(10_000)
        };
        check(leader, 0.0, Decision::Wait(TIMES.lease));
        // The only voter campaigns at once, unless it already does.
        let alone = ElectionInputs {
            voters: 1,
            ..follower(0)
        };
        check(alone, 0.9, Decision::Campaign);
        let alone_campaigning = ElectionInputs {
            campaigning: true,
            ..alone
        };
        check(alone_campaigning, 0.9, Decision::Wait(TIMES.lease));
    }

    #[test]
    fn a_campaign_redraws_the_random_part() {
        let mut timer = settled(0.0);
        assert_eq!(timer.decide(&follower(500), 1.0), Decision::Campaign);
        assert_eq!(timer.timeout(true), ms(700));
        assert_eq!(timer.decide(&follower(650), 0.0), Decision::Wait(ms(50)));
    }

    /// The voter with the shorter log steps back for a lease and a spread after seeing a longer
    /// one, so the voter holding it wins the next round; it campaigns normally afterwards.
    #[test]
    fn a_longer_log_elsewhere_delays_the_next_campaign() {
        let mut timer = settled(0.0);
        timer.saw_greater_log();
        let lost = ElectionInputs {
            vote_committed: false,
            ..follower(300)
        };
        assert_eq!(timer.decide(&lost, 0.0), Decision::Wait(ms(700)));
        let later = ElectionInputs {
            silent_for: ms(1_000),
            ..lost
        };
        assert_eq!(timer.decide(&later, 0.0), Decision::Campaign);
        assert_eq!(timer.timeout(false), ms(300), "the delay is spent");
    }

    /// A longer log seen in a round that a third node then won stops counting once that
    /// leader is heard: the next failover is not slowed by it.
    #[test]
    fn a_leader_heard_clears_an_old_longer_log() {
        let mut timer = settled(0.0);
        timer.saw_greater_log();
        assert_eq!(timer.decide(&follower(100), 0.0), Decision::Wait(ms(400)));
        assert_eq!(timer.decide(&follower(500), 0.0), Decision::Campaign);
    }

    /// Just started: one extra lease of patience for the leader to find this node, gone once
    /// a leader is heard (or after the first campaign).
    #[test]
    fn a_new_node_waits_a_lease_more_for_its_first_campaign() {
        let mut fresh = ElectionTimer::new(TIMES, 0.0);
        assert_eq!(fresh.decide(&follower(600), 0.0), Decision::Wait(ms(400)));
        assert_eq!(fresh.decide(&follower(1_000), 0.0), Decision::Campaign);
        assert_eq!(fresh.timeout(true), ms(500), "settled after its campaign");
        let mut found = ElectionTimer::new(TIMES, 0.0);
        assert!(matches!(
            found.decide(&follower(20), 0.0),
            Decision::Wait(_)
        ));
        assert_eq!(found.decide(&follower(500), 0.0), Decision::Campaign);
    }
}
