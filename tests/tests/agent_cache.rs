//! The agent's cache under crashes and corruption: a view written but never acked (the agent
//! died between the two) is not lost, a corrupt cached view is fetched again without restarting
//! running workloads, and a cache whose files are garbage stops the agent with one clear line
//! instead of a panic.

use std::time::Duration;

use tracing::info;
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_control::push::node_view;
use warren_edge_agent::agent::{Agent, AgentError, RunEnd};
use warren_edge_agent::cache::{Cache, CacheTuning};
use warren_tests::{
    agent_options, agent_status, alive, join_agent, propose, running_pids, sleep_service,
    spawn_agent, start_control, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// The agent runs one replica and is stopped. Meanwhile the service scales to 2, and the view
/// at that revision lands in the agent's cache exactly as the link stores it — but control
/// never hears the ack (the crash came between the two). With control down, the agent starts
/// from that cache: both replicas run, the first one adopted (same pid). Control returns: the
/// agent resumes at the cached revision and nothing restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_view_cached_but_never_acked_is_not_lost() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    let identity = join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let (cancel, task) = spawn_agent(&agent_dir);
    propose(&control, Op::PutService(sleep_service(1))).await;
    let first = wait_until("one running workload", LONG, || {
        agent_status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|p| p.len() == 1)
    })
    .await[0];
    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap(), RunEnd::Stopped);

    info!("--- scale to 2; the view is cached, the ack never sent");
    propose(&control, Op::PutService(sleep_service(2))).await;
    let view = {
        let state = control.control().read_stale().await;
        let keys = control.control().cluster_keys().unwrap();
        let addrs = control.control().control_addrs().await;
        node_view(&state, identity.node_id, &addrs, &keys).unwrap()
    };
    assert_eq!(view.replicas.len(), 2);
    {
        let cache = Cache::open(&agent_dir, CacheTuning::default()).unwrap();
        cache.store_view(&view).await.unwrap();
    }
    let control_dir = control.data_dir().to_owned();
    control.shutdown().await;

    info!("--- agent starts with control down: both replicas run from the cache");
    let (cancel, task) = spawn_agent(&agent_dir);
    let pids = wait_until("two running workloads offline", LONG, || {
        agent_status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|p| p.len() == 2)
    })
    .await;
    assert!(
        pids.contains(&first),
        "the first replica is adopted: {pids:?}"
    );
    assert_eq!(agent_status(&agent_dir).unwrap().revision, view.revision.0);

    info!("--- control returns: the agent resumes, nothing restarts");
    let control = ControlNode::run(&control_dir, ControlConfig::default())
        .await
        .unwrap();
    wait_until("the agent reconnected", LONG, || {
        agent_status(&agent_dir).filter(|s| s.link.connected)
    })
    .await;
    let agents = control.control().gather_agents(false).await;
    assert!(
        agents[&identity.node_id].revision_acked.0 <= view.revision.0,
        "control never saw an ack past the cached view"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = running_pids(&agent_status(&agent_dir).unwrap());
    assert_eq!(now, pids, "same processes after the reconnect");
    assert!(pids.iter().all(|p| alive(*p)));

    propose(
        &control,
        Op::RemoveService(warren_api::ServiceName::new("web").unwrap()),
    )
    .await;
    wait_until("workloads stopped", LONG, || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    cancel.cancel();
    let _ = task.await;
    control.shutdown().await;
}

/// A corrupt cached view (checksum fails) is dropped at start with a warning and fetched again
/// from control; the running workload is adopted, not restarted. A cache whose files are
/// garbage refuses to open with one clear line naming the cache, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_cache_is_refetched_or_refused_clearly() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let (cancel, task) = spawn_agent(&agent_dir);
    propose(&control, Op::PutService(sleep_service(1))).await;
    let pid = wait_until("one running workload", LONG, || {
        agent_status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|p| p.len() == 1)
    })
    .await[0];
    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap(), RunEnd::Stopped);

    info!("--- flip bytes in the cached view: re-fetched, workload adopted");
    {
        let cache = Cache::open(&agent_dir, CacheTuning::default()).unwrap();
        cache
            .put_raw("view", b"\x01\x00\x00\x00\x00garbage")
            .unwrap();
        cache.flush().await.unwrap();
        assert!(cache.view().is_err(), "the corruption is detected");
    }
    let (cancel, task) = spawn_agent(&agent_dir);
    wait_until("the view fetched again", LONG, || {
        agent_status(&agent_dir).filter(|s| s.link.connected && s.revision > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running_pids(&agent_status(&agent_dir).unwrap()),
        vec![pid],
        "the running workload is adopted, not restarted"
    );
    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap(), RunEnd::Stopped);
    {
        let cache = Cache::open(&agent_dir, CacheTuning::default()).unwrap();
        assert!(
            cache.view().unwrap().is_some(),
            "the fetched view is cached"
        );
    }

    info!("--- overwrite the cache's files with garbage: a clear error, no panic");
    let cache_dir = agent_dir.join("cache");
    let mut files = 0;
    for entry in walk(&cache_dir) {
        let len = std::fs::metadata(&entry).unwrap().len().max(64) as usize;
        let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
        std::fs::write(&entry, garbage).unwrap();
        files += 1;
    }
    assert!(files > 0, "sled keeps files under {}", cache_dir.display());
    let opened = std::panic::catch_unwind(|| Agent::open(&agent_dir, agent_options()));
    let Ok(result) = opened else {
        panic!("opening a garbage cache panicked");
    };
    match result {
        Err(error @ (AgentError::Cache(_) | AgentError::BadAgentFile { .. })) => {
            let line = error.to_string();
            assert!(!line.contains('\n'), "one line: {line}");
            assert!(line.contains("cache"), "names the cache: {line}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a garbage cache opened"),
    }
    assert!(alive(pid), "the workload outlives a broken cache");
    warren_tests::kill9(pid);
    control.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
