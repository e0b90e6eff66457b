//! Secret values in the control plane: sealed under a cluster key generation at rest in the
//! replicated state (the blob's `key_id`), and re-sealed under a node's own key
//! ([`node_secret_key`], derived from generation 1) when they go into that node's view.
//!
//! Must never: log a value, or let one leave this module in the clear.

use std::collections::{BTreeMap, BTreeSet};

use warren_api::{NodeId, SealedBlob, ServiceSpec};
use warren_transport::seal::{
    SealError, gossip_key, gossip_key_secret_name, node_secret_key, node_secret_purpose,
    open_parts, seal_deterministic, seal_parts,
};

use crate::keys::ClusterKeys;
use crate::state::ClusterState;

/// The AES-GCM purpose string under which secret values are sealed in the replicated state.
pub const SECRET_PURPOSE: &str = "warren secret v1";

/// `key_id` of blobs sealed with a node key. Node keys derive from cluster key generation 1
/// and never change (an agent's `secret.key` is the one its join gave it).
pub const NODE_KEY_ID: u32 = 1;

/// Gossip key `generation` (the mesh seals every datagram with it): derived from cluster key
/// `generation`, with the generation as its id, so rotating the cluster key rotates it.
pub fn gossip_key_of(keys: &ClusterKeys, generation: u32) -> Option<[u8; 32]> {
    keys.get(generation).map(|key| gossip_key(key, generation))
}

/// The gossip key of the state's generation, sealed for `node` like a secret, under its
/// reserved view name ([`gossip_key_secret_name`]). Deterministic, like the secrets. `None`
/// when this node does not hold that generation yet.
pub fn gossip_key_for_node(
    keys: &ClusterKeys,
    generation: u32,
    node: NodeId,
) -> Option<(String, SealedBlob)> {
    let name = gossip_key_secret_name(generation);
    let key = gossip_key_of(keys, generation)?;
    let (nonce, ciphertext) = seal_deterministic(
        &node_secret_key(keys.root(), node),
        &node_secret_purpose(&name),
        &key,
    );
    Some((
        name,
        SealedBlob {
            key_id: NODE_KEY_ID,
            nonce,
            ciphertext,
        },
    ))
}

/// Opens a secret value sealed at rest with the generation its blob names.
///
/// # Errors
/// [`SealError`] when this node lacks that generation or the blob does not open.
pub fn open_at_rest(keys: &ClusterKeys, at_rest: &SealedBlob) -> Result<Vec<u8>, SealError> {
    let key = keys.get(at_rest.key_id).ok_or(SealError::Authentication)?;
    open_parts(key, SECRET_PURPOSE, &at_rest.nonce, &at_rest.ciphertext)
}

/// Seals a secret value at rest with generation `generation` (which this node must hold).
pub fn seal_at_rest(keys: &ClusterKeys, generation: u32, value: &[u8]) -> Option<SealedBlob> {
    let key = keys.get(generation)?;
    let (nonce, ciphertext) = seal_parts(key, SECRET_PURPOSE, value);
    Some(SealedBlob {
        key_id: generation,
        nonce,
        ciphertext,
    })
}

/// The secrets referenced by `specs`, each opened with the cluster key and sealed for `node`
/// with its derived key, by name.
///
/// Deterministic (see [`seal_deterministic`]): the same state gives the same blobs on every
/// control node and every call, so a rebuilt view differs from the last one only when a value
/// did. A referenced secret that is missing or does not open is left out (the agent then
/// refuses to start the replica, naming the secret); the second means a wrong cluster key or a
/// corrupt state and is logged as an error.
pub fn sealed_for_node<'a>(
    state: &ClusterState,
    specs: impl IntoIterator<Item = &'a ServiceSpec>,
    keys: &ClusterKeys,
    node: NodeId,
) -> BTreeMap<String, SealedBlob> {
    let names: BTreeSet<&str> = specs
        .into_iter()
        .flat_map(|spec| spec.secrets.iter().map(|s| s.name.as_str()))
        .collect();
    if names.is_empty() {
        return BTreeMap::new();
    }
    let node_key = node_secret_key(keys.root(), node);
    let mut sealed = BTreeMap::new();
    for name in names {
        let Some(record) = state.secrets.get(name) else {
            continue;
        };
        let value = match open_at_rest(keys, &record.sealed) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(secret = name, node_id = %node, error = %error, "cannot open a stored secret with the cluster key; not delivering it");
                continue;
            }
        };
        let (nonce, ciphertext) = seal_deterministic(&node_key, &node_secret_purpose(name), &value);
        sealed.insert(
            name.to_owned(),
            SealedBlob {
                key_id: NODE_KEY_ID,
                nonce,
                ciphertext,
            },
        );
    }
    sealed
}

#[cfg(test)]
mod tests;
