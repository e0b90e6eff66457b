//! Fault injection under a QUIC endpoint: a switch that cuts the endpoint's UDP socket.
//!
//! A [`FaultSwitch`] given in [`EndpointOptions::fault`](crate::EndpointOptions::fault) wraps
//! the endpoint's socket. While the switch is cut, every datagram is dropped both ways: sends
//! report success and are discarded, received datagrams are read from the socket and thrown
//! away. QUIC sees exactly what it would see on a dead link — no error, no ICMP, only silence —
//! so keep-alives go unanswered, requests time out and idle timeouts fire. Healing lets
//! datagrams through again; connections that have not timed out meanwhile carry on.
//!
//! This is what in-process tests and `warren dev`/`warren demo` use to cut a node or a whole
//! site off (docs/design.md §9) without root, network namespaces or firewall rules. It never changes a
//! datagram and never drops one while healed.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// A cheap, clonable handle that cuts and heals the sockets it was given to. Clones share one
/// state, so one switch given to several endpoints cuts them all at once (a whole site).
#[derive(Clone, Default)]
pub struct FaultSwitch {
    state: Arc<FaultState>,
}

#[derive(Default)]
struct FaultState {
    cut: AtomicBool,
    dropped_sent: AtomicU64,
    dropped_received: AtomicU64,
}

impl fmt::Debug for FaultSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultSwitch")
            .field("cut", &self.is_cut())
            .field("dropped_sent", &self.dropped_sent())
            .field("dropped_received", &self.dropped_received())
            .finish()
    }
}

impl FaultSwitch {
    /// A healed switch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops every datagram, both ways, from now on.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
    }

    /// Lets datagrams through again.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Whether datagrams are being dropped.
    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }

    /// Datagrams this switch has dropped on their way out, since it was made.
    pub fn dropped_sent(&self) -> u64 {
        self.state.dropped_sent.load(Ordering::Relaxed)
    }

    /// Datagrams this switch has dropped on their way in, since it was made.
    pub fn dropped_received(&self) -> u64 {
        self.state.dropped_received.load(Ordering::Relaxed)
    }
}

/// A UDP socket that drops everything while its switch is cut.
#[derive(Debug)]
pub(crate) struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    switch: FaultSwitch,
}

impl FaultySocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, switch: FaultSwitch) -> Self {
        Self { inner, switch }
    }
}

/// Datagrams in one transmit: several when the kernel segments it (GSO).
fn datagrams_in_transmit(transmit: &Transmit<'_>) -> u64 {
    let segments = match transmit.segment_size {
        Some(size) if size > 0 => transmit.contents.len().div_ceil(size),
        _ => 1,
    };
    segments as u64
}

/// Datagrams in one received buffer: several when the kernel coalesced them (GRO).
fn datagrams_in_received(meta: &RecvMeta) -> u64 {
    if meta.stride == 0 {
        return 1;
    }
    meta.len.div_ceil(meta.stride).max(1) as u64
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Writability is the real socket's: a cut link still "sends" at once.
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.switch.is_cut() {
            self.switch
                .state
                .dropped_sent
                .fetch_add(datagrams_in_transmit(transmit), Ordering::Relaxed);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Keep reading while cut: the socket must be drained (or its buffer fills and the
        // kernel drops instead of us), and the inner socket registers the waker only when it
        // returns `Pending`.
        loop {
            let received = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            if !self.switch.is_cut() {
                return Poll::Ready(Ok(received));
            }
            let dropped: u64 = meta[..received].iter().map(datagrams_in_received).sum();
            self.switch
                .state
                .dropped_received
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit {
            destination: ([127, 0, 0, 1], 1).into(),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn datagrams_are_counted_per_segment() {
        let bytes = [0u8; 2500];
        assert_eq!(datagrams_in_transmit(&transmit(&bytes, None)), 1);
        assert_eq!(datagrams_in_transmit(&transmit(&bytes, Some(1200))), 3);
        assert_eq!(datagrams_in_transmit(&transmit(&bytes, Some(2500))), 1);
        assert_eq!(datagrams_in_transmit(&transmit(&bytes, Some(0))), 1);
        let meta = |len, stride| RecvMeta {
            len,
            stride,
            ..RecvMeta::default()
        };
        assert_eq!(datagrams_in_received(&meta(1200, 1200)), 1);
        assert_eq!(datagrams_in_received(&meta(2500, 1200)), 3);
        assert_eq!(datagrams_in_received(&meta(0, 0)), 1);
    }

    #[test]
    fn clones_share_one_switch() {
        let switch = FaultSwitch::new();
        let site = switch.clone();
        assert!(!site.is_cut());
        switch.cut();
        assert!(site.is_cut());
        site.heal();
        assert!(!switch.is_cut());
    }
}
