//! Runs a scenario's steps against a live fleet, recording what it does while the
//! [`Observer`] watches the agents; then reads the end state and checks the invariants.
//!
//! "Converged" (the `converge` step) means, all at once:
//! - every agent that is not removed has its `warren` running, its link up, and has stored
//!   the view control last announced to it;
//! - the replicas control wants running (`service ps`, desired `running`) are exactly the
//!   replicas the agents run (`status.json` says running and `/proc` has the process), and
//!   control reports each of them `running`;
//! - a removed node runs no process but (perhaps) its agent.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::Signal;
use warren_api::rest::{ClusterStatus, NodeInfo, ReplicaInfo, ServiceInfo};
use warren_api::{DesiredState, NodeState};

use crate::check::{self, Figures, FinalState, InvariantResult, Verdict};
use crate::fault::Fault;
use crate::fleet::{Fleet, Role, admin_conf_api};
use crate::netns;
use crate::observe::{History, Observer, Watched, proc_start_ticks};
use crate::record::{
    Convergence, Event, Expectation, Failover, Kill, Reboot, Record, Window, WriteRecord,
};
use crate::scenario::{CliSpec, Expect, Scenario, Step, Write};

/// How often a `converge` step re-checks.
const CONVERGE_POLL: Duration = Duration::from_millis(250);
/// Per-request timeout the harness gives the CLI: longer than the control plane's write
/// timeout (5 s), so a minority node's "no quorum" answer arrives, yet short enough that a
/// paused control node does not stall a step for long.
const CLI_TIMEOUT: &str = "8s";
/// How long the observer keeps watching after the last step, so a restart an agent makes a
/// pass or two after converging is still seen.
const SETTLE: Duration = Duration::from_secs(5);
/// Pause between retries of a CLI step with `retry_for_s`.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

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
}

/// The CLI's result.
struct CliRun {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
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
            Step::Restart { node } => {
                self.fleet.kill(node)?;
                self.fleet.restart(node)?;
                self.event(at, "restart", &format!("restart node {node}"), true, None);
                Ok(())
            }
            Step::KillLeader {} => self.kill_leader(at),
            Step::Flap {
                fault,
                times,
                down_s,
                up_s,
            } => {
                for round in 1..=*times {
                    let at = format!("{at}.{round}");
                    self.apply(fault, &at)?;
                    self.sleep(Duration::from_secs_f64(*down_s))?;
                    self.heal(fault, &at)?;
                    self.sleep(Duration::from_secs_f64(*up_s))?;
                }
                Ok(())
            }
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
            Step::Repeat { times, steps } => {
                for round in 1..=*times {
                    self.steps(steps, &format!("{at}.{round}."), round)?;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, fault: &Fault, at: &str) -> Result<()> {
        fault.apply(self.fleet)?;
        let from_ms = self.now_ms();
        self.record.windows.push(Window {
            fault: fault.to_string(),
            from_ms,
            to_ms: None,
            network: is_network(fault),
        });
        self.active
            .push((fault.clone(), self.record.windows.len() - 1));
        self.event(at, "fault", &fault.to_string(), true, None);
        Ok(())
    }

    fn heal(&mut self, fault: &Fault, at: &str) -> Result<()> {
        let index = self
            .active
            .iter()
            .position(|(f, _)| f == fault)
            .ok_or_else(|| anyhow!("heal `{fault}`: not in place"))?;
        let (fault, window) = self.active.remove(index);
        fault.heal(self.fleet)?;
        let to_ms = self.now_ms();
        self.record.windows[window].to_ms = Some(to_ms);
        self.event(at, "heal", &format!("heal: {fault}"), true, None);
        Ok(())
    }

    /// Heals every fault in place, latest first, going on past a failure (the first is
    /// returned): one fault that cannot be healed must not leave the others in place.
    fn heal_all(&mut self, at: &str) -> Result<()> {
        let mut first_error = None;
        while let Some((fault, _)) = self.active.last().cloned() {
            if let Err(error) = self.heal(&fault, at) {
                // Forget it either way, or the loop would never end; teardown removes it.
                self.active.retain(|(f, _)| *f != fault);
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// `warren --config … --timeout 8s words…` from the operator's seat, as an operator types
    /// it: the CLI finds the control nodes in the fleet's admin config, which the cluster keeps
    /// current. `api` sends it to that one control node instead; and while the harness has
    /// control nodes killed or paused, it passes the config's addresses with those last
    /// (`--api`), so that the figures it measures do not include the client's connect timeout
    /// on a node the harness knows is frozen.
    fn cli_once(&self, words: &[String], api: Option<&str>) -> Result<CliRun> {
        let stopped: Vec<String> = self
            .active
            .iter()
            .filter_map(|(fault, _)| match fault {
                Fault::Kill { node } | Fault::Pause { node } => self.fleet.api_addr(node).ok(),
                _ => None,
            })
            .collect();
        let targets = match api {
            Some(name) => Some(self.fleet.api_addr(name)?),
            None if stopped.is_empty() => None,
            None => {
                let mut all = admin_conf_api(&self.fleet.admin_conf())?;
                all.sort_by_key(|addr| stopped.contains(addr));
                Some(all.join(","))
            }
        };
        let mut args: Vec<&str> = vec!["--timeout", CLI_TIMEOUT];
        if let Some(targets) = &targets {
            args.extend(["--api", targets.as_str()]);
        }
        args.extend(words.iter().map(String::as_str));
        let started = Instant::now();
        let output = self
            .fleet
            .cli_command(&args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run warren {}", words.join(" ")))?;
        Ok(CliRun {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            took: started.elapsed(),
        })
    }

    /// A read through the CLI, parsed from `-o json`.
    fn read_json<T: serde::de::DeserializeOwned>(&self, words: &[&str]) -> Result<T> {
        let mut all: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        all.extend(["-o".to_owned(), "json".to_owned()]);
        let run = self.cli_once(&all, None)?;
        if !run.ok {
            bail!("warren {} failed: {}", words.join(" "), run.stderr);
        }
        serde_json::from_str(&run.stdout)
            .with_context(|| format!("parse the JSON of warren {}", words.join(" ")))
    }

    fn cli_step(&mut self, spec: &CliSpec, at: &str, round: u32) -> Result<()> {
        let words = spec.words(round)?;
        let shown = words.join(" ");
        let wanted_output = |run: &CliRun| {
            spec.output_contains
                .as_deref()
                .is_none_or(|needle| run.stdout.contains(needle))
        };
        let write = Write::of(&words);
        let retry_until = spec
            .retry_for_s
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        let sent_ms = self.now_ms();
        let mut attempts = 0;
        let run = loop {
            self.check_cancel()?;
            attempts += 1;
            let run = self.cli_once(&words, spec.api.as_deref())?;
            if (run.ok && wanted_output(&run))
                || retry_until.is_none_or(|until| Instant::now() >= until)
            {
                break run;
            }
            // A failed attempt of a write may still have applied: it counts as sent.
            if let (Some(write), false) = (&write, run.ok) {
                let done_ms = self.now_ms();
                self.record.writes.push(WriteRecord {
                    step: at.to_owned(),
                    sent_ms,
                    done_ms,
                    write: write.clone(),
                    acked: false,
                    command: shown.clone(),
                    expected_failure: spec.expect == Expect::Fail,
                });
            }
            std::thread::sleep(RETRY_PAUSE);
        };
        let done_ms = self.now_ms();
        if let Some(write) = write {
            self.record.writes.push(WriteRecord {
                step: at.to_owned(),
                sent_ms,
                done_ms,
                write,
                acked: run.ok,
                command: shown.clone(),
                expected_failure: spec.expect == Expect::Fail,
            });
            if run.ok {
                if let Some(index) = self.pending_failover.take() {
                    self.record.failovers[index].first_write_ms = Some(done_ms);
                }
            }
        }
        let target = spec
            .api
            .as_deref()
            .map_or(String::new(), |a| format!(" (api {a})"));
        let text = format!("warren {shown}{target}");
        let detail = if run.ok {
            let out = run.stdout.trim();
            let first = out.lines().next().unwrap_or("");
            format!(
                "ok in {:.2}s after {attempts} attempts{}{first}",
                run.took.as_secs_f64(),
                if first.is_empty() { "" } else { ": " }
            )
        } else {
            format!(
                "failed in {:.2}s after {attempts} attempts: {}",
                run.took.as_secs_f64(),
                run.stderr
            )
        };
        let stated = spec.expect == Expect::Fail
            || spec.fail_within_s.is_some()
            || spec.error_contains.is_some()
            || spec.output_contains.is_some();
        match spec.expect {
            Expect::Ok if !run.ok && !stated => {
                self.event(at, "cli", &text, false, Some(detail.clone()));
                bail!("{text}: {detail}");
            }
            _ => {}
        }
        if stated {
            let mut problems = Vec::new();
            if spec.expect == Expect::Fail && run.ok {
                problems.push("it succeeded but must fail".to_owned());
            }
            if spec.expect == Expect::Ok && !run.ok {
                problems.push("it failed but must succeed".to_owned());
            }
            if run.ok && !wanted_output(&run) {
                problems.push(format!(
                    "its output does not show {:?}",
                    spec.output_contains.as_deref().unwrap_or("")
                ));
            }
            if !run.ok {
                if let Some(limit) = spec.fail_within_s {
                    if run.took.as_secs_f64() > limit {
                        problems.push(format!(
                            "it failed after {:.2}s, not within {limit}s",
                            run.took.as_secs_f64()
                        ));
                    }
                }
                if let Some(needle) = &spec.error_contains {
                    if !run.stderr.contains(needle.as_str()) {
                        problems.push(format!("its error does not say {needle:?}"));
                    }
                }
            }
            let passed = problems.is_empty();
            let mut expected = format!(
                "`warren {shown}`{target} must {}",
                if spec.expect == Expect::Fail {
                    "fail"
                } else {
                    "succeed"
                }
            );
            if let Some(needle) = &spec.output_contains {
                expected.push_str(&format!(" showing {needle:?}"));
            }
            if let Some(limit) = spec.fail_within_s {
                expected.push_str(&format!(" within {limit}s"));
            }
            if let Some(needle) = &spec.error_contains {
                expected.push_str(&format!(" saying {needle:?}"));
            }
            self.record.expectations.push(Expectation {
                step: at.to_owned(),
                text: expected,
                passed,
                detail: if passed {
                    detail.clone()
                } else {
                    format!("{}; {detail}", problems.join("; "))
                },
            });
        }
        self.event(
            at,
            "cli",
            &text,
            run.ok != (spec.expect == Expect::Fail),
            Some(detail),
        );
        Ok(())
    }

    /// `dig @127.0.0.11 NAME A` inside the agent's namespace, checked as an expectation;
    /// asked again every [`DNS_RETRY_EVERY`] until it holds, within `bounds.within`.
    fn dns(&mut self, node: &str, name: &str, bounds: DnsBounds, at: &str) -> Result<()> {
        let netns_name = self.fleet.node(node)?.host.netns.clone();
        let started = Instant::now();
        let (addresses, problems) = loop {
            let (addresses, problems) = dig(&netns_name, name, bounds)?;
            let out_of_time = bounds
                .within
                .is_none_or(|within| started.elapsed() + DNS_RETRY_EVERY > within);
            if problems.is_empty() || out_of_time {
                break (addresses, problems);
            }
            self.sleep(DNS_RETRY_EVERY)?;
        };
        let passed = problems.is_empty();
        let mut detail = format!("answer [{}]", addresses.join(" "));
        if bounds.within.is_some() {
            detail.push_str(&format!(" after {:.2}s", started.elapsed().as_secs_f64()));
        }
        let DnsBounds { min, max, .. } = bounds;
        let bounds = match (min, max) {
            (Some(a), Some(b)) if a == b => format!("exactly {a}"),
            (Some(a), Some(b)) => format!("{a} to {b}"),
            (Some(a), None) => format!("at least {a}"),
            (None, Some(b)) => format!("at most {b}"),
            (None, None) => "any number of".to_owned(),
        };
        self.record.expectations.push(Expectation {
            step: at.to_owned(),
            text: format!("DNS on {node}: {name} gives {bounds} addresses"),
            passed,
            detail: if passed {
                detail.clone()
            } else {
                format!("{}; {detail}", problems.join("; "))
            },
        });
        self.event(
            at,
            "dns",
            &format!("dig {name} on {node}"),
            passed,
            Some(detail),
        );
        Ok(())
    }

    fn kill_workload(&mut self, node: &str, service: &str, at: &str) -> Result<()> {
        self.observer.sample_now(&self.watched, self.epoch);
        let victim = self.observer.with(|h| {
            h.alive_on(node)
                .into_iter()
                .find(|w| w.service == service)
                .map(|w| (w.replica.clone(), w.pid))
        });
        let (replica, pid) =
            victim.ok_or_else(|| anyhow!("no running workload of {service} on {node}"))?;
        netns::signal(pid, Signal::KILL)?;
        let t_ms = self.now_ms();
        self.record.kills.push(Kill {
            node: node.to_owned(),
            replica: replica.clone(),
            pid,
            t_ms,
        });
        self.event(
            at,
            "kill_workload",
            &format!("kill -9 {replica} on {node} (pid {pid})"),
            true,
            None,
        );
        Ok(())
    }

    fn reboot(&mut self, node: &str, at: &str) -> Result<()> {
        let netns_name = self.fleet.node(node)?.host.netns.clone();
        // What was alive right before: only that is explained by the power-off.
        self.observer.sample_now(&self.watched, self.epoch);
        let t_ms = self.observer.with(|h| h.last_sample_ms);
        self.record.reboots.push(Reboot {
            node: node.to_owned(),
            t_ms,
        });
        if self.fleet.node(node)?.pid().is_some() {
            self.fleet.kill(node)?;
        }
        netns::kill_all_in(&netns_name)?;
        self.event(
            at,
            "reboot",
            &format!("power off {node}: agent and every workload killed"),
            true,
            None,
        );
        // A delay in place stays in place: its holder died with the rest.
        self.fleet.revive_holders(node)?;
        self.fleet.restart(node)?;
        self.event(at, "reboot", &format!("{node} booted again"), true, None);
        Ok(())
    }

    fn kill_leader(&mut self, at: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            let status: Result<ClusterStatus> = self.read_json(&["cluster", "status"]);
            if let Ok(status) = status {
                if let Some(leader) = status.members.iter().find(|m| m.leader) {
                    break leader.name.clone();
                }
            }
            if Instant::now() >= deadline {
                bail!("no leader known within 30s");
            }
            self.sleep(Duration::from_millis(250))?;
        };
        let fault = Fault::Kill {
            node: leader.clone(),
        };
        self.apply(&fault, at)?;
        let t_ms = self.now_ms();
        self.record.failovers.push(Failover {
            killed: leader,
            t_ms,
            first_write_ms: None,
        });
        self.pending_failover = Some(self.record.failovers.len() - 1);
        Ok(())
    }

    fn converge(&mut self, bound: Duration, at: &str) -> Result<()> {
        let started = self.now_ms();
        let from_ms = self
            .record
            .windows
            .iter()
            .filter_map(|w| w.to_ms)
            .max()
            .filter(|&healed| {
                // Only a heal since the previous converge step counts.
                self.record
                    .convergences
                    .last()
                    .is_none_or(|c| healed > c.from_ms + c.took_ms.unwrap_or(c.bound_ms))
            })
            .unwrap_or(started);
        let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        let removed: BTreeSet<String> = self
            .record
            .removed_nodes()
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.observer
            .with(|h| h.removed.extend(removed.iter().cloned()));
        let mut last_reason;
        loop {
            self.check_cancel()?;
            let checked = self.converged(&removed);
            let now = self.now_ms();
            match checked {
                Ok(summary) => {
                    let took = now.saturating_sub(from_ms);
                    let within = took <= bound_ms;
                    self.record.convergences.push(Convergence {
                        step: at.to_owned(),
                        from_ms,
                        bound_ms,
                        took_ms: within.then_some(took),
                        detail: summary.clone(),
                    });
                    self.event(
                        at,
                        "converge",
                        &format!("converged in {:.2}s", took as f64 / 1000.0),
                        within,
                        Some(summary),
                    );
                    return Ok(());
                }
                Err(reason) => last_reason = reason,
            }
            if now >= from_ms + bound_ms {
                self.record.convergences.push(Convergence {
                    step: at.to_owned(),
                    from_ms,
                    bound_ms,
                    took_ms: None,
                    detail: last_reason.clone(),
                });
                self.event(
                    at,
                    "converge",
                    &format!("not converged within {:.0}s", bound.as_secs_f64()),
                    false,
                    Some(last_reason),
                );
                return Ok(());
            }
            std::thread::sleep(CONVERGE_POLL);
        }
    }

    /// `Ok(summary)` when converged, else `Err(what differs)`.
    fn converged(&self, removed: &BTreeSet<String>) -> Result<String, String> {
        let services: Vec<ServiceInfo> = self
            .read_json(&["service", "ls"])
            .map_err(|e| format!("{e:#}"))?;
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        for service in &services {
            let name = service.spec.name.to_string();
            let replicas: Vec<ReplicaInfo> = self
                .read_json(&["service", "ps", &name])
                .map_err(|e| format!("{e:#}"))?;
            for replica in replicas
                .iter()
                .filter(|r| r.desired == DesiredState::Running)
            {
                if replica.state != "running" {
                    return Err(format!(
                        "control reports {} on {} {}",
                        replica.id, replica.node_name, replica.state
                    ));
                }
                wanted.insert((replica.node_name.clone(), replica.id.clone()));
            }
        }
        self.observer.sample_now(&self.watched, self.epoch);
        let (latest, alive) = self.observer.with(|h| {
            let alive: BTreeMap<String, usize> = removed
                .iter()
                .map(|n| (n.clone(), h.alive_on(n).len()))
                .collect();
            (h.latest.clone(), alive)
        });
        let mut running: BTreeSet<(String, String)> = BTreeSet::new();
        for node in self.fleet.nodes().iter().filter(|n| n.role == Role::Agent) {
            if removed.contains(&node.name) {
                let workloads = alive.get(&node.name).copied().unwrap_or(0);
                let helpers = self.fleet.helper_pids(&node.name);
                let others: Vec<u32> = netns::pids_in(&node.host.netns)
                    .map_err(|e| format!("{e:#}"))?
                    .into_iter()
                    .filter(|&p| Some(p) != node.pid() && !helpers.contains(&p))
                    .collect();
                if workloads > 0 || !others.is_empty() {
                    return Err(format!(
                        "removed node {} still runs processes {others:?}",
                        node.name
                    ));
                }
                continue;
            }
            let Some(pid) = node.pid().filter(|&p| proc_start_ticks(p).is_some()) else {
                return Err(format!("agent {} is not running", node.name));
            };
            let Some(status) = latest.get(&node.name) else {
                return Err(format!("agent {} has no status yet", node.name));
            };
            // A status left by an earlier process (before a restart, or of an agent that died)
            // says nothing about the agent running now.
            if status.agent_pid != pid {
                return Err(format!(
                    "agent {}'s status is from pid {}, not the running {pid}",
                    node.name, status.agent_pid
                ));
            }
            if !status.link.connected {
                return Err(format!("agent {} is not connected", node.name));
            }
            if status.link.revision < status.link.control_revision {
                return Err(format!(
                    "agent {} stores revision {} of {}",
                    node.name, status.link.revision, status.link.control_revision
                ));
            }
            for replica in &status.replicas {
                if replica.state == "running"
                    && replica.pid.is_some_and(|p| proc_start_ticks(p).is_some())
                {
                    running.insert((node.name.clone(), replica.replica.to_string()));
                }
            }
        }
        if wanted != running {
            let missing: Vec<String> = wanted
                .difference(&running)
                .map(|(n, r)| format!("{r} on {n}"))
                .collect();
            let extra: Vec<String> = running
                .difference(&wanted)
                .map(|(n, r)| format!("{r} on {n}"))
                .collect();
            return Err(format!(
                "not running: [{}]; running but not wanted: [{}]",
                missing.join(", "),
                extra.join(", ")
            ));
        }
        Ok(format!(
            "{} replicas of {} services run where control wants them",
            wanted.len(),
            services.len()
        ))
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

/// Whether a fault cuts the network (the others stop processes).
fn is_network(fault: &Fault) -> bool {
    !matches!(fault, Fault::Kill { .. } | Fault::Pause { .. })
}

/// How often a `dns` step with `within_s` asks again.
const DNS_RETRY_EVERY: Duration = Duration::from_millis(250);

/// What a `dns` step expects of the answer.
#[derive(Clone, Copy, Debug)]
struct DnsBounds {
    min: Option<usize>,
    max: Option<usize>,
    within: Option<Duration>,
}

/// One `dig +short NAME A` against the agent's DNS inside `netns_name`: the addresses, and
/// what about the answer breaks `bounds` (empty when it holds).
fn dig(netns_name: &str, name: &str, bounds: DnsBounds) -> Result<(Vec<String>, Vec<String>)> {
    let output = netns::exec_in(netns_name, "dig")
        .args(["+short", "+time=2", "+tries=1", "@127.0.0.11", name, "A"])
        .stdin(Stdio::null())
        .output()
        .context("run dig (install bind9-dnsutils)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let addresses: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
        .collect();
    let count = addresses.len();
    let mut problems = Vec::new();
    if !output.status.success() {
        problems.push(format!(
            "dig failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    if let Some(min) = bounds.min
        && count < min
    {
        problems.push(format!("{count} addresses, fewer than {min}"));
    }
    if let Some(max) = bounds.max
        && count > max
    {
        problems.push(format!("{count} addresses, more than {max}"));
    }
    Ok((addresses, problems))
}
