//! `warren demo` and `warren dev` as subprocesses: the tour runs to the end and exits 0 with
//! the lines that tell its story; the dev cluster answers admin commands, and SIGTERM stops it
//! with exit 0 and no workload left running.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

mod common;
use common::{Foreground, command, ok};

fn warren(args: &[&str]) -> Output {
    command().args(args).output().expect("run warren")
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// `warren demo`: every step of the partition tour is narrated, it exits 0, and it leaves no
/// workload running.
#[test]
fn demo_tours_a_partition_and_exits_0() {
    let stdout = ok(warren(&["demo"]));
    for line in [
        "[1] start a control node",
        "agent edge-b1 joined site b",
        "cut site b off",
        "its agent must restart it without the control plane",
        "control plane still unreachable",
        "site a converged after",
        "restarted for the new spec: worker.",
        "site b still runs what it had",
        "link down",
        "still running (checked in /proc)",
        "heal site b",
        "edge-b1 reconnected and converged after",
        "log on edge-b1 ends with: worker started with VERSION=2",
        "(the one its agent started while cut off)",
        "nothing left running",
        "done in",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

/// `warren demo -o json`: the report says what was kept and what was restarted for the new
/// spec, on both sites.
#[test]
fn demo_reports_json() {
    let stdout = ok(warren(&["demo", "-o", "json"]));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("demo prints JSON");
    let kept = report["kept"].as_object().expect("kept");
    assert!(
        kept.keys().any(|k| k.starts_with("edge-a1/web.")),
        "{report}"
    );
    assert!(
        kept.keys().any(|k| k.starts_with("edge-b1/web.")),
        "{report}"
    );
    let restarted = report["restarted_for_new_spec"]
        .as_object()
        .expect("restarted");
    for agent in ["edge-a1", "edge-b1"] {
        assert!(
            restarted
                .keys()
                .any(|k| k.starts_with(&format!("{agent}/worker."))),
            "{report}"
        );
    }
    assert!(
        report["datagrams_dropped_out"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(report["workloads_stopped"], 6, "{report}");
}

fn running_pids(data_dir: &Path) -> Vec<u64> {
    let output = command()
        .args(["agent", "status", "-o", "json", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run warren agent status");
    let status: serde_json::Value =
        serde_json::from_str(&ok(output)).expect("agent status prints JSON");
    status["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter(|r| r["state"] == "running")
        .filter_map(|r| r["pid"].as_u64())
        .collect()
}

/// `warren dev --data-dir D`: prints its ready line with the admin config, `service ls`
/// against it lists the sample service, every agent runs a workload; SIGTERM → exit 0, every
/// workload stopped, the data dir kept.
#[test]
fn dev_serves_admin_commands_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let data_arg = data_dir.to_str().unwrap();
    let mut dev = Foreground::spawn(
        &["dev", "--data-dir", data_arg],
        dir.path().join("dev.stderr"),
    );
    let ready = dev.wait_for_line("warren dev ready");
    let config = ready
        .split_once("config=")
        .map(|(_, path)| path.trim().to_owned())
        .expect("ready line names the config");
    assert_eq!(Path::new(&config), data_dir.join("admin.conf"));

    let listed = ok(warren(&[
        "--config", &config, "service", "ls", "-o", "json",
    ]));
    let services: serde_json::Value = serde_json::from_str(&listed).expect("service ls JSON");
    assert_eq!(services[0]["spec"]["name"], "web", "{services}");

    let mut pids = Vec::new();
    for agent in ["edge-a1", "edge-b1"] {
        let found = running_pids(&data_dir.join("agents").join(agent));
        assert_eq!(found.len(), 1, "{agent} runs one web replica: {found:?}");
        pids.extend(found);
    }
    assert!(pids.iter().all(|pid| alive(*pid)), "{pids:?}");

    dev.signal("-TERM");
    dev.wait_for_line("warren dev stopped");
    let status = dev.wait(Duration::from_secs(60));
    assert!(status.success(), "warren dev exited with {status}");
    for pid in &pids {
        assert!(!alive(*pid), "workload pid {pid} left running");
    }
    assert!(data_dir.join("admin.conf").exists(), "--data-dir is kept");
    for agent in ["edge-a1", "edge-b1"] {
        assert!(running_pids(&data_dir.join("agents").join(agent)).is_empty());
    }
}

/// `service ls` counts what runs, not what is placed: a crash-looping service and one whose
/// command does not exist show 0/1 next to the sample service's 2/2, and `service ps` says
/// why in words. A placement no node can take is accepted with a warning that says why, and
/// `service ps` and `service inspect` say it too.
#[test]
fn service_ls_and_ps_tell_what_runs_and_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let mut dev = Foreground::spawn(
        &["dev", "--data-dir", data_dir.to_str().unwrap()],
        dir.path().join("dev.stderr"),
    );
    dev.wait_for_line("warren dev ready");
    let config = data_dir.join("admin.conf");
    let config = config.to_str().unwrap();
    let admin = |args: &[&str]| ok(warren(&[&["--config", config], args].concat()));
    admin(&["service", "create", "crash", "--command", "sh -c 'exit 3'"]);
    admin(&[
        "service",
        "create",
        "nocmd",
        "--command",
        "no-such-command-here",
    ]);
    let running = |services: &serde_json::Value, name: &str| {
        services
            .as_array()
            .and_then(|all| all.iter().find(|s| s["spec"]["name"] == name))
            .and_then(|s| s["replicas_running"].as_u64())
    };
    common::wait_until(
        "web runs 2, crash and nocmd 0, as the agents report",
        Duration::from_secs(30),
        || {
            let listed = ok(warren(&["--config", config, "service", "ls", "-o", "json"]));
            let services: serde_json::Value = serde_json::from_str(&listed).ok()?;
            let reason = |name: &str| {
                let ps = ok(warren(&[
                    "--config", config, "service", "ps", name, "-o", "json",
                ]));
                let replicas: serde_json::Value = serde_json::from_str(&ps).ok()?;
                replicas[0]["message"].as_str().map(str::to_owned)
            };
            let crash = reason("crash")?;
            let nocmd = reason("nocmd")?;
            (running(&services, "web") == Some(2)
                && running(&services, "crash") == Some(0)
                && running(&services, "nocmd") == Some(0)
                && crash.contains("exited with code 3")
                && nocmd.contains("command not found: no-such-command-here"))
            .then_some(())
        },
    );
    // A failed replica waiting out its backoff shows no pid: its process is gone.
    let ps = admin(&["service", "ps", "crash", "-o", "json"]);
    let ps: serde_json::Value = serde_json::from_str(&ps).unwrap();
    assert!(ps[0]["pid"].is_null() || ps[0]["state"] != "failed", "{ps}");
    let table = admin(&["service", "ls"]);
    let replicas = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        [replicas("web"), replicas("crash"), replicas("nocmd")],
        ["2/2", "0/1", "0/1"],
        "{table}"
    );

    // Removed during its restart backoff, the crash-looping replica leaves every agent's
    // status: it is not shown running with a dead pid.
    admin(&["service", "rm", "crash"]);
    common::wait_until(
        "crash.1 leaves the agents' status",
        Duration::from_secs(30),
        || {
            let listed: Vec<String> = ["edge-a1", "edge-b1"]
                .iter()
                .filter_map(|agent| common::agent_status(&data_dir.join("agents").join(agent)))
                .flat_map(|status| {
                    status["replicas"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|r| r["replica"].as_str().map(str::to_owned))
                })
                .collect();
            (!listed.iter().any(|r| r == "crash.1")).then_some(())
        },
    );

    // Placements no node can take are accepted (a node may join later), and said at once.
    let created = warren(&[
        "--config",
        config,
        "service",
        "create",
        "far",
        "--command",
        "sleep 100",
        "--site",
        "madrid",
    ]);
    let warning = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{warning}");
    assert!(
        warning.contains("warning: service far: 1 replica pending: no node in site madrid"),
        "{warning}"
    );
    let ps = admin(&["service", "ps", "far"]);
    assert!(
        ps.contains("1 replica pending: no node in site madrid"),
        "{ps}"
    );
    admin(&[
        "service",
        "create",
        "picky",
        "--command",
        "sleep 100",
        "--constraint",
        "label.gpu==yes",
    ]);
    let inspected = admin(&["service", "inspect", "picky", "-o", "json"]);
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(
        inspected["pending_reason"], "no node matches constraint label.gpu==yes",
        "{inspected}"
    );

    // Two operators read picky at version 1; the second one's --if-version 1 update is
    // refused with both versions and changes nothing.
    let first = admin(&[
        "service",
        "update",
        "picky",
        "--if-version",
        "1",
        "--env",
        "WHO=first",
        "--detach",
    ]);
    assert!(first.contains("updated to version 2"), "{first}");
    let second = warren(&[
        "--config",
        config,
        "service",
        "update",
        "picky",
        "--if-version",
        "1",
        "--env",
        "WHO=second",
    ]);
    let refusal = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{refusal}");
    assert!(
        refusal.contains("service picky is at version 2, not 1 (--if-version)"),
        "{refusal}"
    );
    let inspected = admin(&["service", "inspect", "picky", "-o", "json"]);
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["spec"]["env"]["WHO"], "first", "{inspected}");

    // An update follows its rollout to the end: a line each time it moves, then the end.
    let rolled = admin(&["service", "update", "web", "--env", "ROUND=2"]);
    assert!(
        rolled.contains("service web updated to version 2"),
        "{rolled}"
    );
    assert!(rolled.contains("web: version 2: "), "{rolled}");
    let last = rolled.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("web: version 2 runs on 2/2 replicas ("),
        "{rolled}"
    );
    // With pending replicas it ends as soon as everything else runs, saying why, and fails.
    let pending = warren(&[
        "--config",
        config,
        "service",
        "update",
        "picky",
        "--env",
        "WHO=third",
    ]);
    let why = String::from_utf8_lossy(&pending.stderr);
    assert!(!pending.status.success(), "{why}");
    assert!(
        why.contains("service picky: 1 replica pending: no node matches constraint label.gpu==yes"),
        "{why}"
    );
    dev.signal("-TERM");
    dev.wait_for_line("warren dev stopped");
    assert!(dev.wait(Duration::from_secs(60)).success());
}
