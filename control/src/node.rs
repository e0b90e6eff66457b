//! A control node's life: `init` (first node of a new cluster), `join` (with a control
//! token), `run` (restart from the data dir), and `shutdown`.
//!
//! - `config`: [`ControlConfig`], its checks, and the Raft, peer and election timers made
//!   from it.
//! - `data_dir`: what the data dir holds ([`NodeSettings`] in `node.json`, the cluster key)
//!   and how it is read and written.
//! - `new_node`: [`NewNode`], what `init` and `join` create a node with, and the addresses it
//!   settles before they are recorded.
//! - `init`: a new cluster, step by step; `joining`: a node joining one.
//! - `start`: `run`, and the start shared by all three: storage, Raft, API, background tasks.
//! - `mesh`: joining the gossip mesh once the node has the cluster key.
//! - `leader_duties`: what the leader does on a timer (rollout steps, on-disconnect ticks,
//!   agents' reachability).
//! - `error`: [`NodeError`].
//!
//! Incoming QUIC connections are served by [`crate::accept`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use warren_mesh::MeshTimers;
use warren_transport::{Endpoint, MemberCertificates, TransportMetrics};

use crate::control::Control;
use crate::metrics::ControlMetrics;

mod addresses;
mod config;
mod data_dir;
mod error;
mod init;
mod joining;
mod leader_duties;
mod mesh;
mod new_node;
mod overlay;
mod start;

pub use config::{ControlConfig, DEFAULT_MEMBER_UNREACHABLE_AFTER, DEFAULT_UNREACHABLE_AFTER};
pub use data_dir::{NodeSettings, SOCKET_FILE};
pub use error::NodeError;
pub use init::InitOutput;
pub use joining::{JOIN_MEMBER_TIMEOUT, JoinHooks, JoinProgress};
pub use new_node::NewNode;

// What `joining` shares with `init` and `start`.
use data_dir::{CLUSTER_KEY_FILE, SETTINGS_FILE, check_fresh, member_of, save_settings};
use error::io;
use new_node::{resolve_gossip, settings_for};
use start::{bind, bind_api};

/// A running control node.
#[derive(Debug)]
pub struct ControlNode {
    control: Arc<Control>,
    endpoint: Arc<Endpoint>,
    settings: NodeSettings,
    data_dir: PathBuf,
    cancel: CancellationToken,
    tasks: TaskTracker,
    metrics: TransportMetrics,
    control_metrics: ControlMetrics,
    api_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    mesh_timers: MeshTimers,
    /// Checks gossip members' certificates (CA, trust list, renewal grace).
    member_certs: MemberCertificates,
    /// The gossip meshes, once the node holds the cluster key.
    gossip: Option<mesh::Gossip>,
}

impl ControlNode {
    /// Waits until this node learns that it was removed from the cluster (`warren node rm`):
    /// another control node refused its certificate as revoked, or it applied its own
    /// removal. Returns why, in words. Never returns on a node that stays a member.
    pub async fn removed(&self) -> String {
        let mut removed = self.control.removed();
        let found = removed
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        match found {
            Ok(why) => why,
            // The sender lives as long as the node: wait for ever.
            Err(_) => std::future::pending().await,
        }
    }

    /// The QUIC endpoint's metrics (connections, frames, joins).
    pub fn transport_metrics(&self) -> &TransportMetrics {
        &self.metrics
    }

    /// The shared handle (for the API and tests).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// This node's settings.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The bound API address (TLS).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The bound gossip address, if the mesh runs.
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.gossip.as_ref().map(|gossip| gossip.mesh.local_addr())
    }

    /// The bound metrics address, if served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.control_metrics
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the node: gossip left, no new connections, Raft stopped, storage flushed, and the QUIC port
    /// released before this returns (so the node can be started again at once).
    pub async fn shutdown(mut self) {
        let addr = self.endpoint.local_addr();
        if let Some(gossip) = self.gossip.take() {
            gossip.shutdown().await;
        }
        self.cancel.cancel();
        let _ = std::fs::remove_file(self.data_dir.join(SOCKET_FILE));
        if let Err(e) = self.control.raft().shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        }
        self.endpoint.close();
        self.tasks.close();
        self.tasks.wait().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        drop(self);
        // quinn releases the socket when its driver task ends, shortly after the last handle
        // is dropped; wait for that rather than leave a restart racing it.
        for _ in 0..100 {
            if std::net::UdpSocket::bind(addr).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        warn!(addr = %addr, "QUIC port still in use after shutdown");
    }
}
