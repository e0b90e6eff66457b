//! Raft RPC over QUIC: openraft's network traits on top of `transport`'s mutual-TLS endpoint
//! (ALPN `warren-raft/1`, control certificates only).
//!
//! One cached connection per peer; a failed call drops it so the next call redials. A peer that
//! answers with a certificate for another node id is treated as unreachable: addresses move,
//! identities do not. A peer that refuses our certificate as revoked is the cluster's word
//! that this node was removed: [`Peers::removed`] says so, and the node stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::sync::{Mutex, watch};
use warren_transport::{Alpn, Endpoint, PeerConnection};

use crate::rpc::{ControlRpc, ControlRpcReply};
use crate::types::{Member, TypeConfig};

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
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
    /// The call failed on an established connection.
    #[error(transparent)]
    Rpc(#[from] warren_transport::RpcError),
    /// The peer answered with a reply of the wrong kind.
    #[error("peer answered with an unexpected reply")]
    UnexpectedReply,
}

/// Dials peers and caches one connection per peer. Shared by Raft replication and by write
/// forwarding.
#[derive(Clone, Debug)]
pub struct Peers {
    endpoint: Arc<Endpoint>,
    connections: Arc<Mutex<HashMap<u64, PeerConnection>>>,
    removed: Arc<watch::Sender<Option<String>>>,
}

async fn resolve(addr: &str) -> Result<SocketAddr, PeerError> {
    let resolve_error = |detail: String| PeerError::Resolve {
        addr: addr.to_owned(),
        detail,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no addresses".into()))
}

impl Peers {
    /// Peers reached through `endpoint`.
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        Self {
            endpoint,
            connections: Arc::default(),
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

    async fn connection(&self, target: u64, addr: &str) -> Result<PeerConnection, PeerError> {
        if let Some(conn) = self.connections.lock().await.get(&target) {
            return Ok(conn.clone());
        }
        let socket = resolve(addr).await?;
        let conn = self.endpoint.connect(socket, Alpn::Raft).await?;
        let actual = conn
            .peer()
            .and_then(|p| p.node_id)
            .map(|id| id.0)
            .unwrap_or(0);
        if actual != target {
            conn.close("wrong peer");
            return Err(PeerError::WrongPeer {
                addr: socket,
                expected: target,
                actual,
            });
        }
        self.connections.lock().await.insert(target, conn.clone());
        Ok(conn)
    }

    /// Sends one RPC to `target` at `addr`, within `timeout`.
    ///
    /// # Errors
    /// [`PeerError`]; the cached connection is dropped so the next call redials.
    pub async fn call(
        &self,
        target: u64,
        addr: &str,
        rpc: &ControlRpc,
        timeout: Duration,
    ) -> Result<ControlRpcReply, PeerError> {
        let attempt = async {
            let conn = self.connection(target, addr).await?;
            Ok::<_, PeerError>(conn.request::<ControlRpc, ControlRpcReply>(rpc).await?)
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Rpc(warren_transport::RpcError::Timeout(timeout))),
        };
        if let Err(PeerError::Connect(error)) = &result
            && error.is_revoked()
        {
            self.note_removed(format!(
                "the control node at {addr} refused this node's certificate as revoked"
            ));
        }
        if result.is_err() {
            if let Some(conn) = self.connections.lock().await.remove(&target) {
                conn.close("call failed");
            }
        }
        result
    }

    /// Drops every cached connection (on shutdown, or to simulate a partition in tests).
    pub async fn disconnect_all(&self) {
        for (_, conn) in self.connections.lock().await.drain() {
            conn.close("disconnect");
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
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

fn rpc_error<E: std::error::Error>(error: PeerError) -> RPCError<u64, Member, E> {
    match error {
        PeerError::Rpc(e) => RPCError::Network(NetworkError::new(&e)),
        PeerError::UnexpectedReply => RPCError::Network(NetworkError::new(&error)),
        other => RPCError::Unreachable(Unreachable::new(&other)),
    }
}

fn remote<E: std::error::Error>(target: u64, error: E) -> RPCError<u64, Member, E> {
    RPCError::RemoteError(openraft::error::RemoteError::new(target, error))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
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
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
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
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let request = ControlRpc::Vote(rpc);
        match self
            .peers
            .call(self.target, &self.addr, &request, option.hard_ttl())
            .await
        {
            Ok(ControlRpcReply::Vote(reply)) => reply.map_err(|e| remote(self.target, e)),
            Ok(_) => Err(rpc_error(PeerError::UnexpectedReply)),
            Err(error) => Err(rpc_error(error)),
        }
    }
}
