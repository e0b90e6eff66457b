//! Runs a scenario's steps against a live fleet, recording what it does while the
//! [`Observer`] watches the agents; then reads the end state and checks the invariants.
//!
//! The step dispatch (`Runner::step`) is here; each kind of step is carried out in a file
//! of its own:
//! - `faults`: `fault`, `heal`, `heal_all`, `flap`;
//! - `processes`: `kill_workload`, `reboot`, `restart`, `kill_leader`;
//! - `cli`: `cli` steps, and the runner's own reads through the CLI;
//! - `dns`: `dns` steps;
//! - `converge`: `converge` steps, and what "converged" means.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use warren_api::NodeState;
use warren_api::rest::{NodeInfo, ServiceInfo};

use crate::check::{self, Figures, FinalState, InvariantResult, Verdict};
use crate::fleet::{Fleet, Role};
use crate::observe::{History, Observer, Watched};
use crate::record::{Event, Expectation, Record};
use crate::scenario::{Scenario, Step};

mod cli;
mod converge;
mod dns;
mod faults;
mod overlay;
mod processes;

use crate::fault::Fault;
use dns::DnsBounds;

/// How long the observer keeps watching after the last step, so a restart an agent makes a
/// pass or two after converging is still seen.
const SETTLE: Duration = Duration::from_secs(5);

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub record: Record,
    pub history: History,
    pub end: FinalState,
    pub invariants: Vec<InvariantResult>,
    pub figures: Figures,
    /// Set when a step could not be carried out (the run stopped there).
    pub aborted: Option<String>,
    pub duration: Duration,
}

impl Outcome {
    /// No invariant failed and every step ran.
    pub fn passed(&self) -> bool {
        self.aborted.is_none() && self.invariants.iter().all(|i| i.verdict != Verdict::Fail)
    }
}

/// Runs `scenario` on `fleet` (already up). Step failures abort the run but still produce an
/// outcome; faults left in place are healed before the end state is read.
pub fn run(fleet: &mut Fleet, scenario: &Scenario, cancel: Arc<AtomicBool>) -> Outcome {
    let epoch = Instant::now();
    let watched: Vec<Watched> = fleet
        .nodes()
        .iter()
        .filter(|n| n.role == Role::Agent)
        .map(|n| Watched {
            name: n.name.clone(),
            data_dir: n.data_dir.clone(),
        })
        .collect();
    let observer = Observer::start(watched.clone(), epoch);
    let mut runner = Runner {
        fleet,
        scenario,
        epoch,
        observer,
        watched,
        record: Record::default(),
        active: Vec::new(),
        cancel,
        pending_failover: None,
        overlay_addresses: std::collections::BTreeMap::new(),
    };
    let aborted = runner
        .steps(&scenario.steps, "", 1)
        .err()
        .map(|e| format!("{e:#}"));
    if let Some(reason) = &aborted {
        runner.event("", "note", "run aborted", false, Some(reason.clone()));
    }
    // Whatever is still in place is healed, so the end state can be read.
    let healed = runner.heal_all("end");
    if aborted.is_none() && healed.is_ok() {
        runner.event(
            "end",
            "wait",
            &format!("settle {}s: the observer keeps watching", SETTLE.as_secs()),
            true,
            None,
        );
        let _ = runner.sleep(SETTLE);
    }
    if let Err(error) = healed {
        runner.event(
            "end",
            "note",
            "heal at the end failed",
            false,
            Some(format!("{error:#}")),
        );
    }
    let end = runner.final_state();
    runner.observer.sample_now(&runner.watched, epoch);
    let Runner {
        observer, record, ..
    } = runner;
    let history = observer.finish();
    let (invariants, figures) = check::check_all(&record, &history, &end);
    Outcome {
        record,
        history,
        end,
        invariants,
        figures,
        aborted,
        duration: epoch.elapsed(),
    }
}

struct Runner<'a> {
    fleet: &'a mut Fleet,
    scenario: &'a Scenario,
    epoch: Instant,
    observer: Observer,
    watched: Vec<Watched>,
    record: Record,
    /// Faults in place, with the index of their window.
    active: Vec<(Fault, usize)>,
    cancel: Arc<AtomicBool>,
    /// Index into `record.failovers` of a leader kill waiting for its first write.
    pending_failover: Option<usize>,
    /// Each agent's overlay address, learned from `node ls` at the first `overlay` step.
    overlay_addresses: std::collections::BTreeMap<String, String>,
}

impl Runner<'_> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn event(&mut self, step: &str, kind: &str, text: &str, ok: bool, detail: Option<String>) {
        let t_ms = self.now_ms();
        if ok {
            tracing::info!(
                step,
                kind,
                detail = detail.as_deref().unwrap_or(""),
                "{text}"
            );
        } else {
            tracing::warn!(
                step,
                kind,
                detail = detail.as_deref().unwrap_or(""),
                "{text}"
            );
        }
        self.record.timeline.push(Event {
            t_ms,
            step: step.to_owned(),
            kind: kind.to_owned(),
            text: text.to_owned(),
            ok,
            detail,
        });
    }

    /// Records an operator expectation, held when `problems` is empty (else the detail leads
    /// with them); returns whether it held.
    fn expectation(&mut self, at: &str, text: String, problems: &[String], detail: &str) -> bool {
        let passed = problems.is_empty();
        self.record.expectations.push(Expectation {
            step: at.to_owned(),
            text,
            passed,
            detail: if passed {
                detail.to_owned()
            } else {
                format!("{}; {detail}", problems.join("; "))
            },
        });
        passed
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.check_cancel()?;
            std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
        }
        Ok(())
    }

    fn steps(&mut self, steps: &[Step], prefix: &str, round: u32) -> Result<()> {
        for (index, step) in steps.iter().enumerate() {
            self.check_cancel()?;
            let at = format!("{prefix}{}", index + 1);
            self.step(step, &at, round)
                .with_context(|| format!("step {at}"))?;
        }
        Ok(())
    }

    fn step(&mut self, step: &Step, at: &str, round: u32) -> Result<()> {
        match step {
            Step::Fault(fault) => self.apply(fault, at),
            Step::Heal(fault) => self.heal(fault, at),
            Step::HealAll {} => self.heal_all(at),
            Step::Wait(seconds) => {
                self.event(at, "wait", &format!("wait {seconds}s"), true, None);
                self.sleep(Duration::from_secs_f64(*seconds))
            }
            Step::Cli(cli) => self.cli_step(&cli.spec(), at, round),
            Step::KillWorkload { node, service } => self.kill_workload(node, service, at),
            Step::Reboot { node } => self.reboot(node, at),
            Step::Restart { node } => self.restart(node, at),
            Step::KillLeader {} => self.kill_leader(at),
            Step::Flap {
                fault,
                times,
                down_s,
                up_s,
            } => self.flap(fault, *times, *down_s, *up_s, at),
            Step::Converge { within_s } => {
                let bound = within_s.unwrap_or(self.scenario.converge_within_s);
                self.converge(Duration::from_secs_f64(bound), at)
            }
            Step::Dns {
                node,
                name,
                min,
                max,
                within_s,
            } => {
                let bounds = DnsBounds {
                    min: *min,
                    max: *max,
                    within: within_s.map(Duration::from_secs_f64),
                };
                self.dns(node, name, bounds, at)
            }
            Step::Overlay { nodes, within_s } => {
                let within = Duration::from_secs_f64(within_s.unwrap_or(0.0));
                self.overlay(nodes, within, at)
            }
            Step::Repeat { times, steps } => {
                for round in 1..=*times {
                    self.steps(steps, &format!("{at}.{round}."), round)?;
                }
                Ok(())
            }
        }
    }

    /// Services and nodes as control reports them at the end (`None` where it cannot be read).
    fn final_state(&self) -> FinalState {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let services: Result<Vec<ServiceInfo>> = self.read_json(&["service", "ls"]);
            let nodes: Result<Vec<NodeInfo>> = self.read_json(&["node", "ls"]);
            match (services, nodes) {
                (Ok(services), Ok(nodes)) => {
                    return FinalState {
                        services: Some(
                            services
                                .into_iter()
                                .map(|s| (s.spec.name.to_string(), s.replicas_desired))
                                .collect(),
                        ),
                        nodes: Some(
                            nodes
                                .into_iter()
                                .filter(|n| n.node.state != NodeState::Removed)
                                .map(|n| n.node.name)
                                .collect(),
                        ),
                    };
                }
                (services, nodes)
                    if Instant::now() >= deadline || self.cancel.load(Ordering::SeqCst) =>
                {
                    tracing::error!(
                        services = ?services.err(),
                        nodes = ?nodes.err(),
                        "cannot read the end state"
                    );
                    return FinalState::default();
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}
