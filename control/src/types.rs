//! openraft type configuration: what a log entry carries and what applying it returns.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome};

/// A Raft member as openraft stores it in the membership config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMember {
    /// The member's QUIC address (Raft RPC, agents, joins).
    pub quic_addr: String,
    /// The member's HTTP API address (for forwarding writes and for clients).
    pub api_addr: String,
    /// The node name, for humans.
    pub name: String,
}

impl std::fmt::Display for RaftMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.quic_addr)
    }
}

openraft::declare_raft_types!(
    /// Warren's Raft types.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = RaftMember,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// openraft's Raft handle with our types.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id with our node id type.
pub type LogId = openraft::LogId<u64>;
/// Storage errors with our node id type.
pub type StorageError = openraft::StorageError<u64>;
