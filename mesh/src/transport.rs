//! The sealed UDP transport under chitchat.
//!
//! chitchat 0.13 keeps its message codec private: a custom [`Transport`] is handed structured
//! [`ChitchatEnvelope`]s, not bytes. So this transport lets chitchat's own
//! [`UdpSocket`](chitchat::transport::UdpSocket) do the encoding and decoding on loopback, and
//! only sealed bytes ever reach the network:
//!
//! ```text
//! send:  envelope ─chitchat codec─▶ inner (127.0.0.1) ──▶ capture ─fragment, seal─▶ real socket ─▶ peer
//! recv:  peer ─▶ real socket ─size, fault, open─▶ this scope's inbox ─reassemble─▶ inject ──▶ inner ─chitchat codec─▶ envelope
//! ```
//!
//! The real socket may carry other meshes too ([`GossipSocket`]): its reader opens each
//! datagram and queues it for the mesh its scope names; this transport seals with its scope.
//!
//! Both relays happen inside one `send`/`recv` call, in order, so the real destination and the
//! real sender are known without any lookup: `send` reads back the bytes it just had chitchat
//! write, and `recv` hands chitchat exactly one opened message and restores its sender's
//! address on the way out. The capture socket is connected to the inner socket, and `recv`
//! only takes messages whose source is the inject socket, so nothing else on the host can slip
//! plaintext into gossip through the loopback sockets.
//!
//! `recv` is cancel safe (chitchat's server polls it in a `select!`): the only awaits are the
//! real socket's `recv_from` and the inner socket's `recv`, both cancel safe, and the state in
//! between (`pending`: an injected message not yet read back) lives in the socket.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use warren_api::clock::unix_now_ms;

use crate::fragment::{self, Reassembled, Reassembly};
use crate::keyring::DropReason;
use crate::metrics::MeshMetrics;
use crate::socket::{GossipSocket, Inbound};
use crate::syn_budget::SynBudget;

/// How long `recv` waits for chitchat to decode a message it was just handed over loopback.
/// Loopback delivery is immediate, so this only runs out when an authentic message is not
/// valid chitchat (a key holder sending garbage); then the message is dropped as `malformed`.
pub const RELAY_TIMEOUT: Duration = Duration::from_millis(250);

/// What the transport shares with the [`Mesh`](crate::Mesh) that owns it.
#[derive(Debug)]
pub(crate) struct TransportShared {
    /// The socket, shared with any other mesh on this port.
    pub(crate) socket: GossipSocket,
    /// The mesh's scope: its site, or `""`.
    pub(crate) scope: String,
    /// The socket's metrics.
    pub(crate) metrics: MeshMetrics,
    pub(crate) gossip_interval: Duration,
    /// [`MeshTimers::peers_per_round`](crate::MeshTimers::peers_per_round).
    pub(crate) peers_per_round: usize,
    /// The gossip addresses of the members this node holds alive or suspect, kept by the
    /// mesh's monitor: SYNs to them count against the round's budget ([`SynBudget`]).
    pub(crate) live_peers: Mutex<HashSet<SocketAddr>>,
    /// Whether the mesh sets the member gauge ([`crate::Mesh::leave_member_gauge`]).
    pub(crate) counts_members: std::sync::atomic::AtomicBool,
}

/// A chitchat [`Transport`] whose every datagram on the network is sealed by the keyring.
/// Opens exactly once, for its scope on the socket [`Mesh::start_on`](crate::Mesh::start_on)
/// was given.
pub(crate) struct SealedTransport {
    shared: Arc<TransportShared>,
    inbox: Mutex<Option<(u64, mpsc::Receiver<Inbound>)>>,
}

impl SealedTransport {
    /// `inbox`: the scope's route on the socket ([`GossipSocket::route`]).
    pub(crate) fn new(shared: Arc<TransportShared>, inbox: (u64, mpsc::Receiver<Inbound>)) -> Self {
        Self {
            shared,
            inbox: Mutex::new(Some(inbox)),
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let (registration, inbox) = self
            .inbox
            .lock()
            .expect("transport lock")
            .take()
            .context("the sealed transport opens only once")?;
        let bound = self
            .shared
            .socket
            .local_addr()
            .context("gossip socket address")?;
        anyhow::ensure!(
            bound == listen_addr,
            "chitchat asked for {listen_addr}, the gossip socket is bound to {bound}"
        );
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let inner = UdpSocket::open(loopback).await?;
        let inner_addr = inner.local_addr()?;
        let capture = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("bind gossip capture socket")?;
        capture
            .connect(inner_addr)
            .await
            .context("connect gossip capture socket")?;
        let capture_addr = capture.local_addr()?;
        let inject = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("bind gossip inject socket")?;
        let inject_addr = inject.local_addr()?;
        Ok(Box::new(SealedSocket {
            shared: self.shared.clone(),
            registration,
            inbox,
            inner,
            inner_addr,
            capture,
            capture_addr,
            inject,
            inject_addr,
            pending: None,
            reassembly: Reassembly::default(),
            next_message_id: fastrand::u32(..),
            syn_budget: SynBudget::new(self.shared.peers_per_round, self.shared.gossip_interval),
            capture_buf: vec![0u8; fragment::MAX_MESSAGE_BYTES + 1].into_boxed_slice(),
        }))
    }
}

/// A message handed to chitchat's decoder and not yet read back.
#[derive(Debug, Clone, Copy)]
struct Pending {
    peer: SocketAddr,
    len: usize,
    since: Instant,
}

struct SealedSocket {
    shared: Arc<TransportShared>,
    /// This scope's route on the socket, removed when the socket is dropped.
    registration: u64,
    /// Opened datagrams of this scope, from the socket's reader.
    inbox: mpsc::Receiver<Inbound>,
    /// chitchat's codec, on loopback.
    inner: UdpSocket,
    inner_addr: SocketAddr,
    /// Receives what `inner` encodes.
    capture: tokio::net::UdpSocket,
    capture_addr: SocketAddr,
    /// Sends opened messages to `inner` for decoding.
    inject: tokio::net::UdpSocket,
    inject_addr: SocketAddr,
    pending: Option<Pending>,
    reassembly: Reassembly,
    next_message_id: u32,
    syn_budget: SynBudget,
    capture_buf: Box<[u8]>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        let core = self.shared.socket.core();
        core.unroute(&self.shared.scope, self.registration);
    }
}

fn message_type(message: &ChitchatMessage) -> &'static str {
    match message {
        ChitchatMessage::Syn { .. } => "syn",
        ChitchatMessage::SynAck { .. } => "syn_ack",
        ChitchatMessage::Ack { .. } => "ack",
        ChitchatMessage::BadCluster => "bad_cluster",
    }
}

/// chitchat's envelope header: magic 45 139 (LE), version 0 or 1, message type 0..=3. Checked
/// before handing a message to chitchat, so that obvious garbage never costs a relay timeout.
fn looks_like_chitchat(message: &[u8]) -> bool {
    message.len() >= 4
        && message[..2] == 45_139u16.to_le_bytes()
        && message[2] <= 1
        && message[3] <= 3
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.shared
            .socket
            .local_addr()
            .context("gossip socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let message_type = message_type(&envelope.message);
        if !self.syn_allowed(to, &envelope.message) {
            self.shared.metrics.syns_skipped_total.inc();
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let message = self.encode(envelope).await?;
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let Some(fragments) = fragment::split(message_id, &message) else {
            warn!(peer = %to, len = message.len(), "gossip message too large to send");
            self.shared.metrics.count_drop(DropReason::TooLarge);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        let now_ms = unix_now_ms();
        let core = self.shared.socket.core();
        let sealed: Vec<Vec<u8>> = {
            let peer_key = core.key_for(to);
            let keyring = core.keyring.lock().expect("keyring lock");
            let key_id = peer_key.unwrap_or(keyring.current_id());
            fragments
                .iter()
                .map(|payload| keyring.seal_scoped(key_id, &self.shared.scope, payload, now_ms))
                .collect()
        };
        let metrics = &self.shared.metrics;
        metrics
            .gossip_messages_total
            .with_label_values(&["tx", message_type])
            .inc();
        metrics
            .gossip_message_bytes_total
            .with_label_values(&["tx", message_type])
            .inc_by(message.len() as u64);
        let mut num_bytes_sent = 0;
        for datagram in &sealed {
            num_bytes_sent += datagram.len();
            if core.fault.is_blocked(to) {
                metrics.count_drop(DropReason::FaultInjected);
                continue;
            }
            core.udp
                .send_to(datagram, to)
                .await
                .with_context(|| format!("send gossip datagram to {to}"))?;
            metrics.datagrams_total.with_label_values(&["tx"]).inc();
            metrics
                .datagram_bytes_total
                .with_label_values(&["tx"])
                .inc_by(datagram.len() as u64);
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(pending) = self.pending {
                if let Some(outcome) = self.read_back(pending).await? {
                    return Ok(outcome);
                }
                continue;
            }
            let Some(Inbound { peer, payload, len }) = self.inbox.recv().await else {
                anyhow::bail!("the gossip socket's reader stopped");
            };
            let Some(message) = self.reassemble(peer, &payload) else {
                continue;
            };
            match self.inject.try_send_to(&message, self.inner_addr) {
                Ok(_) => {
                    self.pending = Some(Pending {
                        peer,
                        len,
                        since: Instant::now(),
                    });
                }
                Err(err) => {
                    warn!(error = %err, "could not hand a gossip message to chitchat");
                    self.shared.metrics.count_drop(DropReason::Malformed);
                }
            }
        }
    }
}

impl SealedSocket {
    /// Has chitchat encode `envelope` and returns the bytes.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        // Leftovers of a send cancelled half-way (only at shutdown) must not be taken for ours.
        while self.capture.try_recv(&mut self.capture_buf).is_ok() {}
        let outcome = self.inner.send(self.capture_addr, envelope).await?;
        loop {
            let len = tokio::time::timeout(RELAY_TIMEOUT, self.capture.recv(&mut self.capture_buf))
                .await
                .context("chitchat's encoded message did not arrive on loopback")?
                .context("gossip capture socket recv")?;
            if len == outcome.num_bytes_sent {
                return Ok(self.capture_buf[..len].to_vec());
            }
        }
    }

    /// Takes one opened fragment of this scope; the whole message once it is complete and
    /// looks like chitchat's.
    fn reassemble(&mut self, peer: SocketAddr, fragment: &[u8]) -> Option<Vec<u8>> {
        match self.reassembly.accept(peer, fragment, Instant::now()) {
            Reassembled::Message(message) if looks_like_chitchat(&message) => Some(message),
            Reassembled::Pending => None,
            Reassembled::Message(_) | Reassembled::Malformed => {
                debug!(peer = %peer, "dropped malformed gossip message");
                self.shared.metrics.count_drop(DropReason::Malformed);
                None
            }
        }
    }

    /// Waits for chitchat to decode the injected message; `None` if it refused it.
    async fn read_back(&mut self, pending: Pending) -> anyhow::Result<Option<RecvOutcome>> {
        let remaining = RELAY_TIMEOUT.saturating_sub(pending.since.elapsed());
        let outcome = match tokio::time::timeout(remaining, self.inner.recv()).await {
            Ok(outcome) => outcome?,
            Err(_elapsed) => {
                debug!(peer = %pending.peer, "chitchat refused an authentic gossip message");
                self.shared.metrics.count_drop(DropReason::Malformed);
                self.pending = None;
                return Ok(None);
            }
        };
        if outcome.from_addr != self.inject_addr {
            warn!(source = %outcome.from_addr, "unsealed datagram on the loopback gossip socket");
            self.shared.metrics.count_drop(DropReason::Malformed);
            return Ok(None);
        }
        self.pending = None;
        let message_type = message_type(&outcome.envelope.message);
        let metrics = &self.shared.metrics;
        metrics
            .gossip_messages_total
            .with_label_values(&["rx", message_type])
            .inc();
        metrics
            .gossip_message_bytes_total
            .with_label_values(&["rx", message_type])
            .inc_by(outcome.num_bytes_received as u64);
        Ok(Some(RecvOutcome {
            from_addr: pending.peer,
            envelope: outcome.envelope,
            num_bytes_received: pending.len,
        }))
    }

    /// Whether chitchat's message to `to` goes: every SYN-ACK and ACK does, a SYN only within
    /// the round's budget of live peers ([`SynBudget`]). Counts the rounds.
    fn syn_allowed(&mut self, to: SocketAddr, message: &ChitchatMessage) -> bool {
        if !matches!(message, ChitchatMessage::Syn { .. }) {
            return true;
        }
        let to_live = self
            .shared
            .live_peers
            .lock()
            .expect("live peers lock")
            .contains(&to);
        let decision = self.syn_budget.decide(Instant::now(), to_live);
        if decision.new_round {
            self.shared.metrics.gossip_rounds_total.inc();
        }
        decision.send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chitchat_header_check() {
        assert!(looks_like_chitchat(&[0x53, 0xB0, 1, 0, 9]));
        assert!(!looks_like_chitchat(&[0x53, 0xB0, 2, 0]));
        assert!(!looks_like_chitchat(&[0x53, 0xB0, 0, 4]));
        assert!(!looks_like_chitchat(&[0, 0, 0, 0]));
        assert!(!looks_like_chitchat(&[0x53, 0xB0, 0]));
    }
}
