//! The Device API in this process: a thread enters a fresh network namespace (setns) and
//! starts the device there, so start, update, stats and drop are seen directly.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::ensure;
use support::{Netns, in_netns, ready, serial};
use warren_wireguard::{Device, DeviceConfig, PeerConfig, PrivateKey};

/// Start brings the interface up with our address and an ephemeral port; set_peers shows in
/// stats; dropping the device stops its threads promptly and removes the interface.
#[test]
fn start_stats_and_drop_removes_interface() -> anyhow::Result<()> {
    if !ready(&[]) {
        return Ok(());
    }
    let _serial = serial();
    let netns = Netns::new(format!("wgdev-{}", std::process::id()))?;
    let mut config = DeviceConfig::new(Ipv4Addr::new(10, 42, 7, 1), 16, PrivateKey::generate());
    config.name = "wgtest0".to_string();
    let device = in_netns(&netns, move || Ok(Device::start(config)?))?;
    ensure!(device.listen_addr().port() != 0, "port 0 was not resolved");
    let link = String::from_utf8(netns.ip(&["-4", "addr", "show", "wgtest0"])?.stdout)?;
    ensure!(
        link.contains("10.42.7.1/16") && link.contains("UP"),
        "interface: {link}"
    );
    let routes = String::from_utf8(netns.ip(&["route"])?.stdout)?;
    ensure!(
        routes.contains("10.42.0.0/16 dev wgtest0"),
        "routes: {routes}"
    );

    let peer = PeerConfig {
        label: "node-b".to_string(),
        public_keys: vec![PrivateKey::generate().public_key()],
        allowed_ips: vec![(Ipv4Addr::new(10, 42, 8, 0), 24)],
        endpoint: Some(SocketAddr::from(([192, 168, 50, 2], 51820))),
        persistent_keepalive: None,
    };
    device.set_peers(vec![peer.clone()])?;
    let stats = device.stats();
    assert_eq!(stats.listen_port, device.listen_addr().port());
    assert_eq!(stats.peers.len(), 1);
    assert_eq!(stats.peers[0].label, "node-b");
    assert_eq!(stats.peers[0].public_key, peer.public_keys[0]);
    assert_eq!(stats.peers[0].endpoint, peer.endpoint);
    assert_eq!(stats.peers[0].handshakes_completed, 0);
    assert!(
        device.set_peers(vec![peer.clone(), peer]).is_err(),
        "duplicate key accepted"
    );
    assert_eq!(
        device.stats().peers.len(),
        1,
        "a refused update changed the peers"
    );

    let started = std::time::Instant::now();
    drop(device);
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    let gone = netns.ip(&["link", "show", "wgtest0"]).is_err();
    ensure!(gone, "interface still there after drop");
    Ok(())
}
