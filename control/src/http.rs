//! The HTTP API (JSON, hyper): routes of `warren_api::rest`, served over TLS with admin client
//! certificates and over the Unix socket `<data-dir>/control.sock`.
//!
//! Any control node answers: writes are forwarded to the leader, reads are linearizable
//! unless `?stale=true`. Errors map to HTTP status in exactly one place ([`ApiError::status`]).
//! Every answer carries the control members' API addresses (`MEMBERS_HEADER`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use warren_api::rest::{
    AdminCreate, AdminInfo, AdminIssued, AdminRenew, AgentLinkInfo, ClusterStatus, ErrorBody,
    MAX_BODY_BYTES, MAX_TOKEN_TTL_MS, MEMBERS_HEADER, MemberContact, MemberHealth, MemberInfo,
    NodeCounts, NodeInfo, PREFIX, ReplicaInfo, ScaleRequest, SecretCreate, ServiceInfo, TokenInfo,
    TokenRequest, TokenResponse, WriteResult,
};
use warren_api::routes::{Route, Unrouted};
use warren_api::{Availability, NodeId, NodeState, ServiceName, ServiceSpec, Volume};
use warren_transport::ca::{NODE_CERT_LIFETIME, unix_now_ms};
use warren_transport::https::ApiListener;
use warren_transport::limits::{AcceptBackoff, ConnectionLimiter};
use warren_transport::token::{TokenId, mint};
use warren_transport::{MintOptions, PeerIdentity, TrustList};

use crate::command::{Effect, Op, Outcome, Rejection, RejectionCode};
use crate::control::Control;
use crate::metrics::ControlMetrics;
use crate::rpc::ProposeError;
use crate::state::ClusterState;
use crate::status::AgentReport;

pub use crate::secrets::SECRET_PURPOSE;

/// An API failure; [`ApiError::status`] is the one place errors become HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such object or route.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with current state.
    #[error("{0}")]
    Conflict(String),
    /// Body over the limit.
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// No quorum reachable.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Method not allowed on the route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The client's certificate is revoked, or is not one the cluster recorded.
    #[error("{0}")]
    Forbidden(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and the machine-readable code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(error: ProposeError) -> Self {
        match error {
            ProposeError::Membership(m) => Self::Conflict(m),
            busy @ ProposeError::MembershipBusy(_) => Self::Conflict(busy.to_string()),
            ProposeError::ShuttingDown => {
                Self::NoQuorum("this control node is shutting down".into())
            }
            other => Self::NoQuorum(
                other
                    .to_string()
                    .trim_start_matches("no quorum: ")
                    .to_owned(),
            ),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection.code {
            RejectionCode::NotFound => Self::NotFound(rejection.message),
            RejectionCode::Conflict => Self::Conflict(rejection.message),
            RejectionCode::Invalid | RejectionCode::TokenRefused => {
                Self::Invalid(rejection.message)
            }
        }
    }
}

type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).expect("API types serialize to JSON");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn ok<T: Serialize>(value: &T) -> ApiResult {
    Ok(json(StatusCode::OK, value))
}

/// Up to this much of an oversized body is read and discarded before answering 413, so a
/// client still sending gets the answer instead of a broken pipe. Larger bodies are cut off.
const DRAIN_MAX_BYTES: u64 = 4 * MAX_BODY_BYTES as u64;

async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, ApiError> {
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = request.into_body();
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        if declared.is_some_and(|len| len <= DRAIN_MAX_BYTES) {
            drain(&mut body).await;
        }
        return Err(ApiError::TooLarge);
    }
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Invalid(format!("cannot read body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > MAX_BODY_BYTES {
                drain(&mut body).await;
                return Err(ApiError::TooLarge);
            }
            collected.extend_from_slice(data);
        }
    }
    serde_json::from_slice(&collected).map_err(|e| ApiError::Invalid(format!("body: {e}")))
}

/// Reads and discards the rest of a body, bounded in bytes and time.
async fn drain(body: &mut Incoming) {
    let mut seen = 0u64;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_MAX_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), discard).await;
}

/// After a failed `accept` on `listener`: warns (throttled), then pauses as `backoff` says.
/// Returns `true` when `cancel` fired meanwhile.
async fn accept_failed(
    backoff: &mut AcceptBackoff,
    error: &(dyn std::fmt::Display + Sync),
    listener: &'static str,
    cancel: &CancellationToken,
) -> bool {
    let (pause, log) = backoff.failed(std::time::Instant::now());
    if let Some(more) = log {
        warn!(error = %error, listener, more, "accept failed; backing off (out of file descriptors?)");
    }
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(pause) => false,
    }
}

fn written(outcome: Outcome) -> ApiResult {
    let revision = outcome.revision.0;
    let result = match outcome.result? {
        Effect::Service {
            version,
            changed,
            created,
        } => WriteResult {
            revision,
            changed,
            created,
            version: Some(version),
        },
        Effect::None => WriteResult {
            revision,
            changed: false,
            created: false,
            version: None,
        },
        Effect::Node(_) | Effect::Done => WriteResult {
            revision,
            changed: true,
            created: false,
            version: None,
        },
    };
    let status = if result.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &result))
}

/// Bounds on what API clients can make a control node hold. A client is unauthenticated
/// until its TLS handshake completes, so the caps count every TCP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Most API connections (TLS) open at once; past it new ones are closed at once.
    pub connections_max: usize,
    /// Most API connections from one source address (IPv6: one /64) at once.
    pub connections_per_source_max: usize,
    /// A client that has not completed its TLS handshake this long after connecting is
    /// disconnected.
    pub handshake_timeout: Duration,
    /// A client must send a request's headers within this time; also how long an idle
    /// keep-alive connection is kept.
    pub header_read_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            connections_max: 1024,
            connections_per_source_max: 64,
            handshake_timeout: warren_transport::https::DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl ApiLimits {
    /// Checks the relations between the values.
    ///
    /// # Errors
    /// A message naming the first value that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections_per_source_max == 0
            || self.connections_max < self.connections_per_source_max
        {
            return Err(
                "api connections_per_source_max must be positive and at most connections_max"
                    .into(),
            );
        }
        if self.handshake_timeout.is_zero() || self.header_read_timeout.is_zero() {
            return Err("api handshake_timeout and header_read_timeout must be positive".into());
        }
        Ok(())
    }
}

/// The HTTP server of one control node.
#[derive(Clone, Debug)]
pub struct Api {
    control: Arc<Control>,
    metrics: ControlMetrics,
    header_read_timeout: Duration,
    trust: TrustList,
}

impl Api {
    /// An API over `control`, counting into `metrics`. Every request on a TLS connection is
    /// checked against `trust` (fed from the replicated state): a certificate revoked while its
    /// connection is open, or one the cluster never recorded, gets 403.
    pub fn new(control: Arc<Control>, metrics: ControlMetrics, trust: TrustList) -> Self {
        Self {
            control,
            metrics,
            header_read_timeout: ApiLimits::default().header_read_timeout,
            trust,
        }
    }

    /// [`Self::check_client`], skipped while the trust list has not changed since the last
    /// check that passed (`checked_at`, per connection).
    fn check_client_at(
        &self,
        identity: &PeerIdentity,
        checked_at: &std::sync::atomic::AtomicU64,
    ) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        let version = self.trust.version();
        if checked_at.load(Ordering::Relaxed) == version {
            return Ok(());
        }
        self.check_client(identity)?;
        checked_at.store(version, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the certificate a TLS connection proved may still use the API.
    fn check_client(&self, identity: &PeerIdentity) -> Result<(), ApiError> {
        if self.trust.is_revoked(&identity.serial) {
            return Err(ApiError::Forbidden(format!(
                "certificate {} has been revoked",
                identity.serial
            )));
        }
        self.trust.check_known(identity).map_err(|detail| {
            ApiError::Forbidden(format!(
                "{detail}; ask an operator for a new admin certificate (`warren admin create`)"
            ))
        })
    }

    /// Serves TLS connections from `listener` until `cancel` fires, within `limits`: a
    /// connection past the caps is closed at once, and failing `accept`s (out of file
    /// descriptors) back off instead of spinning.
    pub async fn serve_tls(
        mut self,
        mut listener: ApiListener,
        limits: ApiLimits,
        cancel: CancellationToken,
        tasks: TaskTracker,
    ) {
        listener.set_handshake_timeout(limits.handshake_timeout);
        self.header_read_timeout = limits.header_read_timeout;
        let slots =
            ConnectionLimiter::new(limits.connections_max, limits.connections_per_source_max);
        let mut backoff = AcceptBackoff::default();
        loop {
            let pending = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let pending = match pending {
                Ok(pending) => pending,
                Err(e) => {
                    self.metrics.api_accept_errors_total.inc();
                    if accept_failed(&mut backoff, &e, "api", &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.succeeded();
            let permit = match slots.try_acquire(pending.remote_addr().ip()) {
                Ok(permit) => permit,
                Err(exceeded) => {
                    self.metrics
                        .api_connections_limited_total
                        .with_label_values(&[exceeded.as_str()])
                        .inc();
                    debug!(peer = %pending.remote_addr(), cap = exceeded.as_str(), "api connection over the cap; closed");
                    continue;
                }
            };
            let api = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let _permit = permit;
                match pending.handshake().await {
                    Ok((stream, identity)) => {
                        api.serve_connection(TokioIo::new(stream), cancel, Some(identity))
                            .await
                    }
                    Err(e) => {
                        api.metrics.api_refused_total.inc();
                        debug!(error = %e, "api connection refused");
                    }
                }
            });
        }
    }

    /// Serves the Unix socket at `path` (mode 0600) until `cancel` fires.
    ///
    /// # Errors
    /// I/O errors binding the socket.
    pub async fn serve_unix(
        self,
        path: &Path,
        cancel: CancellationToken,
        tasks: TaskTracker,
    ) -> std::io::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        tasks.clone().spawn(async move {
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = tokio::select! {
                    () = cancel.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        self.metrics.api_accept_errors_total.inc();
                        if accept_failed(&mut backoff, &e, "unix socket", &cancel).await {
                            return;
                        }
                        continue;
                    }
                };
                backoff.succeeded();
                let api = self.clone();
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    api.serve_connection(TokioIo::new(stream), cancel, None)
                        .await
                });
            }
        });
        Ok(())
    }

    /// Serves one connection; `identity` is the TLS client's (`None` on the Unix socket, whose
    /// file mode is the access check).
    async fn serve_connection<IO>(
        &self,
        io: IO,
        cancel: CancellationToken,
        identity: Option<PeerIdentity>,
    ) where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let api = self.clone();
        let identity = identity.map(Arc::new);
        // The trust list's version at the last check that passed on this connection: a
        // certificate is checked again only when the list changed since (revoked meanwhile).
        let checked_at = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let service = hyper::service::service_fn(move |request| {
            let api = api.clone();
            let identity = identity.clone();
            let checked_at = checked_at.clone();
            async move {
                let mut request = request;
                let refused = identity
                    .as_deref()
                    .map(|id| api.check_client_at(id, &checked_at));
                if let Some(identity) = identity {
                    request.extensions_mut().insert(identity);
                }
                let response = match refused {
                    Some(Err(error)) => api.refuse(&error),
                    _ => api.handle(request).await,
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => if let Err(e) = result { debug!(error = %e, "api connection ended") },
            () = cancel.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }

    /// The answer to a request from a client the API refuses, counted like any answer.
    fn refuse(&self, error: &ApiError) -> Response<Full<Bytes>> {
        self.metrics.api_refused_total.inc();
        debug!(error = %error, "api request refused");
        let (status, code) = error.status();
        json(
            status,
            &ErrorBody {
                error: error.to_string(),
                code: code.to_owned(),
            },
        )
    }

    /// Answers one request, counting it by route and status.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let stale = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "stale=true" || kv == "stale=1"));
        let route = Route::recognise_path(request.method().as_str(), &path);
        let label = route.as_ref().map_or("other", Route::label);
        let mut response = match self.route(request, route, &path, stale).await {
            Ok(response) => response,
            Err(error) => {
                let (status, code) = error.status();
                json(
                    status,
                    &ErrorBody {
                        error: error.to_string(),
                        code: code.to_owned(),
                    },
                )
            }
        };
        self.add_members_header(&mut response);
        self.metrics
            .observe_request(label, response.status().as_u16(), started.elapsed());
        response
    }

    /// Tells the client who the control members are, so that it can fail over to them later.
    /// Read after the answer was made: a linearizable read has just caught this node up.
    fn add_members_header(&self, response: &mut Response<Full<Bytes>>) {
        let addrs = crate::members::api_addrs(&self.control).join(",");
        if addrs.is_empty() {
            return;
        }
        match hyper::header::HeaderValue::from_str(&addrs) {
            Ok(value) => {
                response.headers_mut().insert(MEMBERS_HEADER, value);
            }
            Err(_) => debug!(addrs = %addrs, "member addresses do not fit a header; left out"),
        }
    }

    async fn read(
        &self,
        stale: bool,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ClusterState>, ApiError> {
        if stale {
            Ok(self.control.read_stale().await)
        } else {
            Ok(self.control.read_linearizable().await?)
        }
    }

    /// Answers a request for `route` (`path` only names an unknown route in the error).
    async fn route(
        &self,
        request: Request<Incoming>,
        route: Result<Route<'_>, Unrouted>,
        path: &str,
        stale: bool,
    ) -> ApiResult {
        let route = match route {
            Ok(route) => route,
            Err(Unrouted::MethodNotAllowed) => return Err(ApiError::MethodNotAllowed),
            Err(Unrouted::NotFound) => {
                return Err(ApiError::NotFound(format!(
                    "no such route: {} {PREFIX}/{}",
                    request.method(),
                    warren_api::routes::segments(path).join("/")
                )));
            }
        };
        match route {
            Route::ClusterStatus => self.cluster_status(stale).await,
            Route::RotateKeys => {
                let reason = "an operator asked (`warren cluster rotate-keys`)";
                let generation = self.control.rotate_cluster_key(reason).await?;
                Ok(json(
                    StatusCode::OK,
                    &warren_api::rest::KeysRotated { generation },
                ))
            }
            Route::CreateToken => self.create_token(read_json(request).await?).await,
            Route::ListTokens => self.list_tokens(stale).await,
            Route::RevokeToken { token_id: id } => {
                let id = id.parse::<TokenId>().map_err(|_| {
                    ApiError::Invalid(format!(
                        "token id {id:?} is not a token id (16 hex digits, from `warren token ls`)"
                    ))
                })?;
                written(self.control.propose(Op::RevokeToken(id)).await?)
            }
            Route::ListAdmins => self.list_admins(stale).await,
            Route::CreateAdmin => self.create_admin(read_json(request).await?).await,
            Route::RenewAdmin => {
                let caller = request.extensions().get::<Arc<PeerIdentity>>().cloned();
                self.renew_admin(caller, read_json(request).await?).await
            }
            Route::RevokeAdmin { admin } => self.revoke_admin(admin).await,
            Route::ListNodes => self.list_nodes(stale).await,
            Route::GetNode { node } => self.get_node(node, stale).await,
            Route::DrainNode { node } => self.set_availability(node, Availability::Drain).await,
            Route::ActivateNode { node } => self.set_availability(node, Availability::Active).await,
            Route::RemoveNode { node } => self.remove_node(node).await,
            Route::ListServices => self.list_services(stale).await,
            Route::CreateService => self.create_service(read_json(request).await?).await,
            Route::PutService { service: name } => {
                self.put_service(name, read_json(request).await?).await
            }
            Route::GetService { service: name } => self.get_service(name, stale).await,
            Route::ServiceReplicas { service: name } => self.service_replicas(name, stale).await,
            Route::ScaleService { service: name } => {
                let scale: ScaleRequest = read_json(request).await?;
                written(
                    self.control
                        .propose(Op::ScaleService {
                            name: service_name(name)?,
                            replicas: scale.replicas,
                        })
                        .await?,
                )
            }
            Route::RollbackService { service: name } => written(
                self.control
                    .propose(Op::RollbackService(service_name(name)?))
                    .await?,
            ),
            Route::RemoveService { service: name } => written(
                self.control
                    .propose(Op::RemoveService(service_name(name)?))
                    .await?,
            ),
            Route::ListSecrets => {
                let state = self.read(stale).await?;
                ok(&state
                    .secrets
                    .values()
                    .map(|s| s.meta.clone())
                    .collect::<Vec<_>>())
            }
            Route::CreateSecret => self.create_secret(read_json(request).await?).await,
            Route::RemoveSecret { secret: name } => written(
                self.control
                    .propose(Op::RemoveSecret(name.to_owned()))
                    .await?,
            ),
            Route::ListVolumes => {
                let state = self.read(stale).await?;
                ok(&state.volumes.values().cloned().collect::<Vec<_>>())
            }
            Route::PutVolume { volume: name } => {
                let volume: Volume = read_json(request).await?;
                if volume.name != name {
                    return Err(ApiError::Invalid(format!(
                        "name: body says {}, path says {name}",
                        volume.name
                    )));
                }
                written(self.control.propose(Op::PutVolume(volume)).await?)
            }
            Route::RemoveVolume { volume: name } => written(
                self.control
                    .propose(Op::RemoveVolume(name.to_owned()))
                    .await?,
            ),
        }
    }

    async fn cluster_status(&self, stale: bool) -> ApiResult {
        let contacts = self.control.member_contacts().await;
        let state = self.read(stale).await?;
        let metrics = self.control.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| MemberInfo {
                id: NodeId(*id),
                name: member.name.clone(),
                quic_addr: member.quic_addr.clone(),
                api_addr: member.api_addr.clone(),
                voter: voters.contains(id),
                leader: metrics.current_leader == Some(*id),
                contact: contacts.get(id).cloned(),
            })
            .collect();
        let nodes = node_counts(&state, &contacts);
        let cluster = state.cluster.as_ref();
        ok(&ClusterStatus {
            name: cluster.map(|c| c.name.clone()).unwrap_or_default(),
            fingerprint: cluster
                .map(|c| {
                    data_encoding::HEXLOWER
                        .encode(&warren_transport::identity::fingerprint(&c.ca_cert_der))
                })
                .unwrap_or_default(),
            answered_by: NodeId(self.control.id()),
            members,
            term: metrics.current_term,
            commit_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            revision: state.revision.0,
            nodes,
            services: state.services.len(),
        })
    }

    async fn list_admins(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        let admins: Vec<AdminInfo> = state.admins.values().map(admin_info).collect();
        ok(&admins)
    }

    /// Signs the CSR's key as admin `name` and records the certificate; the private key
    /// stays with the caller.
    async fn create_admin(&self, request: AdminCreate) -> ApiResult {
        warren_api::validate_node_name(&request.name)
            .map_err(|e| ApiError::Invalid(format!("name: {}", e.message)))?;
        let in_use = self
            .control
            .read_stale()
            .await
            .admins
            .values()
            .any(|a| a.name == request.name && !a.revoked);
        if in_use {
            return Err(ApiError::Conflict(format!(
                "an admin named {} already has a certificate; revoke it first (`warren admin revoke {}`) or choose another name",
                request.name, request.name
            )));
        }
        let csr = data_encoding::BASE64
            .decode(request.csr_der_base64.as_bytes())
            .map_err(|_| ApiError::Invalid("csr_der_base64: not base64".into()))?;
        let cert = self
            .control
            .sign_admin_csr(&request.name, &csr, NODE_CERT_LIFETIME)
            .await
            .map_err(ApiError::Invalid)?;
        let identity = warren_transport::identity::parse_identity(&cert)
            .map_err(|e| ApiError::Internal(format!("issued certificate: {e}")))?;
        let record = crate::state::AdminCert::issued_now(&identity, &request.name, unix_now_ms());
        self.control
            .propose(Op::AddAdmin(record.clone()))
            .await?
            .result?;
        Ok(json(
            StatusCode::CREATED,
            &AdminIssued {
                cert_der_base64: data_encoding::BASE64.encode(&cert),
                admin: admin_info(&record),
            },
        ))
    }

    /// Issues a new certificate to the admin whose certificate authenticated the request (over
    /// TLS), for the CSR's key, and revokes the old one.
    async fn renew_admin(
        &self,
        caller: Option<Arc<PeerIdentity>>,
        request: AdminRenew,
    ) -> ApiResult {
        let caller = caller.ok_or_else(|| {
            ApiError::Invalid(
                "renew over TLS with the admin certificate to renew, not the Unix socket".into(),
            )
        })?;
        let name = caller.admin_name.clone().ok_or_else(|| {
            ApiError::Forbidden("only an admin certificate is renewed here".into())
        })?;
        if !self
            .control
            .read_stale()
            .await
            .admins
            .contains_key(&caller.serial)
        {
            return Err(ApiError::Conflict(format!(
                "admin certificate {} is not recorded (made by an earlier release); ask for a new one with `warren admin create`",
                caller.serial
            )));
        }
        let csr = data_encoding::BASE64
            .decode(request.csr_der_base64.as_bytes())
            .map_err(|_| ApiError::Invalid("csr_der_base64: not base64".into()))?;
        let cert = self
            .control
            .sign_admin_csr(&name, &csr, NODE_CERT_LIFETIME)
            .await
            .map_err(ApiError::Invalid)?;
        let identity = warren_transport::identity::parse_identity(&cert)
            .map_err(|e| ApiError::Internal(format!("issued certificate: {e}")))?;
        let record = crate::state::AdminCert::issued_now(&identity, &name, unix_now_ms());
        let op = Op::RenewAdmin {
            previous: caller.serial.clone(),
            cert: record.clone(),
        };
        self.control.propose(op).await?.result?;
        Ok(json(
            StatusCode::CREATED,
            &AdminIssued {
                cert_der_base64: data_encoding::BASE64.encode(&cert),
                admin: admin_info(&record),
            },
        ))
    }

    /// Revokes the admin certificate `key` names (its serial, or the name of an admin with
    /// one unrevoked certificate).
    async fn revoke_admin(&self, key: &str) -> ApiResult {
        let serial = {
            let state = self.control.read_stale().await;
            let by_serial = state.admins.get(key).map(|a| a.serial.clone());
            let by_name = || {
                state
                    .admins
                    .values()
                    .find(|a| a.name == key && !a.revoked)
                    .map(|a| a.serial.clone())
            };
            by_serial.or_else(by_name).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "admin {key} not found (give its name or serial, from `warren admin ls`)"
                ))
            })?
        };
        written(self.control.propose(Op::RevokeAdmin { serial }).await?)
    }

    async fn list_tokens(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        let tokens: Vec<TokenInfo> = state
            .tokens
            .records()
            .map(|r| TokenInfo {
                id: r.id.to_string(),
                role: r.role,
                created_at_ms: r.created_at_ms,
                expires_at_ms: r.expires_at_ms,
                single_use: r.single_use,
                used_at_ms: r.used_at_ms,
                revoked: r.revoked,
            })
            .collect();
        ok(&tokens)
    }

    async fn create_token(&self, request: TokenRequest) -> ApiResult {
        match request.ttl_ms {
            None => {
                return Err(ApiError::Invalid(format!(
                    "ttl_ms: a token needs a lifetime (at most {})",
                    warren_api::format_duration_ms(MAX_TOKEN_TTL_MS)
                )));
            }
            Some(0) => return Err(ApiError::Invalid("ttl_ms: must be more than 0".into())),
            Some(ttl) if ttl > MAX_TOKEN_TTL_MS => {
                return Err(ApiError::Invalid(format!(
                    "ttl_ms: {} is longer than the longest a token may live ({})",
                    warren_api::format_duration_ms(ttl),
                    warren_api::format_duration_ms(MAX_TOKEN_TTL_MS)
                )));
            }
            Some(_) => {}
        }
        let fingerprint = {
            let state = self.control.read_stale().await;
            let cluster = state
                .cluster
                .as_ref()
                .ok_or_else(|| ApiError::Conflict("cluster is not initialised".into()))?;
            warren_transport::identity::fingerprint(&cluster.ca_cert_der)
        };
        let options = MintOptions {
            role: request.role,
            ttl: request.ttl_ms.map(std::time::Duration::from_millis),
            single_use: request.single_use,
        };
        let (token, record) = mint(fingerprint, options, unix_now_ms());
        let expires_at_ms = record.expires_at_ms;
        self.control.propose(Op::AddToken(record)).await?.result?;
        Ok(json(
            StatusCode::CREATED,
            &TokenResponse {
                token: token.to_string(),
                id: token.id.to_string(),
                role: request.role,
                expires_at_ms,
            },
        ))
    }

    fn node_info(
        &self,
        state: &ClusterState,
        node: &warren_api::Node,
        agent: Option<&AgentReport>,
        gossip: Option<&[warren_mesh::Member]>,
        contacts: &BTreeMap<u64, MemberContact>,
    ) -> NodeInfo {
        let metrics = self.control.raft().metrics().borrow().clone();
        let raft_member = metrics
            .membership_config
            .membership()
            .get_node(&node.id.0)
            .is_some();
        NodeInfo {
            node: node.clone(),
            replicas: state.replicas_on(node.id).count(),
            raft_member,
            agent: agent.map(|a| AgentLinkInfo {
                connected: a.connected,
                control_node: format!("{:016x}", a.control_id),
                last_contact_ms: a.last_contact_ms,
                revision_acked: a.revision_acked.0,
                agent_version: a.agent_version.clone(),
                events: a.events.iter().cloned().collect(),
                events_dropped: a.events_dropped,
                listeners: a.listeners.clone(),
            }),
            gossip: gossip
                .and_then(|members| members.iter().find(|m| m.node_id == node.id))
                .map(crate::gossip::info),
            member: raft_member
                .then(|| contacts.get(&node.id.0).cloned())
                .flatten(),
        }
    }

    async fn list_nodes(&self, stale: bool) -> ApiResult {
        let (agents, contacts) = tokio::join!(
            self.control.gather_agents(false),
            self.control.member_contacts()
        );
        let state = self.read(stale).await?;
        let gossip = self.control.gossip_members();
        ok(&state
            .nodes
            .values()
            .map(|n| {
                let agent = agents.get(&n.id);
                self.node_info(&state, n, agent, gossip.as_deref(), &contacts)
            })
            .collect::<Vec<_>>())
    }

    async fn get_node(&self, key: &str, stale: bool) -> ApiResult {
        let (agents, contacts) = tokio::join!(
            self.control.gather_agents(true),
            self.control.member_contacts()
        );
        let state = self.read(stale).await?;
        let node = find_node(&state, key)?;
        let gossip = self.control.gossip_members();
        let agent = agents.get(&node.id);
        ok(&self.node_info(&state, node, agent, gossip.as_deref(), &contacts))
    }

    async fn set_availability(&self, key: &str, availability: Availability) -> ApiResult {
        let id = find_node(&*self.control.read_stale().await, key)?.id;
        written(
            self.control
                .propose(Op::SetAvailability {
                    node: id,
                    availability,
                })
                .await?,
        )
    }

    async fn remove_node(&self, key: &str) -> ApiResult {
        let (id, role) = {
            let state = self.control.read_stale().await;
            match find_node(&state, key) {
                Ok(node) => (node.id, node.role),
                Err(not_found) => match memberless_entry(&state, key) {
                    Some(id) => return self.remove_member_without_entry(id).await,
                    None => return Err(not_found),
                },
            }
        };
        if id.0 == self.control.id() {
            return Err(ApiError::Conflict(
                "a control node cannot remove itself; ask another control node".into(),
            ));
        }
        if role == warren_api::NodeRole::Control {
            // Leave the Raft membership first, so quorum is computed without it.
            self.control.remove_member(id.0).await?;
        }
        let outcome = self.control.propose(Op::RemoveNode(id)).await?;
        if matches!(outcome.result, Ok(Effect::Done)) {
            // What the removed node holds — the cluster keys of a control node, the gossip key
            // of any node — stops working from the next generation on.
            let reason = format!("node {key} was removed");
            if let Err(error) = self.control.rotate_cluster_key(&reason).await {
                return Err(ApiError::NoQuorum(format!(
                    "node {key} is removed, but the cluster key was not rotated ({error}); run `warren cluster rotate-keys`"
                )));
            }
        }
        written(outcome)
    }

    /// Takes a control member that has no node entry out of the Raft membership, so that it
    /// stops counting toward quorum (its entry is gone, e.g. an undone join whose node a
    /// leader had added meanwhile; its certificate was revoked with the entry).
    async fn remove_member_without_entry(&self, id: NodeId) -> ApiResult {
        if id.0 == self.control.id() {
            return Err(ApiError::Conflict(
                "a control node cannot remove itself; ask another control node".into(),
            ));
        }
        self.control.remove_member(id.0).await?;
        let revision = self.control.read_stale().await.revision.0;
        let result = WriteResult {
            revision,
            changed: true,
            created: false,
            version: None,
        };
        Ok(json(StatusCode::OK, &result))
    }

    async fn list_services(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        ok(&state
            .services
            .keys()
            .filter_map(|name| service_info(&state, name.as_str()))
            .collect::<Vec<_>>())
    }

    async fn get_service(&self, name: &str, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        let info = service_info(&state, name)
            .ok_or_else(|| ApiError::NotFound(format!("service {name} not found")))?;
        ok(&info)
    }

    async fn service_replicas(&self, name: &str, stale: bool) -> ApiResult {
        let agents = self.control.gather_agents(true).await;
        let state = self.read(stale).await?;
        if !state.services.contains_key(name) {
            return Err(ApiError::NotFound(format!("service {name} not found")));
        }
        let replicas: Vec<ReplicaInfo> = state
            .replicas
            .values()
            .filter(|r| r.id.service.as_str() == name)
            .map(|r| replica_info(&state, r, agents.get(&r.node)))
            .collect();
        ok(&replicas)
    }

    async fn create_service(&self, spec: ServiceSpec) -> ApiResult {
        if self
            .control
            .read_stale()
            .await
            .services
            .contains_key(&spec.name)
        {
            return Err(ApiError::Conflict(format!(
                "service {} already exists; use `warren service update` or `warren apply`",
                spec.name
            )));
        }
        spec.validate()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        written(self.control.propose(Op::PutService(spec)).await?)
    }

    async fn put_service(&self, name: &str, spec: ServiceSpec) -> ApiResult {
        if spec.name.as_str() != name {
            return Err(ApiError::Invalid(format!(
                "name: body says {}, path says {name}",
                spec.name
            )));
        }
        spec.validate()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        // `apply -f` re-sends every service each time: an unchanged spec (checked against a
        // linearizable read, so a lagging follower cannot wrongly call it unchanged) answers
        // without appending a Raft entry.
        {
            let state = self.control.read_linearizable().await?;
            if let Some(current) = state.services.get(&spec.name)
                && current.current.spec == spec
                && current.rollout.is_none()
            {
                return ok(&WriteResult {
                    revision: state.revision.0,
                    changed: false,
                    created: false,
                    version: Some(current.current.version),
                });
            }
        }
        written(self.control.propose(Op::PutService(spec)).await?)
    }

    async fn create_secret(&self, request: SecretCreate) -> ApiResult {
        warren_api::validate::validate_dns_label("name", &request.name)
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let value = data_encoding::BASE64
            .decode(request.value_base64.as_bytes())
            .map_err(|_| ApiError::Invalid("value_base64: not valid base64".into()))?;
        if value.len() as u64 > warren_api::secret::MAX_SECRET_BYTES {
            return Err(ApiError::Invalid(format!(
                "value: {} bytes is over the limit of {} bytes",
                value.len(),
                warren_api::secret::MAX_SECRET_BYTES
            )));
        }
        let generation = self.control.read_stale().await.key_generation();
        let sealed = self
            .control
            .cluster_keys()
            .and_then(|keys| crate::secrets::seal_at_rest(&keys, generation, &value))
            .ok_or_else(|| {
                ApiError::NoQuorum(format!(
                    "this control node does not hold cluster key generation {generation} yet; try again in a moment"
                ))
            })?;
        written(
            self.control
                .propose(Op::PutSecret {
                    name: request.name,
                    size_bytes: value.len() as u64,
                    sealed,
                })
                .await?,
        )
    }
}

/// Nodes by state; a control member the leader cannot reach counts as unreachable, whatever
/// the registry says (control nodes are not judged by the liveness duty).
fn node_counts(state: &ClusterState, contacts: &BTreeMap<u64, MemberContact>) -> NodeCounts {
    let mut nodes = NodeCounts::default();
    for node in state.nodes.values() {
        nodes.total += 1;
        let member_down = contacts
            .get(&node.id.0)
            .is_some_and(|c| c.health == MemberHealth::Unreachable);
        match node.state {
            NodeState::Ready if member_down => nodes.unreachable += 1,
            NodeState::Ready => nodes.ready += 1,
            NodeState::Unreachable { .. } => nodes.unreachable += 1,
            NodeState::Down => nodes.down += 1,
            NodeState::Removed => nodes.removed += 1,
        }
    }
    nodes
}

fn service_name(name: &str) -> Result<ServiceName, ApiError> {
    ServiceName::new(name).map_err(|e| ApiError::Invalid(e.to_string()))
}

fn find_node<'a>(state: &'a ClusterState, key: &str) -> Result<&'a warren_api::Node, ApiError> {
    let by_id = key
        .parse::<NodeId>()
        .ok()
        .and_then(|id| state.nodes.get(&id));
    by_id
        .or_else(|| {
            state
                .nodes
                .values()
                .filter(|n| n.state != NodeState::Removed)
                .find(|n| n.name == key)
        })
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "node {key} not found (give its name or 16-digit id)"
            ))
        })
}

fn admin_info(cert: &crate::state::AdminCert) -> AdminInfo {
    AdminInfo {
        name: cert.name.clone(),
        serial: cert.serial.clone(),
        issued_at_ms: cert.issued_at_ms,
        expires_at_ms: cert.expires_at_ms,
        revoked: cert.revoked,
    }
}

/// The id `key` names when it is a control member of the applied membership without a node
/// entry.
fn memberless_entry(state: &ClusterState, key: &str) -> Option<NodeId> {
    let id = key.parse::<NodeId>().ok()?;
    (state.control_members.contains(&id) && !state.nodes.contains_key(&id)).then_some(id)
}

fn service_info(state: &ClusterState, name: &str) -> Option<ServiceInfo> {
    let record = state.services.get(name)?;
    Some(ServiceInfo {
        spec: record.current.spec.clone(),
        version: record.current.version,
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
        replicas_desired: record.current.spec.replicas(),
        replicas_placed: state
            .replicas
            .values()
            .filter(|r| r.id.service.as_str() == name)
            .count(),
        unschedulable: state.unschedulable.get(name).copied().unwrap_or(0),
        rolling_out: record.rollout.map(|r| r.version),
        can_roll_back: record.previous.is_some(),
    })
}

/// One replica for `service ps`: the assignment from the state, the actual state from its
/// agent's last report (`assigned` until one mentions it).
fn replica_info(
    state: &ClusterState,
    replica: &warren_api::Replica,
    agent: Option<&AgentReport>,
) -> ReplicaInfo {
    let node = state.nodes.get(&replica.node);
    let reported = agent.and_then(|a| a.replicas.iter().find(|s| s.id == replica.id));
    ReplicaInfo {
        id: replica.id.to_string(),
        node: replica.node,
        node_name: node.map(|n| n.name.clone()).unwrap_or_default(),
        site: node.map(|n| n.site.clone()).unwrap_or_default(),
        service_version: replica.service_version,
        desired: replica.desired,
        state: reported.map_or("assigned", |s| s.state.as_str()).to_owned(),
        node_state: node
            .map(|n| n.state.as_str().to_owned())
            .unwrap_or_else(|| "unknown".into()),
        pid: reported.and_then(|s| s.pid),
        restarts: reported.map_or(0, |s| s.restarts),
        health: reported
            .map_or(warren_api::HealthState::Unknown, |s| s.health)
            .as_str()
            .to_owned(),
        message: reported.and_then(|s| s.message.clone()),
        updated_at_ms: reported.map(|s| s.updated_at_ms),
        stale: reported.is_some() && !agent.is_some_and(|a| a.connected),
    }
}
