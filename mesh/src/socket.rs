//! The gossip socket: one UDP socket that carries one or more meshes.
//!
//! An agent is in one mesh, its site's; a control node is in every site's mesh and in the
//! unnamed one (the control nodes, and agents of earlier releases), all on its one gossip port.
//! So the socket, not the mesh, owns what is per port: the UDP socket, the keyring (one replay
//! cache, one key rotation for every mesh), the fault switch, the metrics, and the key each
//! peer last spoke. A reader task opens every datagram and hands it to the mesh its scope
//! names ([`crate::keyring`]), or drops it as `unknown_scope`; each mesh's transport
//! (`transport`) reassembles and decodes its own.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warren_api::clock::unix_now_ms;

use crate::fault::GossipFaultSwitch;
use crate::keyring::{DropReason, KeyId, Keyring, MAX_DATAGRAM_BYTES, MAX_SCOPE_BYTES};
use crate::metrics::MeshMetrics;

/// Opened datagrams one mesh may have waiting before new ones are dropped as `backlog`: a
/// few rounds of every peer's traffic.
pub const INBOX_DATAGRAMS: usize = 1_024;
/// Peers whose key id this node remembers, to answer each in the key it speaks during a
/// rotation. Cleared when full; the cost is a few replies sealed with the current key.
pub const MAX_PEER_KEYS: usize = 4_096;

/// One opened datagram for a mesh: its sender, its payload (a fragment) and its sealed size.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) peer: SocketAddr,
    pub(crate) payload: Vec<u8>,
    pub(crate) len: usize,
}

/// What every mesh on the socket shares.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) udp: tokio::net::UdpSocket,
    pub(crate) keyring: Mutex<Keyring>,
    pub(crate) metrics: MeshMetrics,
    pub(crate) fault: GossipFaultSwitch,
    /// The key id each peer last spoke, to answer in it during a rotation.
    peer_keys: Mutex<HashMap<SocketAddr, KeyId>>,
    /// The meshes on this socket, by scope, with the registration that owns each entry.
    routes: Mutex<HashMap<String, (u64, mpsc::Sender<Inbound>)>>,
}

impl Core {
    /// The key to answer `peer` in: the one it last spoke, else the current one.
    pub(crate) fn key_for(&self, peer: SocketAddr) -> Option<KeyId> {
        self.peer_keys
            .lock()
            .expect("peer keys lock")
            .get(&peer)
            .copied()
    }

    /// Removes `scope`'s route if `registration` still owns it.
    pub(crate) fn unroute(&self, scope: &str, registration: u64) {
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.get(scope).is_some_and(|(id, _)| *id == registration) {
            routes.remove(scope);
        }
    }
}

/// A bound gossip socket. Cheap to clone; the reader stops when the last clone is dropped
/// (or at [`close`](GossipSocket::close)).
#[derive(Clone, Debug)]
pub struct GossipSocket {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    core: Arc<Core>,
    cancel: CancellationToken,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A scope already has a mesh on this socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Another mesh on this socket has the scope.
    #[error("the gossip socket already carries a mesh for scope {0:?}")]
    Taken(String),
    /// Longer than a site name can be.
    #[error("gossip scope {0:?} is longer than {MAX_SCOPE_BYTES} bytes")]
    TooLong(String),
}

impl GossipSocket {
    /// Binds `listen_addr` and starts the reader.
    ///
    /// # Errors
    /// The OS error when the address cannot be bound.
    pub async fn bind(
        listen_addr: SocketAddr,
        keyring: Keyring,
        metrics: MeshMetrics,
        fault: GossipFaultSwitch,
    ) -> io::Result<Self> {
        let udp = tokio::net::UdpSocket::bind(listen_addr).await?;
        let core = Arc::new(Core {
            udp,
            keyring: Mutex::new(keyring),
            metrics,
            fault,
            peer_keys: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
        });
        let cancel = CancellationToken::new();
        let reader = tokio::spawn(read(core.clone(), cancel.clone()));
        Ok(Self {
            inner: Arc::new(Handle {
                core,
                cancel,
                reader: Mutex::new(Some(reader)),
            }),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    ///
    /// # Errors
    /// The OS error, if the socket cannot say.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.core.udp.local_addr()
    }

    /// The metrics every mesh on this socket counts into.
    pub fn metrics(&self) -> &MeshMetrics {
        &self.inner.core.metrics
    }

    /// The scopes with a mesh on this socket now.
    pub fn scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = self
            .inner
            .core
            .routes
            .lock()
            .expect("routes lock")
            .keys()
            .cloned()
            .collect();
        scopes.sort();
        scopes
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// Routes `scope`'s datagrams to a new inbox; `registration` names the route for
    /// [`Core::unroute`].
    pub(crate) fn route(&self, scope: &str) -> Result<(u64, mpsc::Receiver<Inbound>), ScopeError> {
        if scope.len() > MAX_SCOPE_BYTES {
            return Err(ScopeError::TooLong(scope.to_owned()));
        }
        let mut routes = self.inner.core.routes.lock().expect("routes lock");
        if routes.contains_key(scope) {
            return Err(ScopeError::Taken(scope.to_owned()));
        }
        let registration = fastrand::u64(..);
        let (tx, rx) = mpsc::channel(INBOX_DATAGRAMS);
        routes.insert(scope.to_owned(), (registration, tx));
        Ok((registration, rx))
    }

    /// Stops the reader and waits for it, so that the port is free once this returns — if
    /// this is the last handle on the socket; otherwise only drops this handle.
    pub async fn close(self) {
        let Ok(handle) = Arc::try_unwrap(self.inner) else {
            return;
        };
        handle.cancel.cancel();
        let reader = handle.reader.lock().expect("reader lock").take();
        drop(handle);
        if let Some(reader) = reader {
            let _ = reader.await;
        }
    }
}

/// Errors a UDP socket reports for an earlier datagram (ICMP), not for itself.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::WouldBlock
    )
}

/// The reader: every datagram on the socket, checked, opened and handed to its mesh.
async fn read(core: Arc<Core>, cancel: CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1].into_boxed_slice();
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            received = core.udp.recv_from(&mut buf) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(err) if is_transient(&err) => {
                debug!(error = %err, "transient gossip recv error");
                continue;
            }
            Err(err) => {
                tracing::error!(error = %err, "gossip socket failed: no more gossip is received");
                return;
            }
        };
        if let Err(reason) = deliver(&core, peer, &buf[..len]) {
            debug!(peer = %peer, reason = reason.label(), "dropped gossip datagram");
            core.metrics.count_drop(reason);
        }
    }
}

/// Checks one datagram from the network and queues it for its mesh.
fn deliver(core: &Core, peer: SocketAddr, datagram: &[u8]) -> Result<(), DropReason> {
    let metrics = &core.metrics;
    metrics.datagrams_total.with_label_values(&["rx"]).inc();
    metrics
        .datagram_bytes_total
        .with_label_values(&["rx"])
        .inc_by(datagram.len() as u64);
    if core.fault.is_blocked(peer) {
        return Err(DropReason::FaultInjected);
    }
    let opened = core
        .keyring
        .lock()
        .expect("keyring lock")
        .open(datagram, peer, unix_now_ms())?;
    {
        let mut peer_keys = core.peer_keys.lock().expect("peer keys lock");
        if peer_keys.len() >= MAX_PEER_KEYS && !peer_keys.contains_key(&peer) {
            peer_keys.clear();
        }
        peer_keys.insert(peer, opened.key_id);
    }
    let routes = core.routes.lock().expect("routes lock");
    let (_, inbox) = routes.get(&opened.scope).ok_or(DropReason::UnknownScope)?;
    inbox
        .try_send(Inbound {
            peer,
            payload: opened.payload,
            len: datagram.len(),
        })
        .map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => DropReason::Backlog,
            mpsc::error::TrySendError::Closed(_) => DropReason::UnknownScope,
        })
}
