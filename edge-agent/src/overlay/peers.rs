//! The WireGuard peer set, derived from a view: a pure function, so the overlay comes up from
//! the cached view alone after an offline reboot, and tests need no device.

use std::net::{Ipv4Addr, SocketAddr};

use warren_api::NodeView;
use warren_api::overlay::NODE_PREFIX;
use warren_api::wire::PeerInfo;
use warren_wireguard::{PeerConfig, PublicKey};

/// Every peer of `view` that the registry gave a key and an overlay address, with its /24 as
/// allowed IPs, both keys while it rolls (the current one first), and its registered endpoint.
/// Peers without a key are not in the mesh yet; nothing else authorises one (gossip is a hint).
pub fn peer_configs(view: &NodeView, keepalive: Option<u16>) -> Vec<PeerConfig> {
    view.peers
        .iter()
        .filter_map(|peer| peer_config(peer, keepalive))
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
        endpoint: peer
            .wg_endpoint
            .as_deref()
            .and_then(|e| e.parse::<SocketAddr>().ok())
            .filter(SocketAddr::is_ipv4),
        persistent_keepalive: keepalive,
    })
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
}
