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
    /// The data dir holds (or lacks) a node.
    #[error("{0}")]
    DataDir(String),
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
    /// openraft refused to start or initialise.
    #[error("raft: {0}")]
    Raft(String),
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
