//! `warren-chaos`: the partition harness's command line.
//!
//! `up` brings a fleet up in network namespaces and keeps it until Ctrl-C or SIGTERM;
//! `cleanup` removes every namespace and process a run left behind. With `cli`, this is the
//! only crate that reads argv or prints to stdout. The hidden `delay-holder` is the packet
//! holder of the `Delay` fault, which the harness starts inside a node's namespace.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use warren_chaos::delay::{self, DelaySpec};
use warren_chaos::firewall::Firewall;
use warren_chaos::fleet::{Fleet, FleetOptions, FleetSpec, Role};
use warren_chaos::report::Report;
use warren_chaos::run::{PREFIX, REGISTRY_DIR, RunId, RunRecord};
use warren_chaos::scenario::Scenario;
use warren_chaos::{netns, preflight, runner};

/// Like `println!`, but a closed stdout (the reader went away) never aborts the harness: it
/// must still tear the fleet down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Exit code when the harness cannot run here at all (not root, tools missing).
const EXIT_CANNOT_RUN: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "warren-chaos",
    version,
    about = "Partition harness for Warren: real warren processes in network namespaces"
)]
struct Cli {
    /// Log filter for the harness's own messages (stderr).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Bring a fleet up, print how to reach it, keep it until Ctrl-C or SIGTERM, then clean up.
    #[command(after_help = "Example:\n  sudo warren-chaos up --control 1 --sites a:1,b:1")]
    Up {
        /// Number of control nodes (c1, c2, …, in site `central`).
        #[arg(long, default_value_t = 1)]
        control: usize,
        /// Sites and their agent counts: SITE:AGENTS,… (agents are named SITE-1, SITE-2, …).
        #[arg(long, default_value = "a:1,b:1")]
        sites: String,
        /// The warren binary. Default: next to warren-chaos, else target/release/warren,
        /// else target/debug/warren.
        #[arg(long, value_name = "PATH")]
        warren: Option<PathBuf>,
        /// Where node data and logs go (kept after the run). Default: /tmp/warren-chaos/<run id>.
        #[arg(long, value_name = "DIR")]
        run_dir: Option<PathBuf>,
        /// Which tool writes partition rules. Default: nft if installed, else iptables.
        #[arg(long, value_enum)]
        firewall: Option<Firewall>,
        /// How long each node may take to come up, in seconds.
        #[arg(long, default_value_t = 60)]
        ready_timeout_s: u64,
    },
    /// Run scenario files: for each, bring a fleet up, run its steps while watching every
    /// agent, check the invariants, write a report, tear the fleet down.
    ///
    /// Exit 0 when every scenario passed, 1 when an invariant failed or a step could not
    /// run, 2 when the harness cannot run here. With --self-check the agents are broken on
    /// purpose (they stop their workloads when the link to control is lost): then exit 0
    /// only if every scenario FAILED its `workloads_keep_running` check.
    #[command(
        after_help = "Examples:\n  sudo warren-chaos run chaos/scenarios/site-partition.yaml\n  \
                            sudo warren-chaos run chaos/scenarios/*.yaml --json > reports.json\n  \
                            sudo warren-chaos run --self-check chaos/scenarios/agent-cut-off.yaml"
    )]
    Run {
        /// Scenario files (YAML; see chaos/scenarios/ and docs/chaos.md).
        #[arg(required = true, value_name = "SCENARIO")]
        scenarios: Vec<PathBuf>,
        /// The warren binary. Default: next to warren-chaos, else target/release/warren,
        /// else target/debug/warren.
        #[arg(long, value_name = "PATH")]
        warren: Option<PathBuf>,
        /// Where each run's dir (node data, logs, report.json) goes, one per scenario.
        #[arg(long, value_name = "DIR", default_value = "/tmp/warren-chaos")]
        runs_dir: PathBuf,
        /// Which tool writes partition rules. Default: nft if installed, else iptables.
        #[arg(long, value_enum)]
        firewall: Option<Firewall>,
        /// Print the reports as a JSON array on stdout instead of the human summary.
        #[arg(long)]
        json: bool,
        /// Break the agents on purpose (WARREN_SELFCHECK_STOP_ON_DISCONNECT=1) and expect
        /// every scenario to fail: proof the checks can fail.
        #[arg(long)]
        self_check: bool,
        /// How long each node may take to come up, in seconds.
        #[arg(long, default_value_t = 60)]
        ready_timeout_s: u64,
    },
    /// Remove every namespace and process of earlier runs (crashed ones too).
    Cleanup {
        /// Only this run (its six-digit id).
        #[arg(long, value_name = "ID")]
        run: Option<String>,
        /// Also clean runs whose harness is still alive.
        #[arg(long)]
        force: bool,
    },
    /// Hold every packet queued to NFQUEUE QUEUE for MS ± JITTER_MS milliseconds (the `Delay`
    /// fault starts it inside a node's namespace; not for use by hand). Prints a ready line
    /// once the queue is bound; on SIGTERM lets everything it holds through and exits 0.
    #[command(hide = true)]
    DelayHolder {
        #[arg(long)]
        queue: u16,
        #[arg(long)]
        ms: u32,
        #[arg(long, default_value_t = 0)]
        jitter_ms: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(cli.log_level.as_str())
        .with_writer(std::io::stderr)
        .try_init();
    if !preflight::is_root() {
        eprintln!("{}", preflight::NEEDS_ROOT);
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let result = match cli.command {
        Command::Up {
            control,
            sites,
            warren,
            run_dir,
            firewall,
            ready_timeout_s,
        } => prepare_up(control, &sites, warren, run_dir, firewall, ready_timeout_s)
            .map_err(|e| (EXIT_CANNOT_RUN, e))
            .and_then(|(spec, options, run)| up(spec, options, run).map_err(|e| (1, e))),
        Command::Run {
            scenarios,
            warren,
            runs_dir,
            firewall,
            json,
            self_check,
            ready_timeout_s,
        } => {
            let options = RunOptions {
                warren,
                runs_dir,
                firewall,
                json,
                self_check,
                ready_timeout: Duration::from_secs(ready_timeout_s),
            };
            match run_scenarios(&scenarios, options) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(RunError::CannotRun(e)) => Err((EXIT_CANNOT_RUN, e)),
                Err(RunError::Failed(e)) => Err((1, e)),
            }
        }
        Command::Cleanup { run, force } => cleanup(run.as_deref(), force).map_err(|e| (1, e)),
        Command::DelayHolder {
            queue,
            ms,
            jitter_ms,
        } => delay_holder(queue, DelaySpec { ms, jitter_ms }).map_err(|e| (1, e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn prepare_up(
    control: usize,
    sites: &str,
    warren: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    firewall: Option<Firewall>,
    ready_timeout_s: u64,
) -> Result<(FleetSpec, FleetOptions, RunId)> {
    let firewall = preflight::check_tools(firewall)?;
    let warren = preflight::locate_warren(warren.as_deref())?;
    let spec = FleetSpec {
        control,
        sites: FleetSpec::parse_sites(sites)?,
    };
    spec.validate()?;
    let run = RunId::random();
    let run_dir = run_dir.unwrap_or_else(|| PathBuf::from("/tmp/warren-chaos").join(run.as_str()));
    let options = FleetOptions {
        warren,
        run_dir: std::path::absolute(&run_dir).context("resolve --run-dir")?,
        firewall,
        registry: PathBuf::from(REGISTRY_DIR),
        ready_timeout: Duration::from_secs(ready_timeout_s),
        cancel: Arc::new(AtomicBool::new(false)),
        agent_env: Vec::new(),
        holder_program: std::env::current_exe().context("locate warren-chaos itself")?,
    };
    Ok((spec, options, run))
}

fn up(spec: FleetSpec, options: FleetOptions, run: RunId) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    runtime.block_on(async move {
        // Before anything exists: from here on a signal means "tear down", never "die".
        let mut signals = Signals::new()?;
        let cancel = options.cancel.clone();
        tracing::info!(run = %run, run_dir = %options.run_dir.display(), firewall = ?options.firewall, "--- bring the fleet up");
        let mut starting = tokio::task::spawn_blocking(move || Fleet::up(run, &spec, options));
        let fleet = tokio::select! {
            fleet = &mut starting => fleet.context("start-up task")??,
            which = signals.next() => {
                tracing::warn!("{which} during start-up: stopping");
                cancel.store(true, Ordering::SeqCst);
                // Start-up fails at its next check and tears down what it built.
                match starting.await.context("start-up task")? {
                    Ok(fleet) => tokio::task::spawn_blocking(move || fleet.down()).await.context("teardown task")??,
                    Err(error) => tracing::info!(error = %format!("{error:#}"), "start-up stopped"),
                }
                return Ok(());
            }
        };
        print_guide(&fleet);
        let which = signals.next().await;
        tracing::info!("{which}: stopping the fleet");
        tokio::task::spawn_blocking(move || fleet.down())
            .await
            .context("teardown task")??;
        say!("warren-chaos done: namespaces and processes removed");
        Ok(())
    })
}

/// `run`'s flags.
struct RunOptions {
    warren: Option<PathBuf>,
    runs_dir: PathBuf,
    firewall: Option<Firewall>,
    json: bool,
    self_check: bool,
    ready_timeout: Duration,
}

enum RunError {
    /// Bad scenario files, not root, tools missing: exit 2.
    CannotRun(anyhow::Error),
    /// The harness itself failed mid-run: exit 1.
    Failed(anyhow::Error),
}

/// The environment variable that breaks agents for the self-check.
const SELF_CHECK_ENV: &str = "WARREN_SELFCHECK_STOP_ON_DISCONNECT";

/// Runs every scenario; `Ok(true)` when the run as a whole succeeded (all passed, or, with
/// `--self-check`, all failed on `workloads_keep_running`).
fn run_scenarios(files: &[PathBuf], options: RunOptions) -> Result<bool, RunError> {
    let mut scenarios = Vec::new();
    for file in files {
        scenarios.push((file, Scenario::load(file).map_err(RunError::CannotRun)?));
    }
    let firewall = preflight::check_tools(options.firewall).map_err(RunError::CannotRun)?;
    let warren =
        preflight::locate_warren(options.warren.as_deref()).map_err(RunError::CannotRun)?;
    let runs_dir = std::path::absolute(&options.runs_dir)
        .context("resolve --runs-dir")
        .map_err(RunError::CannotRun)?;
    let holder_program = std::env::current_exe()
        .context("locate warren-chaos itself")
        .map_err(RunError::CannotRun)?;
    let cancel = Arc::new(AtomicBool::new(false));
    watch_signals(
        cancel.clone(),
        "stopping after the current step, tearing down",
    )
    .map_err(RunError::CannotRun)?;
    let mut reports = Vec::new();
    let mut not_started: Vec<String> = Vec::new();
    for (file, scenario) in &scenarios {
        if cancel.load(Ordering::SeqCst) {
            break;
        }
        let run = RunId::random();
        let run_dir = runs_dir.join(run.as_str());
        let fleet_options = FleetOptions {
            warren: warren.clone(),
            run_dir: run_dir.clone(),
            firewall,
            registry: PathBuf::from(REGISTRY_DIR),
            ready_timeout: options.ready_timeout,
            cancel: cancel.clone(),
            agent_env: if options.self_check {
                vec![(SELF_CHECK_ENV.to_owned(), "1".to_owned())]
            } else {
                Vec::new()
            },
            holder_program: holder_program.clone(),
        };
        eprintln!(
            "warren-chaos: scenario {} ({}) run {run}, files in {}",
            scenario.name,
            file.display(),
            run_dir.display()
        );
        let started_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let mut fleet = match Fleet::up(run.clone(), &scenario.fleet.spec(), fleet_options) {
            Ok(fleet) => fleet,
            Err(error) => {
                // The other scenarios still run and still report.
                eprintln!(
                    "warren-chaos: scenario {}: the fleet did not come up: {error:#}",
                    scenario.name
                );
                not_started.push(scenario.name.clone());
                continue;
            }
        };
        let mut outcome = runner::run(&mut fleet, scenario, cancel.clone());
        let teardown = fleet.down();
        let left: Vec<String> = netns::list_namespaces()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&run.prefix()))
            .collect();
        if let Err(error) = teardown {
            outcome
                .aborted
                .get_or_insert(format!("teardown failed: {error:#}"));
        } else if !left.is_empty() {
            outcome
                .aborted
                .get_or_insert(format!("namespaces left behind: {}", left.join(" ")));
        }
        let report = Report::new(
            scenario,
            &file.display().to_string(),
            run.as_str(),
            &run_dir.display().to_string(),
            started_at_ms,
            options.self_check,
            &outcome,
        );
        let path = run_dir.join("report.json");
        match serde_json::to_vec_pretty(&report) {
            Ok(bytes) => {
                if let Err(error) = std::fs::write(&path, bytes) {
                    eprintln!("warren-chaos: cannot write {}: {error}", path.display());
                }
            }
            Err(error) => eprintln!("warren-chaos: cannot encode the report: {error}"),
        }
        if !options.json {
            say!("{}", report.human());
            say!("report: {}", path.display());
        }
        reports.push(report);
    }
    if options.json {
        match serde_json::to_string_pretty(&reports) {
            Ok(text) => say!("{text}"),
            Err(error) => eprintln!("warren-chaos: cannot encode the reports: {error}"),
        }
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(RunError::Failed(anyhow::anyhow!(
            "interrupted; fleets were torn down"
        )));
    }
    // Caught means: workloads were seen dying, not merely "nothing was checked".
    let caught = |r: &Report| {
        r.figures.interruptions > 0
            && r.invariants.iter().any(|i| {
                i.name == "workloads_keep_running"
                    && i.verdict == warren_chaos::check::Verdict::Fail
            })
    };
    let ok = not_started.is_empty()
        && if options.self_check {
            reports.iter().all(caught)
        } else {
            reports.iter().all(Report::passed)
        };
    if !options.json {
        say!("summary:");
        for r in &reports {
            let conv = r
                .figures
                .convergence_s
                .iter()
                .map(|s| format!("{s:.2}s"))
                .collect::<Vec<_>>()
                .join(" ");
            let verdict = if options.self_check {
                if caught(r) { "caught" } else { "MISSED" }
            } else if r.passed() {
                "PASS"
            } else {
                "FAIL"
            };
            say!(
                "  {verdict:<6} {:<28} {:>6.1}s  convergence [{conv}]  failover {:?}  writes lost {}  interruptions {}",
                r.scenario,
                r.duration_s,
                r.figures.failover_s,
                r.figures.writes_lost,
                r.figures.interruptions
            );
        }
        for name in &not_started {
            say!("  FAIL   {name:<28} the fleet did not come up (see stderr)");
        }
        if options.self_check {
            say!(
                "self-check {}: the broken agent was {}",
                if ok { "passed" } else { "FAILED" },
                if ok {
                    "caught by workloads_keep_running in every scenario"
                } else {
                    "NOT caught: the checks cannot be trusted"
                }
            );
        }
    }
    Ok(ok)
}

/// Sets `cancel` on SIGINT, SIGTERM or SIGHUP (a thread with its own runtime), so a run
/// stops at its next check and tears its fleet down (or a holder lets its packets go);
/// `then` says what happens next, for the log.
fn watch_signals(cancel: Arc<AtomicBool>, then: &'static str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    let mut signals = runtime.block_on(async { Signals::new() })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    let which = signals.next().await;
                    tracing::warn!("{which}: {then}");
                    cancel.store(true, Ordering::SeqCst);
                }
            });
        })
        .context("start the signal thread")?;
    Ok(())
}

/// `warren-chaos delay-holder`: holds queued packets until SIGTERM, then lets them all go.
fn delay_holder(queue: u16, spec: DelaySpec) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone(), "letting every held packet through")?;
    let stats = delay::run_holder(queue, spec, &stop)?;
    eprintln!(
        "delay-holder queue={queue} done: released {} on time, {} at once (over the bound), \
         {} early at the stop",
        stats.released, stats.overflowed, stats.flushed
    );
    Ok(())
}

/// What an operator needs to use the fleet.
fn print_guide(fleet: &Fleet) {
    let warren = fleet.cli_command(&[]);
    let words: Vec<String> = std::iter::once(warren.get_program())
        .chain(warren.get_args())
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let prefix = words.join(" ");
    say!(
        "fleet {} is up; files and logs in {}",
        fleet.run_id(),
        fleet.run_dir().display()
    );
    for node in fleet.nodes() {
        let role = match node.role {
            Role::Control => "control",
            Role::Agent => "agent",
        };
        say!(
            "  {:<10} {:<8} site {:<8} {:<12} netns {}  log {}",
            node.name,
            role,
            node.site,
            node.host.addr.to_string(),
            node.host.netns,
            node.log.display()
        );
    }
    say!("admin config: {}", fleet.admin_conf().display());
    say!("run CLI commands from the operator's seat (the bridge namespace):");
    say!("  {prefix} cluster status");
    say!("  {prefix} service create web --command 'sleep 1000' --replicas 2");
    say!("or a shell inside a node: ip netns exec <netns> bash");
    say!("Ctrl-C (or SIGTERM) stops the fleet and removes its namespaces");
    say!(
        "warren-chaos ready run={} config={}",
        fleet.run_id(),
        fleet.admin_conf().display()
    );
}

/// SIGINT, SIGTERM and SIGHUP, whichever comes first.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("handle SIGHUP")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// Removes runs' namespaces (and so their links and processes): recorded runs first, then any
/// namespace with the prefix that no record names (a run whose record was lost).
fn cleanup(only: Option<&str>, force: bool) -> Result<()> {
    if !preflight::on_path("ip") {
        anyhow::bail!("`ip` not found: install the iproute2 package");
    }
    let only = only.map(RunId::parse).transpose()?;
    let registry = PathBuf::from(REGISTRY_DIR);
    let records = RunRecord::load_all(&registry);
    let mut live = Vec::new();
    let mut runs: Vec<RunId> = Vec::new();
    for record in &records {
        let Ok(id) = RunId::parse(&record.run_id) else {
            continue;
        };
        if record.harness_alive() && !force {
            live.push(id);
        } else {
            runs.push(id);
        }
    }
    for name in netns::list_namespaces()? {
        if let Some(id) = RunId::of_name(&name) {
            if !live.contains(&id) && !runs.contains(&id) {
                runs.push(id);
            }
        }
    }
    for id in &live {
        if only.as_ref().is_none_or(|o| o == id) {
            say!("run {id}: its harness is still running; skipped (stop it, or pass --force)");
        }
    }
    let mut failed = 0;
    for id in runs
        .iter()
        .filter(|id| only.as_ref().is_none_or(|o| o == *id))
    {
        match netns::remove_namespaces(&id.prefix()) {
            Ok(removed) => {
                RunRecord::forget(&registry, id)?;
                say!("run {id}: removed {} namespaces", removed.len());
            }
            Err(error) => {
                failed += 1;
                eprintln!("run {id}: {error:#}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} runs could not be cleaned up");
    }
    if runs.is_empty() && live.is_empty() {
        say!("nothing to clean up (no {PREFIX}* namespaces, no recorded runs)");
    }
    Ok(())
}
