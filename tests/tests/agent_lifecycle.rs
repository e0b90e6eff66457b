//! A service's whole life on two agents at two sites, in one process with a real control node
//! and real processes: create (one replica per site), scale up (the new replicas start, the
//! old keep their pids), update the environment (every replica restarts with it, as a rolling
//! update), scale down, remove (every process stops).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tracing::info;
use warren_api::rest::ReplicaInfo;
use warren_api::{ServiceName, TaskState};
use warren_control::Op;
use warren_tests::{
    agent_status, alive, api_get, join_agent, propose, sleep_service, spawn_agent, start_control,
    wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// Running replicas on the agent in `dir`: replica → pid.
fn running(dir: &Path) -> BTreeMap<String, u32> {
    agent_status(dir)
        .map(|s| {
            s.replicas
                .iter()
                .filter(|r| r.state == TaskState::Running)
                .filter_map(|r| Some((r.replica.to_string(), r.pid?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The environment of a live process.
fn environ(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', "\n"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_scale_update_remove_on_two_agents() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    join_agent(&control, fingerprint, &a, "edge-a", "lisbon").await;
    join_agent(&control, fingerprint, &b, "edge-b", "porto").await;
    let (cancel_a, task_a) = spawn_agent(&a);
    let (cancel_b, task_b) = spawn_agent(&b);

    info!("--- create: one replica per site");
    propose(&control, Op::PutService(sleep_service(2))).await;
    let (first_a, first_b) = wait_until("one process on each agent", LONG, || {
        let (ra, rb) = (running(&a), running(&b));
        (ra.len() == 1 && rb.len() == 1).then_some((ra, rb))
    })
    .await;

    info!("--- scale to 4: two more start, the first two keep their pids");
    propose(
        &control,
        Op::ScaleService {
            name: ServiceName::new("web").unwrap(),
            replicas: 4,
        },
    )
    .await;
    let (ra, rb) = wait_until("two processes on each agent", LONG, || {
        let (ra, rb) = (running(&a), running(&b));
        (ra.len() == 2 && rb.len() == 2).then_some((ra, rb))
    })
    .await;
    for (replica, pid) in first_a.iter().chain(&first_b) {
        let now = ra.get(replica).or(rb.get(replica));
        assert_eq!(now, Some(pid), "{replica} kept its pid through the scale");
    }

    info!("--- update the environment: every replica restarts with it");
    let mut updated = sleep_service(4);
    updated.env.insert("RELEASE".into(), "2".into());
    propose(&control, Op::PutService(updated)).await;
    let before: Vec<u32> = ra.values().chain(rb.values()).copied().collect();
    let after = wait_until("four processes with RELEASE=2", LONG, || {
        let pids: Vec<u32> = running(&a)
            .into_values()
            .chain(running(&b).into_values())
            .collect();
        (pids.len() == 4 && pids.iter().all(|p| environ(*p).contains("RELEASE=2"))).then_some(pids)
    })
    .await;
    assert!(after.iter().all(|p| !before.contains(p)), "new processes");
    assert!(before.iter().all(|p| !alive(*p)), "the old ones stopped");
    // The agents' reports reach `service ps` shortly after.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let ps: Vec<ReplicaInfo> = api_get(&control, "/services/web/replicas").await;
        if ps.len() == 4
            && ps.iter().all(|r| {
                r.service_version == 3
                    && r.state == "running"
                    && after.contains(&r.pid.unwrap_or(0))
            })
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service ps: {ps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    info!("--- scale to 1, then remove: everything stops");
    propose(
        &control,
        Op::ScaleService {
            name: ServiceName::new("web").unwrap(),
            replicas: 1,
        },
    )
    .await;
    wait_until("one process left", LONG, || {
        (running(&a).len() + running(&b).len() == 1).then_some(())
    })
    .await;
    assert_eq!(after.iter().filter(|p| alive(**p)).count(), 1);
    propose(
        &control,
        Op::RemoveService(ServiceName::new("web").unwrap()),
    )
    .await;
    wait_until("every process stopped", LONG, || {
        after.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    cancel_a.cancel();
    cancel_b.cancel();
    let _ = task_a.await;
    let _ = task_b.await;
    control.shutdown().await;
}
