//! Our configuration in the standard `wg` / `wg-quick` text format, for operators and for
//! third-party peers (wireguard-go, kernel WireGuard) in tests.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::config::PeerConfig;
use crate::keys::PrivateKey;

/// A `wg-quick` config: `[Interface]` with PrivateKey (when given), ListenPort and Address,
/// then one `[Peer]` per peer key. `wg setconf` refuses `Address`; use [`wg_setconf_config`]
/// for it.
///
/// A peer with several keys (mid-rotation) is written once per key; only its last key carries
/// AllowedIPs, since `wg` routes a range to one peer.
pub fn wg_config(
    private_key: Option<&PrivateKey>,
    listen_port: u16,
    address: (Ipv4Addr, u8),
    peers: &[PeerConfig],
) -> String {
    render(private_key, listen_port, Some(address), peers)
}

/// Like [`wg_config`] without `Address`: the form `wg setconf` accepts.
pub fn wg_setconf_config(
    private_key: Option<&PrivateKey>,
    listen_port: u16,
    peers: &[PeerConfig],
) -> String {
    render(private_key, listen_port, None, peers)
}

fn render(
    private_key: Option<&PrivateKey>,
    listen_port: u16,
    address: Option<(Ipv4Addr, u8)>,
    peers: &[PeerConfig],
) -> String {
    let mut out = String::from("[Interface]\n");
    if let Some(key) = private_key {
        writeln!(out, "PrivateKey = {}", key.to_base64()).expect("writing to a String");
    }
    writeln!(out, "ListenPort = {listen_port}").expect("writing to a String");
    if let Some((address, prefix_len)) = address {
        writeln!(out, "Address = {address}/{prefix_len}").expect("writing to a String");
    }
    for peer in peers {
        render_peer(&mut out, peer);
    }
    out
}

fn render_peer(out: &mut String, peer: &PeerConfig) {
    let last = peer.public_keys.len().saturating_sub(1);
    for (key_pos, key) in peer.public_keys.iter().enumerate() {
        // `#` lines are comments to wg; the label tells a reader which node this is.
        let _ = write!(out, "\n# {}\n[Peer]\nPublicKey = {key}\n", peer.label);
        if key_pos == last && !peer.allowed_ips.is_empty() {
            let ranges: Vec<String> = peer
                .allowed_ips
                .iter()
                .map(|(address, len)| {
                    format!("{}/{len}", crate::allowed_ips::network(*address, *len))
                })
                .collect();
            let _ = writeln!(out, "AllowedIPs = {}", ranges.join(", "));
        }
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "Endpoint = {endpoint}");
        }
        if let Some(seconds) = peer.persistent_keepalive {
            let _ = writeln!(out, "PersistentKeepalive = {seconds}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn renders_wg_quick_and_setconf_forms() {
        let ours = PrivateKey::generate();
        let theirs = PrivateKey::generate().public_key();
        let peer = PeerConfig {
            label: "node-b".to_string(),
            public_keys: vec![theirs],
            allowed_ips: vec![
                (Ipv4Addr::new(10, 42, 2, 1), 24),
                (Ipv4Addr::new(10, 9, 0, 0), 16),
            ],
            endpoint: Some(SocketAddr::from(([192, 168, 7, 2], 51820))),
            persistent_keepalive: Some(25),
        };
        let text = wg_config(
            Some(&ours),
            51820,
            (Ipv4Addr::new(10, 42, 1, 1), 16),
            std::slice::from_ref(&peer),
        );
        let expected = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.42.1.1/16\n\n\
             # node-b\n[Peer]\nPublicKey = {theirs}\nAllowedIPs = 10.42.2.0/24, 10.9.0.0/16\n\
             Endpoint = 192.168.7.2:51820\nPersistentKeepalive = 25\n",
            ours.to_base64()
        );
        assert_eq!(text, expected);
        let setconf = wg_setconf_config(None, 0, &[peer]);
        assert!(!setconf.contains("Address") && !setconf.contains("PrivateKey"));
        assert!(setconf.starts_with("[Interface]\nListenPort = 0\n\n# node-b\n[Peer]\n"));
    }

    #[test]
    fn rotating_peer_routes_to_its_last_key() {
        let old = PrivateKey::generate().public_key();
        let new = PrivateKey::generate().public_key();
        let peer = PeerConfig {
            label: "b".to_string(),
            public_keys: vec![old, new],
            allowed_ips: vec![(Ipv4Addr::new(10, 42, 2, 0), 24)],
            endpoint: None,
            persistent_keepalive: None,
        };
        let text = wg_setconf_config(None, 1, &[peer]);
        let new_section = text.split("[Peer]").nth(2).unwrap();
        assert!(new_section.contains(&new.to_base64()) && new_section.contains("AllowedIPs"));
        assert_eq!(text.matches("AllowedIPs").count(), 1);
    }
}
