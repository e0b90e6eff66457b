//! [`ControlConfig`]: the tuning a control node is started with (not persisted), its checks,
//! and the settings made from it for openraft, the peer layer and the election timers.

use std::time::Duration;

use warren_mesh::MeshTimers;
use warren_transport::TransportConfig;
use warren_transport::ca::NODE_CERT_LIFETIME;

use super::NodeError;
use crate::control::Timeouts;
use crate::election::ElectionTimes;
use crate::http::ApiLimits;
use crate::network::PeerTimers;
use crate::store::StoreTuning;
use crate::timers::RaftTimers;

/// Default for [`ControlConfig::unreachable_after`].
pub const DEFAULT_UNREACHABLE_AFTER: Duration = Duration::from_secs(30);

/// Default for [`ControlConfig::member_unreachable_after`].
pub const DEFAULT_MEMBER_UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

/// Tuning that is not persisted (defaults suit a central site on a LAN).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// How often the leader sends heartbeats (driven by [`crate::timers`]).
    pub heartbeat: Duration,
    /// A voter that hears nothing from a leader for a random time in `[min, max)` campaigns.
    /// `min` is also the voters' lease: they refuse to vote for another node while they have
    /// heard from their leader within it. The Raft RPC deadlines derive from it
    /// ([`ControlConfig::rpc_timeout`], [`ControlConfig::vote_timeout`]).
    pub election_timeout: (Duration, Duration),
    /// Upper bound on a write or a linearizable read.
    pub write_timeout: Duration,
    /// QUIC transport tuning.
    pub transport: TransportConfig,
    /// sled tuning.
    pub store: StoreTuning,
    /// Entries between snapshots.
    pub snapshot_every: u64,
    /// How long an agent may have no stream to any control node before the leader marks its
    /// node unreachable (services with `on_disconnect: reschedule` then move after their own
    /// delay). Longer than an agent's reconnect after a control node dies (~15 s). Gossip can
    /// be quicker: see [`crate::liveness`].
    pub unreachable_after: Duration,
    /// A control member whose calls have failed this long, with no word from it, is shown
    /// `unreachable` (and logged once); see [`crate::contact`].
    pub member_unreachable_after: Duration,
    /// The gossip mesh's timers (used only when the node has a gossip address).
    pub mesh_timers: MeshTimers,
    /// How long the leader waits for a joining control node to receive the log before it
    /// undoes the join (its advertised QUIC address is not reachable, say).
    pub learner_catch_up: Duration,
    /// How long a control node's unfinished join (registered, not a voter yet) may go
    /// unheard of before the leader undoes it: its joiner died or gave up.
    pub join_abandoned_after: Duration,
    /// Caps and timeouts of the HTTP API's TLS listener.
    pub api_limits: ApiLimits,
    /// How long node certificates last (control and agents; default 90 days). Each node
    /// renews its own once a third of the lifetime is left.
    pub cert_lifetime: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(700), Duration::from_millis(900)),
            write_timeout: Duration::from_secs(5),
            transport: TransportConfig {
                connect_timeout: Duration::from_secs(2),
                ..TransportConfig::default()
            },
            store: StoreTuning::default(),
            snapshot_every: 5_000,
            unreachable_after: DEFAULT_UNREACHABLE_AFTER,
            member_unreachable_after: DEFAULT_MEMBER_UNREACHABLE_AFTER,
            mesh_timers: MeshTimers::default(),
            learner_catch_up: Duration::from_secs(30),
            join_abandoned_after: Duration::from_secs(60),
            api_limits: ApiLimits::default(),
            cert_lifetime: NODE_CERT_LIFETIME,
        }
    }
}

impl ControlConfig {
    /// The timers of the write, read and membership paths.
    pub(super) fn timeouts(&self) -> Timeouts {
        Timeouts {
            write: self.write_timeout,
            election_max: self.election_timeout.1,
            learner_catch_up: self.learner_catch_up,
            join_abandoned_after: self.join_abandoned_after,
            cert_lifetime: self.cert_lifetime,
        }
    }

    /// Checks relations between timers.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the first broken relation.
    pub fn validate(&self) -> Result<(), NodeError> {
        let (min, max) = self.election_timeout;
        if self.heartbeat.is_zero() || self.heartbeat * 2 > min {
            return Err(NodeError::Config(
                "heartbeat must be positive and at most half the election timeout".into(),
            ));
        }
        if min >= max {
            return Err(NodeError::Config(
                "election timeout min must be below max".into(),
            ));
        }
        if self.unreachable_after < Duration::from_secs(1) {
            return Err(NodeError::Config(
                "unreachable_after must be at least 1 s".into(),
            ));
        }
        if self.member_unreachable_after < max {
            return Err(NodeError::Config(
                "member_unreachable_after must be at least the election timeout max".into(),
            ));
        }
        if self.write_timeout < max {
            return Err(NodeError::Config(
                "write timeout must be at least the election timeout".into(),
            ));
        }
        if self.learner_catch_up < max {
            return Err(NodeError::Config(
                "learner_catch_up must be at least the election timeout".into(),
            ));
        }
        if self.join_abandoned_after < Duration::from_secs(1) {
            return Err(NodeError::Config(
                "join_abandoned_after must be at least 1 s".into(),
            ));
        }
        if self.cert_lifetime < Duration::from_secs(6) {
            return Err(NodeError::Config(
                "cert_lifetime must be at least 6 s".into(),
            ));
        }
        self.api_limits.validate().map_err(NodeError::Config)?;
        self.mesh_timers.validate()?;
        Ok(self.transport.validate()?)
    }

    /// Deadline of an AppendEntries RPC (replication, heartbeat, read barrier): half the lease.
    /// Several heartbeats long, so a follower slowed by a busy disk or a long link answers in
    /// time, yet short enough that a lost round is retried well before the lease runs out.
    pub fn rpc_timeout(&self) -> Duration {
        self.election_timeout.0 / 2
    }

    /// Deadline of a vote request: between the RPC deadline and the lease.
    pub fn vote_timeout(&self) -> Duration {
        self.election_timeout.0 * 3 / 4
    }

    /// The timers [`crate::timers`] runs.
    pub fn raft_timers(&self) -> RaftTimers {
        let (min, max) = self.election_timeout;
        RaftTimers {
            heartbeat: self.heartbeat,
            election: ElectionTimes {
                lease: min,
                spread: max - min,
                retry: self.vote_timeout(),
            },
        }
    }

    /// The peer layer's timers: an unreachable peer is retried after a heartbeat at first, then
    /// less often, but at least every RPC deadline (half the lease): a restarted member must
    /// hear from the leader before its election timer runs out, or it campaigns and deposes
    /// the leader.
    pub fn peer_timers(&self) -> PeerTimers {
        PeerTimers {
            unreachable_after: self.member_unreachable_after,
            redial_after: self.rpc_timeout(),
            retry_initial: self.heartbeat,
            retry_max: self.rpc_timeout(),
        }
    }

    /// openraft's configuration. openraft's `heartbeat_interval` is its AppendEntries deadline
    /// (and its tick is 1.5 times that); its election timeout bounds are the vote deadline and
    /// the lease. Its own heartbeat and election timers are off: [`crate::timers`] runs them.
    pub(super) fn raft_config(&self) -> Result<openraft::Config, NodeError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "warren".into(),
            heartbeat_interval: ms(self.rpc_timeout()),
            election_timeout_min: ms(self.vote_timeout()),
            election_timeout_max: ms(self.election_timeout.0),
            // One snapshot chunk is bounded like a write: it is sent and stored in one go.
            install_snapshot_timeout: ms(self.write_timeout),
            enable_heartbeat: false,
            enable_elect: false,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::RaftConfig(Box::new(e)))
    }
}
