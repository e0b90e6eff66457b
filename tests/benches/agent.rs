//! Edge-agent figures on loopback, with the real `warren` binary: how fast a service create
//! reaches running processes on 10 agents, how fast an agent boots its cached workloads with
//! control down (started, and adopted), how fast an agent that was stopped while 100 changes
//! were made converges once it starts again, and how much memory an agent process holds.
//!
//! This prints figures for people to read and compare between commits; it asserts nothing
//! about speed. Run it with
//! `cargo build --release -p warren-cli && cargo bench -p warren-tests --bench agent`;
//! `WARREN_BENCH_QUICK=1` shrinks every count for a smoke run; `WARREN_BENCH_AGENTS=100` sets
//! how many agents the propagation section creates its service on (10 by default), and
//! `WARREN_BENCH_ONLY=propagation` runs that section alone. The control node runs in this
//! process (default config, sled in a temp dir); every agent is a `warren agent run --metrics
//! none` subprocess whose workloads are `sleep` processes, all on 127.0.0.1, no root needed —
//! except the one whose link is cut with the transport's `FaultSwitch`, which must run in this
//! process (`Agent::run`, the code the binary runs) to be handed the switch.
//! `WARREN_BIN` names the binary when it is not next to this bench's executable;
//! `WARREN_BENCH_KEEP=1` keeps the data dirs and the agents' logs to see where time went.
// The point of this binary is to print a table, and its progress on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod fixtures;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_api::wire::SILENCE_LIMIT;
use warren_api::{
    NodeId, ProcessSpec, ReplicaId, ServiceMode, ServiceName, ServiceSpec, TaskState, Workload,
};
use warren_control::Op;
use warren_edge_agent::agent::{
    Agent, AgentError, AgentStatus, FOLLOW_UP_PASS, RECONCILE_INTERVAL, RunEnd,
};
use warren_edge_agent::link::REPORT_COALESCE;
use warren_transport::FaultSwitch;

use fixtures::*;

/// How much work each section does.
#[derive(Clone, Copy, Debug)]
struct Counts {
    /// Agents a service is created on at once.
    propagation_agents: usize,
    /// Service creates measured per run (settled, back to back), after one warm-up create.
    propagation_rounds: usize,
    /// Cached workload counts the offline boot is measured with.
    boot_workloads: [usize; 2],
    /// Boots measured per workload count, each once started and once adopted.
    boot_rounds: usize,
    /// Services the reconnecting agent runs.
    reconnect_services: usize,
    /// Changes made to them while the agent is stopped.
    reconnect_changes: usize,
    /// Stop, change, start cycles measured.
    reconnect_rounds: usize,
    /// Cut, change, heal cycles measured, healed at once.
    cut_rounds_short: usize,
    /// Cut, change, heal cycles measured, healed once the agent noticed (15 s and more each).
    cut_rounds_long: usize,
    /// Workloads the agent holds for the second memory reading.
    memory_workloads: u32,
    /// How long the agent is left alone before its memory is read.
    memory_settle: Duration,
}

const FULL: Counts = Counts {
    propagation_agents: 10,
    propagation_rounds: 20,
    boot_workloads: [10, 50],
    boot_rounds: 5,
    reconnect_services: 10,
    reconnect_changes: 100,
    reconnect_rounds: 10,
    cut_rounds_short: 10,
    cut_rounds_long: 3,
    memory_workloads: 50,
    memory_settle: Duration::from_secs(5),
};

/// `WARREN_BENCH_QUICK=1`: the same sections, fewer rounds (the sizes the figures are about
/// stay the same).
const QUICK: Counts = Counts {
    propagation_rounds: 5,
    boot_rounds: 2,
    reconnect_rounds: 2,
    cut_rounds_short: 2,
    cut_rounds_long: 1,
    ..FULL
};

/// Replicas replaced at a time by a spec change: more than any service here has, so a change
/// reaches every replica in the entry that makes it, and the figures measure the agent rather
/// than the rollout's pacing.
const UPDATE_PARALLELISM: u32 = 100;

/// What the environment asked of this run.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// `WARREN_BENCH_QUICK`.
    quick: bool,
    /// `WARREN_BENCH_ONLY=propagation`: section 1 alone.
    only_propagation: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<(Self, Counts)> {
        let quick = std::env::var("WARREN_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut counts = if quick { QUICK } else { FULL };
        if let Ok(agents) = std::env::var("WARREN_BENCH_AGENTS") {
            counts.propagation_agents =
                agents.parse().ok().filter(|n| *n > 0).with_context(|| {
                    format!("WARREN_BENCH_AGENTS={agents}: not a count of agents")
                })?;
        }
        let only_propagation = match std::env::var("WARREN_BENCH_ONLY") {
            Ok(only) if only == "propagation" => true,
            Ok(only) if !only.is_empty() => {
                anyhow::bail!("WARREN_BENCH_ONLY={only}: only `propagation` can run alone")
            }
            _ => false,
        };
        let settings = Settings {
            quick,
            only_propagation,
        };
        Ok((settings, counts))
    }
}

fn main() -> anyhow::Result<()> {
    let (settings, counts) = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(run(counts, settings))
}

async fn run(counts: Counts, settings: Settings) -> anyhow::Result<()> {
    warren_transport::install_crypto_provider();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let started = *STARTED.get_or_init(Instant::now);
    let bin = warren_binary()?;
    let root = tempfile::tempdir().context("create the bench's temp dir")?;
    let root_path = root.path().to_owned();
    // `WARREN_BENCH_KEEP=1` keeps the data dirs and the agents' logs (`<agent dir>.stderr.log`)
    // for a look at where the time went.
    let _root = if std::env::var_os("WARREN_BENCH_KEEP").is_some() {
        progress(&format!("keeping {}", root.keep().display()));
        None
    } else {
        Some(root)
    };
    // Dropped before `_root`: whatever a failed section left running under it is killed.
    let _sweeper = Sweeper {
        root: root_path.clone(),
    };
    let root = root_path.as_path();
    let stale = stale_sources(&bin);

    print_header(settings, counts, &bin, stale.as_deref());
    let propagation = propagation(&bin, root, counts)
        .await
        .context("propagation section")?;
    print_propagation(&propagation, counts);
    if settings.only_propagation {
        println!("total {:.1} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let mut boots = Vec::new();
    for workloads in counts.boot_workloads {
        boots.push(
            offline_boot(&bin, root, workloads, counts)
                .await
                .with_context(|| format!("offline boot section, {workloads} workloads"))?,
        );
    }
    print_boot(&boots, counts);
    let restart = reconnect_restart(&bin, root, counts)
        .await
        .context("reconnect section, agent restarted")?;
    let (short_cut, long_cut) = reconnect_cut(root, counts)
        .await
        .context("reconnect section, link cut")?;
    let reconnect = ReconnectFigures {
        restart,
        short_cut,
        long_cut,
    };
    print_reconnect(&reconnect, counts);
    let memory = memory(&bin, root, counts).await.context("memory section")?;
    print_memory(&memory, counts);
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A service running `sleep`, rolled out to all its replicas at once.
fn sleep_spec(name: &str, mode: ServiceMode) -> anyhow::Result<ServiceSpec> {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "100000".into()],
        working_dir: None,
    });
    let name = ServiceName::new(name).with_context(|| format!("service name {name}"))?;
    let mut spec = ServiceSpec::new(name, workload);
    spec.mode = mode;
    spec.update.parallelism = UPDATE_PARALLELISM;
    Ok(spec)
}

// ---------------------------------------------------------------------------------------------
// 1. Propagation
// ---------------------------------------------------------------------------------------------

/// One run of propagation rounds.
#[derive(Default)]
struct PropagationRun {
    /// `Control::propose` returned (committed and applied on the leader).
    proposed: Vec<Duration>,
    /// Per agent and round: the workload process exists as a child of the agent.
    process: Vec<Duration>,
    /// Per round: the last agent's workload process exists.
    last_process: Vec<Duration>,
    /// Per agent and round: the agent's `status.json` shows it running.
    status: Vec<Duration>,
    /// Per round: CPU the bench's own polling took while it waited for the round (on 2 cores
    /// that is CPU the agents and control did not get).
    poll_cpu: Vec<Duration>,
    /// Per agent and settled round: the agent process's CPU from just before the create until
    /// [`SETTLE`] after the last workload ran (the change, its follow-up pass and report).
    agent_cpu: Vec<Duration>,
    /// Per settled round: this process's CPU over the same span, the bench's own polling taken
    /// out — the control node's share.
    control_cpu: Vec<Duration>,
}

struct PropagationFigures {
    /// Each create made once every agent had been idle for [`SETTLE`].
    settled: PropagationRun,
    /// Each create made as soon as the previous round's workloads had stopped.
    back_to_back: PropagationRun,
    /// Whether process times could be measured (children listable in `/proc`).
    children: bool,
    /// The machine's load averages when the section started and when it ended.
    load: [String; 2],
}

/// Long enough for an agent to go quiet after a change: its next reconcile pass has run and
/// the status report that pass caused has been coalesced and sent.
const SETTLE: Duration = RECONCILE_INTERVAL
    .saturating_add(REPORT_COALESCE)
    .saturating_add(Duration::from_millis(300));

/// Starts `counts.propagation_agents` agents under one control node, then creates a global
/// `sleep` service (one replica per agent) and removes it again, round after round: one
/// warm-up round, `propagation_rounds` with the agents settled before each create, and
/// `propagation_rounds` back to back.
async fn propagation(
    bin: &Path,
    root: &Path,
    counts: Counts,
) -> anyhow::Result<PropagationFigures> {
    let load_before = load_average();
    progress(&format!(
        "propagation: start control and {} agents (load average {load_before})",
        counts.propagation_agents
    ));
    let cluster = Cluster::start(root, "propagation").await?;
    let mut agents = Vec::new();
    for agent_idx in 0..counts.propagation_agents {
        let (dir, _) = cluster.join(&format!("edge-{agent_idx:02}")).await;
        agents.push(AgentProcess::spawn(bin, &dir)?);
    }
    for agent in &mut agents {
        agent
            .wait_status("the agent connected", |s| s.link.connected.then_some(()))
            .await?;
    }
    let mut warmup = PropagationRun::default();
    propagation_rounds(&cluster, &agents, "warmup", 1, Some(SETTLE), &mut warmup).await?;
    progress("propagation: agents settled before each create");
    let mut settled = PropagationRun::default();
    let rounds = counts.propagation_rounds;
    propagation_rounds(
        &cluster,
        &agents,
        "idle",
        rounds,
        Some(SETTLE),
        &mut settled,
    )
    .await?;
    progress("propagation: back to back");
    let mut back_to_back = PropagationRun::default();
    propagation_rounds(&cluster, &agents, "busy", rounds, None, &mut back_to_back).await?;
    progress("propagation: stop agents and control");
    for agent in agents {
        agent.stop().await?;
    }
    cluster.control.shutdown().await;
    Ok(PropagationFigures {
        settled,
        back_to_back,
        children: children_listable(),
        load: [load_before, load_average()],
    })
}

/// `rounds` rounds of: wait `settle`, create `<prefix>-<round>`, time it, remove it and wait
/// until every agent has stopped its workload.
async fn propagation_rounds(
    cluster: &Cluster,
    agents: &[AgentProcess],
    prefix: &str,
    rounds: usize,
    settle: Option<Duration>,
    run: &mut PropagationRun,
) -> anyhow::Result<()> {
    for round in 0..rounds {
        if let Some(settle) = settle {
            tokio::time::sleep(settle).await;
        }
        let name = format!("{prefix}-{round:03}");
        let cpu_before = CpuSnapshot::take(agents);
        let (proposed, process, status, poll_cpu) =
            propagation_round(cluster, agents, &name).await?;
        if settle.is_some() {
            // Only a settled round is alone on the machine long enough to be charged whole.
            tokio::time::sleep(SETTLE).await;
            CpuSnapshot::take(agents).charge(&cpu_before, poll_cpu, run);
        }
        run.proposed.push(proposed);
        run.poll_cpu.push(poll_cpu);
        run.last_process.extend(process.iter().max());
        run.process.extend(process);
        run.status.extend(status);
        cluster
            .propose(Op::RemoveService(service_name(&name)?))
            .await?;
        poll_until(&format!("{name} stopped on every agent"), || {
            agents
                .iter()
                .all(|agent| {
                    agent.status().is_some_and(|s| held_pids(&s).is_empty())
                        && workload_children(agent.pid()).is_empty()
                })
                .then_some(())
        })
        .await?;
    }
    Ok(())
}

/// CPU used so far by each agent process and by this process (control and the bench).
struct CpuSnapshot {
    agents: Vec<Option<Duration>>,
    bench: Option<Duration>,
}

impl CpuSnapshot {
    fn take(agents: &[AgentProcess]) -> Self {
        CpuSnapshot {
            agents: agents.iter().map(|a| process_cpu(a.pid())).collect(),
            bench: process_cpu(std::process::id()),
        }
    }

    /// Adds the CPU used since `before` to `run`: each agent's, and this process's less the
    /// polling's.
    fn charge(&self, before: &CpuSnapshot, poll_cpu: Duration, run: &mut PropagationRun) {
        for (after, before) in self.agents.iter().zip(&before.agents) {
            if let (Some(after), Some(before)) = (after, before) {
                run.agent_cpu.push(after.saturating_sub(*before));
            }
        }
        if let (Some(after), Some(before)) = (self.bench, before.bench) {
            run.control_cpu
                .push(after.saturating_sub(before).saturating_sub(poll_cpu));
        }
    }
}

/// Creates global service `name` and times, per agent, until its process exists and until
/// `status.json` shows it running. Returns (propose returned, process per agent, status per
/// agent, the CPU its polling took).
async fn propagation_round(
    cluster: &Cluster,
    agents: &[AgentProcess],
    name: &str,
) -> anyhow::Result<(Duration, Vec<Duration>, Vec<Duration>, Duration)> {
    let replica_dir = format!("{name}.");
    let spec = sleep_spec(name, ServiceMode::Global)?;
    let mut process: Vec<Option<Duration>> = vec![None; agents.len()];
    let mut status: Vec<Option<Duration>> = vec![None; agents.len()];
    let mut status_seen: Vec<Option<(u64, SystemTime)>> = vec![None; agents.len()];
    let children = children_listable();
    let mut watch = ChildWatch::new(agents.iter().map(AgentProcess::pid));
    let mut poll_cpu = Duration::ZERO;
    let started = Instant::now();
    cluster.propose(Op::PutService(spec)).await?;
    let proposed = started.elapsed();
    poll_until(&format!("{name} running on every agent"), || {
        let cpu_before = thread_cpu();
        if children {
            for (agent_idx, _, out) in watch.scan() {
                let ours = out
                    .parent()
                    .and_then(Path::file_name)
                    .and_then(|d| d.to_str())
                    .is_some_and(|d| d.starts_with(&replica_dir));
                if ours && process[agent_idx].is_none() {
                    process[agent_idx] = Some(started.elapsed());
                }
            }
        }
        for (agent_idx, agent) in agents.iter().enumerate() {
            // `status.json` cannot say running before the process exists.
            let waiting =
                status[agent_idx].is_none() && (!children || process[agent_idx].is_some());
            if waiting
                && agent
                    .status_if_changed(&mut status_seen[agent_idx])
                    .is_some_and(|s| {
                        running(&s)
                            .keys()
                            .any(|replica| replica.service.as_str() == name)
                    })
            {
                status[agent_idx] = Some(started.elapsed());
            }
        }
        let done = status.iter().all(Option::is_some)
            && (!children || process.iter().all(Option::is_some));
        if let (Some(before), Some(after)) = (cpu_before, thread_cpu()) {
            poll_cpu += after.saturating_sub(before);
        }
        done.then_some(())
    })
    .await?;
    Ok((
        proposed,
        process.into_iter().flatten().collect(),
        status.into_iter().flatten().collect(),
        poll_cpu,
    ))
}

// ---------------------------------------------------------------------------------------------
// 2. Offline boot
// ---------------------------------------------------------------------------------------------

struct BootFigures {
    workloads: usize,
    /// Spawn → every cached workload's process exists (children of the new agent).
    started_process: Vec<Duration>,
    /// Spawn → `status.json` of the new agent shows every workload running.
    started_status: Vec<Duration>,
    /// Spawn → `status.json` of the new agent shows every running workload adopted (same pids).
    adopted_status: Vec<Duration>,
}

/// One agent runs a service with `workloads` replicas; then the agent and control stop. Each
/// round kills the workloads and spawns the agent (it starts them all from its cache), stops
/// it, and spawns it again (it adopts them all).
async fn offline_boot(
    bin: &Path,
    root: &Path,
    workloads: usize,
    counts: Counts,
) -> anyhow::Result<BootFigures> {
    progress(&format!(
        "offline boot: one agent, {workloads} workloads, then control down"
    ));
    let cluster = Cluster::start(root, &format!("boot-{workloads}")).await?;
    let (dir, _) = cluster.join("edge-boot").await;
    let mut agent = AgentProcess::spawn(bin, &dir)?;
    let replicas = u32::try_from(workloads).context("workload count")?;
    let spec = sleep_spec("boot", ServiceMode::Replicated { replicas })?;
    cluster.propose(Op::PutService(spec)).await?;
    let mut pids: Vec<u32> = agent
        .wait_status("every workload running", |s| {
            let running = running(s);
            (running.len() == workloads).then(|| running.into_values().collect())
        })
        .await?;
    agent.stop().await?;
    cluster.control.shutdown().await;

    let mut figures = BootFigures {
        workloads,
        started_process: Vec::new(),
        started_status: Vec::new(),
        adopted_status: Vec::new(),
    };
    for round in 0..counts.boot_rounds {
        progress(&format!(
            "offline boot: {workloads} workloads, round {}",
            round + 1
        ));
        signal("KILL", &pids)?;
        wait_gone("the killed workloads gone", &pids).await?;
        let (process, status, started) = boot_started(bin, &dir, workloads).await?;
        figures.started_process.extend(process);
        figures.started_status.push(status);
        figures
            .adopted_status
            .push(boot_adopted(bin, &dir, &started).await?);
        pids = started;
    }
    signal("KILL", &pids)?;
    wait_gone("the workloads killed at the end", &pids).await?;
    Ok(figures)
}

/// Spawns the agent with none of its cached workloads running; returns (spawn → every process
/// exists, if children are listable; spawn → status shows all running; their pids).
async fn boot_started(
    bin: &Path,
    dir: &Path,
    workloads: usize,
) -> anyhow::Result<(Option<Duration>, Duration, Vec<u32>)> {
    let children = children_listable();
    let spawned = Instant::now();
    let mut agent = AgentProcess::spawn(bin, dir)?;
    let mut process = None;
    let pids: Vec<u32> = agent
        .wait_status("every cached workload started", |s| {
            if children && process.is_none() && workload_children(s.agent_pid).len() == workloads {
                process = Some(spawned.elapsed());
            }
            let running = running(s);
            (running.len() == workloads).then(|| running.into_values().collect())
        })
        .await?;
    let status = spawned.elapsed();
    // Usually seen first: the status is written after the pass that starts them.
    if children && process.is_none() && workload_children(agent.pid()).len() == workloads {
        process = Some(status);
    }
    agent.stop().await?;
    Ok((process, status, pids))
}

/// Spawns the agent with every workload in `pids` running; returns spawn → status shows the
/// same pids running.
async fn boot_adopted(bin: &Path, dir: &Path, pids: &[u32]) -> anyhow::Result<Duration> {
    let want: BTreeSet<u32> = pids.iter().copied().collect();
    let spawned = Instant::now();
    let mut agent = AgentProcess::spawn(bin, dir)?;
    agent
        .wait_status("every running workload adopted", |s| {
            let running: BTreeSet<u32> = running(s).into_values().collect();
            (running == want).then_some(())
        })
        .await?;
    let adopted = spawned.elapsed();
    agent.stop().await?;
    Ok(adopted)
}

// ---------------------------------------------------------------------------------------------
// 3. Reconnect
// ---------------------------------------------------------------------------------------------

/// Times of one reconnect. Their zero is the agent's spawn (restart) or the heal (cut).
struct ReconnectRound {
    /// Cut → the link reported itself down (long cuts only).
    noticed: Option<Duration>,
    /// The new agent's first `status.json`, from its cache before the link is up.
    first_status: Duration,
    /// The link is connected.
    connected: Duration,
    /// Exactly the desired set is held, each `starting` or `running`.
    held: Duration,
    /// Exactly the desired set is `running`.
    running: Duration,
    /// What convergence took: workloads kept, restarted (env changed), started, stopped.
    work: [usize; 4],
}

struct ReconnectFigures {
    /// Agent stopped and spawned again.
    restart: Vec<ReconnectRound>,
    /// Link cut and healed before the agent noticed.
    short_cut: Vec<ReconnectRound>,
    /// Link cut until the agent reported it down, then healed.
    long_cut: Vec<ReconnectRound>,
}

/// Watches one convergence on `desired` through successive statuses; times are from `zero`.
struct Convergence<'a> {
    zero: Instant,
    desired: &'a BTreeMap<ReplicaId, u64>,
    first_status: Option<Duration>,
    connected: Option<Duration>,
    held: Option<Duration>,
}

impl<'a> Convergence<'a> {
    fn new(zero: Instant, desired: &'a BTreeMap<ReplicaId, u64>) -> Self {
        Self {
            zero,
            desired,
            first_status: None,
            connected: None,
            held: None,
        }
    }

    /// Notes what `status` shows; true once exactly the desired set runs.
    fn observe(&mut self, status: &AgentStatus) -> bool {
        let now = self.zero.elapsed();
        self.first_status.get_or_insert(now);
        if status.link.connected {
            self.connected.get_or_insert(now);
        }
        if converged(status, self.desired, HELD) {
            self.held.get_or_insert(now);
        }
        converged(status, self.desired, RUNNING)
    }

    fn finish(self, noticed: Option<Duration>, work: [usize; 4]) -> ReconnectRound {
        let running = self.zero.elapsed();
        ReconnectRound {
            noticed,
            first_status: self.first_status.unwrap_or(running),
            connected: self.connected.unwrap_or(running),
            held: self.held.unwrap_or(running),
            running,
            work,
        }
    }
}

/// Creates `count` services of 2 `sleep` replicas each.
async fn deploy_services(cluster: &Cluster, count: usize) -> anyhow::Result<Vec<ServiceSpec>> {
    let mut specs = Vec::new();
    for service_idx in 0..count {
        let spec = sleep_spec(
            &format!("rc-{service_idx:02}"),
            ServiceMode::Replicated { replicas: 2 },
        )?;
        cluster.propose(Op::PutService(spec.clone())).await?;
        specs.push(spec);
    }
    Ok(specs)
}

async fn remove_services(cluster: &Cluster, specs: &[ServiceSpec]) -> anyhow::Result<()> {
    for spec in specs {
        cluster
            .propose(Op::RemoveService(spec.name.clone()))
            .await?;
    }
    Ok(())
}

/// One `warren agent run` runs `reconnect_services` services; each round stops it, makes
/// `reconnect_changes` changes, spawns it again and times until it runs exactly the desired
/// set.
async fn reconnect_restart(
    bin: &Path,
    root: &Path,
    counts: Counts,
) -> anyhow::Result<Vec<ReconnectRound>> {
    progress(&format!(
        "reconnect: one agent process, {} services",
        counts.reconnect_services
    ));
    let cluster = Cluster::start(root, "reconnect").await?;
    let (dir, node) = cluster.join("edge-reconnect").await;
    let mut agent = AgentProcess::spawn(bin, &dir)?;
    let mut specs = deploy_services(&cluster, counts.reconnect_services).await?;
    let desired = cluster.desired(node).await;
    agent
        .wait_status("the first desired set running", |s| {
            converged(s, &desired, RUNNING).then_some(())
        })
        .await?;

    let mut rounds = Vec::new();
    for round in 0..counts.reconnect_rounds {
        progress(&format!("reconnect: restart round {}", round + 1));
        let before = cluster.desired(node).await;
        agent.stop().await?;
        make_changes(&cluster, &mut specs, round, counts.reconnect_changes).await?;
        let desired = cluster.desired(node).await;
        let spawned = Instant::now();
        agent = AgentProcess::spawn(bin, &dir)?;
        let mut convergence = Convergence::new(spawned, &desired);
        agent
            .wait_status("the desired set running", |s| {
                convergence.observe(s).then_some(())
            })
            .await?;
        rounds.push(convergence.finish(None, convergence_work(&before, &desired)));
    }
    remove_services(&cluster, &specs).await?;
    agent
        .wait_status("every workload stopped", |s| {
            held_pids(s).is_empty().then_some(())
        })
        .await?;
    agent.stop().await?;
    cluster.control.shutdown().await;
    Ok(rounds)
}

/// An agent run in this process by `Agent::run` (the code the binary runs), its QUIC socket
/// behind a transport fault switch. Dropping it stops the agent (not its workloads).
struct InProcessAgent {
    dir: PathBuf,
    switch: FaultSwitch,
    cancel: CancellationToken,
    task: JoinHandle<Result<RunEnd, AgentError>>,
}

impl InProcessAgent {
    fn spawn(dir: &Path) -> Self {
        let switch = FaultSwitch::new();
        let options = warren_tests::agent_options_behind(&switch);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let dir = dir.to_owned();
            let cancel = cancel.clone();
            async move { Agent::run(&dir, options, cancel).await }
        });
        Self {
            dir: dir.to_owned(),
            switch,
            cancel,
            task,
        }
    }

    /// `status.json`, if this process wrote it.
    fn status(&self) -> Option<AgentStatus> {
        warren_tests::agent_status(&self.dir).filter(|s| s.agent_pid == std::process::id())
    }

    async fn wait_status<T>(
        &self,
        what: &str,
        mut cond: impl FnMut(&AgentStatus) -> Option<T>,
    ) -> anyhow::Result<T> {
        poll_until(what, || self.status().as_ref().and_then(&mut cond)).await
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let end = tokio::time::timeout(STOP_LIMIT, &mut self.task)
            .await
            .context("the in-process agent did not stop")?
            .context("the in-process agent panicked")?
            .context("the in-process agent failed")?;
        ensure!(end == RunEnd::Stopped, "the agent ended with {end:?}");
        Ok(())
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One in-process agent behind a fault switch runs `reconnect_services` services; each round
/// cuts its link, makes `reconnect_changes` changes, heals (at once, or once the link has
/// reported itself down) and times until it runs exactly the desired set.
async fn reconnect_cut(
    root: &Path,
    counts: Counts,
) -> anyhow::Result<(Vec<ReconnectRound>, Vec<ReconnectRound>)> {
    progress(&format!(
        "reconnect: one agent in this process behind a fault switch, {} services",
        counts.reconnect_services
    ));
    let cluster = Cluster::start(root, "cut").await?;
    let (dir, node) = cluster.join("edge-cut").await;
    let agent = InProcessAgent::spawn(&dir);
    let mut specs = deploy_services(&cluster, counts.reconnect_services).await?;
    let desired = cluster.desired(node).await;
    agent
        .wait_status("the first desired set running", |s| {
            converged(s, &desired, RUNNING).then_some(())
        })
        .await?;
    let (mut short, mut long) = (Vec::new(), Vec::new());
    let plan = std::iter::repeat_n(false, counts.cut_rounds_short)
        .chain(std::iter::repeat_n(true, counts.cut_rounds_long));
    for (round, until_noticed) in plan.enumerate() {
        let kind = if until_noticed { "long" } else { "short" };
        progress(&format!("reconnect: {kind} cut, round {}", round + 1));
        let cut = CutRound {
            cluster: &cluster,
            node,
            agent: &agent,
            changes: counts.reconnect_changes,
            until_noticed,
        };
        let times = cut.run(&mut specs, round).await?;
        if until_noticed {
            long.push(times);
        } else {
            short.push(times);
        }
    }
    remove_services(&cluster, &specs).await?;
    agent
        .wait_status("every workload stopped", |s| {
            held_pids(s).is_empty().then_some(())
        })
        .await?;
    agent.stop().await?;
    cluster.control.shutdown().await;
    Ok((short, long))
}

/// One cut: what it cuts and how long.
struct CutRound<'a> {
    cluster: &'a Cluster,
    node: NodeId,
    agent: &'a InProcessAgent,
    changes: usize,
    /// Heal only once the agent's link has reported itself down (its silence limit).
    until_noticed: bool,
}

impl CutRound<'_> {
    async fn run(&self, specs: &mut [ServiceSpec], round: usize) -> anyhow::Result<ReconnectRound> {
        let before = self.cluster.desired(self.node).await;
        let cut_at = Instant::now();
        self.agent.switch.cut();
        make_changes(self.cluster, specs, round, self.changes).await?;
        let desired = self.cluster.desired(self.node).await;
        let noticed = if self.until_noticed {
            let noticed = self
                .agent
                .wait_status("the link reported down", |s| {
                    (!s.link.connected).then(|| cut_at.elapsed())
                })
                .await?;
            Some(noticed)
        } else {
            None
        };
        let healed = Instant::now();
        self.agent.switch.heal();
        let mut convergence = Convergence::new(healed, &desired);
        self.agent
            .wait_status("the desired set running after the heal", |s| {
                convergence.observe(s).then_some(())
            })
            .await?;
        Ok(convergence.finish(noticed, convergence_work(&before, &desired)))
    }
}

/// `changes` changes, round robin over `specs`: even passes scale, odd passes set a new env
/// value (a new workload hash, so a restart).
async fn make_changes(
    cluster: &Cluster,
    specs: &mut [ServiceSpec],
    round: usize,
    changes: usize,
) -> anyhow::Result<()> {
    for change_idx in 0..changes {
        let pass = change_idx / specs.len();
        let spec = &mut specs[change_idx % specs.len()];
        if pass.is_multiple_of(2) {
            let replicas = 1 + u32::try_from((pass / 2 + round) % 4).expect("below 4");
            spec.mode = ServiceMode::Replicated { replicas };
            cluster
                .propose(Op::ScaleService {
                    name: spec.name.clone(),
                    replicas,
                })
                .await?;
        } else {
            spec.env
                .insert("BENCH_GENERATION".into(), format!("{round}.{change_idx}"));
            cluster.propose(Op::PutService(spec.clone())).await?;
        }
    }
    Ok(())
}

/// Whether `status` holds workloads for exactly the `desired` replicas, each with its desired
/// workload hash and in one of `states`.
fn converged(
    status: &AgentStatus,
    desired: &BTreeMap<ReplicaId, u64>,
    states: &[TaskState],
) -> bool {
    let held = status.replicas.iter().filter(|r| r.pid.is_some()).count();
    held == desired.len()
        && desired.iter().all(|(replica, hash)| {
            let hash = format!("{hash:016x}");
            status.replicas.iter().any(|r| {
                &r.replica == replica
                    && states.contains(&r.state)
                    && r.pid.is_some()
                    && r.workload_hash.as_deref() == Some(&hash)
            })
        })
}

/// What `service ps` calls done.
const RUNNING: &[TaskState] = &[TaskState::Running];
/// Every desired process exists; some may still be reported as starting.
const HELD: &[TaskState] = &[TaskState::Starting, TaskState::Running];

/// What it takes to go from `before` to `desired`: [kept, restarted, started, stopped].
fn convergence_work(
    before: &BTreeMap<ReplicaId, u64>,
    desired: &BTreeMap<ReplicaId, u64>,
) -> [usize; 4] {
    let mut work = [0; 4];
    for (replica, hash) in desired {
        match before.get(replica) {
            Some(old) if old == hash => work[0] += 1,
            Some(_) => work[1] += 1,
            None => work[2] += 1,
        }
    }
    work[3] = before.keys().filter(|r| !desired.contains_key(r)).count();
    work
}

// ---------------------------------------------------------------------------------------------
// 4. Memory
// ---------------------------------------------------------------------------------------------

struct MemoryFigures {
    /// (VmRSS, VmHWM) of the agent idle with no workloads.
    idle_kib: (Option<u64>, Option<u64>),
    /// (VmRSS, VmHWM) of the agent with `memory_workloads` workloads.
    loaded_kib: (Option<u64>, Option<u64>),
}

/// One connected agent: its memory idle, then with `memory_workloads` `sleep` workloads.
async fn memory(bin: &Path, root: &Path, counts: Counts) -> anyhow::Result<MemoryFigures> {
    progress("memory: one agent, idle");
    let cluster = Cluster::start(root, "memory").await?;
    let (dir, _) = cluster.join("edge-memory").await;
    let mut agent = AgentProcess::spawn(bin, &dir)?;
    agent
        .wait_status("the agent connected", |s| s.link.connected.then_some(()))
        .await?;
    tokio::time::sleep(counts.memory_settle).await;
    let read = |pid| (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));
    let idle_kib = read(agent.pid());

    progress(&format!(
        "memory: one agent, {} workloads",
        counts.memory_workloads
    ));
    let replicas = counts.memory_workloads;
    let spec = sleep_spec("mem", ServiceMode::Replicated { replicas })?;
    cluster.propose(Op::PutService(spec)).await?;
    agent
        .wait_status("every workload running", |s| {
            (running(s).len() == replicas as usize).then_some(())
        })
        .await?;
    tokio::time::sleep(counts.memory_settle).await;
    let loaded_kib = read(agent.pid());

    cluster
        .propose(Op::RemoveService(service_name("mem")?))
        .await?;
    agent
        .wait_status("every workload stopped", |s| {
            held_pids(s).is_empty().then_some(())
        })
        .await?;
    agent.stop().await?;
    cluster.control.shutdown().await;
    Ok(MemoryFigures {
        idle_kib,
        loaded_kib,
    })
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn print_header(settings: Settings, counts: Counts, bin: &Path, stale: Option<&Path>) {
    let quick = settings.quick;
    let mut env = String::new();
    if quick {
        env.push_str("WARREN_BENCH_QUICK=1 ");
    }
    if counts.propagation_agents != FULL.propagation_agents {
        env.push_str(&format!(
            "WARREN_BENCH_AGENTS={} ",
            counts.propagation_agents
        ));
    }
    if settings.only_propagation {
        env.push_str("WARREN_BENCH_ONLY=propagation ");
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "optimized"
    };
    println!(
        "reproduce: cargo build --release -p warren-cli && {env}cargo bench -p warren-tests --bench agent"
    );
    println!(
        "warren edge agent on loopback: {profile} bench, {cpus} CPUs{}",
        if quick { ", WARREN_BENCH_QUICK" } else { "" }
    );
    println!(
        "agents: `{} agent run --metrics none` subprocesses (the link-cut agent: Agent::run \
         in this process); control: one in-process node (default config); workloads: `sleep`; \
         agent reconcile interval {} ms",
        bin.display(),
        RECONCILE_INTERVAL.as_millis()
    );
    if let Some(stale) = stale {
        println!(
            "WARNING: {} is newer than the binary: rebuild it, or these figures are for older code",
            stale.display()
        );
    }
    println!("times start just before the call that causes them; nearest-rank percentiles");
    println!();
}

fn print_propagation(figures: &PropagationFigures, counts: Counts) {
    println!(
        "1. propagation: global service create -> `sleep` running on each of {} connected \
         agents, {} rounds per run",
        counts.propagation_agents, counts.propagation_rounds
    );
    table_head();
    let runs = [
        (
            format!("agents idle ({} ms) before each create", SETTLE.as_millis()),
            &figures.settled,
        ),
        (
            "back to back (right after the last round stopped)".to_owned(),
            &figures.back_to_back,
        ),
    ];
    for (what, run) in runs {
        println!("  {what}");
        row(
            "  Control::propose returned (committed, applied)",
            &run.proposed,
        );
        if figures.children {
            row("  workload process exists (per agent)", &run.process);
            row(
                "  workload process exists (last agent of the round)",
                &run.last_process,
            );
        }
        row(
            "  agent status.json shows it running (per agent)",
            &run.status,
        );
        row(
            "  CPU of the bench's own polling (per round)",
            &run.poll_cpu,
        );
        if !run.agent_cpu.is_empty() {
            // One agent's reading is in 10 ms ticks: the mean over agents and rounds is the
            // figure, not its percentiles.
            println!(
                "    CPU per create, until settled: one agent {:.2} ms (mean of {}), control \
                 {:.1} ms (mean of {}; the bench process less its polling)",
                mean_ms(&run.agent_cpu),
                run.agent_cpu.len(),
                mean_ms(&run.control_cpu),
                run.control_cpu.len(),
            );
        }
    }
    println!(
        "  load average (1, 5, 15 min): {} at the start, {} at the end",
        figures.load[0], figures.load[1]
    );
    if !figures.children {
        println!("  (process times not measured: /proc/<pid>/task/<tid>/children is missing)");
    }
    println!(
        "  status.json says `starting` until the follow-up pass, {} ms after the start",
        FOLLOW_UP_PASS.as_millis()
    );
    println!();
}

fn mean_ms(samples: &[Duration]) -> f64 {
    let total: Duration = samples.iter().sum();
    total.as_secs_f64() * 1000.0 / samples.len().max(1) as f64
}

fn print_boot(boots: &[BootFigures], counts: Counts) {
    println!(
        "2. offline boot: control down, spawn `warren agent run` -> all cached workloads \
         running, {} rounds each",
        counts.boot_rounds
    );
    table_head();
    for boot in boots {
        let k = boot.workloads;
        row(
            &format!("{k} killed beforehand, started: processes exist"),
            &boot.started_process,
        );
        row(
            &format!("{k} killed beforehand, started: status shows running"),
            &boot.started_status,
        );
        row(
            &format!("{k} still running, adopted: status shows same pids"),
            &boot.adopted_status,
        );
    }
    println!();
}

fn print_reconnect(figures: &ReconnectFigures, counts: Counts) {
    println!(
        "3. reconnect: {} changes to the agent's {} services (scale 1-4 / new env) while it is \
         cut off, then until it runs exactly the desired set",
        counts.reconnect_changes, counts.reconnect_services
    );
    table_head();
    let times = |rounds: &[ReconnectRound], pick: fn(&ReconnectRound) -> Duration| {
        rounds.iter().map(pick).collect::<Vec<Duration>>()
    };
    let restart = &figures.restart;
    println!(
        "  agent stopped (SIGTERM; workloads keep running), `warren agent run` spawned again; \
         from the spawn"
    );
    row(
        "  first status.json (cached view)",
        &times(restart, |r| r.first_status),
    );
    row("  link connected", &times(restart, |r| r.connected));
    row(
        "  desired set held (starting or running)",
        &times(restart, |r| r.held),
    );
    row(
        "  converged: exactly the desired set running",
        &times(restart, |r| r.running),
    );
    print_work(restart);
    println!(
        "  link cut by the transport's FaultSwitch under the agent's QUIC socket (agent in this \
         process, Agent::run), agent running throughout; from the heal"
    );
    let short = &figures.short_cut;
    println!(
        "    healed right after the changes: the connection survived, so control's queued \
         deltas arrive one per revision"
    );
    row(
        "    desired set held (starting or running)",
        &times(short, |r| r.held),
    );
    row(
        "    converged: exactly the desired set running",
        &times(short, |r| r.running),
    );
    print_work(short);
    let long = &figures.long_cut;
    println!(
        "    healed once the link reported itself down (after {} s of silence)",
        SILENCE_LIMIT.as_secs()
    );
    let noticed: Vec<Duration> = long.iter().filter_map(|r| r.noticed).collect();
    row("    cut -> link reported down", &noticed);
    row("    link connected", &times(long, |r| r.connected));
    row(
        "    desired set held (starting or running)",
        &times(long, |r| r.held),
    );
    row(
        "    converged: exactly the desired set running",
        &times(long, |r| r.running),
    );
    print_work(long);
    println!(
        "  a replaced workload (new env) is stopped in one pass and started in the follow-up \
         pass {} ms later; status reports coalesce for {} ms while views keep being read",
        FOLLOW_UP_PASS.as_millis(),
        REPORT_COALESCE.as_millis()
    );
    println!();
}

/// The mean work per round: kept, restarted, started, stopped.
fn print_work(rounds: &[ReconnectRound]) {
    let n_rounds = rounds.len().max(1) as f64;
    let mean = |idx: usize| rounds.iter().map(|r| r.work[idx]).sum::<usize>() as f64 / n_rounds;
    println!(
        "    work per round (mean): {:.1} kept, {:.1} restarted (env), {:.1} started, {:.1} \
         stopped",
        mean(0),
        mean(1),
        mean(2),
        mean(3),
    );
}

fn print_memory(figures: &MemoryFigures, counts: Counts) {
    println!(
        "4. memory: one `warren agent run` process, connected, after {} s settled",
        counts.memory_settle.as_secs()
    );
    println!("  {:<56} {:>10} {:>10}", "", "VmRSS", "VmHWM");
    println!(
        "  {:<56} {:>10} {:>10}",
        "0 workloads",
        mib(figures.idle_kib.0),
        mib(figures.idle_kib.1)
    );
    println!(
        "  {:<56} {:>10} {:>10}",
        format!("{} sleep workloads", counts.memory_workloads),
        mib(figures.loaded_kib.0),
        mib(figures.loaded_kib.1)
    );
    println!();
}
