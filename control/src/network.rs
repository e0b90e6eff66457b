//! Raft RPC over QUIC: openraft's network traits on top of `transport`'s mutual-TLS endpoint
//! (ALPN `warren-raft/5`, control certificates only).
//!
//! One cached connection per peer. Dialling runs in a task of its own, shared by every caller
//! that needs the peer meanwhile, so a call whose deadline is shorter than a handshake (a
//! heartbeat over a slow link) does not abandon the dial: a later call finds the connection
//! ready. A dial still running after `redial_after` gets a second one beside it (at most
//! [`MAX_DIALS_PER_PEER`]): a handshake whose first packet was lost — the peer was not listening
//! yet — would otherwise wait out QUIC's initial retransmission timer. A connection that closed
//! (the peer went away, or a restarted peer reset it) or that broke mid-call is dropped and
//! dialled anew; one that merely answered late is kept, unless it stays silent for
//! [`MAX_SILENT_TIMEOUTS`] calls in a row. A peer that answers with a certificate for another
//! node id is treated as unreachable: addresses move, identities do not.
//!
//! Every outcome feeds the [`ContactBook`]: which peers answer, logged once when one goes down
//! and when it comes back (see [`crate::contact`]). A peer that refuses our certificate as
//! revoked is the cluster's word that this node was removed: [`Peers::removed`] says so, and
//! the node stops.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_transport::{Alpn, Endpoint, PeerConnection};

use crate::contact::{ContactBook, Health, Notice};
use crate::rpc::{ControlRpc, ControlRpcReply};
use crate::types::{RaftMember, TypeConfig};

/// Calls in a row that may time out on a connection before it is dropped and dialled anew: a
/// peer killed without closing its connections leaves it open but silent.
pub const MAX_SILENT_TIMEOUTS: u32 = 2;

/// Dials to one peer at a time, at most (see [`Peers`]'s redial).
pub const MAX_DIALS_PER_PEER: usize = 2;

/// Why dialling a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address does not resolve.
    #[error("cannot resolve {addr}: {detail}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        detail: String,
    },
    /// Dialling failed.
    #[error(transparent)]
    Connect(#[from] warren_transport::ConnectError),
    /// The peer's certificate names another node.
    #[error("peer at {addr} is node {actual:016x}, not {expected:016x}")]
    WrongPeer {
        /// The address.
        addr: SocketAddr,
        /// The node we meant to reach.
        expected: u64,
        /// The node that answered.
        actual: u64,
    },
    /// The dialling task ended without an answer (the runtime is shutting down).
    #[error("dialling was abandoned")]
    Abandoned,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made.
    #[error(transparent)]
    Dial(Arc<DialError>),
    /// The connection was still being set up when the call's deadline passed.
    #[error("no connection to {addr} within {:.1}s", waited.as_secs_f64())]
    StillDialing {
        /// The address.
        addr: String,
        /// The call's deadline.
        waited: Duration,
    },
    /// The call failed on an established connection.
    #[error(transparent)]
    Rpc(#[from] warren_transport::RpcError),
    /// The peer answered with a reply of the wrong kind.
    #[error("peer answered with an unexpected reply")]
    UnexpectedReply,
}

impl PeerError {
    /// Whether no connection was made (as opposed to a call failing on one).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Dial(_) | Self::StillDialing { .. })
    }
}

/// Timers of the peer layer (derived from `ControlConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTimers {
    /// Calls failing this long, with no word from the peer, make it unreachable.
    pub unreachable_after: Duration,
    /// A dial still under way after this long gets a second one beside it.
    pub redial_after: Duration,
    /// openraft's pause before retrying an unreachable peer: first, and at most.
    pub retry_initial: Duration,
    /// See `retry_initial`.
    pub retry_max: Duration,
}

/// A connection in use.
#[derive(Debug)]
struct Connected {
    conn: PeerConnection,
    /// Tells this connection from a later one to the same peer.
    dial_id: u64,
    /// Calls in a row that timed out on it.
    timeouts: u32,
}

/// Everything about one peer's connection.
#[derive(Debug, Default)]
struct Slot {
    conn: Option<Connected>,
    /// Dials under way: id and start.
    dials: Vec<(u64, Instant)>,
    /// Why the last dial failed, for callers waiting when no other dial is left.
    last_dial_error: Option<Arc<DialError>>,
    /// Bumped whenever a dial ends.
    dial_ended: watch::Sender<u64>,
}

/// Dials peers and caches one connection per peer. Shared by Raft replication, elections and
/// write forwarding, and the keeper of the [`ContactBook`].
#[derive(Clone, Debug)]
pub struct Peers {
    endpoint: Arc<Endpoint>,
    slots: Arc<Mutex<HashMap<u64, Slot>>>,
    contacts: Arc<Mutex<ContactBook>>,
    greater_log_seen: Arc<AtomicBool>,
    next_dial_id: Arc<AtomicU64>,
    tasks: TaskTracker,
    timers: PeerTimers,
    removed: Arc<watch::Sender<Option<String>>>,
}

async fn resolve(addr: &str) -> Result<SocketAddr, DialError> {
    let resolve_error = |detail: String| DialError::Resolve {
        addr: addr.to_owned(),
        detail,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no addresses".into()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn peer_hex(id: u64) -> String {
    format!("{id:016x}")
}

impl Peers {
    /// Peers reached through `endpoint`; dialling tasks run on `tasks`.
    pub fn new(endpoint: Arc<Endpoint>, tasks: TaskTracker, timers: PeerTimers) -> Self {
        Self {
            endpoint,
            slots: Arc::default(),
            contacts: Arc::new(Mutex::new(ContactBook::new(timers.unreachable_after))),
            greater_log_seen: Arc::default(),
            next_dial_id: Arc::default(),
            tasks,
            timers,
            removed: Arc::new(watch::channel(None).0),
        }
    }

    /// Becomes `Some(why)` once this node learns it was removed from the cluster.
    pub fn removed(&self) -> watch::Receiver<Option<String>> {
        self.removed.subscribe()
    }

    /// Records that this node was removed (the first reason wins).
    pub(crate) fn note_removed(&self, why: String) {
        self.removed.send_if_modified(|removed| {
            let first = removed.is_none();
            if first {
                *removed = Some(why);
            }
            first
        });
    }

    /// The cached connection to `target`, or one dialled now. Joins a dial under way, and
    /// starts another beside it once it has run for `redial_after` (a handshake whose first
    /// packet was lost waits out QUIC's initial retransmission timer, about a second).
    async fn connection(
        &self,
        target: u64,
        addr: &str,
    ) -> Result<(PeerConnection, u64), PeerError> {
        loop {
            let mut dial_ended = {
                let mut slots = lock(&self.slots);
                let slot = slots.entry(target).or_default();
                if let Some(connected) = &slot.conn {
                    if !connected.conn.is_closed() {
                        return Ok((connected.conn.clone(), connected.dial_id));
                    }
                    slot.conn = None;
                }
                let now = Instant::now();
                let newest = slot.dials.iter().map(|(_, started)| *started).max();
                let due = newest.is_none_or(|started| now - started >= self.timers.redial_after);
                if due && slot.dials.len() < MAX_DIALS_PER_PEER {
                    let dial_id = self.next_dial_id.fetch_add(1, Ordering::Relaxed);
                    slot.dials.push((dial_id, now));
                    self.spawn_dial(target, addr.to_owned(), dial_id);
                }
                slot.dial_ended.subscribe()
            };
            if dial_ended.changed().await.is_err() {
                // The slot was dropped (disconnect, or the peer left the membership).
                return Err(PeerError::Dial(Arc::new(DialError::Abandoned)));
            }
            let slots = lock(&self.slots);
            if let Some(slot) = slots.get(&target)
                && slot.conn.is_none()
                && slot.dials.is_empty()
                && let Some(error) = &slot.last_dial_error
            {
                return Err(PeerError::Dial(error.clone()));
            }
        }
    }

    /// Dials `target` in a task of its own. The first dial to succeed becomes the peer's
    /// connection; a later one is closed.
    fn spawn_dial(&self, target: u64, addr: String, dial_id: u64) {
        let peers = self.clone();
        self.tasks.spawn(async move {
            let outcome = peers.dial(target, &addr).await;
            let mut slots = lock(&peers.slots);
            let Some(slot) = slots.get_mut(&target) else {
                if let Ok(conn) = outcome {
                    conn.close("not needed");
                }
                return;
            };
            slot.dials.retain(|(id, _)| *id != dial_id);
            match outcome {
                Ok(conn) if slot.conn.is_none() => {
                    slot.conn = Some(Connected {
                        conn,
                        dial_id,
                        timeouts: 0,
                    });
                    slot.last_dial_error = None;
                }
                Ok(conn) => conn.close("already connected"),
                Err(error) => slot.last_dial_error = Some(Arc::new(error)),
            }
            slot.dial_ended.send_modify(|ended| *ended += 1);
        });
    }

    async fn dial(&self, target: u64, addr: &str) -> Result<PeerConnection, DialError> {
        let socket = resolve(addr).await?;
        let conn = self.endpoint.connect(socket, Alpn::Raft).await?;
        let actual = conn
            .peer()
            .and_then(|p| p.node_id)
            .map(|id| id.0)
            .unwrap_or(0);
        if actual != target {
            conn.close("wrong peer");
            return Err(DialError::WrongPeer {
                addr: socket,
                expected: target,
                actual,
            });
        }
        Ok(conn)
    }

    /// Sends one RPC to `target` at `addr`, within `timeout`.
    ///
    /// # Errors
    /// [`PeerError`]. A broken connection is dropped so the next call redials.
    pub async fn call(
        &self,
        target: u64,
        addr: &str,
        rpc: &ControlRpc,
        timeout: Duration,
    ) -> Result<ControlRpcReply, PeerError> {
        let deadline = Instant::now() + timeout;
        let (conn, dial_id) =
            match tokio::time::timeout_at(deadline, self.connection(target, addr)).await {
                Ok(Ok(connected)) => connected,
                Ok(Err(error)) => {
                    if let PeerError::Dial(dial) = &error
                        && let DialError::Connect(connect) = dial.as_ref()
                        && connect.is_revoked()
                    {
                        self.note_removed(format!(
                            "the control node at {addr} refused this node's certificate as revoked"
                        ));
                    }
                    return Err(self.failed(target, error));
                }
                Err(_) => {
                    let error = PeerError::StillDialing {
                        addr: addr.to_owned(),
                        waited: timeout,
                    };
                    return Err(self.failed(target, error));
                }
            };
        let request = conn.request::<ControlRpc, ControlRpcReply>(rpc);
        let outcome = match tokio::time::timeout_at(deadline, request).await {
            Ok(outcome) => outcome,
            Err(_) => Err(warren_transport::RpcError::Timeout(timeout)),
        };
        self.settle(target, dial_id, &outcome);
        match outcome {
            Ok(reply) => {
                self.heard_from(target);
                Ok(reply)
            }
            Err(error) => Err(self.failed(target, error.into())),
        }
    }

    /// Keeps or drops the connection `dial_id` after a call on it.
    fn settle<T>(
        &self,
        target: u64,
        dial_id: u64,
        outcome: &Result<T, warren_transport::RpcError>,
    ) {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(&target) else {
            return;
        };
        let Some(connected) = slot.conn.as_mut().filter(|c| c.dial_id == dial_id) else {
            return;
        };
        let drop_it = match outcome {
            Ok(_) => {
                connected.timeouts = 0;
                false
            }
            Err(warren_transport::RpcError::Timeout(_)) => {
                connected.timeouts += 1;
                connected.timeouts >= MAX_SILENT_TIMEOUTS
            }
            Err(_) => true,
        };
        if drop_it {
            connected.conn.close("call failed");
            slot.conn = None;
        }
    }

    /// Records a failed call and logs what the contact book says; returns the error.
    fn failed(&self, target: u64, error: PeerError) -> PeerError {
        let now = Instant::now();
        let text = error.to_string();
        let notice = match &error {
            PeerError::Rpc(warren_transport::RpcError::Timeout(_)) => {
                lock(&self.contacts).late(target, now, &text)
            }
            _ => lock(&self.contacts).failed(target, now, &text),
        };
        log_notice(notice);
        error
    }

    /// Records that `peer` is alive: it answered, or sent us an RPC.
    pub fn heard_from(&self, peer: u64) {
        let notice = lock(&self.contacts).heard(peer, Instant::now());
        log_notice(notice);
    }

    /// How each of `peers` answers this node now.
    pub fn health(&self, peers: impl IntoIterator<Item = u64>) -> BTreeMap<u64, Health> {
        let now = Instant::now();
        let contacts = lock(&self.contacts);
        peers
            .into_iter()
            .map(|peer| (peer, contacts.health(peer, now)))
            .collect()
    }

    /// Whether a call that can do without `peer` should leave it out (see
    /// [`ContactBook::skip`]).
    pub fn skip(&self, peer: u64) -> bool {
        lock(&self.contacts).skip(peer, Instant::now())
    }

    /// Whether calls to `peer` are failing now, with no word from it since (see
    /// [`ContactBook::failing`]).
    pub fn failing(&self, peer: u64) -> bool {
        lock(&self.contacts).failing(peer)
    }

    /// Forgets peers that are no longer members.
    pub fn retain(&self, mut keep: impl FnMut(u64) -> bool) {
        lock(&self.contacts).retain(&mut keep);
        lock(&self.slots).retain(|peer, slot| {
            let kept = keep(*peer);
            if let (false, Some(connected)) = (kept, &slot.conn) {
                connected.conn.close("no longer a member");
            }
            kept
        });
    }

    /// Whether a vote response since the last call showed a voter with a longer log.
    pub fn take_greater_log_seen(&self) -> bool {
        self.greater_log_seen.swap(false, Ordering::Relaxed)
    }

    /// Drops every cached connection (on shutdown, or to simulate a partition in tests).
    pub async fn disconnect_all(&self) {
        for (_, slot) in lock(&self.slots).drain() {
            if let Some(connected) = slot.conn {
                connected.conn.close("disconnect");
            }
        }
    }
}

fn log_notice(notice: Option<Notice>) {
    match notice {
        None => {}
        Some(Notice::Down {
            peer,
            failing_for,
            error,
        }) => {
            warn!(peer = %peer_hex(peer), failing_for = ?failing_for, error = %error, "control peer unreachable");
        }
        Some(Notice::StillDown {
            peer,
            failing_for,
            error,
        }) => {
            warn!(peer = %peer_hex(peer), failing_for = ?failing_for, error = %error, "control peer still unreachable");
        }
        Some(Notice::Slow {
            peer,
            late_calls,
            error,
        }) => {
            warn!(peer = %peer_hex(peer), late_calls, error = %error, "control peer slow: calls passed their deadline");
        }
        Some(Notice::Back { peer, down_for }) => {
            info!(peer = %peer_hex(peer), down_for = ?down_for, "control peer reachable again");
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &RaftMember) -> PeerClient {
        PeerClient {
            peers: self.clone(),
            target,
            addr: node.quic_addr.clone(),
        }
    }
}

/// openraft's handle on one peer.
#[derive(Debug)]
pub struct PeerClient {
    peers: Peers,
    target: u64,
    addr: String,
}

/// No connection means unreachable (openraft then backs off); a failure on a connection is a
/// network error (openraft retries on its next heartbeat or append).
fn rpc_error<E: std::error::Error>(error: PeerError) -> RPCError<u64, RaftMember, E> {
    if error.is_unreachable() {
        RPCError::Unreachable(Unreachable::new(&error))
    } else {
        RPCError::Network(NetworkError::new(&error))
    }
}

fn remote<E: std::error::Error>(target: u64, error: E) -> RPCError<u64, RaftMember, E> {
    RPCError::RemoteError(openraft::error::RemoteError::new(target, error))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, RaftMember, RaftError<u64>>> {
        let request = ControlRpc::AppendEntries(rpc);
        match self
            .peers
            .call(self.target, &self.addr, &request, option.hard_ttl())
            .await
        {
            Ok(ControlRpcReply::AppendEntries(reply)) => reply.map_err(|e| remote(self.target, e)),
            Ok(_) => Err(rpc_error(PeerError::UnexpectedReply)),
            Err(error) => Err(rpc_error(error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, RaftMember, RaftError<u64, InstallSnapshotError>>,
    > {
        let request = ControlRpc::InstallSnapshot(rpc);
        match self
            .peers
            .call(self.target, &self.addr, &request, option.hard_ttl())
            .await
        {
            Ok(ControlRpcReply::InstallSnapshot(reply)) => {
                reply.map_err(|e| remote(self.target, e))
            }
            Ok(_) => Err(rpc_error(PeerError::UnexpectedReply)),
            Err(error) => Err(rpc_error(error)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, RaftMember, RaftError<u64>>> {
        let our_last_log_id = rpc.last_log_id;
        let request = ControlRpc::Vote(rpc);
        match self
            .peers
            .call(self.target, &self.addr, &request, option.hard_ttl())
            .await
        {
            Ok(ControlRpcReply::Vote(Ok(reply))) => {
                if !reply.vote_granted && reply.last_log_id > our_last_log_id {
                    // The election timer lets that voter win the next round (see `election`).
                    self.peers.greater_log_seen.store(true, Ordering::Relaxed);
                }
                Ok(reply)
            }
            Ok(ControlRpcReply::Vote(Err(e))) => Err(remote(self.target, e)),
            Ok(_) => Err(rpc_error(PeerError::UnexpectedReply)),
            Err(error) => Err(rpc_error(error)),
        }
    }

    fn backoff(&self) -> Backoff {
        let timers = self.peers.timers;
        let mut backoff = warren_transport::Backoff::new(timers.retry_initial, timers.retry_max);
        Backoff::new(std::iter::from_fn(move || Some(backoff.next_delay())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dial_past_its_deadline_says_so_in_tenths_of_a_second() {
        let error = PeerError::StillDialing {
            addr: "127.0.0.2:7101".into(),
            waited: Duration::from_micros(4_998_713),
        };
        assert_eq!(
            error.to_string(),
            "no connection to 127.0.0.2:7101 within 5.0s"
        );
    }
}
