//! Messages between control nodes on the Raft ALPN: Raft's own RPCs plus the few the control
//! plane adds (forwarding a proposal to the leader, read index, adding a member).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome};
use crate::types::{RaftMember, TypeConfig};

/// A request from one control node to another.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum ControlRpc {
    /// Raft log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<u64>),
    /// Raft snapshot transfer (chunked).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write that reached a follower, forwarded to the leader.
    Propose(Command),
    /// Asks the leader for a read index (for linearizable reads on followers).
    ReadIndex,
    /// Removes a control node from the Raft membership (forwarded to the leader).
    RemoveMember {
        /// The node to remove.
        node_id: u64,
    },
    /// A freshly joined control node asks to become a voting member.
    AddMember {
        /// The new node's id.
        node_id: u64,
        /// Its addresses.
        member: RaftMember,
    },
    /// What this control node knows of the agents streaming to it (soft state).
    AgentReports {
        /// Whether to include replicas and events, or only the links.
        full: bool,
    },
    /// The leader tells a control node it has just taken out of the membership, so that the
    /// node stops at once instead of calling elections no one answers.
    Removed,
    /// How the control members answer, as this node (the leader) sees them (soft state).
    MemberContacts,
    /// The leader hands a control member a new cluster key generation before it proposes the
    /// rotation to it; the member keeps it on disk before it answers.
    InstallClusterKey {
        /// The new generation.
        generation: u32,
        /// The key, hex (over mutual TLS between control certificates only).
        key_hex: String,
    },
    /// A control member that lacks the generation in force asks another for its keys.
    FetchClusterKeys,
    /// Rotates the cluster key (forwarded to the leader); `reason` is logged.
    RotateClusterKey {
        /// Why, for the log.
        reason: String,
    },
    /// Asks the member that holds `node`'s agent connection for that agent's logs (soft
    /// state; see [`crate::agent_logs`]). A member too old to know it drops the stream, and the
    /// caller reports the logs as unavailable.
    AgentLogs {
        /// The agent's node.
        node: warren_api::NodeId,
        /// What to ask it.
        request: warren_api::logs::AgentLogRequest,
    },
}

/// The answer to a [`ControlRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRpcReply {
    /// Answer to `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Answer to `Vote`.
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Answer to `InstallSnapshot`.
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// Answer to `Propose`.
    Proposed(Result<Outcome, ProposeError>),
    /// Answer to `ReadIndex`: the index a read must wait for.
    ReadIndex(Result<u64, ProposeError>),
    /// Answer to `RemoveMember`.
    MemberRemoved(Result<(), ProposeError>),
    /// Answer to `AddMember`: what every control node must hold.
    MemberAdded(Result<ClusterSecrets, ProposeError>),
    /// Answer to `AgentReports`: the reports, and the answering node's clock when it answered
    /// (the reports' times are on that clock).
    AgentReports {
        /// Unix ms on the answering node.
        as_of_ms: u64,
        /// Its book.
        reports: Vec<crate::status::AgentReport>,
    },
    /// Answer to `Removed`.
    RemovedNoted,
    /// Answer to `MemberContacts`: by member id.
    MemberContacts(Vec<(u64, warren_api::rest::MemberContact)>),
    /// Answer to `InstallClusterKey`: kept, or why not.
    ClusterKeyInstalled(Result<(), String>),
    /// Answer to `FetchClusterKeys`.
    ClusterKeys(Result<ClusterSecrets, String>),
    /// Answer to `RotateClusterKey`: the new generation.
    ClusterKeyRotated(Result<u32, ProposeError>),
    /// Answer to `AgentLogs`.
    AgentLogs(Result<warren_api::logs::AgentLogReply, crate::agent_logs::AgentLogsError>),
}

/// Secrets every control node holds: handed to a new control node once it is a member, over
/// mutual TLS on the Raft ALPN (only control certificates are admitted there).
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterSecrets {
    /// Every cluster key generation the sender holds, as `cluster.key` holds them
    /// ([`crate::keys::ClusterKeys::to_text`]).
    pub cluster_keys_text: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecrets(..)")
    }
}

/// Why a write or linearizable read could not be done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` says who is, if known.
    #[error("not the leader (leader: {})", leader.as_ref().map(|(id, m)| format!("{id:016x} {m}")).unwrap_or_else(|| "unknown".into()))]
    NotLeader {
        /// The leader's id and addresses, if known.
        leader: Option<(u64, RaftMember)>,
    },
    /// No leader could be reached or elected in time: the cluster has no quorum from here.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The Raft node has stopped.
    #[error("control node is shutting down")]
    ShuttingDown,
    /// The membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Another membership change holds the leader's membership lock (the text says which);
    /// asking again shortly succeeds once it is done.
    #[error("another membership change is in progress ({0}); try again when it is done")]
    MembershipBusy(String),
}

impl ProposeError {
    /// Whether retrying (after a leader change, or once the change in progress is done) may
    /// succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Membership(_))
    }
}
