//! A health-gated rollout through the built `warren` binary, next to `warren control init` and
//! `warren agent join` subprocesses: the `--update-*` flags, a broken update paused at its
//! first batch with the reason in `service inspect -o json`, `service ls` and `inspect` saying
//! so, and `service rollback` bringing the service back.

use std::time::Duration;

mod common;
use common::{
    READY_TIMEOUT, agent_status, command, control_init, join_agent, ok, running_pids, wait_until,
};

#[test]
fn a_broken_update_pauses_and_the_cli_says_why() {
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
    let (mut agent, agent_dir) = join_agent(dir.path(), &quic, &config, "edge-1", &[]);

    // Bad flag values are one line each, before anything is sent.
    let refused = admin(&[
        "service",
        "create",
        "web",
        "--command",
        "sleep 1000",
        "--update-max-failure-ratio",
        "2",
    ]);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "error: --update-max-failure-ratio: must be a number from 0 to 1, not 2"
    );

    ok(admin(&[
        "service",
        "create",
        "web",
        "--command",
        "sleep 1000",
        "--replicas",
        "3",
        "--update-monitor",
        "1s",
        "--update-failure-action",
        "pause",
        "--update-max-failure-ratio",
        "0",
    ]));
    wait_until("three running workloads", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| running_pids(s).len() == 3)
    });

    // The update follows its rollout: it stops at the first batch and says why, exit 1.
    let broken = admin(&["service", "update", "web", "--command", "/nonexistent"]);
    let said = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success(), "{said}");
    assert!(said.contains("error: service web: paused: web."), "{said}");
    assert!(
        String::from_utf8_lossy(&broken.stdout).contains("web: version 2: 1/3 updated"),
        "{broken:?}"
    );
    let rollout = wait_until("the rollout paused", READY_TIMEOUT, || {
        let inspected = ok(admin(&["service", "inspect", "web", "-o", "json"]));
        let info: serde_json::Value = serde_json::from_str(&inspected).unwrap();
        (info["rollout"]["state"] == "paused").then(|| info["rollout"].clone())
    });
    assert_eq!(rollout["updated"], 1, "{rollout}");
    assert_eq!(rollout["failed"], 1, "{rollout}");
    let message = rollout["message"].as_str().unwrap();
    assert!(
        message.starts_with("paused: web.")
            && message.contains(" on edge-1 failed: could not start: ")
            && message.ends_with("(monitor 1s)"),
        "{message}"
    );
    let listed = ok(admin(&["service", "ls"]));
    assert!(listed.contains("(paused 1/3)"), "{listed}");
    let inspected = ok(admin(&["service", "inspect", "web"]));
    assert!(
        inspected.contains("version 2 paused, 1/3 updated, 1 failed: paused: web."),
        "{inspected}"
    );
    let spec = ok(admin(&["service", "inspect", "web", "-o", "json"]));
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["spec"]["update"]["monitor_ms"], 1000);
    assert_eq!(spec["spec"]["update"]["failure_action"], "pause");

    // `service update` with no change resumes it: the next batch fails in turn and pauses it
    // again (2 of 3 updated, 2 failed).
    let resumed = admin(&["service", "update", "web", "--detach"]);
    assert!(resumed.status.success(), "{resumed:?}");
    wait_until("the resumed rollout paused again", READY_TIMEOUT, || {
        let inspected = ok(admin(&["service", "inspect", "web", "-o", "json"]));
        let info: serde_json::Value = serde_json::from_str(&inspected).unwrap();
        (info["rollout"]["state"] == "paused" && info["rollout"]["failed"] == 2).then_some(())
    });

    // A rollback replaces the paused rollout; the broken replicas come back.
    ok(admin(&["service", "rollback", "web", "--detach"]));
    wait_until("three running workloads again", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| running_pids(s).len() == 3)
    });
    wait_until("the rollback completed", READY_TIMEOUT, || {
        let inspected = ok(admin(&["service", "inspect", "web", "-o", "json"]));
        let info: serde_json::Value = serde_json::from_str(&inspected).unwrap();
        (info["rollout"]["state"] == "completed").then_some(())
    });

    // With failure_action rollback the update stops at its first batch, the service goes
    // back by itself, and the command says so when the rollback has run: exit 1.
    let broken = admin(&[
        "service",
        "update",
        "web",
        "--command",
        "/nonexistent",
        "--update-failure-action",
        "rollback",
    ]);
    let said = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success(), "{said}");
    assert!(
        said.contains("error: service web: rolled back from version "),
        "{said}"
    );
    let out = String::from_utf8_lossy(&broken.stdout);
    assert!(out.contains("[rolling_back]"), "{out}");
    wait_until(
        "three running workloads after the automatic rollback",
        READY_TIMEOUT,
        || agent_status(&agent_dir).filter(|s| running_pids(s).len() == 3),
    );

    ok(admin(&["service", "rm", "web"]));
    wait_until("no workload left", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| running_pids(s).is_empty())
    });
    agent.signal("-TERM");
    agent.wait(Duration::from_secs(30));
    control.signal("-TERM");
    control.wait(Duration::from_secs(30));
}
