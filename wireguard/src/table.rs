//! The runtime peer table the data path reads: our keys, each peer's tunnels (one boringtun
//! `Tunn` per pair of our key and their key), the routes, and the lookups by receiver index
//! and by public key. A table is immutable once built; a config change builds a new one that
//! takes over the tunnels (and so the sessions) of key pairs that are still there.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

use crate::allowed_ips::AllowedIps;
use crate::config::PeerConfig;
use crate::keys::{PrivateKey, PublicKey};
use crate::plan::{self, EndpointState, PeerMatch, TunnelView};

/// Handshake message checks per second per our key before cookies are demanded (WireGuard's
/// DoS defence). An inbound initiation is checked twice, once to find which of our keys it is
/// for and once inside the tunnel, so this lets about half as many handshakes through.
const HANDSHAKE_CHECKS_PER_SECOND: u64 = 100;

/// Receiver indexes are 24 bits: boringtun keeps the low 8 bits for its session counter.
const INDEX_MASK: u32 = 0x00ff_ffff;

/// Locks a mutex, ignoring poisoning: every value behind these locks stays valid even if a
/// holder panicked mid-way (counters, an endpoint, boringtun state that checks itself).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One of our private keys, in the forms the data path needs.
pub(crate) struct OurKey {
    pub(crate) public: PublicKey,
    pub(crate) secret: x25519::StaticSecret,
    pub(crate) x25519_public: x25519::PublicKey,
    /// Shared by every tunnel under this key, and by the check that finds the key.
    pub(crate) limiter: Arc<RateLimiter>,
}

impl OurKey {
    fn new(key: &PrivateKey) -> OurKey {
        let public = key.public_key();
        OurKey {
            public,
            secret: key.secret(),
            x25519_public: public.to_x25519(),
            limiter: Arc::new(RateLimiter::new(
                &public.to_x25519(),
                HANDSHAKE_CHECKS_PER_SECOND,
            )),
        }
    }
}

/// A WireGuard tunnel between one of our keys and one of a peer's keys.
pub(crate) struct Tunnel {
    /// Our 24-bit receiver index for this tunnel.
    pub(crate) index: u32,
    pub(crate) our_public: PublicKey,
    pub(crate) their_public: PublicKey,
    keepalive: Option<u16>,
    pub(crate) tunn: Mutex<Tunn>,
    /// When this tunnel last completed a handshake.
    pub(crate) last_handshake: Mutex<Option<Instant>>,
}

/// What a peer keeps across config changes: where it is and what it has done.
#[derive(Default)]
pub(crate) struct PeerLive {
    endpoint: Mutex<EndpointState>,
    /// `endpoint.current` packed for the per-packet read: IPv4 << 16 | port, bit 48 = set.
    endpoint_packed: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) handshakes_completed: AtomicU64,
    pub(crate) last_handshake: Mutex<Option<(Instant, SystemTime)>>,
}

const ENDPOINT_SET: u64 = 1 << 48;

fn pack(endpoint: Option<SocketAddr>) -> u64 {
    match endpoint {
        Some(SocketAddr::V4(v4)) => {
            ENDPOINT_SET | u64::from(u32::from(*v4.ip())) << 16 | u64::from(v4.port())
        }
        // Config validation admits IPv4 endpoints only; our socket is IPv4.
        _ => 0,
    }
}

impl PeerLive {
    /// Where to send this peer's packets now.
    #[inline]
    pub(crate) fn endpoint(&self) -> Option<SocketAddrV4> {
        let packed = self.endpoint_packed.load(Ordering::Relaxed);
        (packed & ENDPOINT_SET != 0).then(|| {
            let ip = (packed >> 16) as u32;
            SocketAddrV4::new(ip.into(), packed as u16)
        })
    }

    fn update_endpoint(&self, change: impl FnOnce(EndpointState) -> EndpointState) {
        let mut state = lock(&self.endpoint);
        *state = change(*state);
        self.endpoint_packed
            .store(pack(state.current), Ordering::Relaxed);
    }

    /// An authenticated packet arrived from `source`: roam there if it is new.
    #[inline]
    pub(crate) fn authenticated_from(&self, source: SocketAddrV4) {
        if self.endpoint() != Some(source) {
            self.update_endpoint(|state| state.authenticated_from(SocketAddr::V4(source)));
        }
    }

    /// Time since the last handshake with this peer, on any of its tunnels.
    pub(crate) fn since_handshake(&self) -> Option<Duration> {
        lock(&self.last_handshake).map(|(at, _)| at.elapsed())
    }

    /// The timer's turn: a quiet learned endpoint falls back to the configured one.
    pub(crate) fn tick_endpoint(&self) {
        let since = self.since_handshake();
        self.update_endpoint(|state| state.tick(since));
    }
}

/// A peer in one table.
pub(crate) struct Peer {
    pub(crate) config: PeerConfig,
    /// Tunnels in order: for each of our keys, for each of their keys.
    pub(crate) tunnels: Vec<Arc<Tunnel>>,
    /// Key positions of each tunnel: (ours, theirs).
    positions: Vec<(usize, usize)>,
    /// Which tunnel carries outbound traffic.
    pub(crate) outbound: AtomicUsize,
    pub(crate) live: Arc<PeerLive>,
}

impl Peer {
    /// What the outbound chooser needs to know of each tunnel.
    pub(crate) fn views(&self) -> Vec<TunnelView> {
        self.tunnels
            .iter()
            .zip(&self.positions)
            .map(|(tunnel, &(our_key_pos, their_key_pos))| TunnelView {
                our_key_pos,
                their_key_pos,
                has_session: lock(&tunnel.tunn).time_since_last_handshake().is_some(),
                since_handshake: lock(&tunnel.last_handshake).map(|at| at.elapsed()),
            })
            .collect()
    }

    /// Re-decides which tunnel carries outbound traffic; returns the views it decided on.
    pub(crate) fn refresh_outbound(&self) -> Vec<TunnelView> {
        let views = self.views();
        self.outbound
            .store(plan::choose_outbound(&views), Ordering::Relaxed);
        views
    }

    fn tunnel_position(&self, our: PublicKey, their: PublicKey) -> Option<usize> {
        self.tunnels
            .iter()
            .position(|t| t.our_public == our && t.their_public == their)
    }
}

/// Hands out 24-bit receiver indexes, never one in use.
#[derive(Debug)]
pub(crate) struct IndexAllocator {
    next: u32,
}

impl IndexAllocator {
    /// Starts at a random index so a restarted device does not reuse its predecessor's.
    pub(crate) fn new() -> IndexAllocator {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 4];
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        IndexAllocator {
            next: u32::from_le_bytes(bytes) & INDEX_MASK,
        }
    }

    fn allocate(&mut self, in_use: &HashSet<u32>) -> u32 {
        loop {
            let index = self.next;
            self.next = (self.next + 1) & INDEX_MASK;
            if !in_use.contains(&index) {
                return index;
            }
        }
    }
}

/// Everything the data path looks up, immutable once built.
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) our_keys: Vec<Arc<OurKey>>,
    pub(crate) peers: Vec<Arc<Peer>>,
    pub(crate) routes: AllowedIps<usize>,
    /// Receiver index to (peer, tunnel) positions.
    pub(crate) by_index: HashMap<u32, (usize, usize)>,
    /// Peer public key to peer position.
    pub(crate) by_key: HashMap<PublicKey, usize>,
}

impl Table {
    /// The peers' configs, in order.
    pub(crate) fn peer_configs(&self) -> Vec<PeerConfig> {
        self.peers.iter().map(|peer| peer.config.clone()).collect()
    }

    /// The (peer, tunnel) positions of the tunnel between `our` key and the peer's `their`.
    pub(crate) fn tunnel_for(&self, our: PublicKey, their: PublicKey) -> Option<(usize, usize)> {
        let peer_idx = *self.by_key.get(&their)?;
        let tunnel_idx = self.peers[peer_idx].tunnel_position(our, their)?;
        Some((peer_idx, tunnel_idx))
    }

    /// Our receiver index for a message's receiver field.
    #[inline]
    pub(crate) fn by_receiver(&self, receiver_idx: u32) -> Option<(usize, usize)> {
        self.by_index.get(&(receiver_idx >> 8)).copied()
    }
}

/// Builds the table for `our_keys` and `peers` from `old`, keeping every tunnel whose key pair
/// and keepalive are unchanged (so its sessions live on) and each surviving peer's endpoint
/// and counters. Returns the new table and how each new peer matched an old one.
pub(crate) fn build(
    old: &Table,
    our_keys: &[PrivateKey],
    peers: &[PeerConfig],
    indexes: &mut IndexAllocator,
) -> (Table, Vec<PeerMatch>) {
    let our_keys: Vec<Arc<OurKey>> = our_keys
        .iter()
        .map(|key| {
            let public = key.public_key();
            old.our_keys
                .iter()
                .find(|our| our.public == public)
                .cloned()
                .unwrap_or_else(|| Arc::new(OurKey::new(key)))
        })
        .collect();
    let same_our_keys = our_keys.len() == old.our_keys.len()
        && our_keys
            .iter()
            .zip(&old.our_keys)
            .all(|(a, b)| a.public == b.public);
    let old_configs = old.peer_configs();
    let matches = plan::match_peers(&old_configs, peers);
    let mut reuse = TunnelReuse::new(old);
    let built: Vec<Arc<Peer>> = peers
        .iter()
        .zip(&matches)
        .map(|(config, found)| match *found {
            PeerMatch::Unchanged { old: old_idx } if same_our_keys => old.peers[old_idx].clone(),
            PeerMatch::Unchanged { old: old_idx } | PeerMatch::Changed { old: old_idx } => {
                let live = old.peers[old_idx].live.clone();
                let since = live.since_handshake();
                live.update_endpoint(|state| state.configure(config.endpoint, since));
                Arc::new(reuse.peer(&our_keys, config, live, indexes))
            }
            PeerMatch::Added => {
                let live = Arc::new(PeerLive::default());
                live.update_endpoint(|_| EndpointState::new(config.endpoint));
                Arc::new(reuse.peer(&our_keys, config, live, indexes))
            }
        })
        .collect();
    (index_table(our_keys, built), matches)
}

fn index_table(our_keys: Vec<Arc<OurKey>>, peers: Vec<Arc<Peer>>) -> Table {
    let mut table = Table {
        our_keys,
        ..Table::default()
    };
    for (peer_idx, peer) in peers.iter().enumerate() {
        for &(address, prefix_len) in &peer.config.allowed_ips {
            table.routes.insert(address, prefix_len, peer_idx);
        }
        for key in &peer.config.public_keys {
            table.by_key.insert(*key, peer_idx);
        }
        for (tunnel_idx, tunnel) in peer.tunnels.iter().enumerate() {
            table.by_index.insert(tunnel.index, (peer_idx, tunnel_idx));
        }
        peer.refresh_outbound();
    }
    table.peers = peers;
    table
}

/// The old table's tunnels by key pair and keepalive, to hand on to the new table.
struct TunnelReuse {
    old: HashMap<(PublicKey, PublicKey, Option<u16>), Arc<Tunnel>>,
    in_use: HashSet<u32>,
}

impl TunnelReuse {
    fn new(old: &Table) -> TunnelReuse {
        let old: HashMap<_, _> = old
            .peers
            .iter()
            .flat_map(|peer| &peer.tunnels)
            .map(|t| ((t.our_public, t.their_public, t.keepalive), t.clone()))
            .collect();
        let in_use = old.values().map(|tunnel| tunnel.index).collect();
        TunnelReuse { old, in_use }
    }

    fn peer(
        &mut self,
        our_keys: &[Arc<OurKey>],
        config: &PeerConfig,
        live: Arc<PeerLive>,
        indexes: &mut IndexAllocator,
    ) -> Peer {
        let mut tunnels = Vec::new();
        let mut positions = Vec::new();
        for (our_pos, our) in our_keys.iter().enumerate() {
            for (their_pos, their) in config.public_keys.iter().enumerate() {
                let key = (our.public, *their, config.persistent_keepalive);
                let tunnel = match self.old.get(&key) {
                    Some(tunnel) => tunnel.clone(),
                    None => self.new_tunnel(our, *their, config.persistent_keepalive, indexes),
                };
                tunnels.push(tunnel);
                positions.push((our_pos, their_pos));
            }
        }
        Peer {
            config: config.clone(),
            tunnels,
            positions,
            outbound: AtomicUsize::new(0),
            live,
        }
    }

    fn new_tunnel(
        &mut self,
        our: &OurKey,
        their: PublicKey,
        keepalive: Option<u16>,
        indexes: &mut IndexAllocator,
    ) -> Arc<Tunnel> {
        let index = indexes.allocate(&self.in_use);
        self.in_use.insert(index);
        let tunn = Tunn::new(
            our.secret.clone(),
            their.to_x25519(),
            None,
            keepalive,
            index,
            Some(our.limiter.clone()),
        );
        Arc::new(Tunnel {
            index,
            our_public: our.public,
            their_public: their,
            keepalive,
            tunn: Mutex::new(tunn),
            last_handshake: Mutex::new(None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer(label: &str, keys: Vec<PublicKey>, third_octet: u8) -> PeerConfig {
        PeerConfig {
            label: label.to_string(),
            public_keys: keys,
            allowed_ips: vec![(Ipv4Addr::new(10, 42, third_octet, 0), 24)],
            endpoint: Some(SocketAddr::from(([192, 168, 9, third_octet], 51820))),
            persistent_keepalive: None,
        }
    }

    #[test]
    fn rebuild_keeps_tunnels_of_unchanged_key_pairs() {
        let ours = PrivateKey::generate();
        let [b_old, b_new, c] = std::array::from_fn(|_| PrivateKey::generate().public_key());
        let mut indexes = IndexAllocator::new();
        let first = vec![peer("b", vec![b_old], 2), peer("c", vec![c], 3)];
        let (t1, _) = build(
            &Table::default(),
            std::slice::from_ref(&ours),
            &first,
            &mut indexes,
        );
        let (t2, _) = build(&t1, std::slice::from_ref(&ours), &first, &mut indexes);
        assert!(
            Arc::ptr_eq(&t1.peers[0], &t2.peers[0]),
            "same data keeps the same peer"
        );

        let rotating = vec![peer("b", vec![b_old, b_new], 2)];
        let (t3, matches) = build(&t2, std::slice::from_ref(&ours), &rotating, &mut indexes);
        assert_eq!(matches, vec![PeerMatch::Changed { old: 0 }]);
        assert!(Arc::ptr_eq(
            &t2.peers[0].tunnels[0],
            &t3.peers[0].tunnels[0]
        ));
        assert_eq!(t3.peers[0].tunnels.len(), 2);
        assert!(!t3.by_key.contains_key(&c), "c was removed");
        assert_eq!(t3.routes.lookup(Ipv4Addr::new(10, 42, 3, 1)), None);
        assert_eq!(t3.routes.lookup(Ipv4Addr::new(10, 42, 2, 1)), Some(&0));
        let new_tunnel = &t3.peers[0].tunnels[1];
        assert_eq!(t3.by_receiver(new_tunnel.index << 8 | 5), Some((0, 1)));
        assert_eq!(t3.tunnel_for(ours.public_key(), b_new), Some((0, 1)));
    }

    #[test]
    fn endpoint_packing_round_trips() {
        let live = PeerLive::default();
        assert_eq!(live.endpoint(), None);
        let source = SocketAddrV4::new(Ipv4Addr::new(192, 168, 3, 4), 51820);
        live.authenticated_from(source);
        assert_eq!(live.endpoint(), Some(source));
    }
}
