//! The control node's place in the gossip mesh, started once it holds the cluster key.

use tracing::warn;
use warren_api::NodeRole;
use warren_mesh::{Mesh, MeshConfig, MeshMetrics};
use warren_transport::GossipSigner;

use super::ControlNode;

impl ControlNode {
    /// Joins the gossip mesh, if this node has a gossip address and the cluster key. A mesh
    /// that cannot start (the port is taken, say) is logged and the node runs on without one,
    /// as it does without a metrics listener: gossip is soft state, the control plane does not
    /// depend on it.
    pub(super) async fn start_mesh(&mut self) {
        let Some(listen_addr) = self.settings.gossip_listen else {
            return;
        };
        let Some(keys) = self.control.cluster_keys() else {
            warn!("no cluster key yet: running without the gossip mesh");
            return;
        };
        // The generation in force if held yet, else the newest held: the key follower rotates
        // the mesh once the one in force arrives.
        let in_force = self.control.read_stale().await.key_generation();
        let Some(keyring) = crate::gossip::keyring(&keys, in_force)
            .or_else(|| crate::gossip::keyring(&keys, keys.newest()))
        else {
            warn!("no gossip key: running without the gossip mesh");
            return;
        };
        let seeds = crate::gossip::seeds(&*self.control.read_stale().await, self.settings.node_id);
        let config = MeshConfig {
            node_id: self.settings.node_id,
            name: self.settings.name.clone(),
            role: NodeRole::Control,
            site: self.settings.site.clone(),
            cluster_id: crate::gossip::cluster_id(&self.control.fingerprint()),
            listen_addr,
            // A node.json from before the mesh landed records no advertised address.
            advertise_addr: self.settings.advertise_gossip.or_else(|| {
                crate::gossip::advertise_addr(listen_addr, None, &self.settings.advertise_quic)
            }),
            seeds,
            keyring,
            identity: crate::gossip::identity(
                GossipSigner::new(self.endpoint.credentials().clone()),
                self.member_certs.clone(),
            ),
            timers: self.mesh_timers.clone(),
            fault: None,
        };
        let metrics = MeshMetrics::register(self.control_metrics.registry()).unwrap_or_else(|e| {
            warn!(error = %e, "mesh metrics not registered");
            MeshMetrics::unregistered()
        });
        match Mesh::start(config, metrics).await {
            Ok(mesh) => {
                // Hints for peers (the registry stays the authority).
                for (purpose, addr) in [
                    ("quic", &self.settings.advertise_quic),
                    ("api", &self.settings.advertise_api),
                ] {
                    if let Err(e) = mesh.set_endpoint(purpose, addr).await {
                        warn!(error = %e, purpose, "cannot publish an endpoint by gossip");
                    }
                }
                self.control.set_gossip(mesh.watch(), mesh.key_rotator());
                self.mesh = Some(mesh);
            }
            Err(e) => {
                warn!(gossip = %listen_addr, error = %e, "gossip mesh not started: running without it");
            }
        }
    }
}
