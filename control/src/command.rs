//! What a Raft log entry says, and what applying it returns.
//!
//! Every entry is decided by its proposer before it enters the log: times (`at_ms`), node ids
//! and sealed secrets are in the entry, so applying it is a pure function of the log and every
//! control node reaches the same state.

use serde::{Deserialize, Serialize};
use warren_api::{
    Availability, Node, NodeAddresses, NodeId, NodeRole, ReplicaId, Revision, SealedBlob,
    ServiceName, ServiceSpec, Volume,
};
use warren_transport::TokenRecord;
use warren_transport::token::TokenId;

/// A log entry: an operation and the time its proposer stamped on it (unix ms).
///
/// `S` is the layout of the specs it carries: [`ServiceSpec`], or an older one
/// ([`ServiceSpecV1`](warren_api::older::ServiceSpecV1)) while an entry written by an older build is decoded
/// ([`Command::upgrade`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command<S = ServiceSpec> {
    /// When the proposer decided this; the state machine's only clock.
    pub at_ms: u64,
    /// What to do.
    pub op: Op<S>,
}

impl<S> std::fmt::Display for Command<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.op.name())
    }
}

impl<S: Into<ServiceSpec>> Command<S> {
    /// The entry in the current layout: a spec-format-1 spec runs as root with every
    /// capability, as it did (see `warren_api::older::ServiceSpecV1`); an older spec's rollouts get the
    /// default gating (see `warren_api::older::ServiceSpecV2`).
    pub fn upgrade(self) -> Command {
        Command {
            at_ms: self.at_ms,
            op: self.op.map_spec(Into::into),
        }
    }
}

/// The operations the state machine knows. `S` is the layout of the spec in
/// [`Op::PutService`]; see [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op<S = ServiceSpec> {
    /// First entry of a cluster: its name and CA (key sealed).
    InitCluster {
        /// Cluster name.
        name: String,
        /// CA certificate (DER).
        ca_cert_der: Vec<u8>,
        /// CA private key, sealed with the cluster key.
        ca_key_sealed: Vec<u8>,
    },
    /// Records a minted join token (its hash only).
    AddToken(TokenRecord),
    /// Revokes a join token.
    RevokeToken(TokenId),
    /// Redeems a token and registers the node it admits, atomically.
    Join {
        /// The token presented.
        token_id: TokenId,
        /// SHA-256 of the presented secret (never the secret itself).
        secret_sha256: [u8; 32],
        /// The role asked for.
        role: NodeRole,
        /// The node to register (id chosen by the proposer, cert serial of the issued cert).
        node: Node,
    },
    /// Registers a node without a token (the first control node at init).
    RegisterNode(Node),
    /// Drain or activate a node.
    SetAvailability {
        /// Which node.
        node: NodeId,
        /// The new availability.
        availability: Availability,
    },
    /// Removes a node: revokes its certificate, moves its replicas.
    RemoveNode(NodeId),
    /// A fact from the world: the node's link and gossip went quiet.
    NodeUnreachable {
        /// Which node.
        node: NodeId,
    },
    /// A fact from the world: the node is heard from again.
    NodeReachable {
        /// Which node.
        node: NodeId,
    },
    /// Creates a service, or updates it if it exists and the spec differs.
    PutService(S),
    /// Sets the replica count of a replicated service.
    ScaleService {
        /// Which service.
        name: ServiceName,
        /// New count.
        replicas: u32,
    },
    /// Restores the previous spec of a service.
    RollbackService(ServiceName),
    /// Removes a service and its replicas.
    RemoveService(ServiceName),
    /// Moves the next batch of a rolling update to the service's current version.
    RolloutStep {
        /// Which service.
        name: ServiceName,
        /// The version being rolled out (a stale step for an older version is ignored).
        version: u64,
    },
    /// Creates or replaces a secret (value sealed by the proposer).
    PutSecret {
        /// Secret name.
        name: String,
        /// Plaintext size, for listings.
        size_bytes: u64,
        /// The sealed value.
        sealed: SealedBlob,
    },
    /// Removes a secret.
    RemoveSecret(String),
    /// Creates or replaces a volume.
    PutVolume(Volume),
    /// Removes a volume.
    RemoveVolume(String),
    /// Lets time-based rules run (on-disconnect reschedule timers).
    Tick,
    // New operations go last: the log encodes an operation by its position here.
    /// Undoes a control node's join that never made it a Raft voter: the node entry goes, its
    /// certificate is revoked and a single-use token gets its use back. Proposed by the leader
    /// when adding the node failed, or when its joiner went silent.
    AbandonJoin {
        /// The control node whose join is undone.
        node: NodeId,
    },
    /// Records an admin certificate the cluster CA issued (`warren admin create`, and the
    /// first one `control init` writes), so that it can be listed and revoked.
    AddAdmin(crate::state::AdminCert),
    /// Revokes an admin certificate by serial: the API refuses it from then on.
    RevokeAdmin {
        /// The certificate's serial (lowercase hex).
        serial: String,
    },
    /// Moves the cluster to a new key generation: the CA key and the secret values re-sealed
    /// with it. The leader gave the new key to the control members before proposing this (a
    /// removed node never gets it).
    RotateClusterKey {
        /// The new generation: one past the state's.
        generation: u32,
        /// The CA key sealed with the new key.
        ca_key_sealed: Vec<u8>,
        /// Secret values re-sealed with the new key: name, the version re-sealed, the blob.
        /// A secret replaced meanwhile keeps its newer value (sealed with whichever key its
        /// writer held).
        secrets: Vec<(String, u64, SealedBlob)>,
    },
    /// Records a node's renewed certificate: its serial becomes the node's, and the one it
    /// replaces stays accepted until it expires (the node may not have stored the new one).
    RenewCert {
        /// The node.
        node: NodeId,
        /// The new certificate's serial (lowercase hex).
        serial: String,
    },
    /// Records an admin's renewed certificate and revokes the one it replaces: one valid
    /// certificate per admin name.
    RenewAdmin {
        /// The serial of the certificate being replaced.
        previous: String,
        /// The new certificate.
        cert: crate::state::AdminCert,
    },
    /// Sets the WireGuard overlay range, before any node holds a slot in it (`control init
    /// --overlay-range`).
    SetOverlayRange(warren_api::OverlayRange),
    /// Records what a node declared of its WireGuard identity: its keys (a second one while it
    /// rolls) and its endpoint. A node without a slot gets one.
    SetMesh {
        /// The node.
        node: NodeId,
        /// The key it answers with now.
        public_key: [u8; 32],
        /// The key it is rolling to, if a rotation is under way.
        next_public_key: Option<[u8; 32]>,
        /// Its WireGuard UDP endpoint.
        endpoint: Option<String>,
    },
    /// An operator asks a node to roll its WireGuard key (`warren node rotate-key`).
    RequestKeyRotation(NodeId),
    /// [`Op::PutService`] only if the service is at the version the writer read (see
    /// [`PutIfVersion`]).
    PutServiceIfVersion(PutIfVersion<S>),
    /// The leader's verdict on a rollout's watched batch ([`crate::rollout::decide`]): every
    /// replica of it passed its monitor window, failed or sits on an unreachable node, or
    /// enough failed to act at once. Applying it moves the next batch, pauses, rolls back or
    /// ends the rollout, as the spec's `update` config says.
    RolloutBatch(RolloutVerdict),
    /// [`Op::AddToken`], recording who minted it (`token ls`).
    AddTokenBy(MintedToken),
    /// Records where a node listens now: a control node restarted with its metrics listener
    /// moved, an agent whose metrics listener moved. The node must be registered and not
    /// removed.
    SetAddresses {
        /// The node.
        node: NodeId,
        /// All of its addresses.
        addresses: NodeAddresses,
    },
}

/// A minted join token and who minted it ([`Op::AddTokenBy`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedToken {
    /// The token (its hash only).
    pub record: TokenRecord,
    /// Who minted it: `admin alice`, `the control socket on c1`.
    pub created_by: String,
}

/// The leader's verdict on one watched batch of a rollout ([`Op::RolloutBatch`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutVerdict {
    /// Which service.
    pub name: ServiceName,
    /// The version being rolled out.
    pub version: u64,
    /// `Rollout::last_step_at_ms` of the batch judged: a verdict on another batch (a second
    /// proposal before the first applied) is ignored.
    pub step_at_ms: u64,
    /// Replicas of the batch that failed within their monitor window.
    pub failures: Vec<RolloutFailure>,
    /// Replicas of the batch on unreachable nodes, passed over.
    pub unreachable: Vec<ReplicaId>,
}

/// A new replica that failed within its monitor window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutFailure {
    /// Which replica.
    pub replica: ReplicaId,
    /// In words, for the rollout's message: `web.0 on edge-1 failed: exited with code 127`.
    pub reason: String,
}

/// A spec to put only if its service is at `version` now (`0`: only if there is no such
/// service): an update made from what someone read cannot overwrite a change made since
/// (`service update --if-version`, `apply`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutIfVersion<S = ServiceSpec> {
    /// The spec to put.
    pub spec: S,
    /// The version the writer read.
    pub version: u64,
}

impl<S> PutIfVersion<S> {
    /// The same with its spec converted.
    fn map<T>(self, f: impl FnOnce(S) -> T) -> PutIfVersion<T> {
        PutIfVersion {
            spec: f(self.spec),
            version: self.version,
        }
    }
}

impl<S> Op<S> {
    /// The same operation with its spec converted (an older layout upgraded). Every other
    /// operation is carried over as it is.
    // One line per operation: most are carried over as they are, and the list must stay whole.
    #[rustfmt::skip]
    pub fn map_spec<T>(self, f: impl FnOnce(S) -> T) -> Op<T> {
        match self {
            Op::PutService(spec) => Op::PutService(f(spec)),
            Op::PutServiceIfVersion(put) => Op::PutServiceIfVersion(put.map(f)),
            Op::InitCluster { name, ca_cert_der, ca_key_sealed } => Op::InitCluster { name, ca_cert_der, ca_key_sealed },
            Op::AddToken(record) => Op::AddToken(record),
            Op::AddTokenBy(minted) => Op::AddTokenBy(minted),
            Op::RevokeToken(id) => Op::RevokeToken(id),
            Op::Join { token_id, secret_sha256, role, node } => Op::Join { token_id, secret_sha256, role, node },
            Op::RegisterNode(node) => Op::RegisterNode(node),
            Op::SetAvailability { node, availability } => Op::SetAvailability { node, availability },
            Op::RemoveNode(node) => Op::RemoveNode(node),
            Op::NodeUnreachable { node } => Op::NodeUnreachable { node },
            Op::NodeReachable { node } => Op::NodeReachable { node },
            Op::ScaleService { name, replicas } => Op::ScaleService { name, replicas },
            Op::RollbackService(name) => Op::RollbackService(name),
            Op::RemoveService(name) => Op::RemoveService(name),
            Op::RolloutStep { name, version } => Op::RolloutStep { name, version },
            Op::PutSecret { name, size_bytes, sealed } => Op::PutSecret { name, size_bytes, sealed },
            Op::RemoveSecret(name) => Op::RemoveSecret(name),
            Op::PutVolume(volume) => Op::PutVolume(volume),
            Op::RemoveVolume(name) => Op::RemoveVolume(name),
            Op::Tick => Op::Tick,
            Op::AbandonJoin { node } => Op::AbandonJoin { node },
            Op::AddAdmin(admin) => Op::AddAdmin(admin),
            Op::RevokeAdmin { serial } => Op::RevokeAdmin { serial },
            Op::RotateClusterKey { generation, ca_key_sealed, secrets } => Op::RotateClusterKey { generation, ca_key_sealed, secrets },
            Op::RenewCert { node, serial } => Op::RenewCert { node, serial },
            Op::RenewAdmin { previous, cert } => Op::RenewAdmin { previous, cert },
            Op::RolloutBatch(verdict) => Op::RolloutBatch(verdict),
            Op::SetOverlayRange(range) => Op::SetOverlayRange(range),
            Op::SetMesh { node, public_key, next_public_key, endpoint } => Op::SetMesh { node, public_key, next_public_key, endpoint },
            Op::RequestKeyRotation(node) => Op::RequestKeyRotation(node),
            Op::SetAddresses { node, addresses } => Op::SetAddresses { node, addresses },
        }
    }

    /// Whether applying it may change which certificates the cluster records or revokes (or a
    /// node's state, which decides whether its certificate counts).
    pub fn touches_certificates(&self) -> bool {
        matches!(
            self,
            Op::InitCluster { .. }
                | Op::Join { .. }
                | Op::RegisterNode(_)
                | Op::RemoveNode(_)
                | Op::AbandonJoin { .. }
                | Op::AddAdmin(_)
                | Op::RevokeAdmin { .. }
                | Op::RenewCert { .. }
                | Op::RenewAdmin { .. }
        )
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::InitCluster { .. } => "init_cluster",
            Op::AddToken(_) | Op::AddTokenBy(_) => "add_token",
            Op::RevokeToken(_) => "revoke_token",
            Op::Join { .. } => "join",
            Op::RegisterNode(_) => "register_node",
            Op::SetAvailability { .. } => "set_availability",
            Op::RemoveNode(_) => "remove_node",
            Op::AbandonJoin { .. } => "abandon_join",
            Op::AddAdmin(_) => "add_admin",
            Op::RevokeAdmin { .. } => "revoke_admin",
            Op::RotateClusterKey { .. } => "rotate_cluster_key",
            Op::RenewCert { .. } => "renew_cert",
            Op::RenewAdmin { .. } => "renew_admin",
            Op::SetOverlayRange(_) => "set_overlay_range",
            Op::SetMesh { .. } => "set_mesh",
            Op::RequestKeyRotation(_) => "request_key_rotation",
            Op::SetAddresses { .. } => "set_addresses",
            Op::RolloutBatch(_) => "rollout_batch",
            Op::NodeUnreachable { .. } => "node_unreachable",
            Op::NodeReachable { .. } => "node_reachable",
            Op::PutService(_) => "put_service",
            Op::PutServiceIfVersion(_) => "put_service_if_version",
            Op::ScaleService { .. } => "scale_service",
            Op::RollbackService(_) => "rollback_service",
            Op::RemoveService(_) => "remove_service",
            Op::RolloutStep { .. } => "rollout_step",
            Op::PutSecret { .. } => "put_secret",
            Op::RemoveSecret(_) => "remove_secret",
            Op::PutVolume(_) => "put_volume",
            Op::RemoveVolume(_) => "remove_volume",
            Op::Tick => "tick",
        }
    }
}

/// What applying an entry did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The revision (log index) of the entry.
    pub revision: Revision,
    /// The effect, or why the entry changed nothing.
    pub result: Result<Effect, Rejection>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            revision: Revision(0),
            result: Ok(Effect::None),
        }
    }
}

/// The visible effect of an applied entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Nothing to report (or a membership/blank entry).
    None,
    /// A node joined or was registered.
    Node(NodeId),
    /// A service was created, updated, scaled or rolled back.
    Service {
        /// Its version now.
        version: u64,
        /// Whether anything changed (false for an identical re-apply).
        changed: bool,
        /// Whether it was created by this entry.
        created: bool,
    },
    /// Something was removed or changed in place.
    Done,
}

/// Why an entry was refused by the state machine. Refused entries still consume a revision
/// but change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// For programs (and the HTTP status).
    pub code: RejectionCode,
    /// For people: one line naming what was wrong.
    pub message: String,
}

/// Classes of rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionCode {
    /// The named object does not exist.
    NotFound,
    /// The object exists or the change conflicts with current state.
    Conflict,
    /// The input is invalid.
    Invalid,
    /// A join token was refused; the `message` names why.
    TokenRefused,
}

impl Rejection {
    pub(crate) fn not_found(what: impl std::fmt::Display) -> Self {
        Self {
            code: RejectionCode::NotFound,
            message: format!("{what} not found"),
        }
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self {
            code: RejectionCode::Conflict,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: RejectionCode::Invalid,
            message: message.into(),
        }
    }
}
