//! [`NodeError`]: why a control node could not start or stop cleanly.

use std::path::{Path, PathBuf};

use crate::rpc::ProposeError;
use crate::store;

/// Why a control node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Inconsistent configuration.
    #[error("invalid control config: {0}")]
    Config(String),
    /// The gossip mesh's timers are inconsistent.
    #[error("invalid control config: {0}")]
    MeshConfig(#[from] warren_mesh::ConfigError),
    /// The QUIC transport's settings are inconsistent.
    #[error("invalid control config: {0}")]
    TransportConfig(#[from] warren_transport::config::ConfigError),
    /// openraft refused the settings made from the config.
    #[error("invalid control config: {0}")]
    RaftConfig(#[source] Box<openraft::ConfigError>),
    /// The node's name or site is not a DNS label.
    #[error("invalid control config: {0}")]
    Name(#[from] warren_api::ValidationError),
    /// The data dir holds (or lacks) a node.
    #[error("{0}")]
    DataDir(String),
    /// `node.json` does not parse.
    #[error("{}: {source}", path.display())]
    Settings {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// `cluster.key` does not parse.
    #[error("{}: {source}", path.display())]
    ClusterKeyFile {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: crate::keys::KeysError,
    },
    /// The cluster keys the leader handed a joining control node do not parse.
    #[error("cluster keys from the leader: {0}")]
    LeaderKeys(#[source] crate::keys::KeysError),
    /// The cluster CA certificate in the credentials cannot check gossip members'
    /// certificates.
    #[error("cluster CA certificate: {0}")]
    CaCertificate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The API's TLS listener.
    #[error(transparent)]
    ApiListener(#[from] warren_transport::https::HttpsError),
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA or credentials.
    #[error(transparent)]
    Ca(#[from] warren_transport::ca::CaError),
    /// The Raft store.
    #[error(transparent)]
    Store(#[from] store::OpenError),
    /// The QUIC endpoint.
    #[error(transparent)]
    Bind(#[from] warren_transport::endpoint::BindError),
    /// openraft could not start.
    #[error("raft: {0}")]
    RaftStart(#[source] Box<openraft::error::Fatal<u64>>),
    /// The new cluster's only member was not elected in time.
    #[error("raft: {0}")]
    RaftWait(#[source] Box<openraft::metrics::WaitError>),
    /// Joining the cluster failed.
    #[error(transparent)]
    Join(#[from] warren_transport::join::JoinError),
    /// A write during start-up failed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A joining control node did not become a voter.
    #[error("{0}")]
    NotMember(String),
    /// The join was cancelled before the node became a voter.
    #[error("the join was cancelled before this node became a member")]
    Cancelled,
}

pub(super) fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |source| NodeError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
