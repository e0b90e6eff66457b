use std::collections::VecDeque;

use warren_api::{Availability, Node, NodeAddresses, Revision};

use super::*;

fn node(id: u64, role: NodeRole, state: NodeState) -> Node {
    Node {
        id: NodeId(id),
        name: format!("n{id}"),
        site: "a".into(),
        role,
        labels: Default::default(),
        addresses: NodeAddresses::default(),
        availability: Availability::Active,
        state,
        joined_at_ms: 0,
        cert_serial: None,
    }
}

fn report(id: u64, connected: bool, last_contact_ms: u64) -> (NodeId, AgentReport) {
    (
        NodeId(id),
        AgentReport {
            node_id: NodeId(id),
            control_id: 1,
            connected,
            last_contact_ms,
            revision_acked: Revision::ZERO,
            agent_version: String::new(),
            replicas: vec![],
            reported_at_ms: 0,
            events: VecDeque::new(),
            events_dropped: 0,
            listeners: vec![],
            mesh_peers: vec![],
            mesh_peers_up: None,
        },
    )
}

fn no_gossip() -> BTreeMap<NodeId, GossipLiveness> {
    BTreeMap::new()
}

fn gossip(id: u64, liveness: GossipLiveness) -> BTreeMap<NodeId, GossipLiveness> {
    BTreeMap::from([(NodeId(id), liveness)])
}

fn state(nodes: Vec<Node>) -> ClusterState {
    let mut state = ClusterState::default();
    for n in nodes {
        state.nodes.insert(n.id, n);
    }
    state
}

#[test]
fn a_silent_agent_is_unreachable_only_after_the_grace_counted_from_leadership() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(30), 1_000);
    let s = state(vec![node(2, NodeRole::Agent, NodeState::Ready)]);
    let none = BTreeMap::new();
    assert!(liveness.decide(20_000, &s, &none, &no_gossip()).is_empty());
    assert_eq!(
        liveness.decide(31_000, &s, &none, &no_gossip()),
        vec![Op::NodeUnreachable { node: NodeId(2) }]
    );
}

#[test]
fn a_connected_agent_stays_ready_and_an_old_contact_counts() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(30), 0);
    let s = state(vec![node(2, NodeRole::Agent, NodeState::Ready)]);
    let live = BTreeMap::from([report(2, true, 99_000)]);
    assert!(liveness.decide(100_000, &s, &live, &no_gossip()).is_empty());
    let gone = BTreeMap::from([report(2, false, 100_000)]);
    assert!(liveness.decide(120_000, &s, &gone, &no_gossip()).is_empty());
    assert_eq!(
        liveness.decide(130_000, &s, &gone, &no_gossip()),
        vec![Op::NodeUnreachable { node: NodeId(2) }]
    );
}

#[test]
fn an_unreachable_agent_that_reconnects_is_reachable_again() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(30), 0);
    let s = state(vec![node(
        2,
        NodeRole::Agent,
        NodeState::Unreachable { since_ms: 1 },
    )]);
    assert!(
        liveness
            .decide(10, &s, &BTreeMap::new(), &no_gossip())
            .is_empty()
    );
    let live = BTreeMap::from([report(2, true, 10)]);
    assert_eq!(
        liveness.decide(20, &s, &live, &no_gossip()),
        vec![Op::NodeReachable { node: NodeId(2) }]
    );
}

#[test]
fn control_nodes_and_removed_agents_are_left_alone() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(1), 0);
    let s = state(vec![
        node(1, NodeRole::Control, NodeState::Ready),
        node(3, NodeRole::Agent, NodeState::Removed),
    ]);
    assert!(
        liveness
            .decide(100_000, &s, &BTreeMap::new(), &no_gossip())
            .is_empty()
    );
}

#[test]
fn gossip_dead_makes_a_disconnected_agent_unreachable_without_the_grace() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(60), 0);
    let s = state(vec![node(2, NodeRole::Agent, NodeState::Ready)]);
    let dead = gossip(2, GossipLiveness::Dead);
    assert_eq!(
        liveness.decide(1_000, &s, &BTreeMap::new(), &dead),
        vec![Op::NodeUnreachable { node: NodeId(2) }]
    );
    // A live link outweighs gossip: the agent is plainly reachable.
    let live = BTreeMap::from([report(2, true, 1_000)]);
    assert!(liveness.decide(2_000, &s, &live, &dead).is_empty());
}

#[test]
fn a_connected_link_unheard_for_a_few_keep_alives_no_longer_outweighs_gossip() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(60), 0);
    let s = state(vec![node(2, NodeRole::Agent, NodeState::Ready)]);
    let dead = gossip(2, GossipLiveness::Dead);
    // The agent was killed at 10 s: control's stream is still open, its last contact stays.
    let killed = BTreeMap::from([report(2, true, 10_000)]);
    let stale_at = 10_000 + LINK_STALE.as_millis() as u64;
    assert!(liveness.decide(stale_at, &s, &killed, &dead).is_empty());
    assert_eq!(
        liveness.decide(stale_at + 1, &s, &killed, &dead),
        vec![Op::NodeUnreachable { node: NodeId(2) }]
    );
    // Without gossip's word, a stale link only runs the grace, counted from the last time
    // the link counted as up (13 s here).
    assert!(
        liveness
            .decide(stale_at + 59_999, &s, &killed, &no_gossip())
            .is_empty()
    );
    assert_eq!(
        liveness.decide(stale_at + 60_000, &s, &killed, &no_gossip()),
        vec![Op::NodeUnreachable { node: NodeId(2) }]
    );
}

#[test]
fn suspect_gossip_changes_nothing() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(60), 0);
    let s = state(vec![node(2, NodeRole::Agent, NodeState::Ready)]);
    let suspect = gossip(2, GossipLiveness::Suspect);
    assert!(
        liveness
            .decide(1_000, &s, &BTreeMap::new(), &suspect)
            .is_empty()
    );
    assert_eq!(
        liveness.decide(60_000, &s, &BTreeMap::new(), &suspect),
        vec![Op::NodeUnreachable { node: NodeId(2) }]
    );
}

/// Gossip's `Alive` is hearsay (any key holder can claim it, e.g. an agent gossiping as a
/// killed one): it neither brings an unreachable agent back nor holds off the grace of a
/// silent one. Only the agent's own link does.
#[test]
fn gossip_alive_never_vouches_for_a_silent_agent() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(30), 0);
    let unreachable = state(vec![node(
        2,
        NodeRole::Agent,
        NodeState::Unreachable { since_ms: 1 },
    )]);
    let alive = gossip(2, GossipLiveness::Alive);
    assert!(
        liveness
            .decide(10, &unreachable, &BTreeMap::new(), &alive)
            .is_empty(),
        "gossip alone does not bring it back"
    );
    let ready = state(vec![node(2, NodeRole::Agent, NodeState::Ready)]);
    assert!(
        liveness
            .decide(29_999, &ready, &BTreeMap::new(), &alive)
            .is_empty()
    );
    assert_eq!(
        liveness.decide(30_000, &ready, &BTreeMap::new(), &alive),
        vec![Op::NodeUnreachable { node: NodeId(2) }],
        "gossip alone does not hold off the grace"
    );
    // Its own link does.
    let (id, live) = report(2, true, 40_000);
    let live = [(id, live)].into_iter().collect();
    assert_eq!(
        liveness.decide(40_000, &unreachable, &live, &alive),
        vec![Op::NodeReachable { node: NodeId(2) }]
    );
}

#[test]
fn control_nodes_are_left_alone_whatever_gossip_says() {
    let mut liveness = LivenessJudge::new(Duration::from_secs(60), 0);
    let s = state(vec![node(1, NodeRole::Control, NodeState::Ready)]);
    let dead = gossip(1, GossipLiveness::Dead);
    assert!(
        liveness
            .decide(1_000, &s, &BTreeMap::new(), &dead)
            .is_empty()
    );
}
