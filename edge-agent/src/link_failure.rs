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

/// How long the connection may stay silent with no corroboration before the agent gives up on
/// that control node anyway (three of control's 5 s heartbeats): an agent without gossip, or one
/// that hears no control node at all, still reconnects eventually.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);

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
mod tests {
    use super::*;

    const LAN_RTT: Duration = Duration::from_millis(1);

    fn witness(ours: Option<Liveness>, other_control_alive: bool) -> GossipWitness {
        GossipWitness {
            ours,
            other_control_alive,
        }
    }

    /// Silence of `silent_ms` (nothing received since the start), then one observation.
    fn check(silent_ms: u64, rtt: Duration, gossip: GossipWitness, expected: Verdict) {
        let start = Instant::now();
        let mut detector = LinkFailureDetector::new(start, 7);
        let verdict = detector.observe(start + Duration::from_millis(silent_ms), 7, rtt, gossip);
        assert_eq!(
            verdict, expected,
            "silent {silent_ms} ms, rtt {rtt:?}, {gossip:?}"
        );
    }

    #[test]
    fn gossip_and_quic_must_agree_before_the_silence_limit() {
        let lost = witness(Some(Liveness::Dead), true);
        let suspect = witness(Some(Liveness::Suspect), true);
        // Heard from recently: gossip's word alone moves nothing.
        check(1_000, LAN_RTT, lost, Verdict::Keep);
        // Silent past one keep-alive and the margin, gossip agrees: gone.
        check(
            1_600,
            LAN_RTT,
            lost,
            Verdict::GossipLostIt {
                silent_for: Duration::from_millis(1_600),
                gossip: Liveness::Dead,
            },
        );
        check(
            1_600,
            LAN_RTT,
            suspect,
            Verdict::GossipLostIt {
                silent_for: Duration::from_millis(1_600),
                gossip: Liveness::Suspect,
            },
        );
        // Gossip still hears it, or hears no other control node (we are the ones cut off), or
        // knows nothing: keep waiting.
        check(
            5_000,
            LAN_RTT,
            witness(Some(Liveness::Alive), true),
            Verdict::Keep,
        );
        check(
            5_000,
            LAN_RTT,
            witness(Some(Liveness::Dead), false),
            Verdict::Keep,
        );
        check(5_000, LAN_RTT, witness(None, true), Verdict::Keep);
        check(5_000, LAN_RTT, GossipWitness::default(), Verdict::Keep);
        // The backstop needs no witness.
        check(
            15_000,
            LAN_RTT,
            GossipWitness::default(),
            Verdict::Silent {
                silent_for: SILENCE_LIMIT,
            },
        );
    }

    #[test]
    fn a_slow_link_gets_a_longer_margin() {
        assert_eq!(
            LinkFailureDetector::suspect_after(LAN_RTT),
            Duration::from_millis(1_500)
        );
        // 350 ms round trips (slow-wan): 1 s + 4 × 350 ms.
        assert_eq!(
            LinkFailureDetector::suspect_after(Duration::from_millis(350)),
            Duration::from_millis(2_400)
        );
        check(
            2_000,
            Duration::from_millis(350),
            witness(Some(Liveness::Dead), true),
            Verdict::Keep,
        );
        // Never past the backstop.
        assert_eq!(
            LinkFailureDetector::suspect_after(Duration::from_secs(10)),
            SILENCE_LIMIT
        );
    }

    #[test]
    fn anything_received_restarts_the_silence() {
        let start = Instant::now();
        let lost = witness(Some(Liveness::Dead), true);
        let mut detector = LinkFailureDetector::new(start, 0);
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(detector.observe(at(1_000), 1, LAN_RTT, lost), Verdict::Keep);
        assert_eq!(detector.observe(at(2_400), 1, LAN_RTT, lost), Verdict::Keep);
        assert_eq!(
            detector.observe(at(2_600), 1, LAN_RTT, lost),
            Verdict::GossipLostIt {
                silent_for: Duration::from_millis(1_600),
                gossip: Liveness::Dead,
            }
        );
    }

    #[test]
    fn the_witness_reads_roles_and_liveness_from_members() {
        let member = |id: u64, role: NodeRole, liveness: Liveness| {
            let mut meta = std::collections::BTreeMap::new();
            meta.insert("role".to_owned(), role.as_str().to_owned());
            Member::from_meta(
                NodeId(id),
                1,
                "127.0.0.1:7946".parse().expect("address"),
                liveness,
                meta,
            )
        };
        let members = vec![
            member(1, NodeRole::Control, Liveness::Dead),
            member(2, NodeRole::Control, Liveness::Alive),
            member(3, NodeRole::Agent, Liveness::Alive),
        ];
        assert_eq!(
            GossipWitness::from_members(&members, Some(NodeId(1))),
            witness(Some(Liveness::Dead), true)
        );
        // Only agents alive besides ours: nowhere better to go.
        assert_eq!(
            GossipWitness::from_members(&members[..1], Some(NodeId(1))),
            witness(Some(Liveness::Dead), false)
        );
        assert_eq!(
            GossipWitness::from_members(&members, Some(NodeId(2))),
            witness(Some(Liveness::Alive), false)
        );
    }
}
