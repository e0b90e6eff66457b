//! An agent's link to a real control node: views arrive persisted, the link survives the
//! control node going away and coming back, and removal ends it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warren_api::{NodeRole, NodeView, ServiceName};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_edge_agent::cache::{Cache, CacheIdentity, CacheTuning};
use warren_edge_agent::link::{Link, LinkEnd, LinkStatus};
use warren_edge_agent::metrics::AgentMetrics;
use warren_edge_agent::report::Reporter;
use warren_transport::join::{JoinParams, join};
use warren_transport::node_metrics::NodeLabels;
use warren_transport::{Endpoint, EndpointOptions};

async fn wait_view(
    views: &mut watch::Receiver<Option<Arc<NodeView>>>,
    cond: impl Fn(&NodeView) -> bool,
) -> Arc<NodeView> {
    let found = tokio::time::timeout(
        Duration::from_secs(15),
        views.wait_for(|v| v.as_deref().is_some_and(&cond)),
    )
    .await
    .expect("view within 15 s")
    .expect("link alive");
    found.clone().expect("checked above")
}

/// Snapshot → persisted → control restarts → deltas resume → removal ends the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_link_follows_control_through_a_restart() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = warren_tests::start_control(dir.path()).await;
    let token = warren_tests::agent_token(&control, fingerprint).await;
    let params = JoinParams {
        role: NodeRole::Agent,
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
    warren_tests::propose(&control, Op::PutService(warren_tests::sleep_service(1))).await;

    let cache = Arc::new(Cache::open(&dir.path().join("agent"), CacheTuning::default()).unwrap());
    cache
        .claim(CacheIdentity {
            cluster_id: fingerprint,
            node_id: joined.node_id,
        })
        .await
        .unwrap();
    let endpoint = Arc::new(
        Endpoint::client(
            "127.0.0.1:0".parse().unwrap(),
            &joined.credentials,
            EndpointOptions::default(),
        )
        .unwrap(),
    );
    let (views_tx, mut views) = watch::channel(None);
    let (status_tx, status) = watch::channel(LinkStatus::default());
    let link = Link {
        endpoint,
        node_id: joined.node_id,
        cache: cache.clone(),
        seeds: vec![control.quic_addr().to_string()],
        views: views_tx,
        status: status_tx,
        reporter: Arc::new(Reporter::open(joined.node_id, cache.clone())),
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
    let link_task = tokio::spawn(link.run(cancel.clone()));

    let first = wait_view(&mut views, |v| v.replicas.len() == 1).await;
    assert_eq!(
        cache.view().unwrap().unwrap().revision,
        first.revision,
        "persisted before it is seen"
    );

    // Control goes away; the link notices and keeps the cached view.
    let data_dir = control.data_dir().to_owned();
    control.shutdown().await;
    let mut status_rx = status.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        status_rx.wait_for(|s| !s.connected),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(views.borrow().as_ref().unwrap().revision, first.revision);

    // Control comes back; the link reconnects and follows new changes.
    let control = ControlNode::run(&data_dir, ControlConfig::default())
        .await
        .unwrap();
    control
        .control()
        .propose(Op::ScaleService {
            name: ServiceName::new("web").unwrap(),
            replicas: 2,
        })
        .await
        .unwrap();
    let second = wait_view(&mut views, |v| v.replicas.len() == 2).await;
    assert!(second.revision > first.revision);
    assert!(status.borrow().connects >= 2);

    control
        .control()
        .propose(Op::RemoveNode(joined.node_id))
        .await
        .unwrap()
        .result
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(15), link_task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(end, LinkEnd::Removed(_)), "{end:?}");
    control.shutdown().await;
}
