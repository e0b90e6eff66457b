//! [`Device`]: the TUN interface, the UDP socket and the data-path threads, and the calls that
//! change keys and peers while traffic flows.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use tun_rs::{DeviceBuilder, InterruptEvent, SyncDevice};

use crate::config::{self, ConfigError, DeviceConfig, PeerConfig};
use crate::datapath::{self, Shared};
use crate::keys::{PrivateKey, PublicKey};
use crate::plan::{self, PeerMatch};
use crate::table::{self, IndexAllocator, Table, lock};

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The configuration is not valid.
    #[error("invalid device configuration")]
    Config(#[from] ConfigError),
    /// The TUN interface could not be created or configured.
    #[error("create tun interface {name}")]
    Tun {
        /// The interface name.
        name: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("bind udp port {port}")]
    Bind {
        /// The port asked for.
        port: u16,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A data-path thread could not be started.
    #[error("start data path thread")]
    Spawn(#[source] io::Error),
}

/// A running WireGuard interface: a TUN device with our address, a UDP socket, and three
/// threads moving packets between them. Dropping it (or [`Device::shutdown`]) stops the
/// threads and removes the interface.
pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    listen_addr: SocketAddr,
    /// Serialises config changes; holds our keys and the index allocator.
    control: Mutex<Control>,
}

/// The body of one data-path thread.
type DataPathLoop = fn(&Shared);

struct Control {
    private_keys: Vec<PrivateKey>,
    indexes: IndexAllocator,
}

/// A snapshot of a device's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// The UDP port we listen on.
    pub listen_port: u16,
    /// One entry per configured peer, in config order.
    pub peers: Vec<PeerStats>,
    /// Datagrams dropped as invalid: garbage, unknown keys or indexes, failed
    /// authentication, replays, or a source address outside the peer's allowed IPs.
    pub invalid_packets: u64,
}

/// A snapshot of one peer's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's label.
    pub label: String,
    /// The peer key whose tunnel carries our outbound traffic.
    pub public_key: PublicKey,
    /// Where we send to the peer now.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake with the peer completed.
    pub last_handshake: Option<SystemTime>,
    /// Inner bytes received from the peer.
    pub rx_bytes: u64,
    /// Inner bytes sent to the peer.
    pub tx_bytes: u64,
    /// Handshakes completed with the peer, on any of its keys.
    pub handshakes_completed: u64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.shared.name)
            .field("listen_addr", &self.listen_addr)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Creates the TUN interface (address, prefix, MTU, up), binds the UDP socket and starts
    /// the data path, with no peers yet.
    ///
    /// # Errors
    /// [`DeviceError`] when the config is invalid, the interface cannot be created (no
    /// `/dev/net/tun`, no CAP_NET_ADMIN, name taken) or the port cannot be bound.
    pub fn start(config: DeviceConfig) -> Result<Device, DeviceError> {
        config.validate()?;
        let tun = create_tun(&config).map_err(|source| DeviceError::Tun {
            name: config.name.clone(),
            source,
        })?;
        let port = config.listen_port;
        let bind_error = |source| DeviceError::Bind { port, source };
        let udp =
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).map_err(bind_error)?;
        udp.set_read_timeout(Some(datapath::UDP_POLL_TIMEOUT))
            .map_err(bind_error)?;
        let listen_addr = udp.local_addr().map_err(bind_error)?;
        let mut indexes = IndexAllocator::new();
        let (table, _) = table::build(&Table::default(), &config.private_keys, &[], &mut indexes);
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            table: RwLock::new(Arc::new(table)),
            generation: AtomicU64::new(0),
            udp,
            tun,
            interrupt: InterruptEvent::new().map_err(DeviceError::Spawn)?,
            stop: AtomicBool::new(false),
            udp_gso: AtomicBool::new(true),
            invalid_packets: AtomicU64::new(0),
        });
        let mut device = Device {
            shared,
            threads: Vec::new(),
            listen_addr,
            control: Mutex::new(Control {
                private_keys: config.private_keys,
                indexes,
            }),
        };
        device.spawn_threads()?;
        let offload = device.shared.tun.tcp_gso();
        tracing::info!(interface = %config.name, address = %config.address, %listen_addr, offload, "wireguard device up");
        Ok(device)
    }

    fn spawn_threads(&mut self) -> Result<(), DeviceError> {
        let loops: [(&str, DataPathLoop); 3] = [
            ("wg-tun", datapath::run_tun_reader),
            ("wg-udp", datapath::run_udp_reader),
            ("wg-timer", datapath::run_timers),
        ];
        for (name, body) in loops {
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{}", self.shared.name))
                .spawn(move || body(&shared))
                .map_err(DeviceError::Spawn)?;
            self.threads.push(handle);
        }
        Ok(())
    }

    /// The address the UDP socket is bound to (port 0 in the config resolved).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Replaces the peer set atomically. Peers whose data is unchanged keep their sessions;
    /// a changed peer keeps the sessions of its key pairs that remain; a peer no longer listed
    /// is dropped at once, sessions and all, and its handshakes are refused.
    ///
    /// # Errors
    /// [`ConfigError`] when the list is invalid; the old peer set then stays.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), ConfigError> {
        config::validate_peers(&peers)?;
        let mut control = lock(&self.control);
        let old = self.shared.current_table();
        let control = &mut *control;
        let (table, matches) =
            table::build(&old, &control.private_keys, &peers, &mut control.indexes);
        self.shared.swap_table(table);
        log_peer_changes(&self.shared.name, &old, &peers, &matches);
        Ok(())
    }

    /// Replaces our private keys: `[0]` becomes the key we initiate with; inbound handshakes
    /// to any listed key are answered; sessions under a still-listed key are kept.
    ///
    /// # Errors
    /// [`ConfigError`] when the list is empty or too long; the old keys then stay.
    pub fn set_private_keys(&self, keys: Vec<PrivateKey>) -> Result<(), ConfigError> {
        config::validate_private_keys(&keys)?;
        let mut control = lock(&self.control);
        let old = self.shared.current_table();
        let control = &mut *control;
        let peers = old.peer_configs();
        let (table, _) = table::build(&old, &keys, &peers, &mut control.indexes);
        self.shared.swap_table(table);
        let current = keys[0].public_key();
        tracing::info!(interface = %self.shared.name, key = %current, n_keys = keys.len(), "private keys replaced");
        control.private_keys = keys;
        Ok(())
    }

    /// The device's counters now.
    pub fn stats(&self) -> DeviceStats {
        let table = self.shared.current_table();
        let peers = table
            .peers
            .iter()
            .map(|peer| {
                let live = &peer.live;
                let outbound = &peer.tunnels[peer.outbound.load(Ordering::Relaxed)];
                PeerStats {
                    label: peer.config.label.clone(),
                    public_key: outbound.their_public,
                    endpoint: live.endpoint().map(SocketAddr::V4),
                    last_handshake: lock(&live.last_handshake).map(|(_, at)| at),
                    rx_bytes: live.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: live.tx_bytes.load(Ordering::Relaxed),
                    handshakes_completed: live.handshakes_completed.load(Ordering::Relaxed),
                }
            })
            .collect();
        DeviceStats {
            listen_port: self.listen_addr.port(),
            peers,
            invalid_packets: self.shared.invalid_packets.load(Ordering::Relaxed),
        }
    }

    /// Stops the data path and removes the interface; the same as dropping the device.
    pub fn shutdown(self) {}

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Err(error) = self.shared.interrupt.trigger() {
            tracing::warn!(interface = %self.shared.name, %error, "cannot wake the tun thread");
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(interface = %self.shared.name, "a data path thread panicked");
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
        tracing::info!(interface = %self.shared.name, "wireguard device down");
    }
}

/// Creates the TUN interface with its address, prefix, MTU, up, and non-blocking (the data
/// path waits with tun-rs's interruptible poll). Offloads (TSO/GRO) are asked for first and
/// left out when the kernel refuses them.
fn create_tun(config: &DeviceConfig) -> io::Result<SyncDevice> {
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(&config.name)
            .ipv4(config.address, config.prefix_len, None::<Ipv4Addr>)
            .mtu(config.mtu)
            .offload(offload)
            .enable(true)
            .build_sync()
    };
    let tun = build(true).or_else(|error| {
        tracing::info!(interface = %config.name, %error, "tun offloads unavailable, creating without");
        build(false)
    })?;
    tun.set_nonblocking(true)?;
    Ok(tun)
}

fn log_peer_changes(interface: &str, old: &Table, new: &[PeerConfig], matches: &[PeerMatch]) {
    for (peer, found) in new.iter().zip(matches) {
        match found {
            PeerMatch::Added => tracing::info!(interface, peer = %peer.label, "peer added"),
            PeerMatch::Changed { .. } => {
                tracing::info!(interface, peer = %peer.label, "peer changed")
            }
            PeerMatch::Unchanged { .. } => {}
        }
    }
    for old_idx in plan::removed_peers(old.peers.len(), matches) {
        tracing::info!(interface, peer = %old.peers[old_idx].config.label, "peer removed");
    }
}
