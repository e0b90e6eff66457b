//! Fleet scale: what one control plane carries. Real `warren control` processes (1 or 3 nodes,
//! each on its own 127.0.91.x) and a fleet of simulated agents in this process
//! (`warren_tests::fleet_sim`: each with its own certificate from a real join, its own QUIC
//! endpoint on its own 127.100.x.y, the real agent protocol, no workloads). For each fleet
//! size it prints:
//! - joins: how long the fleet took to join (32 at a time);
//! - first sync: every agent connected and holding a view;
//! - idle: control RSS and CPU with heartbeats only;
//! - propagation: a global service created → the view holding it acked by every agent
//!   (p50/p99/max over agents and rounds), and control CPU meanwhile;
//! - one service changed (an env var of a service on a tenth of the fleet): how many agents got
//!   a delta, and the bytes sent;
//! - reconnect storm: every control node killed (SIGKILL) and started again → every agent
//!   connected and current; peak control RSS;
//! - spread: agents per control node, before and after the storm.
//!
//! It prints figures and asserts nothing about speed. Run it with
//! `cargo build --release -p warren-cli && cargo bench -p warren-tests --bench fleet --
//! --agents 100,1000 --controls 1` (`--controls 3` for a three-node control plane,
//! `--per-site N` agents per site, default 100; `WARREN_BENCH_QUICK=1` for a smoke run).
//! `WARREN_BIN` names the binary when it is not next to this bench's executable;
//! `WARREN_BENCH_KEEP=1` keeps the control nodes' data dirs and logs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fixtures::{Summary, ms, progress, warren_binary};
use tokio::process::{Child, Command};
use warren_tests::fleet_sim::{self, Fleet, Probe, SimIdentity};

/// Agents joining at once.
const JOINS_AT_ONCE: usize = 32;
/// Bound on anything the bench waits for.
const LIMIT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
struct Args {
    agents: Vec<usize>,
    controls: usize,
    per_site: usize,
    rounds: usize,
    idle: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let quick = std::env::var_os("WARREN_BENCH_QUICK").is_some();
    let mut args = Args {
        agents: if quick { vec![20] } else { vec![100, 1000] },
        controls: 1,
        per_site: 100,
        rounds: if quick { 2 } else { 5 },
        idle: Duration::from_secs(if quick { 3 } else { 20 }),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--agents" => {
                args.agents = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--agents N[,N...]")?;
            }
            "--controls" => args.controls = value()?.parse().context("--controls 1|3")?,
            "--per-site" => args.per_site = value()?.parse().context("--per-site N")?,
            "--rounds" => args.rounds = value()?.parse().context("--rounds N")?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(
        args.controls >= 1 && args.per_site >= 1,
        "counts must be positive"
    );
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    raise_fd_limit();
    warren_transport::install_crypto_provider();
    let bin = warren_binary()?;
    println!(
        "fleet bench: {} (controls: {})",
        bin.display(),
        args.controls
    );
    println!(
        "machine: {} cores; control: real `warren` processes; agents: simulated in this process",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for &agents in &args.agents {
        let mut figures = Figures::default();
        let result = runtime.block_on(run(&bin, &args, agents, &mut figures));
        // What was measured before a step failed is still worth seeing.
        if let Err(error) = &result {
            println!(
                "\nFAILED: {error:#}; the figures of that step and later ones are not measured"
            );
        }
        figures.print(agents, args.controls);
        result?;
    }
    Ok(())
}

/// Simulated agents each hold a UDP socket; the default soft limit (1024) is too low.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

// ---------------------------------------------------------------------------------------------
// The control plane: real processes
// ---------------------------------------------------------------------------------------------

struct ControlProc {
    name: String,
    dir: PathBuf,
    ip: String,
    child: Child,
}

impl ControlProc {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn quic(&self) -> String {
        format!("{}:7101", self.ip)
    }
}

struct ControlPlane {
    bin: PathBuf,
    root: PathBuf,
    nodes: Vec<ControlProc>,
}

impl ControlPlane {
    async fn start(bin: &Path, root: &Path, count: usize) -> anyhow::Result<Self> {
        let mut plane = ControlPlane {
            bin: bin.to_owned(),
            root: root.to_owned(),
            nodes: Vec::new(),
        };
        for index in 0..count {
            let name = format!("c{}", index + 1);
            let ip = format!("127.0.91.{}", index + 1);
            let dir = root.join(&name);
            let mut args: Vec<String> = vec!["control".into()];
            if index == 0 {
                args.extend(["init".into(), "--overlay-range".into(), "10.0.0.0/8".into()]);
            } else {
                let token = plane.cli(&["token", "create", "--role", "control"]).await?;
                let file = root.join(format!("{name}.token"));
                std::fs::write(&file, token.trim())?;
                args.extend(["join".into(), "--join".into(), plane.nodes[0].quic()]);
                args.extend(["--token-file".into(), file.display().to_string()]);
            }
            for (flag, value) in [
                ("--data-dir", dir.display().to_string()),
                ("--name", name.clone()),
                ("--site", "central".into()),
                ("--api", format!("{ip}:7100")),
                ("--quic", format!("{ip}:7101")),
                ("--gossip", "none".into()),
                ("--metrics", "none".into()),
            ] {
                args.extend([flag.into(), value]);
            }
            let child = spawn_serving(bin, &args, root, &name).await?;
            plane.nodes.push(ControlProc {
                name,
                dir,
                ip,
                child,
            });
        }
        Ok(plane)
    }

    /// Runs `warren ARGS` with the first node's admin.conf; its stdout.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("WARREN_CONFIG", self.root.join("c1").join("admin.conf"))
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "warren {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A write's revision (`-o json`).
    async fn write(&self, args: &[&str]) -> anyhow::Result<(u64, u64)> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all).await?;
        let json: serde_json::Value = serde_json::from_str(&out).context("write result")?;
        let revision = json["revision"].as_u64().context("revision")?;
        Ok((revision, json["version"].as_u64().unwrap_or(0)))
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(ControlProc::pid).collect()
    }

    fn quic_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.nodes
            .iter()
            .filter_map(|n| n.quic().parse().ok())
            .collect()
    }

    /// SIGKILL every node, then `control run` each again; returns once all serve.
    async fn restart_all(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.child.start_kill()?;
            node.child.wait().await?;
        }
        for node in &mut self.nodes {
            let dir = node.dir.display().to_string();
            let args = ["control", "run", "--data-dir", &dir].map(String::from);
            let log = format!("{}-restarted", node.name);
            node.child = spawn_serving(&self.bin, &args, &self.root, &log).await?;
        }
        Ok(())
    }

    async fn stop(mut self) {
        for node in &mut self.nodes {
            let _ = node.child.start_kill();
            let _ = node.child.wait().await;
        }
    }
}

/// Starts `warren ARGS` with its output in `root/<log>.out|.err` and waits until it says it
/// serves.
async fn spawn_serving(
    bin: &Path,
    args: &[String],
    root: &Path,
    log: &str,
) -> anyhow::Result<Child> {
    let out_path = root.join(format!("{log}.out"));
    let out = std::fs::File::create(&out_path)?;
    let err = std::fs::File::create(root.join(format!("{log}.err")))?;
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if text.contains("serving") {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "warren {} exited with {status} (see {log}.err)",
                args.join(" ")
            );
        }
        ensure!(
            Instant::now() < deadline,
            "warren {log} not serving after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------------

/// utime + stime of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU use of some processes over a window: start one, read it at the end.
struct CpuWindow {
    pids: Vec<String>,
    ticks: Vec<u64>,
    started: Instant,
}

impl CpuWindow {
    fn start(pids: &[String]) -> Self {
        CpuWindow {
            pids: pids.to_vec(),
            ticks: pids.iter().map(|p| cpu_ticks(p)).collect(),
            started: Instant::now(),
        }
    }

    /// Per process, the share of one core used since the start, in percent.
    fn percent(&self) -> Vec<f64> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-3);
        self.pids
            .iter()
            .zip(&self.ticks)
            .map(|(pid, before)| (cpu_ticks(pid).saturating_sub(*before)) as f64 / wall)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// One fleet size
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Figures {
    joins: Duration,
    first_sync: Duration,
    first_sync_bytes_per_agent: u64,
    peers: Vec<u64>,
    peers_global: Vec<u64>,
    idle_rss_mib: Vec<f64>,
    idle_cpu: Vec<f64>,
    sim_idle_cpu: f64,
    propagation: Vec<Duration>,
    last_agent: Vec<Duration>,
    busy_cpu: Vec<f64>,
    change_agents: usize,
    change_touched: usize,
    change_bytes: u64,
    create_bytes_per_agent: u64,
    storm: Duration,
    storm_restarted: Duration,
    storm_snapshots: u64,
    storm_peak_rss_mib: Vec<f64>,
    storm_cpu: Vec<f64>,
    spread: Vec<usize>,
    spread_after: Vec<usize>,
}

async fn run(bin: &Path, args: &Args, agents: usize, figures: &mut Figures) -> anyhow::Result<()> {
    let root = bench_root(agents)?;
    progress(&format!(
        "{agents} agents: start {} control node(s)",
        args.controls
    ));
    let mut plane = ControlPlane::start(bin, &root, args.controls).await?;
    let identities = join_fleet(&plane, agents, args.per_site, figures).await?;
    let started = Instant::now();
    let fleet = Arc::new(Fleet::start(identities).map_err(anyhow::Error::msg)?);
    wait_for_all(&fleet, "hold a view", || fleet.current(1)).await?;
    figures.first_sync = started.elapsed();
    figures.first_sync_bytes_per_agent = fleet.total(|a| &a.view_bytes) / agents as u64;
    figures.peers = fleet.snapshot_of(|a| &a.peers);
    figures.peers.sort_unstable();
    figures.spread = fleet.spread(args.controls);
    idle(&plane, &fleet, args, figures).await;
    propagation(&plane, &fleet, args, figures).await?;
    one_service_change(&plane, &fleet, figures).await?;
    storm(&mut plane, &fleet, args, figures).await?;
    progress("stop");
    if let Ok(fleet) = Arc::try_unwrap(fleet) {
        fleet.stop().await;
    }
    plane.stop().await;
    if std::env::var_os("WARREN_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

fn bench_root(agents: usize) -> anyhow::Result<PathBuf> {
    let root = std::env::temp_dir().join(format!(
        "warren-fleet-bench-{}-{agents}",
        std::process::id()
    ));
    std::fs::create_dir_all(&root)?;
    if std::env::var_os("WARREN_BENCH_KEEP").is_some() {
        eprintln!("keeping {}", root.display());
    }
    Ok(root)
}

async fn join_fleet(
    plane: &ControlPlane,
    agents: usize,
    per_site: usize,
    figures: &mut Figures,
) -> anyhow::Result<Vec<SimIdentity>> {
    progress(&format!("join {agents} simulated agents"));
    let token = plane
        .cli(&["token", "create", "--role", "agent", "--ttl", "6h"])
        .await?;
    let token = Arc::new(token.trim().to_owned());
    let addrs = plane.quic_addrs();
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(JOINS_AT_ONCE));
    let mut joins = Vec::new();
    for index in 0..agents {
        let (token, gate) = (token.clone(), gate.clone());
        let control = addrs[index % addrs.len()];
        let site = format!("site-{}", index / per_site);
        joins.push(tokio::spawn(async move {
            let _turn = gate.acquire().await;
            let mut last = String::new();
            for _ in 0..5 {
                match fleet_sim::join(control, &token, index, &site).await {
                    Ok(identity) => return Ok(identity),
                    Err(error) => last = error,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(anyhow::anyhow!("join sim-{index}: {last}"))
        }));
    }
    let mut identities = Vec::new();
    for join in joins {
        identities.push(join.await??);
    }
    figures.joins = started.elapsed();
    Ok(identities)
}

/// Waits until `count` says every agent of `fleet` did `what`, saying every 10 s how many
/// have and why the others last failed.
async fn wait_for_all(fleet: &Fleet, what: &str, count: impl Fn() -> usize) -> anyhow::Result<()> {
    let agents = fleet.agents.len();
    let started = Instant::now();
    let mut said = 0;
    wait_for(&format!("{agents} agents {what}"), || {
        let done = count();
        let tens = started.elapsed().as_secs() / 10;
        if tens > said && done < agents {
            said = tens;
            let errors = fleet.errors();
            progress(&format!(
                "{done} of {agents} {what}; last errors: {errors:?}"
            ));
        }
        done == agents
    })
    .await
    .with_context(|| format!("agents' last errors: {:?}", fleet.errors()))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        ensure!(Instant::now() < deadline, "{what}: not after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn pid_strings(plane: &ControlPlane) -> Vec<String> {
    plane.pids().iter().map(u32::to_string).collect()
}

async fn idle(plane: &ControlPlane, fleet: &Fleet, args: &Args, figures: &mut Figures) {
    progress("idle: heartbeats only");
    let pids = pid_strings(plane);
    let me = ["self".to_owned()];
    let window = CpuWindow::start(&pids);
    let sim = CpuWindow::start(&me);
    tokio::time::sleep(args.idle).await;
    figures.idle_cpu = window.percent();
    figures.sim_idle_cpu = sim.percent()[0];
    figures.idle_rss_mib = pids
        .iter()
        .map(|p| status_kib(p, "VmRSS") as f64 / 1024.0)
        .collect();
    let _ = fleet;
}

async fn propagation(
    plane: &ControlPlane,
    fleet: &Fleet,
    args: &Args,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let agents = fleet.agents.len();
    let window = CpuWindow::start(&pid_strings(plane));
    for round in 0..args.rounds {
        progress(&format!("propagation round {round}"));
        let name = format!("global-{round}");
        fleet.set_probe(Probe::Has(name.clone()));
        let bytes_before = fleet.total(|a| &a.view_bytes);
        let started = Instant::now();
        plane
            .write(&[
                "service",
                "create",
                &name,
                "--command",
                "sleep 1000",
                "--global",
            ])
            .await?;
        let met = || fleet.probe_times().iter().filter(|t| t.is_some()).count();
        wait_for_all(fleet, &format!("hold {name}"), met).await?;
        let times: Vec<Duration> = fleet
            .probe_times()
            .into_iter()
            .flatten()
            .map(|t| t.duration_since(started))
            .collect();
        figures.last_agent.extend(times.iter().max());
        figures.propagation.extend(times);
        let sent = fleet.total(|a| &a.view_bytes) - bytes_before;
        figures.create_bytes_per_agent = sent / agents as u64;
        if round == 0 {
            figures.peers_global = fleet.snapshot_of(|a| &a.peers);
            figures.peers_global.sort_unstable();
        }
        fleet.set_probe(Probe::Lacks(name.clone()));
        plane.write(&["service", "rm", &name]).await?;
        wait_for(&format!("{name} gone from every agent"), || {
            fleet.probe_times().iter().all(Option::is_some)
        })
        .await?;
    }
    figures.busy_cpu = window.percent();
    Ok(())
}

/// A service on a tenth of the fleet gets a new env var: who receives a delta, and how many
/// bytes the change costs.
async fn one_service_change(
    plane: &ControlPlane,
    fleet: &Fleet,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let agents = fleet.agents.len();
    let replicas = (agents / 10).max(1).to_string();
    progress(&format!("one service change: {replicas} replicas"));
    fleet.set_probe(Probe::Has("touched".into()));
    let flags = ["--update-parallelism", &replicas, "--update-monitor", "0s"];
    let mut create = vec!["service", "create", "touched", "--command", "sleep 1000"];
    create.extend(["--replicas", &replicas]);
    create.extend(flags);
    plane.write(&create).await?;
    let want = replicas.parse::<usize>()?;
    wait_for("touched placed", || {
        fleet.probe_times().iter().flatten().count() >= want.min(agents)
    })
    .await?;
    // Let the create's catalogue delta reach everyone before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let holders: Vec<bool> = fleet.probe_times().iter().map(Option::is_some).collect();
    let deltas = fleet.snapshot_of(|a| &a.deltas);
    let bytes = fleet.total(|a| &a.view_bytes);
    // Set before the write: an agent notes the probe when a view arrives.
    fleet.set_probe(Probe::AtVersion("touched".into(), 2));
    let update = [
        "service", "update", "touched", "--env", "ROUND=1", "--detach",
    ];
    plane.write(&update).await?;
    wait_for("touched updated on its agents", || {
        let times = fleet.probe_times();
        holders.iter().zip(&times).all(|(h, t)| !h || t.is_some())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    figures.change_agents = holders.iter().filter(|h| **h).count();
    figures.change_touched = fleet.moved(&deltas, |a| &a.deltas);
    figures.change_bytes = fleet.total(|a| &a.view_bytes) - bytes;
    plane.write(&["service", "rm", "touched"]).await?;
    Ok(())
}

async fn storm(
    plane: &mut ControlPlane,
    fleet: &Fleet,
    args: &Args,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let agents = fleet.agents.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let revision = fleet
        .agents
        .iter()
        .map(|a| a.revision.load(std::sync::atomic::Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    progress(&format!(
        "reconnect storm: kill and restart {} control node(s)",
        args.controls
    ));
    let snapshots = fleet.total(|a| &a.snapshots);
    let sessions = fleet.snapshot_of(|a| &a.sessions);
    // From the kill: the agents' sessions end when they notice (a stateless reset from the
    // restarted node, or their silence limit).
    let started = Instant::now();
    plane.restart_all().await?;
    figures.storm_restarted = started.elapsed();
    let window = CpuWindow::start(&pid_strings(plane));
    wait_for("every agent back and current", || {
        fleet.moved(&sessions, |a| &a.sessions) == agents && fleet.current(revision) == agents
    })
    .await?;
    figures.storm = started.elapsed();
    figures.storm_cpu = window.percent();
    figures.storm_snapshots = fleet.total(|a| &a.snapshots) - snapshots;
    figures.storm_peak_rss_mib = pid_strings(plane)
        .iter()
        .map(|p| status_kib(p, "VmHWM") as f64 / 1024.0)
        .collect();
    figures.spread_after = fleet.spread(args.controls);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

fn list(values: &[f64], unit: &str) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Figures {
    fn print(&self, agents: usize, controls: usize) {
        println!("\n{agents} simulated agents, {controls} control node(s)");
        println!(
            "  joins ({JOINS_AT_ONCE} at a time)          {:>10}",
            ms(self.joins)
        );
        println!(
            "  first sync (all hold a view)      {:>10}",
            ms(self.first_sync)
        );
        for (what, peers) in [
            ("peers per agent                ", &self.peers),
            ("peers, with a global service   ", &self.peers_global),
        ] {
            if let (Some(min), Some(max)) = (peers.first(), peers.last()) {
                let median = peers[peers.len() / 2];
                println!("  {what}   min {min}  median {median}  max {max}");
            }
        }
        println!(
            "  view bytes per agent, first sync  {} B",
            self.first_sync_bytes_per_agent
        );
        println!(
            "  idle control RSS                  {}",
            list(&self.idle_rss_mib, " MiB")
        );
        println!(
            "  idle control CPU                  {}",
            list(&self.idle_cpu, " %")
        );
        println!(
            "  idle simulator CPU (all agents)   {:.1} %",
            self.sim_idle_cpu
        );
        if let Some(s) = Summary::of(&self.propagation) {
            println!(
                "  create → acked, per agent         p50 {}  p99 {}  max {}  (n={})",
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                self.propagation.len()
            );
        }
        if let Some(s) = Summary::of(&self.last_agent) {
            println!(
                "  create → acked by the last agent  p50 {}  max {}",
                ms(s.p50),
                ms(s.max)
            );
        }
        println!(
            "  view bytes per agent per create   {} B",
            self.create_bytes_per_agent
        );
        println!(
            "  control CPU during creates        {}",
            list(&self.busy_cpu, " %")
        );
        println!(
            "  one service changed               {} of {agents} agents got a delta ({} run it), {} B in all",
            self.change_touched, self.change_agents, self.change_bytes
        );
        println!(
            "  reconnect storm                   {} from the kill to all back and current ({} to serving again), {} snapshots",
            ms(self.storm),
            ms(self.storm_restarted),
            self.storm_snapshots
        );
        println!(
            "  storm peak control RSS            {}",
            list(&self.storm_peak_rss_mib, " MiB")
        );
        println!(
            "  storm control CPU                 {}",
            list(&self.storm_cpu, " %")
        );
        println!(
            "  agents per control node           {:?} (after the storm {:?})",
            self.spread, self.spread_after
        );
    }
}
