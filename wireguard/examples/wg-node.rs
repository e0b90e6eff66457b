//! A test and benchmark node: runs one `warren_wireguard::Device` from a config file until
//! killed, plus the TCP echo helpers the namespace tests use.
//!
//! ```text
//! wg-node run CONFIG          run a device; re-read CONFIG when it changes; write CONFIG.stats
//! wg-node echo-server ADDR    TCP echo server on ADDR
//! wg-node echo-client ADDR N  send N bytes to an echo server, check they come back
//! ```
//!
//! CONFIG, one item a line:
//! ```text
//! name wg0
//! address 10.42.1.1/16
//! listen_port 51820
//! mtu 1420
//! private_key BASE64            (repeat for a rotation: the first is current)
//! peer LABEL KEY[,KEY] NET/LEN[,NET/LEN] ENDPOINT|- KEEPALIVE|-
//! ```
// A command-line tool for tests: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warren_wireguard::{Device, DeviceConfig, PeerConfig, PrivateKey, PublicKey};

/// How often the node looks for a changed config and writes its stats.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,boringtun=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["run", config] => run(Path::new(config)),
        ["echo-server", address] => echo_server(address.parse().context("echo-server ADDR")?),
        ["echo-client", address, n_bytes] => echo_client(
            address.parse().context("echo-client ADDR")?,
            n_bytes.parse().context("echo-client N")?,
        ),
        _ => bail!("usage: wg-node run CONFIG | echo-server ADDR | echo-client ADDR N"),
    }
}

/// The parsed config file.
struct NodeConfig {
    device: DeviceConfig,
    peers: Vec<PeerConfig>,
}

fn parse_config(text: &str) -> anyhow::Result<NodeConfig> {
    let mut device = DeviceConfig::new(Ipv4Addr::UNSPECIFIED, 32, PrivateKey::generate());
    device.private_keys.clear();
    let mut peers = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let context = || format!("config line {}: {line}", line_no + 1);
        match words.as_slice() {
            [] => {}
            [comment, ..] if comment.starts_with('#') => {}
            ["name", name] => device.name = name.to_string(),
            ["address", range] => {
                (device.address, device.prefix_len) = parse_range(range).with_context(context)?
            }
            ["listen_port", port] => device.listen_port = port.parse().with_context(context)?,
            ["mtu", mtu] => device.mtu = mtu.parse().with_context(context)?,
            ["private_key", key] => device
                .private_keys
                .push(PrivateKey::from_base64(key).with_context(context)?),
            ["peer", label, keys, ranges, endpoint, keepalive] => peers
                .push(parse_peer(label, keys, ranges, endpoint, keepalive).with_context(context)?),
            _ => bail!("{}: not understood", context()),
        }
    }
    Ok(NodeConfig { device, peers })
}

fn parse_range(text: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (address, len) = text.split_once('/').context("want ADDRESS/LEN")?;
    Ok((address.parse()?, len.parse()?))
}

fn parse_peer(
    label: &str,
    keys: &str,
    ranges: &str,
    endpoint: &str,
    keepalive: &str,
) -> anyhow::Result<PeerConfig> {
    Ok(PeerConfig {
        label: label.to_string(),
        public_keys: keys
            .split(',')
            .map(PublicKey::from_base64)
            .collect::<Result<_, _>>()?,
        allowed_ips: ranges
            .split(',')
            .map(parse_range)
            .collect::<Result<_, _>>()?,
        endpoint: match endpoint {
            "-" => None,
            endpoint => Some(endpoint.parse()?),
        },
        persistent_keepalive: match keepalive {
            "-" => None,
            seconds => Some(seconds.parse()?),
        },
    })
}

fn run(config_path: &Path) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(config_path).context("read config")?;
    let config = parse_config(&text)?;
    let device = Device::start(config.device).context("start device")?;
    device.set_peers(config.peers).context("set peers")?;
    let mut stats_path = PathBuf::from(config_path);
    stats_path.as_mut_os_string().push(".stats");
    let mut applied = tag_of(&text);
    loop {
        std::thread::sleep(POLL_INTERVAL);
        write_stats(&device, &stats_path, &applied)?;
        let Ok(new_text) = std::fs::read_to_string(config_path) else {
            continue;
        };
        if new_text == text {
            continue;
        }
        text = new_text;
        match parse_config(&text) {
            Ok(config) => {
                apply(&device, config);
                applied = tag_of(&text);
            }
            // A test may be halfway through writing the file; the next poll sees the rest.
            Err(error) => eprintln!("config not applied: {error:#}"),
        }
    }
}

/// A config's first line when it is a comment: what the stats name as the applied config.
fn tag_of(text: &str) -> String {
    text.lines()
        .next()
        .filter(|line| line.starts_with('#'))
        .unwrap_or("")
        .to_string()
}

fn apply(device: &Device, config: NodeConfig) {
    if let Err(error) = device.set_private_keys(config.device.private_keys) {
        eprintln!("private keys not applied: {error}");
    }
    if let Err(error) = device.set_peers(config.peers) {
        eprintln!("peers not applied: {error}");
    }
}

fn write_stats(device: &Device, path: &Path, applied: &str) -> anyhow::Result<()> {
    let stats = device.stats();
    let mut text = format!(
        "applied {applied}\nlisten_port {}\ninvalid {}\n",
        stats.listen_port, stats.invalid_packets
    );
    for peer in &stats.peers {
        let endpoint = peer.endpoint.map_or("-".to_string(), |e| e.to_string());
        text.push_str(&format!(
            "peer {} {} handshakes={} rx={} tx={} endpoint={endpoint}\n",
            peer.label, peer.public_key, peer.handshakes_completed, peer.rx_bytes, peer.tx_bytes
        ));
    }
    let mut temp = path.to_path_buf();
    temp.as_mut_os_string().push(".tmp");
    std::fs::write(&temp, text).context("write stats")?;
    std::fs::rename(&temp, path).context("rename stats")
}

fn echo_server(address: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address).context("bind echo server")?;
    for stream in listener.incoming() {
        let mut stream = stream.context("accept")?;
        std::thread::spawn(move || {
            let mut reader = stream.try_clone().expect("clone a tcp stream");
            let _ = std::io::copy(&mut reader, &mut stream);
        });
    }
    Ok(())
}

fn echo_client(address: SocketAddr, n_bytes: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(5)).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let sent: Vec<u8> = (0..n_bytes).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = stream.try_clone()?;
    let to_send = sent.clone();
    let writing = std::thread::spawn(move || {
        let result = writer.write_all(&to_send);
        let _ = writer.shutdown(std::net::Shutdown::Write);
        result
    });
    let mut received = Vec::with_capacity(n_bytes);
    stream.read_to_end(&mut received).context("read echo")?;
    writing.join().expect("writer thread")?;
    if received != sent {
        bail!(
            "echo differs: sent {} bytes, got {}",
            sent.len(),
            received.len()
        );
    }
    println!("ok {n_bytes} bytes in {:?}", started.elapsed());
    Ok(())
}
