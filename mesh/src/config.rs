//! The mesh's configuration and its named timers.

use std::net::SocketAddr;
use std::time::Duration;

use warren_api::{NodeId, NodeRole};

use crate::fault::GossipFaultSwitch;
use crate::identity::MeshIdentity;
use crate::keyring::Keyring;

/// The longest partition Warren promises to survive without gossip resurrecting deleted state
/// or forgetting a live node: 72 hours, a site cut off from Friday evening to Monday morning.
/// [`DEFAULT_DEAD_NODE_GRACE`] and [`DEFAULT_MARKED_FOR_DELETION_GRACE`] are sized from it.
pub const LONGEST_PARTITION_PROMISED: Duration = Duration::from_secs(72 * 3600);

/// How often a node starts a gossip round (a SYN to [`DEFAULT_PEERS_PER_ROUND`] live peer,
/// maybe one to a dead peer or a seed). 500 ms: with one peer a round, a death is seen as soon
/// as with three peers every 1 s, for a third less traffic (docs/mesh.md, "Gossip traffic at
/// fleet scale": 750 ms halves the traffic but a death took 1.5-3.5 s longer to reach the
/// last of 100 agents; 1 s took 60 % longer).
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// How many live peers a round's SYNs reach: 1. chitchat picks three; the transport sends
/// only the first ([`crate::syn_budget`]), since every SYN and its answer carry a digest of
/// every member (about 21 bytes each, compressed): at 100 real agents, three peers every
/// second cost 16 KB/s per agent, 82 % of it digests. For the failure detector what counts is
/// how soon a heartbeat reaches everyone, which takes rounds, not peers: one peer every 500 ms
/// sees a death as soon as three every second, for a third less traffic.
pub const DEFAULT_PEERS_PER_ROUND: usize = 1;
/// The most peers a round can reach: chitchat picks three live peers per round.
pub const MAX_PEERS_PER_ROUND: usize = 3;
/// phi above which the failure detector declares a node dead. phi is the time since its last
/// heartbeat divided by the mean interval between heartbeats, so 5 means "silent for five
/// typical intervals". A node sees another's heartbeat move about once a round (it rides in
/// every digest); with the few seconds the last heartbeat takes to reach everyone, a death is
/// seen by all of 100 nodes in about 6-8 s (docs/mesh.md). With one peer a round, phi 4 kept
/// two (agent, member) pairs falsely dead at any moment at 100 real agents. Lower thresholds turn CPU stalls and lost datagrams into
/// false deaths (phi 3 flapped in the 100-node bench).
pub const DEFAULT_PHI_THRESHOLD: f64 = 5.0;
/// Heartbeat intervals the failure detector averages over: about a minute of them, so the
/// detector learns a link's new normal (loss, delay) within a minute rather than a quarter of
/// an hour.
pub const DEFAULT_SAMPLING_WINDOW: usize = 100;
/// Heartbeat intervals longer than this are left out of the mean (one long silence must not
/// teach the detector that long silences are normal).
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(10);
/// The prior mean interval before any heartbeat is seen (weighted as five samples): one gossip
/// interval, which is what the mean settles near. A larger prior (chitchat's 5 s) makes a node
/// that has just joined or come back take several times longer to be found dead.
pub const DEFAULT_INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a dead node's state is kept before it is forgotten: 7 days. chitchat stops
/// sharing a dead node after half this time (3.5 days) and forgets it after all of it; a side
/// of a partition that had stopped sharing a node, or forgotten it, would take it and its keys
/// back from the other side on heal as new, bringing deleted keys with it. Half the grace
/// must therefore exceed [`LONGEST_PARTITION_PROMISED`] (3.5 d > 72 h, with 12 h to spare).
/// The cost: a dead node (and each restart is a new generation) stays listed as dead for a
/// week.
pub const DEFAULT_DEAD_NODE_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a deleted key's tombstone is kept before it is garbage-collected: 7 days, longer
/// than [`LONGEST_PARTITION_PROMISED`], so a deletion made on one side of a partition reaches
/// the other side by ordinary gossip when it heals. (Past it, chitchat resets a peer that
/// missed the deletion from the full state, which also converges, at the cost of a full
/// transfer.)
pub const DEFAULT_MARKED_FOR_DELETION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a node re-signs its state ([`crate::identity`]): 5 s. Each signature is ~110
/// bytes that every node receives a few times over: at 50 real agents, signing every 2 s took
/// gossip from 7.1 to 10.9 KB/s per agent. Heartbeats still detect an honest death as fast as
/// before; this only bounds how long someone else can keep a dead node alive.
pub const DEFAULT_ATTEST_INTERVAL: Duration = Duration::from_secs(5);
/// How long a member's signed attestation may stand still before the member is dead whatever
/// its heartbeat says: 20 s, four signatures, so that one or two lost on the way never make a
/// live node dead. This bounds how long anyone but the node itself can keep it alive.
pub const DEFAULT_ATTEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The overlap during which the previous gossip key stays accepted after a rotation: long
/// enough for the new key to reach every node through its desired-state stream.
pub const DEFAULT_KEY_ROTATION_OVERLAP: Duration = Duration::from_secs(3600);

const _: () = assert!(DEFAULT_DEAD_NODE_GRACE.as_secs() / 2 > LONGEST_PARTITION_PROMISED.as_secs());
const _: () =
    assert!(DEFAULT_MARKED_FOR_DELETION_GRACE.as_secs() > LONGEST_PARTITION_PROMISED.as_secs());

/// The mesh's timers. Defaults are the `DEFAULT_*` constants; tests shrink them.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshTimers {
    /// [`DEFAULT_GOSSIP_INTERVAL`].
    pub gossip_interval: Duration,
    /// [`DEFAULT_PEERS_PER_ROUND`]; at most [`MAX_PEERS_PER_ROUND`].
    pub peers_per_round: usize,
    /// [`DEFAULT_PHI_THRESHOLD`].
    pub phi_threshold: f64,
    /// [`DEFAULT_SAMPLING_WINDOW`].
    pub sampling_window: usize,
    /// [`DEFAULT_MAX_INTERVAL`].
    pub max_interval: Duration,
    /// [`DEFAULT_INITIAL_INTERVAL`].
    pub initial_interval: Duration,
    /// [`DEFAULT_DEAD_NODE_GRACE`].
    pub dead_node_grace: Duration,
    /// [`DEFAULT_MARKED_FOR_DELETION_GRACE`].
    pub marked_for_deletion_grace: Duration,
    /// [`DEFAULT_ATTEST_INTERVAL`].
    pub attest_interval: Duration,
    /// [`DEFAULT_ATTEST_TIMEOUT`].
    pub attest_timeout: Duration,
}

impl Default for MeshTimers {
    fn default() -> Self {
        Self {
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            peers_per_round: DEFAULT_PEERS_PER_ROUND,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            sampling_window: DEFAULT_SAMPLING_WINDOW,
            max_interval: DEFAULT_MAX_INTERVAL,
            initial_interval: DEFAULT_INITIAL_INTERVAL,
            dead_node_grace: DEFAULT_DEAD_NODE_GRACE,
            marked_for_deletion_grace: DEFAULT_MARKED_FOR_DELETION_GRACE,
            attest_interval: DEFAULT_ATTEST_INTERVAL,
            attest_timeout: DEFAULT_ATTEST_TIMEOUT,
        }
    }
}

/// A configuration whose values contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mesh config: {0}")]
pub struct ConfigError(pub &'static str);

impl MeshTimers {
    /// Checks the relations between the timers.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first relation that does not hold.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gossip_interval.is_zero() {
            return Err(ConfigError("gossip_interval must be positive"));
        }
        if !(1..=MAX_PEERS_PER_ROUND).contains(&self.peers_per_round) {
            return Err(ConfigError("peers_per_round must be 1 to 3"));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 1.0) {
            return Err(ConfigError("phi_threshold must be a finite number above 1"));
        }
        if self.sampling_window == 0 {
            return Err(ConfigError("sampling_window must be positive"));
        }
        if self.max_interval < self.gossip_interval {
            return Err(ConfigError("max_interval must be at least gossip_interval"));
        }
        if self.attest_interval.is_zero() {
            return Err(ConfigError("attest_interval must be positive"));
        }
        if self.attest_timeout < self.attest_interval * 3 {
            return Err(ConfigError(
                "attest_timeout must be at least three attest_intervals",
            ));
        }
        if self.initial_interval.is_zero() {
            return Err(ConfigError("initial_interval must be positive"));
        }
        if self.dead_node_grace <= self.max_interval * 2 {
            return Err(ConfigError(
                "dead_node_grace must exceed twice max_interval",
            ));
        }
        if self.marked_for_deletion_grace <= self.gossip_interval * 2 {
            return Err(ConfigError(
                "marked_for_deletion_grace must exceed twice gossip_interval",
            ));
        }
        Ok(())
    }

    /// Short timers for in-process tests and benchmarks: 100 ms rounds, death after about a
    /// second of silence, graces of ten minutes (longer than any test).
    pub fn for_tests() -> Self {
        Self {
            gossip_interval: Duration::from_millis(100),
            peers_per_round: DEFAULT_PEERS_PER_ROUND,
            phi_threshold: 8.0,
            sampling_window: 1_000,
            max_interval: Duration::from_secs(2),
            initial_interval: Duration::from_millis(100),
            dead_node_grace: Duration::from_secs(600),
            marked_for_deletion_grace: Duration::from_secs(600),
            // Ten rounds, not two: in a debug build, sealing is what costs CPU, and every
            // signature is bytes every node receives a few times over.
            attest_interval: Duration::from_secs(1),
            attest_timeout: Duration::from_secs(5),
        }
    }
}

/// What a node needs to join the mesh: its membership, and the socket it gossips on.
#[derive(Debug)]
pub struct MeshConfig {
    /// Who the node is in the mesh, and which mesh.
    pub member: MemberConfig,
    /// Where to bind the gossip socket (`:7946/udp` by default; port 0 in tests).
    pub listen_addr: SocketAddr,
    /// The gossip keys.
    pub keyring: Keyring,
    /// Fault injection for tests; `None` in production.
    pub fault: Option<GossipFaultSwitch>,
}

/// A node's membership of one mesh. A node joins one more mesh on a socket it already has
/// with [`Mesh::start_on`](crate::Mesh::start_on).
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This node's id (from the registry).
    pub node_id: NodeId,
    /// Its human name.
    pub name: String,
    /// Agent or control.
    pub role: NodeRole,
    /// Its site.
    pub site: String,
    /// The mesh it joins on its socket: an agent's site (agents gossip with their own site and
    /// the control nodes), or `""`, the unnamed mesh. See [`crate::GossipSocket`].
    pub scope: String,
    /// Nodes of another cluster id are answered `BadCluster` and never merged (a second guard
    /// after the key). Use the cluster's id, e.g. the CA fingerprint.
    pub cluster_id: String,
    /// The address peers gossip to. `None`: the bound address (right on a flat network and in
    /// tests; behind NAT, give the public one). A port of 0 means the bound port.
    pub advertise_addr: Option<SocketAddr>,
    /// Gossip addresses to start from, taken from the node's view (its site's peers) or, on a
    /// control node, the registry. Only needed to join; afterwards peers are learned by gossip.
    pub seeds: Vec<SocketAddr>,
    /// How this node signs its state and checks the others' ([`crate::identity`]).
    pub identity: MeshIdentity,
    /// The timers.
    pub timers: MeshTimers,
}

impl MemberConfig {
    /// Checks the cluster id, the scope and the timers.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_id.is_empty() {
            return Err(ConfigError("cluster_id must not be empty"));
        }
        if self.scope.len() > crate::keyring::MAX_SCOPE_BYTES {
            return Err(ConfigError("scope must be at most 63 bytes"));
        }
        self.timers.validate()
    }
}

impl MeshConfig {
    /// Checks the membership.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.member.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_test_timers_are_valid() {
        MeshTimers::default().validate().expect("defaults");
        MeshTimers::for_tests().validate().expect("test timers");
    }

    #[test]
    fn relations_are_checked() {
        let check = |timers: MeshTimers, expected: &'static str| {
            assert_eq!(timers.validate(), Err(ConfigError(expected)));
        };
        check(
            MeshTimers {
                gossip_interval: Duration::ZERO,
                ..MeshTimers::default()
            },
            "gossip_interval must be positive",
        );
        check(
            MeshTimers {
                peers_per_round: 0,
                ..MeshTimers::default()
            },
            "peers_per_round must be 1 to 3",
        );
        check(
            MeshTimers {
                peers_per_round: 4,
                ..MeshTimers::default()
            },
            "peers_per_round must be 1 to 3",
        );
        check(
            MeshTimers {
                phi_threshold: f64::NAN,
                ..MeshTimers::default()
            },
            "phi_threshold must be a finite number above 1",
        );
        check(
            MeshTimers {
                dead_node_grace: Duration::from_secs(5),
                ..MeshTimers::default()
            },
            "dead_node_grace must exceed twice max_interval",
        );
    }
}
