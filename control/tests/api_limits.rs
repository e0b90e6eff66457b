//! What an unauthenticated TCP client can make the API's TLS listener hold: connections past
//! the per-source and total caps are closed at once while a legitimate request still gets
//! through, and clients that stall in the TLS handshake or before their request headers are
//! disconnected.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use warren_control::http::ApiLimits;
use warren_control::node::{ControlConfig, ControlNode, InitOutput, NewNode};

async fn start(api_limits: ApiLimits) -> (ControlNode, InitOutput, TempDir) {
    warren_transport::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let new = NewNode::on_loopback(dir.path().to_owned(), "c1", "central");
    let config = ControlConfig {
        api_limits,
        ..ControlConfig::default()
    };
    let (node, out) = ControlNode::init(new, config).await.unwrap();
    (node, out, dir)
}

/// A TCP connection to the API from `from` (a 127.x address of its own) that sends nothing.
async fn raw(node: &ControlNode, from: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    socket.connect(node.api_addr()).await.unwrap()
}

/// Whether the server closes `stream` within `limit` (end of stream or reset).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// An admin's `GET /v1/services` over TLS from 127.0.0.1.
async fn legitimate_request(node: &ControlNode, out: &InitOutput) -> StatusCode {
    let stream =
        warren_transport::https::connect(node.api_addr(), &out.admin, Duration::from_secs(5))
            .await
            .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://warren/v1/services")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// One source holding its share of connections (stalled in the handshake) gets its next one
/// closed at once; an admin from another address is still served; past the total cap any
/// source's new connection is closed at once. Each refusal is counted by cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_caps_are_closed_at_once_and_admins_still_get_in() {
    let limits = ApiLimits {
        connections_max: 6,
        connections_per_source_max: 4,
        handshake_timeout: Duration::from_secs(60),
        ..ApiLimits::default()
    };
    let (node, out, _dir) = start(limits).await;
    let limited = |cap: &str| {
        node.metrics()
            .api_connections_limited_total
            .with_label_values(&[cap])
            .get()
    };

    // --- one source takes its four slots; its fifth connection is closed at once
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(raw(&node, [127, 0, 0, 2]).await);
    }
    let mut fifth = raw(&node, [127, 0, 0, 2]).await;
    assert!(
        closed_within(&mut fifth, Duration::from_secs(5)).await,
        "a connection over the per-source cap was kept"
    );
    assert_eq!(limited("per_source"), 1);

    // --- an admin from another address is served meanwhile
    assert_eq!(legitimate_request(&node, &out).await, StatusCode::OK);

    // --- the total cap: a second source cannot take more than what is left
    for _ in 0..3 {
        held.push(raw(&node, [127, 0, 0, 3]).await);
    }
    wait_until("a connection is closed at the total cap", || {
        limited("total") >= 1
    })
    .await;
    drop(held);
    node.shutdown().await;
}

/// A client that connects and sends nothing is disconnected at the handshake timeout; one
/// that completes TLS and then sends no request headers at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_disconnected() {
    let limits = ApiLimits {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        ..ApiLimits::default()
    };
    let (node, out, _dir) = start(limits).await;

    let mut silent = raw(&node, [127, 0, 0, 4]).await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(8)).await,
        "a client silent in the handshake was kept"
    );

    let mut tls =
        warren_transport::https::connect(node.api_addr(), &out.admin, Duration::from_secs(5))
            .await
            .unwrap();
    assert!(
        closed_within(&mut tls, Duration::from_secs(8)).await,
        "a client that sent no request headers was kept"
    );

    // The listener still serves.
    assert_eq!(legitimate_request(&node, &out).await, StatusCode::OK);
    node.shutdown().await;
}
