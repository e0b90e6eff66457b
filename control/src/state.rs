//! The replicated desired state and its pure `apply`.
//!
//! [`ClusterState::apply`] is the whole state machine: given the same log, every control node
//! reaches the same state, placements included (the scheduler runs inside it). It reads no
//! clock (times come in the [`Command`]), draws no random numbers and does no I/O. Every
//! applied entry moves [`ClusterState::revision`] to its log index.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use warren_api::{
    Availability, DesiredState, MeshEntry, Node, NodeAddresses, NodeId, NodeState, OverlayRange,
    Replica, ReplicaId, Revision, SealedBlob, Secret, Service, ServiceMode, ServiceName,
    ServiceSpec, Volume,
};
use warren_transport::token::TokenId;
use warren_transport::{CertRole, KnownCertificates, TokenBook, TokenRecord};

use crate::command::{Command, Effect, Op, Outcome, Rejection, RejectionCode};
use crate::scheduler;

mod mesh;
mod rollout;

/// The cluster's identity, recorded by the first entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Cluster name.
    pub name: String,
    /// CA certificate (DER).
    pub ca_cert_der: Vec<u8>,
    /// CA key sealed with the cluster key.
    pub ca_key_sealed: Vec<u8>,
    /// When the cluster was created (unix ms).
    pub created_at_ms: u64,
}

/// A service with its history. `S` is the spec layout, as in [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord<S = ServiceSpec, R = Rollout> {
    /// The spec in force and its version.
    pub current: Service<S>,
    /// The spec before the last change, for `rollback`.
    pub previous: Option<S>,
    /// When it was created (unix ms).
    pub created_at_ms: u64,
    /// When it last changed (unix ms).
    pub updated_at_ms: u64,
    /// The last rolling update: replicas still on older versions move to `current.version`
    /// in batches of `update.parallelism`, each watched before the next (see
    /// [`crate::rollout`]). Kept once it ends (`completed`, `rolled_back`) until the next
    /// spec change, so that operators see how it ended. `R` is its layout (older snapshots
    /// hold [`crate::older::RolloutV1`]).
    pub rollout: Option<R>,
}

/// A rolling update: where it stands and what happened so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version being rolled out.
    pub version: u64,
    /// When the last batch was moved (unix ms); it names the batch that a verdict
    /// ([`crate::command::Op::RolloutBatch`]) is about.
    pub last_step_at_ms: u64,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// The replicas the last step moved, watched for `update.monitor_ms` before the next.
    pub batch: Vec<ReplicaId>,
    /// Replicas moved to `version` so far.
    pub updated: u32,
    /// Moved replicas that failed within their monitor window.
    pub failed: u32,
    /// Moved replicas passed over because their node was unreachable.
    pub unreachable: u32,
    /// What happened last, in words (`paused: web.0 on edge-1 failed: …`).
    pub message: String,
}

impl Rollout {
    /// A rollout of `version` that has moved nothing yet.
    pub fn start(version: u64, phase: RolloutPhase, now: u64) -> Rollout {
        Rollout {
            version,
            last_step_at_ms: now,
            phase,
            batch: Vec::new(),
            updated: 0,
            failed: 0,
            unreachable: 0,
            message: String::new(),
        }
    }

    /// Whether batches are still being moved or watched (not paused, not ended).
    pub fn is_active(&self) -> bool {
        matches!(
            self.phase,
            RolloutPhase::Updating | RolloutPhase::RollingBack
        )
    }
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    /// Moving and watching batches.
    Updating,
    /// Stopped by a failure (`failure_action: pause`); a later update or rollback replaces it,
    /// re-sending the same spec resumes it.
    Paused,
    /// A rollback the rollout's failures asked for (`failure_action: rollback`), itself rolled
    /// out; its own failures pause it.
    RollingBack,
    /// Every replica moved and watched.
    Completed,
    /// The rollback ended: every replica is back on the previous spec.
    RolledBack,
}

impl RolloutPhase {
    /// `updating`, `paused`, `rolling_back`, `completed` or `rolled_back`.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Updating => "updating",
            RolloutPhase::Paused => "paused",
            RolloutPhase::RollingBack => "rolling_back",
            RolloutPhase::Completed => "completed",
            RolloutPhase::RolledBack => "rolled_back",
        }
    }
}

/// A secret: metadata and the sealed value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Name, version, size.
    pub meta: Secret,
    /// AES-256-GCM sealed value.
    pub sealed: SealedBlob,
}

/// A control node that redeemed a token and was registered, but is not a Raft voter yet.
/// Until it is, its join can be undone ([`Op::AbandonJoin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoin {
    /// The token the join redeemed: a single-use token gets its use back if the join is undone.
    pub token_id: TokenId,
    /// When the join was applied (unix ms, the proposer's clock).
    pub since_ms: u64,
}

/// Everything the control plane decides: the desired state of the fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set by the first entry.
    pub cluster: Option<ClusterInfo>,
    /// The node registry (removed nodes stay as tombstones so they are refused).
    pub nodes: BTreeMap<NodeId, Node>,
    /// Serials of revoked certificates.
    pub revoked_serials: BTreeSet<String>,
    /// Services by name.
    pub services: BTreeMap<ServiceName, ServiceRecord>,
    /// Every replica's placement.
    pub replicas: BTreeMap<ReplicaId, Replica>,
    /// Replicas that could not be placed, by service (for `service ps` and metrics).
    pub unschedulable: BTreeMap<ServiceName, u32>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, SecretRecord>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, Volume>,
    /// Join tokens (hashes only).
    pub tokens: TokenBook,
    /// Control nodes registered by a join that are not Raft voters yet, by node id. A
    /// membership entry that makes one a voter ends its entry ([`Self::note_membership`]).
    pub pending_joins: BTreeMap<NodeId, PendingJoin>,
    /// Admin certificates the cluster CA issued, by serial (revoked ones included: their
    /// serials are also in `revoked_serials`).
    pub admins: BTreeMap<String, AdminCert>,
    /// The cluster key generation that seals the CA key and new secret values, and whose gossip
    /// key the mesh uses (0 in a state from before rotation: read as 1, see
    /// [`Self::key_generation`]).
    pub key_gen: u32,
    /// The certificate serial each node had before its last renewal: accepted (like
    /// `Node::cert_serial`) until it expires, revoked with the node.
    pub previous_cert_serials: BTreeMap<NodeId, String>,
    /// The WireGuard overlay range nodes' slots are allocated from.
    pub overlay: OverlayRange,
    /// Each node's place in the WireGuard mesh, by node id. A removed node's entry goes, and
    /// its slot with it.
    pub mesh: BTreeMap<NodeId, MeshEntry>,
    /// The node that holds each local volume's data, by volume name: recorded by the first
    /// placement of a replicated service's replica that mounts it, and from then on the only
    /// node such replicas go to ([`scheduler`]). Ends when the volume or the node is removed.
    pub volume_nodes: BTreeMap<String, NodeId>,
    /// Who minted each join token still in the book (`admin alice`, `the control socket on
    /// c1`), for `token ls`. Tokens minted before it was recorded have none.
    pub token_creators: BTreeMap<TokenId, String>,
    /// Index of the last applied entry.
    pub revision: Revision,
    /// QUIC addresses of the control members (learners included) in the membership applied
    /// as of `revision`, in node-id order: what agents' views list. Kept here, beside the
    /// revision it belongs to, so that a view is a function of the applied state alone.
    /// Openraft's metrics show the membership as soon as it is *appended* (and an
    /// uncommitted one may be rolled back): a view built from them changed without its
    /// revision moving, which agents rightly refused as a delta that does not move forward.
    /// Not serialized: the state machine sets it from the Raft membership, which snapshots
    /// carry beside the state.
    #[serde(skip)]
    pub control_addrs: Vec<String>,
    /// Ids of the control members (learners included) in the membership applied as of
    /// `revision`, set with `control_addrs`. An unfinished join whose node is among them is
    /// not undone: a leader may be adding it right now, and a member with a revoked
    /// certificate and no node entry would be worse than a join left to finish or be removed.
    #[serde(skip)]
    pub control_members: BTreeSet<NodeId>,
    /// Moves whenever an applied entry may have changed the certificates the cluster records or
    /// revokes (nodes, admins), or a snapshot replaced the state: the node's trust list is
    /// rebuilt only then, not at every write. Not serialized (a restart rebuilds it anyway).
    #[serde(skip)]
    pub certs_epoch: Epoch,
}

/// A counter that tells readers when to look again ([`ClusterState::certs_epoch`]). It is not
/// part of the state's value: two states that hold the same things are equal whatever their
/// epochs (a node that installed a snapshot holds what the leader holds).
#[derive(Clone, Copy, Debug, Default, Eq)]
pub struct Epoch(pub u64);

impl PartialEq for Epoch {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// An admin certificate the cluster CA issued: what `warren admin ls` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCert {
    /// The admin's name (in the certificate).
    pub name: String,
    /// The certificate's serial (lowercase hex).
    pub serial: String,
    /// When it was issued (unix ms).
    pub issued_at_ms: u64,
    /// When it expires (unix ms).
    pub expires_at_ms: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl AdminCert {
    /// The record of a certificate issued now, from its identity (an admin certificate's name,
    /// else `fallback_name`).
    pub fn issued_now(
        identity: &warren_transport::PeerIdentity,
        fallback_name: &str,
        now_ms: u64,
    ) -> Self {
        AdminCert {
            name: identity
                .admin_name
                .clone()
                .unwrap_or_else(|| fallback_name.to_owned()),
            serial: identity.serial.clone(),
            issued_at_ms: now_ms,
            expires_at_ms: u64::try_from(identity.not_after_unix).unwrap_or(0) * 1000,
            revoked: false,
        }
    }
}

type Applied = Result<Effect, Rejection>;

/// What a write made from an outdated read is told: both versions, and what to do.
pub(crate) fn version_conflict(name: &ServiceName, current: u64, expected: u64) -> String {
    let now = if current == 0 {
        "does not exist".to_owned()
    } else {
        format!("is at version {current}")
    };
    let read = if expected == 0 {
        "expected it not to exist".to_owned()
    } else {
        format!("expected version {expected}")
    };
    format!(
        "service {name} {now}, the write {read}: it changed since it was read; look at \
         `warren service inspect {name}` and try again"
    )
}

impl ClusterState {
    /// The certificates the cluster recorded when its CA issued them (nodes not removed, admin
    /// certificates not revoked), for the admission checks of this node's QUIC endpoint and API;
    /// `None` until the cluster's first entry is applied (a joining control node must take the
    /// leader's calls before it knows anyone).
    pub fn known_certificates(&self) -> Option<KnownCertificates> {
        self.cluster.as_ref()?;
        let mut known = KnownCertificates::default();
        for node in self.nodes.values() {
            if node.state == NodeState::Removed {
                continue;
            }
            let previous = self.previous_cert_serials.get(&node.id);
            for serial in node.cert_serial.iter().chain(previous) {
                known.add_node(serial.clone(), CertRole::from(node.role), node.id);
            }
        }
        if !self.admins.is_empty() {
            known.note_admins_recorded();
        }
        for admin in self.admins.values().filter(|admin| !admin.revoked) {
            known.add_admin(admin.serial.clone(), admin.name.clone());
        }
        Some(known)
    }

    /// The cluster key generation in force ([`Self::key_gen`]; 1 before any rotation).
    pub fn key_generation(&self) -> u32 {
        self.key_gen.max(1)
    }

    /// Notes an entry that carries no command (blank or membership) at `revision`.
    pub fn note_revision(&mut self, revision: Revision) {
        assert!(
            revision > self.revision,
            "revision went backwards: {revision} after {}",
            self.revision
        );
        self.revision = revision;
    }

    /// Notes a membership entry at `revision` whose voters (of every configuration, joint
    /// included) are `voters`: a pending join whose node is among them is complete.
    pub fn note_membership(&mut self, revision: Revision, voters: impl IntoIterator<Item = u64>) {
        // Index 0 (the configuration `Raft::initialize` writes) precedes revision 1.
        if revision > self.revision {
            self.note_revision(revision);
        }
        for voter in voters {
            self.pending_joins.remove(&NodeId(voter));
        }
    }

    /// Applies one entry at `revision` (its log index).
    ///
    /// # Panics
    /// If `revision` is not past the last applied one: the log is corrupt and continuing would
    /// diverge from the other nodes.
    pub fn apply(&mut self, revision: Revision, command: &Command) -> Outcome {
        self.note_revision(revision);
        if command.op.touches_certificates() {
            self.certs_epoch.0 += 1;
        }
        let now = command.at_ms;
        let result = match &command.op {
            Op::InitCluster {
                name,
                ca_cert_der,
                ca_key_sealed,
            } => self.init(name, ca_cert_der, ca_key_sealed, now),
            Op::AddToken(record) => self.add_token(record, now),
            Op::AddTokenBy(minted) => {
                let added = self.add_token(&minted.record, now);
                let creator = minted.created_by.clone();
                self.token_creators.insert(minted.record.id, creator);
                added
            }
            Op::RevokeToken(id) => self.revoke_token(*id),
            Op::Join {
                token_id,
                secret_sha256,
                role,
                node,
            } => self.join(*token_id, secret_sha256, *role, node, now),
            Op::RegisterNode(node) => self.register(node, now),
            Op::SetAvailability { node, availability } => {
                self.set_availability(*node, *availability, now)
            }
            Op::RemoveNode(node) => self.remove_node(*node, now),
            Op::AbandonJoin { node } => self.abandon_join(*node),
            Op::AddAdmin(cert) => self.add_admin(cert),
            Op::RevokeAdmin { serial } => self.revoke_admin(serial),
            Op::RotateClusterKey {
                generation,
                ca_key_sealed,
                secrets,
            } => self.rotate_cluster_key(*generation, ca_key_sealed, secrets),
            Op::RenewCert { node, serial } => self.renew_cert(*node, serial),
            Op::RenewAdmin { previous, cert } => self.renew_admin(previous, cert),
            Op::SetOverlayRange(range) => self.set_overlay_range(*range),
            Op::SetMesh {
                node,
                public_key,
                next_public_key,
                endpoint,
            } => self.set_mesh(*node, *public_key, *next_public_key, endpoint.as_deref()),
            Op::RequestKeyRotation(node) => self.request_key_rotation(*node),
            Op::SetAddresses { node, addresses } => self.set_addresses(*node, addresses),
            Op::NodeUnreachable { node } => self.set_reachable(*node, false, now),
            Op::NodeReachable { node } => self.set_reachable(*node, true, now),
            Op::PutService(spec) => self.put_service(spec, now),
            Op::ScaleService { name, replicas } => self.scale(name, *replicas, now),
            Op::RollbackService(name) => self.rollback(name, now),
            Op::RemoveService(name) => self.remove_service(name),
            Op::RolloutStep { name, version } => self.rollout_step(name, *version, now),
            Op::PutServiceIfVersion(put) => self
                .check_version(&put.spec.name, put.version)
                .and_then(|()| self.put_service(&put.spec, now)),
            Op::RolloutBatch(verdict) => self.rollout_batch(verdict, now),
            Op::PutSecret {
                name,
                size_bytes,
                sealed,
            } => self.put_secret(name, *size_bytes, sealed, now),
            Op::RemoveSecret(name) => self.remove_secret(name),
            Op::PutVolume(volume) => self.put_volume(volume),
            Op::RemoveVolume(name) => self.remove_volume(name),
            Op::Tick => {
                self.reschedule(now);
                Ok(Effect::Done)
            }
        };
        Outcome { revision, result }
    }

    fn add_token(&mut self, record: &TokenRecord, now: u64) -> Applied {
        let pending = &self.pending_joins;
        self.tokens
            .prune_except(now, |id| pending.values().any(|p| p.token_id == id));
        self.tokens.insert(record.clone());
        let kept: BTreeSet<TokenId> = self.tokens.records().map(|r| r.id).collect();
        self.token_creators.retain(|id, _| kept.contains(id));
        Ok(Effect::Done)
    }

    fn revoke_token(&mut self, id: TokenId) -> Applied {
        if self.tokens.revoke(id) {
            Ok(Effect::Done)
        } else {
            Err(Rejection::not_found(format!("token {id}")))
        }
    }

    fn init(&mut self, name: &str, ca_cert_der: &[u8], ca_key_sealed: &[u8], now: u64) -> Applied {
        if self.cluster.is_some() {
            return Err(Rejection::conflict("cluster is already initialised"));
        }
        self.cluster = Some(ClusterInfo {
            name: name.to_owned(),
            ca_cert_der: ca_cert_der.to_vec(),
            ca_key_sealed: ca_key_sealed.to_vec(),
            created_at_ms: now,
        });
        Ok(Effect::Done)
    }

    fn name_taken(&self, name: &str, except: NodeId) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|n| n.name == name && n.id != except && n.state != NodeState::Removed)
            .map(|n| n.id)
    }

    fn join(
        &mut self,
        token_id: warren_transport::token::TokenId,
        secret_sha256: &[u8; 32],
        role: warren_api::NodeRole,
        node: &Node,
        now: u64,
    ) -> Applied {
        if node.role != role {
            return Err(Rejection::invalid(
                "node role does not match the role asked for",
            ));
        }
        // Check everything that could refuse the join before the token is used up.
        self.check_new_node(node)?;
        self.tokens
            .redeem_hashed(token_id, secret_sha256, role, now)
            .map_err(|e| Rejection {
                code: RejectionCode::TokenRefused,
                message: e.to_string(),
            })?;
        let effect = self.register(node, now)?;
        if role == warren_api::NodeRole::Control {
            let pending = PendingJoin {
                token_id,
                since_ms: now,
            };
            self.pending_joins.insert(node.id, pending);
        }
        Ok(effect)
    }

    /// Undoes the join of a control node that never became a voter: the entry goes (no
    /// tombstone: the node never was a member), the certificate is revoked, and a single-use
    /// token gets its use back.
    fn add_admin(&mut self, cert: &AdminCert) -> Applied {
        let name_taken = self
            .admins
            .values()
            .any(|a| a.name == cert.name && !a.revoked);
        if name_taken {
            return Err(Rejection::conflict(format!(
                "an admin named {} already has a certificate; revoke it first or choose another name",
                cert.name
            )));
        }
        if self.admins.contains_key(&cert.serial) {
            return Err(Rejection::conflict(format!(
                "certificate serial {} is already recorded",
                cert.serial
            )));
        }
        self.admins.insert(cert.serial.clone(), cert.clone());
        Ok(Effect::Done)
    }

    fn revoke_admin(&mut self, serial: &str) -> Applied {
        let Some(cert) = self.admins.get_mut(serial) else {
            return Err(Rejection::not_found(format!("admin certificate {serial}")));
        };
        if cert.revoked {
            return Ok(Effect::None);
        }
        cert.revoked = true;
        self.revoked_serials.insert(serial.to_owned());
        Ok(Effect::Done)
    }

    fn rotate_cluster_key(
        &mut self,
        generation: u32,
        ca_key_sealed: &[u8],
        secrets: &[(String, u64, SealedBlob)],
    ) -> Applied {
        let current = self.key_generation();
        if generation != current + 1 {
            return Err(Rejection::conflict(format!(
                "cluster key generation {generation} does not follow the current one ({current}); another rotation came first"
            )));
        }
        let Some(info) = self.cluster.as_mut() else {
            return Err(Rejection::conflict("the cluster is not initialised"));
        };
        info.ca_key_sealed = ca_key_sealed.to_vec();
        for (name, version, sealed) in secrets {
            if let Some(record) = self.secrets.get_mut(name)
                && record.meta.version == *version
            {
                record.sealed = sealed.clone();
            }
        }
        self.key_gen = generation;
        Ok(Effect::Done)
    }

    fn renew_admin(&mut self, previous: &str, cert: &AdminCert) -> Applied {
        match self.admins.get(previous) {
            Some(old) if !old.revoked && old.name == cert.name => {}
            Some(_) => {
                return Err(Rejection::conflict(format!(
                    "admin certificate {previous} is revoked or not {}'s",
                    cert.name
                )));
            }
            None => {
                return Err(Rejection::not_found(format!(
                    "admin certificate {previous}"
                )));
            }
        }
        if self.admins.contains_key(&cert.serial) {
            return Err(Rejection::conflict(format!(
                "certificate serial {} is already recorded",
                cert.serial
            )));
        }
        self.revoke_admin(previous)?;
        self.admins.insert(cert.serial.clone(), cert.clone());
        Ok(Effect::Done)
    }

    fn renew_cert(&mut self, id: NodeId, serial: &str) -> Applied {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Err(Rejection::not_found(format!("node {id}")));
        };
        if node.state == NodeState::Removed {
            return Err(Rejection::conflict(format!("node {id} was removed")));
        }
        if node.cert_serial.as_deref() == Some(serial) {
            return Ok(Effect::None);
        }
        if let Some(previous) = node.cert_serial.replace(serial.to_owned()) {
            self.previous_cert_serials.insert(id, previous);
        }
        Ok(Effect::Done)
    }

    fn abandon_join(&mut self, id: NodeId) -> Applied {
        if self.control_members.contains(&id) {
            return Err(Rejection::conflict(format!(
                "node {id} is a control member now, so its join is not undone; remove it with `warren node rm {id}`"
            )));
        }
        let Some(pending) = self.pending_joins.remove(&id) else {
            return Err(Rejection::conflict(format!(
                "node {id} has no unfinished join to undo"
            )));
        };
        if let Some(serial) = self.nodes.remove(&id).and_then(|node| node.cert_serial) {
            self.revoked_serials.insert(serial);
        }
        self.mesh.remove(&id);
        self.tokens.give_back(pending.token_id);
        Ok(Effect::Done)
    }

    fn check_new_node(&self, node: &Node) -> Result<(), Rejection> {
        node.validate()
            .map_err(|e| Rejection::invalid(e.to_string()))?;
        if self.nodes.contains_key(&node.id) {
            return Err(Rejection::conflict(format!(
                "node id {} is already registered",
                node.id
            )));
        }
        if let Some(other) = self.name_taken(&node.name, node.id) {
            let message = if self.pending_joins.contains_key(&other) {
                format!(
                    "node name {} is taken by node {other}, whose join has not finished; it is undone if that joiner stays silent, or remove it with `warren node rm {other}`",
                    node.name
                )
            } else {
                format!(
                    "node name {} is taken by node {other}; choose another --name or remove that node",
                    node.name
                )
            };
            return Err(Rejection::conflict(message));
        }
        Ok(())
    }

    fn register(&mut self, node: &Node, now: u64) -> Applied {
        self.check_new_node(node)?;
        let mut node = node.clone();
        node.joined_at_ms = now;
        node.state = NodeState::Ready;
        let id = node.id;
        self.nodes.insert(id, node);
        self.give_overlay_slot(id);
        self.reschedule(now);
        Ok(Effect::Node(id))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, Rejection> {
        match self.nodes.get_mut(&id) {
            Some(node) if node.state != NodeState::Removed => Ok(node),
            Some(_) => Err(Rejection::conflict(format!("node {id} has been removed"))),
            None => Err(Rejection::not_found(format!("node {id}"))),
        }
    }

    /// Records where `node` listens now ([`Op::SetAddresses`]).
    fn set_addresses(&mut self, node: NodeId, addresses: &NodeAddresses) -> Applied {
        match self.nodes.get_mut(&node) {
            None => Err(Rejection::not_found(format!("node {node}"))),
            Some(n) if n.state == NodeState::Removed => {
                Err(Rejection::conflict(format!("node {node} has been removed")))
            }
            Some(n) => {
                n.addresses.clone_from(addresses);
                Ok(Effect::Done)
            }
        }
    }

    fn set_availability(&mut self, id: NodeId, availability: Availability, now: u64) -> Applied {
        let node = self.node_mut(id)?;
        if node.availability == availability {
            return Ok(Effect::None);
        }
        node.availability = availability;
        self.reschedule(now);
        Ok(Effect::Done)
    }

    fn remove_node(&mut self, id: NodeId, now: u64) -> Applied {
        self.node_mut(id)?;
        // An operator's removal ends an unfinished join too (the token stays used).
        self.pending_joins.remove(&id);
        let node = self.node_mut(id)?;
        node.state = NodeState::Removed;
        let current = node.cert_serial.clone();
        self.mesh.remove(&id);
        // The data went with the node: its volumes start afresh wherever they are placed next.
        self.volume_nodes.retain(|_, holder| *holder != id);
        let previous = self.previous_cert_serials.remove(&id);
        self.revoked_serials
            .extend(current.into_iter().chain(previous));
        self.reschedule(now);
        Ok(Effect::Done)
    }

    fn set_reachable(&mut self, id: NodeId, reachable: bool, now: u64) -> Applied {
        let node = self.node_mut(id)?;
        let next = match (node.state, reachable) {
            (NodeState::Ready, false) => NodeState::Unreachable { since_ms: now },
            (NodeState::Unreachable { .. } | NodeState::Down, true) => NodeState::Ready,
            _ => return Ok(Effect::None),
        };
        node.state = next;
        self.reschedule(now);
        Ok(Effect::Done)
    }

    fn check_references(&self, spec: &ServiceSpec) -> Result<(), Rejection> {
        for (i, secret) in spec.secrets.iter().enumerate() {
            if !self.secrets.contains_key(&secret.name) {
                return Err(Rejection::invalid(format!(
                    "secrets[{i}].name: secret {} does not exist; create it with `warren secret create`",
                    secret.name
                )));
            }
        }
        for (i, mount) in spec.volumes.iter().enumerate() {
            if !self.volumes.contains_key(&mount.volume) {
                return Err(Rejection::invalid(format!(
                    "volumes[{i}].volume: volume {} does not exist",
                    mount.volume
                )));
            }
        }
        Ok(())
    }

    /// Refuses unless service `name` is at `version` (`0`: unless there is no such service).
    fn check_version(&self, name: &ServiceName, version: u64) -> Result<(), Rejection> {
        let current = self.services.get(name).map_or(0, |r| r.current.version);
        if current == version {
            return Ok(());
        }
        Err(Rejection::conflict(version_conflict(
            name, current, version,
        )))
    }

    fn put_service(&mut self, spec: &ServiceSpec, now: u64) -> Applied {
        spec.validate()
            .map_err(|e| Rejection::invalid(e.to_string()))?;
        self.check_references(spec)?;
        let Some(record) = self.services.get_mut(&spec.name) else {
            let record = ServiceRecord {
                current: Service {
                    version: 1,
                    spec: spec.clone(),
                },
                previous: None,
                created_at_ms: now,
                updated_at_ms: now,
                rollout: None,
            };
            self.services.insert(spec.name.clone(), record);
            self.reschedule_one(&spec.name, now);
            return Ok(Effect::Service {
                version: 1,
                changed: true,
                created: true,
            });
        };
        if record.current.spec == *spec {
            let version = record.current.version;
            if self.resume_rollout(&spec.name, now) {
                return Ok(Effect::Service {
                    version,
                    changed: true,
                    created: false,
                });
            }
            let record = &self.services[&spec.name];
            return Ok(Effect::Service {
                version: record.current.version,
                changed: false,
                created: false,
            });
        }
        let previous = std::mem::replace(&mut record.current.spec, spec.clone());
        record.previous = Some(previous);
        record.current.version += 1;
        record.updated_at_ms = now;
        let version = record.current.version;
        self.after_spec_change(&spec.name, now);
        Ok(Effect::Service {
            version,
            changed: true,
            created: false,
        })
    }

    fn scale(&mut self, name: &ServiceName, replicas: u32, now: u64) -> Applied {
        let record = self
            .services
            .get(name)
            .ok_or_else(|| Rejection::not_found(format!("service {name}")))?;
        if record.current.spec.mode == ServiceMode::Global {
            return Err(Rejection::invalid(format!(
                "service {name} is global: it runs one replica on every eligible node and cannot be scaled"
            )));
        }
        let mut spec = record.current.spec.clone();
        spec.mode = ServiceMode::Replicated { replicas };
        self.put_service(&spec, now)
    }

    fn rollback(&mut self, name: &ServiceName, now: u64) -> Applied {
        let record = self
            .services
            .get(name)
            .ok_or_else(|| Rejection::not_found(format!("service {name}")))?;
        let previous = record.previous.clone().ok_or_else(|| {
            Rejection::conflict(format!(
                "service {name} has no previous spec to roll back to"
            ))
        })?;
        self.put_service(&previous, now)
    }

    fn remove_service(&mut self, name: &ServiceName) -> Applied {
        if self.services.remove(name).is_none() {
            return Err(Rejection::not_found(format!("service {name}")));
        }
        // Nothing else moves when a service goes: drop its replicas.
        self.replicas.retain(|id, _| &id.service != name);
        self.unschedulable.remove(name);
        Ok(Effect::Done)
    }

    fn put_secret(
        &mut self,
        name: &str,
        size_bytes: u64,
        sealed: &SealedBlob,
        now: u64,
    ) -> Applied {
        let version = self.secrets.get(name).map_or(1, |s| s.meta.version + 1);
        let meta = Secret {
            name: name.to_owned(),
            version,
            size_bytes,
            created_at_ms: now,
        };
        meta.validate()
            .map_err(|e| Rejection::invalid(e.to_string()))?;
        self.secrets.insert(
            name.to_owned(),
            SecretRecord {
                meta,
                sealed: sealed.clone(),
            },
        );
        Ok(Effect::Done)
    }

    fn users_of(&self, uses: impl Fn(&ServiceSpec) -> bool) -> Vec<String> {
        self.services
            .values()
            .filter(|r| uses(&r.current.spec))
            .map(|r| r.current.spec.name.to_string())
            .collect()
    }

    /// Refuses to remove the `what` called `name` while a service `uses` it.
    fn check_unused(
        &self,
        what: &str,
        name: &str,
        uses: impl Fn(&ServiceSpec) -> bool,
    ) -> Result<(), Rejection> {
        let users = self.users_of(uses);
        if !users.is_empty() {
            return Err(Rejection::conflict(format!(
                "{what} {name} is used by service {}; remove it from the service first",
                users.join(", ")
            )));
        }
        Ok(())
    }

    fn remove_secret(&mut self, name: &str) -> Applied {
        if !self.secrets.contains_key(name) {
            return Err(Rejection::not_found(format!("secret {name}")));
        }
        self.check_unused("secret", name, |spec| {
            spec.secrets.iter().any(|s| s.name == name)
        })?;
        self.secrets.remove(name);
        Ok(Effect::Done)
    }

    fn put_volume(&mut self, volume: &Volume) -> Applied {
        volume
            .validate()
            .map_err(|e| Rejection::invalid(e.to_string()))?;
        self.volumes.insert(volume.name.clone(), volume.clone());
        Ok(Effect::Done)
    }

    fn remove_volume(&mut self, name: &str) -> Applied {
        if !self.volumes.contains_key(name) {
            return Err(Rejection::not_found(format!("volume {name}")));
        }
        self.check_unused("volume", name, |spec| {
            spec.volumes.iter().any(|v| v.volume == name)
        })?;
        self.volumes.remove(name);
        self.volume_nodes.remove(name);
        Ok(Effect::Done)
    }

    /// What the scheduler places on.
    fn fleet(&self) -> scheduler::Fleet<'_> {
        scheduler::Fleet {
            nodes: &self.nodes,
            volume_nodes: &self.volume_nodes,
        }
    }

    /// Recomputes placements with the scheduler.
    fn reschedule(&mut self, now: u64) {
        let services: Vec<&Service> = self.services.values().map(|r| &r.current).collect();
        let plan = scheduler::schedule(self.fleet(), &services, &self.replicas, now);
        self.replicas = plan.replicas;
        self.unschedulable = plan.unschedulable;
        self.volume_nodes = plan.volume_nodes;
    }

    /// Places one service after a change to it alone; the others stay put.
    fn reschedule_one(&mut self, name: &ServiceName, now: u64) {
        let record = self
            .services
            .get(name)
            .expect("caller checked the service exists");
        let plan = scheduler::schedule_one(self.fleet(), &record.current, &self.replicas, now);
        self.replicas.retain(|id, _| &id.service != name);
        self.replicas.extend(plan.replicas);
        self.volume_nodes = plan.volume_nodes;
        match plan.unschedulable.get(name) {
            Some(&n) => self.unschedulable.insert(name.clone(), n),
            None => self.unschedulable.remove(name),
        };
    }

    /// Replicas assigned to `node` that should run.
    pub fn replicas_on(&self, node: NodeId) -> impl Iterator<Item = &Replica> {
        self.replicas
            .values()
            .filter(move |r| r.node == node && r.desired == DesiredState::Running)
    }

    /// Nodes whose on-disconnect timers may have expired, so a `Tick` would move replicas.
    pub fn reschedule_due(&self, now: u64) -> bool {
        let services: Vec<&Service> = self.services.values().map(|r| &r.current).collect();
        scheduler::schedule(self.fleet(), &services, &self.replicas, now).replicas != self.replicas
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warren_api::{NodeAddresses, NodeRole, ProcessSpec, SecretRef, Workload};
    use warren_transport::MintOptions;
    use warren_transport::token::mint;

    use super::*;
    use crate::command::{MintedToken, PutIfVersion};

    struct Log {
        state: ClusterState,
        index: u64,
        now: u64,
    }

    impl Log {
        fn new() -> Self {
            Self {
                state: ClusterState::default(),
                index: 0,
                now: 1_000,
            }
        }

        fn apply(&mut self, op: Op) -> Result<Effect, Rejection> {
            self.index += 1;
            self.now += 10;
            let outcome = self.state.apply(
                Revision(self.index),
                &Command {
                    at_ms: self.now,
                    op,
                },
            );
            assert_eq!(outcome.revision, Revision(self.index));
            outcome.result
        }
    }

    fn agent(id: u64, name: &str, site: &str) -> Node {
        Node {
            id: NodeId(id),
            name: name.into(),
            role: NodeRole::Agent,
            site: site.into(),
            labels: BTreeMap::new(),
            availability: Availability::Active,
            state: NodeState::Ready,
            cert_serial: Some(format!("serial{id}")),
            addresses: NodeAddresses::default(),
            joined_at_ms: 0,
        }
    }

    fn spec(name: &str, replicas: u32, command: &str) -> ServiceSpec {
        let workload = Workload::Process(ProcessSpec {
            command: command.split(' ').map(str::to_owned).collect(),
            working_dir: None,
        });
        let mut spec = ServiceSpec::new(ServiceName::new(name).unwrap(), workload);
        spec.mode = ServiceMode::Replicated { replicas };
        spec
    }

    fn web() -> ServiceName {
        ServiceName::new("web").unwrap()
    }

    #[test]
    fn join_redeems_the_token_once_and_registers_the_node() {
        let mut log = Log::new();
        let options = MintOptions {
            role: NodeRole::Agent,
            ttl: None,
            single_use: true,
        };
        let (token, record) = mint([1; 32], options, 0);
        log.apply(Op::AddToken(record)).unwrap();
        let join = |node| Op::Join {
            token_id: token.id,
            secret_sha256: token.secret_sha256(),
            role: NodeRole::Agent,
            node,
        };
        assert_eq!(
            log.apply(join(agent(7, "edge-1", "lisbon"))),
            Ok(Effect::Node(NodeId(7)))
        );
        let again = log.apply(join(agent(8, "edge-2", "lisbon"))).unwrap_err();
        assert_eq!(again.code, RejectionCode::TokenRefused);
        assert!(again.message.contains("already been used"), "{again}");
        assert_eq!(log.state.nodes.len(), 1);
        assert_eq!(log.state.revision, Revision(3));
    }

    #[test]
    fn a_duplicate_name_is_refused_before_the_token_is_used() {
        let mut log = Log::new();
        let (token, record) = mint(
            [1; 32],
            MintOptions {
                role: NodeRole::Agent,
                ttl: None,
                single_use: true,
            },
            0,
        );
        log.apply(Op::AddToken(record)).unwrap();
        log.apply(Op::RegisterNode(agent(1, "edge-1", "lisbon")))
            .unwrap();
        let op = |node| Op::Join {
            token_id: token.id,
            secret_sha256: token.secret_sha256(),
            role: NodeRole::Agent,
            node,
        };
        let err = log.apply(op(agent(2, "edge-1", "lisbon"))).unwrap_err();
        assert!(err.message.contains("taken by node"), "{err}");
        // The single-use token is still good.
        log.apply(op(agent(2, "edge-2", "lisbon"))).unwrap();
    }

    fn control(id: u64, name: &str) -> Node {
        Node {
            role: NodeRole::Control,
            ..agent(id, name, "central")
        }
    }

    /// A single-use control token, minted into the log.
    fn control_token(log: &mut Log) -> impl Fn(Node) -> Op + use<> {
        let options = MintOptions {
            role: NodeRole::Control,
            ttl: None,
            single_use: true,
        };
        let (token, record) = mint([1; 32], options, 0);
        log.apply(Op::AddToken(record)).unwrap();
        move |node| Op::Join {
            token_id: token.id,
            secret_sha256: token.secret_sha256(),
            role: NodeRole::Control,
            node,
        }
    }

    #[test]
    fn an_undone_join_leaves_nothing_but_a_revoked_serial_and_gives_the_token_back() {
        let mut log = Log::new();
        let join = control_token(&mut log);
        log.apply(join(control(2, "c2"))).unwrap();
        assert!(log.state.pending_joins.contains_key(&NodeId(2)));
        // Minting another token prunes used ones, but not one an unfinished join may give back.
        log.apply(Op::AddToken(
            mint(
                [1; 32],
                MintOptions {
                    role: NodeRole::Agent,
                    ttl: None,
                    single_use: false,
                },
                0,
            )
            .1,
        ))
        .unwrap();
        assert_eq!(
            log.apply(Op::AbandonJoin { node: NodeId(2) }),
            Ok(Effect::Done)
        );
        assert!(!log.state.nodes.contains_key(&NodeId(2)), "no tombstone");
        assert!(log.state.pending_joins.is_empty());
        assert!(log.state.revoked_serials.contains("serial2"));
        // The same name and the same single-use token work again.
        log.apply(join(control(3, "c2"))).unwrap();
        let twice = log.apply(Op::AbandonJoin { node: NodeId(2) }).unwrap_err();
        assert_eq!(twice.code, RejectionCode::Conflict);
    }

    #[test]
    fn a_join_is_finished_by_the_membership_that_makes_it_a_voter() {
        let mut log = Log::new();
        let join = control_token(&mut log);
        log.apply(join(control(2, "c2"))).unwrap();
        // A configuration that names it only as a learner changes nothing.
        log.index += 1;
        log.state.note_membership(Revision(log.index), [1]);
        assert!(log.state.pending_joins.contains_key(&NodeId(2)));
        log.index += 1;
        log.state.note_membership(Revision(log.index), [1, 2]);
        assert!(log.state.pending_joins.is_empty());
        assert_eq!(log.state.revision, Revision(log.index));
        let err = log.apply(Op::AbandonJoin { node: NodeId(2) }).unwrap_err();
        assert!(err.message.contains("no unfinished join"), "{err}");
        assert!(log.state.nodes.contains_key(&NodeId(2)));
    }

    /// A leader that lost its leadership while undoing a join must not undo it under a new
    /// leader that is adding the node: once the node is in the applied membership (a learner
    /// here), the undo is refused and the join is left to finish.
    #[test]
    fn a_join_whose_node_is_a_member_is_not_undone() {
        let mut log = Log::new();
        let join = control_token(&mut log);
        log.apply(join(control(2, "c2"))).unwrap();
        log.state.control_members = [NodeId(1), NodeId(2)].into();
        let err = log.apply(Op::AbandonJoin { node: NodeId(2) }).unwrap_err();
        assert_eq!(err.code, RejectionCode::Conflict);
        assert!(err.message.contains("is a control member now"), "{err}");
        assert!(log.state.pending_joins.contains_key(&NodeId(2)));
        assert!(log.state.nodes.contains_key(&NodeId(2)));
        assert!(!log.state.revoked_serials.contains("serial2"));
        // Out of the membership again (the learner was taken out), it is undone.
        log.state.control_members = [NodeId(1)].into();
        assert_eq!(
            log.apply(Op::AbandonJoin { node: NodeId(2) }),
            Ok(Effect::Done)
        );
    }

    #[test]
    fn a_name_held_by_an_unfinished_join_says_so() {
        let mut log = Log::new();
        let join = control_token(&mut log);
        log.apply(join(control(2, "c2"))).unwrap();
        let err = log.apply(Op::RegisterNode(control(3, "c2"))).unwrap_err();
        assert!(err.message.contains("whose join has not finished"), "{err}");
        // An operator's removal ends the unfinished join too.
        log.apply(Op::RemoveNode(NodeId(2))).unwrap();
        assert!(log.state.pending_joins.is_empty());
    }

    #[test]
    fn service_lifecycle_places_scales_and_removes_replicas() {
        let mut log = Log::new();
        for i in 1..=3 {
            log.apply(Op::RegisterNode(agent(
                i,
                &format!("edge-{i}"),
                ["a", "b", "c"][i as usize - 1],
            )))
            .unwrap();
        }
        let created = log
            .apply(Op::PutService(spec("web", 3, "sleep 100")))
            .unwrap();
        assert_eq!(
            created,
            Effect::Service {
                version: 1,
                changed: true,
                created: true
            }
        );
        assert_eq!(log.state.replicas.len(), 3);
        // Re-applying the same spec changes nothing.
        let same = log
            .apply(Op::PutService(spec("web", 3, "sleep 100")))
            .unwrap();
        assert_eq!(
            same,
            Effect::Service {
                version: 1,
                changed: false,
                created: false
            }
        );
        log.apply(Op::ScaleService {
            name: web(),
            replicas: 5,
        })
        .unwrap();
        assert_eq!(log.state.replicas.len(), 5);
        log.apply(Op::RemoveService(web())).unwrap();
        assert!(log.state.replicas.is_empty());
        assert_eq!(
            log.apply(Op::RemoveService(web())).unwrap_err().code,
            RejectionCode::NotFound
        );
    }

    #[test]
    fn a_tokens_creator_is_kept_while_the_token_is() {
        use warren_transport::MintOptions;
        let mut log = Log::new();
        let options = MintOptions {
            role: NodeRole::Agent,
            ttl: Some(std::time::Duration::from_secs(60)),
            single_use: false,
        };
        let (_, record) = warren_transport::token::mint([7; 32], options, 1_000);
        let id = record.id;
        log.apply(Op::AddTokenBy(MintedToken {
            record,
            created_by: "admin alice".to_owned(),
        }))
        .unwrap();
        assert_eq!(log.state.token_creators[&id], "admin alice");
        // Long after it expired, the next mint prunes it, and its creator with it.
        let (_, later) = warren_transport::token::mint([7; 32], options, 10_000_000);
        log.state.apply(
            Revision(log.index + 1),
            &Command {
                at_ms: 10_000_000,
                op: Op::AddToken(later),
            },
        );
        assert!(!log.state.token_creators.contains_key(&id));
    }

    #[test]
    fn a_put_on_condition_applies_only_at_the_version_read() {
        let mut log = Log::new();
        let put = |spec, version| Op::PutServiceIfVersion(PutIfVersion { spec, version });
        log.apply(put(spec("web", 1, "sleep 100"), 0)).unwrap();
        let refused = log.apply(put(spec("web", 2, "sleep 100"), 0)).unwrap_err();
        assert_eq!(refused.code, RejectionCode::Conflict);
        assert!(refused.message.contains("is at version 1"), "{refused:?}");
        log.apply(put(spec("web", 2, "sleep 100"), 1)).unwrap();
        let refused = log.apply(put(spec("web", 3, "sleep 100"), 1)).unwrap_err();
        assert_eq!(refused.code, RejectionCode::Conflict);
        assert!(
            refused
                .message
                .contains("service web is at version 2, the write expected version 1"),
            "{refused:?}"
        );
        let record = &log.state.services[&web()];
        assert_eq!(record.current.version, 2);
        assert_eq!(
            record.current.spec.mode,
            ServiceMode::Replicated { replicas: 2 }
        );
        let gone = log.apply(put(spec("api", 1, "sleep 100"), 4)).unwrap_err();
        assert!(
            gone.message.contains("service api does not exist"),
            "{gone:?}"
        );
    }

    #[test]
    fn a_spec_change_that_keeps_the_workload_is_adopted_without_a_rollout() {
        let mut log = Log::new();
        log.apply(Op::RegisterNode(agent(1, "edge-1", "a")))
            .unwrap();
        log.apply(Op::PutService(spec("web", 2, "sleep 100")))
            .unwrap();
        let before: Vec<u64> = log
            .state
            .replicas
            .values()
            .map(|r| r.workload_hash)
            .collect();
        log.apply(Op::ScaleService {
            name: web(),
            replicas: 3,
        })
        .unwrap();
        let record = &log.state.services[&web()];
        assert_eq!(record.current.version, 2);
        assert!(record.rollout.is_none());
        assert!(log.state.replicas.values().all(|r| r.service_version == 2));
        let after: Vec<u64> = log
            .state
            .replicas
            .values()
            .take(2)
            .map(|r| r.workload_hash)
            .collect();
        assert_eq!(
            before, after,
            "unchanged workloads keep their hash, so agents adopt them"
        );
    }

    #[test]
    fn a_workload_change_rolls_out_in_batches_and_rollback_restores() {
        // (The leader's verdicts are tested in `state/rollout_tests.rs`.)
        let mut log = Log::new();
        log.apply(Op::RegisterNode(agent(1, "edge-1", "a")))
            .unwrap();
        let mut v1 = spec("web", 3, "sleep 100");
        v1.update.parallelism = 2;
        log.apply(Op::PutService(v1.clone())).unwrap();
        let mut v2 = v1.clone();
        v2.env.insert("MODE".into(), "fast".into());
        log.apply(Op::PutService(v2)).unwrap();
        let at_v2 = |log: &Log| {
            log.state
                .replicas
                .values()
                .filter(|r| r.service_version == 2)
                .count()
        };
        assert_eq!(at_v2(&log), 2, "first batch moves at once");
        assert!(log.state.services[&web()].rollout.is_some());
        log.apply(Op::RolloutStep {
            name: web(),
            version: 2,
        })
        .unwrap();
        assert_eq!(at_v2(&log), 3);
        // The last batch is still watched; the leader's verdict ends the rollout.
        assert!(
            log.state.services[&web()]
                .rollout
                .as_ref()
                .unwrap()
                .is_active()
        );
        // A stale step for an old version does nothing.
        assert_eq!(
            log.apply(Op::RolloutStep {
                name: web(),
                version: 1
            }),
            Ok(Effect::None)
        );
        log.apply(Op::RollbackService(web())).unwrap();
        let record = &log.state.services[&web()];
        assert_eq!(record.current.version, 3);
        assert_eq!(record.current.spec, v1);
    }

    #[test]
    fn secrets_in_use_cannot_be_removed_and_unknown_secrets_cannot_be_referenced() {
        let mut log = Log::new();
        let mut with_secret = spec("web", 1, "sleep 100");
        with_secret.secrets.push(SecretRef::new("db-pass"));
        let err = log.apply(Op::PutService(with_secret.clone())).unwrap_err();
        assert!(err.message.starts_with("secrets[0].name"), "{err}");
        let sealed = SealedBlob {
            key_id: 1,
            nonce: [0; 12],
            ciphertext: vec![1, 2, 3],
        };
        log.apply(Op::PutSecret {
            name: "db-pass".into(),
            size_bytes: 3,
            sealed,
        })
        .unwrap();
        log.apply(Op::PutService(with_secret)).unwrap();
        let err = log.apply(Op::RemoveSecret("db-pass".into())).unwrap_err();
        assert!(err.message.contains("used by service web"), "{err}");
    }

    /// A volume is pinned to the node its first replica went to; it cannot be removed while a
    /// service mounts it; removing it (or its node) ends the binding.
    #[test]
    fn volumes_are_held_by_a_node_and_removed_only_when_unused() {
        let mut log = Log::new();
        log.apply(Op::RegisterNode(agent(1, "edge-1", "a")))
            .unwrap();
        log.apply(Op::RegisterNode(agent(2, "edge-2", "b")))
            .unwrap();
        log.apply(Op::PutVolume(Volume {
            name: "data".into(),
            driver: warren_api::VolumeDriver::Local,
            size_limit_bytes: None,
            labels: BTreeMap::new(),
        }))
        .unwrap();
        let mut db = spec("db", 2, "sleep 100");
        db.volumes.push(warren_api::VolumeMount {
            volume: "data".into(),
            target: "data".into(),
            read_only: false,
        });
        log.apply(Op::PutService(db.clone())).unwrap();
        let holder = log.state.volume_nodes["data"];
        assert!(log.state.replicas.values().all(|r| r.node == holder));
        assert_eq!(log.state.replicas.len(), 2);

        let err = log.apply(Op::RemoveVolume("data".into())).unwrap_err();
        assert_eq!(err.code, RejectionCode::Conflict);
        assert!(err.message.contains("used by service db"), "{err}");

        log.apply(Op::RemoveNode(holder)).unwrap();
        let other = log.state.volume_nodes["data"];
        assert_ne!(other, holder, "placed afresh on the node left");
        log.apply(Op::RemoveService(db.name.clone())).unwrap();
        log.apply(Op::RemoveVolume("data".into())).unwrap();
        assert!(log.state.volume_nodes.is_empty());
    }

    #[test]
    fn removing_a_node_revokes_its_certificate_and_moves_its_replicas() {
        let mut log = Log::new();
        log.apply(Op::RegisterNode(agent(1, "edge-1", "a")))
            .unwrap();
        log.apply(Op::RegisterNode(agent(2, "edge-2", "b")))
            .unwrap();
        log.apply(Op::PutService(spec("web", 2, "sleep 100")))
            .unwrap();
        log.apply(Op::RemoveNode(NodeId(1))).unwrap();
        assert!(log.state.revoked_serials.contains("serial1"));
        assert!(log.state.replicas.values().all(|r| r.node == NodeId(2)));
        assert_eq!(log.state.replicas.len(), 2);
        assert_eq!(
            log.apply(Op::RemoveNode(NodeId(1))).unwrap_err().code,
            RejectionCode::Conflict
        );
    }

    #[test]
    fn same_log_gives_the_same_state() {
        let ops = || {
            vec![
                Op::RegisterNode(agent(1, "edge-1", "a")),
                Op::RegisterNode(agent(2, "edge-2", "b")),
                Op::PutService(spec("web", 3, "sleep 100")),
                Op::NodeUnreachable { node: NodeId(1) },
                Op::Tick,
                Op::ScaleService {
                    name: web(),
                    replicas: 1,
                },
            ]
        };
        let mut a = Log::new();
        let mut b = Log::new();
        for op in ops() {
            let _ = a.apply(op);
        }
        for op in ops() {
            let _ = b.apply(op);
        }
        assert_eq!(a.state, b.state);
    }

    #[test]
    #[should_panic(expected = "revision went backwards")]
    fn applying_an_older_revision_is_corruption() {
        let mut state = ClusterState::default();
        state.apply(
            Revision(5),
            &Command {
                at_ms: 0,
                op: Op::Tick,
            },
        );
        state.apply(
            Revision(4),
            &Command {
                at_ms: 0,
                op: Op::Tick,
            },
        );
    }
}
