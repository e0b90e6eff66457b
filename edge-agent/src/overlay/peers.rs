//! The WireGuard peer set, derived from a view and the gossip membership: a pure function, so
//! the overlay comes up from the cached view alone after an offline reboot, and tests need no
//! device.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use warren_api::NodeView;
use warren_api::overlay::NODE_PREFIX;
use warren_api::wire::PeerInfo;
use warren_mesh::{Liveness, Member};
use warren_wireguard::{PeerConfig, PublicKey};

pub use warren_mesh::member::WG_ENDPOINT as GOSSIP_ENDPOINT;

/// Every peer of `view` that the registry gave a key and an overlay address, with its /24 as
/// allowed IPs, both keys while it rolls (the current one first), and an endpoint: the one the
/// node gossips now ([`gossip_endpoint`]), else the one it registered. Peers without a key are
/// not in the mesh yet; nothing else authorises one (gossip is a hint: it can say where a
/// registered peer is, never who is one).
pub fn peer_configs(
    view: &NodeView,
    members: &[Member],
    keepalive: Option<u16>,
) -> Vec<PeerConfig> {
    view.peers
        .iter()
        .filter_map(|peer| {
            let mut config = peer_config(peer, keepalive)?;
            if let Some(endpoint) = gossip_endpoint(peer, members) {
                config.endpoint = Some(endpoint);
            }
            Some(config)
        })
        .collect()
}

fn peer_config(peer: &PeerInfo, keepalive: Option<u16>) -> Option<PeerConfig> {
    let key = peer.wg_public_key?;
    let address: Ipv4Addr = peer.overlay_ip.as_deref()?.parse().ok()?;
    let mut public_keys = vec![PublicKey(key)];
    if let Some(next) = peer.wg_next_public_key.filter(|next| *next != key) {
        public_keys.push(PublicKey(next));
    }
    Some(PeerConfig {
        label: peer.name.clone(),
        public_keys,
        allowed_ips: vec![(subnet_of(address), NODE_PREFIX)],
        // The data plane is IPv4: a peer that registered another endpoint is reached once it
        // sends (roaming), rather than refusing the whole peer set.
        endpoint: ipv4_endpoint(peer.wg_endpoint.as_deref()?),
        persistent_keepalive: keepalive,
    })
}

/// Where `peer` says by gossip that its WireGuard port is now, if a member that is not dead
/// publishes it under the peer's node id with claims the registry backs: the same overlay
/// address and one of the peer's registered keys (its next one while it rolls). A box whose
/// address changed while control was out of reach is found again this way.
pub fn gossip_endpoint(peer: &PeerInfo, members: &[Member]) -> Option<SocketAddr> {
    let member = members
        .iter()
        .find(|m| m.node_id == peer.node_id && m.liveness != Liveness::Dead)?;
    let claimed_key = PublicKey::from_base64(member.claimed.wg_public_key.as_deref()?).ok()?;
    let registered_key =
        Some(claimed_key.0) == peer.wg_public_key || Some(claimed_key.0) == peer.wg_next_public_key;
    let registered_address = peer
        .overlay_ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    if !registered_key || member.claimed.overlay_addr != registered_address {
        return None;
    }
    ipv4_endpoint(member.endpoints.get(GOSSIP_ENDPOINT)?)
}

fn ipv4_endpoint(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>()
        .ok()
        .filter(|e| e.is_ipv4() && !e.ip().is_unspecified() && e.port() != 0)
}

/// The /24 an overlay address belongs to.
pub fn subnet_of(address: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(address) & (u32::MAX << (32 - u32::from(NODE_PREFIX))))
}

#[cfg(test)]
mod tests {
    use warren_api::NodeId;

    use super::*;

    fn peer(id: u64, key: Option<u8>, next: Option<u8>, overlay: Option<&str>) -> PeerInfo {
        PeerInfo {
            node_id: NodeId(id),
            name: format!("edge-{id}"),
            site: "lisbon".into(),
            overlay_ip: overlay.map(str::to_owned),
            wg_public_key: key.map(|k| [k; 32]),
            endpoints: vec![format!("10.0.0.{id}:7946")],
            wg_next_public_key: next.map(|k| [k; 32]),
            wg_endpoint: Some(format!("10.0.0.{id}:51820")),
        }
    }

    #[test]
    fn peers_with_a_registered_key_and_address_are_in_the_mesh() {
        let peers = [
            peer(2, Some(2), None, Some("10.42.2.1")),
            peer(3, None, None, Some("10.42.3.1")),
            peer(4, Some(4), Some(9), Some("10.42.4.1")),
            peer(5, Some(5), None, None),
            peer(6, Some(6), Some(6), Some("10.42.6.1")),
        ];
        let configs: Vec<PeerConfig> = peers
            .iter()
            .filter_map(|p| peer_config(p, Some(25)))
            .collect();
        let labels: Vec<&str> = configs.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["edge-2", "edge-4", "edge-6"]);
        assert_eq!(
            configs[0].allowed_ips,
            vec![(Ipv4Addr::new(10, 42, 2, 0), 24)]
        );
        assert_eq!(configs[0].endpoint, Some("10.0.0.2:51820".parse().unwrap()));
        assert_eq!(configs[0].persistent_keepalive, Some(25));
        assert_eq!(
            configs[1].public_keys,
            vec![PublicKey([4; 32]), PublicKey([9; 32])]
        );
        assert_eq!(
            configs[2].public_keys,
            vec![PublicKey([6; 32])],
            "a next key equal to the current one is one key"
        );
    }

    fn member(id: u64, key: u8, overlay: &str, wg: &str, liveness: Liveness) -> Member {
        let meta = [
            (
                warren_mesh::member::KEY_WG_PUBLIC_KEY,
                PublicKey([key; 32]).to_base64(),
            ),
            (warren_mesh::member::KEY_OVERLAY_ADDR, overlay.to_owned()),
            (
                format!("{}{GOSSIP_ENDPOINT}", warren_mesh::member::ENDPOINT_PREFIX).as_str(),
                wg.to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let gossip = format!("10.0.0.{id}:7946").parse().unwrap();
        Member::from_meta(NodeId(id), 1, gossip, liveness, meta)
    }

    #[test]
    fn a_gossiped_endpoint_wins_only_with_claims_the_registry_backs() {
        let peer = peer(2, Some(2), Some(7), Some("10.42.2.1"));
        let registered = peer_config(&peer, None).unwrap().endpoint;
        assert_eq!(registered, "10.0.0.2:51820".parse().ok());
        let endpoint = |members: &[Member]| gossip_endpoint(&peer, members).or(registered);
        let moved = "192.0.2.9:51820".parse().ok();
        assert_eq!(
            endpoint(&[]),
            registered,
            "no gossip: the registered endpoint"
        );
        let alive = Liveness::Alive;
        assert_eq!(
            endpoint(&[member(2, 2, "10.42.2.1", "192.0.2.9:51820", alive)]),
            moved
        );
        assert_eq!(
            endpoint(&[member(
                2,
                7,
                "10.42.2.1",
                "192.0.2.9:51820",
                Liveness::Suspect
            )]),
            moved,
            "the next key of a rolling peer counts"
        );
        for (member, why) in [
            (
                member(2, 3, "10.42.2.1", "192.0.2.9:51820", alive),
                "a key the registry lacks",
            ),
            (
                member(2, 2, "10.42.9.1", "192.0.2.9:51820", alive),
                "another overlay address",
            ),
            (
                member(3, 2, "10.42.2.1", "192.0.2.9:51820", alive),
                "another node's claims",
            ),
            (
                member(2, 2, "10.42.2.1", "192.0.2.9:51820", Liveness::Dead),
                "a dead member",
            ),
            (
                member(2, 2, "10.42.2.1", "0.0.0.0:51820", alive),
                "an unspecified address",
            ),
            (
                member(2, 2, "10.42.2.1", "[2001:db8::1]:51820", alive),
                "IPv6",
            ),
            (
                member(2, 2, "10.42.2.1", "not an address", alive),
                "garbage",
            ),
        ] {
            assert_eq!(endpoint(&[member]), registered, "{why} is not believed");
        }
    }
}
