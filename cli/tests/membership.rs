//! Control-plane membership with real `warren` processes: joins started at once all succeed,
//! and a control node removed with `warren node rm` stops with one line.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

mod common;
use common::{Foreground, command, control_init, ok};

fn admin(config: &Path, args: &[&str]) -> std::process::Output {
    command()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run warren")
}

fn json(config: &Path, args: &[&str]) -> serde_json::Value {
    let out = ok(admin(config, args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `warren control join` in the foreground as control node `name`, on loopback ports the
/// kernel picks.
fn spawn_join(dir: &Path, name: &str, join: &str, token: &str) -> Foreground {
    let data_dir = dir.join(name);
    Foreground::spawn(
        &[
            "control",
            "join",
            "--name",
            name,
            "--site",
            "central",
            "--join",
            join,
            "--token",
            token,
            "--api",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--metrics",
            "none",
            "--gossip",
            "none",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ],
        dir.join(format!("{name}.stderr.log")),
    )
}

fn terminate(node: &mut Foreground) -> ExitStatus {
    node.signal("-TERM");
    node.wait(Duration::from_secs(30))
}

/// Four `warren control join` processes started at the same moment against one init node:
/// every one becomes a voter (five in all), the registry holds each node once, none keeps the
/// token it was given with `--token` on its command line, and each process stops cleanly (exit
/// 0) on SIGTERM.
#[test]
fn four_control_joins_at_once_all_become_voters() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, quic, config) = control_init(dir.path());
    let token = ok(admin(&config, &["token", "create", "--role", "control"]))
        .trim()
        .to_owned();
    let names = ["c2", "c3", "c4", "c5"];
    let started = Instant::now();
    let mut joins: Vec<Foreground> = names
        .iter()
        .map(|name| spawn_join(dir.path(), name, &quic, &token))
        .collect();
    for join in &mut joins {
        join.wait_for_line(" serving ");
    }
    eprintln!("4 joins at once: all serving after {:?}", started.elapsed());
    // Given with --token, the token left the command line at once (a pipe holds it now).
    for join in &joins {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", join.child.id()))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        assert!(
            !cmdline.contains(&token),
            "the token stays in ps: {cmdline}"
        );
        assert!(cmdline.contains("--token-file /dev/fd/"), "{cmdline}");
    }

    let status = json(&config, &["cluster", "status", "-o", "json"]);
    let members = status["members"].as_array().expect("members");
    let voters = members.iter().filter(|m| m["voter"] == true).count();
    assert_eq!((members.len(), voters), (5, 5), "{status}");
    let nodes = json(&config, &["node", "ls", "-o", "json"]);
    let mut registered: Vec<String> = nodes
        .as_array()
        .expect("a list of nodes")
        .iter()
        .map(|n| n["node"]["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    registered.sort();
    assert_eq!(registered, ["c2", "c3", "c4", "c5", "ops-1"], "{nodes}");

    for (join, name) in joins.iter_mut().zip(names) {
        let status = terminate(join);
        assert!(status.success(), "{name} exited with {status:?}");
    }
    assert!(terminate(&mut first).success());
}

/// `warren node rm` of a control node: that node's process stops by itself, with a non-zero
/// exit and one line on stderr that says why — not an error a second about its revoked
/// certificate. The other two keep the quorum.
#[test]
fn a_control_node_removed_with_node_rm_stops_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, quic, config) = control_init(dir.path());
    let token = ok(admin(&config, &["token", "create", "--role", "control"]))
        .trim()
        .to_owned();
    let mut c2 = spawn_join(dir.path(), "c2", &quic, &token);
    c2.wait_for_line(" serving ");
    let mut c3 = spawn_join(dir.path(), "c3", &quic, &token);
    c3.wait_for_line(" serving ");

    let removed = ok(admin(&config, &["node", "rm", "c3"]));
    assert!(removed.contains("node c3 removed"), "{removed}");
    let status = c3.wait(Duration::from_secs(20));
    assert!(!status.success(), "{status:?}");
    let stderr = std::fs::read_to_string(dir.path().join("c3.stderr.log")).unwrap();
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("error: control node ") && last.contains("was removed from the cluster"),
        "{stderr}"
    );
    let revoked_errors = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("revoked"))
        .count();
    assert!(
        revoked_errors <= 2,
        "repeated errors before stopping:\n{stderr}"
    );

    let status = json(&config, &["cluster", "status", "-o", "json"]);
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{status}");
    ok(admin(
        &config,
        &["service", "create", "web", "--command", "sleep 1000"],
    ));
    assert!(terminate(&mut c2).success());
}
