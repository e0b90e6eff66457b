//! QUIC endpoints with mutual TLS, ALPN per purpose, and connection admission.
//!
//! Every connection goes through *admission* before the caller sees it: after the TLS
//! handshake the server checks that the client's certificate grants the role the ALPN needs
//! (Raft needs a control certificate, the agent stream an agent certificate, a join none), then
//! sends an [`Admission`] frame on a unidirectional stream. The client's [`Endpoint::connect`]
//! returns only once that frame has arrived, so every refusal — TLS or role — surfaces as a
//! typed [`ConnectError`] at connect time instead of on the first request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::ca::Credentials;
use crate::config::TransportConfig;
use crate::current::CurrentCredentials;
use crate::fault::{FaultSwitch, FaultySocket};
use crate::frame::{FrameError, FramedRecv, FramedSend};
use crate::identity::{CONTROL_SERVER_NAME, CertRole, PeerIdentity, parse_identity};
use crate::join::JoinThrottle;
use crate::limits::{ConnectionLimiter, ConnectionPermit, LimitExceeded};
use crate::metrics::TransportMetrics;
use crate::tls::{self, TrustList};

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
/// Largest admission frame.
const ADMISSION_MAX_BYTES: usize = 4 * 1024;

/// What a connection is for; each purpose has its own ALPN protocol id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Raft RPC between control nodes.
    Raft,
    /// The agent's desired-state and status stream.
    Agent,
    /// A node joining with a token (no client certificate yet).
    Join,
    /// A node renewing its certificate (which may have expired, within
    /// [`TransportConfig::renew_grace`]).
    Renew,
}

impl Alpn {
    /// Every purpose, in a fixed order.
    pub const ALL: [Alpn; 4] = [Alpn::Raft, Alpn::Agent, Alpn::Join, Alpn::Renew];

    /// The ALPN protocol id on the wire. A purpose's version goes up when its messages change
    /// in a way an older build would misread: two builds that cannot understand each other
    /// then fail the TLS handshake ("no application protocol"), never exchange garbage.
    pub fn protocol(self) -> &'static [u8] {
        match self {
            // 2: log entries and snapshots carry specs with `user`, `group` and `cap_add`.
            Self::Raft => b"warren-raft/2",
            Self::Agent => b"warren-agent/1",
            Self::Join => b"warren-join/1",
            Self::Renew => b"warren-renew/1",
        }
    }

    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raft => "raft",
            Self::Agent => "agent",
            Self::Join => "join",
            Self::Renew => "renew",
        }
    }

    fn from_protocol(protocol: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|alpn| alpn.protocol() == protocol)
    }

    /// The certificate role a client needs for this purpose (`None`: no certificate needed,
    /// or — for renewal — a node certificate of either role).
    pub fn required_role(self) -> Option<CertRole> {
        match self {
            Self::Raft => Some(CertRole::Control),
            Self::Agent => Some(CertRole::Agent),
            Self::Join | Self::Renew => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Raft => 0,
            Self::Agent => 1,
            Self::Join => 2,
            Self::Renew => 3,
        }
    }
}

/// The server's word that a connection is admitted.
#[derive(Debug, Serialize, Deserialize)]
enum Admission {
    Admitted { server: String },
}

/// Maps a TLS alert carried in a QUIC CRYPTO_ERROR code to a metric reason.
fn tls_alert_reason(code: u64) -> &'static str {
    if !(0x100..0x200).contains(&code) {
        return "protocol";
    }
    match code - 0x100 {
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "revoked",
        45 => "expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "tls",
    }
}

/// QUIC's CONNECTION_REFUSED transport error code (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;

/// Classifies a quinn connection error: (metric reason, whether the local side refused).
fn classify(error: &quinn::ConnectionError) -> (&'static str, Side) {
    use quinn::ConnectionError as E;
    match error {
        E::TransportError(e) => (tls_alert_reason(u64::from(e.code)), Side::Local),
        // CONNECTION_REFUSED: the server's endpoint is not taking connections right now (it
        // is shutting down, or a restarted one is not serving yet) — try again shortly, as
        // for a timeout; it says nothing about our credentials.
        E::ConnectionClosed(close) if u64::from(close.error_code) == CONNECTION_REFUSED => {
            ("server_busy", Side::Link)
        }
        E::ConnectionClosed(close) => (tls_alert_reason(u64::from(close.error_code)), Side::Peer),
        E::ApplicationClosed(close) if close.error_code == CLOSE_UNKNOWN_CERTIFICATE.into() => {
            ("unknown_certificate", Side::Link)
        }
        E::ApplicationClosed(close) if close.error_code == CLOSE_EXPIRED.into() => {
            ("certificate_expired", Side::Link)
        }
        E::ApplicationClosed(_) => ("refused", Side::Peer),
        E::TimedOut => ("timeout", Side::Link),
        E::Reset => ("reset", Side::Link),
        E::VersionMismatch => ("version", Side::Peer),
        E::LocallyClosed | E::CidsExhausted => ("closed", Side::Local),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Local,
    Peer,
    Link,
}

/// Why dialling a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No admitted connection within the connect timeout.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address dialled.
        addr: SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
    /// We refused the server: its certificate does not verify against our CA, is expired,
    /// revoked, or is not a control certificate.
    #[error("server {addr} is not trusted ({reason}): {detail}")]
    ServerUntrusted {
        /// The address dialled.
        addr: SocketAddr,
        /// Metric label of the reason.
        reason: &'static str,
        /// The TLS error.
        detail: String,
    },
    /// The server refused us: our certificate, or our role for this purpose.
    #[error("server {addr} refused the connection ({reason}): {detail}")]
    Refused {
        /// The address dialled.
        addr: SocketAddr,
        /// Metric label of the reason.
        reason: &'static str,
        /// What the server said.
        detail: String,
    },
    /// The link failed during setup (unreachable, reset).
    #[error("connection to {addr} failed: {detail}")]
    Link {
        /// The address dialled.
        addr: SocketAddr,
        /// The underlying error.
        detail: String,
    },
    /// A local problem building the connection.
    #[error("cannot dial {addr}: {detail}")]
    Setup {
        /// The address dialled.
        addr: SocketAddr,
        /// What is wrong.
        detail: String,
    },
}

impl ConnectError {
    /// Whether retrying later (with backoff) may succeed. Trust and refusal failures are fatal:
    /// retrying the same credentials cannot fix them.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Link { .. })
    }

    /// Whether the server refused us because our certificate is revoked: the node was
    /// removed from the cluster. The refusal comes from a server whose certificate we have
    /// already verified (TLS 1.3 sends the client's certificate after checking the server's),
    /// so it is the cluster's word, not a stranger's.
    pub fn is_revoked(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                reason: "revoked",
                ..
            }
        )
    }

    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::ServerUntrusted { reason, .. } | Self::Refused { reason, .. } => reason,
            Self::Link { .. } => "link",
            Self::Setup { .. } => "setup",
        }
    }
}

/// Why an incoming connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The handshake or admission did not complete in time (a stalled or slow peer).
    #[error("handshake from {addr} did not complete within {timeout:?}")]
    Timeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
    /// TLS refused the client (unknown CA, expired, revoked, malformed) or the client refused us.
    #[error("handshake with {addr} failed ({reason}): {detail}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// Metric label of the reason.
        reason: &'static str,
        /// The TLS error.
        detail: String,
    },
    /// The certificate is valid but does not grant what the ALPN needs, or was revoked.
    #[error("refused {addr} for {alpn}: {detail}")]
    Refused {
        /// Metric label of the reason (`wrong_role`, `revoked`, `no_alpn`).
        reason: &'static str,
        /// The peer's address.
        addr: SocketAddr,
        /// The purpose asked for.
        alpn: &'static str,
        /// Why.
        detail: String,
    },
}

impl AcceptError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Handshake { reason, .. } => reason,
            Self::Refused { reason, .. } => reason,
        }
    }
}

/// Why opening or accepting a stream failed.
#[derive(Debug, thiserror::Error)]
#[error("stream on connection to {addr} failed: {detail}")]
pub struct StreamError {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The underlying error.
    pub detail: String,
}

/// Why a request/response exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The stream could not be opened.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Sending or receiving a frame failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No response within the request timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

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

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The UDP socket could not be bound.
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS configuration failed (bad credentials).
    #[error("cannot configure TLS: {0}")]
    Tls(String),
    /// The transport config is inconsistent.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

fn quic_client_config(
    rustls_config: rustls::ClientConfig,
    config: &TransportConfig,
) -> Result<quinn::ClientConfig, BindError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| BindError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(config.quinn_transport()));
    Ok(client)
}

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
        let tls_err = |e: rustls::Error| BindError::Tls(e.to_string());
        let current = CurrentCredentials::new(creds).map_err(tls_err)?;
        let server = if serve {
            let alpns = Alpn::ALL.iter().map(|a| a.protocol().to_vec()).collect();
            let grace = options.config.renew_grace;
            let rustls_server = tls::server_config(&current, &options.revocations, alpns, grace)
                .map_err(tls_err)?;
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_server)
                .map_err(|e| BindError::Tls(e.to_string()))?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            server.transport_config(Arc::new(options.config.quinn_transport()));
            Some(server)
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

    /// Dials a control node for `alpn` and waits for admission.
    ///
    /// # Errors
    /// [`ConnectError`]; see [`ConnectError::is_retryable`].
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: Alpn,
    ) -> Result<PeerConnection, ConnectError> {
        let client = self.clients[alpn.index()].clone();
        dial(&self.quinn, client, addr, alpn, &self.shared).await
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

/// Dials, handshakes and waits for admission (shared by cluster clients and joiners).
async fn dial(
    quinn: &quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    alpn: Alpn,
    shared: &Arc<Shared>,
) -> Result<PeerConnection, ConnectError> {
    let timeout = shared.config.connect_timeout;
    let result = tokio::time::timeout(timeout, async {
        let connecting = quinn
            .connect_with(client, addr, CONTROL_SERVER_NAME)
            .map_err(|e| ConnectError::Setup {
                addr,
                detail: e.to_string(),
            })?;
        let conn = connecting.await.map_err(|e| connect_error(addr, &e))?;
        let recv = conn
            .accept_uni()
            .await
            .map_err(|e| connect_error(addr, &e))?;
        let mut framed =
            FramedRecv::new(recv, ADMISSION_MAX_BYTES, timeout, shared.metrics.clone());
        let Admission::Admitted { server } = framed.recv().await.map_err(|e| match e {
            FrameError::Stream(detail) => ConnectError::Link { addr, detail },
            other => ConnectError::Refused {
                addr,
                reason: "protocol",
                detail: other.to_string(),
            },
        })?;
        debug!(peer = %addr, server = %server, alpn = alpn.as_str(), "connection admitted");
        let peer = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| certs.first().and_then(|c| parse_identity(c).ok()));
        Ok(PeerConnection::new(
            conn,
            alpn,
            peer,
            shared.clone(),
            "client",
        ))
    })
    .await;
    let result = result.unwrap_or(Err(ConnectError::Timeout { addr, timeout }));
    if let Err(error) = &result {
        shared
            .metrics
            .handshake_failures_total
            .with_label_values(&["client", error.kind()])
            .inc();
    }
    result
}

fn connect_error(addr: SocketAddr, error: &quinn::ConnectionError) -> ConnectError {
    let (reason, side) = classify(error);
    let detail = match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => other.to_string(),
    };
    match side {
        Side::Local => ConnectError::ServerUntrusted {
            addr,
            reason,
            detail,
        },
        Side::Peer => ConnectError::Refused {
            addr,
            reason,
            detail,
        },
        Side::Link => ConnectError::Link { addr, detail },
    }
}

/// A connection attempt that has not been admitted yet.
pub struct Incoming {
    inner: quinn::Incoming,
    shared: Arc<Shared>,
    /// When the endpoint handed it out: a join's deadline counts from here.
    arrived: tokio::time::Instant,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.inner.remote_address())
            .finish()
    }
}

impl Incoming {
    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Completes the handshake, checks the client's role against the ALPN, and admits the
    /// connection. Failures are counted in `warren_transport_handshake_failures_total`.
    ///
    /// # Errors
    /// [`AcceptError`] describing the refusal.
    pub async fn admit(self) -> Result<PeerConnection, AcceptError> {
        let shared = self.shared.clone();
        let addr = self.inner.remote_address();
        let timeout = shared.config.connect_timeout;
        let result = tokio::time::timeout(timeout, admit_inner(self.inner, self.arrived, &shared))
            .await
            .unwrap_or(Err(AcceptError::Timeout { addr, timeout }));
        if let Err(error) = &result {
            shared
                .metrics
                .handshake_failures_total
                .with_label_values(&["server", error.kind()])
                .inc();
            debug!(peer = %addr, error = %error, "connection not admitted");
        }
        result
    }
}

async fn admit_inner(
    incoming: quinn::Incoming,
    arrived: tokio::time::Instant,
    shared: &Arc<Shared>,
) -> Result<PeerConnection, AcceptError> {
    let addr = incoming.remote_address();
    let handshake_error = |e: quinn::ConnectionError| {
        let (reason, side) = classify(&e);
        // The peer refusing *our* certificate is a different story from us refusing theirs.
        let reason = if side == Side::Peer {
            "peer_rejected"
        } else {
            reason
        };
        AcceptError::Handshake {
            addr,
            reason,
            detail: e.to_string(),
        }
    };
    let conn = incoming
        .accept()
        .map_err(handshake_error)?
        .await
        .map_err(handshake_error)?;
    let alpn = conn
        .handshake_data()
        .and_then(|any| any.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol.and_then(|p| Alpn::from_protocol(&p)));
    let Some(alpn) = alpn else {
        conn.close(CLOSE_REFUSED.into(), b"no supported ALPN");
        return Err(AcceptError::Refused {
            reason: "no_alpn",
            addr,
            alpn: "none",
            detail: "no supported ALPN".into(),
        });
    };
    let peer = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().map(|c| parse_identity(c)));
    let peer = match (alpn.required_role(), peer) {
        (None, Some(Ok(identity))) if alpn == Alpn::Renew && identity.role != CertRole::Admin => {
            Some(identity)
        }
        (None, _) if alpn == Alpn::Renew => {
            let detail = "renew requires a node certificate".to_owned();
            conn.close(CLOSE_REFUSED.into(), detail.as_bytes());
            return Err(AcceptError::Refused {
                reason: "wrong_role",
                addr,
                alpn: alpn.as_str(),
                detail,
            });
        }
        (None, None) => None,
        (None, Some(Ok(identity))) => Some(identity),
        (Some(role), Some(Ok(identity))) if identity.role == role => Some(identity),
        (required, peer) => {
            let detail = match (required, peer) {
                (_, Some(Err(e))) => format!("certificate has no usable identity: {e}"),
                (Some(role), None) => format!("{} requires a {role} certificate", alpn.as_str()),
                (Some(role), Some(Ok(identity))) => {
                    format!(
                        "{} requires a {role} certificate, not {}",
                        alpn.as_str(),
                        identity.role
                    )
                }
                (None, _) => "refused".to_owned(),
            };
            conn.close(CLOSE_REFUSED.into(), detail.as_bytes());
            return Err(AcceptError::Refused {
                reason: "wrong_role",
                addr,
                alpn: alpn.as_str(),
                detail,
            });
        }
    };
    // Checked again here (not only in the TLS verifier) so a certificate revoked while the
    // process runs is refused on every path into the server.
    if let Some(identity) = &peer
        && shared.revocations.is_revoked(&identity.serial)
    {
        let detail = format!("certificate {} has been revoked", identity.serial);
        conn.close(CLOSE_REFUSED.into(), detail.as_bytes());
        return Err(AcceptError::Refused {
            reason: "revoked",
            addr,
            alpn: alpn.as_str(),
            detail,
        });
    }
    if let Some(identity) = &peer
        && alpn != Alpn::Renew
        && identity.not_after_unix < crate::ca::unix_now()
    {
        let detail = format!(
            "certificate {} expired; the node renews it over {}",
            identity.serial,
            Alpn::Renew.as_str()
        );
        conn.close(CLOSE_EXPIRED.into(), detail.as_bytes());
        return Err(AcceptError::Refused {
            reason: "expired",
            addr,
            alpn: alpn.as_str(),
            detail,
        });
    }
    if let Some(identity) = &peer
        && let Err(detail) = shared.revocations.check_known(identity)
    {
        conn.close(CLOSE_UNKNOWN_CERTIFICATE.into(), detail.as_bytes());
        return Err(AcceptError::Refused {
            reason: "unknown_certificate",
            addr,
            alpn: alpn.as_str(),
            detail,
        });
    }
    let join = if alpn == Alpn::Join {
        // A joiner has no certificate yet: one request stream, nothing else, for a bounded
        // time, and only so many at once.
        conn.set_max_concurrent_bi_streams(1u32.into());
        conn.set_max_concurrent_uni_streams(0u32.into());
        Some(Arc::new(join_slot(&conn, arrived, shared)?))
    } else {
        None
    };
    let send = conn.open_uni().await.map_err(handshake_error)?;
    let mut framed = FramedSend::new(
        send,
        ADMISSION_MAX_BYTES,
        shared.config.frame_timeout,
        shared.metrics.clone(),
    );
    let admitted = Admission::Admitted {
        server: CONTROL_SERVER_NAME.to_owned(),
    };
    framed
        .send(&admitted)
        .await
        .map_err(|e| AcceptError::Handshake {
            addr,
            reason: "admission",
            detail: e.to_string(),
        })?;
    framed.finish();
    let mut admitted = PeerConnection::new(conn, alpn, peer, shared.clone(), "server");
    admitted.join = join;
    Ok(admitted)
}

/// Takes a join slot for `conn`, or closes it at once when the join caps are reached.
fn join_slot(
    conn: &quinn::Connection,
    arrived: tokio::time::Instant,
    shared: &Shared,
) -> Result<JoinSlot, AcceptError> {
    let addr = conn.remote_address();
    match shared.join_slots.try_acquire(addr.ip()) {
        Ok(permit) => Ok(JoinSlot {
            _permit: permit,
            deadline: arrived + shared.config.join_deadline,
        }),
        Err(exceeded) => {
            let (reason, detail) = match exceeded {
                LimitExceeded::Total => ("join_busy", "too many join connections; retry later"),
                LimitExceeded::PerSource => (
                    "join_busy_source",
                    "too many join connections from this address; retry later",
                ),
            };
            conn.close(CLOSE_REFUSED.into(), detail.as_bytes());
            Err(AcceptError::Refused {
                reason,
                addr,
                alpn: Alpn::Join.as_str(),
                detail: detail.to_owned(),
            })
        }
    }
}

/// A join connection's slot: freed when the connection's last handle drops.
#[derive(Debug)]
pub(crate) struct JoinSlot {
    _permit: ConnectionPermit,
    /// When the join exchange must be over ([`TransportConfig::join_deadline`] after arrival).
    pub(crate) deadline: tokio::time::Instant,
}

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
    shared: Arc<Shared>,
    _active: Arc<ActiveGuard>,
    /// Set on a join connection a server admitted.
    join: Option<Arc<JoinSlot>>,
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
    fn new(
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
            Alpn::Join => crate::join::JOIN_FRAME_MAX_BYTES.min(self.shared.config.max_frame_bytes),
            _ => self.shared.config.max_frame_bytes,
        }
    }

    /// The connection's purpose.
    pub fn alpn(&self) -> Alpn {
        self.alpn
    }

    /// The peer's address.
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

    fn framed(&self, send: quinn::SendStream, recv: quinn::RecvStream) -> (FramedSend, FramedRecv) {
        let config = &self.shared.config;
        (
            FramedSend::new(
                send,
                self.max_frame_bytes(),
                config.frame_timeout,
                self.shared.metrics.clone(),
            ),
            FramedRecv::new(
                recv,
                self.max_frame_bytes(),
                config.frame_timeout,
                self.shared.metrics.clone(),
            ),
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
        Ok(self.framed(send, recv))
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
        Ok(self.framed(send, recv))
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
        let config = &self.shared.config;
        Ok(FramedSend::new(
            send,
            self.max_frame_bytes(),
            config.frame_timeout,
            self.shared.metrics.clone(),
        ))
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
        let config = &self.shared.config;
        Ok(FramedRecv::new(
            recv,
            self.max_frame_bytes(),
            config.frame_timeout,
            self.shared.metrics.clone(),
        ))
    }

    /// Sends one request on a new stream and waits for its response, within the request
    /// timeout.
    ///
    /// # Errors
    /// [`RpcError`].
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
    ) -> Result<Resp, RpcError> {
        let timeout = self.shared.config.request_timeout;
        tokio::time::timeout(timeout, async {
            let (mut send, mut recv) = self.open_stream().await?;
            send.send(request).await?;
            send.finish();
            Ok(recv.recv().await?)
        })
        .await
        .unwrap_or(Err(RpcError::Timeout(timeout)))
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

/// Answers requests on `conn` until it closes: each stream carries one request and one
/// response, and each is handled in a task of its own. Returns when the connection closes.
pub async fn serve_requests<Req, Resp, F, Fut>(conn: PeerConnection, handler: F)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + Sync + 'static,
    F: Fn(Req, PeerConnection) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    let tasks = tokio_util::task::TaskTracker::new();
    while let Ok((mut send, mut recv)) = conn.accept_stream().await {
        let handler = handler.clone();
        let conn = conn.clone();
        tasks.spawn(async move {
            let request = match recv.recv::<Req>().await {
                Ok(request) => request,
                Err(error) => {
                    debug!(peer = %conn.remote_address(), error = %error, "bad request frame");
                    return;
                }
            };
            let response = handler(request, conn.clone()).await;
            if let Err(error) = send.send(&response).await {
                debug!(peer = %conn.remote_address(), error = %error, "response not delivered");
            }
            send.finish();
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// A dial-only endpoint with no certificate, for joining (see [`crate::join`]).
pub(crate) async fn dial_pinned(
    addr: SocketAddr,
    pinned: [u8; 32],
    config: &TransportConfig,
    metrics: &TransportMetrics,
) -> Result<(quinn::Endpoint, PeerConnection), ConnectError> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    dial_pinned_from(local, addr, pinned, config, metrics).await
}

/// [`dial_pinned`] from a chosen local address.
pub(crate) async fn dial_pinned_from(
    local: SocketAddr,
    addr: SocketAddr,
    pinned: [u8; 32],
    config: &TransportConfig,
    metrics: &TransportMetrics,
) -> Result<(quinn::Endpoint, PeerConnection), ConnectError> {
    let setup = |detail: String| ConnectError::Setup { addr, detail };
    config.validate().map_err(|e| setup(e.to_string()))?;
    let rustls_client =
        tls::join_client_config(pinned, Alpn::Join.protocol()).map_err(|e| setup(e.to_string()))?;
    let client = quic_client_config(rustls_client, config).map_err(|e| setup(e.to_string()))?;
    let quinn = quinn::Endpoint::client(local).map_err(|e| setup(e.to_string()))?;
    let shared = Arc::new(Shared::new(
        config.clone(),
        metrics.clone(),
        TrustList::default(),
    ));
    let conn = dial(&quinn, client, addr, Alpn::Join, &shared).await?;
    Ok((quinn, conn))
}

impl Endpoint {
    /// Dials `addrs` in turn, once each, until one admits us: one round. The caller decides
    /// whether and when to try again (and may look the addresses up afresh meanwhile: a name
    /// can move, or start resolving again). A refusal because our certificate is revoked ends
    /// the round at once; other fatal errors (trust, refusal) are kept while the remaining
    /// addresses are tried, so that one misconfigured node does not hide the healthy ones.
    ///
    /// # Errors
    /// [`ConnectAnyError::NoAddress`] for an empty list, [`ConnectAnyError::Cancelled`] when
    /// `cancel` fires first, [`ConnectAnyError::Fatal`] for a revoked certificate or when
    /// every address refused for good, else [`ConnectAnyError::Unreachable`] with the last
    /// retryable error (some address may answer if tried again soon).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call leaves no connection behind.
    pub async fn connect_any(
        &self,
        addrs: &[SocketAddr],
        alpn: Alpn,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<PeerConnection, ConnectAnyError> {
        let mut fatal: Option<ConnectError> = None;
        let mut last: Option<ConnectError> = None;
        for addr in addrs {
            let attempt = tokio::select! {
                () = cancel.cancelled() => return Err(ConnectAnyError::Cancelled),
                attempt = self.connect(*addr, alpn) => attempt,
            };
            match attempt {
                Ok(conn) => return Ok(conn),
                Err(error) if error.is_revoked() => return Err(ConnectAnyError::Fatal(error)),
                Err(error) if error.is_retryable() => {
                    debug!(peer = %addr, error = %error, "dial failed");
                    last = Some(error);
                }
                Err(error) => {
                    debug!(peer = %addr, error = %error, "dial refused");
                    fatal.get_or_insert(error);
                }
            }
        }
        match (last, fatal) {
            (Some(last), _) => Err(ConnectAnyError::Unreachable {
                tried: addrs.len(),
                last,
            }),
            (None, Some(error)) => Err(ConnectAnyError::Fatal(error)),
            (None, None) => Err(ConnectAnyError::NoAddress),
        }
    }
}

/// Why [`Endpoint::connect_any`] returned without a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectAnyError {
    /// The cancellation token fired.
    #[error("cancelled")]
    Cancelled,
    /// There was no address to dial.
    #[error("no address to dial")]
    NoAddress,
    /// Every address failed in a way that may pass (no answer, network unreachable).
    #[error("no answer from {tried} address(es); last: {last}")]
    Unreachable {
        /// How many addresses were dialled.
        tried: usize,
        /// The last failure.
        last: ConnectError,
    },
    /// A revoked certificate, or every address refused in a way retrying the same
    /// credentials cannot fix (trust, refusal).
    #[error(transparent)]
    Fatal(ConnectError),
}

impl ConnectAnyError {
    /// Whether trying again soon (with backoff) may succeed: no answer, or no address yet.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::NoAddress)
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    /// A server endpoint that refuses new connections (shutting down, or not serving yet)
    /// is a passing state, retried like a timeout; a TLS refusal of our certificate is not.
    #[test]
    fn connection_refused_by_a_busy_endpoint_is_retryable() {
        let addr: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let closed = |code: quinn::TransportErrorCode| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: code,
                frame_type: None,
                reason: bytes::Bytes::new(),
            })
        };
        let busy = connect_error(addr, &closed(quinn::TransportErrorCode::CONNECTION_REFUSED));
        assert!(busy.is_retryable(), "{busy}");
        let revoked = connect_error(addr, &closed(quinn::TransportErrorCode::crypto(44)));
        assert!(!revoked.is_retryable(), "{revoked}");
    }
}
