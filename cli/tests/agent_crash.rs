//! Durable before acknowledged, under real crashes: a `warren agent` process is killed with
//! SIGKILL at random moments while the desired state changes under it. After every kill the
//! revision in its cache is at least the last revision control saw it acknowledge (an ack is
//! only sent once the view is flushed), and once it runs again it converges with no workload
//! lost and none duplicated.

use std::path::Path;
use std::time::Duration;

mod common;
use common::{Foreground, READY_TIMEOUT, command, control_init, ok, processes_under, wait_until};
use warren_edge_agent::cache::{Cache, CacheTuning};

fn cached_revision(agent_dir: &Path) -> u64 {
    let cache =
        Cache::open(agent_dir, CacheTuning::default()).expect("open the killed agent's cache");
    cache
        .view()
        .expect("the cached view reads back after a SIGKILL")
        .map_or(0, |v| v.revision.0)
}

#[test]
fn sigkill_at_random_moments_loses_no_acked_revision_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut control, quic, config) = control_init(dir.path());
    let admin = |args: &[&str]| {
        ok(command()
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run warren"))
    };
    let token = admin(&["token", "create", "--role", "agent"]);
    let agent_dir = dir.path().join("agent");
    let agent_dir_text = agent_dir.to_str().unwrap().to_owned();
    let mut agent = Foreground::spawn(
        &[
            "agent",
            "join",
            "--data-dir",
            &agent_dir_text,
            "--control",
            &quic,
            "--token",
            token.trim(),
            "--name",
            "edge-1",
            "--metrics",
            "none",
            // Not the default 0.0.0.0:7946: the control node's gossip holds it.
            "--gossip",
            "none",
            "--dns",
            "none",
        ],
        dir.path().join("agent-join.log"),
    );
    let ready = agent.wait_for_line(" running");
    let node_id = ready.split_whitespace().nth(3).unwrap().to_owned();
    admin(&[
        "service",
        "create",
        "web",
        "--command",
        "sleep 100000",
        "--replicas",
        "1",
    ]);

    let mut rng = fastrand::Rng::with_seed(7);
    let mut replicas = 1;
    for round in 0..8 {
        replicas = 1 + (round % 3);
        admin(&["service", "scale", "web", &replicas.to_string(), "--detach"]);
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        agent.child.kill().expect("SIGKILL the agent");
        agent.wait(Duration::from_secs(10));
        let node: serde_json::Value =
            serde_json::from_str(&admin(&["node", "inspect", &node_id, "-o", "json"])).unwrap();
        let acked = node["agent"]["revision_acked"]
            .as_u64()
            .expect("control reports the agent's acked revision");
        assert!(
            acked > 0,
            "round {round}: the agent acked its first view: {node}"
        );
        let cached = cached_revision(&agent_dir);
        assert!(
            cached >= acked,
            "round {round}: control saw revision {acked} acked, the cache holds {cached}"
        );
        agent = Foreground::spawn(
            &[
                "agent",
                "run",
                "--data-dir",
                &agent_dir_text,
                "--metrics",
                "none",
            ],
            dir.path().join(format!("agent-{round}.log")),
        );
        agent.wait_for_line(" running");
    }

    // Replica directories are beside the data dir (`--workloads-dir` default).
    let workloads = dir.path().join("agent-workloads");
    let running = wait_until("the last scale converged", READY_TIMEOUT, || {
        let ps: serde_json::Value =
            serde_json::from_str(&admin(&["service", "ps", "web", "-o", "json"])).ok()?;
        let all_running = ps
            .as_array()?
            .iter()
            .all(|r| r["state"] == "running" && r["stale"] == false);
        let processes = processes_under(&workloads);
        (all_running && ps.as_array()?.len() == replicas && processes.len() == replicas)
            .then_some(processes)
    });
    assert_eq!(
        running.len(),
        replicas,
        "one process per replica, none duplicated"
    );

    admin(&["service", "rm", "web"]);
    wait_until("workloads stopped", READY_TIMEOUT, || {
        processes_under(&workloads).is_empty().then_some(())
    });
    agent.signal("-TERM");
    agent.wait(Duration::from_secs(30));
    control.signal("-TERM");
    control.wait(Duration::from_secs(30));
}
