//! The data dir (all files written atomically):
//! - `node.json`: id, name, site, listen and advertised addresses (QUIC, API, metrics, gossip);
//! - `node.crt`, `node.key` (0600), `ca.crt`: this node's credentials;
//! - `cluster.key` (0600): the key that seals the CA key and secret values in the replicated
//!   state — every control node holds it; agents never do;
//! - `raft/`: the sled database (log, vote, snapshot);
//! - `control.sock`: the local API's Unix socket, while the node runs.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use warren_api::NodeId;
use warren_transport::write_atomic;

use super::{NodeError, io};
use crate::keys::ClusterKeys;
use crate::types::RaftMember;

pub(super) const SETTINGS_FILE: &str = "node.json";
pub(super) const CLUSTER_KEY_FILE: &str = "cluster.key";

/// The Unix socket of the local API (no TLS; guarded by file permissions).
pub const SOCKET_FILE: &str = "control.sock";

/// What a control node is and where it listens; persisted as `node.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Assigned at init or join.
    pub node_id: NodeId,
    /// Node name (DNS label).
    pub name: String,
    /// Site (DNS label).
    pub site: String,
    /// QUIC listen address (Raft, agents, joins).
    pub quic_listen: SocketAddr,
    /// HTTP API listen address.
    pub api_listen: SocketAddr,
    /// Address other nodes dial for QUIC.
    pub advertise_quic: String,
    /// Address clients use for the API.
    pub advertise_api: String,
    /// Plain-HTTP metrics, `/health` and `/ready`; `None` = not served.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the gossip mesh listens (UDP); `None` = no mesh.
    #[serde(default)]
    pub gossip_listen: Option<SocketAddr>,
    /// The gossip address peers use, recorded in the node registry; `None` when there is no
    /// mesh (or no address could be worked out, see [`crate::gossip::advertise_addr`]).
    #[serde(default)]
    pub advertise_gossip: Option<SocketAddr>,
}

pub(super) fn check_fresh(dir: &Path) -> Result<(), NodeError> {
    if dir.join(SETTINGS_FILE).exists() {
        return Err(NodeError::DataDir(format!(
            "{} already holds a control node; start it with `warren control run --data-dir {}`",
            dir.display(),
            dir.display()
        )));
    }
    keep_private(dir)
}

/// Makes the data dir readable by its owner only (created 0700, tightened if wider): it holds
/// the cluster key, the node's key and the replicated state.
pub(super) fn keep_private(dir: &Path) -> Result<(), NodeError> {
    let tightened = warren_transport::private_dir(dir).map_err(io("create data dir", dir))?;
    if tightened {
        tracing::info!(path = %dir.display(), "data dir was readable by other local users; it is 0700 now");
    }
    Ok(())
}

pub(super) fn save_settings(dir: &Path, settings: &NodeSettings) -> Result<(), NodeError> {
    let path = dir.join(SETTINGS_FILE);
    let json = serde_json::to_vec_pretty(settings).expect("settings serialize to JSON");
    write_atomic(&path, &json, 0o644).map_err(io("write", &path))
}

pub(super) fn save_cluster_keys(dir: &Path, keys: &ClusterKeys) -> Result<(), NodeError> {
    let path = dir.join(CLUSTER_KEY_FILE);
    write_atomic(&path, keys.to_text().as_bytes(), 0o600).map_err(io("write", &path))
}

pub(super) fn load_cluster_keys(dir: &Path) -> Result<Option<ClusterKeys>, NodeError> {
    let path = dir.join(CLUSTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => ClusterKeys::from_text(&text)
            .map(Some)
            .map_err(|source| NodeError::ClusterKeyFile { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

pub(super) fn member_of(settings: &NodeSettings) -> RaftMember {
    RaftMember {
        quic_addr: settings.advertise_quic.clone(),
        api_addr: settings.advertise_api.clone(),
        name: settings.name.clone(),
    }
}

impl super::ControlNode {
    /// Moves the metrics listener of the node in `dir` to `listen` (`None`: no listener), kept
    /// in its `node.json` so that later runs listen there too. Returns where it listened
    /// before. Call it before [`ControlNode::run`](super::ControlNode::run), with the node
    /// stopped. The node registry keeps the metrics address recorded at init or join: changing
    /// it there needs a log entry of its own.
    ///
    /// # Errors
    /// [`NodeError`] when `dir` holds no node or `node.json` cannot be read or written.
    pub fn keep_metrics_listen(
        dir: &Path,
        listen: Option<SocketAddr>,
    ) -> Result<Option<SocketAddr>, NodeError> {
        let mut settings = load_settings(dir)?;
        let before = std::mem::replace(&mut settings.metrics_listen, listen);
        if before != listen {
            save_settings(dir, &settings)?;
        }
        Ok(before)
    }
}

/// The settings in `dir`'s `node.json`; a dir without one holds no node.
pub(super) fn load_settings(dir: &Path) -> Result<NodeSettings, NodeError> {
    let path = dir.join(SETTINGS_FILE);
    let text = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NodeError::DataDir(format!(
                "{} holds no control node (no {SETTINGS_FILE}); create one with `warren control init` or `warren control join`",
                dir.display()
            ))
        } else {
            io("read", &path)(e)
        }
    })?;
    serde_json::from_slice(&text).map_err(|source| NodeError::Settings { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::ControlNode;

    #[test]
    fn the_metrics_listener_moved_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = |text: &str| text.parse::<SocketAddr>().expect("valid address");
        let settings = NodeSettings {
            node_id: NodeId(1),
            name: "c1".into(),
            site: "central".into(),
            quic_listen: addr("127.0.0.1:7101"),
            api_listen: addr("127.0.0.1:7100"),
            advertise_quic: "127.0.0.1:7101".into(),
            advertise_api: "127.0.0.1:7100".into(),
            metrics_listen: None,
            gossip_listen: None,
            advertise_gossip: None,
        };
        save_settings(dir.path(), &settings).expect("saved");
        let moved = Some(addr("127.0.0.1:9100"));
        assert_eq!(
            ControlNode::keep_metrics_listen(dir.path(), moved).expect("kept"),
            None
        );
        let kept = load_settings(dir.path()).expect("loaded");
        assert_eq!(
            kept,
            NodeSettings {
                metrics_listen: moved,
                ..settings.clone()
            }
        );
        assert_eq!(
            ControlNode::keep_metrics_listen(dir.path(), None).expect("kept"),
            moved
        );
        assert_eq!(load_settings(dir.path()).expect("loaded"), settings);
        assert!(ControlNode::keep_metrics_listen(&dir.path().join("nothing"), None).is_err());
    }
}
