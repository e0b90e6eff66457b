//! The TUN thread: read packets, find each one's peer by destination, encrypt, send.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use boringtun::noise::TunnResult;
use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::udp::SendBatch;
use super::{
    BUFFER_BYTES, MESSAGE_DATA, Shared, TableView, WIREGUARD_OVERHEAD_BYTES, is_transient,
};
use crate::config::MAX_MTU;
use crate::table::{Table, lock};

/// Packets one TUN read may split into (a 64 KB segment at MTU 1420 is 47 of them).
const PACKETS_PER_READ: usize = IDEAL_BATCH_SIZE;
/// Largest packet the TUN hands us: its MTU, at most [`MAX_MTU`].
const PACKET_BYTES: usize = MAX_MTU as usize;

/// Reads the TUN until the device stops; datagrams are sent when a GSO send is full or the
/// TUN is drained.
pub(crate) fn run_tun_reader(shared: &Shared) {
    let mut view = TableView::new(shared);
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + BUFFER_BYTES];
    let mut packets = vec![vec![0u8; PACKET_BYTES]; PACKETS_PER_READ];
    let mut sizes = vec![0usize; PACKETS_PER_READ];
    let mut batch = SendBatch::new(PACKET_BYTES + WIREGUARD_OVERHEAD_BYTES + 256);
    while !shared.stop.load(Ordering::Relaxed) {
        let n_packets = match shared
            .tun
            .recv_multiple(&mut raw, &mut packets, &mut sizes, 0)
        {
            Ok(n_packets) => n_packets,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // The TUN is drained: what is batched goes out now, then sleep until the TUN
                // is readable or the device stops.
                batch.flush(shared);
                let _ = shared.tun.wait_readable_intr(&shared.interrupt);
                continue;
            }
            Err(error) if is_transient(&error) => continue,
            // tun-rs's own errors (a segment it cannot split) lose that read only.
            Err(error) if error.raw_os_error().is_none() => continue,
            Err(error) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    tracing::warn!(interface = %shared.name, %error, "tun read failed, outbound traffic stops");
                }
                return;
            }
        };
        let table = view.current();
        for (packet, &len) in packets.iter().zip(&sizes).take(n_packets) {
            encapsulate_one(table, shared, &packet[..len], &mut batch);
        }
        // No flush here: a 64 KB read does not fill whole GSO sends (its 47 packets at MTU
        // 1420 would go out as a send of 44 and one of 3), so the rest waits for the next
        // read's packets and goes out with them, or when the TUN has nothing more.
    }
}

/// Encrypts one packet into the send batch (a handshake it triggers goes out at once).
#[inline]
fn encapsulate_one(table: &Table, shared: &Shared, packet: &[u8], batch: &mut SendBatch) {
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
    if batch.needs_flush_for(endpoint, packet.len() + WIREGUARD_OVERHEAD_BYTES + 16) {
        batch.flush(shared);
    }
    let tunnel = &peer.tunnels[peer.outbound.load(Ordering::Relaxed)];
    let result = lock(&tunnel.tunn).encapsulate(packet, batch.spare());
    let TunnResult::WriteToNetwork(bytes) = result else {
        return;
    };
    if bytes[0] != MESSAGE_DATA {
        // No session yet: boringtun queued the packet and wants a handshake sent.
        shared.send(bytes, endpoint);
        return;
    }
    let len = bytes.len();
    batch.commit(shared, endpoint, len);
    peer.live
        .tx_bytes
        .fetch_add(packet.len() as u64, Ordering::Relaxed);
}
