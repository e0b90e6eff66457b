//! Raft as this node sees it: leader known, indexes, voters, the leader's quorum contact,
//! leader changes and the state machine's apply time. Gauges are read from openraft's
//! `RaftMetrics` at each scrape; leader changes are counted as they happen
//! ([`count_leader_changes`]), since a scrape would miss a change undone between two.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Registrar;
use crate::types::RaftMember;

/// openraft's metrics, as our types instantiate them.
pub(crate) type RaftMetrics = openraft::RaftMetrics<u64, RaftMember>;

/// Apply time buckets, seconds: 10 µs to 1 s (a batch of small entries takes microseconds).
const APPLY_BUCKETS: [f64; 13] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
    1.0,
];

/// The Raft series beyond term, leadership and applied index.
#[derive(Clone, Debug)]
pub(crate) struct RaftSeries {
    has_leader: IntGauge,
    commit_index: IntGauge,
    last_log_index: IntGauge,
    voters: IntGauge,
    quorum_ack_age_seconds: Gauge,
    pub(crate) leader_changes_total: IntCounter,
    pub(crate) apply_duration_seconds: Histogram,
}

impl RaftSeries {
    pub(super) fn register(add: &Registrar<'_>) -> Self {
        let apply = HistogramOpts::new(
            "warren_raft_apply_duration_seconds",
            "Time the state machine takes to apply one batch of committed entries.",
        )
        .buckets(APPLY_BUCKETS.to_vec());
        RaftSeries {
            has_leader: add.gauge("warren_raft_has_leader", "1 while this node knows a Raft leader."),
            commit_index: add.gauge(
                "warren_raft_commit_index",
                "Highest Raft log index this node knows committed. openraft 0.9 exposes no committed index, so this is the last applied one: every applied entry is committed, and entries are applied as soon as they are, so it trails the committed index only while a batch is being applied.",
            ),
            last_log_index: add.gauge(
                "warren_raft_last_log_index",
                "Last Raft log index appended to this node's log.",
            ),
            voters: add.gauge(
                "warren_raft_voters",
                "Voters in the Raft membership this node knows.",
            ),
            quorum_ack_age_seconds: add.registered(
                Gauge::new(
                    "warren_raft_quorum_ack_age_seconds",
                    "On the leader, seconds since a quorum last acknowledged it; -1 on other nodes and before the first acknowledgement.",
                )
                .expect("valid metric"),
            ),
            leader_changes_total: add.counter(
                "warren_raft_leader_changes_total",
                "Times this node saw the Raft leader change since it started (learning the first leader counts).",
            ),
            apply_duration_seconds: add
                .registered(Histogram::with_opts(apply).expect("valid metric")),
        }
    }

    /// Sets the gauges from openraft's metrics on node `me`.
    pub(super) fn refresh(&self, raft: &RaftMetrics, me: u64) {
        self.has_leader
            .set(i64::from(raft.current_leader.is_some()));
        let index = |i: Option<u64>| i64::try_from(i.unwrap_or(0)).unwrap_or(i64::MAX);
        self.commit_index
            .set(index(raft.last_applied.map(|log| log.index)));
        self.last_log_index.set(index(raft.last_log_index));
        let voters = raft.membership_config.membership().voter_ids().count();
        self.voters.set(i64::try_from(voters).unwrap_or(i64::MAX));
        let quorum_ack_age = match raft.millis_since_quorum_ack {
            Some(ms) if raft.current_leader == Some(me) => ms as f64 / 1000.0,
            _ => -1.0,
        };
        self.quorum_ack_age_seconds.set(quorum_ack_age);
    }
}

/// Counts in `changes` each time the leader `raft` reports becomes a different node than the
/// last one known (a spell without a leader that ends with the same one is no change), until
/// `cancel` fires or Raft stops.
pub(crate) async fn count_leader_changes(
    mut raft: watch::Receiver<RaftMetrics>,
    changes: IntCounter,
    cancel: CancellationToken,
) {
    let mut known = None;
    loop {
        let leader = raft.borrow_and_update().current_leader;
        if leader_changed(&mut known, leader) {
            changes.inc();
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = raft.changed() => if changed.is_err() { return },
        }
    }
}

/// Whether `leader` (now) is a change from `known` (the last leader seen), which it updates.
fn leader_changed(known: &mut Option<u64>, leader: Option<u64>) -> bool {
    let changed = leader.is_some() && leader != *known;
    if changed {
        *known = leader;
    }
    changed
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;

    fn with_leader(leader: Option<u64>) -> RaftMetrics {
        RaftMetrics {
            current_leader: leader,
            ..RaftMetrics::new_initial(1)
        }
    }

    /// A leader learnt, lost and found again is one change; another leader is a second.
    #[test]
    fn leader_changes_are_changes_of_node() {
        let mut known = None;
        let seen: Vec<bool> = [Some(1), None, Some(1), Some(2), Some(2)]
            .into_iter()
            .map(|leader| leader_changed(&mut known, leader))
            .collect();
        assert_eq!(seen, [true, false, false, true, false]);
    }

    #[test]
    fn quorum_ack_age_is_the_leaders_alone() {
        let registry = Registry::new();
        let series = RaftSeries::register(&crate::metrics::Registrar(&registry));
        let mut metrics = with_leader(Some(1));
        metrics.millis_since_quorum_ack = Some(1_500);
        metrics.last_log_index = Some(7);
        series.refresh(&metrics, 1);
        assert_eq!(series.quorum_ack_age_seconds.get(), 1.5);
        assert_eq!(series.last_log_index.get(), 7);
        assert_eq!(series.has_leader.get(), 1);
        series.refresh(&metrics, 2);
        assert_eq!(series.quorum_ack_age_seconds.get(), -1.0);
        series.refresh(&with_leader(None), 1);
        assert_eq!(series.has_leader.get(), 0);
    }
}
