//! QUIC endpoints with mutual TLS, ALPN per purpose, and connection admission.
//!
//! Every connection goes through *admission* before the caller sees it: after the TLS
//! handshake the server checks that the client's certificate grants the role the ALPN needs
//! (Raft needs a control certificate, the agent stream an agent certificate, a join none), then
//! sends an admission frame on a unidirectional stream. The client's [`Endpoint::connect`]
//! returns only once that frame has arrived, so every refusal — TLS or role — surfaces as a
//! typed [`ConnectError`] at connect time instead of on the first request.
//!
//! This file holds the [`Endpoint`] itself: binding the UDP socket with the TLS configurations
//! of every purpose, and what the endpoint's connections share. The rest, by job:
//!
//! - `alpn`: what a connection is for ([`Alpn`]), its protocol id and the role it needs.
//! - `dial`: the client side — dial one address and wait for admission, a round over several
//!   addresses ([`Endpoint::connect_any`]), and the certificate-less dial of a joiner.
//! - `admission`: the server side — an [`Incoming`] connection's handshake, the checks of the
//!   client's certificate (role, revocation, expiry, known), join caps, the admission frame.
//! - `connection`: an admitted [`PeerConnection`] and its framed streams.
//! - `rpc`: one request per stream — [`PeerConnection::request`] and the [`serve_requests`] loop.
//! - `error`: the error of each operation (bind, connect, accept, stream, request), and how
//!   a quinn connection error maps onto them.

mod admission;
mod alpn;
mod connection;
mod dial;
mod error;
mod rpc;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ca::Credentials;
use crate::config::TransportConfig;
use crate::current::CurrentCredentials;
use crate::fault::{FaultSwitch, FaultySocket};
use crate::identity::PeerIdentity;
use crate::join::JoinThrottle;
use crate::limits::ConnectionLimiter;
use crate::metrics::TransportMetrics;
use crate::tls::{self, TrustList};

pub use admission::Incoming;
pub use alpn::Alpn;
pub use connection::PeerConnection;
use dial::quic_client_config;
pub(crate) use dial::{dial_pinned, dial_pinned_from};
pub use error::{AcceptError, BindError, ConnectAnyError, ConnectError, RpcError, StreamError};
pub use rpc::serve_requests;

/// QUIC application error code: the server refused admission.
const CLOSE_REFUSED: u32 = 0x57_01;
/// QUIC application error code: the server does not know the client's certificate (yet): a
/// certificate issued a moment ago whose record this node has not applied, or one the cluster
/// never issued. Retryable for the client: another control node, or this one a moment later,
/// may know it.
const CLOSE_UNKNOWN_CERTIFICATE: u32 = 0x57_02;
/// QUIC application error code: the client's certificate has expired; it may only renew it
/// ([`Alpn::Renew`]). Retryable for the client: it renews, then dials again.
const CLOSE_EXPIRED: u32 = 0x57_03;
/// QUIC application error code: normal close by the application.
const CLOSE_NORMAL: u32 = 0;

pub(crate) struct Shared {
    pub(crate) config: TransportConfig,
    pub(crate) metrics: TransportMetrics,
    revocations: TrustList,
    /// Join connections held now, in total and per source ([`TransportConfig`]'s caps).
    join_slots: ConnectionLimiter,
    /// Join refusals per source, and the throttle of their log lines.
    pub(crate) join_throttle: Mutex<JoinThrottle>,
}

impl Shared {
    fn new(config: TransportConfig, metrics: TransportMetrics, revocations: TrustList) -> Self {
        Self {
            join_slots: ConnectionLimiter::new(
                config.join_connections_max,
                config.join_connections_per_source_max,
            ),
            join_throttle: Mutex::new(JoinThrottle::new(
                config.join_refusals_per_source_per_minute,
            )),
            config,
            metrics,
            revocations,
        }
    }
}

/// Options shared by every connection of an endpoint.
#[derive(Clone, Debug, Default)]
pub struct EndpointOptions {
    /// Timers and bounds.
    pub config: TransportConfig,
    /// Where to count.
    pub metrics: TransportMetrics,
    /// Revoked certificate serials, checked on every handshake.
    pub revocations: TrustList,
    /// A switch that can cut this endpoint's UDP socket (tests, `warren dev`/`demo`): while
    /// cut, every datagram is dropped both ways. `None` in production.
    pub fault: Option<FaultSwitch>,
}

/// A QUIC endpoint that can serve (control nodes) and dial (every node) with mutual TLS.
pub struct Endpoint {
    quinn: quinn::Endpoint,
    clients: [quinn::ClientConfig; 4],
    shared: Arc<Shared>,
    current: CurrentCredentials,
    cluster_fingerprint: [u8; 32],
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.quinn.local_addr().ok())
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

/// The QUIC server side of an endpoint: every ALPN, client certificates checked against the
/// revocations, expired ones let through within the renewal grace (to renew only).
fn quic_server_config(
    current: &CurrentCredentials,
    options: &EndpointOptions,
) -> Result<quinn::ServerConfig, BindError> {
    let alpns = Alpn::ALL.iter().map(|a| a.protocol().to_vec()).collect();
    let grace = options.config.renew_grace;
    let rustls_server = tls::server_config(current, &options.revocations, alpns, grace)
        .map_err(|e| BindError::TlsSetup(e.into()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_server)
        .map_err(|e| BindError::TlsSetup(e.into()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(options.config.quinn_transport()));
    Ok(server)
}

/// Endpoint settings that survive a restart of the node.
fn endpoint_config(creds: &Credentials) -> quinn::EndpointConfig {
    // A stateless-reset key derived from the node's private key, the same after a restart:
    // a control node that comes back after kill -9 resets the connections its previous
    // run held, so agents reconnect at once instead of waiting out their silence limit.
    // Connection ids are checked with a key from the same secret: the restarted node must
    // recognise its previous run's ids as its own to answer them with a reset.
    let secret = creds.stateless_reset_secret();
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let mut cid_key = [0; 8];
    cid_key.copy_from_slice(&secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // quinn answers at most one packet per interval with a reset (20 ms by default: 50 a
    // second for the whole endpoint). A control node restarted under a thousand agents, each
    // sending a keep-alive a second, would reset them over tens of seconds, most of them only
    // after their silence limit. Resets only answer connection ids that pass the hashed
    // check above and are smaller than the packet that incites them, so a shorter interval
    // amplifies nothing.
    endpoint_config.min_reset_interval(STATELESS_RESET_INTERVAL);
    endpoint_config
}

/// The shortest time between two stateless resets this endpoint sends: 4,000 a second.
pub const STATELESS_RESET_INTERVAL: Duration = Duration::from_micros(250);

fn bind_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, BindError> {
    std::net::UdpSocket::bind(addr).map_err(|source| BindError::Io { addr, source })
}

impl Endpoint {
    /// Binds an endpoint that serves every ALPN and can dial peers. Agents, which never serve,
    /// use [`Endpoint::client`].
    ///
    /// # Errors
    /// [`BindError`] when the socket or TLS setup fails.
    pub fn bind(
        addr: SocketAddr,
        creds: &Credentials,
        options: EndpointOptions,
    ) -> Result<Self, BindError> {
        Self::build(addr, creds, options, true)
    }

    /// Binds a dial-only endpoint.
    ///
    /// # Errors
    /// [`BindError`] when the socket or TLS setup fails.
    pub fn client(
        addr: SocketAddr,
        creds: &Credentials,
        options: EndpointOptions,
    ) -> Result<Self, BindError> {
        Self::build(addr, creds, options, false)
    }

    fn build(
        addr: SocketAddr,
        creds: &Credentials,
        options: EndpointOptions,
        serve: bool,
    ) -> Result<Self, BindError> {
        options.config.validate()?;
        let tls_err = |e: rustls::Error| BindError::TlsSetup(e.into());
        let current = CurrentCredentials::new(creds).map_err(tls_err)?;
        let server = if serve {
            Some(quic_server_config(&current, &options)?)
        } else {
            None
        };
        let client_for = |alpn: Alpn| {
            let rustls_client = tls::client_config(&current, &options.revocations, alpn.protocol())
                .map_err(tls_err)?;
            quic_client_config(rustls_client, &options.config)
        };
        let clients = [
            client_for(Alpn::Raft)?,
            client_for(Alpn::Agent)?,
            client_for(Alpn::Join)?,
            client_for(Alpn::Renew)?,
        ];
        let socket = bind_socket(addr)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| BindError::Tls("no async runtime for QUIC".into()))?;
        let endpoint_config = endpoint_config(creds);
        let io_error = |source| BindError::Io { addr, source };
        let mut socket = runtime.wrap_udp_socket(socket).map_err(io_error)?;
        if let Some(switch) = &options.fault {
            socket = Arc::new(FaultySocket::new(socket, switch.clone()));
        }
        let quinn =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config, server, socket, runtime)
                .map_err(io_error)?;
        let shared = Arc::new(Shared::new(
            options.config,
            options.metrics,
            options.revocations,
        ));
        Ok(Self {
            quinn,
            clients,
            shared,
            current,
            cluster_fingerprint: creds.cluster_fingerprint(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.quinn
            .local_addr()
            .expect("a bound endpoint has a local address")
    }

    /// This endpoint's own identity (of the certificate it presents now).
    pub fn identity(&self) -> PeerIdentity {
        self.current.identity()
    }

    /// The credentials this endpoint presents, shared with whatever else was built from them
    /// (the API listener): replacing them there renews the certificate for new connections.
    pub fn credentials(&self) -> &CurrentCredentials {
        &self.current
    }

    /// SHA-256 of the cluster CA this endpoint trusts (the cluster id).
    pub fn cluster_fingerprint(&self) -> [u8; 32] {
        self.cluster_fingerprint
    }

    /// Waits for the next incoming connection; `None` once the endpoint is closed. Admit it with
    /// [`Incoming::admit`] in a task of its own so a slow handshake never blocks the others.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn accept(&self) -> Option<Incoming> {
        let incoming = self.quinn.accept().await?;
        Some(Incoming {
            inner: incoming,
            shared: self.shared.clone(),
            arrived: tokio::time::Instant::now(),
        })
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.quinn.close(CLOSE_NORMAL.into(), b"endpoint closed");
    }

    /// Waits until every connection has been closed cleanly.
    pub async fn wait_idle(&self) {
        self.quinn.wait_idle().await;
    }

    /// The metrics this endpoint counts into.
    pub fn metrics(&self) -> &TransportMetrics {
        &self.shared.metrics
    }
}
