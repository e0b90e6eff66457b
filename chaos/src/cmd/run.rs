//! `warren-chaos run`: scenario files, one fleet each, a report each, and the summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use warren_chaos::check::Verdict;
use warren_chaos::firewall::Firewall;
use warren_chaos::fleet::{AgentRuntime, Fleet, FleetOptions};
use warren_chaos::report::Report;
use warren_chaos::run::{REGISTRY_DIR, RunId};
use warren_chaos::runner::Outcome;
use warren_chaos::scenario::Scenario;
use warren_chaos::{netns, preflight, runner};

use super::signals::watch_signals;

/// `run`'s flags.
pub(crate) struct RunOptions {
    pub(crate) warren: Option<PathBuf>,
    pub(crate) runs_dir: PathBuf,
    pub(crate) firewall: Option<Firewall>,
    pub(crate) json: bool,
    pub(crate) self_check: bool,
    pub(crate) ready_timeout: Duration,
    pub(crate) image_tars: Vec<PathBuf>,
}

pub(crate) enum RunError {
    /// Bad scenario files, not root, tools missing: exit 2.
    CannotRun(anyhow::Error),
    /// The harness itself failed mid-run: exit 1.
    Failed(anyhow::Error),
}

/// The environment variable that breaks agents for the self-check.
const SELF_CHECK_ENV: &str = "WARREN_SELFCHECK_STOP_ON_DISCONNECT";

/// Runs every scenario; `Ok(true)` when the run as a whole succeeded (all passed, or, with
/// `--self-check`, all failed on `workloads_keep_running`).
pub(crate) fn run_scenarios(files: &[PathBuf], options: RunOptions) -> Result<bool, RunError> {
    let scenarios = load_scenarios(files).map_err(RunError::CannotRun)?;
    let containers = scenarios
        .iter()
        .any(|(_, s)| s.fleet.runtime == AgentRuntime::Containerd);
    let setup = Setup::new(&options, containers).map_err(RunError::CannotRun)?;
    let mut reports = Vec::new();
    let mut not_started: Vec<String> = Vec::new();
    for (file, scenario) in &scenarios {
        if setup.cancel.load(Ordering::SeqCst) {
            break;
        }
        match run_one(file, scenario, &setup, &options) {
            Some(report) => reports.push(report),
            None => not_started.push(scenario.name.clone()),
        }
    }
    if options.json {
        match serde_json::to_string_pretty(&reports) {
            Ok(text) => say!("{text}"),
            Err(error) => eprintln!("warren-chaos: cannot encode the reports: {error}"),
        }
    }
    if setup.cancel.load(Ordering::SeqCst) {
        return Err(RunError::Failed(anyhow::anyhow!(
            "interrupted; fleets were torn down"
        )));
    }
    let ok = not_started.is_empty()
        && if options.self_check {
            reports.iter().all(caught)
        } else {
            reports.iter().all(Report::passed)
        };
    if !options.json {
        print_summary(&reports, &not_started, options.self_check, ok);
    }
    Ok(ok)
}

/// Reads and checks every file before any fleet starts: a typo in the last file must not
/// cost the runs of the others.
fn load_scenarios(files: &[PathBuf]) -> Result<Vec<(&PathBuf, Scenario)>> {
    let mut scenarios = Vec::new();
    for file in files {
        scenarios.push((file, Scenario::load(file)?));
    }
    Ok(scenarios)
}

/// What every scenario of one `run` shares.
struct Setup {
    firewall: Firewall,
    warren: PathBuf,
    runs_dir: PathBuf,
    /// This binary, started inside namespaces as the `Delay` fault's holder.
    holder_program: PathBuf,
    /// Set by a signal: the current scenario stops at its next check, no other starts.
    cancel: Arc<AtomicBool>,
    /// `--image-tar` files, absolute.
    images: Vec<PathBuf>,
}

impl Setup {
    /// Checks the tools (`containers`: also containerd's), finds the binaries and starts
    /// watching for signals.
    fn new(options: &RunOptions, containers: bool) -> Result<Setup> {
        let firewall = preflight::check_tools(options.firewall)?;
        if containers {
            preflight::check_container_tools()?;
        }
        let images = preflight::image_tars(&options.image_tars)?;
        let warren = preflight::locate_warren(options.warren.as_deref())?;
        let runs_dir = std::path::absolute(&options.runs_dir).context("resolve --runs-dir")?;
        let holder_program = std::env::current_exe().context("locate warren-chaos itself")?;
        let cancel = Arc::new(AtomicBool::new(false));
        watch_signals(
            cancel.clone(),
            "stopping after the current step, tearing down",
        )?;
        Ok(Setup {
            firewall,
            warren,
            runs_dir,
            holder_program,
            cancel,
            images,
        })
    }

    /// The fleet options of one scenario's run.
    fn fleet_options(&self, run_dir: &Path, options: &RunOptions) -> FleetOptions {
        FleetOptions {
            warren: self.warren.clone(),
            run_dir: run_dir.to_path_buf(),
            firewall: self.firewall,
            registry: PathBuf::from(REGISTRY_DIR),
            ready_timeout: options.ready_timeout,
            cancel: self.cancel.clone(),
            agent_env: if options.self_check {
                vec![(SELF_CHECK_ENV.to_owned(), "1".to_owned())]
            } else {
                Vec::new()
            },
            holder_program: self.holder_program.clone(),
            images: self.images.clone(),
        }
    }
}

/// One scenario on a fleet of its own: up, steps, down, report. `None` when the fleet did
/// not come up (the other scenarios still run and still report).
fn run_one(
    file: &Path,
    scenario: &Scenario,
    setup: &Setup,
    options: &RunOptions,
) -> Option<Report> {
    let run = RunId::random();
    let run_dir = setup.runs_dir.join(run.as_str());
    let fleet_options = setup.fleet_options(&run_dir, options);
    eprintln!(
        "warren-chaos: scenario {} ({}) run {run}, files in {}",
        scenario.name,
        file.display(),
        run_dir.display()
    );
    let started_at_ms = warren_api::clock::unix_now_ms();
    let mut fleet = match Fleet::up(run.clone(), &scenario.fleet.spec(), fleet_options) {
        Ok(fleet) => fleet,
        Err(error) => {
            eprintln!(
                "warren-chaos: scenario {}: the fleet did not come up: {error:#}",
                scenario.name
            );
            return None;
        }
    };
    let mut outcome = runner::run(&mut fleet, scenario, setup.cancel.clone());
    tear_down(fleet, &run, &mut outcome);
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
    write_report(&report, &path);
    if !options.json {
        say!("{}", report.human());
        say!("report: {}", path.display());
    }
    Some(report)
}

/// Takes the fleet down; a failed teardown, or a namespace of the run left behind, aborts
/// the outcome (unless it was aborted already).
fn tear_down(fleet: Fleet, run: &RunId, outcome: &mut Outcome) {
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
}

/// `report.json` in the run dir; a failure is said on stderr, the run goes on.
fn write_report(report: &Report, path: &Path) {
    match serde_json::to_vec_pretty(report) {
        Ok(bytes) => {
            if let Err(error) = std::fs::write(path, bytes) {
                eprintln!("warren-chaos: cannot write {}: {error}", path.display());
            }
        }
        Err(error) => eprintln!("warren-chaos: cannot encode the report: {error}"),
    }
}

/// Whether a self-check run caught the broken agent. Caught means: workloads were seen
/// dying, not merely "nothing was checked".
fn caught(r: &Report) -> bool {
    r.figures.interruptions > 0
        && r.invariants
            .iter()
            .any(|i| i.name == "workloads_keep_running" && i.verdict == Verdict::Fail)
}

/// One line per scenario, then the self-check's verdict.
fn print_summary(reports: &[Report], not_started: &[String], self_check: bool, ok: bool) {
    say!("summary:");
    for r in reports {
        let conv = r
            .figures
            .convergence_s
            .iter()
            .map(|s| format!("{s:.2}s"))
            .collect::<Vec<_>>()
            .join(" ");
        let verdict = if self_check {
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
    for name in not_started {
        say!("  FAIL   {name:<28} the fleet did not come up (see stderr)");
    }
    if self_check {
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
