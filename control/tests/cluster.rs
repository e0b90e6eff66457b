//! In-process control clusters on loopback: real QUIC with mutual TLS between nodes, real
//! Raft on sled in temp dirs.

mod common;

use std::time::{Duration, Instant};

use tempfile::TempDir;
use tracing::info;
use warren_api::Revision;
use warren_api::clock::unix_now_ms;
use warren_api::wire::{AgentHello, ControlToAgent, RefusalReason, WIRE_VERSION};
use warren_api::{NodeRole, ProcessSpec, ServiceMode, ServiceName, ServiceSpec, Workload};
use warren_control::node::{ControlConfig, ControlNode, NewNode};
use warren_control::rpc::ProposeError;
use warren_control::{Effect, Op};
use warren_transport::join::Joined;
use warren_transport::token::mint;
use warren_transport::{Endpoint, FramedRecv, FramedSend, MintOptions};

fn init_logs() {
    warren_transport::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,cluster=info")
        .with_test_writer()
        .try_init();
}

fn config() -> ControlConfig {
    ControlConfig {
        write_timeout: Duration::from_secs(3),
        ..ControlConfig::default()
    }
}

fn new_node(dir: &TempDir, name: &str) -> NewNode {
    NewNode::on_loopback(dir.path().to_owned(), name, "central")
}

fn spec(name: &str, replicas: u32) -> ServiceSpec {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "1000".into()],
        working_dir: None,
    });
    let mut spec = ServiceSpec::new(ServiceName::new(name).unwrap(), workload);
    spec.mode = ServiceMode::Replicated { replicas };
    spec
}

/// A 3-node cluster: c1 inits, c2 and c3 join with a control token.
struct Cluster {
    nodes: Vec<Option<ControlNode>>,
    dirs: Vec<TempDir>,
}

impl Cluster {
    async fn start(size: usize) -> Self {
        let dirs: Vec<TempDir> = (0..size).map(|_| tempfile::tempdir().unwrap()).collect();
        let (first, out) = ControlNode::init(new_node(&dirs[0], "c1"), config())
            .await
            .unwrap();
        let (token, record) = mint(
            out.fingerprint,
            MintOptions {
                role: NodeRole::Control,
                ttl: Some(Duration::from_secs(600)),
                single_use: false,
            },
            unix_now_ms(),
        );
        first
            .control()
            .propose(Op::AddToken(record))
            .await
            .unwrap()
            .result
            .unwrap();
        let join_addr = first.quic_addr();
        let mut nodes = vec![Some(first)];
        for (i, dir) in dirs.iter().enumerate().skip(1) {
            let name = format!("c{}", i + 1);
            let node = ControlNode::join(
                new_node(dir, &name),
                join_addr,
                &token.to_string(),
                config(),
            )
            .await
            .unwrap();
            nodes.push(Some(node));
        }
        Self { nodes, dirs }
    }

    fn node(&self, i: usize) -> &ControlNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn leader_index(&self) -> Option<usize> {
        let leader = self
            .nodes
            .iter()
            .flatten()
            .find_map(|n| n.control().leader())?
            .0;
        self.nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.control().id() == leader))
    }

    async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_index()
                && self
                    .nodes
                    .iter()
                    .flatten()
                    .all(|n| n.control().leader().map(|l| l.0) == Some(self.node(i).control().id()))
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self, i: usize) {
        info!("--- kill c{}", i + 1);
        self.nodes[i].take().expect("running").shutdown().await;
    }

    async fn restart(&mut self, i: usize) {
        info!("--- restart c{}", i + 1);
        let node = ControlNode::run(self.dirs[i].path(), config())
            .await
            .unwrap();
        self.nodes[i] = Some(node);
    }

    async fn put(&self, via: usize, name: &str) -> Result<Effect, String> {
        match self
            .node(via)
            .control()
            .propose(Op::PutService(spec(name, 1)))
            .await
        {
            Ok(outcome) => outcome.result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                self.kill(i).await;
            }
        }
    }
}

async fn has_service(node: &ControlNode, name: &str) -> bool {
    node.control()
        .read_stale()
        .await
        .services
        .contains_key(name)
}

async fn wait_service(node: &ControlNode, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if has_service(node, name).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Writes go through any node; linearizable reads on any node see them; a killed leader is
/// replaced and writes resume; the killed node restarts from its data dir and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_leader_loss_and_restart() {
    init_logs();
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    info!("--- write through every node");
    for via in 0..3 {
        let created = cluster.put(via, &format!("svc-{via}")).await.unwrap();
        assert!(
            matches!(created, Effect::Service { created: true, .. }),
            "{created:?}"
        );
    }
    for i in 0..3 {
        let state = cluster.node(i).control().read_linearizable().await.unwrap();
        assert!((0..3).all(|v| state.services.contains_key(format!("svc-{v}").as_str())));
    }

    info!("--- kill the leader");
    let killed_at = Instant::now();
    cluster.kill(leader).await;
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match cluster.put(survivor, "after-failover").await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    killed_at.elapsed() < Duration::from_secs(20),
                    "no write after failover: {e}"
                );
                info!(attempts, error = %e, "write during failover refused");
            }
        }
    }
    info!(
        elapsed_ms = killed_at.elapsed().as_millis() as u64,
        attempts, "--- first write after leader kill"
    );
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);

    cluster.restart(leader).await;
    assert!(
        wait_service(
            cluster.node(leader),
            "after-failover",
            Duration::from_secs(15)
        )
        .await,
        "restarted node did not catch up"
    );
    cluster.shutdown().await;
}

/// A node cut off from the majority answers writes with "no quorum" within the write timeout
/// instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_node_refuses_writes_quickly() {
    init_logs();
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // Keep the leader alone: it loses quorum. Then check a follower alone too.
    for &i in &others {
        cluster.kill(i).await;
    }
    let started = Instant::now();
    let result = cluster
        .node(leader)
        .control()
        .propose(Op::PutService(spec("lonely", 1)))
        .await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(ProposeError::NoQuorum(_))),
        "{result:?}"
    );
    assert!(
        took <= config().write_timeout + Duration::from_secs(1),
        "took {took:?}"
    );
    info!(
        took_ms = took.as_millis() as u64,
        "--- minority leader refused the write"
    );
    let read_refused = matches!(
        cluster.node(leader).control().read_linearizable().await,
        Err(ProposeError::NoQuorum(_))
    );
    assert!(
        read_refused,
        "linearizable read must not succeed without quorum"
    );
    cluster.shutdown().await;
}

/// A write acknowledged to the client survives killing every node and restarting them all from
/// their data dirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_write_survives_full_cluster_restart() {
    init_logs();
    let mut cluster = Cluster::start(3).await;
    cluster.wait_leader(Duration::from_secs(10)).await;
    for n in 0..20 {
        cluster.put(n % 3, &format!("durable-{n}")).await.unwrap();
    }
    for i in 0..3 {
        cluster.kill(i).await;
    }
    info!("--- every node killed; restart all");
    for i in 0..3 {
        cluster.restart(i).await;
    }
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let state = cluster
        .node(leader)
        .control()
        .read_linearizable()
        .await
        .unwrap();
    for n in 0..20 {
        assert!(
            state.services.contains_key(format!("durable-{n}").as_str()),
            "durable-{n} lost"
        );
    }
    drop(state);
    cluster.shutdown().await;
}

/// A control node removed from the membership no longer counts toward quorum: after removing
/// and stopping it, the remaining two keep accepting writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_control_node_leaves_the_quorum() {
    init_logs();
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = cluster.node(victim).control().id();
    info!("--- remove c{} from the membership", victim + 1);
    cluster
        .node(leader)
        .control()
        .remove_member(victim_id)
        .await
        .unwrap();
    cluster
        .node(leader)
        .control()
        .propose(Op::RemoveNode(warren_api::NodeId(victim_id)))
        .await
        .unwrap()
        .result
        .unwrap();
    cluster.kill(victim).await;
    let voters: Vec<u64> = cluster
        .node(leader)
        .control()
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters.len(), 2);
    let other = (0..3).find(|&i| i != leader && i != victim).unwrap();
    cluster.put(other, "after-removal").await.unwrap();
    let state = cluster
        .node(leader)
        .control()
        .read_linearizable()
        .await
        .unwrap();
    assert!(
        state.revoked_serials.len() == 1,
        "removed node's certificate is revoked"
    );
    drop(state);
    cluster.shutdown().await;
}

/// Two control nodes with gossip on: the joiner advertises its gossip address in the registry,
/// seeds from the state, and both meshes see each other alive; `run` starts the mesh again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_nodes_gossip_with_each_other() {
    init_logs();
    let gossiping = |dir: &TempDir, name: &str| NewNode {
        gossip_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..new_node(dir, name)
    };
    let config = || ControlConfig {
        mesh_timers: warren_mesh::MeshTimers::for_tests(),
        ..config()
    };
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (c1, out) = ControlNode::init(gossiping(&dir1, "c1"), config())
        .await
        .unwrap();
    let (token, record) = mint(
        out.fingerprint,
        MintOptions {
            role: NodeRole::Control,
            ttl: Some(Duration::from_secs(600)),
            single_use: true,
        },
        unix_now_ms(),
    );
    c1.control()
        .propose(Op::AddToken(record))
        .await
        .unwrap()
        .result
        .unwrap();
    let c2 = ControlNode::join(
        gossiping(&dir2, "c2"),
        c1.quic_addr(),
        &token.to_string(),
        config(),
    )
    .await
    .unwrap();
    let c2_id = c2.settings().node_id;
    let c2_gossip = c2.gossip_addr().expect("c2 runs a mesh");
    let registered = c1.control().read_stale().await.nodes[&c2_id]
        .addresses
        .gossip
        .clone();
    assert_eq!(registered, Some(c2_gossip.to_string()));

    let sees_alive = |node: &ControlNode, id| {
        node.control().gossip_members().is_some_and(|members| {
            members
                .iter()
                .any(|m| m.node_id == id && m.liveness == warren_mesh::Liveness::Alive)
        })
    };
    let c1_id = c1.settings().node_id;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(sees_alive(&c1, c2_id) && sees_alive(&c2, c1_id)) {
        assert!(
            Instant::now() < deadline,
            "control nodes never saw each other by gossip"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each publishes its QUIC and API endpoints as hints.
    let c2_member = || {
        c1.control()
            .gossip_members()
            .and_then(|members| members.into_iter().find(|m| m.node_id == c2_id))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let c2_seen_by_c1 = loop {
        match c2_member() {
            Some(member) if member.endpoints.contains_key("quic") => break member,
            other => assert!(
                Instant::now() < deadline,
                "c2's endpoints never reached c1: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        c2_seen_by_c1.endpoints.get("quic"),
        Some(&c2.settings().advertise_quic),
        "{c2_seen_by_c1:?}"
    );
    assert!(c2_seen_by_c1.endpoints.contains_key("api"));

    info!("--- c2 restarts from its data dir");
    c2.shutdown().await;
    let c2 = ControlNode::run(dir2.path(), config()).await.unwrap();
    assert_eq!(
        c2.gossip_addr(),
        Some(c2_gossip),
        "run binds the recorded address"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sees_alive(&c2, c1_id) {
        assert!(
            Instant::now() < deadline,
            "restarted c2 never saw c1 by gossip"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c2.shutdown().await;
    c1.shutdown().await;
}

/// A control node's data dir (the cluster key, its TLS key, the replicated state) is readable
/// by its owner only: `init` makes it 0700 even when it already existed with the usual 0755,
/// and `run` tightens one that was widened since (a dir made by an older build).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    init_logs();
    let mode = |dir: &TempDir| {
        std::fs::metadata(dir.path())
            .expect("stat the data dir")
            .permissions()
            .mode()
            & 0o777
    };
    let widen = |dir: &TempDir| {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 0755")
    };
    let dir = tempfile::tempdir().expect("temp dir");
    widen(&dir);
    let (node, _out) = ControlNode::init(new_node(&dir, "c1"), config())
        .await
        .expect("init");
    assert_eq!(mode(&dir), 0o700, "init");
    node.shutdown().await;
    widen(&dir);
    let node = ControlNode::run(dir.path(), config()).await.expect("run");
    assert_eq!(mode(&dir), 0o700, "run");
    node.shutdown().await;
}

/// An agent's push session as a test drives it: what must live for the stream to stay open.
struct AgentSession {
    _endpoint: Endpoint,
    _send: FramedSend,
    recv: FramedRecv,
}

/// Opens the agent's push stream to `node` with an empty cache; returns the first message
/// that is not a heartbeat.
async fn agent_session(node: &ControlNode, joined: &Joined) -> (AgentSession, ControlToAgent) {
    let hello = AgentHello {
        wire_version: WIRE_VERSION,
        node_id: joined.node_id,
        last_revision: Revision::ZERO,
        cache_cluster_id: None,
        agent_version: "test".into(),
        have: None,
    };
    let (endpoint, send, mut recv) = common::open_push(node, joined, hello).await;
    let first = next_message(&mut recv).await;
    let session = AgentSession {
        _endpoint: endpoint,
        _send: send,
        recv,
    };
    (session, first)
}

/// The next message that is not a heartbeat, within 20 s.
async fn next_message(recv: &mut FramedRecv) -> ControlToAgent {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), recv.recv::<ControlToAgent>())
            .await
            .expect("a message from control within 20 s")
            .expect("the stream stays readable");
        if !matches!(message, ControlToAgent::Heartbeat { .. }) {
            return message;
        }
    }
}

/// A control node cut off from the majority sends its agents to the other control nodes,
/// where the state moves on; an agent that comes back (it found no better node) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_the_majority_sends_its_agents_elsewhere() {
    init_logs();
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let joined = common::join_agent(cluster.node(leader)).await;
    // A follower ends up alone: the leader and the third node go.
    let lonely = (leader + 1) % 3;
    // The join is applied on the leader; the follower learns the agent's certificate when it
    // applies the same entry, and refuses the agent until then.
    let joined_at = cluster.node(leader).control().applied();
    let mut applied = cluster.node(lonely).control().watch_applied();
    tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|revision| *revision >= joined_at),
    )
    .await
    .expect("the follower applies the join within 10 s")
    .expect("the follower is running");
    let (mut session, first) = agent_session(cluster.node(lonely), &joined).await;
    assert!(matches!(first, ControlToAgent::Snapshot(_)), "{first:?}");
    for i in (0..3).filter(|&i| i != lonely) {
        cluster.kill(i).await;
    }
    let cut_at = Instant::now();
    let ControlToAgent::Refused(refusal) = next_message(&mut session.recv).await else {
        panic!("expected the agent to be sent elsewhere")
    };
    assert!(
        matches!(refusal.reason, RefusalReason::Overloaded { retry_after_ms } if retry_after_ms <= 2_000),
        "{refusal:?}"
    );
    assert!(refusal.message.contains("majority"), "{}", refusal.message);
    info!(
        after_ms = cut_at.elapsed().as_millis() as u64,
        "--- agent sent elsewhere"
    );

    // Nowhere else answers: it comes back, and is kept.
    let (_session, again) = agent_session(cluster.node(lonely), &joined).await;
    assert!(matches!(again, ControlToAgent::Snapshot(_)), "{again:?}");
    let sent = cluster
        .node(lonely)
        .control()
        .metrics()
        .agents_sent_elsewhere_total
        .with_label_values(&["no_quorum"])
        .get();
    assert_eq!(sent, 1);
    cluster.shutdown().await;
}
