//! The HTTP client of the control-plane API (`warren_api::rest`): HTTP/1.1 and JSON over TLS
//! with the admin certificate, or over a control node's local Unix socket.
//!
//! The client tries every API address it knows, in order; a read starts from the address that
//! answered last, so that a command that reads many times (a `logs --follow`) does not go back
//! to a dead address every time. Each connection attempt is bounded
//! by the connect timeout (a dead host costs seconds, not the request timeout), each request by
//! the request timeout. A write fails over only before it is sent: one that was sent and then
//! lost may still be applied, so it is reported rather than repeated elsewhere. A read also
//! moves on when its answer is lost or is "no quorum", since repeating it harms nothing.
//!
//! Every answer names the control members' API addresses; the client keeps the admin config's
//! `api` list current with them ([`crate::config_sync`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use warren_api::rest::{ErrorBody, IF_VERSION_PARAM, MEMBERS_HEADER, PREFIX};
use warren_api::routes::{Method as RouteMethod, Route};
use warren_transport::Credentials;

use crate::config;
use crate::config_sync::{Sighting, merged, parse_members, update_file};

/// Largest response body read (lists of many nodes or replicas stay far below this).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Longest error text from a non-JSON error answer that is shown.
const MAX_SHOWN_ERROR_CHARS: usize = 200;

/// Default for `--timeout`.
const DEFAULT_TIMEOUT: &str = "10s";
/// Default for `--connect-timeout`: a TCP and TLS handshake takes a few round trips, and a
/// dead host should cost no more than this before the next address is tried.
const DEFAULT_CONNECT_TIMEOUT: &str = "2s";

/// Flags shared by every command that talks to the control plane, given after the command
/// (`warren service ls --api HOST:PORT`).
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Cluster access")]
pub struct ClientArgs {
    /// Admin config file. Without it: $WARREN_CONFIG, ~/.config/warren/admin.conf,
    /// /var/lib/warren/admin.conf.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Control-plane API address to use instead of those in the admin config: HOST:PORT
    /// (TLS) or unix:PATH (a control node's local socket, <data-dir>/control.sock). Repeat or
    /// separate with commas to give several; they are tried in order.
    #[arg(
        long = "api",
        global = true,
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub api: Vec<String>,

    /// How long to wait for the answer to each request once connected (default 10s).
    #[arg(long, global = true, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// How long each connection attempt (TCP and TLS) may take before the next address is
    /// tried (default 2s).
    #[arg(long, global = true, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
}

/// The same flags given before the command (`warren --api HOST:PORT service ls`). Not
/// global: `control init` has an `--api` of its own, the address it listens on.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Cluster access (for commands that talk to the control plane)")]
pub struct TopClientArgs {
    /// Admin config file. Without it: $WARREN_CONFIG, ~/.config/warren/admin.conf,
    /// /var/lib/warren/admin.conf.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Control-plane API address instead of the admin config's: HOST:PORT or unix:PATH.
    #[arg(long = "api", value_name = "ADDR", value_delimiter = ',')]
    pub api: Vec<String>,

    /// How long to wait for the answer to each request once connected (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// How long each connection attempt may take before the next address is tried (default 2s).
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
}

impl TopClientArgs {
    /// Whether any of the flags was given.
    pub fn is_given(&self) -> bool {
        self.config.is_some()
            || !self.api.is_empty()
            || self.timeout.is_some()
            || self.connect_timeout.is_some()
    }
}

impl ClientArgs {
    /// These flags, each falling back to the one given before the command.
    pub fn or(&self, top: &TopClientArgs) -> ClientArgs {
        ClientArgs {
            config: self.config.clone().or_else(|| top.config.clone()),
            api: if self.api.is_empty() {
                top.api.clone()
            } else {
                self.api.clone()
            },
            timeout: self.timeout.clone().or_else(|| top.timeout.clone()),
            connect_timeout: self
                .connect_timeout
                .clone()
                .or_else(|| top.connect_timeout.clone()),
        }
    }
}

/// Where a request can go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `HOST:PORT` over TLS with the admin certificate.
    Tls(String),
    /// A Unix socket path, plain HTTP.
    Unix(PathBuf),
}

impl Target {
    /// Parses `unix:PATH` or `HOST:PORT`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("--api unix: needs a socket path, like unix:/var/lib/warren/control.sock");
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Target::Tls(text.to_owned()))
            }
            _ => bail!("invalid API address {text:?}: expected HOST:PORT or unix:PATH"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tls(addr) => f.write_str(addr),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A connection to the control plane, ready for requests.
#[derive(Debug)]
pub struct Client {
    targets: Vec<Target>,
    /// Index in `targets` of the address that answered last, where the next read starts.
    answered_last: std::sync::atomic::AtomicUsize,
    credentials: Option<Credentials>,
    timeout: Duration,
    connect_timeout: Duration,
    /// The admin config whose `api` list answers keep current; `None` without a config.
    sync: Option<ConfigSync>,
}

/// The admin config the client was built from, for keeping its `api` list current.
#[derive(Debug)]
struct ConfigSync {
    path: PathBuf,
    fingerprint: String,
    /// The `api` list as loaded: a Unix socket listed there is trusted to be this cluster's.
    listed: Vec<String>,
    /// The list as this process last saw or wrote it, so that the file is read again only when
    /// an answer brings news.
    known: Mutex<Vec<String>>,
}

/// An answer with a 2xx status.
#[derive(Debug)]
pub struct Answer {
    /// The JSON body as sent.
    pub body: Bytes,
}

impl Answer {
    /// Decodes the body.
    ///
    /// # Errors
    /// A body that is not the expected JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).context("decode the control plane's answer")
    }

    /// The body as text, for `-o json`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_owned()
    }
}

/// How one try at one address went.
enum Attempt {
    /// No connection: nothing was sent.
    Unreachable(String),
    /// Sent, but no answer came (timeout or a broken connection): it may have been applied.
    Lost(anyhow::Error),
    /// An answer, with any status.
    Answered(StatusCode, HeaderMap, Bytes),
}

/// Parses a `--timeout`-style flag value that must be more than zero.
fn positive_duration(flag: &str, value: &str) -> Result<Duration> {
    let ms = warren_api::parse_duration_ms(value).map_err(|e| anyhow!("{flag}: {}", e.message))?;
    if ms == 0 {
        bail!("{flag} must be more than 0s");
    }
    Ok(Duration::from_millis(ms))
}

impl Client {
    /// Builds a client from the flags: the admin config found by the lookup order, with
    /// `--api` replacing its addresses. Only Unix-socket targets work without an admin config.
    ///
    /// # Errors
    /// No usable config or address.
    pub fn from_args(args: &ClientArgs) -> Result<Self> {
        let timeout = positive_duration(
            "--timeout",
            args.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT),
        )?;
        let connect_timeout = positive_duration(
            "--connect-timeout",
            args.connect_timeout
                .as_deref()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )?;
        let overrides: Vec<Target> = args
            .api
            .iter()
            .map(|a| Target::parse(a))
            .collect::<Result<_>>()?;
        let unix_only =
            !overrides.is_empty() && overrides.iter().all(|t| matches!(t, Target::Unix(_)));
        let found = match config::find(args.config.as_deref()) {
            Ok(found) => Some(found),
            Err(_) if unix_only && args.config.is_none() && config::from_env().is_none() => None,
            Err(error) => return Err(error),
        };
        let credentials = found.as_ref().map(|(_, c)| c.credentials()).transpose()?;
        let targets = if overrides.is_empty() {
            let (_, config) = found
                .as_ref()
                .expect("a missing config without --api is an error");
            config
                .api
                .iter()
                .map(|a| Target::parse(a))
                .collect::<Result<Vec<_>>>()
                .context("admin config `api`")?
        } else {
            overrides
        };
        if targets.is_empty() {
            bail!("the admin config lists no API address; pass --api HOST:PORT");
        }
        Ok(Client {
            targets,
            answered_last: Default::default(),
            credentials,
            timeout,
            // A connection attempt never waits longer than a whole request may.
            connect_timeout: connect_timeout.min(timeout),
            sync: found.map(|(path, config)| ConfigSync {
                path,
                fingerprint: config.fingerprint.clone(),
                listed: config.api.clone(),
                known: Mutex::new(config.api),
            }),
        })
    }

    /// The admin config file this client uses, if any.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.sync.as_ref().map(|sync| sync.path.as_path())
    }

    /// The admin credentials this client presents, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The cluster CA certificate (DER) of the admin config this client uses, if any.
    pub fn ca_cert_der(&self) -> Option<Vec<u8>> {
        self.credentials.as_ref().map(|c| c.ca_cert_der().to_vec())
    }

    /// `route` with its own method and no body: a read, an action or a removal.
    ///
    /// # Errors
    /// A parameter that cannot be a path segment, an unreachable control plane, or an error
    /// answer turned into one line.
    pub async fn request(&self, route: Route<'_>) -> Result<Answer> {
        self.call_as(http_method(route), &route.path()?, None, route.is_read())
            .await
    }

    /// `route` with `body` as JSON.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn request_json<B: Serialize>(&self, route: Route<'_>, body: &B) -> Result<Answer> {
        let bytes = serde_json::to_vec(body).context("encode request")?;
        self.call_as(
            http_method(route),
            &route.path()?,
            Some(bytes),
            route.is_read(),
        )
        .await
    }

    /// [`Client::request_json`] on condition that the object is at `version` now
    /// (`?if_version=`); a 409 naming both versions otherwise.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn request_json_if_version<B: Serialize>(
        &self,
        route: Route<'_>,
        body: &B,
        version: u64,
    ) -> Result<Answer> {
        let bytes = serde_json::to_vec(body).context("encode request")?;
        let path = format!("{}?{IF_VERSION_PARAM}={version}", route.path()?);
        self.call_as(http_method(route), &path, Some(bytes), route.is_read())
            .await
    }

    /// A read of `route` that skips the read barrier (`?stale=true`): the answering node's own
    /// view, which may be behind.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn request_stale(&self, route: Route<'_>) -> Result<Answer> {
        let path = format!("{}?stale=true", route.path()?);
        self.call_as(http_method(route), &path, None, route.is_read())
            .await
    }

    /// `GET PREFIX+path`.
    ///
    /// # Errors
    /// Unreachable control plane, or an error answer turned into one line.
    #[cfg(test)]
    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.call(Method::GET, path, None).await
    }

    /// A request with a JSON body.
    ///
    /// # Errors
    /// As [`Client::get`].
    #[cfg(test)]
    pub async fn send<B: Serialize>(&self, method: Method, path: &str, body: &B) -> Result<Answer> {
        let bytes = serde_json::to_vec(body).context("encode request")?;
        self.call(method, path, Some(bytes)).await
    }

    /// A request without a body (POST actions, DELETE).
    ///
    /// # Errors
    /// As [`Client::get`].
    #[cfg(test)]
    pub async fn empty(&self, method: Method, path: &str) -> Result<Answer> {
        self.call(method, path, None).await
    }

    /// A request whose kind (read or not) its method tells.
    #[cfg(test)]
    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer> {
        let read = method == Method::GET;
        self.call_as(method, path, body, read).await
    }

    /// Tries the targets in order (see the module doc for when it moves on); a `read` moves
    /// on when an answer is lost, anything else stops there.
    async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        read: bool,
    ) -> Result<Answer> {
        let uri = format!("{PREFIX}{path}");
        let mut failures = Vec::new();
        // A read's "no quorum" answer, kept in case no other node does better: callers look at
        // it (`cluster status` falls back to a stale read).
        let mut no_quorum = None;
        let first = if read {
            self.answered_last
                .load(std::sync::atomic::Ordering::Relaxed)
        } else {
            0
        };
        let n_targets = self.targets.len();
        for target_idx in (0..n_targets).map(|k| (first + k) % n_targets) {
            let target = &self.targets[target_idx];
            let request = build_request(&method, &uri, body.clone())?;
            match self.attempt(target, request).await {
                Attempt::Unreachable(reason) => failures.push(format!("{target}: {reason}")),
                Attempt::Lost(error) if read => {
                    failures.push(format!("{target}: {}", crate::output::one_line(&error)));
                }
                Attempt::Lost(error) => {
                    return Err(error.context(format!(
                        "{target}: {method} {uri} was sent but not answered; it may still be \
                         applied, so check before retrying"
                    )));
                }
                Attempt::Answered(status, headers, bytes) => {
                    // Only a GET passed the read barrier (the logs read the state as it stands).
                    let caught_up = method == Method::GET
                        && status.is_success()
                        && !path.contains("stale=true");
                    self.learn(target, &headers, caught_up);
                    if read && status == StatusCode::SERVICE_UNAVAILABLE {
                        failures.push(format!("{target}: no quorum"));
                        no_quorum = Some(bytes);
                        continue;
                    }
                    self.answered_last
                        .store(target_idx, std::sync::atomic::Ordering::Relaxed);
                    return check_status(status, bytes);
                }
            }
        }
        if let Some(bytes) = no_quorum {
            return check_status(StatusCode::SERVICE_UNAVAILABLE, bytes);
        }
        bail!("cannot reach the control plane: {}", failures.join("; "))
    }

    /// Connects to `target` within the connect timeout, then sends `request` and waits for the
    /// answer within the request timeout.
    async fn attempt(&self, target: &Target, request: Request<Full<Bytes>>) -> Attempt {
        let sender = match tokio::time::timeout(self.connect_timeout, self.connect(target)).await {
            Ok(Ok(sender)) => sender,
            Ok(Err(error)) => return Attempt::Unreachable(crate::output::one_line(&error)),
            Err(_) => {
                return Attempt::Unreachable(format!(
                    "no connection within {}",
                    warren_api::format_duration_ms(self.connect_timeout.as_millis() as u64)
                ));
            }
        };
        match tokio::time::timeout(self.timeout, exchange(sender, request)).await {
            Ok(Ok((status, headers, body))) => Attempt::Answered(status, headers, body),
            Ok(Err(error)) => Attempt::Lost(error),
            Err(_) => Attempt::Lost(anyhow!(
                "no answer within {}",
                warren_api::format_duration_ms(self.timeout.as_millis() as u64)
            )),
        }
    }

    /// Keeps the admin config's `api` list current with the members an answer names. Never
    /// fails the command: a file that cannot be updated is left as it is.
    fn learn(&self, target: &Target, headers: &HeaderMap, caught_up: bool) {
        let (Some(sync), Some(value)) = (&self.sync, headers.get(MEMBERS_HEADER)) else {
            return;
        };
        let answered = target.to_string();
        // Only an answer known to come from this config's cluster: over TLS (the server was
        // verified against the config's CA) or from a socket the config itself lists.
        if matches!(target, Target::Unix(_)) && !sync.listed.contains(&answered) {
            return;
        }
        let members = match value
            .to_str()
            .map_err(anyhow::Error::from)
            .and_then(parse_members)
        {
            Ok(members) => members,
            Err(error) => {
                tracing::debug!(error = %error, "ignored the member list of an answer");
                return;
            }
        };
        let sighting = Sighting {
            members,
            answered,
            current: caught_up,
        };
        let mut known = sync.known.lock().expect("no panic while holding the lock");
        let Some(next) = merged(&known, &sighting) else {
            return;
        };
        match update_file(&sync.path, &sighting, &sync.fingerprint) {
            Ok(updated) => tracing::debug!(
                path = %sync.path.display(),
                updated = ?updated,
                "admin config api list checked"
            ),
            Err(error) => tracing::warn!(
                path = %sync.path.display(),
                error = %format!("{error:#}"),
                "cannot update the admin config's API addresses"
            ),
        }
        // Tried once per piece of news, whatever came of it.
        *known = next;
    }

    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>> {
        match target {
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connect to {}", path.display()))?;
                handshake(TokioIo::new(stream)).await
            }
            Target::Tls(addr) => {
                let credentials = self.credentials.as_ref().ok_or_else(|| {
                    anyhow!("a TLS address needs the admin certificate from an admin config")
                })?;
                let mut last_error = None;
                let resolved = tokio::net::lookup_host(addr.as_str())
                    .await
                    .with_context(|| format!("resolve {addr}"))?;
                for socket_addr in resolved {
                    match warren_transport::https::connect(
                        socket_addr,
                        credentials,
                        self.connect_timeout,
                    )
                    .await
                    {
                        Ok(stream) => return handshake(TokioIo::new(stream)).await,
                        Err(error) => last_error = Some(error),
                    }
                }
                match last_error {
                    Some(error) => Err(error.into()),
                    None => bail!("{addr} resolves to no address"),
                }
            }
        }
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    // The connection driver ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "api connection ended");
        }
    });
    Ok(sender)
}

fn build_request(
    method: &Method,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header("host", "warren-control")
        .header("accept", "application/json");
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .with_context(|| format!("build request {method} {uri}"))
}

async fn exchange(
    mut sender: SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes)> {
    let response = sender.send_request(request).await.context("send request")?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow!("read answer: {e}"))?
        .to_bytes();
    Ok((status, headers, body))
}

/// An error answer from the control plane, as one line. Callers that need the status (to
/// retry a read as stale on "no quorum", say) find it with `anyhow::Error::downcast_ref`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The server's message.
    pub message: String,
}

impl ApiError {
    /// Whether the control plane lacked a quorum (HTTP 503).
    pub fn is_no_quorum(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_no_quorum() {
            return f.write_str(&self.message);
        }
        if !self.message.starts_with("no quorum") {
            f.write_str("no quorum: ")?;
        }
        write!(
            f,
            "{} (the control plane cannot commit right now; a timed-out write may still apply; \
             see `warren cluster status`)",
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// Turns a non-2xx answer into an [`ApiError`] carrying the server's message.
fn check_status(status: StatusCode, body: Bytes) -> Result<Answer> {
    if status.is_success() {
        return Ok(Answer { body });
    }
    let message = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(error) => error.error,
        Err(_) => {
            let text: String = String::from_utf8_lossy(&body)
                .chars()
                .take(MAX_SHOWN_ERROR_CHARS)
                .collect();
            format!("HTTP {status} from the control plane: {}", text.trim())
        }
    };
    Err(ApiError { status, message }.into())
}

/// The HTTP method of `route`.
fn http_method(route: Route<'_>) -> Method {
    match route.method() {
        RouteMethod::Get => Method::GET,
        RouteMethod::Post => Method::POST,
        RouteMethod::Put => Method::PUT,
        RouteMethod::Delete => Method::DELETE,
    }
}

/// The route table's check of a path parameter, which the tests exercise here too.
#[cfg(test)]
use warren_api::routes::segment;

#[cfg(test)]
mod tests;
