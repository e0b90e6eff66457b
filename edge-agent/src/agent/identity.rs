//! `agent.json`: who this agent is, where control was, and where it listens — written by
//! [`join`](super::join), read by every later start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warren_api::NodeId;

use super::{AgentError, read_json};
use crate::listeners::ListenSettings;

/// The agent's identity file in its data dir.
pub const AGENT_FILE: &str = "agent.json";

/// What `agent.json` holds: who this agent is and where control was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    /// The node id control assigned.
    pub node_id: NodeId,
    /// Node name.
    pub name: String,
    /// Site.
    pub site: String,
    /// Labels given at join.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Control addresses to start from (the cached view's list takes over once known).
    pub control_addrs: Vec<String>,
    /// SHA-256 of the cluster CA, lowercase hex.
    pub cluster_fingerprint: String,
    /// The gossip address registered at join (`IP:PORT`), which peers dial.
    #[serde(default)]
    pub gossip: Option<String>,
    /// Where the agent listens, as `agent join` was told (port 0 resolved): `agent run` listens
    /// there unless told otherwise. `None` in an `agent.json` from before this was kept.
    #[serde(default)]
    pub listen: Option<ListenSettings>,
    /// Where replica directories go, as `agent join` was told (`--workloads-dir`): `agent run`
    /// uses it unless told otherwise. `None`: the default, beside the data dir
    /// ([`crate::runtime::default_workloads_dir`]).
    #[serde(default)]
    pub workloads_dir: Option<PathBuf>,
}

/// Reads `agent.json` from `data_dir`.
///
/// # Errors
/// [`AgentError::Io`] when missing, [`AgentError::Unparsable`] when it does not parse.
pub fn load_identity(data_dir: &Path) -> Result<AgentIdentity, AgentError> {
    read_json(data_dir.join(AGENT_FILE))
}
