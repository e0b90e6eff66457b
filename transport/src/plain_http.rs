//! A tiny plain-HTTP/1 listener for read-only operational endpoints (`/metrics`, `/health`,
//! `/ready`) that Prometheus and load balancers scrape. Control and agents both serve one; what
//! each path answers is up to the caller's handler.
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

use crate::limits::{AcceptBackoff, ConnectionLimiter, ConnectionPermit};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections from one source address (IPv6: one /64) at once, so one client cannot take
/// every slot from the scrapers and load balancers.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// A client must send a request's headers within this time (also the keep-alive idle limit).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a handler answers: a status and a text body.
pub type Answer = (StatusCode, String);

/// A handler: the request path in, an answer out.
pub type Handler =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
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
                let (status, body) = handler(request.uri().path().to_owned()).await;
                Ok::<_, std::convert::Infallible>(text(status, body))
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
        let handler: Handler = Arc::new(|path: String| {
            Box::pin(async move {
                match path.as_str() {
                    "/health" => (StatusCode::OK, "ok\n".to_owned()),
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
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
        cancel.cancel();
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .expect("every task ends on cancel");
    }
}
