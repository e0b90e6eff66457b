//! What a client without a certificate can make a control node hold through the join ALPN:
//! idle join connections are closed at their deadline, past the caps new ones are refused at
//! once, and a source that keeps sending bad tokens is refused as rate-limited.

use std::time::Duration;

use tempfile::TempDir;
use warren_api::NodeRole;
use warren_api::clock::unix_now_ms;
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode, InitOutput, NewNode};
use warren_transport::join::{JoinError, JoinParams, JoinRefusalReason, OpenJoin, join, open_join};
use warren_transport::token::mint;
use warren_transport::{ConnectError, MintOptions, TransportConfig, TransportMetrics};

async fn start(transport: TransportConfig) -> (ControlNode, InitOutput, TempDir) {
    warren_transport::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let new = NewNode::on_loopback(dir.path().to_owned(), "c1", "central");
    let config = ControlConfig {
        transport,
        ..ControlConfig::default()
    };
    let (node, out) = ControlNode::init(new, config).await.unwrap();
    (node, out, dir)
}

async fn agent_token(node: &ControlNode, out: &InitOutput) -> String {
    let options = MintOptions {
        role: NodeRole::Agent,
        ttl: None,
        single_use: false,
    };
    let (token, record) = mint(out.fingerprint, options, unix_now_ms());
    node.control()
        .propose(Op::AddToken(record))
        .await
        .unwrap()
        .result
        .unwrap();
    token.to_string()
}

fn params(name: &str) -> JoinParams {
    JoinParams {
        role: NodeRole::Agent,
        name: name.into(),
        site: "lisbon".into(),
        labels: Default::default(),
        advertise: vec![],
    }
}

/// An idle join connection from `from` (a 127.x address of its own).
async fn idle(
    node: &ControlNode,
    out: &InitOutput,
    from: [u8; 4],
) -> Result<OpenJoin, ConnectError> {
    open_join(
        (from, 0).into(),
        node.quic_addr(),
        out.fingerprint,
        &TransportConfig::default(),
        &TransportMetrics::unregistered(),
    )
    .await
}

/// Waits (bounded) until the connection is closed by the server.
async fn closed_within(probe: &OpenJoin, limit: Duration) -> bool {
    tokio::time::timeout(limit, probe.connection().closed())
        .await
        .is_ok()
}

/// Join connections that send nothing hold a slot only until the join deadline; past the
/// per-source cap and the total cap extra ones are refused at once, while a real join from
/// another address still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_join_connections_are_capped_and_closed_at_the_deadline() {
    let transport = TransportConfig {
        join_deadline: Duration::from_secs(2),
        join_connections_max: 5,
        join_connections_per_source_max: 3,
        ..TransportConfig::default()
    };
    let (node, out, _dir) = start(transport).await;
    let token = agent_token(&node, &out).await;

    // --- one source fills its share; its next connection is refused at once
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(idle(&node, &out, [127, 0, 0, 2]).await.unwrap());
    }
    let refused = idle(&node, &out, [127, 0, 0, 2]).await.unwrap_err();
    assert!(
        refused.to_string().contains("too many join connections"),
        "{refused}"
    );

    // --- a real join from another address is served meanwhile
    let joined = join(
        node.quic_addr(),
        &token,
        params("edge-1"),
        &TransportConfig::default(),
        &TransportMetrics::unregistered(),
    )
    .await
    .unwrap();
    assert!(joined.secret_key.is_some());

    // --- the total cap: two more sources fill it, a fourth is refused
    held.push(idle(&node, &out, [127, 0, 0, 3]).await.unwrap());
    held.push(idle(&node, &out, [127, 0, 0, 3]).await.unwrap());
    let refused = idle(&node, &out, [127, 0, 0, 4]).await.unwrap_err();
    assert!(refused.to_string().contains("retry later"), "{refused}");
    let metrics = node.transport_metrics();
    assert_eq!(metrics.handshake_failures("server", "join_busy_source"), 1);
    assert_eq!(metrics.handshake_failures("server", "join_busy"), 1);

    // --- every idle connection is closed at its deadline (2 s), keep-alives notwithstanding
    for probe in &held {
        assert!(
            closed_within(probe, Duration::from_secs(15)).await,
            "an idle join connection outlived its deadline"
        );
    }
    assert_eq!(metrics.join_requests("deadline"), 5);

    // --- the slots are free again
    let again = idle(&node, &out, [127, 0, 0, 2]).await.unwrap();
    drop(again);
    node.shutdown().await;
}

/// A burst of bad-token joins from one address: after the burst, that address is refused as
/// rate-limited without its token being checked, and the metric says so; another address is
/// not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_join_refusals_are_rate_limited_per_source() {
    let transport = TransportConfig {
        join_refusals_per_source_per_minute: 3,
        ..TransportConfig::default()
    };
    let (node, out, _dir) = start(transport).await;
    let token = agent_token(&node, &out).await;
    // Same cluster and id, wrong secret: a guess at the token.
    let id_end = token.rfind('-').unwrap();
    let bad = format!(
        "{}-{}",
        &token[..id_end],
        "A".repeat(token.len() - id_end - 1)
    );
    let metrics = node.transport_metrics();

    let mut reasons = Vec::new();
    for _ in 0..6 {
        let error = join(
            node.quic_addr(),
            &bad,
            params("guess"),
            &TransportConfig::default(),
            &TransportMetrics::unregistered(),
        )
        .await
        .unwrap_err();
        let JoinError::Refused(refusal) = error else {
            panic!("expected a refusal, got {error}");
        };
        reasons.push((refusal.reason, refusal.message));
    }
    for (reason, message) in &reasons[..3] {
        assert_ne!(*reason, JoinRefusalReason::Unavailable, "{message}");
    }
    for (reason, message) in &reasons[3..] {
        assert_eq!(*reason, JoinRefusalReason::Unavailable);
        assert!(
            message.contains("too many refused join attempts"),
            "{message}"
        );
    }
    assert_eq!(metrics.join_requests("rate_limited"), 3);
    let checked: u64 = ["bad_secret", "unknown", "malformed", "wrong_cluster"]
        .iter()
        .map(|label| metrics.join_requests(label))
        .sum();
    assert_eq!(checked, 3, "only the burst had its token checked");
    node.shutdown().await;
}
