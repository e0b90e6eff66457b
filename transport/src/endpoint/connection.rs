//! An admitted connection ([`PeerConnection`]): who the peer is, and the framed streams opened
//! on it (request streams and long-lived push streams), each bounded by the frame limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::frame::{FramedRecv, FramedSend};
use crate::identity::PeerIdentity;
use crate::metrics::TransportMetrics;

use super::admission::JoinSlot;
use super::error::StreamError;
use super::{Alpn, CLOSE_NORMAL, Shared};

/// Keeps `warren_transport_connections_active` counting a connection until its last handle
/// drops.
struct ActiveGuard(TransportMetrics);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

/// An admitted connection. Cloning shares it; it closes when the last clone is dropped.
#[derive(Clone)]
pub struct PeerConnection {
    conn: quinn::Connection,
    alpn: Alpn,
    peer: Option<PeerIdentity>,
    pub(super) shared: Arc<Shared>,
    _active: Arc<ActiveGuard>,
    /// Set on a join connection a server admitted.
    pub(super) join: Option<Arc<JoinSlot>>,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("remote", &self.conn.remote_address())
            .field("alpn", &self.alpn)
            .field("peer", &self.peer)
            .finish()
    }
}

impl PeerConnection {
    pub(super) fn new(
        conn: quinn::Connection,
        alpn: Alpn,
        peer: Option<PeerIdentity>,
        shared: Arc<Shared>,
        side: &'static str,
    ) -> Self {
        shared
            .metrics
            .connections_total
            .with_label_values(&[side, alpn.as_str()])
            .inc();
        shared.metrics.connections_active.inc();
        let active = Arc::new(ActiveGuard(shared.metrics.clone()));
        Self {
            conn,
            alpn,
            peer,
            shared,
            _active: active,
            join: None,
        }
    }

    /// On a join connection a server admitted: when its exchange must be over.
    pub(crate) fn join_deadline(&self) -> Option<tokio::time::Instant> {
        self.join.as_ref().map(|slot| slot.deadline)
    }

    /// The endpoint state this connection shares with its siblings.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The peer's proven identity (`None` for a joiner without a certificate).
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// The frame limit on this connection: the configured one, or the small join limit for a
    /// joiner that has no certificate yet.
    fn max_frame_bytes(&self) -> usize {
        match self.alpn {
            Alpn::Join => crate::join::MAX_JOIN_FRAME_BYTES.min(self.shared.config.max_frame_bytes),
            _ => self.shared.config.max_frame_bytes,
        }
    }

    pub fn alpn(&self) -> Alpn {
        self.alpn
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// UDP datagrams received on this connection so far, keep-alive acknowledgements included.
    /// A count that stops moving while keep-alives go out means the peer has gone silent,
    /// whatever the application streams are doing.
    pub fn datagrams_received(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }

    fn stream_error(&self, error: impl std::fmt::Display) -> StreamError {
        StreamError {
            addr: self.conn.remote_address(),
            detail: error.to_string(),
        }
    }

    /// A stream this side sends on, bounded by the connection's frame limit and timeout.
    fn framed_send(&self, send: quinn::SendStream) -> FramedSend {
        FramedSend::new(
            send,
            self.max_frame_bytes(),
            self.shared.config.frame_timeout,
            self.shared.metrics.clone(),
        )
    }

    /// A stream this side receives on, bounded by the connection's frame limit and timeout.
    fn framed_recv(&self, recv: quinn::RecvStream) -> FramedRecv {
        FramedRecv::new(
            recv,
            self.max_frame_bytes(),
            self.shared.config.frame_timeout,
            self.shared.metrics.clone(),
        )
    }

    /// Opens a bidirectional framed stream.
    ///
    /// # Errors
    /// [`StreamError`] when the connection is gone.
    pub async fn open_stream(&self) -> Result<(FramedSend, FramedRecv), StreamError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| self.stream_error(e))?;
        Ok((self.framed_send(send), self.framed_recv(recv)))
    }

    /// Accepts a bidirectional framed stream opened by the peer.
    ///
    /// # Errors
    /// [`StreamError`] when the connection is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn accept_stream(&self) -> Result<(FramedSend, FramedRecv), StreamError> {
        let (send, recv) = self
            .conn
            .accept_bi()
            .await
            .map_err(|e| self.stream_error(e))?;
        Ok((self.framed_send(send), self.framed_recv(recv)))
    }

    /// Opens a long-lived server-push stream (unidirectional, this side sends).
    ///
    /// # Errors
    /// [`StreamError`] when the connection is gone.
    pub async fn open_push(&self) -> Result<FramedSend, StreamError> {
        let send = self
            .conn
            .open_uni()
            .await
            .map_err(|e| self.stream_error(e))?;
        Ok(self.framed_send(send))
    }

    /// Accepts a push stream opened by the peer.
    ///
    /// # Errors
    /// [`StreamError`] when the connection is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn accept_push(&self) -> Result<FramedRecv, StreamError> {
        let recv = self
            .conn
            .accept_uni()
            .await
            .map_err(|e| self.stream_error(e))?;
        Ok(self.framed_recv(recv))
    }

    /// Closes the connection with a reason the peer sees.
    pub fn close(&self, reason: &str) {
        self.conn.close(CLOSE_NORMAL.into(), reason.as_bytes());
    }

    /// Whether the connection has already closed (by either side, a stateless reset from a
    /// restarted peer, or an idle timeout): a caller holding it in a cache should dial anew.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Waits until the connection is closed; returns why.
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
    }
}
