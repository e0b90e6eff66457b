//! The HTTP client of the control-plane API (`warren_api::rest`): HTTP/1.1 and JSON over TLS
//! with the admin certificate, or over a control node's local Unix socket.
//!
//! The client tries every API address it knows, in order, until one accepts a connection.
//! It fails over only before a request is sent: a request that was sent and then timed out may
//! still be applied, so it is reported rather than repeated elsewhere.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use warren_api::rest::{ErrorBody, PREFIX};
use warren_transport::Credentials;

use crate::config;

/// Largest response body read (lists of many nodes or replicas stay far below this).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Longest error text from a non-JSON error answer that is shown.
const MAX_SHOWN_ERROR_CHARS: usize = 200;

/// Default for `--timeout`.
const DEFAULT_TIMEOUT: &str = "10s";

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

    /// How long to wait for each request, connecting included (default 10s).
    #[arg(long, global = true, value_name = "DURATION")]
    pub timeout: Option<String>,
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

    /// How long to wait for each request, connecting included (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

impl TopClientArgs {
    /// Whether any of the flags was given.
    pub fn is_given(&self) -> bool {
        self.config.is_some() || !self.api.is_empty() || self.timeout.is_some()
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
    credentials: Option<Credentials>,
    timeout: Duration,
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

impl Client {
    /// Builds a client from the flags: the admin config found by the lookup order, with
    /// `--api` replacing its addresses. Only Unix-socket targets work without an admin config.
    ///
    /// # Errors
    /// No usable config or address.
    pub fn from_args(args: &ClientArgs) -> Result<Self> {
        let timeout = args.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT);
        let timeout_ms = warren_api::parse_duration_ms(timeout)
            .map_err(|e| anyhow!("--timeout: {}", e.message))?;
        if timeout_ms == 0 {
            bail!("--timeout must be more than 0s");
        }
        let overrides: Vec<Target> = args
            .api
            .iter()
            .map(|a| Target::parse(a))
            .collect::<Result<_>>()?;
        let unix_only =
            !overrides.is_empty() && overrides.iter().all(|t| matches!(t, Target::Unix(_)));
        let config = match config::find(args.config.as_deref()) {
            Ok((_, config)) => Some(config),
            Err(_) if unix_only && args.config.is_none() && config::from_env().is_none() => None,
            Err(error) => return Err(error),
        };
        let credentials = config.as_ref().map(|c| c.credentials()).transpose()?;
        let targets = if overrides.is_empty() {
            let config = config
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
            credentials,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// `GET PREFIX+path`.
    ///
    /// # Errors
    /// Unreachable control plane, or an error answer turned into one line.
    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.call(Method::GET, path, None).await
    }

    /// A request with a JSON body.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn send<B: Serialize>(&self, method: Method, path: &str, body: &B) -> Result<Answer> {
        let bytes = serde_json::to_vec(body).context("encode request")?;
        self.call(method, path, Some(bytes)).await
    }

    /// A request without a body (POST actions, DELETE).
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn empty(&self, method: Method, path: &str) -> Result<Answer> {
        self.call(method, path, None).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer> {
        let uri = format!("{PREFIX}{path}");
        let mut failures = Vec::new();
        for target in &self.targets {
            let sender = match tokio::time::timeout(self.timeout, self.connect(target)).await {
                Ok(Ok(sender)) => sender,
                Ok(Err(error)) => {
                    failures.push(format!("{target}: {}", crate::output::one_line(&error)));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{target}: no connection within the timeout"));
                    continue;
                }
            };
            let request = build_request(&method, &uri, body.clone())?;
            let answer = tokio::time::timeout(self.timeout, exchange(sender, request))
                .await
                .map_err(|_| {
                    anyhow!(
                        "{target} did not answer {method} {uri} within {}; a write may still \
                         be applied, so check before retrying",
                        warren_api::format_duration_ms(self.timeout.as_millis() as u64)
                    )
                })??;
            return check_status(answer.0, answer.1);
        }
        bail!("cannot reach the control plane: {}", failures.join("; "))
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
                    match warren_transport::https::connect(socket_addr, credentials, self.timeout)
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
) -> Result<(StatusCode, Bytes)> {
    let response = sender.send_request(request).await.context("send request")?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow!("read answer: {e}"))?
        .to_bytes();
    Ok((status, body))
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

/// Checks a path segment (a name or id given on the command line) before it goes into a URL.
///
/// # Errors
/// Characters that no Warren name has.
pub fn segment<'a>(what: &str, value: &'a str) -> Result<&'a str> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid {what} {value:?}: expected a name or id (letters, digits, '-', '.')");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("unix:/run/w.sock").unwrap(),
            Target::Unix("/run/w.sock".into())
        );
        assert_eq!(
            Target::parse("10.0.0.1:7100").unwrap(),
            Target::Tls("10.0.0.1:7100".into())
        );
        assert_eq!(
            Target::parse("ops.example:7100").unwrap(),
            Target::Tls("ops.example:7100".into())
        );
        assert_eq!(
            Target::parse("[::1]:7100").unwrap(),
            Target::Tls("[::1]:7100".into())
        );
        for bad in ["", "unix:", "10.0.0.1", ":7100", "host:port"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    fn error_of(status: u16, body: &str) -> String {
        check_status(
            StatusCode::from_u16(status).unwrap(),
            Bytes::from(body.to_owned()),
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn error_answers_become_one_line() {
        assert_eq!(
            error_of(
                404,
                r#"{"error":"service web not found","code":"not_found"}"#
            ),
            "service web not found"
        );
        let quorum = error_of(
            503,
            r#"{"error":"no quorum: leader unknown","code":"no_quorum"}"#,
        );
        assert!(quorum.starts_with("no quorum: leader unknown"), "{quorum}");
        assert!(quorum.contains("warren cluster status"), "{quorum}");
        assert_eq!(
            error_of(502, "bad gateway\n"),
            "HTTP 502 Bad Gateway from the control plane: bad gateway"
        );
        assert!(!error_of(500, &"x".repeat(10_000)).contains(&"x".repeat(201)));
        let ok = check_status(StatusCode::OK, Bytes::from_static(b"[]")).unwrap();
        assert_eq!(ok.text(), "[]");
    }

    #[test]
    fn segments_are_checked() {
        assert_eq!(segment("service", "web-1").unwrap(), "web-1");
        assert_eq!(
            segment("node", "00000000000000ff").unwrap(),
            "00000000000000ff"
        );
        for bad in ["", "a/b", "a b", "../x", "a?b", "a%2F"] {
            assert!(segment("node", bad).is_err(), "{bad}");
        }
    }
}
