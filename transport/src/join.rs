//! The join handshake: a new node trades a token and a CSR for a certificate.
//!
//! 1. The joiner parses its token and dials with no client certificate, ALPN `warren-join/1`,
//!    verifying the server by the CA fingerprint the token pins ([`crate::tls`]). Nothing
//!    secret is sent to a server that fails this.
//! 2. It sends a [`JoinRequest`]: the token, its role, a CSR for a key pair it generated
//!    locally, and its name, site and labels.
//! 3. The server's [`JoinAuthority`] redeems the token (the control plane does this through Raft)
//!    and signs the CSR with the identity it decides; the joiner gets a [`JoinGrant`] or a
//!    [`JoinRefusal`] naming the reason. An agent's grant also carries its node secret key
//!    ([`crate::seal::node_secret_key`]), the only time that key crosses the network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use warren_api::{NodeId, NodeRole};

use crate::ca::{
    CaError, CertSubject, ClusterCa, Credentials, NODE_CERT_LIFETIME, Validity, generate_csr,
};
use crate::config::TransportConfig;
use crate::endpoint::{ConnectError, PeerConnection, RpcError, dial_pinned, dial_pinned_from};
use crate::identity::{CertRole, fingerprint};
use crate::limits::{LogThrottle, RefusalLimiter};
use crate::metrics::TransportMetrics;
use crate::seal::SealKey;
use crate::token::{JoinToken, TokenBook, TokenError};
use warren_api::clock::{unix_now, unix_now_ms};

/// Largest join request or response frame.
pub const MAX_JOIN_FRAME_BYTES: usize = 64 * 1024;
/// Version of the join messages. 2: the grant carries the node secret key; a version-1 joiner
/// could not decode it, so it is refused with a message naming both versions.
pub const JOIN_VERSION: u16 = 2;

/// What a joiner sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// [`JOIN_VERSION`] of the sender.
    pub version: u16,
    /// The token as the operator pasted it.
    pub token: String,
    /// The role asked for.
    pub role: NodeRole,
    /// A PKCS#10 CSR (DER) for the joiner's own key pair.
    pub csr_der: Vec<u8>,
    /// Node name (host name by default).
    pub name: String,
    /// Site the node belongs to.
    pub site: String,
    /// Free-form labels for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// Addresses the node advertises (QUIC, API, gossip …), for control joins.
    pub advertise: Vec<String>,
}

/// What a successful join returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGrant {
    /// The id the cluster assigned.
    pub node_id: NodeId,
    /// The signed certificate (DER).
    pub cert_der: Vec<u8>,
    /// The cluster CA certificate (DER).
    pub ca_cert_der: Vec<u8>,
    /// QUIC addresses of the control nodes, to dial from now on.
    pub control_addrs: Vec<String>,
    /// The key secrets are sealed with for this node (agents only; `None` for control nodes
    /// and from an authority without a cluster key). Sent only over the pinned TLS channel;
    /// its `Debug` output hides it.
    pub secret_key: Option<SealKey>,
}

/// Why a join was refused, as the joiner sees it. Unknown and forged tokens look the same from
/// outside ([`JoinRefusalReason::InvalidToken`]), so a prober learns nothing about which ids
/// exist; the server's metrics tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinRefusalReason {
    /// The token string does not parse.
    MalformedToken,
    /// The token is for another cluster.
    WrongCluster,
    /// Unknown id or wrong secret.
    InvalidToken,
    /// The token is for another role.
    WrongRole,
    /// The token expired.
    Expired,
    /// The single-use token was already used.
    AlreadyUsed,
    /// The token was revoked.
    Revoked,
    /// The request itself is invalid (CSR, name, version).
    BadRequest,
    /// The server could not complete the join (e.g. no quorum); retry later.
    Unavailable,
}

/// A refusal with a one-line explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct JoinRefusal {
    /// The reason, for programs.
    pub reason: JoinRefusalReason,
    /// The explanation, for people.
    pub message: String,
}

impl JoinRefusal {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            reason: JoinRefusalReason::BadRequest,
            message: message.into(),
        }
    }
}

impl From<&TokenError> for JoinRefusal {
    fn from(error: &TokenError) -> Self {
        let reason = match error {
            TokenError::Malformed(_) => JoinRefusalReason::MalformedToken,
            TokenError::WrongCluster => JoinRefusalReason::WrongCluster,
            TokenError::Unknown | TokenError::BadSecret => JoinRefusalReason::InvalidToken,
            TokenError::WrongRole { .. } => JoinRefusalReason::WrongRole,
            TokenError::Expired => JoinRefusalReason::Expired,
            TokenError::AlreadyUsed => JoinRefusalReason::AlreadyUsed,
            TokenError::Revoked => JoinRefusalReason::Revoked,
        };
        let message = match error {
            TokenError::Unknown | TokenError::BadSecret => TokenError::BadSecret.to_string(),
            other => other.to_string(),
        };
        Self { reason, message }
    }
}

/// An authority's refusal: what the joiner is told, and the precise metric label (which may say
/// more than the joiner is told, e.g. `unknown` vs `bad_secret`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// What the joiner sees.
    pub refusal: JoinRefusal,
    /// The `result` label of `warren_transport_join_requests_total`.
    pub metric_label: &'static str,
}

impl From<TokenError> for Refused {
    fn from(error: TokenError) -> Self {
        Self {
            refusal: JoinRefusal::from(&error),
            metric_label: error.kind(),
        }
    }
}

impl Refused {
    /// A refusal of the request itself (bad CSR, bad name).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            refusal: JoinRefusal::bad_request(message),
            metric_label: "bad_request",
        }
    }

    /// The server cannot decide now (no quorum); the joiner should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let refusal = JoinRefusal {
            reason: JoinRefusalReason::Unavailable,
            message: message.into(),
        };
        Self {
            refusal,
            metric_label: "unavailable",
        }
    }
}

/// The server's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// Joined.
    Granted(JoinGrant),
    /// Refused.
    Refused(JoinRefusal),
}

/// A join request whose token parsed and pins this cluster.
#[derive(Debug)]
pub struct CheckedJoin {
    /// The parsed token.
    pub token: JoinToken,
    /// The request.
    pub request: JoinRequest,
}

/// Decides joins: redeems the token and issues the certificate. The control plane implements
/// this over Raft; [`LocalJoinAuthority`] is the in-memory version.
pub trait JoinAuthority: Send + Sync {
    /// Redeems the token and signs the CSR, or refuses.
    fn authorize(
        &self,
        join: CheckedJoin,
    ) -> impl std::future::Future<Output = Result<JoinGrant, Refused>> + Send;

    /// SHA-256 of the cluster CA certificate; requests pinning another CA are refused early.
    fn cluster_fingerprint(&self) -> [u8; 32];
}

/// How often refused joins are logged at most (the first one at once; then one line a minute
/// with a count), so a stream of bad tokens cannot flood the log.
pub const JOIN_REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Per-endpoint memory of refused joins: refusals per source, to refuse a source that keeps
/// trying as rate-limited without checking its token, and the throttle of the WARN lines.
#[derive(Debug)]
pub(crate) struct JoinThrottle {
    refusals: RefusalLimiter,
    log: LogThrottle,
}

impl JoinThrottle {
    pub(crate) fn new(refusals_per_minute: u32) -> Self {
        Self {
            refusals: RefusalLimiter::new(refusals_per_minute, Duration::from_secs(60)),
            log: LogThrottle::new(JOIN_REFUSAL_LOG_EVERY),
        }
    }
}

/// Answers one join connection: reads the request, asks the authority, writes the response.
/// Counts the outcome in `warren_transport_join_requests_total`. The whole exchange is bounded
/// by the connection's join deadline ([`TransportConfig::join_deadline`] from its arrival):
/// past it the connection is closed, answered or not, and counted as `deadline`.
pub async fn serve_join<A: JoinAuthority>(
    conn: PeerConnection,
    authority: &A,
    metrics: &TransportMetrics,
) {
    let deadline = conn
        .join_deadline()
        .unwrap_or_else(|| tokio::time::Instant::now() + conn.shared().config.join_deadline);
    let exchange = serve_join_exchange(&conn, authority, metrics);
    if tokio::time::timeout_at(deadline, exchange).await.is_err() {
        metrics
            .join_requests_total
            .with_label_values(&["deadline"])
            .inc();
        debug!(peer = %conn.remote_address(), "join connection closed at its deadline");
        conn.close("join deadline passed");
    }
}

async fn serve_join_exchange<A: JoinAuthority>(
    conn: &PeerConnection,
    authority: &A,
    metrics: &TransportMetrics,
) {
    let peer = conn.remote_address();
    let Ok((mut send, mut recv)) = conn.accept_stream().await else {
        return;
    };
    let request: JoinRequest = match recv.recv().await {
        Ok(request) => request,
        Err(error) => {
            metrics
                .join_requests_total
                .with_label_values(&["bad_frame"])
                .inc();
            debug!(peer = %peer, error = %error, "unreadable join request");
            conn.close("unreadable join request");
            return;
        }
    };
    let (response, label) = decide(conn, request, authority).await;
    metrics
        .join_requests_total
        .with_label_values(&[label])
        .inc();
    if let JoinResponse::Refused(refusal) = &response {
        note_refusal(conn, label, refusal);
    }
    if send.send(&response).await.is_ok() {
        send.finish();
        // Let the response drain before the connection is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
}

/// The answer to a join request and its metric label. A source refused
/// [`TransportConfig::join_refusals_per_source_per_minute`] times in the last minute is
/// refused as `rate_limited` (reason `Unavailable`: retry later) before its token is looked at.
async fn decide<A: JoinAuthority>(
    conn: &PeerConnection,
    request: JoinRequest,
    authority: &A,
) -> (JoinResponse, &'static str) {
    let source = conn.remote_address().ip();
    let limited = lock_throttle(conn)
        .refusals
        .limited(source, std::time::Instant::now());
    if let Some(wait) = limited {
        let refused = Refused {
            metric_label: "rate_limited",
            ..Refused::unavailable(format!(
                "too many refused join attempts from this address; retry in {} s",
                wait.as_secs().max(1)
            ))
        };
        return (JoinResponse::Refused(refused.refusal), refused.metric_label);
    }
    let refused = match check_request(request, authority.cluster_fingerprint()) {
        Err(refused) => refused,
        Ok(checked) => match authority.authorize(checked).await {
            Ok(grant) => {
                info!(peer = %conn.remote_address(), node_id = %grant.node_id, "node joined");
                return (JoinResponse::Granted(grant), "granted");
            }
            Err(refused) => refused,
        },
    };
    // "Unavailable" is the server's own trouble (no quorum), not the joiner's fault.
    if refused.refusal.reason != JoinRefusalReason::Unavailable {
        lock_throttle(conn)
            .refusals
            .refused(source, std::time::Instant::now());
    }
    (JoinResponse::Refused(refused.refusal), refused.metric_label)
}

fn lock_throttle(conn: &PeerConnection) -> std::sync::MutexGuard<'_, JoinThrottle> {
    conn.shared()
        .join_throttle
        .lock()
        .expect("join throttle lock is not poisoned")
}

/// Logs a refusal: every one at debug, the first at WARN, then at most one WARN line per
/// [`JOIN_REFUSAL_LOG_EVERY`] with the count of those in between.
fn note_refusal(conn: &PeerConnection, label: &str, refusal: &JoinRefusal) {
    let peer = conn.remote_address();
    debug!(peer = %peer, reason = label, "join refused: {}", refusal.message);
    let held_back = lock_throttle(conn).log.note(std::time::Instant::now());
    match held_back {
        Some(0) => warn!(peer = %peer, reason = label, "join refused: {}", refusal.message),
        Some(more) => warn!(
            peer = %peer,
            reason = label,
            more,
            "join refused: {} ({more} more refusals since the last line; see warren_transport_join_requests_total)",
            refusal.message
        ),
        None => {}
    }
}

fn check_request(request: JoinRequest, cluster: [u8; 32]) -> Result<CheckedJoin, Refused> {
    if request.version != JOIN_VERSION {
        let message = format!(
            "join protocol version {} is not supported (this server speaks {JOIN_VERSION})",
            request.version
        );
        return Err(Refused::bad_request(message));
    }
    let token: JoinToken = request.token.parse().map_err(Refused::from)?;
    if token.ca_fingerprint != cluster {
        return Err(Refused::from(TokenError::WrongCluster));
    }
    Ok(CheckedJoin { token, request })
}

/// An in-memory authority: a CA, a token book and the control addresses to hand out. Used by a
/// single process that owns its CA (tests, `warren demo`); the control plane replaces the book
/// with its replicated state.
pub struct LocalJoinAuthority {
    ca: ClusterCa,
    book: Mutex<TokenBook>,
    control_addrs: Vec<String>,
    cert_lifetime: Duration,
}

impl std::fmt::Debug for LocalJoinAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJoinAuthority")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl LocalJoinAuthority {
    /// An authority over `ca` with `book`, handing out `control_addrs`.
    pub fn new(ca: ClusterCa, book: TokenBook, control_addrs: Vec<String>) -> Self {
        Self {
            ca,
            book: Mutex::new(book),
            control_addrs,
            cert_lifetime: NODE_CERT_LIFETIME,
        }
    }

    /// Sets the lifetime of issued certificates.
    pub fn with_cert_lifetime(mut self, lifetime: Duration) -> Self {
        self.cert_lifetime = lifetime;
        self
    }

    /// Adds a token record.
    pub fn add_token(&self, record: crate::token::TokenRecord) {
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record);
    }
}

impl JoinAuthority for LocalJoinAuthority {
    async fn authorize(&self, join: CheckedJoin) -> Result<JoinGrant, Refused> {
        let now_ms = unix_now_ms();
        let redeemed = self.book.lock().unwrap_or_else(|e| e.into_inner()).redeem(
            &join.token,
            self.ca.fingerprint(),
            join.request.role,
            now_ms,
        );
        // The precise reason (unknown vs forged) goes to metrics; the joiner sees less.
        redeemed?;
        let node_id = NodeId(random_node_id());
        let subject = CertSubject::Node {
            node_id,
            role: CertRole::from(join.request.role),
        };
        let validity = Validity::starting_at(unix_now(), self.cert_lifetime);
        let cert = self
            .ca
            .sign_csr(&join.request.csr_der, &subject, validity)
            .map_err(|e| Refused::bad_request(e.to_string()))?;
        Ok(JoinGrant {
            node_id,
            cert_der: cert.to_vec(),
            ca_cert_der: self.ca.cert_der().to_vec(),
            control_addrs: self.control_addrs.clone(),
            // No cluster key here, so no node secret key: such nodes get no secrets.
            secret_key: None,
        })
    }

    fn cluster_fingerprint(&self) -> [u8; 32] {
        self.ca.fingerprint()
    }
}

/// A random non-zero node id.
pub fn random_node_id() -> u64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the OS random source is available");
    u64::from_be_bytes(bytes).max(1)
}

/// What the joiner asks for, besides the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinParams {
    /// Control or agent.
    pub role: NodeRole,
    /// Node name.
    pub name: String,
    /// Site.
    pub site: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Advertised addresses.
    pub advertise: Vec<String>,
}

/// A successful join, from the joiner's side.
#[derive(Debug)]
pub struct Joined {
    /// Certificate, key and CA, ready to save.
    pub credentials: Credentials,
    /// The node id the cluster assigned.
    pub node_id: NodeId,
    /// Control addresses to dial.
    pub control_addrs: Vec<String>,
    /// The node's secret key, when the grant carried one (see [`JoinGrant::secret_key`]).
    pub secret_key: Option<SealKey>,
}

/// Why a join failed, on the joiner's side.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token does not parse; nothing was sent.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Could not reach or trust the server. A `ServerUntrusted` error here means the server is
    /// not the cluster the token names; the token was not sent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The exchange failed.
    #[error("join exchange failed: {0}")]
    Exchange(#[from] RpcError),
    /// The server refused.
    #[error("join refused: {0}")]
    Refused(JoinRefusal),
    /// The server's grant is inconsistent (wrong CA, wrong identity, bad certificate).
    #[error("join grant is invalid: {0}")]
    BadGrant(String),
    /// The grant's certificate, key and CA do not make usable credentials.
    #[error("join grant is invalid: {0}")]
    BadGrantCredentials(#[source] CaError),
    /// Local key generation failed.
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl JoinError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(e) => e.is_retryable(),
            Self::Exchange(_) => true,
            Self::Refused(r) => r.reason == JoinRefusalReason::Unavailable,
            _ => false,
        }
    }
}

/// Joins the cluster at `addr` with `token`.
///
/// # Errors
/// [`JoinError`]; the token is only sent after the server proved it holds a certificate from
/// the pinned CA.
pub async fn join(
    addr: SocketAddr,
    token: &str,
    params: JoinParams,
    config: &TransportConfig,
    metrics: &TransportMetrics,
) -> Result<Joined, JoinError> {
    let parsed: JoinToken = token.parse()?;
    let (key, csr_der) = generate_csr()?;
    let (endpoint, conn) = dial_pinned(addr, parsed.ca_fingerprint, config, metrics).await?;
    let request = JoinRequest {
        version: JOIN_VERSION,
        token: token.trim().to_owned(),
        role: params.role,
        csr_der,
        name: params.name,
        site: params.site,
        labels: params.labels,
        advertise: params.advertise,
    };
    let response: Result<JoinResponse, RpcError> = conn.request(&request).await;
    conn.close("joined");
    endpoint.close(0u32.into(), b"joined");
    let grant = match response? {
        JoinResponse::Granted(grant) => grant,
        JoinResponse::Refused(refusal) => return Err(JoinError::Refused(refusal)),
    };
    if fingerprint(&grant.ca_cert_der) != parsed.ca_fingerprint {
        return Err(JoinError::BadGrant(
            "CA certificate does not match the token".into(),
        ));
    }
    let credentials = Credentials::new(
        grant.cert_der.into(),
        key.serialize_der(),
        grant.ca_cert_der.into(),
    )
    .map_err(JoinError::BadGrantCredentials)?;
    let identity = credentials.identity();
    if identity.node_id != Some(grant.node_id) || identity.role != CertRole::from(params.role) {
        return Err(JoinError::BadGrant(
            "certificate identity does not match the grant".into(),
        ));
    }
    Ok(Joined {
        credentials,
        node_id: grant.node_id,
        control_addrs: grant.control_addrs,
        secret_key: grant.secret_key,
    })
}

/// A join connection that was opened and admitted but carries no request: what a probe of
/// the join limits holds (and what an attacker would). Dropping it closes it.
#[derive(Debug)]
pub struct OpenJoin {
    endpoint: quinn::Endpoint,
    conn: PeerConnection,
}

impl OpenJoin {
    /// The admitted connection.
    pub fn connection(&self) -> &PeerConnection {
        &self.conn
    }
}

impl Drop for OpenJoin {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"probe over");
    }
}

/// Opens a join connection from `local` to the server at `addr` (pinned to the CA whose
/// fingerprint is `pinned`) and sends nothing on it.
///
/// # Errors
/// [`ConnectError`]: unreachable, untrusted, or refused (the join caps are reached).
pub async fn open_join(
    local: SocketAddr,
    addr: SocketAddr,
    pinned: [u8; 32],
    config: &TransportConfig,
    metrics: &TransportMetrics,
) -> Result<OpenJoin, ConnectError> {
    let (endpoint, conn) = dial_pinned_from(local, addr, pinned, config, metrics).await?;
    Ok(OpenJoin { endpoint, conn })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
    use crate::endpoint::{Endpoint, EndpointOptions};
    use crate::frame::FrameError;

    /// A joiner (no certificate) cannot make the server buffer more than the join frame limit,
    /// and may open only one stream.
    #[tokio::test]
    async fn join_connections_are_held_to_the_small_frame_limit() {
        crate::install_crypto_provider();
        let ca = ClusterCa::generate("t", Validity::starting_at(unix_now(), CA_LIFETIME)).unwrap();
        let creds = ca
            .issue_credentials(
                &CertSubject::Node {
                    node_id: NodeId(1),
                    role: CertRole::Control,
                },
                Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
            )
            .unwrap();
        let metrics = TransportMetrics::unregistered();
        let options = EndpointOptions {
            metrics: metrics.clone(),
            ..Default::default()
        };
        let server = Arc::new(Endpoint::bind(([127, 0, 0, 1], 0).into(), &creds, options).unwrap());
        let accept = {
            let server = server.clone();
            tokio::spawn(async move {
                let conn = server.accept().await.unwrap().admit().await.unwrap();
                let (_send, mut recv) = conn.accept_stream().await.unwrap();
                recv.recv::<JoinRequest>().await.unwrap_err()
            })
        };
        let config = TransportConfig::default();
        let (_client, conn) = dial_pinned(server.local_addr(), ca.fingerprint(), &config, &metrics)
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_stream().await.unwrap();
        send.send_raw(&((MAX_JOIN_FRAME_BYTES as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        let err = accept.await.unwrap();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    max: MAX_JOIN_FRAME_BYTES,
                    ..
                }
            ),
            "{err}"
        );
    }
}
