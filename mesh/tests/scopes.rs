//! Several meshes on one socket: a control node in every site's mesh on its one gossip port,
//! agents in their own site's mesh only.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{CLUSTER_ID, config, identity_signed_by};
use warren_api::{NodeId, NodeRole};
use warren_mesh::{
    DropReason, GossipFaultSwitch, GossipKey, KeyId, Keyring, Liveness, MemberConfig, Mesh,
    MeshMetrics, MeshStartError, MeshTimers, ScopeError,
};

/// A mesh node of `scope`, on its own socket, seeded with `seeds`.
async fn agent(id: u64, scope: &str, seeds: Vec<SocketAddr>, key: &GossipKey) -> Mesh {
    let mut config = config(
        NodeId(id),
        seeds,
        Keyring::new(key.clone()),
        MeshTimers::for_tests(),
        GossipFaultSwitch::default(),
    );
    config.member.site = scope.to_owned();
    config.member.scope = scope.to_owned();
    Mesh::start(config, MeshMetrics::unregistered())
        .await
        .expect("agent mesh starts")
}

/// The control node's membership of `scope`'s mesh on `on`'s socket.
async fn join(on: &Mesh, scope: &str) -> Result<Mesh, MeshStartError> {
    Mesh::start_on(
        on.socket(),
        MemberConfig {
            node_id: on.node_id(),
            name: "control".into(),
            role: NodeRole::Control,
            site: "centre".into(),
            scope: scope.into(),
            cluster_id: CLUSTER_ID.into(),
            advertise_addr: None,
            seeds: Vec::new(),
            identity: identity_signed_by(on.node_id()),
            timers: MeshTimers::for_tests(),
        },
    )
    .await
}

fn sees(mesh: &Mesh, id: u64) -> bool {
    mesh.watch()
        .borrow()
        .iter()
        .any(|m| m.node_id == NodeId(id) && m.liveness == Liveness::Alive)
}

fn knows(mesh: &Mesh, id: u64) -> bool {
    mesh.watch()
        .borrow()
        .iter()
        .any(|m| m.node_id == NodeId(id))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_gossip_apart_and_the_control_node_is_in_each() {
    let key = GossipKey::generate(KeyId(1));
    let control = Mesh::start(
        config(
            NodeId(1),
            Vec::new(),
            Keyring::new(key.clone()),
            MeshTimers::for_tests(),
            GossipFaultSwitch::default(),
        ),
        MeshMetrics::unregistered(),
    )
    .await
    .expect("control mesh starts");
    let site_a = join(&control, "a").await.expect("joins a");
    let site_b = join(&control, "b").await.expect("joins b");
    assert!(matches!(
        join(&control, "a").await,
        Err(MeshStartError::Scope(ScopeError::Taken(_)))
    ));
    assert_eq!(control.socket().scopes(), ["", "a", "b"]);
    let gossip = control.local_addr();
    assert_eq!(site_a.local_addr(), gossip, "one port for every mesh");

    // Agents seed only with the control node; each finds its own site's others through it.
    let a2 = agent(2, "a", vec![gossip], &key).await;
    let a4 = agent(4, "a", vec![gossip], &key).await;
    let b3 = agent(3, "b", vec![gossip], &key).await;
    wait_for(
        "site a's agents see each other and the control node",
        || sees(&a2, 4) && sees(&a4, 2) && sees(&a2, 1) && sees(&a4, 1),
    )
    .await;
    wait_for("site b's agent sees the control node", || sees(&b3, 1)).await;
    wait_for("the control node's site meshes see their agents", || {
        sees(&site_a, 2) && sees(&site_a, 4) && sees(&site_b, 3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !knows(&a2, 3) && !knows(&b3, 2) && !knows(&b3, 4),
        "sites do not learn each other's members"
    );
    assert!(!knows(&site_a, 3) && !knows(&site_b, 2));
    assert!(
        !knows(&control, 2) && !knows(&control, 3),
        "the unnamed mesh holds the control node only"
    );

    // A site the control node is not in: its datagrams are dropped, counted.
    let stray = agent(6, "c", vec![gossip], &key).await;
    let dropped = || {
        control
            .metrics()
            .datagrams_dropped_total
            .with_label_values(&[DropReason::UnknownScope.label()])
            .get()
    };
    wait_for("datagrams of an unknown scope are counted", || {
        dropped() > 0
    })
    .await;
    assert!(!knows(&stray, 1));

    // Leaving a site's mesh leaves the socket to the others.
    site_b.shutdown().await;
    assert_eq!(control.socket().scopes(), ["", "a"]);
    let before = dropped();
    wait_for("site b's datagrams are now of an unknown scope", || {
        dropped() > before + 2
    })
    .await;
    assert!(sees(&site_a, 2), "site a goes on");

    for mesh in [a2, a4, b3, stray, site_a] {
        mesh.shutdown().await;
    }
    control.shutdown().await;
    // The socket closed with its last mesh: the port is free again.
    tokio::net::UdpSocket::bind(gossip)
        .await
        .expect("the gossip port is free after shutdown");
}
