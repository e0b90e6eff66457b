//! The control plane's HTTP API: routes and JSON bodies, shared by the server (`control`) and
//! its client (`cli`).
//!
//! The routes themselves, with the body and answer of each, are [`crate::routes::Route`]. All
//! are under [`PREFIX`]; reads take `?stale=true` to skip the read barrier.
//!
//! Errors are [`ErrorBody`] with a status: 400 invalid (the message names the field), 404, 409,
//! 413 body too large, 503 no quorum (retry later; a timed-out write may still apply).
//!
//! Every answer, errors included, carries [`MEMBERS_HEADER`]: the API addresses of the control
//! members as the answering node knows them, so that clients keep their list of addresses
//! current without asking.

use serde::{Deserialize, Serialize};

use crate::{DesiredState, Node, ServiceSpec};
use crate::{NodeId, NodeRole};

/// Every route starts with this.
pub const PREFIX: &str = "/v1";
/// Largest request body the server reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Response header with the advertised API address (`HOST:PORT`) of every control member
/// (voters and learners) in the answering node's membership, comma-separated.
pub const MEMBERS_HEADER: &str = "warren-control-members";
/// Most addresses a client takes from [`MEMBERS_HEADER`]; Raft groups have a handful of members.
pub const MAX_MEMBERS_HEADER: usize = 64;

/// Query parameter of `PUT /services/{service}`: write only if the service is at this version
/// now (`0`: only if it does not exist); otherwise 409 naming both versions.
pub const IF_VERSION_PARAM: &str = "if_version";
/// Longest [`MEMBERS_HEADER`] value a client reads.
pub const MAX_MEMBERS_HEADER_BYTES: usize = 16 * 1024;

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line for people.
    pub error: String,
    /// For programs: `invalid`, `not_found`, `conflict`, `too_large`, `no_quorum`,
    /// `unauthorized`, `internal`.
    pub code: String,
}

/// A control-plane member as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// QUIC address.
    pub quic_addr: String,
    /// API address.
    pub api_addr: String,
    /// Whether it votes (learners do not).
    pub voter: bool,
    /// Whether it leads now.
    pub leader: bool,
    /// Whether it answers, as the leader sees it (or the answering node, when it cannot ask
    /// the leader); `None` from a control node that does not tell.
    #[serde(default)]
    pub contact: Option<MemberContact>,
}

/// How a control member answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberHealth {
    /// It answers (or it is the judge itself).
    Reachable,
    /// Calls to it have failed, with no word from it, for the member-unreachable time.
    Unreachable,
    /// The judge has not heard from it, nor tried long enough to say.
    #[default]
    Unknown,
}

impl MemberHealth {
    /// The lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reachable => "reachable",
            Self::Unreachable => "unreachable",
            Self::Unknown => "unknown",
        }
    }
}

/// A control member's health as one control node — the leader, normally — judges it from its
/// Raft traffic (soft state, never in the log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberContact {
    /// Reachable, unreachable or unknown.
    pub health: MemberHealth,
    /// When the judge last heard from it (unix ms); `None` if never.
    pub last_contact_ms: Option<u64>,
    /// Since when calls to it have failed (unix ms), when unreachable.
    pub unreachable_since_ms: Option<u64>,
    /// The last failed call's error, when unreachable.
    pub error: Option<String>,
    /// The control node that judged: the leader, or the answering node when the leader could
    /// not be asked.
    pub judged_by: NodeId,
}

/// Node counts by liveness.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    /// Every registered node, removed ones included.
    pub total: usize,
    /// Ready.
    pub ready: usize,
    /// Unreachable.
    pub unreachable: usize,
    /// Down.
    pub down: usize,
    /// Removed.
    pub removed: usize,
}

/// `GET /cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// SHA-256 of the CA certificate, hex.
    pub fingerprint: String,
    /// The node that answered.
    pub answered_by: NodeId,
    /// Control members.
    pub members: Vec<MemberInfo>,
    /// Current Raft term as the answering node knows it.
    pub term: u64,
    /// Last committed log index known to the answering node.
    pub commit_index: u64,
    /// Revision applied on the answering node.
    pub revision: u64,
    /// Node counts.
    pub nodes: NodeCounts,
    /// Number of services.
    pub services: usize,
}

/// The longest lifetime a join token may have: 30 days. A token is a bearer secret that
/// admits a node; one that never expires is one that leaks eventually.
pub const MAX_TOKEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// `POST /tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Role of the nodes that may join with it.
    pub role: NodeRole,
    /// Lifetime, more than 0 and at most [`MAX_TOKEN_TTL_MS`]; required (`None` is refused:
    /// no token lives for ever).
    pub ttl_ms: Option<u64>,
    /// Whether the first join uses it up.
    pub single_use: bool,
}

/// A minted token: shown once, never stored in the clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The whole token.
    pub token: String,
    /// Its id (hex), for revocation.
    pub id: String,
    /// Role.
    pub role: NodeRole,
    /// Expiry (unix ms).
    pub expires_at_ms: Option<u64>,
}

/// `GET /tokens`: a join token as the cluster keeps it (never its secret). Expired, used-up
/// and revoked tokens are listed until the next prune (within a minute).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id (hex): what `DELETE /tokens/{id}` takes.
    pub id: String,
    /// The role a joiner with it gets.
    pub role: NodeRole,
    /// When it was minted (unix ms).
    pub created_at_ms: u64,
    /// When it stops working (unix ms); `None` for tokens minted before lifetimes were
    /// required.
    pub expires_at_ms: Option<u64>,
    /// Whether the first join uses it up.
    pub single_use: bool,
    /// When a single-use token was used.
    pub used_at_ms: Option<u64>,
    /// Whether an operator revoked it.
    pub revoked: bool,
    /// Who minted it (`admin alice`, `the control socket on c1`); `None` for tokens minted
    /// before control recorded it.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// `POST /admins`: issue an admin certificate for the key of a CSR. The private key never
/// leaves the machine that made the CSR (`warren admin create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCreate {
    /// The admin's name (a DNS label): shown in `admin ls`, used to revoke.
    pub name: String,
    /// The certificate signing request, DER, base64.
    pub csr_der_base64: String,
}

/// `POST /admins/renew`: a new certificate for the admin whose certificate authenticates the
/// request, for the key of a CSR; the certificate it replaces is revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRenew {
    /// The certificate signing request, DER, base64.
    pub csr_der_base64: String,
}

/// The answer to `POST /admins` and `POST /admins/renew`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminIssued {
    /// The certificate, DER, base64.
    pub cert_der_base64: String,
    /// What the cluster recorded of it.
    pub admin: AdminInfo,
}

/// `GET /admins`: an admin certificate the cluster CA issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminInfo {
    /// The admin's name.
    pub name: String,
    /// The certificate's serial (lowercase hex).
    pub serial: String,
    /// When it was issued (unix ms).
    pub issued_at_ms: u64,
    /// When it expires (unix ms).
    pub expires_at_ms: u64,
    /// Whether it was revoked (the API refuses it).
    pub revoked: bool,
}

/// A node with what runs there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The registry entry.
    pub node: Node,
    /// Replicas assigned to it.
    pub replicas: usize,
    /// Whether it is a Raft member now (control nodes).
    pub raft_member: bool,
    /// What the control plane last heard from the node's agent; `None` for control nodes
    /// and agents no control node has heard from since it started.
    #[serde(default)]
    pub agent: Option<AgentLinkInfo>,
    /// The node as the answering control node's gossip mesh sees it (soft state); `None`
    /// when that control node runs no mesh or has not heard of the node by gossip.
    #[serde(default)]
    pub gossip: Option<GossipInfo>,
    /// For a control node that is a Raft member: whether it answers, as the leader sees it.
    #[serde(default)]
    pub member: Option<MemberContact>,
    /// The node's place in the WireGuard overlay, as the registry holds it; `None` when the
    /// range had no slot left for it.
    #[serde(default)]
    pub mesh: Option<MeshInfo>,
    /// The nodes its view holds as peers (its WireGuard tunnels, the names its DNS knows), by
    /// id: every other node in a fleet of up to 256, scoped by site beyond. Only in the answer
    /// about one node (`GET nodes/NODE`); `None` in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<NodeId>>,
}

/// A node's place in the WireGuard overlay, as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshInfo {
    /// Its overlay address (its /24 routes to it).
    pub overlay_ip: String,
    /// Its public key (base64, as `wg` writes it), once it declared one: until then it is in
    /// no peer's configuration.
    pub public_key: Option<String>,
    /// The key it is rolling to, during a rotation.
    pub next_public_key: Option<String>,
    /// Where its WireGuard interface listens, as it declared it.
    pub endpoint: Option<String>,
}

/// A node's gossip membership, as one control node's mesh sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipInfo {
    /// `alive`, `suspect` (heartbeat late) or `dead` (the failure detector gave up on it).
    pub liveness: String,
    /// The member's generation: its process start time (unix ms); a restart makes a new one.
    pub generation: u64,
    /// Where it gossips (`IP:PORT`).
    pub gossip_addr: String,
    /// Where it says its WireGuard port is now (a hint: peers use it only with claims the
    /// registry backs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_endpoint: Option<String>,
}

/// An agent's link to the control plane, as the control nodes see it (soft state: merged
/// from every control node's memory, rebuilt when agents reconnect).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLinkInfo {
    /// Whether a stream from the agent is up to some control node now.
    pub connected: bool,
    /// The control node holding that stream (node id, hex), or the last one that did.
    pub control_node: String,
    /// Last message from the agent (unix ms).
    pub last_contact_ms: u64,
    /// The last revision the agent acknowledged as durably cached.
    pub revision_acked: u64,
    /// The agent's software version.
    pub agent_version: String,
    /// Its most recent events, oldest first (bounded; only in `GET /nodes/{n}`).
    #[serde(default)]
    pub events: Vec<crate::event::Event>,
    /// Events lost: dropped by the agent's bounded buffer while cut off, or by control's.
    #[serde(default)]
    pub events_dropped: u64,
    /// The agent's listeners (metrics, DNS, gossip) as it last reported them: each one's
    /// address and whether it is up, with the reason while it is down.
    #[serde(default)]
    pub listeners: Vec<crate::wire::ListenerStatus>,
    /// The agent's WireGuard peers as its device last reported them: endpoint, last
    /// handshake, bytes (only in `GET /nodes/{n}`).
    #[serde(default)]
    pub mesh_peers: Vec<crate::wire::MeshPeerReport>,
    /// How many of those peers had a handshake in the last 3 minutes, and how many there are
    /// (in every listing); `None` before the agent reported any.
    #[serde(default)]
    pub mesh_peers_up: Option<(u32, u32)>,
}

/// A service with its placement summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The spec in force.
    pub spec: ServiceSpec,
    /// Its version.
    pub version: u64,
    /// Creation time (unix ms).
    pub created_at_ms: u64,
    /// Last change (unix ms).
    pub updated_at_ms: u64,
    /// Replicas wanted (`None` for global services).
    pub replicas_desired: Option<u32>,
    /// Replicas placed.
    pub replicas_placed: usize,
    /// Replicas their agents last reported running (and healthy, when the service has a
    /// health check). `None` from a control node that does not count them.
    #[serde(default)]
    pub replicas_running: Option<usize>,
    /// How many of the placed replicas rest on a report from an agent whose link is down (the
    /// agent keeps running cut off; its count may be out of date).
    #[serde(default)]
    pub replicas_stale: usize,
    /// Replicas that no node can take.
    pub unschedulable: u32,
    /// Why no node takes them (`no node in site madrid`, `no node matches constraint …`,
    /// `2 matching nodes not taking replicas: edge-1 drained, …`), when some are unschedulable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// Version being rolled out, if a rolling update is in progress.
    pub rolling_out: Option<u64>,
    /// Whether `rollback` has a previous spec to return to.
    pub can_roll_back: bool,
    /// Why its replicas may go to one node only (`pinned to node edge-1, which holds volume
    /// data`), or why they can go nowhere; `None` when it is not pinned.
    #[serde(default)]
    pub pinned: Option<String>,
    /// The service's last rollout: in progress, paused, rolling back, or how it ended.
    /// `None` before its first restart-needing update (and from older control nodes).
    #[serde(default)]
    pub rollout: Option<RolloutInfo>,
}

/// A rollout as operators see it (`service inspect`, `service ls`, `service update`'s
/// progress). See docs/rollouts.md for each state and its messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutInfo {
    /// The version being rolled out (for `rolling_back`, the version the rollback wrote).
    pub version: u64,
    /// `updating`, `paused`, `rolling_back`, `completed` or `rolled_back`.
    pub state: String,
    /// Replicas moved to `version` so far.
    pub updated: u32,
    /// Replicas the rollout covers (the service's placed replicas).
    pub total: u32,
    /// Updated replicas that failed within their monitor window.
    pub failed: u32,
    /// Replicas passed over because their node was unreachable (`pending: node unreachable`).
    #[serde(default)]
    pub unreachable: u32,
    /// What happened last, in words (`paused: web.0 on edge-1 failed: …`); empty when there is
    /// nothing to say.
    #[serde(default)]
    pub message: String,
}

/// One replica for `service ps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// `web.1`, or `web.<node id>` for global services.
    pub id: String,
    /// Node it is assigned to.
    pub node: NodeId,
    /// That node's name.
    pub node_name: String,
    /// That node's site.
    pub site: String,
    /// Service version of this replica.
    pub service_version: u64,
    /// What control wants.
    pub desired: DesiredState,
    /// What is known of it: the agent's last report (`running`, `starting`, `failed`, …), or
    /// `assigned` when no report has arrived yet.
    pub state: String,
    /// Liveness of its node (`ready`, `unreachable`, …).
    pub node_state: String,
    /// Process id of a native workload, as last reported.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Restarts on its node, as last reported.
    #[serde(default)]
    pub restarts: u32,
    /// Health check result (`unknown`, `healthy`, `unhealthy`), as last reported.
    #[serde(default = "unknown")]
    pub health: String,
    /// The agent's one-line explanation (`exit code 1`, …), if any.
    #[serde(default)]
    pub message: Option<String>,
    /// When the reported state last changed (unix ms, agent clock); `None` before any report.
    #[serde(default)]
    pub updated_at_ms: Option<u64>,
    /// Whether the state comes from a report received while the agent's link is down (it may
    /// be out of date: the agent keeps running cut off, and reports again on reconnect).
    #[serde(default)]
    pub stale: bool,
    /// The local volume that pins it to its node (the node holds the volume's data).
    #[serde(default)]
    pub pinned_by: Option<String>,
}

/// A volume with where it lives and who uses it, for `volume ls` and `volume inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// The volume as created.
    pub volume: crate::Volume,
    /// The node that holds its data (`None` until a replica that mounts it is placed).
    pub node: Option<NodeId>,
    /// That node's name.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Services that mount it.
    #[serde(default)]
    pub services: Vec<String>,
    /// Placed replicas that mount it, with their node's name.
    #[serde(default)]
    pub replicas: Vec<VolumeUser>,
}

/// A replica that mounts a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUser {
    /// `web.1`.
    pub replica: String,
    /// The node it is on.
    pub node_name: String,
    /// Whether it mounts the volume read-only.
    pub read_only: bool,
}

fn unknown() -> String {
    "unknown".to_owned()
}

/// Answer to every write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// Revision (log index) of the write.
    pub revision: u64,
    /// Whether anything changed.
    pub changed: bool,
    /// Whether the object was created.
    pub created: bool,
    /// The object's version after the write, where it has one (services).
    pub version: Option<u64>,
}

/// Answer to `POST /cluster/rotate-keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysRotated {
    /// The cluster key generation now in force.
    pub generation: u32,
}

/// `POST /services/{name}/scale`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// New replica count.
    pub replicas: u32,
}

/// `POST /secrets`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretCreate {
    /// Secret name (DNS label).
    pub name: String,
    /// The value, base64 (standard alphabet, padded).
    pub value_base64: String,
}

impl std::fmt::Debug for SecretCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCreate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
