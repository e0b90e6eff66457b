//! Control-plane membership on real parts (QUIC with mutual TLS, Raft on sled in temp dirs):
//! joins are serialised on the leader, a join that fails leaves nothing behind, a joiner that
//! goes silent is undone, and a removed node is told to stop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tracing::info;
use warren_api::clock::unix_now_ms;
use warren_api::{NodeId, NodeRole};
use warren_control::node::{ControlConfig, ControlNode, JoinHooks, JoinProgress, NewNode};
use warren_control::{Op, Outcome};
use warren_transport::join::JoinParams;
use warren_transport::token::{JoinToken, mint};
use warren_transport::{MintOptions, TransportMetrics};

fn init_logs() {
    warren_transport::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,membership=info,warren_control=info")
        .with_test_writer()
        .try_init();
}

/// Short timers, so that failures show within seconds.
fn config() -> ControlConfig {
    ControlConfig {
        write_timeout: Duration::from_secs(3),
        learner_catch_up: Duration::from_secs(3),
        join_abandoned_after: Duration::from_secs(2),
        ..ControlConfig::default()
    }
}

fn new_node(dir: &TempDir, name: &str) -> NewNode {
    NewNode::on_loopback(dir.path().join("node"), name, "central")
}

async fn control_token(first: &ControlNode, single_use: bool) -> JoinToken {
    let options = MintOptions {
        role: NodeRole::Control,
        ttl: Some(Duration::from_secs(600)),
        single_use,
    };
    let (token, record) = mint(first.control().fingerprint(), options, unix_now_ms());
    let added = first.control().propose(Op::AddToken(record)).await;
    assert!(
        matches!(added, Ok(Outcome { result: Ok(_), .. })),
        "{added:?}"
    );
    token
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (voters, learners) of the Raft membership as `node` knows it.
fn membership(node: &ControlNode) -> (Vec<u64>, Vec<u64>) {
    let metrics = node.control().raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    (
        membership.voter_ids().collect(),
        membership.learner_ids().collect(),
    )
}

/// What the first node's registry holds: (node names, unfinished joins, revoked serials).
async fn registry(first: &ControlNode) -> (Vec<String>, usize, Vec<String>) {
    let state = first.control().read_stale().await;
    (
        state.nodes.values().map(|n| n.name.clone()).collect(),
        state.pending_joins.len(),
        state.revoked_serials.iter().cloned().collect(),
    )
}

async fn token_used(first: &ControlNode, token: &JoinToken) -> bool {
    let state = first.control().read_stale().await;
    let record = state.tokens.get(token.id).expect("token record kept");
    record.used_at_ms.is_some()
}

/// A join whose advertised QUIC address reaches nothing cannot receive the log: the leader
/// gives it up after the catch-up timeout and leaves nothing behind — no learner, no node
/// entry, its certificate revoked, its single-use token usable again, nothing in its data
/// dir. A second join started meanwhile waits for the first (and says so), then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_that_cannot_receive_the_log_is_undone_while_another_waits() {
    init_logs();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (first, _) = ControlNode::init(new_node(&dirs[0], "c1"), config())
        .await
        .unwrap();
    let single = control_token(&first, true).await;
    let multi = control_token(&first, false).await;
    let join_addr = first.quic_addr();

    info!("--- c2 joins, advertising an address where nothing answers");
    // A socket that swallows datagrams: the leader's QUIC handshakes to it never complete.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut lost = new_node(&dirs[1], "c2");
    lost.advertise_quic = Some(sink.local_addr().unwrap().to_string());
    let lost_dir = lost.data_dir.clone();
    let lost_join = tokio::spawn({
        let token = single.to_string();
        async move { ControlNode::join(lost, join_addr, &token, config()).await }
    });
    wait_until("c2 to be a learner", Duration::from_secs(20), || async {
        !membership(&first).1.is_empty()
    })
    .await;

    info!("--- c3 joins while c2's change holds the leader");
    let seen = Arc::new(Mutex::new(Vec::<JoinProgress>::new()));
    let hooks = JoinHooks {
        progress: Some(Box::new({
            let seen = seen.clone();
            move |step: &JoinProgress| seen.lock().unwrap().push(step.clone())
        })),
        ..JoinHooks::default()
    };
    let token = multi.to_string();
    let c3 = ControlNode::join_with(new_node(&dirs[2], "c3"), join_addr, &token, config(), hooks)
        .await
        .expect("c3 joins once c2's change is over");
    let error = lost_join
        .await
        .unwrap()
        .expect_err("c2 cannot receive the log");
    let message = error.to_string();
    assert!(
        message.contains("could not copy the log to c2"),
        "{message}"
    );
    assert!(
        !message.contains("LogId") && !message.contains("Some("),
        "{message}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&JoinProgress::Waiting("adding c2 as a voter".into())),
        "{seen:?}"
    );

    info!("--- nothing of c2 is left");
    let (voters, learners) = membership(&first);
    assert_eq!(voters.len(), 2, "c1 and c3 vote");
    assert!(learners.is_empty(), "{learners:?}");
    let (names, pending, revoked) = registry(&first).await;
    assert_eq!(names.len(), 2);
    assert!(!names.contains(&"c2".to_owned()), "{names:?}");
    assert_eq!(pending, 0);
    assert_eq!(revoked.len(), 1, "c2's certificate is revoked");
    assert!(
        !token_used(&first, &single).await,
        "the token's use was given back"
    );
    assert!(!lost_dir.exists(), "the failed join removed its data dir");

    info!("--- c2 joins again with the same name and token");
    let again = ControlNode::join(
        new_node(&dirs[1], "c2"),
        join_addr,
        &single.to_string(),
        config(),
    )
    .await
    .expect("a second try succeeds");
    assert!(token_used(&first, &single).await);
    assert_eq!(membership(&first).0.len(), 3);
    drop(sink);
    for node in [again, c3, first] {
        node.shutdown().await;
    }
}

/// A joiner that redeems its token and dies before asking to become a member: the leader
/// undoes the join once it has been silent for `join_abandoned_after` — the node entry goes,
/// its certificate is revoked, the single-use token works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joiner_that_goes_silent_is_undone() {
    init_logs();
    let dirs: Vec<TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (first, _) = ControlNode::init(new_node(&dirs[0], "c1"), config())
        .await
        .unwrap();
    let single = control_token(&first, true).await;

    info!("--- c2 is admitted, then never asks to become a member");
    let params = JoinParams {
        role: NodeRole::Control,
        name: "c2".into(),
        site: "central".into(),
        labels: Default::default(),
        advertise: vec!["quic=127.0.0.1:9".into(), "api=127.0.0.1:9".into()],
    };
    let joined = warren_transport::join::join(
        first.quic_addr(),
        &single.to_string(),
        params,
        &Default::default(),
        &TransportMetrics::unregistered(),
    )
    .await
    .expect("the token admits c2");
    let serial = joined.credentials.identity().serial.clone();
    assert!(token_used(&first, &single).await);
    assert_eq!(registry(&first).await.1, 1, "an unfinished join");

    info!("--- the leader undoes it");
    wait_until(
        "c2's join to be undone",
        Duration::from_secs(20),
        || async { registry(&first).await.1 == 0 },
    )
    .await;
    let (names, _, revoked) = registry(&first).await;
    assert_eq!(names, vec!["c1".to_owned()]);
    assert_eq!(revoked, vec![serial]);
    assert!(!token_used(&first, &single).await);
    assert!(
        !first
            .control()
            .read_stale()
            .await
            .nodes
            .contains_key(&joined.node_id)
    );
    let (_, learners) = membership(&first);
    assert!(learners.is_empty());

    info!("--- the same name and token join for real");
    let c2 = ControlNode::join(
        new_node(&dirs[1], "c2"),
        first.quic_addr(),
        &single.to_string(),
        config(),
    )
    .await
    .expect("joins");
    // A finished join is never undone, however long it stays quiet.
    tokio::time::sleep(config().join_abandoned_after * 2).await;
    let state = first.control().read_stale().await;
    assert!(state.nodes.contains_key(&c2.settings().node_id));
    assert!(state.pending_joins.is_empty());
    drop(state);
    c2.shutdown().await;
    first.shutdown().await;
}

/// `node rm` of a control node, as the API does it: out of the membership, then removed from
/// the registry. The removed node learns it at once and says so through `removed()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_control_node_learns_it_was_removed() {
    init_logs();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (first, _) = ControlNode::init(new_node(&dirs[0], "c1"), config())
        .await
        .unwrap();
    let token = control_token(&first, false).await.to_string();
    let mut joined = Vec::new();
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let new = new_node(dir, &format!("c{}", i + 1));
        joined.push(
            ControlNode::join(new, first.quic_addr(), &token, config())
                .await
                .unwrap(),
        );
    }
    let c3 = joined.pop().unwrap();
    let c3_id = c3.settings().node_id;
    let removed = tokio::spawn(async move {
        let why = c3.removed().await;
        (why, c3)
    });

    info!("--- remove c3");
    first.control().remove_member(c3_id.0).await.unwrap();
    first
        .control()
        .propose(Op::RemoveNode(c3_id))
        .await
        .unwrap();
    let (why, c3) = tokio::time::timeout(Duration::from_secs(10), removed)
        .await
        .expect("c3 learns of its removal")
        .unwrap();
    assert!(
        why.contains("membership") || why.contains("revoked"),
        "{why}"
    );
    assert_eq!(membership(&first).0.len(), 2);
    assert_ne!(c3_id, NodeId(0));
    c3.shutdown().await;
    for node in joined {
        node.shutdown().await;
    }
    first.shutdown().await;
}

/// A control node removed while it was down learns it when it comes back: the others refuse
/// its certificate as revoked, and `removed()` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_node_removed_while_down_learns_it_when_restarted() {
    init_logs();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (first, _) = ControlNode::init(new_node(&dirs[0], "c1"), config())
        .await
        .unwrap();
    let token = control_token(&first, false).await.to_string();
    let mut joined = Vec::new();
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let new = new_node(dir, &format!("c{}", i + 1));
        joined.push(
            ControlNode::join(new, first.quic_addr(), &token, config())
                .await
                .unwrap(),
        );
    }
    let c3 = joined.pop().unwrap();
    let c3_id = c3.settings().node_id;
    let c3_dir = c3.data_dir().to_owned();

    info!("--- stop c3, remove it, start it again");
    c3.shutdown().await;
    first.control().remove_member(c3_id.0).await.unwrap();
    first
        .control()
        .propose(Op::RemoveNode(c3_id))
        .await
        .unwrap();
    let c3 = ControlNode::run(&c3_dir, config()).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(20), c3.removed())
        .await
        .expect("c3 learns of its removal once it calls an election");
    assert!(why.contains("revoked"), "{why}");
    c3.shutdown().await;
    for node in joined {
        node.shutdown().await;
    }
    first.shutdown().await;
}
