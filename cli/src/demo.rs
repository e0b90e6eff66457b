//! `warren demo`: a scripted tour of what Warren promises at the edge, on loopback, in one
//! process, with nothing but real parts.
//!
//! A control node and one agent in each of two sites start in this process ([`LocalCluster`]);
//! two services are deployed through the HTTP API; site b is cut off with a transport fault
//! switch (its QUIC datagrams are dropped both ways); one of its workloads is killed and comes
//! back without the control plane; the services change; site a converges while site b keeps
//! the old version; site b is healed and converges, keeping the pids of what did not change.
//! Every wait is bounded and prints progress; a step that times out ends the tour with a
//! non-zero exit and its reason. At the end every workload is stopped and the data removed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use warren_api::rest::{ScaleRequest, ServiceInfo, WriteResult};
use warren_api::routes::Route;
use warren_api::wire::SILENCE_LIMIT;
use warren_api::{ProcessSpec, ServiceMode, ServiceName, ServiceSpec, Workload};
use warren_edge_agent::agent::AgentStatus;
use warren_transport::FaultSwitch;

use crate::control_cmd::Signals;
use crate::local::{self, LocalAgent, LocalCluster, alive, seconds, wait_for};
use crate::output::OutputFormat;

/// Flags of `warren demo` (its output format is the global `-o`: `-o json` prints a JSON
/// report instead of the narrated tour).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// The two sites; the second is the one cut off.
const SITE_A: &str = "a";
const SITE_B: &str = "b";
/// Bound on each step that waits for agents to act.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the tour saw, for `-o json`.
#[derive(Debug, Default, Serialize)]
struct Report {
    control_api: String,
    agents: BTreeMap<String, String>,
    deployed_s: f64,
    restarted_offline_s: f64,
    site_a_converged_s: f64,
    link_down_after_cut_s: f64,
    site_b_converged_after_heal_s: f64,
    cut_off_s: f64,
    datagrams_dropped_out: u64,
    datagrams_dropped_in: u64,
    /// Replica → pid kept through the partition and the heal.
    kept: BTreeMap<String, u32>,
    /// Replica → (old pid, new pid) restarted because their spec changed.
    restarted_for_new_spec: BTreeMap<String, (u32, u32)>,
    workloads_stopped: usize,
    total_s: f64,
}

struct Narrator {
    enabled: bool,
    step: u32,
}

impl Narrator {
    fn step(&mut self, text: &str) {
        self.step += 1;
        if self.enabled {
            println!("\n[{}] {text}", self.step);
        }
    }

    fn say(&self, text: impl AsRef<str>) {
        if self.enabled {
            println!("    {}", text.as_ref());
        }
    }

    fn progress<'a>(&'a self, what: &'a str) -> impl FnMut(Duration) + 'a {
        move |waited| self.say(format!("… {what}: {} so far", seconds(waited)))
    }
}

/// Runs the tour.
pub fn run(_args: DemoArgs, output: OutputFormat) -> Result<()> {
    let runtime = crate::multi_thread_runtime()?;
    let report = runtime.block_on(tour(output == OutputFormat::Table))?;
    if output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encode report")?
        );
    }
    Ok(())
}

fn secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10.0).round() / 10.0
}

async fn tour(narrate: bool) -> Result<Report> {
    let started = Instant::now();
    let mut n = Narrator {
        enabled: narrate,
        step: 0,
    };
    let mut signals = Signals::new()?;
    let data_dir = tempfile::Builder::new()
        .prefix("warren-demo-")
        .tempdir()
        .context("create a scratch data dir")?;
    if narrate {
        println!(
            "warren demo: a control node and two edge sites on 127.0.0.1, all in this process \
             (no root, no containers); data in {} until the end",
            data_dir.path().display()
        );
    }
    let (cluster, mut report) = start_cluster(&mut n, data_dir.path()).await?;

    // Ctrl-C must not leave the workloads running: it ends the scenario, not the process.
    let result = tokio::select! {
        result = scenario(&mut n, &cluster, &mut report) => result,
        which = signals.next() => Err(anyhow!("interrupted by {which}")),
    };
    let stopped = stop_cluster(&mut n, cluster, &mut report).await;
    result?;
    stopped?;
    data_dir.close().context("remove the demo's data dir")?;
    report.total_s = secs(started.elapsed());
    if narrate {
        println!(
            "\ndone in {}: site b, cut off, kept its workloads running and restarted a crashed \
             one on its own; after the heal it converged without restarting what had not changed.",
            seconds(started.elapsed())
        );
        println!(
            "next: `warren dev` keeps such a cluster running for you to try commands against."
        );
    }
    Ok(report)
}

/// The first step: a control node and one agent per site, each joined with a token.
async fn start_cluster(n: &mut Narrator, root: &Path) -> Result<(LocalCluster, Report)> {
    n.step("start a control node, then one agent in site a and one in site b");
    let cluster = LocalCluster::create(root, &[SITE_A, SITE_B], 1).await?;
    let mut report = Report {
        control_api: cluster.control().api_addr().to_string(),
        ..Report::default()
    };
    n.say(format!(
        "control node c1: HTTP API {} (TLS), QUIC {}",
        cluster.control().api_addr(),
        cluster.control().quic_addr()
    ));
    for agent in &cluster.agents {
        n.say(format!(
            "agent {} joined site {} as node {} with a single-use token over QUIC",
            agent.name, agent.site, agent.node_id
        ));
        report
            .agents
            .insert(agent.name.clone(), agent.node_id.to_string());
    }
    n.say("site b's agent dials through a fault switch that can drop its QUIC datagrams");
    Ok((cluster, report))
}

/// The last step, run however the scenario ended: stops the agents, their workloads and the
/// control node; an error when something was left running or could not be stopped.
async fn stop_cluster(n: &mut Narrator, cluster: LocalCluster, report: &mut Report) -> Result<()> {
    n.step("stop the agents, then their workloads, then the control node");
    let stopped = cluster.stop(true).await;
    report.workloads_stopped = stopped
        .workloads
        .iter()
        .filter(|(_, w)| w.was_running)
        .count();
    let left: Vec<u32> = stopped
        .workloads
        .iter()
        .filter_map(|(_, w)| w.pid)
        .filter(|pid| alive(*pid))
        .collect();
    n.say(format!(
        "{} workloads stopped; {}",
        report.workloads_stopped,
        if left.is_empty() {
            "nothing left running".to_owned()
        } else {
            format!("still running: {left:?}")
        }
    ));
    if let Some(problem) = stopped.problems.first() {
        bail!("stopping the demo cluster: {problem}");
    }
    if !left.is_empty() {
        bail!("workloads still running after the demo: pids {left:?}");
    }
    Ok(())
}

fn web() -> ServiceSpec {
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").expect("valid name"),
        Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "1000000".into()],
            working_dir: None,
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 2 };
    spec
}

fn worker(version: &str) -> ServiceSpec {
    let script = "echo \"worker started with VERSION=$VERSION\"; exec sleep 1000000";
    let mut spec = ServiceSpec::new(
        ServiceName::new("worker").expect("valid name"),
        Workload::Process(ProcessSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            working_dir: None,
        }),
    );
    spec.mode = ServiceMode::Global;
    spec.env.insert("VERSION".into(), version.into());
    spec
}

/// Replica → pid of what the agent runs.
fn pids(status: &AgentStatus) -> BTreeMap<String, u32> {
    local::running(status)
        .filter_map(|r| Some((r.replica.to_string(), r.pid?)))
        .collect()
}

fn describe(status: &AgentStatus) -> String {
    let pids = pids(status);
    if pids.is_empty() {
        return "nothing running".into();
    }
    pids.iter()
        .map(|(replica, pid)| format!("{replica} pid {pid}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn converged(
    n: &Narrator,
    cluster: &LocalCluster,
    agent: &LocalAgent,
    what: &str,
) -> Result<(AgentStatus, Duration)> {
    wait_for(what, STEP_TIMEOUT, n.progress(what), || {
        cluster.converged(agent)
    })
    .await
}

/// The last line of `replica`'s stdout log on `agent`.
fn last_log_line(agent: &LocalAgent, replica: &str) -> Option<String> {
    let path = warren_edge_agent::runtime::default_workloads_dir(&agent.dir)
        .join(replica)
        .join("stdout.log");
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().last().map(str::to_owned)
}

/// Replica → pid, of each agent (by name).
type PidsByAgent = BTreeMap<String, BTreeMap<String, u32>>;

/// The tour between starting the cluster and stopping it: each step a function, in order.
async fn scenario(n: &mut Narrator, cluster: &LocalCluster, report: &mut Report) -> Result<()> {
    let a = cluster
        .agents_in(SITE_A)
        .next()
        .context("site a has an agent")?;
    let b = cluster
        .agents_in(SITE_B)
        .next()
        .context("site b has an agent")?;
    let deployed = deploy(n, cluster, [a, b], report).await?;

    n.step("cut site b off: every QUIC datagram between edge-b1 and the control plane is dropped from now on");
    let switch = cluster.switch(SITE_B)?.clone();
    cluster.cut(SITE_B)?;
    let cut_at = Instant::now();

    let (web_b, new_pid) = kill_while_cut_off(n, b, &deployed[&b.name], report).await?;
    let mut b_before = deployed[&b.name].clone();
    b_before.insert(web_b.clone(), new_pid);
    let a_after = change_while_cut_off(n, cluster, a, b, &deployed[&a.name], report).await?;
    wait_for_link_down(n, b, cut_at, &b_before, report).await?;
    let b_after = heal(n, cluster, b, &switch, cut_at, &b_before, report).await?;

    if pids(&b_after).get(&web_b) != Some(&new_pid) {
        bail!("{web_b} was restarted after the heal although its spec did not change");
    }
    let a_final = a.status().context("edge-a1's status")?;
    if pids(&a_final) != pids(&a_after) {
        bail!("site a's workloads changed when site b came back");
    }
    n.say(format!(
        "{web_b} kept pid {new_pid} (the one its agent started while cut off), and site a was not touched by the heal"
    ));
    Ok(())
}

/// Creates web and worker through the HTTP API and waits until `agents` run their replicas.
async fn deploy(
    n: &mut Narrator,
    cluster: &LocalCluster,
    agents: [&LocalAgent; 2],
    report: &mut Report,
) -> Result<PidsByAgent> {
    let client = cluster.client();
    n.step("deploy through the HTTP API: web (2 replicas, spread over the sites) and worker (one on every agent, VERSION=1)");
    for spec in [web(), worker("1")] {
        let written: WriteResult = client
            .request_json(Route::CreateService, &spec)
            .await
            .with_context(|| format!("create service {}", spec.name))?
            .json()?;
        n.say(format!(
            "POST /v1/services {}: created at revision {}",
            spec.name, written.revision
        ));
    }
    let mut deployed = BTreeMap::new();
    for agent in agents {
        let what = format!("{} to run its replicas", agent.name);
        let (status, took) = converged(n, cluster, agent, &what).await?;
        n.say(format!(
            "{} (site {}) runs {} after {}",
            agent.name,
            agent.site,
            describe(&status),
            seconds(took)
        ));
        report.deployed_s = report.deployed_s.max(secs(took));
        deployed.insert(agent.name.clone(), pids(&status));
    }
    Ok(deployed)
}

/// Kills site b's web replica and waits for its agent, cut off, to restart it on its own.
/// Returns the replica and its new pid.
async fn kill_while_cut_off(
    n: &mut Narrator,
    b: &LocalAgent,
    deployed_b: &BTreeMap<String, u32>,
    report: &mut Report,
) -> Result<(String, u32)> {
    let (web_b, web_b_pid) = deployed_b
        .iter()
        .find(|(replica, _)| replica.starts_with("web."))
        .map(|(r, p)| (r.clone(), *p))
        .context("site b runs a web replica")?;
    n.step(&format!(
        "kill -9 {web_b} on edge-b1 (pid {web_b_pid}): its agent must restart it without the control plane"
    ));
    kill9(web_b_pid)?;
    let what = format!("edge-b1 to restart {web_b}");
    let (new_pid, took) = wait_for(&what, STEP_TIMEOUT, n.progress(&what), || async {
        Ok(b.status()
            .and_then(|s| pids(&s).get(&web_b).copied())
            .filter(|pid| *pid != web_b_pid))
    })
    .await?;
    let restarts = b
        .status()
        .and_then(|s| {
            s.replicas
                .into_iter()
                .find(|r| r.replica.to_string() == web_b)
        })
        .map_or(0, |r| r.restarts);
    n.say(format!(
        "restarted after {}: pid {new_pid} (restarts: {restarts}), control plane still unreachable",
        seconds(took)
    ));
    report.restarted_offline_s = secs(took);
    Ok((web_b, new_pid))
}

/// Changes worker and scales web while site b is cut off; site a converges, site b keeps what
/// it had. Returns what site a runs then.
async fn change_while_cut_off(
    n: &mut Narrator,
    cluster: &LocalCluster,
    a: &LocalAgent,
    b: &LocalAgent,
    deployed_a: &BTreeMap<String, u32>,
    report: &mut Report,
) -> Result<AgentStatus> {
    let client = cluster.client();
    n.step("while site b is cut off: worker gets VERSION=2 (a new workload: it restarts), web scales to 4");
    let current: ServiceInfo = client
        .request(Route::GetService { service: "worker" })
        .await?
        .json()?;
    let mut spec = current.spec.clone();
    spec.env.insert("VERSION".into(), "2".into());
    let written: WriteResult = client
        .request_json(Route::PutService { service: "worker" }, &spec)
        .await
        .context("update service worker")?
        .json()?;
    n.say(format!(
        "PUT /v1/services/worker: version {}, revision {}",
        written.version.unwrap_or_default(),
        written.revision
    ));
    let written: WriteResult = client
        .request_json(
            Route::ScaleService { service: "web" },
            &ScaleRequest { replicas: 4 },
        )
        .await
        .context("scale service web")?
        .json()?;
    n.say(format!(
        "POST /v1/services/web/scale {{replicas: 4}}: revision {}",
        written.revision
    ));
    let (a_after, took) = converged(n, cluster, a, "site a to converge").await?;
    report.site_a_converged_s = secs(took);
    n.say(format!(
        "site a converged after {}: {}",
        seconds(took),
        describe(&a_after)
    ));
    explain_changes(n, deployed_a, &pids(&a_after), report, "edge-a1");
    let b_now = b.status().context("edge-b1's status")?;
    n.say(format!(
        "site b still runs what it had, at revision {}: {}",
        b_now.revision,
        describe(&b_now)
    ));
    Ok(a_after)
}

/// Waits for site b's link to give up, and checks that its workloads ran on unchanged.
async fn wait_for_link_down(
    n: &mut Narrator,
    b: &LocalAgent,
    cut_at: Instant,
    b_before: &BTreeMap<String, u32>,
    report: &mut Report,
) -> Result<()> {
    n.step(&format!(
        "wait for edge-b1 to notice: its link gives up after {} without a message from control",
        seconds(SILENCE_LIMIT)
    ));
    let what = "edge-b1's link to go down";
    let (offline, _) = wait_for(
        what,
        SILENCE_LIMIT + STEP_TIMEOUT,
        n.progress(what),
        || async { Ok(b.status().filter(|s| !s.link.connected)) },
    )
    .await?;
    report.link_down_after_cut_s = secs(cut_at.elapsed());
    n.say(format!(
        "link down {} after the cut; agent status: revision {}, link disconnected",
        seconds(cut_at.elapsed()),
        offline.revision
    ));
    let offline_pids = pids(&offline);
    if offline_pids != *b_before {
        bail!(
            "edge-b1's workloads changed while it was cut off: {offline_pids:?}, expected {b_before:?}"
        );
    }
    let dead: Vec<&u32> = offline_pids.values().filter(|pid| !alive(**pid)).collect();
    if !dead.is_empty() {
        bail!("edge-b1 reports pids that are not alive: {dead:?}");
    }
    n.say(format!(
        "still running (checked in /proc): {}",
        describe(&offline)
    ));
    Ok(())
}

/// Heals site b and waits for it to converge. Returns what it runs then.
async fn heal(
    n: &mut Narrator,
    cluster: &LocalCluster,
    b: &LocalAgent,
    switch: &FaultSwitch,
    cut_at: Instant,
    b_before: &BTreeMap<String, u32>,
    report: &mut Report,
) -> Result<AgentStatus> {
    n.step("heal site b");
    cluster.heal(SITE_B)?;
    report.cut_off_s = secs(cut_at.elapsed());
    report.datagrams_dropped_out = switch.dropped_sent();
    report.datagrams_dropped_in = switch.dropped_received();
    n.say(format!(
        "cut off for {}; the switch dropped {} datagrams out of edge-b1 and {} into it",
        seconds(cut_at.elapsed()),
        report.datagrams_dropped_out,
        report.datagrams_dropped_in
    ));
    let (b_after, took) = converged(n, cluster, b, "site b to converge").await?;
    report.site_b_converged_after_heal_s = secs(took);
    n.say(format!(
        "edge-b1 reconnected and converged after {} at revision {}: {}",
        seconds(took),
        b_after.revision,
        describe(&b_after)
    ));
    explain_changes(n, b_before, &pids(&b_after), report, "edge-b1");
    if let Some((replica, _)) = pids(&b_after)
        .iter()
        .find(|(r, _)| r.starts_with("worker."))
        && let Some(line) = last_log_line(b, replica)
    {
        n.say(format!("{replica}'s log on edge-b1 ends with: {line}"));
    }
    Ok(b_after)
}

/// Prints, and records, which replicas kept their pid, were restarted or started.
fn explain_changes(
    n: &Narrator,
    before: &BTreeMap<String, u32>,
    after: &BTreeMap<String, u32>,
    report: &mut Report,
    agent: &str,
) {
    let mut kept = Vec::new();
    let mut restarted = Vec::new();
    let mut started = Vec::new();
    for (replica, pid) in after {
        match before.get(replica) {
            Some(old) if old == pid => {
                kept.push(format!("{replica} (pid {pid})"));
                report.kept.insert(format!("{agent}/{replica}"), *pid);
            }
            Some(old) => {
                restarted.push(format!("{replica} (pid {old} → {pid})"));
                report
                    .restarted_for_new_spec
                    .insert(format!("{agent}/{replica}"), (*old, *pid));
            }
            None => started.push(format!("{replica} (pid {pid})")),
        }
    }
    for (label, list) in [
        ("kept", kept),
        ("restarted for the new spec", restarted),
        ("started", started),
    ] {
        if !list.is_empty() {
            n.say(format!("  {label}: {}", list.join(", ")));
        }
    }
}

fn kill9(pid: u32) -> Result<()> {
    // By the system call: a box without procps has no `kill` program.
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| anyhow!("{pid} is no process id"))?;
    rustix::process::kill_process(target, rustix::process::Signal::KILL)
        .with_context(|| format!("kill -9 {pid}"))
}
