//! The data path: three OS threads per device. One reads the TUN and encapsulates, one
//! receives UDP and decapsulates, one drives boringtun's timers. Each reads the current
//! [`Table`] through a [`TableView`], which re-reads it only when its generation moved, so a
//! packet costs no allocation and no shared lock beyond its tunnel's mutex.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use tun_rs::{InterruptEvent, SyncDevice};

use crate::keys::PublicKey;
use crate::plan;
use crate::table::{Peer, Table, Tunnel, lock};

/// How often the timer thread runs boringtun's timers (retransmits, rekeys, keepalives).
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(100);
/// How long the UDP thread blocks in one receive before it looks at the stop flag.
pub(crate) const UDP_POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long after a handshake with a peer we ignore its data for unknown receiver indexes
/// (WireGuard's REKEY_TIMEOUT).
const REINITIATE_QUIET: Duration = Duration::from_secs(5);
/// Packet buffer size: the largest IP packet, so any datagram or TUN read fits.
const BUFFER_BYTES: usize = 65_536;
/// Room for WireGuard's data header and tag around a packet.
const WIREGUARD_OVERHEAD_BYTES: usize = 32;

const MESSAGE_HANDSHAKE_INIT: u8 = 1;
const MESSAGE_HANDSHAKE_RESPONSE: u8 = 2;
const MESSAGE_COOKIE_REPLY: u8 = 3;
const MESSAGE_DATA: u8 = 4;
/// Size of a cookie reply message.
const COOKIE_REPLY_BYTES: usize = 64;

/// What the device's threads share.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) table: RwLock<Arc<Table>>,
    /// Bumped after every table swap.
    pub(crate) generation: AtomicU64,
    pub(crate) udp: UdpSocket,
    pub(crate) tun: SyncDevice,
    pub(crate) interrupt: InterruptEvent,
    pub(crate) stop: AtomicBool,
    pub(crate) invalid_packets: AtomicU64,
}

impl Shared {
    /// Installs a new table; the threads pick it up at their next packet.
    pub(crate) fn swap_table(&self, table: Table) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current table.
    pub(crate) fn current_table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count_invalid(&self) {
        self.invalid_packets.fetch_add(1, Ordering::Relaxed);
    }

    fn send(&self, bytes: &[u8], to: SocketAddrV4) {
        // A failed send is a lost packet, which WireGuard's timers recover from; nothing to do.
        let _ = self.udp.send_to(bytes, SocketAddr::V4(to));
    }
}

/// One thread's handle on the current table.
struct TableView<'a> {
    shared: &'a Shared,
    generation: u64,
    table: Arc<Table>,
}

impl<'a> TableView<'a> {
    fn new(shared: &'a Shared) -> TableView<'a> {
        let generation = shared.generation.load(Ordering::Acquire);
        TableView {
            shared,
            generation,
            table: shared.current_table(),
        }
    }

    #[inline]
    fn current(&mut self) -> &Table {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.table = self.shared.current_table();
        }
        &self.table
    }
}

/// The TUN thread: read a packet, find its peer by destination, encrypt, send.
pub(crate) fn run_tun_reader(shared: &Shared) {
    let mut view = TableView::new(shared);
    let mut packet = vec![0u8; BUFFER_BYTES];
    let mut out = vec![0u8; BUFFER_BYTES + WIREGUARD_OVERHEAD_BYTES];
    while !shared.stop.load(Ordering::Relaxed) {
        let len = match read_tun(shared, &mut packet) {
            Ok(len) => len,
            Err(_) if shared.stop.load(Ordering::Relaxed) => return,
            Err(error) if is_transient(&error) => continue,
            Err(error) => {
                tracing::warn!(interface = %shared.name, %error, "tun read failed, outbound traffic stops");
                return;
            }
        };
        encapsulate_one(view.current(), shared, &packet[..len], &mut out);
    }
}

/// Reads one packet: a plain non-blocking read first, so a busy link costs one syscall per
/// packet; only when nothing is queued, the interruptible wait (poll on the TUN and the stop
/// event, then read).
#[inline]
fn read_tun(shared: &Shared, packet: &mut [u8]) -> io::Result<usize> {
    match shared.tun.recv(packet) {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
            shared.tun.recv_intr(packet, &shared.interrupt)
        }
        result => result,
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[inline]
fn encapsulate_one(table: &Table, shared: &Shared, packet: &[u8], out: &mut [u8]) {
    // IPv4 only: the overlay is IPv4, and the kernel sends IPv6 chatter we do not route.
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return;
    }
    let destination = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let Some(&peer_idx) = table.routes.lookup(destination) else {
        return;
    };
    let peer = &table.peers[peer_idx];
    let Some(endpoint) = peer.live.endpoint() else {
        return;
    };
    let tunnel = &peer.tunnels[peer.outbound.load(Ordering::Relaxed)];
    let result = lock(&tunnel.tunn).encapsulate(packet, out);
    if let TunnResult::WriteToNetwork(bytes) = result {
        shared.send(bytes, endpoint);
        peer.live
            .tx_bytes
            .fetch_add(packet.len() as u64, Ordering::Relaxed);
    }
}

/// The UDP thread: receive a datagram, find its tunnel, decrypt, write to the TUN.
pub(crate) fn run_udp_reader(shared: &Shared) {
    let mut view = TableView::new(shared);
    let mut datagram = vec![0u8; BUFFER_BYTES];
    let mut out = vec![0u8; BUFFER_BYTES];
    while !shared.stop.load(Ordering::Relaxed) {
        let (len, source) = match shared.udp.recv_from(&mut datagram) {
            Ok(received) => received,
            Err(error) if is_transient(&error) => continue,
            Err(error) => {
                // Errors such as ICMP reports queued on the socket; the next receive works.
                tracing::debug!(interface = %shared.name, %error, "udp receive failed");
                continue;
            }
        };
        let SocketAddr::V4(source) = source else {
            shared.count_invalid();
            continue;
        };
        handle_datagram(view.current(), shared, source, &datagram[..len], &mut out);
    }
}

#[inline]
fn handle_datagram(
    table: &Table,
    shared: &Shared,
    source: SocketAddrV4,
    datagram: &[u8],
    out: &mut [u8],
) {
    // Type byte, then three reserved zero bytes, then (for 2, 3, 4) the receiver index.
    if datagram.len() < 8 || datagram[1..4] != [0, 0, 0] {
        shared.count_invalid();
        return;
    }
    match datagram[0] {
        MESSAGE_HANDSHAKE_INIT => handle_initiation(table, shared, source, datagram, out),
        MESSAGE_HANDSHAKE_RESPONSE | MESSAGE_COOKIE_REPLY | MESSAGE_DATA => {
            // A response carries its sender index first; the others start with the receiver.
            let at = if datagram[0] == MESSAGE_HANDSHAKE_RESPONSE {
                8
            } else {
                4
            };
            let Some(receiver) = datagram.get(at..at + 4) else {
                return shared.count_invalid();
            };
            let receiver = u32::from_le_bytes([receiver[0], receiver[1], receiver[2], receiver[3]]);
            match table.by_receiver(receiver) {
                Some((peer_idx, tunnel_idx)) => {
                    let at = Located {
                        table,
                        peer_idx,
                        tunnel_idx,
                    };
                    decapsulate(at, shared, source, datagram, out);
                }
                None if datagram[0] == MESSAGE_DATA => {
                    shared.count_invalid();
                    reinitiate_after_restart(table, shared, source, out);
                }
                None => shared.count_invalid(),
            }
        }
        _ => shared.count_invalid(),
    }
}

/// Data for a receiver index we do not know, from a peer's endpoint, means the peer still
/// uses a session we lost (we restarted, or re-created its tunnels). Left alone, it would
/// notice only after KEEPALIVE + REKEY_TIMEOUT (15 s); we start a handshake with it instead.
/// Only when we have had no handshake with that peer for [`REINITIATE_QUIET`], so a stray or
/// spoofed packet cannot make us re-handshake a live session over and over.
#[cold]
fn reinitiate_after_restart(table: &Table, shared: &Shared, source: SocketAddrV4, out: &mut [u8]) {
    let Some(peer) = table
        .peers
        .iter()
        .find(|peer| peer.live.endpoint() == Some(source))
    else {
        return;
    };
    if peer
        .live
        .since_handshake()
        .is_some_and(|since| since < REINITIATE_QUIET)
    {
        return;
    }
    let tunnel = &peer.tunnels[peer.outbound.load(Ordering::Relaxed)];
    // Does nothing while a handshake is already in flight.
    let result = lock(&tunnel.tunn).format_handshake_initiation(out, false);
    if let TunnResult::WriteToNetwork(bytes) = result {
        shared.send(bytes, source);
    }
}

/// A handshake initiation names no receiver: find which of our keys it is for (its MAC1),
/// then who sent it (decrypting its static key), then their tunnel. A sender that is not a
/// current peer is refused here.
fn handle_initiation(
    table: &Table,
    shared: &Shared,
    source: SocketAddrV4,
    datagram: &[u8],
    out: &mut [u8],
) {
    let mut cookie = [0u8; COOKIE_REPLY_BYTES];
    for our in &table.our_keys {
        let source_ip = Some(IpAddr::V4(*source.ip()));
        let init = match our.limiter.verify_packet(source_ip, datagram, &mut cookie) {
            Ok(Packet::HandshakeInit(init)) => init,
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => continue,
            Err(TunnResult::WriteToNetwork(reply)) => return shared.send(reply, source),
            _ => return shared.count_invalid(),
        };
        let Ok(half) = parse_handshake_anon(&our.secret, &our.x25519_public, &init) else {
            return shared.count_invalid();
        };
        let their = PublicKey(half.peer_static_public);
        match table.tunnel_for(our.public, their) {
            Some((peer_idx, tunnel_idx)) => {
                let at = Located {
                    table,
                    peer_idx,
                    tunnel_idx,
                };
                decapsulate(at, shared, source, datagram, out);
            }
            None => shared.count_invalid(),
        }
        return;
    }
    shared.count_invalid();
}

/// A tunnel's place in a table.
#[derive(Clone, Copy)]
struct Located<'a> {
    table: &'a Table,
    peer_idx: usize,
    tunnel_idx: usize,
}

impl Located<'_> {
    fn peer(&self) -> &Peer {
        &self.table.peers[self.peer_idx]
    }

    fn tunnel(&self) -> &Tunnel {
        &self.peer().tunnels[self.tunnel_idx]
    }
}

fn decapsulate(
    at: Located<'_>,
    shared: &Shared,
    source: SocketAddrV4,
    datagram: &[u8],
    out: &mut [u8],
) {
    let (peer, tunnel) = (at.peer(), at.tunnel());
    let kind = datagram[0];
    let mut tunn = lock(&tunnel.tunn);
    match tunn.decapsulate(Some(IpAddr::V4(*source.ip())), datagram, out) {
        TunnResult::Done => {}
        TunnResult::Err(_) => return shared.count_invalid(),
        TunnResult::WriteToNetwork(bytes) => {
            shared.send(bytes, source);
            // Packets queued while the handshake ran go out now.
            while let TunnResult::WriteToNetwork(bytes) = tunn.decapsulate(None, &[], out) {
                shared.send(bytes, source);
            }
            drop(tunn);
            if kind == MESSAGE_HANDSHAKE_INIT || kind == MESSAGE_HANDSHAKE_RESPONSE {
                handshake_completed(peer, tunnel);
            }
        }
        TunnResult::WriteToTunnelV4(packet, inner_source) => {
            drop(tunn);
            // The inner source must be one the peer may use, or a peer could spoof another.
            if at.table.routes.lookup(inner_source) != Some(&at.peer_idx) {
                return shared.count_invalid();
            }
            let _ = shared.tun.send(packet);
            peer.live
                .rx_bytes
                .fetch_add(packet.len() as u64, Ordering::Relaxed);
        }
        TunnResult::WriteToTunnelV6(..) => return,
    }
    if kind != MESSAGE_COOKIE_REPLY {
        peer.live.authenticated_from(source);
    }
}

fn handshake_completed(peer: &Peer, tunnel: &Tunnel) {
    let now = Instant::now();
    *lock(&tunnel.last_handshake) = Some(now);
    let live = &peer.live;
    let had_session = live
        .since_handshake()
        .is_some_and(|since| since < plan::ENDPOINT_STALE_AFTER);
    *lock(&live.last_handshake) = Some((now, std::time::SystemTime::now()));
    live.handshakes_completed.fetch_add(1, Ordering::Relaxed);
    peer.refresh_outbound();
    let (label, key) = (&peer.config.label, tunnel.their_public);
    if had_session {
        tracing::debug!(peer = %label, %key, "handshake completed");
    } else {
        tracing::info!(peer = %label, %key, "handshake completed, peer reachable");
    }
}

/// The timer thread: every [`TIMER_TICK`], run each tunnel's timers and re-decide each peer's
/// outbound tunnel.
pub(crate) fn run_timers(shared: &Shared) {
    let mut view = TableView::new(shared);
    let mut out = vec![0u8; BUFFER_BYTES];
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TIMER_TICK);
        let table = view.current();
        for our in &table.our_keys {
            our.limiter.reset_count();
        }
        for peer in &table.peers {
            tick_peer(shared, peer, &mut out);
        }
    }
}

fn tick_peer(shared: &Shared, peer: &Peer, out: &mut [u8]) {
    let endpoint = peer.live.endpoint();
    for tunnel in &peer.tunnels {
        let result = lock(&tunnel.tunn).update_timers(out);
        if let (TunnResult::WriteToNetwork(bytes), Some(to)) = (result, endpoint) {
            shared.send(bytes, to);
        }
    }
    let views = peer.refresh_outbound();
    let outbound = views[peer.outbound.load(Ordering::Relaxed)];
    for (view, tunnel) in views.iter().zip(&peer.tunnels) {
        if !plan::should_prepare(view, &outbound) {
            continue;
        }
        let result = lock(&tunnel.tunn).format_handshake_initiation(out, false);
        if let (TunnResult::WriteToNetwork(bytes), Some(to)) = (result, endpoint) {
            shared.send(bytes, to);
        }
    }
    peer.live.tick_endpoint();
}
