//! Discovery at the edge, in process: two agents that registered gossip addresses at join find
//! each other by gossip (sealed with the key control put in their views), and each serves DNS
//! for the cluster's services from its cached view. When one agent goes away, gossip marks it
//! dead and the other agent's DNS stops answering with its replica. When the cluster key
//! rotates, both agents move their mesh to the new gossip key from their views.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tracing::info;
use warren_control::Op;
use warren_edge_agent::agent::{AgentOptions, JoinAdvertise, JoinRequest, load_status};
use warren_edge_agent::discovery::DiscoveryOptions;
use warren_edge_agent::dns::{DnsConfig, Upstreams};
use warren_mesh::MeshTimers;
use warren_tests::{
    agent_options, agent_token, kill9, propose, running_pids, sleep_service, spawn_agent_with,
    start_control, wait_until,
};

const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A free UDP port on `ip` (bound, then released for the agent to take).
fn free_udp_port(ip: &str) -> SocketAddr {
    let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind a probe socket");
    socket.local_addr().expect("probe address")
}

fn discovering(gossip: SocketAddr) -> AgentOptions {
    AgentOptions {
        discovery: DiscoveryOptions {
            gossip_listen: Some(gossip),
            gossip_advertise: None,
            dns: Some(DnsConfig {
                listen: "127.0.0.1:0".parse().expect("literal"),
                upstreams: Upstreams::List(Vec::new()),
                ..DnsConfig::default()
            }),
            mesh_timers: MeshTimers::for_tests(),
        },
        ..agent_options()
    }
}

/// A running agent: its data dir, its stop switch, its task.
type RunningAgent = (
    PathBuf,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<
        Result<warren_edge_agent::agent::RunEnd, warren_edge_agent::agent::AgentError>,
    >,
);

/// Joins agent `name` of `site` to `control`, gossiping on its own `ip`, and runs it.
async fn join_discovering(
    control: &warren_control::node::ControlNode,
    fingerprint: [u8; 32],
    dir: &Path,
    (name, site): (&str, &str),
    ip: &str,
) -> RunningAgent {
    let agent_dir = dir.join(name);
    let gossip = free_udp_port(ip);
    let token = agent_token(control, fingerprint).await;
    let request = JoinRequest {
        control_addrs: vec![control.quic_addr().to_string()],
        token,
        name: name.into(),
        site: site.into(),
        advertise: JoinAdvertise {
            gossip: Some(gossip),
            ..JoinAdvertise::default()
        },
        ..JoinRequest::default()
    };
    warren_edge_agent::agent::join(&agent_dir, request)
        .await
        .expect("agent joins");
    let (cancel, task) = spawn_agent_with(&agent_dir, discovering(gossip));
    (agent_dir, cancel, task)
}

/// One A query over UDP; the sorted addresses, or the response code when it is not NOERROR.
async fn resolve(dns: SocketAddr, name: &str) -> Result<Vec<IpAddr>, ResponseCode> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_str(name).expect("a name"),
        RecordType::A,
    ));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("client socket");
    socket
        .send_to(&query.to_vec().expect("encode"), dns)
        .await
        .expect("send");
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer))
        .await
        .expect("an answer within 2 s")
        .expect("recv");
    let reply = Message::from_vec(&buffer[..n]).expect("a DNS message");
    if reply.metadata.response_code != ResponseCode::NoError {
        return Err(reply.metadata.response_code);
    }
    let mut addresses: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    addresses.sort();
    Ok(addresses)
}

/// [`resolve`] from a synchronous condition (`wait_until`'s): on a helper thread with a
/// runtime of its own.
fn resolve_blocking(dns: SocketAddr, name: &str) -> Result<Vec<IpAddr>, ResponseCode> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(resolve(dns, name))
            })
            .join()
            .expect("query thread")
    })
}

fn dns_addr(dir: &Path) -> Option<SocketAddr> {
    load_status(dir).ok()?.discovery.dns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_gossip_and_answer_dns_and_a_gone_agent_leaves_the_answers() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let mut agents = Vec::new();
    for (name, ip) in [("edge-a", "127.0.0.2"), ("edge-b", "127.0.0.3")] {
        agents
            .push(join_discovering(&control, fingerprint, dir.path(), (name, "lisbon"), ip).await);
    }
    propose(&control, Op::PutService(sleep_service(2))).await;
    let dns = wait_until("edge-a serves DNS", STEP_TIMEOUT, || dns_addr(&agents[0].0)).await;
    let both: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|a| a.parse().expect("literal"))
        .collect();
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        // Until gossip has seen edge-b, its replica is "unknown" and only served when no
        // alive one is; once both are alive both are served.
        if resolve(dns, "web.warren.").await == Ok(both.clone()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "web.warren never resolved to both agents: {:?}",
            resolve(dns, "web.warren.").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    info!("web.warren. resolves to both agents");
    assert_eq!(
        resolve(dns, "nosuch.warren.").await,
        Err(ResponseCode::NXDomain)
    );
    let status = load_status(&agents[0].0).expect("status");
    assert!(status.discovery.gossip.is_some(), "{status:?}");
    assert_eq!(status.discovery.gossip_key, Some(1), "{status:?}");

    info!("--- the cluster key rotates: both agents move to gossip key 2 and still answer");
    let generation = control
        .control()
        .rotate_cluster_key("the test asks")
        .await
        .expect("rotated");
    assert_eq!(generation, 2);
    for (agent_dir, _, _) in &agents {
        wait_until("the agent gossips with key 2", STEP_TIMEOUT, || {
            let status = load_status(agent_dir).ok()?;
            (status.discovery.gossip_key == Some(2)).then_some(())
        })
        .await;
    }
    assert_eq!(resolve(dns, "web.warren.").await, Ok(both.clone()));

    // Workloads outlive their agents: remember them to clean up at the end.
    let workloads: Vec<u32> = agents
        .iter()
        .filter_map(|(dir, _, _)| load_status(dir).ok())
        .flat_map(|s| running_pids(&s))
        .collect();

    info!("--- edge-b stops: gossip marks it dead, edge-a's DNS drops its replica");
    let (_, cancel_b, task_b) = agents.pop().expect("edge-b");
    cancel_b.cancel();
    task_b.await.expect("agent task").expect("agent ends");
    let only_a: BTreeSet<IpAddr> = [both[0]].into_iter().collect();
    wait_until(
        "edge-b's replica gone from edge-a's answers",
        STEP_TIMEOUT,
        || {
            let answer = resolve_blocking(dns, "web.warren.");
            let set: BTreeSet<IpAddr> = answer.ok()?.into_iter().collect();
            (set == only_a).then_some(())
        },
    )
    .await;

    let (_, cancel_a, task_a) = agents.pop().expect("edge-a");
    cancel_a.cancel();
    task_a.await.expect("agent task").expect("agent ends");
    control.shutdown().await;
    for pid in workloads {
        kill9(pid);
    }
}

/// Agents gossip with their own site only: each site's agents find each other (through the
/// control node, which is in every site's mesh on its one gossip port), an agent's DNS holds
/// its own site's replicas alive and answers with them, and the control node hears every
/// site.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_site_gossips_apart_and_control_hears_every_site() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let config = warren_control::node::ControlConfig {
        mesh_timers: MeshTimers::for_tests(),
        ..warren_control::node::ControlConfig::default()
    };
    let (control, fingerprint) = warren_tests::start_control_gossiping(dir.path(), config).await;
    let mut agents = Vec::new();
    for (name, site, ip) in [
        ("lisbon-1", "lisbon", "127.0.0.2"),
        ("lisbon-2", "lisbon", "127.0.0.3"),
        ("porto-1", "porto", "127.0.0.4"),
    ] {
        agents.push(join_discovering(&control, fingerprint, dir.path(), (name, site), ip).await);
    }
    propose(&control, Op::PutService(sleep_service(3))).await;
    let ip = |a: &str| -> IpAddr { a.parse().expect("literal") };
    let lisbon = vec![ip("127.0.0.2"), ip("127.0.0.3")];
    let porto = vec![ip("127.0.0.4")];
    let answers = |dns: SocketAddr| resolve_blocking(dns, "web.warren.");
    let dns_lisbon = wait_until("lisbon-1 serves DNS", STEP_TIMEOUT, || {
        dns_addr(&agents[0].0)
    })
    .await;
    let dns_porto = wait_until("porto-1 serves DNS", STEP_TIMEOUT, || {
        dns_addr(&agents[2].0)
    })
    .await;
    wait_until(
        "each site's DNS answers with its own site's replicas, alive by gossip",
        STEP_TIMEOUT,
        || {
            (answers(dns_lisbon) == Ok(lisbon.clone()) && answers(dns_porto) == Ok(porto.clone()))
                .then_some(())
        },
    )
    .await;
    let agent_ids: Vec<_> = agents
        .iter()
        .map(|(dir, _, _)| load_status(dir).expect("status").node_id)
        .collect();
    wait_until(
        "the control node sees every site's agents alive",
        STEP_TIMEOUT,
        || {
            let members = control.control().gossip_members()?;
            agent_ids
                .iter()
                .all(|id| {
                    members
                        .iter()
                        .any(|m| m.node_id == *id && m.liveness == warren_mesh::Liveness::Alive)
                })
                .then_some(())
        },
    )
    .await;
    // Gossip has had time to spread: still no agent learnt the other site's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(answers(dns_lisbon), Ok(lisbon));
    assert_eq!(answers(dns_porto), Ok(porto));

    let workloads: Vec<u32> = agents
        .iter()
        .filter_map(|(dir, _, _)| load_status(dir).ok())
        .flat_map(|s| running_pids(&s))
        .collect();
    for (_, cancel, task) in agents {
        cancel.cancel();
        task.await.expect("agent task").expect("agent ends");
    }
    control.shutdown().await;
    for pid in workloads {
        kill9(pid);
    }
}

/// As root, an agent serving DNS on port 53 hands it to its workloads: each sees a
/// `/etc/resolv.conf` naming the agent's server and the zone as search domain (bind-mounted in
/// its own mount namespace; the host's file is untouched). Prints why it skips otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn as_root_workloads_resolve_through_their_agents_dns() {
    const TEST: &str = "as_root_workloads_resolve_through_their_agents_dns";
    warren_tests::init();
    let dns: SocketAddr = "127.0.0.111:53".parse().expect("literal");
    // Root for a mount namespace per workload; then the port, which only root may bind.
    let missing = warren_tests::root().or_else(|| {
        std::net::UdpSocket::bind(dns)
            .err()
            .map(|e| format!("{dns} cannot be bound here: {e}"))
    });
    if !warren_tests::require(TEST, [missing]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("edge");
    warren_tests::join_agent(&control, fingerprint, &agent_dir, "edge-1", "a").await;
    let mut options = discovering(free_udp_port("127.0.0.2"));
    if let Some(config) = options.discovery.dns.as_mut() {
        config.listen = dns;
    }
    let (cancel, task) = spawn_agent_with(&agent_dir, options);
    let host_before = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    propose(&control, Op::PutService(sleep_service(1))).await;
    let pid = wait_until("web running", STEP_TIMEOUT, || {
        load_status(&agent_dir)
            .ok()
            .map(|s| running_pids(&s))
            .and_then(|pids| pids.first().copied())
    })
    .await;
    let seen = wait_until(
        "the workload's resolv.conf names the agent's DNS",
        STEP_TIMEOUT,
        || {
            std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf"))
                .ok()
                .filter(|text| text.contains("nameserver 127.0.0.111"))
        },
    )
    .await;
    assert!(seen.contains("search warren"), "{seen}");
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_before,
        "the host's resolv.conf is untouched"
    );
    cancel.cancel();
    task.await.expect("agent task").expect("agent ends");
    control.shutdown().await;
    kill9(pid);
}
