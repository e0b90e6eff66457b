//! Prometheus across sites, with real Prometheus servers and the real binary: a control node
//! and three agents in two sites as `warren` processes, a workload that serves its own
//! metrics, one Prometheus per site configured by `warren prometheus config --site` (its
//! targets found through the agents' service discovery) and a central one configured by
//! `warren prometheus config --central` that federates both.
//!
//! The central server's `/api/v1/query` answers with Warren series of both sites, labelled
//! with their site and node names as Warren exports them (no relabelling anywhere). Then site
//! porto is cut off from the centre: the control node is frozen (SIGSTOP: every agent loses its
//! link) and the centre's link to porto's Prometheus (a TCP relay in this test, the WAN) drops
//! everything. Porto's agent is restarted meanwhile, with no control plane to ask: it serves
//! the same discovery from its cache, and porto's own Prometheus keeps scraping it (the new
//! process, its link down) and evaluates its alerts; the central one sees porto's federation
//! fail; after the heal the central one has fresh porto series again.
//!
//! Needs `prometheus`, `promtool` (Debian's prometheus package) and `python3` (the workload):
//! skips with the reason otherwise, fails under `CI=true`.
#![allow(clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;
use common::{Foreground, KillUnder, command, control_init_with, ok, wait_until};

/// Prometheus needs a few seconds before its first samples; federation adds a scrape more.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// What this host lacks for these tests, if anything.
fn missing_prerequisite() -> Option<String> {
    let missing: Vec<&str> = ["prometheus", "promtool", "python3"]
        .into_iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    (!missing.is_empty())
        .then(|| format!("needs {} (Debian: prometheus, python3)", missing.join(", ")))
}

/// Whether the test may run: prints why not and returns false, or fails under `CI=true`.
fn may_run(test: &str) -> bool {
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!under_ci, "{test} needs what this host lacks: {why}");
    eprintln!("skipping {test}: {why}");
    false
}

/// A free loopback port (bound and released: the race with another process is accepted).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// `GET path` on `addr` over HTTP/1.0: the status and body, or `None` if nothing answered.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of the test's own on a loopback port; killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` on `port` with `config` and its data in `dir`.
    fn start(dir: &Path, port: u16, config: &Path) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the log"))
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, log }
    }

    /// The result vector of an instant query, empty while the server cannot answer.
    fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let Some((200, body)) = http_get(&self.addr, &path) else {
            return Vec::new();
        };
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The names of the alerting rules the server has loaded.
    fn alert_rules(&self) -> Vec<String> {
        let Some((200, body)) = http_get(&self.addr, "/api/v1/rules?type=alert") else {
            return Vec::new();
        };
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let groups = answer["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// The alerts pending or firing now, as `(name, state, node label)`.
    fn alerts(&self) -> Vec<(String, String, String)> {
        let Some((200, body)) = http_get(&self.addr, "/api/v1/alerts") else {
            return Vec::new();
        };
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let alerts = answer["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        alerts
            .iter()
            .map(|a| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
                (
                    text(&a["labels"]["alertname"]),
                    text(&a["state"]),
                    text(&a["labels"]["node"]),
                )
            })
            .collect()
    }

    /// Waits until `query` has a result `check` accepts; returns that result.
    #[track_caller]
    fn wait_for(
        &self,
        what: &str,
        query: &str,
        check: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let result = self.query(query);
            if check(&result) {
                return result;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {query} gives {result:?}; log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metrics address an agent listens on, from its `agent.json` (port 0 resolved at join).
fn node_metrics_addr(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("agent.json")).expect("read agent.json");
    let identity: serde_json::Value = serde_json::from_str(&text).expect("agent.json is JSON");
    identity["listen"]["metrics"]
        .as_str()
        .expect("agent.json names the metrics address")
        .to_owned()
}

/// The value of a result sample (`[time, "value"]`).
fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn label<'a>(sample: &'a serde_json::Value, name: &str) -> &'a str {
    sample["metric"][name].as_str().unwrap_or("")
}

/// A TCP relay standing in for the WAN between the centre and a site: it forwards to
/// `target` until cut, then refuses and drops everything until healed.
struct Relay {
    addr: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("relay address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (cut_flag, open_list) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if cut_flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        open_list.lock().expect("relay list").push(clone);
                    }
                }
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(server, client);
            }
        });
        Relay { addr, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().expect("relay list").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` into `to` on a thread of its own until either end closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn warren(config: &Path, args: &[&str]) -> Output {
    command()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run warren")
}

/// `warren agent join` as `name` in `site`, metrics and gossip on free loopback ports.
fn join(dir: &Path, quic: &str, token: &str, name: &str, site: &str) -> Foreground {
    let data_dir = dir.join(name);
    let mut agent = Foreground::spawn(
        &[
            "agent",
            "join",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--workloads-dir",
            dir.join(format!("{name}-workloads"))
                .to_str()
                .expect("utf-8 path"),
            "--control",
            quic,
            "--token",
            token,
            "--name",
            name,
            "--site",
            site,
            "--metrics",
            "127.0.0.1:0",
            "--gossip",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--wireguard",
            "off",
        ],
        dir.join(format!("{name}.log")),
    );
    agent.wait_for_line(" running");
    agent
}

/// `warren prometheus config ARGS --out DIR`, checked by promtool, with the scrape and
/// evaluation intervals cut to 1 s so that the test does not wait on them; returns the
/// configuration's path.
fn prometheus_config(config: &Path, args: &[&str], dir: &Path) -> PathBuf {
    let out = dir.to_str().expect("utf-8 path");
    let mut full = vec!["prometheus", "config"];
    full.extend(args);
    full.extend(["--out", out]);
    ok(warren(config, &full));
    let path = dir.join("prometheus.yml");
    ok(Command::new("promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
        .expect("run promtool"));
    let text = std::fs::read_to_string(&path).expect("read the configuration");
    std::fs::write(&path, text.replace(": 15s", ": 1s")).expect("write the configuration");
    path
}

/// A process workload serving `demo_requests_total 42` at `http://127.0.0.1:PORT/metrics`.
fn stats_command(port: u16) -> String {
    format!(
        "sh -c 'mkdir -p www && printf \"# TYPE demo_requests_total counter\\ndemo_requests_total 42\\n\" \
         > www/metrics && exec python3 -m http.server {port} --bind 127.0.0.1 --directory www'"
    )
}

#[test]
fn two_sites_are_discovered_federated_and_scraped_through_a_cut() {
    let test = "two_sites_are_discovered_federated_and_scraped_through_a_cut";
    if !may_run(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _workloads = KillUnder(dir.path().to_owned());
    let control_metrics = free_port();
    let metrics = format!("127.0.0.1:{control_metrics}");
    let (control, quic, config) =
        control_init_with(dir.path(), &["--metrics", &metrics, "--gossip", "none"]);
    let token = ok(warren(&config, &["token", "create", "--role", "agent"]));
    let token = token.trim();
    let _lisbon_agents = [
        join(dir.path(), &quic, token, "edge-a1", "lisbon"),
        join(dir.path(), &quic, token, "edge-a2", "lisbon"),
    ];
    let porto_agent = join(dir.path(), &quic, token, "edge-p1", "porto");

    // A workload that serves its own metrics, on edge-a1.
    let stats_port = free_port();
    ok(warren(
        &config,
        &[
            "service",
            "create",
            "stats",
            "--command",
            &stats_command(stats_port),
            "--constraint",
            "node.name==edge-a1",
            "--metrics-port",
            &stats_port.to_string(),
        ],
    ));
    let stats_addr = format!("127.0.0.1:{stats_port}");
    wait_until(
        "the workload serves its metrics",
        Duration::from_secs(30),
        || http_get(&stats_addr, "/metrics").filter(|(status, _)| *status == 200),
    );

    // One Prometheus per site and a central one, each configured by warren.
    let (lisbon_port, porto_port, central_port) = (free_port(), free_port(), free_port());
    let porto_wan = Relay::start(format!("127.0.0.1:{porto_port}"));
    let site = |name: &str, port: u16| {
        let site_dir = dir.path().join(format!("prometheus-{name}"));
        let path = prometheus_config(&config, &["--site", name], &site_dir);
        Prometheus::start(&site_dir, port, &path)
    };
    let lisbon = site("lisbon", lisbon_port);
    let porto = site("porto", porto_port);
    let central_dir = dir.path().join("prometheus-central");
    let federate_lisbon = format!("lisbon=127.0.0.1:{lisbon_port}");
    let federate_porto = format!("porto={}", porto_wan.addr);
    let central_config = prometheus_config(
        &config,
        &[
            "--central",
            "--federate",
            &federate_lisbon,
            "--federate",
            &federate_porto,
        ],
        &central_dir,
    );
    let central = Prometheus::start(&central_dir, central_port, &central_config);

    check_federation(&central);
    check_workload_scraped(&lisbon);
    for (server, alert) in [
        (&central, "WarrenControlNoLeader"),
        (&central, "WarrenServiceReplicasBelowDesired"),
        (&lisbon, "WarrenAgentLinkDown"),
        (&porto, "WarrenServiceCrashLooping"),
    ] {
        let loaded = server.alert_rules();
        assert!(
            loaded.iter().any(|name| name == alert),
            "{alert} not in {loaded:?}"
        );
    }
    check_every_name_the_rules_use_is_exported(&central);
    let cut = Cut {
        control: &control,
        porto_wan: &porto_wan,
        porto_agent,
        porto_agent_dir: dir.path().join("edge-p1"),
    };
    check_cut_and_heal(cut, &central, &porto);
    drop(central);
    drop(lisbon);
}

/// The central server holds every agent's series, by site and node name, with its node id,
/// and the control node's own.
fn check_federation(central: &Prometheus) {
    let agents = central.wait_for(
        "every agent's series at the centre",
        "warren_agent_link_up",
        |r| r.len() == 3,
    );
    let mut seen: Vec<(String, String)> = agents
        .iter()
        .map(|s| (label(s, "site").to_owned(), label(s, "node").to_owned()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("lisbon".to_owned(), "edge-a1".to_owned()),
            ("lisbon".to_owned(), "edge-a2".to_owned()),
            ("porto".to_owned(), "edge-p1".to_owned()),
        ]
    );
    for sample in &agents {
        let node_id = label(sample, "node_id");
        assert!(
            node_id.len() == 16 && node_id.chars().all(|c| c.is_ascii_hexdigit()),
            "{sample}"
        );
        assert_eq!(label(sample, "role"), "agent", "{sample}");
    }
    let control = central.wait_for(
        "the control node scraped by the centre",
        "warren_raft_is_leader",
        |r| r.len() == 1 && value(&r[0]) == 1.0,
    );
    assert_eq!(label(&control[0], "node"), "ops-1");
    assert_eq!(label(&control[0], "site"), "central");
    assert_eq!(label(&control[0], "job"), "warren-control");
}

/// The metric names in the shipped rules and dashboard, without their comments.
fn names_the_shipped_files_use() -> std::collections::BTreeSet<String> {
    let files = [
        include_str!("../../deploy/prometheus/rules/site.yml"),
        include_str!("../../deploy/prometheus/rules/central.yml"),
        include_str!("../../deploy/grafana/warren-fleet.json"),
    ];
    files
        .iter()
        .flat_map(|text| text.lines().filter(|l| !l.trim_start().starts_with('#')))
        .flat_map(|line| line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| word.starts_with("warren_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Every metric the shipped rules and dashboard use is one this live cluster exports, as the
/// central server holds it (a histogram's `_bucket`, `_sum` and `_count` series included).
fn check_every_name_the_rules_use_is_exported(central: &Prometheus) {
    let used = names_the_shipped_files_use();
    assert!(used.len() > 20, "{used:?}");
    let deadline = std::time::Instant::now() + PROMETHEUS_TIMEOUT;
    loop {
        let known: std::collections::BTreeSet<String> =
            http_get(&central.addr, "/api/v1/label/__name__/values")
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v["data"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
        let missing: Vec<&String> = used.iter().filter(|n| !known.contains(*n)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shipped rules and dashboard use metrics the cluster does not export: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Lisbon's server scrapes the workload that declared its metrics endpoint, labelled with
/// its service, replica, node and site.
fn check_workload_scraped(lisbon: &Prometheus) {
    let demo = lisbon.wait_for(
        "the workload's own metrics at its site",
        "demo_requests_total",
        |r| r.len() == 1,
    );
    let sample = &demo[0];
    assert_eq!(value(sample), 42.0);
    assert_eq!(label(sample, "service"), "stats");
    assert!(label(sample, "replica").starts_with("stats."), "{sample}");
    assert_eq!(label(sample, "node"), "edge-a1");
    assert_eq!(label(sample, "site"), "lisbon");
    assert_eq!(label(sample, "job"), "warren-workloads");
}

/// Porto cut off from the centre keeps being scraped by its own server; the centre sees it
/// again after the heal.
/// What cuts porto off from the centre, and porto's agent (restarted while cut off).
struct Cut<'a> {
    control: &'a Foreground,
    porto_wan: &'a Relay,
    porto_agent: Foreground,
    porto_agent_dir: PathBuf,
}

fn check_cut_and_heal(cut: Cut<'_>, central: &Prometheus, porto: &Prometheus) {
    let Cut {
        control,
        porto_wan,
        mut porto_agent,
        porto_agent_dir,
    } = cut;
    let metrics = node_metrics_addr(&porto_agent_dir);
    let discovered = http_get(&metrics, "/sd/nodes").expect("the agent serves discovery");
    control.signal("-STOP");
    porto_wan.cut();
    let cut_at = unix_now();
    eprintln!("porto cut off from the centre");
    // The agent restarts with no control plane: it serves the same discovery from its cache.
    porto_agent.signal("-KILL");
    porto_agent.wait(Duration::from_secs(10));
    let data_dir = porto_agent_dir.to_str().expect("utf-8 path");
    let mut porto_agent = Foreground::spawn(
        &["agent", "run", "--data-dir", data_dir],
        porto_agent_dir.with_extension("run.log"),
    );
    porto_agent.wait_for_line(" running");
    let after_restart = wait_until(
        "discovery from the restarted agent",
        Duration::from_secs(30),
        || http_get(&metrics, "/sd/nodes").filter(|(status, _)| *status == 200),
    );
    assert_eq!(
        after_restart, discovered,
        "discovery served from the cache while cut off"
    );
    porto.wait_for(
        "porto's server to scrape the restarted agent",
        r#"process_start_time_seconds{node="edge-p1"}"#,
        // Whole seconds, from the boot time the kernel gives in whole seconds: up to 2 s off.
        |r| r.len() == 1 && value(&r[0]) >= cut_at - 2.0,
    );
    porto.wait_for(
        "porto's server to see its agent's link down (scraped while cut off)",
        r#"warren_agent_link_up{node="edge-p1"} == 0"#,
        |r| r.len() == 1,
    );
    porto.wait_for(
        "porto's agent still a target of porto's server",
        r#"up{job="warren", node="edge-p1"} == 1"#,
        |r| r.len() == 1,
    );
    wait_until(
        "porto's own server to evaluate the link-down alert while cut off",
        PROMETHEUS_TIMEOUT,
        || {
            porto.alerts().into_iter().find(|(name, state, node)| {
                name == "WarrenAgentLinkDown" && state == "pending" && node == "edge-p1"
            })
        },
    );
    central.wait_for(
        "the centre to lose porto's federation",
        r#"up{job="warren-federate", site="porto"} == 0"#,
        |r| r.len() == 1,
    );

    control.signal("-CONT");
    porto_wan.heal();
    let healed_at = unix_now();
    eprintln!("porto healed");
    central.wait_for(
        "fresh porto series at the centre, its link up again",
        r#"timestamp(warren_agent_link_up{site="porto"} == 1)"#,
        |r| r.len() == 1 && value(&r[0]) > healed_at,
    );
}
