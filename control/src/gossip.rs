//! What a control node needs to take part in the mesh (crate `mesh`): the cluster id and keyring
//! every node of the cluster agrees on, its own gossip address, the seeds it starts from, and
//! the members as the API and the leader's liveness duty read them. Pure, except for the
//! mesh's start in [`crate::node`].
//!
//! Gossip is soft state and a hint (docs/design.md §2): nothing here authorises anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::keys::ClusterKeys;
use crate::secrets::gossip_key_of;
use crate::state::ClusterState;
use warren_api::rest::GossipInfo;
use warren_api::{Node, NodeId, NodeRole, NodeState};
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

/// The gossip addresses of the registered (not removed) nodes but `except` that `keep`
/// chooses.
fn seeds_where(
    state: &ClusterState,
    except: NodeId,
    keep: impl Fn(&Node) -> bool,
) -> Vec<SocketAddr> {
    state
        .nodes
        .values()
        .filter(|node| node.id != except && node.state != NodeState::Removed && keep(node))
        .filter_map(|node| node.addresses.gossip.as_deref()?.parse().ok())
        .collect()
}

/// Where a control node starts its unnamed mesh from: the other control nodes. (Agents
/// gossip in their site's mesh, which every control node joins on the same port.)
pub fn control_seeds(state: &ClusterState, except: NodeId) -> Vec<SocketAddr> {
    seeds_where(state, except, |node| node.role == NodeRole::Control)
}

/// Where a control node starts its membership of `site`'s mesh from: that site's agents and
/// the other control nodes.
pub fn site_seeds(state: &ClusterState, site: &str, except: NodeId) -> Vec<SocketAddr> {
    seeds_where(state, except, |node| {
        node.role == NodeRole::Control || node.site == site
    })
}

/// The sites with a registered (not removed) agent that gossips: each has a mesh, and every
/// control node is in it.
pub fn agent_sites(state: &ClusterState) -> BTreeSet<String> {
    state
        .nodes
        .values()
        .filter(|node| {
            node.role == NodeRole::Agent
                && node.state != NodeState::Removed
                && node.addresses.gossip.is_some()
        })
        .map(|node| node.site.clone())
        .collect()
}

/// One member list from several meshes' (a control node's unnamed mesh and its site meshes),
/// sorted by node id: a node that is in several (the control nodes) counts as the most alive
/// any of them sees it.
pub fn union<'a>(lists: impl IntoIterator<Item = &'a [Member]>) -> Vec<Member> {
    let rank = |liveness: Liveness| match liveness {
        Liveness::Alive => 2,
        Liveness::Suspect => 1,
        Liveness::Dead => 0,
    };
    let mut by_node: BTreeMap<NodeId, &Member> = BTreeMap::new();
    for member in lists.into_iter().flatten() {
        let better = by_node
            .get(&member.node_id)
            .is_none_or(|held| rank(member.liveness) > rank(held.liveness));
        if better {
            by_node.insert(member.node_id, member);
        }
    }
    by_node.into_values().cloned().collect()
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

    fn node(id: u64, role: NodeRole, site: &str, state: NodeState) -> Node {
        Node {
            id: NodeId(id),
            name: format!("n{id}"),
            role,
            site: site.into(),
            labels: BTreeMap::new(),
            availability: warren_api::Availability::Active,
            state,
            cert_serial: None,
            addresses: warren_api::NodeAddresses {
                gossip: Some(format!("10.0.0.{id}:7946")),
                ..warren_api::NodeAddresses::default()
            },
            joined_at_ms: 0,
        }
    }

    #[test]
    fn sites_and_their_seeds() {
        let mut state = ClusterState::default();
        for node in [
            node(1, NodeRole::Control, "centre", NodeState::Ready),
            node(2, NodeRole::Control, "centre", NodeState::Ready),
            node(3, NodeRole::Agent, "lisbon", NodeState::Ready),
            node(4, NodeRole::Agent, "lisbon", NodeState::Down),
            node(5, NodeRole::Agent, "porto", NodeState::Ready),
            node(6, NodeRole::Agent, "faro", NodeState::Removed),
        ] {
            state.nodes.insert(node.id, node);
        }
        let addrs = |ids: &[u8]| -> Vec<SocketAddr> {
            ids.iter()
                .map(|id| format!("10.0.0.{id}:7946").parse().unwrap())
                .collect()
        };
        assert_eq!(
            agent_sites(&state).into_iter().collect::<Vec<_>>(),
            ["lisbon", "porto"],
            "a site whose only agent was removed has no mesh"
        );
        assert_eq!(control_seeds(&state, NodeId(1)), addrs(&[2]));
        assert_eq!(site_seeds(&state, "lisbon", NodeId(1)), addrs(&[2, 3, 4]));
        assert_eq!(site_seeds(&state, "faro", NodeId(1)), addrs(&[2]));
    }

    #[test]
    fn the_union_counts_a_node_in_several_meshes_as_the_most_alive() {
        let member = |id: u64, liveness: Liveness| {
            Member::from_meta(
                NodeId(id),
                1,
                "10.0.0.1:7946".parse().unwrap(),
                liveness,
                BTreeMap::new(),
            )
        };
        let unnamed = [member(1, Liveness::Alive), member(2, Liveness::Dead)];
        let lisbon = [member(2, Liveness::Suspect), member(3, Liveness::Alive)];
        let porto = [member(2, Liveness::Alive), member(5, Liveness::Dead)];
        let union = union([&unnamed[..], &lisbon[..], &porto[..]]);
        let got: Vec<(u64, Liveness)> = union.iter().map(|m| (m.node_id.0, m.liveness)).collect();
        assert_eq!(
            got,
            [
                (1, Liveness::Alive),
                (2, Liveness::Alive),
                (3, Liveness::Alive),
                (5, Liveness::Dead)
            ]
        );
    }

    #[test]
    fn cluster_id_is_lowercase_hex() {
        assert_eq!(cluster_id(&[0xab; 32]), "ab".repeat(32));
    }
}
