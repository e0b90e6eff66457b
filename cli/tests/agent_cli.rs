//! `warren agent` as a subprocess, next to a `warren control init` subprocess: join, a real
//! workload, SIGTERM leaving it running, `agent status` offline, `agent run` adopting it, and
//! removal stopping it.

use std::time::Duration;

mod common;
use common::{
    Foreground, READY_TIMEOUT, agent_status, alive, command, control_init, http_get, ok,
    running_pids, wait_until,
};

/// `agent join` and `agent run` read the test-only self-check knob: a value other than 1 or 0
/// is refused before anything is written, so a typo cannot leave a self-check run toothless.
#[test]
fn agent_commands_refuse_a_garbled_selfcheck_knob() {
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let join = ["join", "--control", "127.0.0.1:1", "--token", "unused"];
    for args in [&["run"][..], &join[..]] {
        let refused = command()
            .arg("agent")
            .args(args)
            .arg("--data-dir")
            .arg(&agent_dir)
            .env("WARREN_SELFCHECK_STOP_ON_DISCONNECT", "yes")
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{args:?}: {refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("WARREN_SELFCHECK_STOP_ON_DISCONNECT: expected 1 or 0"),
            "{args:?}: {stderr}"
        );
        assert!(!agent_dir.exists());
    }
}

/// An operator joins an edge box: `agent join` prints its ready line and runs a service's
/// process; SIGTERM stops the agent but not the process; `agent status` works offline;
/// `agent run` adopts the same process; `node rm` makes the agent stop it and exit non-zero.
#[test]
fn agent_join_run_status_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut control, quic, config) = control_init(dir.path());
    let admin = |args: &[&str]| {
        command()
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run warren")
    };
    let token = ok(admin(&["token", "create", "--role", "agent"]));
    let token = token.trim();

    let agent_dir = dir.path().join("agent");
    let agent_dir_text = agent_dir.to_str().unwrap().to_owned();
    // Contradicting runtime flags are refused before anything is written.
    let refused = command()
        .args([
            "agent",
            "join",
            "--runtime",
            "process",
            "--containerd-socket",
            "/run/containerd/containerd.sock",
            "--control",
            &quic,
        ])
        .args(["--token", token, "--data-dir", &agent_dir_text])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("--containerd-socket needs --runtime containerd"),
        "{refused:?}"
    );
    assert!(!agent_dir.exists());

    let mut agent = Foreground::spawn(
        &[
            "agent",
            "join",
            "--data-dir",
            &agent_dir_text,
            "--control",
            &quic,
            "--token",
            token,
            "--name",
            "edge-1",
            "--site",
            "lisbon",
            "--label",
            "tier=edge",
            "--metrics",
            "none",
            // Not the default 0.0.0.0:7946: the control node's gossip holds it.
            "--gossip",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
        ],
        dir.path().join("agent.stderr.log"),
    );
    let ready = agent.wait_for_line(" running");
    assert!(ready.starts_with("warren agent node "), "{ready}");
    let node_id = ready.split_whitespace().nth(3).unwrap().to_owned();

    ok(admin(&[
        "service",
        "create",
        "web",
        "--command",
        "sleep 1000",
        "--replicas",
        "1",
    ]));
    let pid = wait_until("a running workload", READY_TIMEOUT, || {
        agent_status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|p| p.len() == 1)
            .map(|p| p[0])
    });
    assert!(alive(pid));

    // The node registered its runtime: an image service is not placed on it, and says why.
    let inspected = ok(admin(&["node", "inspect", "edge-1", "-o", "json"]));
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(
        inspected["node"]["labels"]["warren.runtime"], "process",
        "{inspected}"
    );
    let created = admin(&["service", "create", "img", "--image", "busybox:1.36"]);
    let warning = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{warning}");
    let why = "1 replica pending: no node runs containerd (an image needs an agent joined with \
               --runtime containerd)";
    assert!(warning.contains(why), "{warning}");
    assert!(ok(admin(&["service", "ps", "img"])).contains(why));
    ok(admin(&["service", "rm", "img"]));

    // SIGTERM: the agent exits 0, the workload runs on.
    agent.signal("-TERM");
    assert!(agent.wait(Duration::from_secs(30)).success());
    assert!(alive(pid), "SIGTERM to the agent leaves workloads running");
    // Status works with the agent down.
    let table = ok(command()
        .args(["agent", "status", "--data-dir", &agent_dir_text])
        .output()
        .unwrap());
    assert!(
        table.contains("web.1") && table.contains(&pid.to_string()),
        "{table}"
    );

    // `agent run` adopts the same process.
    let mut agent = Foreground::spawn(
        &[
            "agent",
            "run",
            "--data-dir",
            &agent_dir_text,
            "--metrics",
            "127.0.0.1:0",
        ],
        dir.path().join("agent2.stderr.log"),
    );
    agent.wait_for_line(" running");
    let started = agent_status(&agent_dir).unwrap()["updated_at_ms"]
        .as_u64()
        .unwrap();
    let adopted = wait_until("the restarted agent's status", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| {
            s["updated_at_ms"].as_u64().unwrap_or(0) > started && s["link"]["connected"] == true
        })
    });
    assert_eq!(running_pids(&adopted), vec![pid], "{adopted}");
    // Its metrics say the same, labelled with node (the name), node_id and site.
    let metrics_addr = adopted["metrics_addr"].as_str().unwrap().to_owned();
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("warren_agent_cache_size_bytes"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("warren_agent_link_up{")
                && l.contains("node=\"edge-1\"")
                && l.contains(&format!("node_id=\"{node_id}\""))
                && l.contains("site=\"lisbon\"")
                && l.ends_with(" 1")),
        "link up, labelled with node, node_id and site, in {metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("warren_agent_service_workloads{")
                && l.contains("service=\"web\"")
                && l.contains("state=\"running\"")
                && l.ends_with(" 1")),
        "web's running workload in {metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("warren_agent_workloads{state=\"running\"") && l.ends_with(" 1")
        ),
        "one running workload in {metrics}"
    );
    assert!(http_get(&metrics_addr, "/ready").starts_with("HTTP/1.1 200"));

    // Removal: the agent stops the workload and exits non-zero, saying why.
    ok(admin(&["node", "rm", &node_id]));
    let status = agent.wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(!alive(pid), "the removed node's workload stopped");
    let stderr = std::fs::read_to_string(dir.path().join("agent2.stderr.log")).unwrap();
    assert!(stderr.contains("removed"), "{stderr}");
    control.signal("-TERM");
    control.wait(Duration::from_secs(30));
}

/// `warren agent run` whose only control address is a name that does not resolve (DNS down on
/// the box) runs on — it used to end its link as "cancelled" and exit 0 — keeps its workload,
/// and `agent status` says why it is disconnected; SIGTERM still stops it cleanly.
#[test]
fn agent_run_keeps_running_when_its_control_name_does_not_resolve() {
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
    let quiet = ["--metrics", "none", "--gossip", "none", "--dns", "none"];
    let mut agent = Foreground::spawn(
        &[
            &["agent", "join", "--data-dir", &agent_dir_text],
            &[
                "--control",
                &quic,
                "--token",
                token.trim(),
                "--name",
                "edge-1",
            ][..],
            &quiet[..],
        ]
        .concat(),
        dir.path().join("join.stderr.log"),
    );
    agent.wait_for_line(" running");
    admin(&["service", "create", "web", "--command", "sleep 1000"]);
    let pid = wait_until("a running workload", READY_TIMEOUT, || {
        agent_status(&agent_dir)
            .map(|s| running_pids(&s))
            .filter(|p| p.len() == 1)
            .map(|p| p[0])
    });
    agent.signal("-TERM");
    assert!(agent.wait(Duration::from_secs(30)).success());

    // As if it had joined by a name that no longer resolves: agent.json and the cached view.
    let port = quic.rsplit_once(':').unwrap().1;
    let name = format!("warren-control.invalid:{port}");
    point_agent_at(&agent_dir, &name);
    let mut agent = Foreground::spawn(
        &[
            &["agent", "run", "--data-dir", &agent_dir_text][..],
            &quiet[..],
        ]
        .concat(),
        dir.path().join("run.stderr.log"),
    );
    agent.wait_for_line(" running");
    let status = wait_until("three failed lookups", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| s["link"]["failures"].as_u64() >= Some(3))
    });
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "agent run keeps running: {status}"
    );
    assert_eq!(running_pids(&status), vec![pid], "{status}");
    let reason = status["link"]["down_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot resolve any control address"),
        "{reason}"
    );
    let table = ok(command()
        .args(["agent", "status", "--data-dir", &agent_dir_text])
        .output()
        .unwrap());
    assert!(
        table.contains("disconnected: cannot resolve any control address")
            && table.contains("warren-control.invalid"),
        "{table}"
    );

    agent.signal("-TERM");
    assert!(agent.wait(Duration::from_secs(30)).success());
    assert!(alive(pid));
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    control.signal("-TERM");
    control.wait(Duration::from_secs(30));
}

/// Rewrites a stopped agent's control addresses to `addr` alone: `agent.json` and the cached
/// view (whose list the link tries first).
fn point_agent_at(agent_dir: &std::path::Path, addr: &str) {
    use warren_edge_agent::agent::{AGENT_FILE, load_identity};
    use warren_edge_agent::cache::{Cache, CacheTuning};
    let mut identity = load_identity(agent_dir).unwrap();
    identity.control_addrs = vec![addr.to_owned()];
    let json = serde_json::to_vec_pretty(&identity).unwrap();
    std::fs::write(agent_dir.join(AGENT_FILE), json).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = Cache::open(agent_dir, CacheTuning::default()).unwrap();
        let mut view = cache.view().unwrap().expect("a cached view");
        view.control_addrs = vec![addr.to_owned()];
        cache.store_view(&view).await.unwrap();
    });
}
