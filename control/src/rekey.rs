//! The entry that moves the cluster to a new key generation: everything the cluster key
//! protects in the replicated state (the CA key, the secret values) re-sealed with the new key.
//! Pure; the leader's [`crate::control::Control::rotate_cluster_key`] gives the key to the
//! control members first and proposes what this builds.

use warren_transport::ClusterCa;

use crate::command::Op;
use crate::keys::ClusterKeys;
use crate::secrets::{open_at_rest, seal_at_rest};
use crate::state::ClusterState;

/// The [`Op::RotateClusterKey`] to generation `generation` (which `keys` must hold, like the
/// state's current one).
///
/// # Errors
/// In words: the generation does not follow the state's, a key is missing, or the CA key or a
/// secret does not open (a corrupt state, or a key this node should hold and does not).
pub fn rotation(state: &ClusterState, keys: &ClusterKeys, generation: u32) -> Result<Op, String> {
    let current = state.key_generation();
    if generation != current + 1 {
        return Err(format!(
            "cluster key generation {generation} does not follow the current one ({current})"
        ));
    }
    let info = state
        .cluster
        .as_ref()
        .ok_or("the cluster is not initialised")?;
    let (Some(old), Some(new)) = (keys.get(current), keys.get(generation)) else {
        return Err(format!(
            "this node does not hold cluster key generations {current} and {generation}"
        ));
    };
    let ca = ClusterCa::from_sealed(&info.ca_cert_der, &info.ca_key_sealed, old)
        .map_err(|e| format!("cannot open the CA key with generation {current}: {e}"))?;
    let mut secrets = Vec::with_capacity(state.secrets.len());
    for (name, record) in &state.secrets {
        let value = open_at_rest(keys, &record.sealed).map_err(|e| {
            format!(
                "cannot open secret {name} (sealed with generation {}): {e}",
                record.sealed.key_id
            )
        })?;
        let sealed = seal_at_rest(keys, generation, &value)
            .expect("the new generation is held (checked above)");
        secrets.push((name.clone(), record.meta.version, sealed));
    }
    Ok(Op::RotateClusterKey {
        generation,
        ca_key_sealed: ca.sealed_key(new),
        secrets,
    })
}
