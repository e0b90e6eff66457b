//! Logs from the centre, with the real binary: control nodes and agents as `warren` processes,
//! workloads that print numbered lines on stdout and stderr, and `warren service logs` /
//! `warren logs` reading them through control. Every line carries its counter, so a follow can
//! be checked for lines lost or shown twice.
// The phases of a test are logged from the helpers that run them.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{Foreground, KillUnder, READY_TIMEOUT, command, control_init, ok, wait_until};

/// Prints `out N` and `err N` five times a second.
const PRINTER: &str =
    "sh -c 'i=0; while :; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); sleep 0.2; done'";

fn warren(config: &Path, args: &[&str]) -> Output {
    command()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run warren")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `warren agent join` child named `name` in `site`.
fn join_agent(dir: &Path, quic: &str, token: &str, name: &str, site: &str) -> Foreground {
    let data_dir = dir.join(name);
    let mut agent = Foreground::spawn(
        &[
            "agent",
            "join",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--control",
            quic,
            "--token",
            token,
            "--name",
            name,
            "--site",
            site,
            "--metrics",
            "none",
            "--gossip",
            "none",
            "--dns",
            "none",
            "--wireguard",
            "off",
        ],
        dir.join(format!("{name}.log")),
    );
    agent.wait_for_line(" running");
    agent
}

/// `(prefix, stream word, counter)` of a `web.1@edge-1 | out 7` line.
fn parse_line(line: &str) -> Option<(String, String, u64)> {
    let (prefix, text) = line.split_once(" | ")?;
    let (word, n) = text.split_once(' ')?;
    Some((prefix.to_owned(), word.to_owned(), n.parse().ok()?))
}

/// The lines of an output, parsed, in order.
fn parsed(stdout: &str) -> Vec<(String, String, u64)> {
    stdout.lines().filter_map(parse_line).collect()
}

/// Lines by `(prefix, stream)`, in order of arrival.
fn by_stream(lines: &[(String, String, u64)]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut streams: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (prefix, word, n) in lines {
        streams
            .entry((prefix.clone(), word.clone()))
            .or_default()
            .push(*n);
    }
    streams
}

/// Asserts that every stream's counters go up by one: nothing lost, nothing twice.
#[track_caller]
fn assert_consecutive(streams: &BTreeMap<(String, String), Vec<u64>>) {
    for (key, counters) in streams {
        for pair in counters.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{key:?}: {} follows {} (all: {counters:?})",
                pair[1],
                pair[0]
            );
        }
    }
}

/// A `warren … --follow` child whose stdout lines arrive on a channel.
struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follow {
    fn start(config: &Path, args: &[&str], stderr_log: PathBuf) -> Follow {
        let mut child = command()
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr_log).expect("create the follow's log"))
            .spawn()
            .expect("spawn warren");
        let out = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Follow { child, lines }
    }

    /// Collects lines until `done` says so, within `timeout`.
    #[track_caller]
    fn collect_until(
        &self,
        into: &mut Vec<(String, String, u64)>,
        timeout: Duration,
        done: impl Fn(&[(String, String, u64)]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(into) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the follow stalled; got {into:?}");
            if let Ok(line) = self.lines.recv_timeout(left) {
                into.extend(parse_line(&line));
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One control node, two agents in two sites, a service whose two replicas print numbered
/// lines. `service logs` shows both replicas' stdout and stderr, prefixed by replica and node;
/// `--tail`, `--since`, `--replica`, `logs REPLICA` and `-o json` narrow and shape it; bad
/// input gets one clear line; `--follow` sees new lines, none lost or twice; an agent that is
/// stopped (SIGSTOP: its link goes silent) is named as unavailable within seconds, and its
/// replica alone gives a non-zero exit.
#[test]
fn service_logs_from_two_agents() {
    let dir = tempfile::tempdir().unwrap();
    let _workloads = KillUnder(dir.path().to_owned());
    let (_control, quic, config) = control_init(dir.path());
    let admin = |args: &[&str]| ok(warren(&config, args));
    let token = admin(&["token", "create", "--role", "agent"]);
    let edge_1 = join_agent(dir.path(), &quic, token.trim(), "edge-1", "a");
    let edge_2 = join_agent(dir.path(), &quic, token.trim(), "edge-2", "b");
    eprintln!("--- a service printing on both agents");
    admin(&[
        "service",
        "create",
        "printer",
        "--command",
        PRINTER,
        "--replicas",
        "2",
    ]);
    let all = wait_until("lines of both replicas", READY_TIMEOUT, || {
        let output = warren(&config, &["service", "logs", "printer"]);
        let lines = parsed(&String::from_utf8_lossy(&output.stdout));
        let streams = by_stream(&lines);
        (output.status.success() && streams.len() == 4 && streams.values().all(|c| c.len() >= 20))
            .then_some(lines)
    });
    let streams = by_stream(&all);
    let prefixes: Vec<&str> = streams.keys().map(|(p, _)| p.as_str()).collect();
    assert!(
        prefixes.iter().any(|p| p.ends_with("@edge-1")),
        "{prefixes:?}"
    );
    assert!(
        prefixes.iter().any(|p| p.ends_with("@edge-2")),
        "{prefixes:?}"
    );
    assert_consecutive(&streams);
    for counters in streams.values() {
        assert_eq!(
            counters[0], 0,
            "a read from the start begins at the first line"
        );
    }
    let on_edge_2 = prefixes
        .iter()
        .find(|p| p.ends_with("@edge-2"))
        .and_then(|p| p.split('@').next())
        .expect("a replica on edge-2")
        .to_owned();

    check_narrowing(&config, &on_edge_2);
    check_global(&config);
    check_bad_input(&config);
    check_follow(&config, dir.path());
    check_cap(&config);
    check_cut_off(&config, &edge_2, &on_edge_2);
    drop(edge_1);
}

/// `--tail`, `--since`, `--replica`, `logs REPLICA` and `-o json`.
fn check_narrowing(config: &Path, replica: &str) {
    eprintln!("--- --tail, --replica, logs REPLICA, --since, -o json");
    let tail = ok(warren(
        config,
        &["service", "logs", "printer", "--tail", "3"],
    ));
    let per_prefix = tail
        .lines()
        .fold(BTreeMap::<&str, usize>::new(), |mut m, l| {
            *m.entry(l.split(" | ").next().unwrap_or("")).or_default() += 1;
            m
        });
    assert_eq!(per_prefix.len(), 2, "{tail}");
    assert!(
        per_prefix.values().all(|n| *n == 3),
        "three lines per replica: {tail}"
    );

    let slot = replica.split('.').nth(1).expect("a slot");
    let one = ok(warren(
        config,
        &["service", "logs", "printer", "--replica", slot],
    ));
    let by_logs = ok(warren(config, &["logs", replica, "--tail", "4"]));
    for output in [&one, &by_logs] {
        assert!(
            output
                .lines()
                .all(|l| l.starts_with(&format!("{replica}@edge-2 | "))),
            "{output}"
        );
    }
    assert_eq!(by_logs.lines().count(), 4, "{by_logs}");

    let asked_at_ms = warren_api::clock::unix_now_ms();
    let recent = ok(warren(
        config,
        &["service", "logs", "printer", "--since", "1s", "-o", "json"],
    ));
    let everything = ok(warren(config, &["service", "logs", "printer"]));
    let recent: Vec<serde_json::Value> = recent
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(!recent.is_empty(), "lines of the last second");
    assert!(
        recent.len() < everything.lines().count(),
        "--since left older lines out"
    );
    for line in &recent {
        let time_ms = line["time_ms"].as_u64().expect("a time");
        // Times are noted every second: a line may carry a time up to that much later.
        assert!(time_ms + 1_000 >= asked_at_ms - 1_000, "{line}");
        assert!(
            line["replica"].is_string() && line["node"].is_string(),
            "{line}"
        );
        assert!(["stdout", "stderr"].contains(&line["stream"].as_str().unwrap_or("")));
    }
    let stamped = ok(warren(
        config,
        &["logs", replica, "--tail", "1", "--timestamps"],
    ));
    assert!(
        stamped.starts_with("20") && stamped.contains(&format!("Z {replica}@edge-2 | ")),
        "{stamped}"
    );
}

/// A global service's replica is named by its node: `warren logs SERVICE.NODE_ID`.
fn check_global(config: &Path) {
    eprintln!("--- logs SERVICE.NODE_ID of a global service");
    ok(warren(
        config,
        &[
            "service",
            "create",
            "everywhere",
            "--command",
            PRINTER,
            "--global",
        ],
    ));
    let nodes: serde_json::Value =
        serde_json::from_str(&ok(warren(config, &["node", "ls", "-o", "json"]))).unwrap();
    let edge_1 = nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"]["name"] == "edge-1"))
        .and_then(|n| n["node"]["id"].as_str())
        .unwrap_or_else(|| panic!("edge-1 in {nodes}"))
        .to_owned();
    let replica = format!("everywhere.{edge_1}");
    let output = wait_until("lines of the global replica", READY_TIMEOUT, || {
        let output = warren(config, &["logs", &replica, "--tail", "2"]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success() && stdout.lines().count() == 2).then_some(stdout)
    });
    let prefix = format!("{replica}@edge-1 | ");
    assert!(output.lines().all(|l| l.starts_with(&prefix)), "{output}");
    ok(warren(config, &["service", "rm", "everywhere"]));
}

/// Unknown service and replica, bad flags: one line each, a non-zero exit, no panic. A
/// replica that could not start has no logs, and says so.
fn check_bad_input(config: &Path) {
    eprintln!("--- bad input");
    let cases: [(&[&str], &str); 6] = [
        (&["service", "logs", "nope"], "service nope not found"),
        (&["logs", "printer.9"], "replica printer.9 not found"),
        (
            &["logs", "printer"],
            "expected SERVICE.SLOT or SERVICE.NODE_ID",
        ),
        (
            &["service", "logs", "printer", "--tail", "100000"],
            "at most 10000",
        ),
        (
            &["service", "logs", "printer", "--since", "5 minutes"],
            "invalid duration",
        ),
        (
            &["service", "logs", "printer", "--replica", "other.1"],
            "not a replica of service printer",
        ),
    ];
    for (args, expected) in cases {
        let output = warren(config, args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    ok(warren(
        config,
        &[
            "service",
            "create",
            "nocmd",
            "--command",
            "no-such-command-here",
        ],
    ));
    let output = wait_until("the replica that could not start", READY_TIMEOUT, || {
        let output = warren(config, &["service", "logs", "nocmd"]);
        stderr_of(&output)
            .contains("could not start")
            .then_some(output)
    });
    assert!(!output.status.success(), "nothing could be read");
    assert!(
        stderr_of(&output).contains("no logs could be read"),
        "{output:?}"
    );
    ok(warren(config, &["service", "rm", "nocmd"]));
}

/// `--follow --tail 1` goes on with new lines of both replicas, none lost or twice.
fn check_follow(config: &Path, dir: &Path) {
    eprintln!("--- --follow");
    let follow = Follow::start(
        config,
        &["service", "logs", "printer", "--follow", "--tail", "1"],
        dir.join("follow.log"),
    );
    let mut lines = Vec::new();
    follow.collect_until(&mut lines, Duration::from_secs(30), |lines| {
        let streams = by_stream(lines);
        streams.len() == 4 && streams.values().all(|c| c.len() >= 10)
    });
    assert_consecutive(&by_stream(&lines));
}

/// A replica that wrote 3 MB: one answer holds at most 1 MiB of text, the newest, and says
/// it was cut.
fn check_cap(config: &Path) {
    eprintln!("--- a 3 MB log and the cap of one answer");
    let big = "sh -c 'yes 0123456789abcdefghij | head -c 3000000; sleep 100000'";
    ok(warren(
        config,
        &[
            "service",
            "create",
            "big",
            "--command",
            big,
            "--replicas",
            "1",
        ],
    ));
    let output = wait_until("the big log is cut", READY_TIMEOUT, || {
        let output = warren(config, &["service", "logs", "big"]);
        stderr_of(&output)
            .contains("output cut at 1024 KiB")
            .then_some(output)
    });
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text_bytes: usize = stdout
        .lines()
        .map(|l| l.split_once(" | ").map_or(0, |(_, text)| text.len() + 1))
        .sum();
    assert!(text_bytes <= 1024 * 1024, "{text_bytes} bytes of text");
    assert!(text_bytes > 900 * 1024, "{text_bytes} bytes of text");
    assert!(
        stdout
            .lines()
            .all(|l| l.ends_with("| 0123456789abcdefghij"))
    );
    // A tail within the cap is not cut, and says nothing.
    let tail = warren(config, &["service", "logs", "big", "--tail", "5"]);
    assert_eq!(String::from_utf8_lossy(&tail.stdout).lines().count(), 5);
    assert!(!stderr_of(&tail).contains("output cut"), "{tail:?}");
    ok(warren(config, &["service", "rm", "big"]));
}

/// A stopped agent: its replicas are named unavailable, with when it was last heard from,
/// within seconds; the other replica is still read (exit 0); its replica alone exits non-zero.
fn check_cut_off(config: &Path, edge_2: &Foreground, replica: &str) {
    eprintln!("--- edge-2's agent stopped");
    edge_2.signal("-STOP");
    // Past the silence after which control answers at once.
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    let output = warren(config, &["service", "logs", "printer", "--tail", "2"]);
    let took = started.elapsed();
    let stderr = stderr_of(&output);
    assert!(
        output.status.success(),
        "the other replica was read: {stderr}"
    );
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert!(
        stderr.contains(&format!("logs of {replica}@edge-2 unavailable"))
            && stderr.contains("last heard from"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("@edge-1 | "),
        "{output:?}"
    );
    let alone = warren(config, &["logs", replica]);
    assert!(!alone.status.success(), "nothing could be read");
    assert!(
        stderr_of(&alone).contains("no logs could be read"),
        "{alone:?}"
    );
    edge_2.signal("-CONT");
}

/// A `warren control init|join` child on 127.0.0.1 with kernel-picked ports.
fn control_node(dir: &Path, name: &str, args: &[&str]) -> (Foreground, String, String) {
    let data_dir = dir.join(name);
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let mut full = vec!["control"];
    full.extend_from_slice(args);
    full.extend_from_slice(&[
        "--name",
        name,
        "--site",
        "central",
        "--api",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
        "--metrics",
        "none",
        "--gossip",
        "none",
        "--data-dir",
        data_dir,
    ]);
    let mut node = Foreground::spawn(&full, dir.join(format!("{name}.stderr.log")));
    let ready = node.wait_for_line(" serving ");
    let word = |prefix: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {ready:?}"))
            .to_owned()
    };
    let (api, quic) = (word("api="), word("quic="));
    (node, api, quic)
}

/// Three control nodes; two agents in two sites stream to the first, the leader, and a
/// `--follow` goes through it. After `kill -9` of the leader, the follow carries on through
/// another control node once the agents have moved there, from where it stood: no line lost,
/// none twice. Before that, a read through another member is relayed to the leader, which
/// holds the agents' links.
#[test]
fn a_follow_survives_the_loss_of_its_control_node() {
    let dir = tempfile::tempdir().unwrap();
    let _workloads = KillUnder(dir.path().to_owned());
    let (mut c1, c1_api, c1_quic) = control_node(dir.path(), "c1", &["init"]);
    let config = dir.path().join("c1").join("admin.conf");
    let admin = |args: &[&str]| ok(warren(&config, args));
    let token = admin(&["token", "create", "--role", "control"]);
    let join = ["join", "--join", c1_quic.as_str(), "--token", token.trim()];
    let (_c2, c2_api, _) = control_node(dir.path(), "c2", &join);
    let (_c3, c3_api, _) = control_node(dir.path(), "c3", &join);
    wait_until("admin.conf lists every control node", READY_TIMEOUT, || {
        let text = std::fs::read_to_string(&config).ok()?;
        [&c1_api, &c2_api, &c3_api]
            .iter()
            .all(|api| text.contains(api.as_str()))
            .then_some(())
    });
    let agent_token = admin(&["token", "create", "--role", "agent"]);
    let _edge_1 = join_agent(dir.path(), &c1_quic, agent_token.trim(), "edge-1", "a");
    let _edge_2 = join_agent(dir.path(), &c1_quic, agent_token.trim(), "edge-2", "b");
    admin(&[
        "service",
        "create",
        "printer",
        "--command",
        PRINTER,
        "--replicas",
        "2",
    ]);

    eprintln!("--- a read through c2, relayed by c1 which holds the agents' links");
    let relayed = wait_until("a read through c2", READY_TIMEOUT, || {
        let output = warren(&config, &["service", "logs", "printer", "--api", &c2_api]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let streams = by_stream(&parsed(&stdout));
        let enough = streams.len() == 4 && streams.values().all(|c| c.len() > 3);
        (output.status.success() && enough).then_some(stdout)
    });
    assert_consecutive(&by_stream(&parsed(&relayed)));

    eprintln!("--- follow through c1");
    let follow = Follow::start(
        &config,
        &["service", "logs", "printer", "--follow"],
        dir.path().join("follow.log"),
    );
    let mut lines = Vec::new();
    follow.collect_until(&mut lines, READY_TIMEOUT, |lines| {
        let streams = by_stream(lines);
        streams.len() == 4 && streams.values().all(|c| c.len() >= 5)
    });
    let status: serde_json::Value =
        serde_json::from_str(&admin(&["cluster", "status", "-o", "json"])).unwrap();
    let leader = (status["members"].as_array())
        .and_then(|members| members.iter().find(|m| m["leader"] == true))
        .map(|m| m["name"].clone());
    assert_eq!(leader, Some("c1".into()), "c1 leads after init: {status}");
    eprintln!("--- kill -9 c1, the leader");
    c1.child.kill().expect("SIGKILL c1");
    c1.child.wait().expect("reap c1");
    let before = lines.len();
    follow.collect_until(&mut lines, Duration::from_secs(90), |lines| {
        let streams = by_stream(&lines[before..]);
        streams.len() == 4 && streams.values().all(|c| c.len() >= 10)
    });
    assert_consecutive(&by_stream(&lines));
    let follow_log = std::fs::read_to_string(dir.path().join("follow.log")).unwrap_or_default();
    eprintln!("the follow's stderr:\n{follow_log}");
}
