//! The `cli` step: a `warren` command from the operator's seat, retried as the scenario says,
//! recorded as a write when it is one, and checked against what the scenario expects of it.
//! The runner's own reads of the cluster ([`Runner::read_json`]) go the same way.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Runner;
use crate::fault::Fault;
use crate::fleet::admin_conf_api;
use crate::record::WriteRecord;
use crate::scenario::{CliSpec, Expect, Write};

/// Per-request timeout the harness gives the CLI: longer than the control plane's write
/// timeout (5 s), so a minority node's "no quorum" answer arrives, yet short enough that a
/// paused control node does not stall a step for long.
const CLI_TIMEOUT: &str = "8s";
/// Pause between retries of a CLI step with `retry_for_s`.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// One run of the `warren` CLI: exit status, output and how long it took.
struct CliRun {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Whether `warren words…` follows the rollout it starts unless told `--detach`:
/// `service update|scale|rollback` and `apply`.
fn follows_rollout(words: &[String]) -> bool {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let follows = matches!(
        words.as_slice(),
        ["service", "update" | "scale" | "rollback", ..] | ["apply", ..]
    );
    follows && !words.contains(&"--detach")
}

impl Runner<'_> {
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
        // A write is acknowledged when control has it; whether the fleet follows is what
        // `converge` steps and the invariants check, so writes do not follow their rollout.
        if follows_rollout(words) {
            args.push("--detach");
        }
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
    pub(super) fn read_json<T: serde::de::DeserializeOwned>(&self, words: &[&str]) -> Result<T> {
        let mut all: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        all.extend(["-o".to_owned(), "json".to_owned()]);
        let run = self.cli_once(&all, None)?;
        if !run.ok {
            bail!("warren {} failed: {}", words.join(" "), run.stderr);
        }
        serde_json::from_str(&run.stdout)
            .with_context(|| format!("parse the JSON of warren {}", words.join(" ")))
    }

    /// Runs a `cli` step: retried while `retry_for_s` allows, recorded as a write when it is
    /// one, checked against what the step states. A failure nobody stated aborts the run.
    pub(super) fn cli_step(&mut self, spec: &CliSpec, at: &str, round: u32) -> Result<()> {
        let words = spec.words(round)?;
        let shown = words.join(" ");
        let write = Write::of(&words);
        let sent_ms = self.now_ms();
        let (run, attempts) = self.cli_attempts(spec, &words, at, sent_ms, write.as_ref())?;
        if let Some(write) = write {
            let done_ms = self.push_write(at, sent_ms, write, run.ok, &shown, spec);
            if run.ok
                && let Some(index) = self.pending_failover.take()
            {
                self.record.failovers[index].first_write_ms = Some(done_ms);
            }
        }
        let target = spec
            .api
            .as_deref()
            .map_or(String::new(), |a| format!(" (api {a})"));
        let text = format!("warren {shown}{target}");
        let detail = run_detail(&run, attempts);
        let stated = states_expectation(spec);
        if spec.expect == Expect::Ok && !run.ok && !stated {
            self.event(at, "cli", &text, false, Some(detail.clone()));
            bail!("{text}: {detail}");
        }
        if stated {
            let problems = expectation_problems(spec, &run);
            let expected = expectation_text(spec, &shown, &target);
            self.expectation(at, expected, &problems, &detail);
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

    /// Runs the command until it succeeds with the wanted output or `retry_for_s` has
    /// passed: the last run, and how many attempts it took.
    fn cli_attempts(
        &mut self,
        spec: &CliSpec,
        words: &[String],
        at: &str,
        sent_ms: u64,
        write: Option<&Write>,
    ) -> Result<(CliRun, u32)> {
        let retry_until = spec
            .retry_for_s
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        let mut attempts = 0;
        loop {
            self.check_cancel()?;
            attempts += 1;
            let run = self.cli_once(words, spec.api.as_deref())?;
            if (run.ok && shows_wanted_output(spec, &run))
                || retry_until.is_none_or(|until| Instant::now() >= until)
            {
                return Ok((run, attempts));
            }
            // A failed attempt of a write may still have applied: it counts as sent.
            if let (Some(write), false) = (write, run.ok) {
                self.push_write(at, sent_ms, write.clone(), false, &words.join(" "), spec);
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// Records a write sent at `sent_ms` and answered now; returns now.
    fn push_write(
        &mut self,
        at: &str,
        sent_ms: u64,
        write: Write,
        acked: bool,
        command: &str,
        spec: &CliSpec,
    ) -> u64 {
        let done_ms = self.now_ms();
        self.record.writes.push(WriteRecord {
            step: at.to_owned(),
            sent_ms,
            done_ms,
            write,
            acked,
            command: command.to_owned(),
            expected_failure: spec.expect == Expect::Fail,
        });
        done_ms
    }
}

/// Whether a success printed what `output_contains` asks for (if it asks).
fn shows_wanted_output(spec: &CliSpec, run: &CliRun) -> bool {
    spec.output_contains
        .as_deref()
        .is_none_or(|needle| run.stdout.contains(needle))
}

/// The timeline's detail of a run: how long, how many attempts, and the first line of the
/// output or the error.
fn run_detail(run: &CliRun, attempts: u32) -> String {
    if run.ok {
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
    }
}

/// Whether the step says more than "must succeed": then it is checked as an operator
/// expectation instead of aborting the run when it fails.
fn states_expectation(spec: &CliSpec) -> bool {
    spec.expect == Expect::Fail
        || spec.fail_within_s.is_some()
        || spec.error_contains.is_some()
        || spec.output_contains.is_some()
}

/// What about `run` breaks what the step states (empty when it held).
fn expectation_problems(spec: &CliSpec, run: &CliRun) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.expect == Expect::Fail && run.ok {
        problems.push("it succeeded but must fail".to_owned());
    }
    if spec.expect == Expect::Ok && !run.ok {
        problems.push("it failed but must succeed".to_owned());
    }
    if run.ok && !shows_wanted_output(spec, run) {
        problems.push(format!(
            "its output does not show {:?}",
            spec.output_contains.as_deref().unwrap_or("")
        ));
    }
    if !run.ok {
        if let Some(limit) = spec.fail_within_s
            && run.took.as_secs_f64() > limit
        {
            problems.push(format!(
                "it failed after {:.2}s, not within {limit}s",
                run.took.as_secs_f64()
            ));
        }
        if let Some(needle) = &spec.error_contains
            && !run.stderr.contains(needle.as_str())
        {
            problems.push(format!("its error does not say {needle:?}"));
        }
    }
    problems
}

/// What the step states, in words, for the report.
fn expectation_text(spec: &CliSpec, shown: &str, target: &str) -> String {
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
    expected
}

#[cfg(test)]
mod tests {
    use super::follows_rollout;

    #[test]
    fn writes_that_follow_their_rollout_are_sent_detached() {
        let words = |line: &str| -> Vec<String> { line.split(' ').map(str::to_owned).collect() };
        for line in [
            "service scale web 5",
            "service update web --env A=1",
            "service rollback web",
            "apply -f x.yaml",
        ] {
            assert!(follows_rollout(&words(line)), "{line}");
        }
        for line in [
            "service create web --command sleep",
            "service ls",
            "service scale web 5 --detach",
            "node ls",
        ] {
            assert!(!follows_rollout(&words(line)), "{line}");
        }
    }
}
