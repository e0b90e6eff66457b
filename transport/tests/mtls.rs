//! Mutual TLS between real QUIC endpoints on loopback: who is admitted, who is refused, and
//! that every refusal is typed and counted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use warren_api::NodeId;
use warren_api::clock::unix_now;
use warren_transport::{
    Alpn, CertRole, CertSubject, ConnectAnyError, ConnectError, Endpoint, TransportMetrics,
    Validity,
};

/// Two control endpoints exchange request/response and server-push frames; the server sees the
/// client's proven identity.
#[tokio::test]
async fn two_endpoints_exchange_framed_messages_over_mutual_tls() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server = Arc::new(endpoint(&node_creds(&ca, 1, CertRole::Control), &metrics));
    let (_serve, _errors) = serve_echo(server.clone());
    let client = endpoint(&node_creds(&ca, 2, CertRole::Control), &metrics);

    let conn = client.connect(addr(&server), Alpn::Raft).await.unwrap();
    assert_eq!(conn.peer().unwrap().node_id, Some(NodeId(1)));
    for n in 0..10 {
        let reply: Msg = conn.request(&Msg::Ping(n)).await.unwrap();
        assert_eq!(reply, Msg::Pong(n, "control".into()));
    }
    // Concurrent requests share the connection.
    let replies = futures_join(&conn).await;
    assert_eq!(replies.len(), 32);
    assert!(
        metrics
            .connections_total
            .with_label_values(&["server", "raft"])
            .get()
            >= 1
    );
}

async fn futures_join(conn: &warren_transport::PeerConnection) -> Vec<Msg> {
    let mut set = tokio::task::JoinSet::new();
    for n in 0..32u64 {
        let conn = conn.clone();
        set.spawn(async move { conn.request::<Msg, Msg>(&Msg::Ping(n)).await.unwrap() });
    }
    let mut out = Vec::new();
    while let Some(reply) = set.join_next().await {
        out.push(reply.unwrap());
    }
    out
}

/// A long-lived push stream carries many messages in order, server to client.
#[tokio::test]
async fn server_push_stream_delivers_in_order() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server = Arc::new(endpoint(&node_creds(&ca, 1, CertRole::Control), &metrics));
    let agent = endpoint(&node_creds(&ca, 9, CertRole::Agent), &metrics);
    let server_task = {
        let server = server.clone();
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().admit().await.unwrap();
            assert_eq!(conn.peer().unwrap().role, CertRole::Agent);
            let mut push = conn.open_push().await.unwrap();
            for n in 0..500u64 {
                push.send(&Msg::Ping(n)).await.unwrap();
            }
            push.finish();
            conn.closed().await
        })
    };
    let conn = agent.connect(addr(&server), Alpn::Agent).await.unwrap();
    let mut push = conn.accept_push().await.unwrap();
    for n in 0..500u64 {
        assert_eq!(push.recv::<Msg>().await.unwrap(), Msg::Ping(n));
    }
    assert!(matches!(
        push.recv::<Msg>().await,
        Err(warren_transport::FrameError::Closed)
    ));
    conn.close("done");
    server_task.await.unwrap();
}

/// An endpoint whose certificate comes from another CA is refused on both sides: as a client
/// it is refused by the server, as a server it is refused by the client.
#[tokio::test]
async fn certificate_from_another_ca_is_refused_on_both_sides() {
    init();
    let ca = ca();
    let other_ca = common::ca();
    let metrics = TransportMetrics::unregistered();
    let server = Arc::new(endpoint(&node_creds(&ca, 1, CertRole::Control), &metrics));
    let (_serve, mut errors) = serve_echo(server.clone());
    // A rogue that knows our (public) CA certificate but holds a certificate from another CA.
    let foreign = node_creds(&other_ca, 66, CertRole::Control);
    let rogue_creds = warren_transport::Credentials::new(
        foreign.cert_der().clone(),
        foreign.key_pkcs8_der().to_vec(),
        ca.cert_der().clone(),
    )
    .unwrap();
    let rogue_client = endpoint(&rogue_creds, &TransportMetrics::unregistered());

    // Rogue as client: the server refuses its certificate.
    let err = rogue_client
        .connect(addr(&server), Alpn::Raft)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                reason: "unknown_ca",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    let server_err = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server_err.kind(), "unknown_ca", "{server_err}");
    assert_eq!(metrics.handshake_failures("server", "unknown_ca"), 1);

    // A rogue wholly of the other cluster refuses our server as well.
    let rogue = Arc::new(endpoint(&foreign, &TransportMetrics::unregistered()));
    let err = rogue.connect(addr(&server), Alpn::Raft).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::ServerUntrusted {
                reason: "unknown_ca",
                ..
            }
        ),
        "{err}"
    );

    // Rogue as server: the legitimate client refuses it.
    let (_rogue_serve, _rogue_errors) = serve_echo(rogue.clone());
    let client = endpoint(&node_creds(&ca, 2, CertRole::Control), &metrics);
    let err = client.connect(addr(&rogue), Alpn::Raft).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::ServerUntrusted {
                reason: "unknown_ca",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(metrics.handshake_failures("client", "unknown_ca"), 1);
}

/// An expired client certificate may only renew itself: every other purpose closes it with its
/// own reason, which the client retries (after renewing); the renewal ALPN admits it. Past the
/// renewal grace, TLS refuses it outright.
#[tokio::test]
async fn an_expired_certificate_may_only_renew() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server = Arc::new(endpoint(&node_creds(&ca, 1, CertRole::Control), &metrics));
    let (_serve, mut errors) = serve_echo(server.clone());
    let now = unix_now();
    let expired_since = |seconds: i64| {
        ca.issue_credentials(
            &CertSubject::Node {
                node_id: NodeId(3),
                role: CertRole::Agent,
            },
            Validity {
                not_before_unix: now - seconds - 3600,
                not_after_unix: now - seconds,
            },
        )
        .unwrap()
    };
    let client = endpoint(&expired_since(3600), &TransportMetrics::unregistered());
    let err = client
        .connect(addr(&server), Alpn::Agent)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    let server_err = errors.recv().await.unwrap();
    assert_eq!(server_err.kind(), "expired", "{server_err}");
    client
        .connect(addr(&server), Alpn::Renew)
        .await
        .expect("an expired certificate may renew");

    let long_gone = endpoint(
        &expired_since(400 * 24 * 3600),
        &TransportMetrics::unregistered(),
    );
    let err = long_gone
        .connect(addr(&server), Alpn::Renew)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
}

/// A revoked certificate is refused by serial, both as client and as server.
#[tokio::test]
async fn revoked_certificate_is_refused_by_serial() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server_creds = node_creds(&ca, 1, CertRole::Control);
    let server = Arc::new(endpoint(&server_creds, &metrics));
    let (_serve, mut errors) = serve_echo(server.clone());
    let revoked_creds = node_creds(&ca, 4, CertRole::Agent);
    let client = endpoint(&revoked_creds, &metrics);
    // Works before revocation.
    client.connect(addr(&server), Alpn::Agent).await.unwrap();

    let revocations = warren_transport::TrustList::default();
    revocations.revoke(revoked_creds.identity().serial.clone());
    let server2 = Arc::new(
        Endpoint::bind(
            LOOPBACK.parse().unwrap(),
            &server_creds,
            warren_transport::EndpointOptions {
                revocations: revocations.clone(),
                ..options(&metrics)
            },
        )
        .unwrap(),
    );
    let (_serve2, mut errors2) = serve_echo(server2.clone());
    let err = client
        .connect(addr(&server2), Alpn::Agent)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    assert_eq!(errors2.recv().await.unwrap().kind(), "revoked");

    // A client that has revoked the server's certificate refuses to talk to it.
    let client_revocations = warren_transport::TrustList::default();
    client_revocations.revoke(server_creds.identity().serial.clone());
    let strict = Endpoint::bind(
        LOOPBACK.parse().unwrap(),
        &node_creds(&ca, 5, CertRole::Control),
        warren_transport::EndpointOptions {
            revocations: client_revocations,
            ..options(&metrics)
        },
    )
    .unwrap();
    let err = strict.connect(addr(&server), Alpn::Raft).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::ServerUntrusted {
                reason: "revoked",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(errors.recv().await.unwrap().kind(), "peer_rejected");
}

/// A control node admits only certificates the cluster recorded, each for the identity it was
/// issued to. What a copy of the CA key lets an attacker make — a fresh certificate, or one
/// that repeats a recorded serial for the attacker's own key — is refused; the refusal of an
/// unknown certificate is retryable for the client (a lagging node may learn it a moment later).
#[tokio::test]
async fn only_recorded_certificates_are_admitted_and_copied_serials_are_refused() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server_creds = node_creds(&ca, 1, CertRole::Control);
    let recorded = node_creds(&ca, 4, CertRole::Agent);
    let trust = warren_transport::TrustList::default();
    let mut known = warren_transport::KnownCertificates::default();
    known.add_node(
        recorded.identity().serial.clone(),
        CertRole::Agent,
        NodeId(4),
    );
    known.add_node(
        server_creds.identity().serial.clone(),
        CertRole::Control,
        NodeId(1),
    );
    trust.replace_known(Some(known));
    let server = Arc::new(
        Endpoint::bind(
            LOOPBACK.parse().unwrap(),
            &server_creds,
            warren_transport::EndpointOptions {
                revocations: trust.clone(),
                ..options(&metrics)
            },
        )
        .unwrap(),
    );
    let (_serve, mut errors) = serve_echo(server.clone());

    endpoint(&recorded, &metrics)
        .connect(addr(&server), Alpn::Agent)
        .await
        .expect("a recorded certificate is admitted");

    // Signed by the CA, never recorded: refused, and the client may try again later.
    let fresh = node_creds(&ca, 6, CertRole::Agent);
    let err = endpoint(&fresh, &metrics)
        .connect(addr(&server), Alpn::Agent)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("not one this cluster issued"),
        "{err}"
    );
    assert_eq!(errors.recv().await.unwrap().kind(), "unknown_certificate");

    // A recorded serial on a certificate for another node: refused.
    let serial = data_encoding::HEXLOWER
        .decode(recorded.identity().serial.as_bytes())
        .unwrap();
    let other_node = forge(&ca, 7, CertRole::Agent, &serial);
    let err = endpoint(&other_node, &metrics)
        .connect(addr(&server), Alpn::Agent)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");

    // The very identity and serial of the recorded node, for the attacker's own key: the
    // serial does not match the key, so TLS refuses it on any node, recorded set or not.
    let impostor = forge(&ca, 4, CertRole::Agent, &serial);
    assert_eq!(
        impostor.identity().binding,
        warren_transport::SerialBinding::Mismatch
    );
    let err = endpoint(&impostor, &metrics)
        .connect(addr(&server), Alpn::Agent)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let plain = Arc::new(endpoint(&server_creds, &metrics));
    let (_serve_plain, _plain_errors) = serve_echo(plain.clone());
    let err = endpoint(&impostor, &metrics)
        .connect(addr(&plain), Alpn::Agent)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

/// A certificate of the wrong role is refused for the purpose it asked for.
#[tokio::test]
async fn wrong_role_is_refused_at_admission() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server = Arc::new(endpoint(&node_creds(&ca, 1, CertRole::Control), &metrics));
    let (_serve, mut errors) = serve_echo(server.clone());
    let agent = endpoint(&node_creds(&ca, 7, CertRole::Agent), &metrics);
    let err = agent.connect(addr(&server), Alpn::Raft).await.unwrap_err();
    match &err {
        ConnectError::Refused { detail, .. } => assert!(
            detail.contains("requires a control certificate"),
            "{detail}"
        ),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(errors.recv().await.unwrap().kind(), "wrong_role");
    assert_eq!(metrics.handshake_failures("server", "wrong_role"), 1);
    // The same agent is admitted for its own purpose.
    agent.connect(addr(&server), Alpn::Agent).await.unwrap();
}

/// An agent certificate cannot pose as a control server: clients verify the control name.
#[tokio::test]
async fn agent_certificate_cannot_serve_as_control() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let fake_server = Arc::new(endpoint(&node_creds(&ca, 8, CertRole::Agent), &metrics));
    let (_serve, _errors) = serve_echo(fake_server.clone());
    let client = endpoint(&node_creds(&ca, 2, CertRole::Control), &metrics);
    let err = client
        .connect(addr(&fake_server), Alpn::Raft)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::ServerUntrusted { .. }), "{err}");
}

/// One round of dials fails while nobody listens (a retryable failure, not the end), the next
/// round after the server appears connects, connections closed by both sides leave no
/// active-connection count behind, and cancellation and an empty address list are told apart.
#[tokio::test]
async fn connect_any_fails_a_round_without_a_server_and_connects_once_it_appears() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let server_creds = node_creds(&ca, 1, CertRole::Control);
    // Reserve a port, then free it so the first round finds nobody there.
    let port = std::net::UdpSocket::bind(LOOPBACK)
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let config = warren_transport::TransportConfig {
        connect_timeout: Duration::from_millis(300),
        ..fast_config()
    };
    let client = Endpoint::bind(
        LOOPBACK.parse().unwrap(),
        &node_creds(&ca, 2, CertRole::Control),
        warren_transport::EndpointOptions {
            config,
            metrics: metrics.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let missed = client
        .connect_any(&[server_addr], Alpn::Raft, &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(missed, ConnectAnyError::Unreachable { tried: 1, .. }),
        "{missed}"
    );
    assert!(missed.is_retryable());
    assert!(metrics.handshake_failures("client", "timeout") >= 1);

    let server = Arc::new(Endpoint::bind(server_addr, &server_creds, options(&metrics)).unwrap());
    let (_serve, _errors) = serve_echo(server.clone());
    let conn = client
        .connect_any(&[server_addr], Alpn::Raft, &cancel)
        .await
        .unwrap();
    let reply: Msg = conn.request(&Msg::Ping(1)).await.unwrap();
    assert_eq!(reply, Msg::Pong(1, "control".into()));
    drop(conn);
    server.close();
    assert!(
        wait_until(Duration::from_secs(5), || metrics.connections_active.get()
            == 0)
        .await
    );

    let empty = client.connect_any(&[], Alpn::Raft, &cancel).await.err();
    assert!(
        matches!(empty, Some(ConnectAnyError::NoAddress)),
        "{empty:?}"
    );
    cancel.cancel();
    let cancelled = client
        .connect_any(&[server_addr], Alpn::Raft, &cancel)
        .await
        .err();
    assert!(
        matches!(cancelled, Some(ConnectAnyError::Cancelled)),
        "{cancelled:?}"
    );
}

/// A certificate revoked while the server runs is refused on the very next connection from the
/// same client endpoint: no TLS session resumption lets it skip verification.
#[tokio::test]
async fn revocation_applies_to_reconnects_of_a_live_client() {
    init();
    let ca = ca();
    let metrics = TransportMetrics::unregistered();
    let revocations = warren_transport::TrustList::default();
    let server = Arc::new(
        Endpoint::bind(
            LOOPBACK.parse().unwrap(),
            &node_creds(&ca, 1, CertRole::Control),
            warren_transport::EndpointOptions {
                revocations: revocations.clone(),
                ..options(&metrics)
            },
        )
        .unwrap(),
    );
    let (_serve, mut errors) = serve_echo(server.clone());
    let agent_creds = node_creds(&ca, 4, CertRole::Agent);
    let agent = endpoint(&agent_creds, &TransportMetrics::unregistered());
    for _ in 0..3 {
        let conn = agent.connect(addr(&server), Alpn::Agent).await.unwrap();
        conn.close("again");
    }
    revocations.revoke(agent_creds.identity().serial.clone());
    let err = agent.connect(addr(&server), Alpn::Agent).await.unwrap_err();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    assert_eq!(errors.recv().await.unwrap().kind(), "revoked");
}

/// Runs a server endpoint in its own runtime on its own thread, so that dropping the runtime
/// kills it the way `kill -9` does: no CONNECTION_CLOSE reaches its peers.
fn server_in_own_runtime(
    creds: warren_transport::Credentials,
    at: std::net::SocketAddr,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics = TransportMetrics::unregistered();
        let bound = runtime.block_on(async {
            // The killed run's socket closes once its runtime's threads have dropped it.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let server = loop {
                match Endpoint::bind(at, &creds, options(&metrics)) {
                    Ok(server) => break Arc::new(server),
                    Err(error) if std::time::Instant::now() < deadline => {
                        let _ = error;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => panic!("bind {at}: {error}"),
                }
            };
            let bound = addr(&server);
            let _ = serve_echo(server);
            bound
        });
        (runtime, bound)
    })
    .join()
    .unwrap()
}

/// A node killed without closing and restarted on the same address with the same key resets
/// the connections of its previous run (a QUIC stateless reset from a key derived from the
/// node's private key): clients learn at their next packet instead of waiting for a timeout.
/// A different node on that address cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_the_connections_of_its_previous_run() {
    init();
    let ca = ca();
    let server_creds = node_creds(&ca, 1, CertRole::Control);
    let metrics = TransportMetrics::unregistered();
    let client = endpoint(&node_creds(&ca, 2, CertRole::Control), &metrics);

    for (same_key, expect_reset) in [(true, true), (false, false)] {
        let (first, at) =
            server_in_own_runtime(server_creds.clone(), "127.0.0.1:0".parse().unwrap());
        let conn = client.connect(at, Alpn::Raft).await.unwrap();
        let reply: Msg = conn.request(&Msg::Ping(1)).await.unwrap();
        assert_eq!(reply, Msg::Pong(1, "control".into()));
        // kill -9: the runtime and its endpoint vanish without a word.
        first.shutdown_background();
        let restarted_creds = if same_key {
            server_creds.clone()
        } else {
            node_creds(&ca, 3, CertRole::Control)
        };
        let (second, _) = server_in_own_runtime(restarted_creds, at);
        let started = std::time::Instant::now();
        let request = conn.request::<Msg, Msg>(&Msg::Ping(2));
        let outcome = tokio::time::timeout(Duration::from_secs(3), request).await;
        match (expect_reset, outcome) {
            (true, Ok(Err(error))) => {
                assert!(started.elapsed() < Duration::from_secs(3), "{error}");
                let reason = conn.closed().await;
                assert!(
                    reason.contains("reset"),
                    "closed by a stateless reset: {reason}"
                );
            }
            (false, Err(_)) => {} // no reset: the old connection just goes quiet
            (expect, other) => panic!("same key {same_key}, expected reset {expect}: {other:?}"),
        }
        second.shutdown_background();
    }
}
