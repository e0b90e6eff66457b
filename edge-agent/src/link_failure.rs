//! When the link gives up on its control node: the link's failure detector (sans-IO).
//!
//! A control node that is killed or frozen (SIGSTOP, a hung VM) closes nothing: its agents see
//! only silence. Silence alone is a poor verdict on an edge uplink, though: a lossy or flapping
//! WAN goes silent for seconds too, and reconnecting then gains nothing (every control node is
//! behind the same bad link) and costs a new session. So the detector moves early only when two
//! independent witnesses agree:
//!
//! 1. **QUIC**: nothing at all (data, heartbeat, or the acknowledgement of the agent's own
//!    keep-alive, sent every [`LINK_KEEP_ALIVE`]) has arrived on the connection for longer than
//!    one keep-alive plus a margin scaled from the measured round-trip time; and
//! 2. **gossip**: the agent's mesh no longer hears that control node (suspect or dead), while
//!    it does hear another control node alive, so there is somewhere better to go and the
//!    agent itself is not the one cut off (cut off, it hears no control node at all).
//!
//! Without gossip's word (no mesh, or every control node silent) the detector waits for
//! [`SILENCE_LIMIT`], the backstop that today's three missed heartbeats give.
//!
//! The detector is a pure function of what the session observes; the session feeds it every
//! [`CHECK_INTERVAL`].

use std::time::{Duration, Instant};

use warren_api::{NodeId, NodeRole};
use warren_mesh::{Liveness, Member};

/// How often the agent's QUIC endpoint pings control when it has nothing else to send, so that
/// a live control node is heard from (its acknowledgement) at least this often.
pub const LINK_KEEP_ALIVE: Duration = warren_api::wire::AGENT_KEEP_ALIVE;

/// The least silence, beyond one keep-alive, that counts as suspicious: on a LAN the measured
/// round trip is a millisecond, and a few lost pings must still not look like a death.
pub const SUSPECT_MARGIN_MIN: Duration = Duration::from_millis(500);

/// How many round trips beyond one keep-alive a silence must last before it counts: QUIC
/// retransmits an unacknowledged ping after about one round trip (plus the ack delay), so four
/// leave room for a couple of lost probes on a slow link.
pub const SUSPECT_ROUND_TRIPS: u32 = 4;

// How long the connection may stay silent with no corroboration before the agent gives up on
// that control node anyway is the protocol's silence limit: an agent without gossip, or one
// that hears no control node at all, still reconnects eventually.
use warren_api::wire::SILENCE_LIMIT;

/// How often the session asks the detector.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// What gossip says, for the detector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipWitness {
    /// How the mesh sees the control node the link is attached to (`None`: not in the mesh, or
    /// no mesh).
    pub ours: Option<Liveness>,
    /// Whether the mesh hears another control node alive.
    pub other_control_alive: bool,
}

impl GossipWitness {
    /// What `members` (this agent's mesh view) say about control node `ours`.
    pub fn from_members(members: &[Member], ours: Option<NodeId>) -> Self {
        let is_ours = |member: &Member| Some(member.node_id) == ours;
        GossipWitness {
            ours: members.iter().find(|m| is_ours(m)).map(|m| m.liveness),
            other_control_alive: members.iter().any(|m| {
                !is_ours(m) && m.role == Some(NodeRole::Control) && m.liveness == Liveness::Alive
            }),
        }
    }

    fn lost_ours_but_hears_another(self) -> bool {
        matches!(self.ours, Some(Liveness::Suspect | Liveness::Dead)) && self.other_control_alive
    }
}

/// Why the detector gave up on the control node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Heard from recently enough, or silent without corroboration: keep the session.
    Keep,
    /// Silent on QUIC, and gossip hears another control node but not this one.
    GossipLostIt {
        /// How long QUIC had been silent.
        silent_for: Duration,
        /// What gossip says of this control node.
        gossip: Liveness,
    },
    /// Silent on QUIC for [`SILENCE_LIMIT`].
    Silent {
        /// How long.
        silent_for: Duration,
    },
}

/// The link's failure detector for one session.
#[derive(Debug)]
pub struct LinkFailureDetector {
    heard_at: Instant,
    datagrams_seen: u64,
}

impl LinkFailureDetector {
    /// Starts with the connection just heard from (it was just established).
    pub fn new(now: Instant, datagrams_received: u64) -> Self {
        LinkFailureDetector {
            heard_at: now,
            datagrams_seen: datagrams_received,
        }
    }

    /// How long a silence must last before gossip's word can end the session, given the
    /// connection's round-trip estimate.
    pub fn suspect_after(rtt: Duration) -> Duration {
        let margin = (rtt * SUSPECT_ROUND_TRIPS).max(SUSPECT_MARGIN_MIN);
        (LINK_KEEP_ALIVE + margin).min(SILENCE_LIMIT)
    }

    /// Feeds what the session sees now: the connection's received-datagram count and round
    /// trip, and gossip's word. Returns whether to keep the session.
    pub fn observe(
        &mut self,
        now: Instant,
        datagrams_received: u64,
        rtt: Duration,
        gossip: GossipWitness,
    ) -> Verdict {
        if datagrams_received != self.datagrams_seen {
            self.datagrams_seen = datagrams_received;
            self.heard_at = now;
        }
        let silent_for = now.saturating_duration_since(self.heard_at);
        if silent_for >= SILENCE_LIMIT {
            return Verdict::Silent { silent_for };
        }
        match gossip.ours {
            Some(liveness)
                if silent_for >= Self::suspect_after(rtt)
                    && gossip.lost_ours_but_hears_another() =>
            {
                Verdict::GossipLostIt {
                    silent_for,
                    gossip: liveness,
                }
            }
            _ => Verdict::Keep,
        }
    }
}

#[cfg(test)]
mod tests;
