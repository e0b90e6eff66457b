//! A tiny plain-HTTP/1 listener for read-only operational endpoints (`/metrics`, `/health`,
//! `/ready`, Prometheus service discovery) that Prometheus and load balancers read. Control
//! and agents both serve one; what each path answers is up to the caller's handler.
//!
//! Only `GET` is meaningful; request bodies are never read. Connections are bounded by
//! [`MAX_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_SOURCE`]: beyond that, new ones are closed at
//! once rather than queued. Failing `accept`s back off ([`crate::limits::AcceptBackoff`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use warren_api::scrape::{ScrapeTargets, SdFilter};

use crate::limits::{AcceptBackoff, ConnectionLimiter, ConnectionPermit};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections from one source address (IPv6: one /64) at once, so one client cannot take
/// every slot from the scrapers and load balancers.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// A client must send a request's headers within this time (also the keep-alive idle limit).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a handler answers: a status, a body and its content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `content-type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// Prometheus's text exposition format (also fine for any plain-text answer).
pub const TEXT: &str = "text/plain; version=0.0.4";
/// JSON (Prometheus's HTTP service discovery insists on it).
pub const JSON: &str = "application/json";

impl Answer {
    /// A plain-text answer.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Answer {
            status,
            content_type: TEXT,
            body: body.into(),
        }
    }

    /// A JSON answer.
    pub fn json(status: StatusCode, body: String) -> Self {
        Answer {
            status,
            content_type: JSON,
            body,
        }
    }
}

/// What a handler is asked: the request's path and its query string (without the `?`; empty
/// when there is none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `/metrics`, `/sd/nodes`, …
    pub path: String,
    /// `site=lisbon&role=agent`, or empty.
    pub query: String,
}

/// A handler: the request in, an answer out.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// The `http_sd` document a discovery request asks for (`…/nodes` or `…/workloads`, with
/// `site=` and `role=` in its query: [`SdFilter`]), or a 400 that names what is wrong with the
/// query.
pub fn discovery(targets: &ScrapeTargets, asked: &Request) -> Answer {
    let filter = match SdFilter::from_query(&asked.query) {
        Ok(filter) => filter,
        Err(reason) => return Answer::text(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    };
    let groups = if asked.path.ends_with("/workloads") {
        targets.workload_groups(&filter)
    } else {
        targets.node_groups(&filter)
    };
    let body = serde_json::to_string(&groups).expect("discovery groups serialize");
    Answer::json(StatusCode::OK, body)
}

fn response(answer: Answer) -> Response<Full<Bytes>> {
    Response::builder()
        .status(answer.status)
        .header("content-type", answer.content_type)
        .body(Full::new(Bytes::from(answer.body)))
        .expect("static response parts are valid")
}

/// Binds `addr` and serves `handler` until `cancel` fires; returns the bound address.
///
/// # Errors
/// I/O errors binding `addr`.
pub async fn serve(
    addr: SocketAddr,
    handler: Handler,
    cancel: CancellationToken,
    tasks: TaskTracker,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = ConnectionLimiter::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE);
    tasks.clone().spawn(async move {
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    let (pause, log) = backoff.failed(std::time::Instant::now());
                    if let Some(more) = log {
                        warn!(error = %e, more, "metrics accept failed; backing off (out of file descriptors?)");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            backoff.succeeded();
            let Ok(permit) = slots.try_acquire(peer.ip()) else {
                debug!(peer = %peer, "metrics listener busy; connection closed");
                continue;
            };
            tasks.spawn(serve_connection(stream, handler.clone(), permit, cancel.clone()));
        }
    });
    Ok(bound)
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    handler: Handler,
    _permit: ConnectionPermit,
    cancel: CancellationToken,
) {
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let handler = handler.clone();
            async move {
                let uri = request.uri();
                let asked = Request {
                    path: uri.path().to_owned(),
                    query: uri.query().unwrap_or_default().to_owned(),
                };
                Ok::<_, std::convert::Infallible>(response(handler(asked).await))
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => if let Err(e) = result {
            debug!(error = %e, "metrics connection ended");
        },
        () = cancel.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_handler_and_stops_on_cancel() {
        let handler: Handler = Arc::new(|asked: Request| {
            Box::pin(async move {
                match (asked.path.as_str(), asked.query.as_str()) {
                    ("/health", "") => Answer::text(StatusCode::OK, "ok\n"),
                    ("/sd", "site=a") => Answer::json(StatusCode::OK, "[]".into()),
                    _ => Answer::text(StatusCode::NOT_FOUND, "not found\n"),
                }
            })
        });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            handler,
            cancel.clone(),
            tasks.clone(),
        )
        .await
        .unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        let sd = get("/sd?site=a").await;
        assert!(sd.starts_with("HTTP/1.1 200"), "{sd}");
        assert!(sd.contains("content-type: application/json"), "{sd}");
        cancel.cancel();
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .expect("every task ends on cancel");
    }
}
