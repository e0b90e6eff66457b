//! A `FaultSwitch` under a real QUIC endpoint: cutting it is a real partition (requests time
//! out, the connection dies of its idle timeout, new dials time out), healing it lets new
//! connections through. Each side's switch drops datagrams both ways.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tracing::info;
use warren_transport::{
    Alpn, CertRole, ConnectError, Endpoint, EndpointOptions, FaultSwitch, RpcError,
    TransportConfig, TransportMetrics,
};

/// Short timers so a partition is noticed within a second or two. A request gives up before
/// the connection's idle timeout, so a lost request shows as a timeout.
fn partition_config() -> TransportConfig {
    TransportConfig {
        keep_alive_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(1_500),
        connect_timeout: Duration::from_millis(1_500),
        request_timeout: Duration::from_millis(700),
        frame_timeout: Duration::from_millis(1_000),
        ..TransportConfig::default()
    }
}

fn options_with(fault: Option<FaultSwitch>) -> EndpointOptions {
    EndpointOptions {
        config: partition_config(),
        metrics: TransportMetrics::unregistered(),
        fault,
        ..EndpointOptions::default()
    }
}

struct Pair {
    server: Arc<Endpoint>,
    client: Endpoint,
    _serve: tokio::task::JoinHandle<()>,
}

fn pair(server_fault: Option<FaultSwitch>, client_fault: Option<FaultSwitch>) -> Pair {
    let ca = ca();
    let server = Arc::new(
        Endpoint::bind(
            LOOPBACK.parse().unwrap(),
            &node_creds(&ca, 1, CertRole::Control),
            options_with(server_fault),
        )
        .unwrap(),
    );
    let (serve, _errors) = serve_echo(server.clone());
    let client = Endpoint::client(
        LOOPBACK.parse().unwrap(),
        &node_creds(&ca, 2, CertRole::Agent),
        options_with(client_fault),
    )
    .unwrap();
    Pair {
        server,
        client,
        _serve: serve,
    }
}

async fn ping(conn: &warren_transport::PeerConnection, n: u64) -> Result<Msg, RpcError> {
    conn.request::<Msg, Msg>(&Msg::Ping(n)).await
}

/// Works → the client's switch is cut: a request times out, the connection dies of its idle
/// timeout, a new dial times out (retryable) → healed: a new connection works.
#[tokio::test]
async fn cutting_the_client_socket_partitions_it_until_healed() {
    init();
    let switch = FaultSwitch::new();
    let Pair { server, client, .. } = pair(None, Some(switch.clone()));
    let conn = client
        .connect(server.local_addr(), Alpn::Agent)
        .await
        .unwrap();
    assert_eq!(ping(&conn, 1).await.unwrap(), Msg::Pong(1, "agent".into()));
    assert_eq!(switch.dropped_sent() + switch.dropped_received(), 0);

    info!("--- cut the client off");
    switch.cut();
    assert!(switch.is_cut());
    let failed = ping(&conn, 2).await;
    assert!(
        matches!(failed, Err(RpcError::Timeout(_))),
        "a request over a cut link times out: {failed:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the connection dies of its idle timeout");
    assert!(closed.contains("timed out"), "{closed}");
    assert!(switch.dropped_sent() > 0, "{switch:?}");
    let dialled = client.connect(server.local_addr(), Alpn::Agent).await;
    assert!(
        matches!(&dialled, Err(error @ ConnectError::Timeout { .. }) if error.is_retryable()),
        "{dialled:?}"
    );

    info!("--- heal: a new connection works");
    switch.heal();
    let conn = client
        .connect(server.local_addr(), Alpn::Agent)
        .await
        .unwrap();
    assert_eq!(ping(&conn, 3).await.unwrap(), Msg::Pong(3, "agent".into()));
}

/// Cutting the server's socket drops what arrives there too: the client's request times out
/// and the server counts the datagrams it threw away.
#[tokio::test]
async fn cutting_the_server_socket_drops_what_it_receives() {
    init();
    let switch = FaultSwitch::new();
    let Pair { server, client, .. } = pair(Some(switch.clone()), None);
    let conn = client
        .connect(server.local_addr(), Alpn::Agent)
        .await
        .unwrap();
    assert!(ping(&conn, 1).await.is_ok());

    switch.cut();
    let failed = ping(&conn, 2).await;
    assert!(matches!(failed, Err(RpcError::Timeout(_))), "{failed:?}");
    assert!(switch.dropped_received() > 0, "{switch:?}");

    switch.heal();
    let conn = client
        .connect(server.local_addr(), Alpn::Agent)
        .await
        .unwrap();
    assert!(ping(&conn, 3).await.is_ok());
}

/// A short cut (shorter than the idle timeout) loses nothing: QUIC retransmits once healed and
/// the same connection answers.
#[tokio::test]
async fn a_cut_shorter_than_the_idle_timeout_is_retransmitted_over() {
    init();
    let switch = FaultSwitch::new();
    let Pair { server, client, .. } = pair(None, Some(switch.clone()));
    let conn = client
        .connect(server.local_addr(), Alpn::Agent)
        .await
        .unwrap();
    assert!(ping(&conn, 1).await.is_ok());

    switch.cut();
    let request = {
        let conn = conn.clone();
        tokio::spawn(async move { ping(&conn, 2).await })
    };
    assert!(wait_until(Duration::from_secs(2), || switch.dropped_sent() > 0).await);
    switch.heal();
    let answer = request.await.unwrap();
    assert_eq!(answer.unwrap(), Msg::Pong(2, "agent".into()));
}
