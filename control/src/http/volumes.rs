//! `/volumes`: named volumes, where each one's data lives and who mounts it.

use warren_api::rest::{VolumeInfo, VolumeUser};
use warren_api::{NodeId, ServiceSpec, Volume};

use super::respond::{ApiResult, ok, written};
use super::{Api, ApiError};
use crate::command::Op;
use crate::scheduler::Pin;
use crate::state::ClusterState;

impl Api {
    pub(super) async fn list_volumes(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        ok(&state.volumes.values().cloned().collect::<Vec<_>>())
    }

    pub(super) async fn volume_usage(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        ok(&state
            .volumes
            .values()
            .map(|volume| volume_info(&state, volume))
            .collect::<Vec<_>>())
    }

    pub(super) async fn get_volume(&self, name: &str, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        let volume = state
            .volumes
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("volume {name} not found")))?;
        ok(&volume_info(&state, volume))
    }

    pub(super) async fn put_volume(&self, name: &str, volume: Volume) -> ApiResult {
        if volume.name != name {
            return Err(ApiError::Invalid(format!(
                "name: body says {}, path says {name}",
                volume.name
            )));
        }
        written(self.control.propose(Op::PutVolume(volume)).await?)
    }

    /// Refused (409, by the state machine) while a service mounts the volume.
    pub(super) async fn remove_volume(&self, name: &str) -> ApiResult {
        written(
            self.control
                .propose(Op::RemoveVolume(name.to_owned()))
                .await?,
        )
    }
}

fn node_name(state: &ClusterState, node: NodeId) -> String {
    state
        .nodes
        .get(&node)
        .map_or_else(|| node.to_string(), |n| n.name.clone())
}

/// `volume`, the node that holds it and the services and placed replicas that mount it.
fn volume_info(state: &ClusterState, volume: &Volume) -> VolumeInfo {
    let node = state.volume_nodes.get(&volume.name).copied();
    let mounts = |spec: &ServiceSpec| {
        spec.volumes
            .iter()
            .find(|m| m.volume == volume.name)
            .map(|m| m.read_only)
    };
    let services = state
        .services
        .values()
        .filter(|record| mounts(&record.current.spec).is_some())
        .map(|record| record.current.spec.name.to_string())
        .collect();
    let replicas = state
        .replicas
        .values()
        .filter_map(|replica| {
            let record = state.services.get(&replica.id.service)?;
            let read_only = mounts(&record.current.spec)?;
            Some(VolumeUser {
                replica: replica.id.to_string(),
                node_name: node_name(state, replica.node),
                read_only,
            })
        })
        .collect();
    VolumeInfo {
        volume: volume.clone(),
        node,
        node_name: node.map(|id| node_name(state, id)),
        services,
        replicas,
    }
}

/// Why `spec`'s replicas may go to one node only, or to none, in words; `None` when its
/// volumes do not pin it.
pub(super) fn pin_text(state: &ClusterState, spec: &ServiceSpec) -> Option<String> {
    match Pin::of(spec, &state.volume_nodes) {
        Pin::Free => None,
        Pin::Node { node, volume } => Some(format!(
            "pinned to node {}, which holds volume {volume}",
            node_name(state, node)
        )),
        Pin::Split { first, second } => Some(format!(
            "volume {} is held by node {} and volume {} by node {}: no node can take its replicas",
            first.0,
            node_name(state, first.1),
            second.0,
            node_name(state, second.1)
        )),
    }
}

/// The volume that pins a replica of `spec` to `node`, when one does.
pub(super) fn pinned_by(state: &ClusterState, spec: &ServiceSpec, on: NodeId) -> Option<String> {
    match Pin::of(spec, &state.volume_nodes) {
        Pin::Node { node, volume } if node == on => Some(volume),
        _ => None,
    }
}
