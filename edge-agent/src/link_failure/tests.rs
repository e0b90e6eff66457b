//! When the link gives up on a silent control node: the silence margin, a slow link's longer margin, and gossip as the witness.

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
