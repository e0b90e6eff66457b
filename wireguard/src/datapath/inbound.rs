//! The UDP thread: receive datagrams, find each one's tunnel, decrypt, and write the packets
//! to the TUN in batches.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::udp::{self, Received};
use super::{BUFFER_BYTES, MESSAGE_DATA, Shared, TableView, is_transient};
use crate::keys::PublicKey;
use crate::plan;
use crate::table::{Peer, Table, Tunnel, lock};

const MESSAGE_HANDSHAKE_INIT: u8 = 1;
const MESSAGE_HANDSHAKE_RESPONSE: u8 = 2;
const MESSAGE_COOKIE_REPLY: u8 = 3;
/// Size of a cookie reply message.
const COOKIE_REPLY_BYTES: usize = 64;
/// How long after a handshake with a peer we ignore its data for unknown receiver indexes
/// (WireGuard's REKEY_TIMEOUT).
const REINITIATE_QUIET: Duration = Duration::from_secs(5);
/// Most decrypted packets written to the TUN in one batch.
const BATCH_PACKETS: usize = 64;

/// Decrypted packets waiting to be written to the TUN together, so tun-rs can coalesce a
/// flow's segments (GRO) into one write. The buffers are allocated once per thread.
struct TunBatch {
    buffers: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl TunBatch {
    fn new() -> TunBatch {
        TunBatch {
            buffers: (0..BATCH_PACKETS)
                .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + BUFFER_BYTES))
                .collect(),
            len: 0,
            gro: GROTable::new(),
        }
    }

    fn is_full(&self) -> bool {
        self.len == BATCH_PACKETS
    }

    /// Room for the next packet of up to `len` bytes, after the room in front for the virtio
    /// header tun-rs writes there; writes the batch first when it is full (one UDP GRO receive
    /// may hold more than a batch). The buffers keep their length from one batch to the next,
    /// so in the steady state this neither fills nor copies.
    fn spare(&mut self, tun: &SyncDevice, len: usize) -> &mut [u8] {
        if self.is_full() {
            self.flush(tun);
        }
        let buffer = &mut self.buffers[self.len];
        buffer.resize(VIRTIO_NET_HDR_LEN + len, 0);
        &mut buffer[VIRTIO_NET_HDR_LEN..]
    }

    /// Takes the first `len` bytes just written into [`TunBatch::spare`] as the next packet.
    fn commit(&mut self, len: usize) {
        self.buffers[self.len].truncate(VIRTIO_NET_HDR_LEN + len);
        self.len += 1;
    }

    /// Queues a copy of a packet.
    fn push(&mut self, tun: &SyncDevice, packet: &[u8]) {
        self.spare(tun, packet.len()).copy_from_slice(packet);
        self.commit(packet.len());
    }

    fn flush(&mut self, tun: &SyncDevice) {
        if self.len > 0 {
            // A failed TUN write loses those packets; the inner protocols recover.
            let _ = tun.send_multiple(
                &mut self.gro,
                &mut self.buffers[..self.len],
                VIRTIO_NET_HDR_LEN,
            );
            self.len = 0;
        }
    }
}

/// Receives datagrams until the device stops: blocks (up to the poll timeout) for one, then,
/// if it carried a packet for the TUN, drains what else is queued without blocking and
/// writes the batch. With UDP GRO one receive may hold several datagrams.
pub(crate) fn run_udp_reader(shared: &Shared) {
    let mut receiver = Receiver {
        view: TableView::new(shared),
        datagrams: vec![0u8; BUFFER_BYTES],
        control: udp::control_buffer(),
        out: vec![0u8; BUFFER_BYTES],
        batch: TunBatch::new(),
    };
    udp::enlarge_buffers(shared);
    if !udp::enable_gro(shared) {
        tracing::info!(interface = %shared.name, "udp gro unavailable, receiving datagrams one by one");
    }
    while !shared.stop.load(Ordering::Relaxed) {
        if !receiver.receive(shared, true) || receiver.batch.len == 0 {
            continue;
        }
        while !receiver.batch.is_full() && receiver.receive(shared, false) {}
        receiver.batch.flush(&shared.tun);
    }
}

/// The UDP thread's buffers.
struct Receiver<'a> {
    view: TableView<'a>,
    datagrams: Vec<u8>,
    control: Vec<u8>,
    out: Vec<u8>,
    batch: TunBatch,
}

impl Receiver<'_> {
    /// Receives and handles one read's datagrams; false when none was there.
    #[inline]
    fn receive(&mut self, shared: &Shared, wait: bool) -> bool {
        let received = match udp::receive(shared, &mut self.datagrams, &mut self.control, wait) {
            Ok(received) => received,
            Err(error) => {
                if !is_transient(&error) {
                    // Errors such as ICMP reports queued on the socket; the next receive works.
                    tracing::debug!(interface = %shared.name, %error, "udp receive failed");
                }
                return false;
            }
        };
        let Received {
            len,
            source: Some(SocketAddr::V4(source)),
            segment_len,
        } = received
        else {
            shared.count_invalid();
            return true;
        };
        if len == 0 {
            shared.count_invalid();
            return true;
        }
        let table = self.view.current();
        for datagram in self.datagrams[..len].chunks(segment_len) {
            handle_datagram(
                table,
                shared,
                source,
                datagram,
                &mut self.out,
                &mut self.batch,
            );
        }
        true
    }
}

/// What a datagram's header says, before any cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// A handshake initiation: it names no receiver.
    Initiation,
    /// A response, cookie reply or data message for our receiver index.
    ForReceiver { kind: u8, receiver: u32 },
    /// Not a WireGuard message.
    Invalid,
}

/// Reads a datagram's header: the type byte, three reserved zero bytes, then (for responses,
/// cookie replies and data) the receiver index, which a response carries after its sender
/// index and the others first.
#[inline]
fn parse_header(datagram: &[u8]) -> Header {
    if datagram.len() < 8 || datagram[1..4] != [0, 0, 0] {
        return Header::Invalid;
    }
    let kind = datagram[0];
    let at = match kind {
        MESSAGE_HANDSHAKE_INIT => return Header::Initiation,
        MESSAGE_HANDSHAKE_RESPONSE => 8,
        MESSAGE_COOKIE_REPLY | MESSAGE_DATA => 4,
        _ => return Header::Invalid,
    };
    match datagram.get(at..at + 4) {
        Some(&[a, b, c, d]) => Header::ForReceiver {
            kind,
            receiver: u32::from_le_bytes([a, b, c, d]),
        },
        _ => Header::Invalid,
    }
}

#[inline]
fn handle_datagram(
    table: &Table,
    shared: &Shared,
    source: SocketAddrV4,
    datagram: &[u8],
    out: &mut [u8],
    batch: &mut TunBatch,
) {
    let (kind, receiver) = match parse_header(datagram) {
        Header::Initiation => {
            return handle_initiation(table, shared, source, datagram, out, batch);
        }
        Header::ForReceiver { kind, receiver } => (kind, receiver),
        Header::Invalid => return shared.count_invalid(),
    };
    match table.by_receiver(receiver) {
        Some((peer_idx, tunnel_idx)) => {
            let at = Located {
                table,
                peer_idx,
                tunnel_idx,
            };
            if kind == MESSAGE_DATA {
                decapsulate_data(at, shared, source, datagram, batch);
            } else {
                decapsulate(at, shared, source, datagram, out, batch);
            }
        }
        None => {
            shared.count_invalid();
            if kind == MESSAGE_DATA {
                reinitiate_after_restart(table, shared, source, out);
            }
        }
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
    batch: &mut TunBatch,
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
                decapsulate(at, shared, source, datagram, out, batch);
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

/// Decrypts a data message straight into the TUN batch: no copy between the two.
#[inline]
fn decapsulate_data(
    at: Located<'_>,
    shared: &Shared,
    source: SocketAddrV4,
    datagram: &[u8],
    batch: &mut TunBatch,
) {
    let (peer, tunnel) = (at.peer(), at.tunnel());
    // Before the tunnel's lock: a full batch is written out first, and not while holding it.
    let spare = batch.spare(&shared.tun, datagram.len());
    let mut tunn = lock(&tunnel.tunn);
    match tunn.decapsulate(Some(IpAddr::V4(*source.ip())), datagram, spare) {
        TunnResult::WriteToTunnelV4(packet, inner_source) => {
            let len = packet.len();
            drop(tunn);
            // The inner source must be one the peer may use, or a peer could spoof another.
            if at.table.routes.lookup(inner_source) != Some(&at.peer_idx) {
                return shared.count_invalid();
            }
            batch.commit(len);
            peer.live.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        // A keepalive.
        TunnResult::Done => {}
        TunnResult::Err(_) => return shared.count_invalid(),
        // Data never asks for a send (handshakes do), and the overlay carries IPv4 only.
        TunnResult::WriteToNetwork(_) | TunnResult::WriteToTunnelV6(..) => return,
    }
    peer.live.authenticated_from(source);
}

/// Handles a handshake message or cookie reply (data goes to [`decapsulate_data`]).
fn decapsulate(
    at: Located<'_>,
    shared: &Shared,
    source: SocketAddrV4,
    datagram: &[u8],
    out: &mut [u8],
    batch: &mut TunBatch,
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
            batch.push(&shared.tun, packet);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(datagram: &[u8], expected: Header) {
        assert_eq!(parse_header(datagram), expected, "{datagram:?}");
    }

    #[test]
    fn headers() {
        let mut response = vec![2, 0, 0, 0, 1, 1, 1, 1, 0x05, 0x34, 0x12, 0x00];
        response.resize(92, 0);
        check(
            &response,
            Header::ForReceiver {
                kind: 2,
                receiver: 0x0012_3405,
            },
        );
        check(
            &[4, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 9, 9],
            Header::ForReceiver {
                kind: 4,
                receiver: 0x0403_0201,
            },
        );
        check(
            &[3, 0, 0, 0, 7, 0, 0, 0],
            Header::ForReceiver {
                kind: 3,
                receiver: 7,
            },
        );
        check(&[1, 0, 0, 0, 0, 0, 0, 0], Header::Initiation);
        check(&[2, 0, 0, 0, 1, 1, 1, 1], Header::Invalid);
        check(&[4, 0, 1, 0, 0, 0, 0, 0], Header::Invalid);
        check(&[5, 0, 0, 0, 0, 0, 0, 0], Header::Invalid);
        check(b"hello", Header::Invalid);
        check(&[], Header::Invalid);
    }

    proptest! {
        /// Any bytes parse without panicking, and a receiver index is read from inside them.
        #[test]
        fn any_datagram_parses(datagram in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Header::ForReceiver { kind, .. } = parse_header(&datagram) {
                prop_assert!(matches!(kind, 2..=4));
                prop_assert!(datagram.len() >= 8);
            }
        }
    }
}
