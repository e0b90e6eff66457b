//! A site cut off at the transport (its agent's QUIC datagrams dropped both ways) keeps its
//! workloads, restarts a crashed one on its own, and converges after the heal without
//! restarting the workloads whose spec did not change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use warren_api::{ServiceMode, ServiceName, ServiceSpec, TaskState};
use warren_control::Op;
use warren_control::node::ControlNode;
use warren_edge_agent::agent::{Agent, AgentError, AgentOptions, AgentStatus, RunEnd, load_status};
use warren_tests::{
    agent_options, agent_options_behind, alive, join_agent, kill9, propose, sleep_service,
    start_control, wait_until,
};
use warren_transport::FaultSwitch;

/// Long enough for every step on a loaded CI machine; the link's silence limit (15 s) plus a
/// reconnect dominates the slowest one.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

struct RunningAgent {
    dir: PathBuf,
    node_id: warren_api::NodeId,
    task: JoinHandle<Result<RunEnd, AgentError>>,
}

async fn start_agent(
    control: &ControlNode,
    fingerprint: [u8; 32],
    dir: &Path,
    name: &str,
    site: &str,
    options: AgentOptions,
) -> RunningAgent {
    let identity = join_agent(control, fingerprint, dir, name, site).await;
    let dir = dir.to_owned();
    let task = tokio::spawn({
        let dir = dir.clone();
        async move { Agent::run(&dir, options, CancellationToken::new()).await }
    });
    RunningAgent {
        dir,
        node_id: identity.node_id,
        task,
    }
}

/// `worker`: one `sleep` per agent, with `VERSION` in its environment.
fn worker(version: &str) -> ServiceSpec {
    let mut spec = sleep_service(1);
    spec.name = ServiceName::new("worker").expect("valid name");
    spec.mode = ServiceMode::Global;
    spec.env.insert("VERSION".into(), version.into());
    spec
}

fn hash_hex(spec: &ServiceSpec) -> String {
    format!("{:016x}", spec.workload_hash())
}

/// The running replicas of `service` on the agent: (pid, workload hash), in replica order.
fn running(status: &AgentStatus, service: &str) -> Vec<(u32, String)> {
    status
        .replicas
        .iter()
        .filter(|r| r.replica.service.as_str() == service && r.state == TaskState::Running)
        .filter_map(|r| Some((r.pid?, r.workload_hash.clone()?)))
        .collect()
}

fn pids(status: &AgentStatus, service: &str) -> Vec<u32> {
    running(status, service)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// The agent's status once `service` runs `count` replicas, all with `hash`.
fn settled(dir: &Path, service: &str, count: usize, hash: &str) -> Option<AgentStatus> {
    let status = load_status(dir).ok()?;
    let replicas = running(&status, service);
    (replicas.len() == count && replicas.iter().all(|(_, h)| h == hash)).then_some(status)
}

/// The revision at which `service`'s rolling update (if any) has reached every replica.
async fn rolled_out(control: &ControlNode, service: &str) -> u64 {
    let name = ServiceName::new(service).expect("valid name");
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        {
            let state = control.control().read_stale().await;
            if state
                .services
                .get(&name)
                .is_some_and(|r| r.rollout.as_ref().is_none_or(|r| !r.is_active()))
            {
                return state.revision.0;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout of {service} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Control + agents `edge-a` (site `a`) and `edge-b` (site `b`), running `web` (2 replicas,
/// one per site) and `worker` (global). Cut edge-b off at the transport → its workloads keep
/// running; kill -9 its `web` → it is restarted while cut off; meanwhile `worker` gets a new
/// `VERSION` and `web` scales to 4 → site a converges, edge-b still runs the old worker; once
/// edge-b's link has noticed the silence, heal → edge-b converges: a new worker, a second web,
/// and its web keeps the pid it got while cut off. Site a's unchanged workloads keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_cut_off_keeps_running_and_converges_after_the_heal() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let cut_b = FaultSwitch::new();
    let a_dir = dir.path().join("a");
    let a = start_agent(
        &control,
        fingerprint,
        &a_dir,
        "edge-a",
        "a",
        agent_options(),
    )
    .await;
    let b_dir = dir.path().join("b");
    let b_options = agent_options_behind(&cut_b);
    let b = start_agent(&control, fingerprint, &b_dir, "edge-b", "b", b_options).await;

    info!("--- deploy web (2 replicas) and worker (global)");
    propose(&control, Op::PutService(sleep_service(2))).await;
    propose(&control, Op::PutService(worker("1"))).await;
    let web_hash = hash_hex(&sleep_service(2));
    let worker_v1 = hash_hex(&worker("1"));
    let mut before = BTreeMap::new();
    for agent in [&a, &b] {
        let status = wait_until(
            "web and worker running on both agents",
            STEP_TIMEOUT,
            || {
                settled(&agent.dir, "web", 1, &web_hash)
                    .and_then(|_| settled(&agent.dir, "worker", 1, &worker_v1))
            },
        )
        .await;
        assert!(status.link.connected, "{status:?}");
        before.insert(agent.node_id, status);
    }
    let a_web = pids(&before[&a.node_id], "web");
    let b_web = pids(&before[&b.node_id], "web");
    let b_worker = pids(&before[&b.node_id], "worker");

    info!("--- cut agent edge-b off");
    cut_b.cut();

    info!("--- kill -9 edge-b's web: the agent restarts it while cut off");
    kill9(b_web[0]);
    let restarted = wait_until("edge-b's web restarted", STEP_TIMEOUT, || {
        load_status(&b.dir)
            .ok()
            .map(|s| pids(&s, "web"))
            .filter(|p| p.len() == 1 && p[0] != b_web[0])
    })
    .await;
    let b_web = restarted;
    assert!(cut_b.is_cut());

    info!("--- meanwhile: worker gets VERSION=2, web scales to 4");
    propose(&control, Op::PutService(worker("2"))).await;
    propose(
        &control,
        Op::ScaleService {
            name: ServiceName::new("web").unwrap(),
            replicas: 4,
        },
    )
    .await;
    let worker_v2 = hash_hex(&worker("2"));
    let target = rolled_out(&control, "worker").await;
    let a_after = wait_until("site a converged", STEP_TIMEOUT, || {
        settled(&a.dir, "web", 2, &web_hash).and_then(|_| settled(&a.dir, "worker", 1, &worker_v2))
    })
    .await;
    assert!(
        pids(&a_after, "web").contains(&a_web[0]),
        "site a's web was not restarted: {a_after:?}"
    );
    let a_worker = pids(&a_after, "worker");

    info!("--- edge-b notices the silence and still runs the old version");
    let b_offline = wait_until("edge-b's link down", STEP_TIMEOUT, || {
        load_status(&b.dir).ok().filter(|s| !s.link.connected)
    })
    .await;
    assert!(b_offline.revision < target, "{b_offline:?}");
    // Control sees the silence too (agents heartbeat every 5 s), well before QUIC's idle
    // timeout would tell it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    loop {
        let agents = control.control().gather_agents(false).await;
        if agents.get(&b.node_id).is_some_and(|r| !r.connected) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "control still counts edge-b connected: {:?}",
            agents.get(&b.node_id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pids(&b_offline, "web"), b_web);
    assert_eq!(pids(&b_offline, "worker"), b_worker);
    assert_eq!(running(&b_offline, "worker")[0].1, worker_v1);
    assert!(b_web.iter().chain(&b_worker).all(|pid| alive(*pid)));
    assert!(
        cut_b.dropped_sent() > 0 && cut_b.dropped_received() > 0,
        "{cut_b:?}"
    );

    info!("--- heal: edge-b converges");
    cut_b.heal();
    let b_after = wait_until("edge-b converged", STEP_TIMEOUT, || {
        settled(&b.dir, "web", 2, &web_hash)
            .and_then(|_| settled(&b.dir, "worker", 1, &worker_v2))
            .filter(|s| s.revision >= target && s.link.connected)
    })
    .await;
    assert!(
        pids(&b_after, "web").contains(&b_web[0]),
        "the web restarted while cut off is kept: {b_after:?}"
    );
    assert!(!pids(&b_after, "worker").contains(&b_worker[0]));
    assert!(!alive(b_worker[0]), "the old worker was stopped");
    let a_now = load_status(&a.dir).unwrap();
    assert!(pids(&a_now, "web").contains(&a_web[0]), "{a_now:?}");
    assert_eq!(pids(&a_now, "worker"), a_worker, "{a_now:?}");

    info!("--- remove both nodes: every workload stops");
    let all: Vec<u32> = [&a_now, &b_after]
        .iter()
        .flat_map(|s| s.replicas.iter().filter_map(|r| r.pid))
        .collect();
    for agent in [a, b] {
        propose(&control, Op::RemoveNode(agent.node_id)).await;
        let end = tokio::time::timeout(STEP_TIMEOUT, agent.task)
            .await
            .expect("agent ends")
            .expect("agent task");
        assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    }
    for pid in all {
        assert!(!alive(pid), "pid {pid} stopped");
    }
    control.shutdown().await;
}
