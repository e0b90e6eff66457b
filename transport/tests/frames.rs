//! Frames over real QUIC streams: oversized, truncated, garbage and stalled input gives typed
//! errors and metrics, and a 1 MiB message survives 20% packet loss.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use warren_transport::{
    Alpn, CertRole, Endpoint, EndpointOptions, FrameError, TransportConfig, TransportMetrics,
};

/// A server endpoint whose connections are handed to the test, plus a connected client.
async fn pair(config: TransportConfig) -> (Endpoint, Endpoint, TransportMetrics) {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server_options = EndpointOptions {
        config: config.clone(),
        metrics: metrics.clone(),
        ..Default::default()
    };
    let server = Endpoint::bind(
        LOOPBACK.parse().unwrap(),
        &node_creds(&ca, 1, CertRole::Control),
        server_options,
    )
    .unwrap();
    let client_options = EndpointOptions {
        config,
        ..Default::default()
    };
    let client = Endpoint::bind(
        LOOPBACK.parse().unwrap(),
        &node_creds(&ca, 2, CertRole::Control),
        client_options,
    )
    .unwrap();
    (server, client, metrics)
}

async fn server_recv_result(
    server: &Endpoint,
    client: &Endpoint,
    raw: Vec<u8>,
    finish: bool,
) -> FrameError {
    let (accepted, connected) = tokio::join!(
        async { server.accept().await.unwrap().admit().await.unwrap() },
        client.connect(server.local_addr(), Alpn::Raft)
    );
    let connected = connected.unwrap();
    let (mut send, _recv) = connected.open_stream().await.unwrap();
    send.send_raw(&raw).await.unwrap();
    if finish {
        send.finish();
    }
    let (_send, mut recv) = accepted.accept_stream().await.unwrap();
    let err = recv.recv::<Msg>().await.unwrap_err();
    drop(send);
    err
}

#[tokio::test]
async fn oversized_frame_is_refused_from_its_prefix() {
    let config = TransportConfig {
        max_frame_bytes: 1024,
        ..fast_config()
    };
    let (server, client, metrics) = pair(config).await;
    let err = server_recv_result(
        &server,
        &client,
        (1_000_000u32).to_be_bytes().to_vec(),
        false,
    )
    .await;
    assert!(
        matches!(
            err,
            FrameError::TooLarge {
                len: 1_000_000,
                max: 1024
            }
        ),
        "{err}"
    );
    assert_eq!(metrics.frames_rejected("too_large"), 1);
}

#[tokio::test]
async fn truncated_frame_is_an_error_not_a_message() {
    let (server, client, metrics) = pair(fast_config()).await;
    let mut raw = 100u32.to_be_bytes().to_vec();
    raw.extend([1u8; 10]);
    let err = server_recv_result(&server, &client, raw, true).await;
    assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
    assert_eq!(metrics.frames_rejected("truncated"), 1);
}

#[tokio::test]
async fn garbage_payload_is_a_decode_error() {
    let (server, client, metrics) = pair(fast_config()).await;
    let mut raw = 6u32.to_be_bytes().to_vec();
    raw.extend([0xff; 6]);
    let err = server_recv_result(&server, &client, raw, false).await;
    assert!(matches!(err, FrameError::Decode(_)), "{err}");
    assert_eq!(metrics.frames_rejected("decode"), 1);
}

#[tokio::test]
async fn peer_stalling_mid_frame_times_out() {
    let config = TransportConfig {
        frame_timeout: Duration::from_millis(300),
        ..fast_config()
    };
    let (server, client, metrics) = pair(config).await;
    let mut raw = 100u32.to_be_bytes().to_vec();
    raw.extend([1u8; 10]);
    let err = server_recv_result(&server, &client, raw, false).await;
    assert!(matches!(err, FrameError::Stalled(_)), "{err}");
    assert_eq!(metrics.frames_rejected("stalled"), 1);
}

/// Garbage datagrams sprayed at an endpoint do not disturb it.
#[tokio::test]
async fn garbage_datagrams_do_not_disturb_the_endpoint() {
    let (server, client, _metrics) = pair(fast_config()).await;
    let server = Arc::new(server);
    let (_serve, _errors) = serve_echo(server.clone());
    let spray = UdpSocket::bind(LOOPBACK).await.unwrap();
    for i in 0..200u32 {
        let len = (i as usize * 37) % 1400 + 1;
        let junk: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
        spray.send_to(&junk, server.local_addr()).await.unwrap();
    }
    let conn = client
        .connect(server.local_addr(), Alpn::Raft)
        .await
        .unwrap();
    let reply: Msg = conn.request(&Msg::Ping(1)).await.unwrap();
    assert_eq!(reply, Msg::Pong(1, "control".into()));
}

/// A UDP relay between client and server that drops a fraction of datagrams each way.
async fn lossy_relay(server: SocketAddr, loss: f64, seed: u64) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind(LOOPBACK).await.unwrap());
    let back = Arc::new(UdpSocket::bind(LOOPBACK).await.unwrap());
    back.connect(server).await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let client_addr = Arc::new(tokio::sync::Mutex::new(None::<SocketAddr>));
    {
        let (front, back, client_addr) = (front.clone(), back.clone(), client_addr.clone());
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client_addr.lock().await = Some(from);
                if rng.f64() >= loss {
                    let _ = back.send(&buf[..n]).await;
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5555);
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client_addr.lock().await;
            if let Some(to) = to
                && rng.f64() >= loss
            {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    front_addr
}

/// Under 20% packet loss each way, a 1 MiB message still arrives intact.
#[tokio::test]
async fn one_mib_message_survives_twenty_percent_loss() {
    let config = TransportConfig {
        connect_timeout: Duration::from_secs(30),
        frame_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(90),
        initial_rtt: Duration::from_millis(50),
        ..TransportConfig::default()
    };
    let (server, client, _metrics) = pair(config).await;
    let server = Arc::new(server);
    let (_serve, _errors) = serve_echo(server.clone());
    let relay = lossy_relay(server.local_addr(), 0.20, 42).await;
    let conn = client.connect(relay, Alpn::Raft).await.unwrap();
    let blob: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let reply: Msg = conn.request(&Msg::Blob(blob.clone())).await.unwrap();
    assert_eq!(reply, Msg::Blob(blob));
}
