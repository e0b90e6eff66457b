//! What a control node needs to take part in the mesh (crate `mesh`): the cluster id and keyring
//! every node of the cluster agrees on, its own gossip address, the seeds it starts from, and
//! the members as the API and the leader's liveness duty read them. Pure, except for the
//! mesh's start in [`crate::node`].
//!
//! Gossip is soft state and a hint (docs/design.md §2): nothing here authorises anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::keys::ClusterKeys;
use crate::secrets::gossip_key_of;
use crate::state::ClusterState;
use warren_api::rest::GossipInfo;
use warren_api::{NodeId, NodeState};
use warren_mesh::{GossipKey, KeyId, Keyring, Liveness, Member, MeshIdentity};
use warren_transport::{GossipSigner, MemberCertificates};

/// The mesh's cluster id: the CA fingerprint in lowercase hex (64 characters). Agents derive
/// the same from the CA certificate they hold, so both sides agree without a new field.
pub fn cluster_id(fingerprint: &[u8; 32]) -> String {
    data_encoding::HEXLOWER.encode(fingerprint)
}

/// The gossip key of cluster key generation `generation` (agents receive the same key, sealed
/// for them, in their view); `None` if this node does not hold that generation.
pub fn gossip_key_for(keys: &ClusterKeys, generation: u32) -> Option<GossipKey> {
    gossip_key_of(keys, generation).map(|bytes| GossipKey::from_bytes(KeyId(generation), bytes))
}

/// The mesh identity of a node: it signs its gossip state with its certificate's key, and
/// accepts a member's state only with that member's own certificate (`warren_mesh::identity`).
pub fn identity(signer: GossipSigner, members: MemberCertificates) -> MeshIdentity {
    let sign = signer.clone();
    MeshIdentity::new(
        move || signer.credential(),
        move |message| sign.sign(message),
        move |node, credential| members.public_key(node, credential),
    )
}

/// The keyring a control node starts its mesh with: the gossip key of `generation`.
pub fn keyring(keys: &ClusterKeys, generation: u32) -> Option<Keyring> {
    gossip_key_for(keys, generation).map(Keyring::new)
}

/// The gossip address to record in the registry: `advertise` if given; else the listen address
/// when its IP is specified; else the IP other nodes dial for QUIC (`advertise_quic`, if it is
/// an `IP:PORT`) with the listen port. `None` when none of these gives an IP.
pub fn advertise_addr(
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    advertise_quic: &str,
) -> Option<SocketAddr> {
    if advertise.is_some() {
        return advertise;
    }
    if !listen.ip().is_unspecified() {
        return Some(listen);
    }
    let quic: SocketAddr = advertise_quic.parse().ok()?;
    (!quic.ip().is_unspecified()).then(|| SocketAddr::new(quic.ip(), listen.port()))
}

/// Every registered node's gossip address but `except`'s (and removed nodes'), to start from.
pub fn seeds(state: &ClusterState, except: NodeId) -> Vec<SocketAddr> {
    state
        .nodes
        .values()
        .filter(|node| node.id != except && node.state != NodeState::Removed)
        .filter_map(|node| node.addresses.gossip.as_deref()?.parse().ok())
        .collect()
}

/// Liveness by node id, as this node's mesh sees its members.
pub fn liveness_by_node(members: &[Member]) -> BTreeMap<NodeId, Liveness> {
    members.iter().map(|m| (m.node_id, m.liveness)).collect()
}

/// What `warren node ls` shows of a member.
pub fn info(member: &Member) -> GossipInfo {
    GossipInfo {
        liveness: member.liveness.as_str().to_owned(),
        generation: member.generation,
        gossip_addr: member.gossip_addr.to_string(),
        wg_endpoint: member
            .endpoints
            .get(warren_mesh::member::WG_ENDPOINT)
            .cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_defaults() {
        let check = |listen: &str, advertise: Option<&str>, quic: &str, expected: Option<&str>| {
            let got = advertise_addr(
                listen.parse().unwrap(),
                advertise.map(|a| a.parse().unwrap()),
                quic,
            );
            assert_eq!(
                got,
                expected.map(|e| e.parse().unwrap()),
                "{listen} {advertise:?} {quic}"
            );
        };
        check(
            "0.0.0.0:7946",
            Some("192.0.2.1:8000"),
            "x:1",
            Some("192.0.2.1:8000"),
        );
        check(
            "10.0.0.1:7946",
            None,
            "192.0.2.1:7101",
            Some("10.0.0.1:7946"),
        );
        check(
            "0.0.0.0:7946",
            None,
            "192.0.2.1:7101",
            Some("192.0.2.1:7946"),
        );
        check("0.0.0.0:7946", None, "ops.example:7101", None);
        check("0.0.0.0:7946", None, "0.0.0.0:7101", None);
    }

    #[test]
    fn cluster_id_is_lowercase_hex() {
        assert_eq!(cluster_id(&[0xab; 32]), "ab".repeat(32));
    }
}
