//! The mesh's Prometheus metrics, `warren_mesh_<noun>_<unit>`. Label values come from fixed
//! sets (liveness, direction, message type, [`DropReason::label`]), so cardinality is bounded.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::identity::Unverified;
use crate::keyring::DropReason;

/// Counters and gauges of one mesh node. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    /// Members as this node sees them, by liveness (`alive`, `suspect`, `dead`); self included.
    pub members: IntGaugeVec,
    /// Gossip rounds this node started (one burst of SYNs per gossip interval).
    pub gossip_rounds_total: IntCounter,
    /// Chitchat messages, by direction (`tx`/`rx`) and type (`syn`, `syn_ack`, `ack`,
    /// `bad_cluster`).
    pub gossip_messages_total: IntCounterVec,
    /// Bytes of chitchat messages as chitchat encodes them (before fragmenting and sealing),
    /// by direction and type: where gossip traffic goes (a `syn` is a digest of every member,
    /// an `ack` a delta of changed key-values, a `syn_ack` both).
    pub gossip_message_bytes_total: IntCounterVec,
    /// SYNs chitchat asked for that were not sent: past the round's budget of live peers
    /// ([`MeshTimers::peers_per_round`](crate::MeshTimers::peers_per_round)).
    pub syns_skipped_total: IntCounter,
    /// Sealed datagrams on the real socket, by direction.
    pub datagrams_total: IntCounterVec,
    /// Bytes of sealed datagrams on the real socket, by direction.
    pub datagram_bytes_total: IntCounterVec,
    /// Datagrams dropped, by reason ([`DropReason::label`]).
    pub datagrams_dropped_total: IntCounterVec,
    /// This node's signatures of its own state, by outcome (`signed`, `failed`).
    pub attestations_total: IntCounterVec,
    /// Checks of other members' signed state, by outcome (`accepted`, `pending`, or
    /// [`Unverified::label`] when refused).
    pub member_states_total: IntCounterVec,
}

impl MeshMetrics {
    /// Creates the metrics without registering them anywhere.
    pub fn unregistered() -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric names and labels are valid constants")
        };
        let metrics = Self {
            members: IntGaugeVec::new(
                Opts::new(
                    "warren_mesh_members",
                    "Gossip members as this node sees them, by liveness (self included).",
                ),
                &["liveness"],
            )
            .expect("metric name and labels are valid constants"),
            gossip_rounds_total: IntCounter::new(
                "warren_mesh_gossip_rounds_total",
                "Gossip rounds this node started.",
            )
            .expect("metric name is a valid constant"),
            gossip_messages_total: counter_vec(
                "warren_mesh_gossip_messages_total",
                "Chitchat messages sent (tx) and received (rx), by type.",
                &["direction", "type"],
            ),
            gossip_message_bytes_total: counter_vec(
                "warren_mesh_gossip_message_bytes_total",
                "Bytes of chitchat messages sent (tx) and received (rx) before sealing, by type.",
                &["direction", "type"],
            ),
            syns_skipped_total: IntCounter::new(
                "warren_mesh_gossip_syns_skipped_total",
                "SYNs to live peers not sent: past the round's budget of peers.",
            )
            .expect("metric name is a valid constant"),
            datagrams_total: counter_vec(
                "warren_mesh_datagrams_total",
                "Sealed gossip datagrams sent (tx) and received (rx) on the gossip socket.",
                &["direction"],
            ),
            datagram_bytes_total: counter_vec(
                "warren_mesh_datagram_bytes_total",
                "Bytes of sealed gossip datagrams sent (tx) and received (rx).",
                &["direction"],
            ),
            datagrams_dropped_total: counter_vec(
                "warren_mesh_datagrams_dropped_total",
                "Gossip datagrams dropped, by reason.",
                &["reason"],
            ),
            attestations_total: counter_vec(
                "warren_mesh_attestations_total",
                "This node's signatures of its own gossip state, by outcome (signed, failed).",
                &["outcome"],
            ),
            member_states_total: counter_vec(
                "warren_mesh_member_states_total",
                "Checks of other members' signed gossip state, by outcome (accepted, pending, or why refused).",
                &["outcome"],
            ),
        };
        metrics.start_at_zero();
        metrics
    }

    /// Creates every label value, so that dashboards see zeros, not gaps.
    fn start_at_zero(&self) {
        for reason in DropReason::ALL {
            self.datagrams_dropped_total
                .with_label_values(&[reason.label()]);
        }
        for outcome in ["signed", "failed"] {
            self.attestations_total.with_label_values(&[outcome]);
        }
        for outcome in ["accepted", "pending"]
            .into_iter()
            .chain(Unverified::ALL.iter().map(|u| u.label()))
        {
            self.member_states_total.with_label_values(&[outcome]);
        }
        for liveness in ["alive", "suspect", "dead"] {
            self.members.with_label_values(&[liveness]);
        }
        for direction in ["tx", "rx"] {
            self.datagrams_total.with_label_values(&[direction]);
            self.datagram_bytes_total.with_label_values(&[direction]);
        }
    }

    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.members.clone()))?;
        registry.register(Box::new(metrics.gossip_rounds_total.clone()))?;
        registry.register(Box::new(metrics.gossip_messages_total.clone()))?;
        registry.register(Box::new(metrics.gossip_message_bytes_total.clone()))?;
        registry.register(Box::new(metrics.syns_skipped_total.clone()))?;
        registry.register(Box::new(metrics.datagrams_total.clone()))?;
        registry.register(Box::new(metrics.datagram_bytes_total.clone()))?;
        registry.register(Box::new(metrics.datagrams_dropped_total.clone()))?;
        registry.register(Box::new(metrics.attestations_total.clone()))?;
        registry.register(Box::new(metrics.member_states_total.clone()))?;
        Ok(metrics)
    }

    /// Datagrams dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.datagrams_dropped_total
            .with_label_values(&[reason.label()])
            .get()
    }

    /// Checks of other members' state with `outcome` so far.
    pub fn member_states(&self, outcome: &str) -> u64 {
        self.member_states_total.with_label_values(&[outcome]).get()
    }

    /// Sealed bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.datagram_bytes_total.with_label_values(&["tx"]).get()
    }

    /// Sets the member gauge from `members`. A mesh does it for itself; a node that runs
    /// several meshes on one socket does it from their union ([`Mesh::leave_member_gauge`](crate::Mesh::leave_member_gauge)).
    pub fn set_members(&self, members: &[crate::Member]) {
        for liveness in [
            crate::Liveness::Alive,
            crate::Liveness::Suspect,
            crate::Liveness::Dead,
        ] {
            let count = members.iter().filter(|m| m.liveness == liveness).count();
            self.members
                .with_label_values(&[liveness.as_str()])
                .set(count as i64);
        }
    }

    pub(crate) fn count_drop(&self, reason: DropReason) {
        self.datagrams_dropped_total
            .with_label_values(&[reason.label()])
            .inc();
    }
}
