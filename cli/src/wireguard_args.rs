//! The WireGuard overlay's flags on `agent join` and `agent run`, and the settings they make.
//! At join a flag not given takes its default, and the result is kept in the data dir; at run a
//! flag not given takes what join kept, so a reboot runs the overlay the join set up.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use warren_api::rest::NodeInfo;
use warren_edge_agent::overlay::{OverlayMode, OverlaySettings};

/// Whether the node runs the overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireguardMode {
    /// Always; if the TUN device cannot be made, say why and keep the rest running.
    On,
    /// Never.
    Off,
    /// When this process can make a TUN device (root with /dev/net/tun); off otherwise.
    Auto,
}

/// `--wireguard`, `--wg-interface`, `--wg-port`, `--wg-advertise`, `--wg-rotate-every`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "WireGuard overlay (userspace, no kernel module)")]
pub struct WireguardArgs {
    /// Join the encrypted overlay: every node gets an address in the cluster's overlay range
    /// (10.42.N.1 by default) and reaches every other node's through a WireGuard tunnel,
    /// with or without the control plane. [default: auto; at run: what join was given]
    #[arg(long, value_enum, value_name = "on|off|auto")]
    pub wireguard: Option<WireguardMode>,
    /// The TUN interface's name. [default: warren0]
    #[arg(long, value_name = "NAME")]
    pub wg_interface: Option<String>,
    /// The UDP port WireGuard listens on; peers must reach it. [default: 51820]
    #[arg(long, value_name = "PORT")]
    pub wg_port: Option<u16>,
    /// The endpoint other nodes send to, registered with control (behind NAT: the public
    /// address and the forwarded port). Default: the advertised gossip IP with --wg-port.
    #[arg(long, value_name = "IP:PORT")]
    pub wg_advertise: Option<SocketAddr>,
    /// Roll this node's WireGuard key this often (e.g. 30d), without dropping traffic: both
    /// keys are accepted while peers learn the new one. Default: only on `warren node
    /// rotate-key`.
    #[arg(long, value_name = "DURATION")]
    pub wg_rotate_every: Option<String>,
}

impl WireguardArgs {
    /// The overlay's settings: each flag given, else `kept`, else the default.
    pub fn settings(&self, kept: Option<OverlaySettings>) -> Result<OverlaySettings> {
        let mut settings = kept.unwrap_or_default();
        if let Some(mode) = self.wireguard {
            settings.mode = match mode {
                WireguardMode::On => OverlayMode::On,
                WireguardMode::Off => OverlayMode::Off,
                WireguardMode::Auto => OverlayMode::Auto,
            };
        }
        if let Some(name) = &self.wg_interface {
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                return Err(anyhow!(
                    "--wg-interface: {name:?} is not an interface name (1 to 15 characters, no /)"
                ));
            }
            settings.interface = name.clone();
        }
        if let Some(port) = self.wg_port {
            settings.port = port;
        }
        if self.wg_advertise.is_some() {
            settings.advertise = self.wg_advertise;
        }
        if let Some(every) = &self.wg_rotate_every {
            let ms = warren_api::parse_duration_ms(every)
                .map_err(|e| anyhow!("--wg-rotate-every: {e}"))?;
            if ms < 60_000 {
                return Err(anyhow!(
                    "--wg-rotate-every: {every} is shorter than a minute"
                ));
            }
            settings.rotate_every_secs = Some(ms / 1000);
        }
        Ok(settings)
    }

    /// The settings for `agent run` in `data_dir`: flags over what join kept.
    pub fn settings_at_run(&self, data_dir: &Path) -> Result<OverlaySettings> {
        let kept =
            OverlaySettings::load(data_dir).map_err(|e| anyhow!("WireGuard settings: {e}"))?;
        self.settings(kept)
    }
}

/// `warren node wg-config NODE`: NODE's interface (its address and listen port, no private
/// key) and a `[Peer]` per peer with a key, as the registry lists them: those of `peers` (the
/// node's peers, as control scopes them), or every other node when control did not say.
pub fn wg_config_of(
    nodes: &[NodeInfo],
    wanted: &str,
    peers: Option<&[warren_api::NodeId]>,
) -> Result<String> {
    use warren_wireguard::{PeerConfig, PublicKey};
    let is_it = |n: &&NodeInfo| n.node.name == wanted || n.node.id.to_string() == wanted;
    let Some(me) = nodes.iter().find(is_it) else {
        bail!("no node {wanted:?}; `warren node ls` lists them");
    };
    let Some(mesh) = &me.mesh else {
        bail!(
            "node {} holds no overlay address (the overlay range was full when it joined)",
            me.node.name
        );
    };
    let address: std::net::Ipv4Addr = mesh.overlay_ip.parse()?;
    let key = |text: &str| PublicKey::from_base64(text).map_err(|e| anyhow!("{text}: {e}"));
    let held: Option<std::collections::HashSet<_>> = peers.map(|p| p.iter().collect());
    let holds = |info: &&NodeInfo| held.as_ref().is_none_or(|h| h.contains(&info.node.id));
    let mut peers = Vec::new();
    for info in nodes
        .iter()
        .filter(|n| n.node.id != me.node.id)
        .filter(holds)
    {
        let Some(peer) = &info.mesh else { continue };
        let Some(current) = &peer.public_key else {
            continue;
        };
        if info.node.state == warren_api::NodeState::Removed {
            continue;
        }
        let mut public_keys = vec![key(current)?];
        if let Some(next) = &peer.next_public_key {
            public_keys.push(key(next)?);
        }
        let ip: std::net::Ipv4Addr = peer.overlay_ip.parse()?;
        peers.push(PeerConfig {
            label: info.node.name.clone(),
            public_keys,
            allowed_ips: vec![(warren_edge_agent::overlay::peers::subnet_of(ip), 24)],
            endpoint: peer.endpoint.as_deref().and_then(|e| e.parse().ok()),
            persistent_keepalive: Some(warren_edge_agent::overlay::KEEPALIVE_SECS),
        });
    }
    let port = mesh
        .endpoint
        .as_deref()
        .and_then(|e| e.parse::<SocketAddr>().ok())
        .map_or(warren_edge_agent::overlay::DEFAULT_PORT, |e| e.port());
    let text = warren_wireguard::wg_config(None, port, (address, 24), &peers);
    Ok(format!(
        "# WireGuard configuration of node {} ({}), from the registry.\n# PrivateKey: on that box only, DATA_DIR/wireguard/private.key (`wg set IFACE private-key FILE`).\n{text}",
        me.node.name, mesh.overlay_ip
    ))
}

#[cfg(test)]
mod tests {
    use warren_api::rest::MeshInfo;
    use warren_api::{Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState};
    use warren_wireguard::PublicKey;

    use super::*;

    fn node(id: u64) -> NodeInfo {
        NodeInfo {
            node: Node {
                id: NodeId(id),
                name: format!("edge-{id}"),
                role: NodeRole::Agent,
                site: "lisbon".into(),
                labels: Default::default(),
                availability: Availability::Active,
                state: NodeState::Ready,
                cert_serial: None,
                addresses: NodeAddresses::default(),
                joined_at_ms: 0,
            },
            replicas: 0,
            raft_member: false,
            agent: None,
            gossip: None,
            member: None,
            mesh: Some(MeshInfo {
                overlay_ip: format!("10.42.{id}.1"),
                public_key: Some(PublicKey([id as u8; 32]).to_base64()),
                next_public_key: None,
                endpoint: Some(format!("192.0.2.{id}:51820")),
            }),
            peers: None,
        }
    }

    /// The configuration holds the node's peers as control scoped them, or every other node
    /// with a key when control did not say (an older control plane).
    #[test]
    fn the_configuration_holds_the_nodes_peers() {
        let nodes: Vec<NodeInfo> = (1..=3).map(node).collect();
        let scoped = wg_config_of(&nodes, "edge-1", Some(&[NodeId(3)])).unwrap();
        assert!(scoped.contains("10.42.3.0/24"), "{scoped}");
        assert!(!scoped.contains("10.42.2.0/24"), "{scoped}");
        assert!(scoped.contains("ListenPort = 51820"), "{scoped}");
        let every = wg_config_of(&nodes, "edge-1", None).unwrap();
        assert!(every.contains("10.42.2.0/24") && every.contains("10.42.3.0/24"));
        assert!(!every.contains("10.42.1.0/24"), "not itself: {every}");
    }
}
