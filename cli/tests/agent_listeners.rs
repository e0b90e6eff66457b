//! `warren agent` listeners and data dir, as real processes next to a `warren control init`:
//! what `agent join` is told is kept for `agent run`; a listener that cannot bind fails the
//! join before control hears of it, and at run is retried and shown as down everywhere until
//! it binds; a data dir that cannot hold an agent fails the join before control hears of it.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

mod common;
use common::{
    Foreground, READY_TIMEOUT, admin, agent_status, command, control_init, ok, running_pids,
    wait_until,
};

/// The nodes control knows, as `node ls -o json` gives them.
fn nodes(config: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&admin(config, &["node", "ls", "-o", "json"])).unwrap()
}

/// A plain `GET /metrics`; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

/// The `listeners` entry of an agent status (`status.json` or `node ls`) for `name`.
fn listener<'a>(listeners: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    listeners.as_array()?.iter().find(|l| l["listener"] == name)
}

/// Where `name` is up, from an agent status.
fn bound(status: &serde_json::Value, name: &str) -> Option<String> {
    let listener = listener(&status["listeners"], name)?;
    (listener["up"] == true).then(|| listener["addr"].as_str().unwrap().to_owned())
}

/// `agent join` fails before control hears of it when a listen port is taken or the data dir
/// is a file (or under one): the reason is one line, nothing is written, and no node is
/// registered (before, a ghost node was registered and a replica placed on it).
#[test]
fn agent_join_checks_its_listeners_and_data_dir_before_contacting_control() {
    let dir = tempfile::tempdir().unwrap();
    let (mut control, quic, config) = control_init(dir.path());
    let token = admin(&config, &["token", "create", "--role", "agent"]);
    let join = |data_dir: &Path, listen: &[&str]| {
        command()
            .args(["agent", "join", "--control", &quic, "--token", token.trim()])
            .arg("--data-dir")
            .arg(data_dir)
            .args(listen)
            .output()
            .unwrap()
    };
    let free = [
        "--metrics",
        "127.0.0.1:0",
        "--gossip",
        "127.0.0.1:0",
        "--dns",
    ];

    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let agent_dir = dir.path().join("agent");
    let refused = join(&agent_dir, &[&free[..], &[&taken_addr]].concat());
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("--dns {taken_addr}: cannot listen: "))
            && stderr.contains("in use"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!agent_dir.exists(), "nothing written");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for data_dir in [file.clone(), file.join("agent")] {
        let refused = join(&data_dir, &[&free[..], &["127.0.0.1:0"]].concat());
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(&format!("data dir {}", data_dir.display())),
            "{stderr}"
        );
    }
    let registered = nodes(&config);
    assert_eq!(registered.len(), 1, "only the control node: {registered:?}");

    control.signal("-TERM");
    control.wait(Duration::from_secs(30));
}

/// The listen addresses given at join are kept: `agent run` with no flags listens on the same
/// addresses, and the metrics address is in the node registry. At run (a reboot) a listener
/// whose port is taken does not stop the agent: it shows as down in `agent status` (human and
/// JSON), in `node ls` and in `warren_agent_listener_up`, is retried, and comes up once the
/// port is free. Started again with `--metrics` elsewhere, the registry records the new address.
#[test]
fn agent_run_keeps_join_listeners_and_retries_one_that_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let (mut control, quic, config) = control_init(dir.path());
    let token = admin(&config, &["token", "create", "--role", "agent"]);
    let agent_dir = dir.path().join("agent");
    let agent_dir_text = agent_dir.to_str().unwrap().to_owned();
    let any = "127.0.0.1:0";
    let mut agent = Foreground::spawn(
        &[
            &[
                "agent",
                "join",
                "--data-dir",
                &agent_dir_text,
                "--control",
                &quic,
            ][..],
            &["--token", token.trim(), "--name", "edge-1"],
            &["--metrics", any, "--gossip", any, "--dns", any],
        ]
        .concat(),
        dir.path().join("join.stderr.log"),
    );
    agent.wait_for_line(" running");
    admin(
        &config,
        &["service", "create", "web", "--command", "sleep 1000"],
    );
    let joined = wait_until("every listener up and a workload", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| {
            ["metrics", "dns", "gossip"]
                .iter()
                .all(|l| bound(s, l).is_some())
                && running_pids(s).len() == 1
        })
    });
    let addrs: Vec<String> = ["metrics", "dns", "gossip"]
        .iter()
        .map(|l| bound(&joined, l).unwrap())
        .collect();
    for addr in &addrs {
        assert!(!addr.ends_with(":0"), "port 0 resolved at join: {addr}");
    }
    let node = nodes(&config)
        .into_iter()
        .find(|n| n["node"]["role"] == "agent")
        .unwrap();
    assert_eq!(
        node["node"]["addresses"]["metrics"], addrs[0],
        "metrics registered at join: {node}"
    );
    agent.signal("-TERM");
    assert!(agent.wait(Duration::from_secs(30)).success());

    // Reboot with the DNS port taken (its UDP half is enough).
    let dns: SocketAddr = addrs[1].parse().unwrap();
    let squatter = UdpSocket::bind(dns).expect("take the DNS port");
    let mut agent = Foreground::spawn(
        &["agent", "run", "--data-dir", &agent_dir_text],
        dir.path().join("run.stderr.log"),
    );
    agent.wait_for_line(" running");
    let down = wait_until("DNS down, the rest up", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| {
            bound(s, "metrics").as_ref() == Some(&addrs[0])
                && bound(s, "gossip").as_ref() == Some(&addrs[2])
                && listener(&s["listeners"], "dns").is_some_and(|l| {
                    l["up"] == false && l["error"].as_str().is_some_and(|e| e.contains("in use"))
                })
        })
    });
    assert_eq!(running_pids(&down).len(), 1, "workloads run: {down}");
    let table = ok(command()
        .args(["agent", "status", "--data-dir", &agent_dir_text])
        .output()
        .unwrap());
    assert!(table.contains(&format!("{dns} DOWN: ")), "{table}");
    let metrics = scrape(&addrs[0]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("warren_agent_listener_up{listener=\"dns\"") && l.ends_with(" 0")
        ),
        "{metrics}"
    );
    wait_until("node ls shows DNS down", READY_TIMEOUT, || {
        let node = nodes(&config)
            .into_iter()
            .find(|n| n["node"]["role"] == "agent")?;
        let dns = listener(&node["agent"]["listeners"], "dns")?;
        (dns["up"] == false).then_some(())
    });
    // The gossip listener may still be reported as not started in the same report: wait for
    // the report in which only DNS is down.
    wait_until("node ls shows only DNS down", READY_TIMEOUT, || {
        admin(&config, &["node", "ls"])
            .contains(" dns down ")
            .then_some(())
    });

    // The port comes free: the listener binds on its next attempt.
    drop(squatter);
    wait_until("DNS up", READY_TIMEOUT, || {
        agent_status(&agent_dir).filter(|s| bound(s, "dns").as_ref() == Some(&addrs[1]))
    });
    let metrics = scrape(&addrs[0]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("warren_agent_listener_up{listener=\"dns\"") && l.ends_with(" 1")
        ),
        "{metrics}"
    );
    wait_until("node ls shows every listener up", READY_TIMEOUT, || {
        admin(&config, &["node", "ls"])
            .lines()
            .any(|l| l.contains("edge-1") && l.contains(" ok "))
            .then_some(())
    });

    agent.signal("-TERM");
    assert!(agent.wait(Duration::from_secs(30)).success());

    // Started again with its metrics elsewhere: the registry follows, so discovery does.
    let moved = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    let mut agent = Foreground::spawn(
        &[
            "agent",
            "run",
            "--data-dir",
            &agent_dir_text,
            "--metrics",
            &moved,
        ],
        dir.path().join("moved.stderr.log"),
    );
    agent.wait_for_line(" running");
    wait_until(
        "the moved metrics address registered",
        READY_TIMEOUT,
        || {
            let node = nodes(&config)
                .into_iter()
                .find(|n| n["node"]["role"] == "agent")?;
            (node["node"]["addresses"]["metrics"] == moved.as_str()).then_some(())
        },
    );
    agent.signal("-TERM");
    assert!(agent.wait(Duration::from_secs(30)).success());
    for pid in running_pids(&down) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    control.signal("-TERM");
    control.wait(Duration::from_secs(30));
}
