//! Agents stay attached while control membership changes. A view is a function of the applied
//! state at its revision; its control addresses used to be read from Raft's metrics, which show
//! a membership as soon as it is appended, so a control node joining could make the push send
//! a delta "from revision 304 to 304" that agents refused, dropping their links.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;
use warren_api::NodeView;
use warren_control::RaftMember;
use warren_control::node::{ControlConfig, ControlNode};
use warren_edge_agent::cache::{Cache, CacheIdentity, CacheTuning};
use warren_edge_agent::link::{Link, LinkEnd, LinkStatus};
use warren_edge_agent::metrics::AgentMetrics;
use warren_edge_agent::report::Reporter;
use warren_tests::{
    agent_status, join_agent, join_control, spawn_agent, start_control, wait_until,
};
use warren_transport::join::{JoinParams, join};
use warren_transport::node_metrics::NodeLabels;
use warren_transport::{Endpoint, EndpointOptions};

const LONG: Duration = Duration::from_secs(60);

/// Six agents stream from c1 while c2 and c3 join: every agent learns the three control
/// addresses through deltas, and none of their links drops or fails on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_keep_their_links_while_control_nodes_join() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (c1, fingerprint) = start_control(dir.path()).await;
    let mut agents = Vec::new();
    for i in 0..6 {
        let agent_dir = dir.path().join(format!("agent-{i}"));
        join_agent(&c1, fingerprint, &agent_dir, &format!("edge-{i}"), "lisbon").await;
        let (cancel, task) = spawn_agent(&agent_dir);
        agents.push((agent_dir, cancel, task));
    }
    for (agent_dir, _, _) in &agents {
        wait_until("the agent connected", LONG, || {
            agent_status(agent_dir).filter(|s| s.link.connected && s.revision > 0)
        })
        .await;
    }

    info!("--- c2 and c3 join while the agents stream");
    let c2 = join_control(&c1, fingerprint, dir.path(), "c2").await;
    let c3 = join_control(&c1, fingerprint, dir.path(), "c3").await;
    for (agent_dir, _, _) in &agents {
        let status = wait_until("three control addresses", LONG, || {
            agent_status(agent_dir).filter(|s| s.link.control_addrs.len() >= 3)
        })
        .await;
        assert!(status.link.connected, "{:?}", status.link);
        assert_eq!(
            (status.link.connects, status.link.failures),
            (1, 0),
            "the link never dropped: {:?}",
            status.link
        );
    }

    for (_, cancel, task) in agents {
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
    for node in [c3, c2, c1] {
        node.shutdown().await;
    }
}

/// The window made wide open: with c2 down, c1 (the leader) appends a membership change that
/// cannot commit. An agent's link to c1 sees heartbeats for more than a heartbeat interval
/// after that and nothing else — no delta at the same revision, no reconnect. Once c2 is back
/// the change commits and arrives as a delta that moves the view forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_change_not_yet_applied_sends_agents_nothing() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (c1, fingerprint) = start_control(dir.path()).await;
    let c2 = join_control(&c1, fingerprint, dir.path(), "c2").await;
    let (link_task, mut views, status, cancel) = start_link(&c1, fingerprint, dir.path()).await;
    let first = wait_view(&mut views, |v| v.control_addrs.len() == 2).await;

    info!("--- c2 down; c1 appends a learner it cannot commit");
    let c2_dir = c2.data_dir().to_owned();
    c2.shutdown().await;
    let raft = c1.control().raft().clone();
    let learner = RaftMember {
        quic_addr: "127.0.0.1:1".into(),
        api_addr: "127.0.0.1:1".into(),
        name: "c9".into(),
    };
    let add_learner = tokio::spawn(async move { raft.add_learner(9, learner, false).await });
    wait_until("the learner appended on c1", LONG, || {
        let metrics = c1.control().raft().metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&9)
            .map(|_| ())
    })
    .await;
    let appended_ms = warren_api::clock::unix_now_ms();
    assert_eq!(c1.control().control_addrs().await.len(), 2, "not applied");
    // A message more than one heartbeat interval after the append means the push loop has
    // rebuilt the view at least once since: had it picked the appended membership up, the
    // agent would have refused a delta to the same revision and reconnected.
    let heartbeat_ms = warren_api::wire::HEARTBEAT_INTERVAL.as_millis() as u64;
    let mut watch_status = status.clone();
    tokio::time::timeout(
        LONG,
        watch_status.wait_for(|s| {
            s.last_contact_ms
                .is_some_and(|at| at > appended_ms + heartbeat_ms + 500)
        }),
    )
    .await
    .expect("heartbeats keep coming")
    .unwrap();
    let link = status.borrow().clone();
    assert_eq!(
        (link.connected, link.connects, link.failures),
        (true, 1, 0),
        "{link:?}"
    );
    assert_eq!(views.borrow().as_ref().unwrap().revision, first.revision);

    info!("--- c2 back: the change commits and reaches the agent");
    let c2 = ControlNode::run(&c2_dir, ControlConfig::default())
        .await
        .unwrap();
    let third = wait_view(&mut views, |v| v.control_addrs.len() == 3).await;
    assert!(third.revision > first.revision);
    assert!(third.control_addrs.contains(&"127.0.0.1:1".to_owned()));
    let link = status.borrow().clone();
    assert_eq!((link.connects, link.failures), (1, 0), "{link:?}");

    cancel.cancel();
    assert_eq!(link_task.await.unwrap(), LinkEnd::Cancelled);
    add_learner.abort();
    c2.shutdown().await;
    c1.shutdown().await;
}

type Views = watch::Receiver<Option<Arc<NodeView>>>;

/// A joined agent's link (no reconcile loop) to `control` alone.
async fn start_link(
    control: &ControlNode,
    fingerprint: [u8; 32],
    dir: &std::path::Path,
) -> (
    tokio::task::JoinHandle<LinkEnd>,
    Views,
    watch::Receiver<LinkStatus>,
    CancellationToken,
) {
    let token = warren_tests::agent_token(control, fingerprint).await;
    let params = JoinParams {
        role: warren_api::NodeRole::Agent,
        name: "edge-1".into(),
        site: "lisbon".into(),
        labels: Default::default(),
        advertise: vec![],
    };
    let joined = join(
        control.quic_addr(),
        &token,
        params,
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let cache = Arc::new(Cache::open(&dir.join("agent"), CacheTuning::default()).unwrap());
    cache
        .claim(CacheIdentity {
            cluster_id: fingerprint,
            node_id: joined.node_id,
        })
        .await
        .unwrap();
    let endpoint = Endpoint::client(
        "127.0.0.1:0".parse().unwrap(),
        &joined.credentials,
        EndpointOptions::default(),
    )
    .unwrap();
    let (views_tx, views) = watch::channel(None);
    let (status_tx, status) = watch::channel(LinkStatus::default());
    let link = Link {
        endpoint: Arc::new(endpoint),
        node_id: joined.node_id,
        cache: cache.clone(),
        seeds: vec![control.quic_addr().to_string()],
        views: views_tx,
        status: status_tx,
        reporter: Arc::new(Reporter::open(joined.node_id, cache)),
        failures_total: AgentMetrics::new(&NodeLabels {
            name: "edge-1".into(),
            node_id: joined.node_id,
            site: "lisbon".into(),
        })
        .link_failures_total
        .clone(),
        // No mesh: the link falls back on its silence limit alone.
        gossip: watch::channel(Vec::new()).1,
        mesh: watch::channel(None).1,
        overlay: watch::channel(Default::default()).1,
        logs: Default::default(),
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(link.run(cancel.clone()));
    (task, views, status, cancel)
}

async fn wait_view(views: &mut Views, cond: impl Fn(&NodeView) -> bool) -> Arc<NodeView> {
    let found = tokio::time::timeout(LONG, views.wait_for(|v| v.as_deref().is_some_and(&cond)))
        .await
        .expect("the view within the timeout")
        .expect("link alive");
    found.clone().expect("checked above")
}
