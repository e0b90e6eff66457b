//! Which control peers answer: each control node's book of when it last heard from every Raft
//! peer, and since when its calls to that peer have failed.
//!
//! Pure (time is an argument). [`crate::network::Peers`] feeds it from every outbound call and
//! every inbound Raft RPC, and logs the [`Notice`]s it returns. The leader's book is the one
//! that counts: the leader heartbeats every member several times a second, so calls that keep
//! failing there mean the member is down or cut off from the leader. A follower hears only from
//! its leader, so the API asks the leader for its book (see
//! [`crate::control::Control::member_contacts`]).
//!
//! A peer is *unreachable* once calls to it have failed, with no word from it, for
//! `unreachable_after`. That is logged once when it happens, then at most once per
//! [`STILL_DOWN_LOG_EVERY`] while it lasts, and once more when the peer answers again. A peer
//! that answers, but lets some calls pass their deadline, is *slow*: logged when it next
//! answers, with the count of late calls, at most once per [`SLOW_LOG_EVERY`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use warren_api::NodeId;
use warren_api::rest::{MemberContact, MemberHealth};

/// While a peer stays unreachable, how often that is logged again.
pub const STILL_DOWN_LOG_EVERY: Duration = Duration::from_secs(60);

/// How often a slow peer is logged, at most.
pub const SLOW_LOG_EVERY: Duration = Duration::from_secs(60);

/// Longest error text kept per peer (errors from the network can be long).
const MAX_ERROR_CHARS: usize = 200;

/// How one peer answers, as this node's calls and the peer's own RPCs tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Nothing heard and nothing tried yet.
    Unknown,
    /// Heard from at `last_heard`; calls may have started failing, but not for long.
    Reachable {
        /// When this node last heard from it.
        last_heard: Instant,
    },
    /// Calls have failed, with no word from it, since `since`.
    Unreachable {
        /// The first failed call after the last word from the peer.
        since: Instant,
        /// The latest failed call.
        last_failed: Instant,
        /// When this node last heard from it, if ever.
        last_heard: Option<Instant>,
        /// The last call's error.
        error: String,
    },
}

/// Something worth a log line: a peer went down, is still down, or came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Calls to `peer` have failed for `unreachable_after` (logged once).
    Down {
        /// The peer.
        peer: u64,
        /// How long calls have failed.
        failing_for: Duration,
        /// The last error.
        error: String,
    },
    /// `peer` is still down (at most once per [`STILL_DOWN_LOG_EVERY`]).
    StillDown {
        /// The peer.
        peer: u64,
        /// How long calls have failed.
        failing_for: Duration,
        /// The last error.
        error: String,
    },
    /// `peer` answers, but `late_calls` calls to it passed their deadline since it was last
    /// logged (at most once per [`SLOW_LOG_EVERY`]).
    Slow {
        /// The peer.
        peer: u64,
        /// Calls that got no answer in time.
        late_calls: u32,
        /// The last late call's error.
        error: String,
    },
    /// `peer` answered again after it was reported down.
    Back {
        /// The peer.
        peer: u64,
        /// How long it was unreachable.
        down_for: Duration,
    },
}

#[derive(Clone, Debug, Default)]
struct PeerContact {
    last_heard: Option<Instant>,
    failing_since: Option<Instant>,
    last_failed: Option<Instant>,
    last_error: String,
    /// Set once the peer has been reported down: when that was last logged.
    reported_down_at: Option<Instant>,
    /// Calls that passed their deadline since the peer was last reported slow.
    late_calls: u32,
    /// When the peer was last reported slow.
    reported_slow_at: Option<Instant>,
}

/// Every peer's contact record.
#[derive(Clone, Debug)]
pub struct ContactBook {
    unreachable_after: Duration,
    peers: BTreeMap<u64, PeerContact>,
}

impl ContactBook {
    /// A book that judges a peer unreachable after `unreachable_after` of failed calls.
    pub fn new(unreachable_after: Duration) -> Self {
        Self {
            unreachable_after,
            peers: BTreeMap::new(),
        }
    }

    /// `peer` answered a call or sent an RPC at `now`.
    pub fn heard(&mut self, peer: u64, now: Instant) -> Option<Notice> {
        let contact = self.peers.entry(peer).or_default();
        contact.last_heard = Some(contact.last_heard.map_or(now, |t| t.max(now)));
        let failing_since = contact.failing_since.take();
        if contact.reported_down_at.take().is_some() {
            contact.late_calls = 0;
            return Some(Notice::Back {
                peer,
                down_for: failing_since
                    .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
            });
        }
        let quiet = contact
            .reported_slow_at
            .is_none_or(|at| now.saturating_duration_since(at) >= SLOW_LOG_EVERY);
        if contact.late_calls == 0 || !quiet {
            return None;
        }
        contact.reported_slow_at = Some(now);
        Some(Notice::Slow {
            peer,
            late_calls: std::mem::take(&mut contact.late_calls),
            error: contact.last_error.clone(),
        })
    }

    /// A call to `peer` passed its deadline at `now` without an answer: a failure, and a late
    /// call should the peer answer the next one.
    pub fn late(&mut self, peer: u64, now: Instant, error: &str) -> Option<Notice> {
        let contact = self.peers.entry(peer).or_default();
        contact.late_calls = contact.late_calls.saturating_add(1);
        self.failed(peer, now, error)
    }

    /// A call to `peer` failed at `now` with `error`.
    pub fn failed(&mut self, peer: u64, now: Instant, error: &str) -> Option<Notice> {
        let unreachable_after = self.unreachable_after;
        let contact = self.peers.entry(peer).or_default();
        let since = *contact.failing_since.get_or_insert(now);
        contact.last_failed = Some(now);
        contact.last_error = error.chars().take(MAX_ERROR_CHARS).collect();
        let failing_for = now.saturating_duration_since(since);
        if failing_for < unreachable_after {
            return None;
        }
        let error = contact.last_error.clone();
        match contact.reported_down_at {
            None => {
                contact.reported_down_at = Some(now);
                Some(Notice::Down {
                    peer,
                    failing_for,
                    error,
                })
            }
            Some(logged) if now.saturating_duration_since(logged) >= STILL_DOWN_LOG_EVERY => {
                contact.reported_down_at = Some(now);
                Some(Notice::StillDown {
                    peer,
                    failing_for,
                    error,
                })
            }
            Some(_) => None,
        }
    }

    /// How `peer` answers at `now`.
    pub fn health(&self, peer: u64, now: Instant) -> Health {
        let Some(contact) = self.peers.get(&peer) else {
            return Health::Unknown;
        };
        match (contact.failing_since, contact.last_heard) {
            (Some(since), last_heard)
                if now.saturating_duration_since(since) >= self.unreachable_after =>
            {
                Health::Unreachable {
                    since,
                    last_failed: contact.last_failed.unwrap_or(since),
                    last_heard,
                    error: contact.last_error.clone(),
                }
            }
            (_, Some(last_heard)) => Health::Reachable { last_heard },
            (_, None) => Health::Unknown,
        }
    }

    /// Whether to leave `peer` out of a call that can do without it (soft state): it is
    /// unreachable and was last tried less than `unreachable_after` ago. Once that has passed
    /// it is asked again, so a peer that came back is found even by a node that only calls it
    /// for such answers.
    pub fn skip(&self, peer: u64, now: Instant) -> bool {
        match self.health(peer, now) {
            Health::Unreachable { last_failed, .. } => {
                now.saturating_duration_since(last_failed) < self.unreachable_after
            }
            _ => false,
        }
    }

    /// Whether the latest calls to `peer` failed, with no word from it since: it may be down,
    /// though not for long enough to be judged unreachable yet.
    pub fn failing(&self, peer: u64) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|contact| contact.failing_since.is_some())
    }

    /// Forgets the peers `keep` says no (members that left).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.peers.retain(|peer, _| keep(*peer));
    }
}

impl Health {
    /// The API's form of this judgement by `judge`, with instants turned into unix ms through
    /// the pair (`now`, `now_ms`) read at the same moment.
    pub fn to_api(&self, judge: u64, now: Instant, now_ms: u64) -> MemberContact {
        let unix_ms = |at: Instant| {
            let ago =
                u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
            now_ms.saturating_sub(ago)
        };
        let (health, last_heard, since, error) = match self {
            Health::Unknown => (MemberHealth::Unknown, None, None, None),
            Health::Reachable { last_heard } => {
                (MemberHealth::Reachable, Some(*last_heard), None, None)
            }
            Health::Unreachable {
                since,
                last_heard,
                error,
                ..
            } => (
                MemberHealth::Unreachable,
                *last_heard,
                Some(*since),
                Some(error.clone()),
            ),
        };
        MemberContact {
            health,
            last_contact_ms: last_heard.map(unix_ms),
            unreachable_since_ms: since.map(unix_ms),
            error,
            judged_by: NodeId(judge),
        }
    }
}

#[cfg(test)]
mod tests;
