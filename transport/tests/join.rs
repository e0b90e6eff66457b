//! The join handshake over real QUIC: a valid token yields a working certificate; every bad
//! token is refused with its own reason, and a server from another cluster never sees the token.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use warren_api::NodeRole;
use warren_api::clock::unix_now_ms;
use warren_transport::join::{
    JoinError, JoinParams, JoinRefusalReason, LocalJoinAuthority, join, serve_join,
};
use warren_transport::token::mint;
use warren_transport::{
    Alpn, CertRole, ConnectError, Endpoint, MintOptions, TokenBook, TokenError, TransportMetrics,
};

struct Cluster {
    server: Arc<Endpoint>,
    authority: Arc<LocalJoinAuthority>,
    fingerprint: [u8; 32],
    metrics: TransportMetrics,
}

fn cluster() -> Cluster {
    init();
    let ca = ca();
    let fingerprint = ca.fingerprint();
    let metrics = TransportMetrics::unregistered();
    let server = Arc::new(endpoint(&node_creds(&ca, 1, CertRole::Control), &metrics));
    let control_addrs = vec![server.local_addr().to_string()];
    let authority = Arc::new(LocalJoinAuthority::new(
        ca,
        TokenBook::default(),
        control_addrs,
    ));
    let serve_server = server.clone();
    let serve_authority = authority.clone();
    let serve_metrics = metrics.clone();
    tokio::spawn(async move {
        while let Some(incoming) = serve_server.accept().await {
            let authority = serve_authority.clone();
            let metrics = serve_metrics.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.admit().await {
                    match conn.alpn() {
                        Alpn::Join => serve_join(conn, authority.as_ref(), &metrics).await,
                        _ => {
                            warren_transport::serve_requests(conn, |m: Msg, _| async move { m })
                                .await
                        }
                    }
                }
            });
        }
    });
    Cluster {
        server,
        authority,
        fingerprint,
        metrics,
    }
}

impl Cluster {
    fn token(&self, role: NodeRole, ttl: Option<Duration>, single_use: bool) -> String {
        let (token, record) = mint(
            self.fingerprint,
            MintOptions {
                role,
                ttl,
                single_use,
            },
            unix_now_ms(),
        );
        self.authority.add_token(record);
        token.to_string()
    }

    async fn join(
        &self,
        token: &str,
        role: NodeRole,
    ) -> Result<warren_transport::join::Joined, JoinError> {
        join(
            self.server.local_addr(),
            token,
            params(role),
            &fast_config(),
            &TransportMetrics::unregistered(),
        )
        .await
    }
}

fn params(role: NodeRole) -> JoinParams {
    JoinParams {
        role,
        name: "edge-1".into(),
        site: "lisbon".into(),
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        advertise: vec![],
    }
}

fn refusal(result: Result<warren_transport::join::Joined, JoinError>) -> JoinRefusalReason {
    match result {
        Err(JoinError::Refused(refusal)) => refusal.reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A valid agent token yields a certificate whose identity matches the grant, and that
/// certificate is admitted on the agent stream.
#[tokio::test]
async fn valid_token_yields_a_working_certificate() {
    let cluster = cluster();
    let token = cluster.token(NodeRole::Agent, Some(Duration::from_secs(3600)), false);
    let joined = cluster.join(&token, NodeRole::Agent).await.unwrap();
    assert_eq!(joined.credentials.identity().role, CertRole::Agent);
    assert_eq!(joined.credentials.identity().node_id, Some(joined.node_id));
    assert_eq!(
        joined.control_addrs,
        vec![cluster.server.local_addr().to_string()]
    );
    let agent = endpoint(&joined.credentials, &TransportMetrics::unregistered());
    let conn = agent
        .connect(cluster.server.local_addr(), Alpn::Agent)
        .await
        .unwrap();
    let echoed: Msg = conn.request(&Msg::Ping(5)).await.unwrap();
    assert_eq!(echoed, Msg::Ping(5));
    assert_eq!(
        cluster
            .metrics
            .join_requests_total
            .with_label_values(&["granted"])
            .get(),
        1
    );
}

/// Each bad-token case is refused with its own reason and counted.
#[tokio::test]
async fn each_bad_token_case_is_refused() {
    let cluster = cluster();

    // Forged: a real token with its secret altered.
    let good = cluster.token(NodeRole::Agent, None, false);
    let (head, secret) = good.rsplit_once('-').unwrap();
    let flipped = if secret.starts_with('a') {
        secret.replacen('a', "b", 1)
    } else {
        format!("a{}", &secret[1..])
    };
    let forged = format!("{head}-{flipped}");
    assert_eq!(
        refusal(cluster.join(&forged, NodeRole::Agent).await),
        JoinRefusalReason::InvalidToken
    );
    assert_eq!(
        cluster
            .metrics
            .join_requests_total
            .with_label_values(&["bad_secret"])
            .get(),
        1
    );

    // Unknown: minted for this cluster but never recorded.
    let (unknown, _) = mint(
        cluster.fingerprint,
        MintOptions {
            role: NodeRole::Agent,
            ttl: None,
            single_use: false,
        },
        unix_now_ms(),
    );
    assert_eq!(
        refusal(cluster.join(&unknown.to_string(), NodeRole::Agent).await),
        JoinRefusalReason::InvalidToken
    );
    assert_eq!(
        cluster
            .metrics
            .join_requests_total
            .with_label_values(&["unknown"])
            .get(),
        1
    );

    // Expired.
    let expired = cluster.token(NodeRole::Agent, Some(Duration::from_millis(1)), false);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        refusal(cluster.join(&expired, NodeRole::Agent).await),
        JoinRefusalReason::Expired
    );

    // Reused single-use token.
    let once = cluster.token(NodeRole::Agent, None, true);
    cluster.join(&once, NodeRole::Agent).await.unwrap();
    assert_eq!(
        refusal(cluster.join(&once, NodeRole::Agent).await),
        JoinRefusalReason::AlreadyUsed
    );

    // Wrong role: an agent token used to join as control.
    assert_eq!(
        refusal(cluster.join(&good, NodeRole::Control).await),
        JoinRefusalReason::WrongRole
    );

    // Malformed: refused locally, nothing is sent.
    let err = cluster
        .join("WRN1-a-nonsense", NodeRole::Agent)
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinError::Token(TokenError::Malformed(_))),
        "{err}"
    );
}

/// A token that pins another cluster's CA: the joiner refuses the server before sending it.
#[tokio::test]
async fn token_for_another_cluster_is_never_sent() {
    let cluster = cluster();
    let other = common::ca();
    let (token, _) = mint(
        other.fingerprint(),
        MintOptions {
            role: NodeRole::Agent,
            ttl: None,
            single_use: false,
        },
        unix_now_ms(),
    );
    let err = cluster
        .join(&token.to_string(), NodeRole::Agent)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            JoinError::Connect(ConnectError::ServerUntrusted {
                reason: "unknown_ca",
                ..
            })
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    // The server never received a join request.
    let total: u64 = ["granted", "wrong_cluster", "invalid_token", "bad_frame"]
        .iter()
        .map(|l| {
            cluster
                .metrics
                .join_requests_total
                .with_label_values(&[l])
                .get()
        })
        .sum();
    assert_eq!(total, 0);
}

/// Issued control certificates serve as control servers to other members.
#[tokio::test]
async fn control_join_yields_a_server_capable_certificate() {
    let cluster = cluster();
    let token = cluster.token(NodeRole::Control, None, true);
    let joined = cluster.join(&token, NodeRole::Control).await.unwrap();
    let new_control = Arc::new(endpoint(
        &joined.credentials,
        &TransportMetrics::unregistered(),
    ));
    let (_serve, _errors) = serve_echo(new_control.clone());
    // The original server dials the new control node over Raft.
    let conn = cluster
        .server
        .connect(new_control.local_addr(), Alpn::Raft)
        .await
        .unwrap();
    let reply: Msg = conn.request(&Msg::Ping(3)).await.unwrap();
    assert_eq!(reply, Msg::Pong(3, "control".into()));
}
