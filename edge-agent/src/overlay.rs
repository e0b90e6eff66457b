//! The WireGuard overlay on this node: its keys, its device (`warren-wireguard` on a TUN
//! interface, `warren0` by default), and its peers, fed from the view — the cached one until
//! control is reached, so the overlay comes up after an offline reboot with no control plane.
//!
//! - `keys`: the private keys on disk and the rotation's steps.
//! - `peers`: the peer set a view implies (a pure function).
//!
//! What the node declares of itself (its keys, its endpoint) goes up the link
//! ([`warren_api::wire::AgentToControl::Mesh`]); control records it in the registry, and peers
//! learn it from their views. Without a TUN device (no root, `warren dev`) the overlay is off,
//! said once, and nothing else changes.
//!
//! Must never: trust a peer that the registry (the view) does not list with a key; let a
//! private key leave the box; stop workloads because the overlay cannot start.

pub mod keys;
pub mod peers;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntGauge, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_api::NodeView;
use warren_api::wire::{MAX_MESH_PEERS, MeshDeclaration, MeshPeerReport};
use warren_wireguard::{Device, DeviceConfig};

use self::keys::KeyRing;

/// The interface name unless `--wg-interface` says otherwise.
pub const DEFAULT_INTERFACE: &str = "warren0";
/// The UDP port unless `--wg-port` says otherwise (WireGuard's usual port).
pub const DEFAULT_PORT: u16 = 51820;
/// Keepalive towards every peer, so that boxes behind NAT stay reachable.
pub const KEEPALIVE_SECS: u16 = 25;
/// How long both keys are answered to after the registry recorded a rotation's next key,
/// before the node initiates with it: time for every connected peer's view to carry it.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(10);
/// How long after a failed start the device is tried again.
const START_RETRY: Duration = Duration::from_secs(30);
/// How often the device's counters are read into metrics and status.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Whether the node runs the overlay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlayMode {
    /// Always; a node that cannot make a TUN device says why and keeps retrying.
    On,
    /// Never.
    Off,
    /// When the node can make a TUN device (root, `/dev/net/tun`); off otherwise, said once.
    #[default]
    Auto,
}

/// The overlay's settings, kept in `<data dir>/wireguard/settings.json` from the join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySettings {
    /// On, off, or auto.
    pub mode: OverlayMode,
    /// The TUN interface's name.
    pub interface: String,
    /// The UDP port WireGuard listens on (all addresses).
    pub port: u16,
    /// The endpoint peers send to, registered with control. `None`: the IP of the advertised
    /// gossip address with `port`.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Roll the key this often (`None`: only when an operator asks, `warren node rotate-key`).
    #[serde(default)]
    pub rotate_every_secs: Option<u64>,
}

impl Default for OverlaySettings {
    fn default() -> Self {
        OverlaySettings {
            mode: OverlayMode::Auto,
            interface: DEFAULT_INTERFACE.to_owned(),
            port: DEFAULT_PORT,
            advertise: None,
            rotate_every_secs: None,
        }
    }
}

impl OverlaySettings {
    /// The settings file in a data dir.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("wireguard").join("settings.json")
    }

    /// The settings kept in `data_dir`, if any.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed (a line that names it).
    pub fn load(data_dir: &Path) -> Result<Option<OverlaySettings>, String> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Keeps the settings in `data_dir` for the next `agent run`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// What the overlay is doing, for `agent status` and control.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    /// `off`, `starting`, `up` or `error`.
    pub state: String,
    /// Why it is off or failing.
    pub reason: Option<String>,
    /// The interface, once up.
    pub interface: Option<String>,
    /// This node's overlay address, once allocated.
    pub address: Option<Ipv4Addr>,
    /// The UDP port it listens on, once up.
    pub listen_port: Option<u16>,
    /// The key it initiates with (base64).
    pub public_key: Option<String>,
    /// Each peer: name, endpoint, last handshake, bytes.
    pub peers: Vec<OverlayPeerStatus>,
}

impl OverlayStatus {
    /// The peers as the agent reports them to control at `now_ms`.
    pub fn peer_report(&self, now_ms: u64) -> Vec<MeshPeerReport> {
        self.peers
            .iter()
            .take(MAX_MESH_PEERS)
            .map(|p| MeshPeerReport {
                name: p.name.clone(),
                endpoint: p.endpoint.clone(),
                last_handshake_ms: p.last_handshake_ms,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                up: handshake_fresh(p.last_handshake_ms, now_ms),
            })
            .collect()
    }

    /// What of the peers is worth telling control at once: who they are, where they are, and
    /// whether each had a handshake in the last 3 minutes at `now_ms`. Counters alone wait.
    pub fn peer_shape(&self, now_ms: u64) -> Vec<(String, Option<String>, bool)> {
        self.peers
            .iter()
            .map(|p| {
                let fresh = handshake_fresh(p.last_handshake_ms, now_ms);
                (p.name.clone(), p.endpoint.clone(), fresh)
            })
            .collect()
    }
}

/// Whether a peer's last handshake (unix ms) is less than 3 minutes old at `now_ms`: a live
/// tunnel re-keys every 2 minutes.
fn handshake_fresh(last_handshake_ms: Option<u64>, now_ms: u64) -> bool {
    last_handshake_ms.is_some_and(|at| now_ms.saturating_sub(at) < 180_000)
}

/// One peer of the overlay as the device sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPeerStatus {
    /// The peer node's name.
    pub name: String,
    /// Where packets to it go now.
    pub endpoint: Option<String>,
    /// When the last handshake completed, unix millis.
    pub last_handshake_ms: Option<u64>,
    /// Inner bytes received from it.
    pub rx_bytes: u64,
    /// Inner bytes sent to it.
    pub tx_bytes: u64,
}

/// The overlay's metrics (`warren_wg_*`), in the agent's registry (node and site labels).
#[derive(Clone, Debug)]
pub struct OverlayMetrics {
    up: IntGauge,
    peers: IntGauge,
    peers_up: IntGauge,
    handshakes: FollowedCounter,
    rx_bytes: FollowedCounter,
    tx_bytes: FollowedCounter,
    last_handshake_age: IntGauge,
    invalid_packets: FollowedCounter,
}

/// A counter that follows a running total read from elsewhere (the WireGuard device's sums
/// over its current peers), advancing by what the total grew since the last reading. The
/// total falls when a peer leaves or the device restarts; the counter does not (a Prometheus
/// counter never goes down), and counts the growth from the new, lower total on.
#[derive(Clone, Debug)]
struct FollowedCounter {
    counter: IntCounter,
    last_total: Arc<AtomicU64>,
}

impl FollowedCounter {
    fn follow(&self, total: u64) {
        let last = self.last_total.swap(total, Ordering::Relaxed);
        self.counter.inc_by(total.saturating_sub(last));
    }
}

impl OverlayMetrics {
    /// Registers the metrics in `registry`.
    ///
    /// # Panics
    /// If they are registered twice in one registry (a programming error).
    pub fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("registered once");
            FollowedCounter {
                counter,
                last_total: Arc::default(),
            }
        };
        OverlayMetrics {
            up: gauge(
                "warren_wg_up",
                "1 when the WireGuard overlay's device is up.",
            ),
            peers: gauge("warren_wg_peers", "WireGuard peers the registry lists."),
            peers_up: gauge(
                "warren_wg_peers_up",
                "WireGuard peers with a handshake in the last 3 minutes.",
            ),
            handshakes: counter(
                "warren_wg_handshakes_total",
                "WireGuard handshakes completed since this process started.",
            ),
            rx_bytes: counter(
                "warren_wg_received_bytes_total",
                "Bytes received through the overlay since this process started.",
            ),
            tx_bytes: counter(
                "warren_wg_sent_bytes_total",
                "Bytes sent through the overlay since this process started.",
            ),
            last_handshake_age: gauge(
                "warren_wg_oldest_handshake_age_seconds",
                "Age of the oldest last handshake among peers that ever completed one.",
            ),
            invalid_packets: counter(
                "warren_wg_invalid_packets_total",
                "Datagrams dropped as invalid: garbage, unknown keys, replays, spoofed sources.",
            ),
        }
    }
}

/// What the overlay task is given.
#[derive(Debug)]
pub struct Overlay {
    /// Its settings.
    pub settings: OverlaySettings,
    /// `<data dir>/wireguard`: keys.
    pub dir: PathBuf,
    /// The IP peers reach this node at, for the default endpoint (the advertised gossip IP).
    pub advertise_ip: Option<IpAddr>,
    /// The desired state (the cached view until control is reached).
    pub views: watch::Receiver<Option<Arc<NodeView>>>,
    /// The gossip membership: where registered peers say their WireGuard port is now.
    pub gossip: watch::Receiver<Vec<warren_mesh::Member>>,
    /// Where the node's declaration goes, for the link to send.
    pub declaration: watch::Sender<Option<MeshDeclaration>>,
    /// What the overlay is doing.
    pub status: watch::Sender<OverlayStatus>,
    /// `warren_wg_*`.
    pub metrics: OverlayMetrics,
}

impl Overlay {
    /// Runs the overlay until `cancel`; the interface goes with it.
    pub async fn run(self, cancel: CancellationToken) {
        if let Some(reason) = self.why_off() {
            info!("WireGuard overlay off: {reason}");
            self.set_status("off", Some(reason));
            return;
        }
        let ring = match KeyRing::open(&self.dir) {
            Ok(ring) => ring,
            Err(error) => {
                let reason = format!("cannot load this node's WireGuard key: {error}");
                warn!("{reason}; the overlay stays off");
                self.set_status("error", Some(reason));
                return;
            }
        };
        let mut running = Running {
            overlay: self,
            ring,
            device: None,
            overlap_since: None,
            last_rotation: Instant::now(),
            next_start: Instant::now(),
            start_failures: 0,
        };
        running.serve(cancel).await;
    }

    /// Why the overlay does not run here, if it does not.
    fn why_off(&self) -> Option<String> {
        match self.settings.mode {
            OverlayMode::Off => Some("--wireguard off".to_owned()),
            OverlayMode::On => None,
            OverlayMode::Auto => warren_wireguard::tun_available().err().map(|why| {
                format!("{why} (--wireguard auto; run as root with /dev/net/tun for the overlay)")
            }),
        }
    }

    fn set_status(&self, state: &str, reason: Option<String>) {
        self.status.send_modify(|s| {
            s.state = state.to_owned();
            s.reason = reason;
        });
    }
}

/// The overlay while it runs: its keys and, once the view gives an address, its device.
struct Running {
    overlay: Overlay,
    ring: KeyRing,
    device: Option<Device>,
    /// When the registry was first seen holding this node's next key.
    overlap_since: Option<Instant>,
    last_rotation: Instant,
    /// When the device may be tried again after it failed to start.
    next_start: Instant,
    /// Starts that failed in a row (the first is a warning, the rest are quieter).
    start_failures: u32,
}

impl Running {
    async fn serve(&mut self, cancel: CancellationToken) {
        let mut views = self.overlay.views.clone();
        let mut gossip = self.overlay.gossip.clone();
        let mut tick = tokio::time::interval(STATS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let view = views.borrow_and_update().clone();
            let members = gossip.borrow_and_update().clone();
            if let Some(view) = view {
                self.follow(&view, &members);
            }
            let gossip_changed = async {
                if gossip.changed().await.is_err() {
                    // No gossip (a node without a mesh): only views matter.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = views.changed() => if changed.is_err() { break },
                () = gossip_changed => {}
                _ = tick.tick() => {
                    self.publish_stats();
                    self.rotate_on_schedule();
                }
            }
        }
        if self.device.take().is_some() {
            info!(interface = %self.overlay.settings.interface, "WireGuard overlay down");
        }
        self.overlay.metrics.up.set(0);
    }

    /// Brings the device in line with `view`: up once the view gives an address, peers as the
    /// registry lists them (at the endpoints gossip says, where it is believed), and the
    /// rotation's next step if the registry caught up.
    fn follow(&mut self, view: &NodeView, members: &[warren_mesh::Member]) {
        let Some(own) = &view.mesh else {
            if self.device.is_none() {
                self.overlay.set_status(
                    "starting",
                    Some("waiting for an overlay address from control".into()),
                );
                // A node registered before the overlay existed gets its address when it
                // declares a key.
                self.declare();
            }
            return;
        };
        if self.device.is_none() && Instant::now() >= self.next_start {
            self.start_device(own.address, own.range.prefix);
        }
        if own.rotations_requested > self.ring.rotations_handled() {
            info!("an operator asked this node to roll its WireGuard key");
            self.ring.note_rotations_handled(own.rotations_requested);
            self.begin_rotation();
        }
        self.step_rotation(own.public_key, own.next_public_key);
        let Some(device) = &self.device else { return };
        let peers = peers::peer_configs(view, members, Some(KEEPALIVE_SECS));
        self.overlay.metrics.peers.set(peers.len() as i64);
        if let Err(error) = device.set_peers(peers) {
            warn!(error = %error, "cannot apply the overlay's peers");
        }
    }

    fn start_device(&mut self, address: Ipv4Addr, prefix_len: u8) {
        let settings = &self.overlay.settings;
        let mut config = DeviceConfig::new(address, prefix_len, self.ring.device_keys()[0].clone());
        config.name = settings.interface.clone();
        config.listen_port = settings.port;
        config.private_keys = self.ring.device_keys();
        match Device::start(config) {
            Ok(device) => {
                info!(interface = %settings.interface, address = %address, port = device.listen_addr().port(), "WireGuard overlay up");
                self.overlay.metrics.up.set(1);
                self.overlay.status.send_modify(|s| {
                    s.state = "up".into();
                    s.reason = None;
                    s.interface = Some(settings.interface.clone());
                    s.address = Some(address);
                    s.listen_port = Some(device.listen_addr().port());
                });
                self.device = Some(device);
                self.start_failures = 0;
                // Only a node whose device runs is worth a peer's handshakes.
                self.declare();
            }
            Err(error) => {
                let reason = format!("cannot start interface {}: {error}", settings.interface);
                if self.start_failures == 0 {
                    warn!("{reason}; retrying every {}s", START_RETRY.as_secs());
                } else {
                    tracing::debug!("{reason}");
                }
                self.start_failures += 1;
                self.next_start = Instant::now() + START_RETRY;
                self.overlay.set_status("error", Some(reason));
            }
        }
    }

    /// What the node declares to control: its keys and its endpoint.
    fn declare(&self) {
        let settings = &self.overlay.settings;
        let endpoint = settings.advertise.or_else(|| {
            self.overlay
                .advertise_ip
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| SocketAddr::new(ip, settings.port))
        });
        let declaration = Some(MeshDeclaration {
            public_key: self.ring.current_public().0,
            next_public_key: self.ring.next_public().map(|k| k.0),
            endpoint: endpoint.map(|e| e.to_string()),
        });
        self.overlay.status.send_modify(|s| {
            s.public_key = Some(self.ring.current_public().to_base64());
        });
        // Sent again only when it changed: each change goes up the link once.
        self.overlay.declaration.send_if_modified(|held| {
            let changed = *held != declaration;
            if changed {
                *held = declaration;
            }
            changed
        });
    }

    fn begin_rotation(&mut self) {
        match self.ring.begin_rotation() {
            Ok(true) => {
                info!(
                    "rolling this node's WireGuard key: the next key is declared, both are answered to"
                );
                self.last_rotation = Instant::now();
                self.apply_keys();
                self.declare();
            }
            Ok(false) => info!("a WireGuard key rotation is already under way"),
            Err(error) => warn!(error = %error, "cannot start a WireGuard key rotation"),
        }
    }

    fn rotate_on_schedule(&mut self) {
        if let Some(every) = self.overlay.settings.rotate_every_secs
            && self.last_rotation.elapsed() >= Duration::from_secs(every)
        {
            self.begin_rotation();
        }
    }

    /// The rotation's next step, given what the registry holds for this node.
    fn step_rotation(&mut self, registered: Option<[u8; 32]>, registered_next: Option<[u8; 32]>) {
        let next = self.ring.next_public().map(|k| k.0);
        if next.is_some() && registered_next == next {
            let since = *self.overlap_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= ROTATION_OVERLAP {
                match self.ring.promote() {
                    Ok(_) => {
                        info!(
                            "this node now initiates with its new WireGuard key; the old one is answered to until the registry drops it"
                        );
                        self.overlap_since = None;
                        self.apply_keys();
                        self.declare();
                    }
                    Err(error) => warn!(error = %error, "cannot save the new WireGuard key"),
                }
            }
        } else if registered == Some(self.ring.current_public().0)
            && registered_next.is_none()
            && self.ring.retire()
        {
            info!("WireGuard key rotation done: the old key is retired");
            self.apply_keys();
        }
    }

    fn apply_keys(&self) {
        if let Some(device) = &self.device
            && let Err(error) = device.set_private_keys(self.ring.device_keys())
        {
            warn!(error = %error, "cannot give the overlay its keys");
        }
    }

    fn publish_stats(&self) {
        let Some(device) = &self.device else { return };
        let stats = device.stats();
        let now_ms = warren_api::clock::unix_now_ms();
        let age = |at: SystemTime| Duration::from_millis(now_ms.saturating_sub(unix_ms(at)));
        let metrics = &self.overlay.metrics;
        let fresh = stats
            .peers
            .iter()
            .filter(|p| {
                p.last_handshake
                    .is_some_and(|at| age(at) < Duration::from_secs(180))
            })
            .count();
        metrics.peers_up.set(fresh as i64);
        let sum =
            |f: fn(&warren_wireguard::PeerStats) -> u64| stats.peers.iter().map(f).sum::<u64>();
        metrics.handshakes.follow(sum(|p| p.handshakes_completed));
        metrics.rx_bytes.follow(sum(|p| p.rx_bytes));
        metrics.tx_bytes.follow(sum(|p| p.tx_bytes));
        metrics.invalid_packets.follow(stats.invalid_packets);
        let oldest = stats
            .peers
            .iter()
            .filter_map(|p| p.last_handshake)
            .map(age)
            .max();
        metrics
            .last_handshake_age
            .set(oldest.map_or(0, |d| d.as_secs() as i64));
        let peers = stats
            .peers
            .iter()
            .map(|p| OverlayPeerStatus {
                name: p.label.clone(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                last_handshake_ms: p.last_handshake.map(unix_ms),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect();
        self.overlay.status.send_modify(|s| s.peers = peers);
    }
}

/// A time the device recorded, as unix millis.
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device's sums fall when a peer leaves or the device restarts: the counter keeps
    /// what it counted and goes on from the lower total.
    #[test]
    fn a_followed_total_that_falls_does_not_take_the_counter_down() {
        let followed = FollowedCounter {
            counter: IntCounter::new("bytes_total", "test").expect("valid metric"),
            last_total: Arc::default(),
        };
        for total in [10, 25, 5, 8] {
            followed.follow(total);
        }
        assert_eq!(followed.counter.get(), 28);
    }
}
