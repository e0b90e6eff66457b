//! Server plumbing: the TLS and Unix-socket listeners, connection caps and accept back-off,
//! the per-request check of a TLS client's certificate, and hyper's HTTP/1 connections.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use warren_transport::PeerIdentity;
use warren_transport::https::{ApiListener, HttpsError, PendingTls};
use warren_transport::limits::{AcceptBackoff, ConnectionLimiter};

use super::respond::error_response;
use super::{Api, ApiError};

/// A listener the API takes connections from: TLS over TCP, or the Unix socket.
trait Listener {
    type Connection;
    type Error: std::fmt::Display + Sync;
    /// What the failure log names the listener.
    const NAME: &'static str;
    fn accept_one(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;
}

impl Listener for ApiListener {
    type Connection = PendingTls;
    type Error = HttpsError;
    const NAME: &'static str = "api";
    fn accept_one(&self) -> impl Future<Output = Result<PendingTls, HttpsError>> + Send {
        self.accept()
    }
}

impl Listener for UnixListener {
    type Connection = UnixStream;
    type Error = std::io::Error;
    const NAME: &'static str = "unix socket";
    async fn accept_one(&self) -> std::io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
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

impl Api {
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

    /// The next connection from `listener`; `None` once `cancel` fires. A failing `accept` (out
    /// of file descriptors) is counted and backs off instead of spinning.
    async fn next_connection<L: Listener>(
        &self,
        listener: &L,
        backoff: &mut AcceptBackoff,
        cancel: &CancellationToken,
    ) -> Option<L::Connection> {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return None,
                accepted = listener.accept_one() => accepted,
            };
            match accepted {
                Ok(connection) => {
                    backoff.succeeded();
                    return Some(connection);
                }
                Err(e) => {
                    self.metrics.api_accept_errors_total.inc();
                    if accept_failed(backoff, &e, L::NAME, cancel).await {
                        return None;
                    }
                }
            }
        }
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
        while let Some(pending) = self.next_connection(&listener, &mut backoff, &cancel).await {
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
            while let Some(stream) = self.next_connection(&listener, &mut backoff, &cancel).await {
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
        error_response(error)
    }
}
