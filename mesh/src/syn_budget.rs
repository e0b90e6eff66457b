//! How many live peers one gossip round reaches (sans-IO).
//!
//! chitchat 0.13 starts every round with a SYN to three live peers (its `GOSSIP_COUNT`, a
//! constant), maybe one to a dead peer and maybe one to a seed. Each SYN, and the SYN-ACK that
//! answers it, carries a digest of **every** member (about 18 bytes each, compressed), so at
//! 100 members the digests are four fifths of the traffic, and they grow with the fleet. The
//! transport therefore sends only the first [`peers_per_round`](crate::MeshTimers::peers_per_round)
//! SYNs of a round to live peers and skips the others; chitchat keeps no state per SYN, so a
//! skipped one is as if it had picked fewer peers.
//!
//! SYNs to peers this node does not hold alive — a member it judges dead, an address no
//! member has (a seed not met yet) — always go: they are what finds a node again after a
//! restart or a partition's heal, and chitchat sends them rarely (a dead peer with probability
//! dead / (live + 1) per round; a seed when none of the live picks was one).

use std::time::{Duration, Instant};

/// What to do with one SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SynDecision {
    /// Send it (else skip it).
    pub(crate) send: bool,
    /// It is the first SYN of a new round.
    pub(crate) new_round: bool,
}

/// Counts the live-peer SYNs of the current round.
#[derive(Debug)]
pub(crate) struct SynBudget {
    peers_per_round: usize,
    /// A SYN this long after the previous one starts a new round: half a gossip interval,
    /// since a round's SYNs leave in one burst.
    round_gap: Duration,
    last_syn: Option<Instant>,
    live_sent_in_round: usize,
}

impl SynBudget {
    pub(crate) fn new(peers_per_round: usize, gossip_interval: Duration) -> Self {
        Self {
            peers_per_round,
            round_gap: gossip_interval / 2,
            last_syn: None,
            live_sent_in_round: 0,
        }
    }

    /// Decides on a SYN chitchat asks to send at `now`; `to_live` is whether this node holds
    /// the addressee alive (alive or suspect).
    pub(crate) fn decide(&mut self, now: Instant, to_live: bool) -> SynDecision {
        let new_round = self
            .last_syn
            .is_none_or(|last| now.saturating_duration_since(last) >= self.round_gap);
        self.last_syn = Some(now);
        if new_round {
            self.live_sent_in_round = 0;
        }
        let send = !to_live || self.live_sent_in_round < self.peers_per_round;
        if send && to_live {
            self.live_sent_in_round += 1;
        }
        SynDecision { send, new_round }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs SYNs `(ms after start, to a live peer)` through a budget of `per_round` with 1 s
    /// rounds and checks which are sent.
    fn check(per_round: usize, syns: &[(u64, bool)], expected_sent: &[bool]) {
        let start = Instant::now();
        let mut budget = SynBudget::new(per_round, Duration::from_secs(1));
        let sent: Vec<bool> = syns
            .iter()
            .map(|&(at_ms, live)| {
                budget
                    .decide(start + Duration::from_millis(at_ms), live)
                    .send
            })
            .collect();
        assert_eq!(sent, expected_sent, "per_round {per_round}, syns {syns:?}");
    }

    #[test]
    fn only_the_first_live_syns_of_a_round_go() {
        // One round of three live picks.
        check(1, &[(0, true), (1, true), (2, true)], &[true, false, false]);
        check(2, &[(0, true), (1, true), (2, true)], &[true, true, false]);
        check(3, &[(0, true), (1, true), (2, true)], &[true, true, true]);
        // Two rounds: the count starts again.
        check(
            1,
            &[(0, true), (1, true), (1_000, true), (1_001, true)],
            &[true, false, true, false],
        );
    }

    #[test]
    fn syns_to_peers_not_held_alive_always_go() {
        // Three live picks, then a dead peer, then a seed nobody has met.
        check(
            1,
            &[(0, true), (1, true), (2, true), (3, false), (4, false)],
            &[true, false, false, true, true],
        );
        // A round whose first pick is dead still reaches one live peer.
        check(1, &[(0, false), (1, true), (2, true)], &[true, true, false]);
    }

    #[test]
    fn a_round_starts_after_half_an_interval() {
        let start = Instant::now();
        let mut budget = SynBudget::new(1, Duration::from_secs(1));
        let rounds: Vec<bool> = [0, 10, 499, 1_000, 1_499, 1_999]
            .into_iter()
            .map(|ms| {
                budget
                    .decide(start + Duration::from_millis(ms), true)
                    .new_round
            })
            .collect();
        // 499 ms after 10 ms is within the burst; 1 000 after 499 is not (501 ms); 1 499 after
        // 1 000 is not (499 ms); 1 999 after 1 499 is exactly 500 ms.
        assert_eq!(rounds, [true, false, false, true, false, true]);
    }
}
