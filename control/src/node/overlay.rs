//! What a control node's WireGuard overlay is fed from: its own view, as an agent's would be,
//! following every applied revision, and the registry write that records its declaration.
//! The overlay itself (device, keys, peers) is the agent's (`warren-edge-agent`'s `overlay`),
//! run beside the node by the `warren` binary: control nodes join the mesh, so an operator at
//! the centre reaches every box's overlay address.

use std::sync::Arc;

use tokio::sync::watch;
use warren_api::NodeView;
use warren_api::wire::MeshDeclaration;

use super::ControlNode;
use crate::push::{node_view, record_declaration};

impl ControlNode {
    /// This node's view at every applied revision (`None` until it has the cluster keys).
    pub fn own_views(&self) -> watch::Receiver<Option<Arc<NodeView>>> {
        let (tx, rx) = watch::channel(None);
        let control = self.control.clone();
        let node = self.settings.node_id;
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let mut applied = control.watch_applied();
            loop {
                let view = {
                    let state = control.read_stale().await;
                    control
                        .cluster_keys()
                        .and_then(|keys| node_view(&state, node, &state.control_addrs, &keys))
                };
                if let Some(view) = view {
                    let changed = tx.borrow().as_deref() != Some(&view);
                    if changed {
                        tx.send_replace(Some(Arc::new(view)));
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = applied.changed() => if changed.is_err() { return },
                }
            }
        });
        rx
    }

    /// The gossip membership, for the overlay to find peers at the endpoints they gossip; a
    /// watch that never changes (and holds no member) when this node runs no mesh.
    pub fn gossip_members_watch(&self) -> watch::Receiver<Vec<warren_mesh::Member>> {
        self.control
            .gossip_watch()
            .unwrap_or_else(|| watch::channel(Vec::new()).1)
    }

    /// Records each declaration of this node's WireGuard identity that `declarations` carries,
    /// in a task of the node's, until the node stops.
    pub fn follow_mesh_declarations(
        &self,
        mut declarations: watch::Receiver<Option<MeshDeclaration>>,
    ) {
        let control = self.control.clone();
        let node = self.settings.node_id;
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            loop {
                let declaration = declarations.borrow_and_update().clone();
                if let Some(declaration) = declaration {
                    record_declaration(&control, node, &declaration).await;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = declarations.changed() => if changed.is_err() { return },
                }
            }
        });
    }
}
