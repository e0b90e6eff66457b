//! UDP segmentation offloads on the device's socket: sending a run of equal-sized datagrams to
//! one endpoint in one `sendmsg` (UDP GSO), and receiving a run of them coalesced by the
//! kernel in one `recvmsg` (UDP GRO). Both fall back to one datagram per syscall when the
//! kernel refuses them.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};

use super::Shared;

/// Most datagrams in one GSO send (the kernel's limit is 64 on older kernels).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: a UDP datagram's payload limit (65,507 bytes over IPv4), less
/// headroom; 44 datagrams of a 1420-byte MTU's packets.
const MAX_GSO_BYTES: usize = 64_000;

/// Encrypted datagrams for one endpoint waiting to go out in one send.
pub(super) struct SendBatch {
    buffer: Vec<u8>,
    used: usize,
    segment_len: usize,
    n_segments: usize,
    /// A shorter datagram ends a GSO run: nothing may follow it in this batch.
    closed: bool,
    to: Option<SocketAddrV4>,
}

impl SendBatch {
    /// A batch whose spare room always fits one more packet of up to `packet_bytes`.
    pub(super) fn new(packet_bytes: usize) -> SendBatch {
        SendBatch {
            buffer: vec![0u8; MAX_GSO_BYTES + packet_bytes],
            used: 0,
            segment_len: 0,
            n_segments: 0,
            closed: false,
            to: None,
        }
    }

    /// Whether a datagram of up to `len` bytes for `to` must wait for a flush first.
    pub(super) fn needs_flush_for(&self, to: SocketAddrV4, len: usize) -> bool {
        self.n_segments > 0
            && (self.to != Some(to)
                || self.closed
                || self.n_segments == MAX_SEGMENTS
                || self.used + len > MAX_GSO_BYTES)
    }

    /// Where the next datagram is encrypted into.
    pub(super) fn spare(&mut self) -> &mut [u8] {
        &mut self.buffer[self.used..]
    }

    /// Takes the `len` bytes just written into [`SendBatch::spare`] as the next datagram.
    pub(super) fn commit(&mut self, shared: &Shared, to: SocketAddrV4, len: usize) {
        if self.n_segments == 0 {
            self.segment_len = len;
            self.to = Some(to);
        } else if len > self.segment_len {
            // Longer than the run: the run goes first, then this one alone.
            let start = self.used;
            self.flush(shared);
            shared.send(&self.buffer[start..start + len], to);
            return;
        }
        self.closed = len < self.segment_len;
        self.used += len;
        self.n_segments += 1;
    }

    /// Sends what is queued.
    pub(super) fn flush(&mut self, shared: &Shared) {
        let Some(to) = self.to else {
            return;
        };
        if self.n_segments > 1 && shared.udp_gso.load(Ordering::Relaxed) {
            match send_gso(shared, &self.buffer[..self.used], self.segment_len, to) {
                Ok(()) => return self.reset(),
                Err(error) if gso_unsupported(error) => {
                    tracing::info!(interface = %shared.name, %error, "udp gso unavailable, sending datagrams one by one");
                    shared.udp_gso.store(false, Ordering::Relaxed);
                }
                // A lost burst, like a lost packet, is for the inner protocols to recover.
                Err(_) => return self.reset(),
            }
        }
        for datagram in self.buffer[..self.used].chunks(self.segment_len) {
            shared.send(datagram, to);
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.used = 0;
        self.n_segments = 0;
        self.closed = false;
        self.to = None;
    }
}

fn send_gso(
    shared: &Shared,
    bytes: &[u8],
    segment_len: usize,
    to: SocketAddrV4,
) -> nix::Result<()> {
    let segment = u16::try_from(segment_len).map_err(|_| Errno::EINVAL)?;
    let control = [ControlMessage::UdpGsoSegments(&segment)];
    let address = SockaddrIn::from(to);
    let iov = [IoSlice::new(bytes)];
    sendmsg(
        shared.udp.as_raw_fd(),
        &iov,
        &control,
        MsgFlags::empty(),
        Some(&address),
    )
    .map(|_| ())
}

fn gso_unsupported(error: Errno) -> bool {
    matches!(
        error,
        Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP
    )
}

/// Socket buffer size asked for in each direction: a few GSO bursts of 64 datagrams, so a
/// burst does not overflow the kernel's default (about 200 KB) while the other thread is busy.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Enlarges the socket's buffers past the system maximum when we may (CAP_NET_ADMIN), else
/// up to it; a refusal only costs throughput.
pub(super) fn enlarge_buffers(shared: &Shared) {
    let udp = &shared.udp;
    if setsockopt(udp, sockopt::RcvBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = setsockopt(udp, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES);
    }
    if setsockopt(udp, sockopt::SndBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = setsockopt(udp, sockopt::SndBuf, &SOCKET_BUFFER_BYTES);
    }
}

/// Asks the kernel to coalesce received datagrams (UDP GRO); false when it refuses.
pub(super) fn enable_gro(shared: &Shared) -> bool {
    setsockopt(&shared.udp, sockopt::UdpGroSegment, &true).is_ok()
}

/// One receive: the bytes, where they came from, and the size of each datagram in them
/// (they are several when the kernel coalesced them).
pub(super) struct Received {
    pub(super) len: usize,
    pub(super) source: Option<SocketAddr>,
    pub(super) segment_len: usize,
}

/// Receives into `buffer`; `wait` false returns `WouldBlock` at once when nothing is queued.
pub(super) fn receive(
    shared: &Shared,
    buffer: &mut [u8],
    control: &mut [u8],
    wait: bool,
) -> io::Result<Received> {
    let flags = if wait {
        MsgFlags::empty()
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<SockaddrIn>(shared.udp.as_raw_fd(), &mut iov, Some(control), flags)
        .map_err(io::Error::from)?;
    let segment_len = message
        .cmsgs()
        .ok()
        .and_then(|mut cmsgs| {
            cmsgs.find_map(|cmsg| match cmsg {
                ControlMessageOwned::UdpGroSegments(len) => usize::try_from(len).ok(),
                _ => None,
            })
        })
        .filter(|len| *len > 0)
        .unwrap_or(message.bytes);
    Ok(Received {
        len: message.bytes,
        source: message
            .address
            .map(|address| SocketAddr::V4(SocketAddrV4::from(address))),
        segment_len: segment_len.max(1),
    })
}

/// Control-message room for a UDP GRO segment size.
pub(super) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(i32)
}
