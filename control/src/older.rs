//! The layouts of the replicated state and the log that older builds wrote, and their
//! upgrades to the current types: what keeps a data dir readable across an upgrade.
//!
//! Postcard is positional, so each older layout is a type of its own with the fields in their
//! old order. Snapshots carry their format number ([`crate::store`]'s `SNAPSHOT_FORMAT`);
//! log entries carry none, so the store records from which index on each spec format was
//! written (`LogFormats` there) and decodes older entries as [`EntryV1`].
//!
//! | snapshot format | state | specs |
//! |---|---|---|
//! | 1 | [`ClusterStateV1`]: before unfinished joins were recorded | spec format 1 |
//! | 2 | [`ClusterStateV2`]: before admin certificates were recorded | spec format 1 |
//! | 3 | [`ClusterStateV3`]: before `user`, `group` and `cap_add` | spec format 1 |
//! | 4 | [`ClusterStateV4`]: before the WireGuard overlay (`overlay`, `mesh`) | spec format 2 |
//! | 5 | [`ClusterStateV5`]: before volumes were pinned to a node (`volume_nodes`) | spec format 2 |
//! | 6 | [`ClusterStateV6`]: before rollouts were health-gated ([`RolloutV1`]) and token creators were recorded | spec format 2 |
//! | 7 | [`ClusterStateV7`]: before services declared metrics endpoints | spec format 3 |
//! | 8 | [`ClusterState`] | spec format 4 |

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::{Entry, EntryPayload};
use serde::Deserialize;
use serde::Serialize;
use warren_api::older::{ServiceSpecV1, ServiceSpecV2, ServiceSpecV3};
use warren_api::{
    MeshEntry, Node, NodeId, OverlayRange, Replica, ReplicaId, Revision, ServiceName, ServiceSpec,
    Volume,
};
use warren_transport::TokenBook;
use warren_transport::token::TokenId;

use crate::command::{Command, Outcome};
use crate::state::{
    AdminCert, ClusterInfo, ClusterState, PendingJoin, Rollout, RolloutPhase, SecretRecord,
    ServiceRecord,
};
use crate::types::{RaftMember, TypeConfig};

openraft::declare_raft_types!(
    /// The Raft types of spec format 1: entries whose specs are [`ServiceSpecV1`]. Only for
    /// decoding what an older build wrote.
    pub TypeConfigV1:
        D = Command<ServiceSpecV1>,
        R = Outcome,
        NodeId = u64,
        Node = RaftMember,
        Entry = openraft::Entry<TypeConfigV1>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry as spec format 1 wrote it.
pub type EntryV1 = Entry<TypeConfigV1>;

openraft::declare_raft_types!(
    /// The Raft types of spec format 2: entries whose specs are [`ServiceSpecV2`]. Only for
    /// decoding what an older build wrote.
    pub TypeConfigV2:
        D = Command<ServiceSpecV2>,
        R = Outcome,
        NodeId = u64,
        Node = RaftMember,
        Entry = openraft::Entry<TypeConfigV2>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry as spec format 2 wrote it.
pub type EntryV2 = Entry<TypeConfigV2>;

openraft::declare_raft_types!(
    /// The Raft types of spec format 3: entries whose specs are [`ServiceSpecV3`]. Only for
    /// decoding what an older build wrote.
    pub TypeConfigV3:
        D = Command<ServiceSpecV3>,
        R = Outcome,
        NodeId = u64,
        Node = RaftMember,
        Entry = openraft::Entry<TypeConfigV3>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry as spec format 3 wrote it.
pub type EntryV3 = Entry<TypeConfigV3>;

/// The entry in the current layout (see [`Command::upgrade`]).
pub fn upgrade_entry<C, S>(entry: Entry<C>) -> Entry<TypeConfig>
where
    C: openraft::RaftTypeConfig<D = Command<S>, NodeId = u64, Node = RaftMember>,
    S: Into<ServiceSpec>,
{
    let payload = match entry.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Normal(command) => EntryPayload::Normal(command.upgrade()),
        EntryPayload::Membership(membership) => EntryPayload::Membership(membership),
    };
    Entry {
        log_id: entry.log_id,
        payload,
    }
}

/// [`Rollout`] as snapshot formats 1 to 6 wrote it: when the last batch went, nothing
/// watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutV1 {
    /// The version being rolled out.
    pub version: u64,
    /// When the last batch was moved (unix ms).
    pub last_step_at_ms: u64,
}

impl From<RolloutV1> for Rollout {
    /// Its batches so far were not watched: it goes on from here, watching no batch, so the
    /// leader moves the next one at once (every later batch is watched).
    fn from(v1: RolloutV1) -> Self {
        Rollout::start(v1.version, RolloutPhase::Updating, v1.last_step_at_ms)
    }
}

/// A service record of snapshot formats 1 to 6, whose specs are `S`.
type ServiceRecordV1<S> = ServiceRecord<S, RolloutV1>;

fn upgrade_services<S: Into<ServiceSpec>>(
    services: BTreeMap<ServiceName, ServiceRecordV1<S>>,
) -> BTreeMap<ServiceName, ServiceRecord> {
    services
        .into_iter()
        .map(|(name, record)| {
            let record = ServiceRecord {
                current: record.current.map_spec(Into::into),
                previous: record.previous.map(Into::into),
                created_at_ms: record.created_at_ms,
                updated_at_ms: record.updated_at_ms,
                rollout: record.rollout.map(Rollout::from),
            };
            (name, record)
        })
        .collect()
}

/// [`ClusterState`] as snapshot format 1 wrote it: before unfinished joins were recorded.
#[derive(Deserialize)]
pub(crate) struct ClusterStateV1 {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    revoked_serials: BTreeSet<String>,
    services: BTreeMap<ServiceName, ServiceRecordV1<ServiceSpecV1>>,
    replicas: BTreeMap<ReplicaId, Replica>,
    unschedulable: BTreeMap<ServiceName, u32>,
    secrets: BTreeMap<String, SecretRecord>,
    volumes: BTreeMap<String, Volume>,
    tokens: TokenBook,
    revision: Revision,
}

impl From<ClusterStateV1> for ClusterState {
    /// By way of format 2 (see there).
    fn from(v1: ClusterStateV1) -> Self {
        ClusterStateV2::from(v1).into()
    }
}

impl From<ClusterStateV1> for ClusterStateV2 {
    /// No join was unfinished: format 1 did not record them (a join then either finished or
    /// left a node entry behind, which `node rm` removes).
    fn from(v1: ClusterStateV1) -> Self {
        ClusterStateV2 {
            cluster: v1.cluster,
            nodes: v1.nodes,
            revoked_serials: v1.revoked_serials,
            services: v1.services,
            replicas: v1.replicas,
            unschedulable: v1.unschedulable,
            secrets: v1.secrets,
            volumes: v1.volumes,
            tokens: v1.tokens,
            pending_joins: BTreeMap::new(),
            revision: v1.revision,
        }
    }
}

/// [`ClusterState`] as snapshot format 2 wrote it: before admin certificates were recorded.
#[derive(Deserialize)]
pub(crate) struct ClusterStateV2 {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    revoked_serials: BTreeSet<String>,
    services: BTreeMap<ServiceName, ServiceRecordV1<ServiceSpecV1>>,
    replicas: BTreeMap<ReplicaId, Replica>,
    unschedulable: BTreeMap<ServiceName, u32>,
    secrets: BTreeMap<String, SecretRecord>,
    volumes: BTreeMap<String, Volume>,
    tokens: TokenBook,
    pending_joins: BTreeMap<NodeId, PendingJoin>,
    revision: Revision,
}

impl From<ClusterStateV2> for ClusterState {
    /// By way of format 3 (see there).
    fn from(v2: ClusterStateV2) -> Self {
        ClusterStateV3::from(v2).into()
    }
}

impl From<ClusterStateV2> for ClusterStateV3 {
    /// No admin certificate recorded: format 2 did not record them (the first admin's stays
    /// valid, unlisted).
    fn from(v2: ClusterStateV2) -> Self {
        ClusterStateV3 {
            cluster: v2.cluster,
            nodes: v2.nodes,
            revoked_serials: v2.revoked_serials,
            services: v2.services,
            replicas: v2.replicas,
            unschedulable: v2.unschedulable,
            secrets: v2.secrets,
            volumes: v2.volumes,
            tokens: v2.tokens,
            pending_joins: v2.pending_joins,
            admins: BTreeMap::new(),
            revision: v2.revision,
        }
    }
}

/// [`ClusterState`] as snapshot format 3 wrote it: its specs in spec format 1, before `user`,
/// `group` and `cap_add`; before the cluster key rotated and certificates were renewed.
#[derive(Deserialize)]
pub(crate) struct ClusterStateV3 {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    revoked_serials: BTreeSet<String>,
    services: BTreeMap<ServiceName, ServiceRecordV1<ServiceSpecV1>>,
    replicas: BTreeMap<ReplicaId, Replica>,
    unschedulable: BTreeMap<ServiceName, u32>,
    secrets: BTreeMap<String, SecretRecord>,
    volumes: BTreeMap<String, Volume>,
    tokens: TokenBook,
    pending_joins: BTreeMap<NodeId, PendingJoin>,
    admins: BTreeMap<String, AdminCert>,
    revision: Revision,
}

impl From<ClusterStateV3> for ClusterState {
    /// Every spec upgraded: it runs as root with every capability, as it did, and keeps its
    /// workload hash (so the replicas' recorded hashes still match). The first cluster key
    /// sealed everything (format 3 had no other), and no certificate had been renewed.
    fn from(v3: ClusterStateV3) -> Self {
        ClusterState {
            cluster: v3.cluster,
            nodes: v3.nodes,
            revoked_serials: v3.revoked_serials,
            services: upgrade_services(v3.services),
            replicas: v3.replicas,
            unschedulable: v3.unschedulable,
            secrets: v3.secrets,
            volumes: v3.volumes,
            tokens: v3.tokens,
            pending_joins: v3.pending_joins,
            admins: v3.admins,
            key_gen: 1,
            previous_cert_serials: BTreeMap::new(),
            overlay: OverlayRange::default(),
            mesh: BTreeMap::new(),
            volume_nodes: BTreeMap::new(),
            token_creators: BTreeMap::new(),
            revision: v3.revision,
            control_addrs: Vec::new(),
            control_members: BTreeSet::new(),
            certs_epoch: crate::state::Epoch::default(),
        }
    }
}

/// [`ClusterState`] as snapshot format 4 wrote it: before the WireGuard overlay.
#[derive(Deserialize)]
pub(crate) struct ClusterStateV4 {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    revoked_serials: BTreeSet<String>,
    services: BTreeMap<ServiceName, ServiceRecordV1<ServiceSpecV2>>,
    replicas: BTreeMap<ReplicaId, Replica>,
    unschedulable: BTreeMap<ServiceName, u32>,
    secrets: BTreeMap<String, SecretRecord>,
    volumes: BTreeMap<String, Volume>,
    tokens: TokenBook,
    pending_joins: BTreeMap<NodeId, PendingJoin>,
    admins: BTreeMap<String, AdminCert>,
    key_gen: u32,
    previous_cert_serials: BTreeMap<NodeId, String>,
    revision: Revision,
}

impl From<ClusterStateV4> for ClusterState {
    /// The default overlay range, and no node in the mesh yet: each node gets its slot when it
    /// first declares a WireGuard key.
    fn from(v4: ClusterStateV4) -> Self {
        ClusterState {
            cluster: v4.cluster,
            nodes: v4.nodes,
            revoked_serials: v4.revoked_serials,
            services: upgrade_services(v4.services),
            replicas: v4.replicas,
            unschedulable: v4.unschedulable,
            secrets: v4.secrets,
            volumes: v4.volumes,
            tokens: v4.tokens,
            pending_joins: v4.pending_joins,
            admins: v4.admins,
            key_gen: v4.key_gen,
            previous_cert_serials: v4.previous_cert_serials,
            overlay: OverlayRange::default(),
            mesh: BTreeMap::new(),
            volume_nodes: BTreeMap::new(),
            token_creators: BTreeMap::new(),
            revision: v4.revision,
            control_addrs: Vec::new(),
            control_members: BTreeSet::new(),
            certs_epoch: crate::state::Epoch::default(),
        }
    }
}

/// [`ClusterState`] as snapshot format 5 wrote it: before volumes were pinned to a node.
#[derive(Deserialize)]
pub(crate) struct ClusterStateV5 {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    revoked_serials: BTreeSet<String>,
    services: BTreeMap<ServiceName, ServiceRecordV1<ServiceSpecV2>>,
    replicas: BTreeMap<ReplicaId, Replica>,
    unschedulable: BTreeMap<ServiceName, u32>,
    secrets: BTreeMap<String, SecretRecord>,
    volumes: BTreeMap<String, Volume>,
    tokens: TokenBook,
    pending_joins: BTreeMap<NodeId, PendingJoin>,
    admins: BTreeMap<String, AdminCert>,
    key_gen: u32,
    previous_cert_serials: BTreeMap<NodeId, String>,
    overlay: OverlayRange,
    mesh: BTreeMap<NodeId, MeshEntry>,
    revision: Revision,
}

impl From<ClusterStateV5> for ClusterState {
    /// No volume is held by a node yet: the next placement of a replica that mounts one
    /// records the node it is on (a replica already placed stays where it is, and pins the
    /// volume there).
    fn from(v5: ClusterStateV5) -> Self {
        ClusterState {
            cluster: v5.cluster,
            nodes: v5.nodes,
            revoked_serials: v5.revoked_serials,
            services: upgrade_services(v5.services),
            replicas: v5.replicas,
            unschedulable: v5.unschedulable,
            secrets: v5.secrets,
            volumes: v5.volumes,
            tokens: v5.tokens,
            pending_joins: v5.pending_joins,
            admins: v5.admins,
            key_gen: v5.key_gen,
            previous_cert_serials: v5.previous_cert_serials,
            overlay: v5.overlay,
            mesh: v5.mesh,
            volume_nodes: BTreeMap::new(),
            token_creators: BTreeMap::new(),
            revision: v5.revision,
            control_addrs: Vec::new(),
            control_members: BTreeSet::new(),
            certs_epoch: crate::state::Epoch::default(),
        }
    }
}

/// [`ClusterState`] as snapshot format 6 wrote it: its specs in spec format 2, its rollouts
/// not watched ([`RolloutV1`]).
#[derive(Deserialize)]
pub(crate) struct ClusterStateV6 {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    revoked_serials: BTreeSet<String>,
    services: BTreeMap<ServiceName, ServiceRecordV1<ServiceSpecV2>>,
    replicas: BTreeMap<ReplicaId, Replica>,
    unschedulable: BTreeMap<ServiceName, u32>,
    secrets: BTreeMap<String, SecretRecord>,
    volumes: BTreeMap<String, Volume>,
    tokens: TokenBook,
    pending_joins: BTreeMap<NodeId, PendingJoin>,
    admins: BTreeMap<String, AdminCert>,
    key_gen: u32,
    previous_cert_serials: BTreeMap<NodeId, String>,
    overlay: OverlayRange,
    mesh: BTreeMap<NodeId, MeshEntry>,
    volume_nodes: BTreeMap<String, NodeId>,
    revision: Revision,
}

impl From<ClusterStateV6> for ClusterState {
    /// Specs and rollouts upgraded (see [`RolloutV1`]); everything else as it was.
    fn from(v6: ClusterStateV6) -> Self {
        ClusterState {
            cluster: v6.cluster,
            nodes: v6.nodes,
            revoked_serials: v6.revoked_serials,
            services: upgrade_services(v6.services),
            replicas: v6.replicas,
            unschedulable: v6.unschedulable,
            secrets: v6.secrets,
            volumes: v6.volumes,
            tokens: v6.tokens,
            pending_joins: v6.pending_joins,
            admins: v6.admins,
            key_gen: v6.key_gen,
            previous_cert_serials: v6.previous_cert_serials,
            overlay: v6.overlay,
            mesh: v6.mesh,
            volume_nodes: v6.volume_nodes,
            token_creators: BTreeMap::new(),
            revision: v6.revision,
            control_addrs: Vec::new(),
            control_members: BTreeSet::new(),
            certs_epoch: crate::state::Epoch::default(),
        }
    }
}

/// [`ClusterState`] as snapshot format 7 wrote it: its specs in spec format 3.
#[derive(Deserialize)]
pub(crate) struct ClusterStateV7 {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    revoked_serials: BTreeSet<String>,
    services: BTreeMap<ServiceName, ServiceRecord<ServiceSpecV3>>,
    replicas: BTreeMap<ReplicaId, Replica>,
    unschedulable: BTreeMap<ServiceName, u32>,
    secrets: BTreeMap<String, SecretRecord>,
    volumes: BTreeMap<String, Volume>,
    tokens: TokenBook,
    pending_joins: BTreeMap<NodeId, PendingJoin>,
    admins: BTreeMap<String, AdminCert>,
    key_gen: u32,
    previous_cert_serials: BTreeMap<NodeId, String>,
    overlay: OverlayRange,
    mesh: BTreeMap<NodeId, MeshEntry>,
    volume_nodes: BTreeMap<String, NodeId>,
    token_creators: BTreeMap<TokenId, String>,
    revision: Revision,
}

impl From<ClusterStateV7> for ClusterState {
    /// Specs upgraded (no metrics endpoint); everything else as it was.
    fn from(v7: ClusterStateV7) -> Self {
        let services = v7
            .services
            .into_iter()
            .map(|(name, record)| {
                let record = ServiceRecord {
                    current: record.current.map_spec(Into::into),
                    previous: record.previous.map(Into::into),
                    created_at_ms: record.created_at_ms,
                    updated_at_ms: record.updated_at_ms,
                    rollout: record.rollout,
                };
                (name, record)
            })
            .collect();
        ClusterState {
            cluster: v7.cluster,
            nodes: v7.nodes,
            revoked_serials: v7.revoked_serials,
            services,
            replicas: v7.replicas,
            unschedulable: v7.unschedulable,
            secrets: v7.secrets,
            volumes: v7.volumes,
            tokens: v7.tokens,
            pending_joins: v7.pending_joins,
            admins: v7.admins,
            key_gen: v7.key_gen,
            previous_cert_serials: v7.previous_cert_serials,
            overlay: v7.overlay,
            mesh: v7.mesh,
            volume_nodes: v7.volume_nodes,
            token_creators: v7.token_creators,
            revision: v7.revision,
            control_addrs: Vec::new(),
            control_members: BTreeSet::new(),
            certs_epoch: crate::state::Epoch::default(),
        }
    }
}
