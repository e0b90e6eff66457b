//! What the agent hands the device: our interface and keys ([`DeviceConfig`]) and the peers
//! ([`PeerConfig`]), with the checks that make them safe to apply.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use crate::keys::{PrivateKey, PublicKey};

/// The interface name the agent uses unless told otherwise.
pub const DEFAULT_INTERFACE_NAME: &str = "warren0";
/// The default MTU: 1500 less WireGuard's 80 bytes of IPv6 + UDP + WireGuard overhead.
pub const DEFAULT_MTU: u16 = 1420;
/// Smallest MTU accepted (IPv4's minimum datagram size).
pub const MIN_MTU: u16 = 576;
/// Largest MTU accepted: a 1500-byte link less 80 bytes of overhead would be 1420; jumbo links
/// may go higher, up to what our fixed packet buffers hold.
pub const MAX_MTU: u16 = 9000;
/// Longest interface name Linux accepts (IFNAMSIZ less the NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;
/// How many of our own private keys may be live at once: the current one and one being
/// rotated out.
pub const MAX_PRIVATE_KEYS: usize = 2;
/// How many public keys one peer may have at once: its current one and its next.
pub const MAX_PEER_PUBLIC_KEYS: usize = 2;
/// Most peers one device takes.
pub const MAX_PEERS: usize = 4096;
/// Most allowed-IP ranges one peer may have.
pub const MAX_ALLOWED_IPS_PER_PEER: usize = 64;

/// Our side of the WireGuard interface.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Interface name; [`DEFAULT_INTERFACE_NAME`] by default.
    pub name: String,
    /// Our overlay address.
    pub address: Ipv4Addr,
    /// Prefix length of the whole overlay range (e.g. 16): the kernel routes that range
    /// through the interface.
    pub prefix_len: u8,
    /// UDP port to listen on; 0 picks an ephemeral port.
    pub listen_port: u16,
    /// Interface MTU; [`DEFAULT_MTU`] by default.
    pub mtu: u16,
    /// Our private keys: `[0]` is the one we initiate with; the others are still accepted for
    /// inbound handshakes while a key rotation overlaps.
    pub private_keys: Vec<PrivateKey>,
}

/// One peer as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// A name for logs and stats, such as the node's name.
    pub label: String,
    /// The peer's public keys: one normally, two while it rotates (old first, new last).
    /// Both are accepted; outbound traffic prefers the later key once it has a session.
    pub public_keys: Vec<PublicKey>,
    /// Ranges routed to this peer and accepted as source addresses from it.
    pub allowed_ips: Vec<(Ipv4Addr, u8)>,
    /// Where to reach the peer first; an authenticated packet from elsewhere moves it.
    pub endpoint: Option<SocketAddr>,
    /// Seconds between keepalives when the link is idle, to hold NAT mappings open.
    pub persistent_keepalive: Option<u16>,
}

/// Why a configuration cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No private key was given.
    #[error("no private key: at least one is needed")]
    NoPrivateKey,
    /// More private keys than [`MAX_PRIVATE_KEYS`].
    #[error("{0} private keys given, at most {MAX_PRIVATE_KEYS} are accepted")]
    TooManyPrivateKeys(usize),
    /// The interface name is empty or too long.
    #[error("interface name {0:?} must be 1 to {MAX_INTERFACE_NAME_LEN} characters")]
    InterfaceName(String),
    /// The MTU is outside [`MIN_MTU`]..=[`MAX_MTU`].
    #[error("mtu {0} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(u16),
    /// A prefix length is over 32.
    #[error("{field}: prefix length {prefix_len} is over 32")]
    PrefixLen {
        /// Which field holds it.
        field: String,
        /// The bad length.
        prefix_len: u8,
    },
    /// More peers than [`MAX_PEERS`].
    #[error("{0} peers given, at most {MAX_PEERS} are accepted")]
    TooManyPeers(usize),
    /// A peer has no key, or more than [`MAX_PEER_PUBLIC_KEYS`].
    #[error("peer {label}: {count} public keys, want 1 to {MAX_PEER_PUBLIC_KEYS}")]
    PeerKeyCount {
        /// The peer.
        label: String,
        /// How many keys it has.
        count: usize,
    },
    /// A peer has more than [`MAX_ALLOWED_IPS_PER_PEER`] ranges.
    #[error("peer {label}: {count} allowed-IP ranges, at most {MAX_ALLOWED_IPS_PER_PEER}")]
    TooManyAllowedIps {
        /// The peer.
        label: String,
        /// How many ranges it has.
        count: usize,
    },
    /// One public key is listed twice (in one peer or two).
    #[error("peer {label}: public key {key} is listed more than once")]
    DuplicateKey {
        /// The peer where it was seen the second time.
        label: String,
        /// The key.
        key: PublicKey,
    },
    /// One range is routed to two peers.
    #[error("peer {label}: allowed IP {network}/{prefix_len} is already another peer's")]
    DuplicateAllowedIp {
        /// The peer where it was seen the second time.
        label: String,
        /// The range's network address.
        network: Ipv4Addr,
        /// The range's prefix length.
        prefix_len: u8,
    },
    /// The endpoint is IPv6; the device's socket is IPv4.
    #[error("peer {label}: endpoint {endpoint} is not IPv4")]
    EndpointNotIpv4 {
        /// The peer.
        label: String,
        /// The endpoint.
        endpoint: SocketAddr,
    },
}

impl DeviceConfig {
    /// A configuration with the default name and MTU and an ephemeral port.
    pub fn new(address: Ipv4Addr, prefix_len: u8, private_key: PrivateKey) -> DeviceConfig {
        DeviceConfig {
            name: DEFAULT_INTERFACE_NAME.to_string(),
            address,
            prefix_len,
            listen_port: 0,
            mtu: DEFAULT_MTU,
            private_keys: vec![private_key],
        }
    }

    /// Checks the fields and their relations.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.len() > MAX_INTERFACE_NAME_LEN {
            return Err(ConfigError::InterfaceName(self.name.clone()));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        check_prefix_len("prefix_len", self.prefix_len)?;
        validate_private_keys(&self.private_keys)
    }
}

/// Checks a list of our private keys.
pub(crate) fn validate_private_keys(keys: &[PrivateKey]) -> Result<(), ConfigError> {
    match keys.len() {
        0 => Err(ConfigError::NoPrivateKey),
        n if n > MAX_PRIVATE_KEYS => Err(ConfigError::TooManyPrivateKeys(n)),
        _ => Ok(()),
    }
}

/// Checks a peer list: bounds, keys and ranges each belong to one peer, IPv4 endpoints.
///
/// # Errors
/// The first [`ConfigError`] found.
pub fn validate_peers(peers: &[PeerConfig]) -> Result<(), ConfigError> {
    if peers.len() > MAX_PEERS {
        return Err(ConfigError::TooManyPeers(peers.len()));
    }
    let mut keys_seen = HashSet::new();
    let mut ranges_seen = HashSet::new();
    for peer in peers {
        let label = || peer.label.clone();
        let count = peer.public_keys.len();
        if count == 0 || count > MAX_PEER_PUBLIC_KEYS {
            return Err(ConfigError::PeerKeyCount {
                label: label(),
                count,
            });
        }
        if peer.allowed_ips.len() > MAX_ALLOWED_IPS_PER_PEER {
            let count = peer.allowed_ips.len();
            return Err(ConfigError::TooManyAllowedIps {
                label: label(),
                count,
            });
        }
        for key in &peer.public_keys {
            if !keys_seen.insert(*key) {
                return Err(ConfigError::DuplicateKey {
                    label: label(),
                    key: *key,
                });
            }
        }
        for &(address, prefix_len) in &peer.allowed_ips {
            check_prefix_len(&format!("peer {} allowed_ips", peer.label), prefix_len)?;
            let network = crate::allowed_ips::network(address, prefix_len);
            if !ranges_seen.insert((network, prefix_len)) {
                return Err(ConfigError::DuplicateAllowedIp {
                    label: label(),
                    network,
                    prefix_len,
                });
            }
        }
        if let Some(endpoint @ SocketAddr::V6(_)) = peer.endpoint {
            return Err(ConfigError::EndpointNotIpv4 {
                label: label(),
                endpoint,
            });
        }
    }
    Ok(())
}

fn check_prefix_len(field: &str, prefix_len: u8) -> Result<(), ConfigError> {
    if prefix_len > 32 {
        return Err(ConfigError::PrefixLen {
            field: field.to_string(),
            prefix_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(label: &str, key: PublicKey, range: (Ipv4Addr, u8)) -> PeerConfig {
        PeerConfig {
            label: label.to_string(),
            public_keys: vec![key],
            allowed_ips: vec![range],
            endpoint: None,
            persistent_keepalive: None,
        }
    }

    #[test]
    fn overlapping_keys_and_ranges_are_refused() {
        let key = PrivateKey::generate().public_key();
        let other = PrivateKey::generate().public_key();
        let a = peer("a", key, (Ipv4Addr::new(10, 42, 1, 0), 24));
        let same_key = peer("b", key, (Ipv4Addr::new(10, 42, 2, 0), 24));
        let same_range = peer("b", other, (Ipv4Addr::new(10, 42, 1, 7), 24));
        assert!(validate_peers(std::slice::from_ref(&a)).is_ok());
        assert!(matches!(
            validate_peers(&[a.clone(), same_key]),
            Err(ConfigError::DuplicateKey { .. })
        ));
        assert!(matches!(
            validate_peers(&[a, same_range]),
            Err(ConfigError::DuplicateAllowedIp { .. })
        ));
    }

    #[test]
    fn device_config_bounds() {
        let mut config = DeviceConfig::new(Ipv4Addr::new(10, 42, 1, 1), 16, PrivateKey::generate());
        assert!(config.validate().is_ok());
        config.name = "a-name-that-is-too-long".to_string();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::InterfaceName(_))
        ));
        config.name = DEFAULT_INTERFACE_NAME.to_string();
        config.private_keys.clear();
        assert!(matches!(config.validate(), Err(ConfigError::NoPrivateKey)));
    }
}
