//! Warren's overlay network: a userspace WireGuard interface on a TUN device.
//!
//! The agent hands this crate our keys ([`DeviceConfig`]) and a peer list ([`PeerConfig`]);
//! [`Device`] runs the interface until dropped and takes new peers and keys while traffic
//! flows ([`Device::set_peers`], [`Device::set_private_keys`]). boringtun's Noise core
//! (`noise::Tunn`, one per pair of our key and a peer key) does the cryptography; the data
//! path around it is ours, because boringtun's own `device` module cannot change a peer in
//! place, drops every session on a key change and takes over SIGINT/SIGTERM.
//!
//! Modules: [`keys`] (keys and the key file), `config` (what the agent passes in and its
//! checks), `plan` (the pure decisions: which peer is which after an update, endpoint roaming,
//! which tunnel carries traffic), `allowed_ips` (longest-prefix routes), `table` (the runtime
//! peer table the data path reads), `datapath` (three OS threads: `outbound` TUN to UDP,
//! `inbound` UDP to TUN, `timers`; `udp` holds the socket offloads), `device` (start, update,
//! stats, shutdown) and `wg_config` (the `wg` text format for operators and interop).
//!
//! Boundary and invariants:
//! - This is the only crate in the workspace that names boringtun, and it knows nothing of
//!   Raft, gossip or Warren's views: it takes finished keys and peers. The agent decides
//!   who the peers are; this crate only carries packets to them.
//! - It never reads the environment or argv, never prints, and never installs signal
//!   handlers.
//! - It never panics on a datagram: bad packets (garbage, unknown keys or indexes, replays,
//!   inner sources outside the sender's allowed IPs) are counted in
//!   [`DeviceStats::invalid_packets`] and dropped.
//! - No logging per packet: logs are per handshake, per config change or per fallback.
//!   No allocation per packet: buffers are allocated once per thread; the only allocations in
//!   the data path are nix's control-message buffer, once per UDP GSO send of up to 64
//!   datagrams, and boringtun's copy of a packet queued while a handshake runs.
//! - No `unsafe`: the TUN ioctls are tun-rs's, the socket calls nix's.

#![warn(missing_docs)]

pub mod keys;

mod allowed_ips;
mod config;
mod datapath;
mod device;
mod plan;
mod table;
mod wg_config;

pub use config::{
    ConfigError, DEFAULT_INTERFACE_NAME, DEFAULT_MTU, DeviceConfig, MAX_ALLOWED_IPS_PER_PEER,
    MAX_INTERFACE_NAME_LEN, MAX_MTU, MAX_PEER_PUBLIC_KEYS, MAX_PEERS, MAX_PRIVATE_KEYS, MIN_MTU,
    PeerConfig, validate_peers,
};
pub use device::{Device, DeviceError, DeviceStats, PeerStats};
pub use keys::{PrivateKey, PublicKey};
pub use plan::ENDPOINT_STALE_AFTER;
pub use wg_config::{wg_config, wg_setconf_config};

/// The TUN clone device.
const TUN_PATH: &str = "/dev/net/tun";
/// CAP_NET_ADMIN's bit in the capability sets.
const CAP_NET_ADMIN_BIT: u32 = 12;

/// Whether this process can create a TUN device: `/dev/net/tun` opens and the process has
/// CAP_NET_ADMIN. What `--wireguard auto` asks.
///
/// # Errors
/// One line saying what is missing.
pub fn tun_available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(|error| format!("cannot open {TUN_PATH}: {error}"))?;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|error| format!("cannot read /proc/self/status: {error}"))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| "no CapEff line in /proc/self/status".to_string())?;
    if effective & (1 << CAP_NET_ADMIN_BIT) == 0 {
        return Err("the process lacks CAP_NET_ADMIN".to_string());
    }
    Ok(())
}
