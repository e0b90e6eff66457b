//! Real WireGuard between network namespaces: our Device (in `wg-node` children), and
//! wireguard-go as the third-party peer. Each test needs root, TUN and some tools; it prints
//! why it skips when they are missing (and fails under `CI=true`).

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use support::{EchoServer, Lan, Node, PeerLine, overlay, ready, serial, tcp_echo, wait_until};
use warren_wireguard::{PeerConfig, PrivateKey, PublicKey};

/// Two namespaces on one segment, each running our device with the other as its peer.
struct Pair {
    a: Node,
    b: Node,
    a_key: PrivateKey,
    b_key: PrivateKey,
    lan: Lan,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn start(tag: &str) -> anyhow::Result<Pair> {
        let lan = Lan::new(tag, 2)?;
        let dir = tempfile::tempdir()?;
        let (a_key, b_key) = (PrivateKey::generate(), PrivateKey::generate());
        let mut a = Node::new(&lan.hosts[0], dir.path(), "a", overlay(0));
        let mut b = Node::new(&lan.hosts[1], dir.path(), "b", overlay(1));
        a.write_config(
            &[&a_key],
            &[PeerLine::lan_node(1, vec![b_key.public_key()])],
        )?;
        b.write_config(
            &[&b_key],
            &[PeerLine::lan_node(0, vec![a_key.public_key()])],
        )?;
        a.start()?;
        b.start()?;
        Ok(Pair {
            a,
            b,
            a_key,
            b_key,
            lan,
            _dir: dir,
        })
    }
}

/// Two nodes linked by a bridge: ping across the tunnel, and a TCP echo carries 2 MB.
#[test]
fn two_nodes_ping_and_tcp() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping"]) {
        return Ok(());
    }
    let _serial = serial();
    let pair = Pair::start("pair")?;
    let (transmitted, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "3", "-W", "2"])?;
    ensure!(
        received == transmitted,
        "ping a->b: {received}/{transmitted}\n{}",
        pair.a.log()
    );
    let echo_address = SocketAddr::from((overlay(1), 7000));
    let _echo = EchoServer::start(&pair.lan.hosts[1], echo_address)?;
    tcp_echo(&pair.lan.hosts[0], echo_address, 2_000_000)?;
    assert_eq!(pair.a.peer_stat("n1", "handshakes").as_deref(), Some("1"));
    assert_eq!(pair.a.invalid_packets(), 0);

    // The same peers again (the node applies any change of its file): the session stays.
    let b_again = [PeerLine::lan_node(1, vec![pair.b_key.public_key()])];
    pair.a
        .write_config_with_comment(&[&pair.a_key], &b_again, "same peers")?;
    pair.a.wait_applied()?;
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping after same-data update: {received}/2");
    assert_eq!(
        pair.a.peer_stat("n1", "handshakes").as_deref(),
        Some("1"),
        "re-handshake"
    );
    Ok(())
}

/// After B restarts, A (which still holds the old session) reaches it within a round of
/// handshake: B answers A's stale data by initiating, instead of A waiting 15 s to notice.
#[test]
fn restarted_peer_is_reached_at_once() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping"]) {
        return Ok(());
    }
    let _serial = serial();
    let mut pair = Pair::start("rst")?;
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping before restart: {received}/2");
    pair.b.stop();
    pair.b.start()?;
    let started = std::time::Instant::now();
    let args = ["-c", "1", "-i", "0.05", "-w", "20"];
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &args)?;
    let elapsed = started.elapsed();
    eprintln!("first reply from a restarted peer after {elapsed:?}");
    ensure!(received == 1, "no reply from the restarted peer");
    ensure!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    Ok(())
}

/// After A's peer list drops B, A's traffic to B stops at once, and a restarted B (no session
/// left to reuse) cannot complete a handshake with A: A refuses it.
#[test]
fn removed_peer_is_cut_off() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping"]) {
        return Ok(());
    }
    let _serial = serial();
    let mut pair = Pair::start("rm")?;
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping before removal: {received}/2");

    pair.a.write_config(&[&pair.a_key], &[])?;
    ensure!(
        wait_until(Duration::from_secs(3), || pair
            .a
            .peer_stat("n1", "key")
            .is_none()),
        "A still lists B"
    );
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "3", "-i", "0.2", "-W", "1"])?;
    assert_eq!(received, 0, "A still reaches B after removing it");

    pair.b.stop();
    pair.b.start()?;
    let invalid_before = pair.a.invalid_packets();
    let (_, received) = pair.lan.hosts[1].ping(overlay(0), &["-c", "3", "-i", "0.5", "-W", "1"])?;
    assert_eq!(received, 0, "B reaches A although A removed it");
    assert_eq!(pair.b.peer_stat("n0", "handshakes").as_deref(), Some("0"));
    assert!(
        pair.a.invalid_packets() > invalid_before,
        "A did not count B's refused handshake"
    );
    Ok(())
}

/// B's underlay address changes. Its next authenticated packets come from the new address,
/// and A moves B's endpoint there although A's configured endpoint is still the old one; A's
/// traffic then reaches B at the new address.
#[test]
fn endpoint_roams_to_authenticated_source() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping"]) {
        return Ok(());
    }
    let _serial = serial();
    let pair = Pair::start("roam")?;
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping before the move: {received}/2");

    let b_host = &pair.lan.hosts[1];
    b_host.ip(&[
        "addr",
        "del",
        &format!("{}/24", Lan::underlay(1)),
        "dev",
        "eth0",
    ])?;
    b_host.ip(&["addr", "add", "192.168.50.12/24", "dev", "eth0"])?;
    let (_, received) = b_host.ping(overlay(0), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping from the moved node: {received}/2");
    let moved = "192.168.50.12:51820";
    ensure!(
        wait_until(Duration::from_secs(2), || pair
            .a
            .peer_stat("n1", "endpoint")
            .is_some_and(|endpoint| endpoint == moved)),
        "A did not roam: {}",
        pair.a.stats()
    );
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping to the moved node: {received}/2");
    Ok(())
}

/// Garbage, a forged handshake initiation, and data for an unknown receiver index reach A's
/// port: each is counted as invalid and dropped, and the tunnel keeps working.
#[test]
fn garbage_is_counted_and_dropped() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping"]) {
        return Ok(());
    }
    let _serial = serial();
    let pair = Pair::start("junk")?;
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping before: {received}/2");
    let before = pair.a.invalid_packets();
    let mut forged_init = vec![0x5au8; 148];
    forged_init[..4].copy_from_slice(&[1, 0, 0, 0]);
    let mut unknown_data = vec![0xa5u8; 96];
    unknown_data[..8].copy_from_slice(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let datagrams = vec![
        b"hello".to_vec(),
        vec![],
        forged_init,
        unknown_data,
        vec![2; 92],
    ];
    let n_sent = datagrams.len() as u64;
    let a_port = SocketAddr::from((Lan::underlay(0), support::PORT));
    support::in_netns(&pair.lan.hosts[1], move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for datagram in &datagrams {
            socket.send_to(datagram, a_port)?;
        }
        Ok(())
    })?;
    ensure!(
        wait_until(Duration::from_secs(2), || pair.a.invalid_packets()
            >= before + n_sent),
        "invalid packets {} -> {}, {n_sent} sent",
        before,
        pair.a.invalid_packets()
    );
    let (_, received) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(received == 2, "ping after: {received}/2");
    Ok(())
}

/// Our device against wireguard-go configured with `wg setconf` from our `wg_setconf_config`:
/// the handshake completes, ping works both ways and TCP carries data both ways.
#[test]
fn interop_with_wireguard_go() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping", "wireguard-go", "wg"]) {
        return Ok(());
    }
    let _serial = serial();
    let lan = Lan::new("go", 2)?;
    let dir = tempfile::tempdir()?;
    let (our_key, go_key) = (PrivateKey::generate(), PrivateKey::generate());
    let mut ours = Node::new(&lan.hosts[0], dir.path(), "ours", overlay(0));
    ours.write_config(
        &[&our_key],
        &[PeerLine::lan_node(1, vec![go_key.public_key()])],
    )?;
    ours.start()?;
    let _go = WireguardGo::start(&lan, &go_key, &our_key, dir.path())?;

    let (_, received) = lan.hosts[0].ping(overlay(1), &["-c", "3", "-W", "2"])?;
    ensure!(received == 3, "ping ours->go: {received}/3\n{}", ours.log());
    let (_, received) = lan.hosts[1].ping(overlay(0), &["-c", "3", "-W", "2"])?;
    ensure!(received == 3, "ping go->ours: {received}/3");
    let go_side = SocketAddr::from((overlay(1), 7000));
    let our_side = SocketAddr::from((overlay(0), 7000));
    let _echo_go = EchoServer::start(&lan.hosts[1], go_side)?;
    let _echo_ours = EchoServer::start(&lan.hosts[0], our_side)?;
    tcp_echo(&lan.hosts[0], go_side, 2_000_000)?;
    tcp_echo(&lan.hosts[1], our_side, 2_000_000)?;
    ensure!(
        ours.peer_stat("n1", "handshakes").is_some_and(|n| n != "0"),
        "no handshake"
    );
    Ok(())
}

/// A wireguard-go daemon in host 1 of a [`Lan`], killed on drop.
struct WireguardGo {
    child: std::process::Child,
    socket: String,
}

impl WireguardGo {
    fn start(
        lan: &Lan,
        go_key: &PrivateKey,
        our_key: &PrivateKey,
        dir: &std::path::Path,
    ) -> anyhow::Result<WireguardGo> {
        // Its control socket in /var/run/wireguard is shared by all namespaces: unique name.
        let interface = format!("wgo{}", std::process::id());
        let netns = &lan.hosts[1];
        let child = netns
            .command("wireguard-go")
            .args(["-f", &interface])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn wireguard-go")?;
        let socket = format!("/var/run/wireguard/{interface}.sock");
        let daemon = WireguardGo {
            child,
            socket: socket.clone(),
        };
        ensure!(
            wait_until(Duration::from_secs(5), || std::path::Path::new(&socket)
                .exists()),
            "wireguard-go did not come up"
        );
        let peer = PeerConfig {
            label: "ours".to_string(),
            public_keys: vec![our_key.public_key()],
            allowed_ips: vec![(overlay(0), 24)],
            endpoint: Some(SocketAddr::from((Lan::underlay(0), support::PORT))),
            persistent_keepalive: None,
        };
        let config = warren_wireguard::wg_setconf_config(Some(go_key), support::PORT, &[peer]);
        let config_path = dir.join("go.conf");
        std::fs::write(&config_path, config)?;
        let path = config_path.to_str().context("utf-8 path")?;
        let status = netns
            .command("wg")
            .args(["setconf", &interface, path])
            .status()?;
        ensure!(status.success(), "wg setconf failed");
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/16", overlay(1)),
            "dev",
            &interface,
        ])?;
        netns.ip(&["link", "set", &interface, "up"])?;
        Ok(daemon)
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        // SIGTERM lets it remove its socket; SIGKILL would leave it behind.
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        if !wait_until(Duration::from_secs(2), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// B rotates its key while A pings it every 10 ms: B takes [new, old], A takes B as
/// [old, new], then both drop the old key. At most a handshake's worth of packets is lost.
#[test]
fn key_rotation_under_traffic() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping"]) {
        return Ok(());
    }
    let _serial = serial();
    let pair = Pair::start("rot")?;
    let (_, warmup) = pair.lan.hosts[0].ping(overlay(1), &["-c", "2", "-W", "2"])?;
    ensure!(warmup == 2, "ping before rotation: {warmup}/2");
    let flood = pair.lan.hosts[0]
        .command("ping")
        .args([
            "-i",
            "0.01",
            "-c",
            "500",
            "-w",
            "20",
            &overlay(1).to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;

    let (old, new) = (pair.b_key.clone(), PrivateKey::generate());
    let a_peer = |keys: Vec<PublicKey>| vec![PeerLine::lan_node(1, keys)];
    let b_peers = vec![PeerLine::lan_node(0, vec![pair.a_key.public_key()])];
    // Traffic flows before anything changes: A has sent a hundred pings' worth to B.
    let sent = |node: &Node| -> u64 {
        node.peer_stat("n1", "tx")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    let before = sent(&pair.a);
    ensure!(
        wait_until(Duration::from_secs(5), || sent(&pair.a)
            >= before + 100 * 84),
        "the flood does not reach B: {}",
        pair.a.stats()
    );
    pair.b.write_config(&[&new, &old], &b_peers)?;
    pair.b.wait_applied()?;
    pair.a.write_config(
        &[&pair.a_key],
        &a_peer(vec![old.public_key(), new.public_key()]),
    )?;
    // Both keys listed: A gets a session with B's new key and moves its traffic there
    // before the old key goes away.
    let new_b64 = new.public_key().to_base64();
    let switched = wait_until(Duration::from_secs(3), || {
        pair.a.peer_stat("n1", "key").as_deref() == Some(new_b64.as_str())
    });
    ensure!(
        switched,
        "A still sends with B's old key: {}",
        pair.a.stats()
    );
    // Packets sealed under the old session are through before B forgets the old key: A has
    // sent fifty more pings' worth under the new one.
    let switched_at = sent(&pair.a);
    ensure!(
        wait_until(Duration::from_secs(5), || sent(&pair.a)
            >= switched_at + 50 * 84),
        "no traffic under B's new key: {}",
        pair.a.stats()
    );
    pair.b.write_config(&[&new], &b_peers)?;
    pair.a
        .write_config(&[&pair.a_key], &a_peer(vec![new.public_key()]))?;

    let output = flood.wait_with_output()?;
    let (transmitted, received) = support::parse_ping(&String::from_utf8_lossy(&output.stdout))?;
    let lost = transmitted - received;
    eprintln!("key rotation under traffic: {received}/{transmitted} received, {lost} lost");
    assert_eq!(
        pair.a.peer_stat("n1", "key"),
        Some(new.public_key().to_base64())
    );
    ensure!(
        lost <= 5,
        "lost {lost} packets\nA:\n{}\nB:\n{}",
        pair.a.log(),
        pair.b.log()
    );
    Ok(())
}

/// Five nodes on one bridge in a full mesh: every overlay address pings every other.
#[test]
fn five_node_mesh() -> anyhow::Result<()> {
    if !ready(&["wg-node", "ping"]) {
        return Ok(());
    }
    let _serial = serial();
    const N: usize = 5;
    let lan = Lan::new("mesh", N)?;
    let dir = tempfile::tempdir()?;
    let keys: Vec<PrivateKey> = (0..N).map(|_| PrivateKey::generate()).collect();
    let mut nodes = Vec::new();
    for (node_idx, key) in keys.iter().enumerate() {
        let mut node = Node::new(
            &lan.hosts[node_idx],
            dir.path(),
            &format!("n{node_idx}"),
            overlay(node_idx),
        );
        let peers: Vec<PeerLine> = (0..N)
            .filter(|other| *other != node_idx)
            .map(|other| PeerLine::lan_node(other, vec![keys[other].public_key()]))
            .collect();
        node.write_config(&[key], &peers)?;
        node.start()?;
        nodes.push(node);
    }
    let mut pings = Vec::new();
    for from in 0..N {
        for to in (0..N).filter(|to| *to != from) {
            let child = lan.hosts[from]
                .command("ping")
                .args(["-c", "2", "-W", "3", &overlay(to).to_string()])
                .stdout(Stdio::piped())
                .spawn()?;
            pings.push((from, to, child));
        }
    }
    let mut failures = Vec::new();
    for (from, to, child) in pings {
        let output = child.wait_with_output()?;
        let (_, received) = support::parse_ping(&String::from_utf8_lossy(&output.stdout))?;
        if received == 0 {
            failures.push(format!("n{from} -> n{to}"));
        }
    }
    ensure!(failures.is_empty(), "no reply on: {}", failures.join(", "));
    Ok(())
}
