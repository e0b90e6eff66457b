//! A run's report: JSON for machines (`report.json` in the run dir; `run --json` prints them
//! all on stdout) and a human summary (the timeline, each invariant with its evidence, the
//! figures).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::check::{Figures, InvariantResult, Verdict};
use crate::observe::Workload;
use crate::record::{Event, Record};
use crate::runner::Outcome;
use crate::scenario::Scenario;

/// Bumped when a field changes meaning or goes away.
pub const REPORT_VERSION: u32 = 1;

/// What `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub report_version: u32,
    pub scenario: String,
    pub file: String,
    pub about: String,
    pub run_id: String,
    pub run_dir: String,
    /// `pass`, or `fail` when an invariant failed or the run was aborted.
    pub result: String,
    /// The self-check knob was set: the run was meant to fail.
    pub self_check: bool,
    pub started_at_ms: u64,
    pub duration_s: f64,
    pub aborted: Option<String>,
    pub invariants: Vec<InvariantResult>,
    pub figures: Figures,
    pub timeline: Vec<Event>,
    /// Everything recorded, for tools that want more than the timeline.
    pub record: Record,
    pub workloads: Vec<Workload>,
}

impl Report {
    /// Builds the report of one run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &Scenario,
        file: &str,
        run_id: &str,
        run_dir: &str,
        started_at_ms: u64,
        self_check: bool,
        outcome: &Outcome,
    ) -> Report {
        Report {
            report_version: REPORT_VERSION,
            scenario: scenario.name.clone(),
            file: file.to_owned(),
            about: scenario.about.clone(),
            run_id: run_id.to_owned(),
            run_dir: run_dir.to_owned(),
            result: if outcome.passed() { "pass" } else { "fail" }.to_owned(),
            self_check,
            started_at_ms,
            duration_s: outcome.duration.as_secs_f64(),
            aborted: outcome.aborted.clone(),
            invariants: outcome.invariants.clone(),
            figures: outcome.figures.clone(),
            timeline: outcome.record.timeline.clone(),
            record: outcome.record.clone(),
            workloads: outcome.history.workloads.clone(),
        }
    }

    /// Whether every invariant held and every step ran.
    pub fn passed(&self) -> bool {
        self.result == "pass"
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== scenario {} ({}) run {} — {:.1}s",
            self.scenario, self.file, self.run_id, self.duration_s
        );
        if !self.about.is_empty() {
            let _ = writeln!(out, "   {}", self.about.trim());
        }
        self.write_timeline(&mut out);
        self.write_invariants(&mut out);
        self.write_figures(&mut out);
        if let Some(reason) = &self.aborted {
            let _ = writeln!(out, "ABORTED: {}", one_line(reason, 400));
        }
        let _ = writeln!(
            out,
            "result: {}{}",
            self.result.to_uppercase(),
            if self.self_check {
                " (self-check run: the broken agent must make it FAIL)"
            } else {
                ""
            }
        );
        out
    }

    /// One line per event, `!` marking what went wrong.
    fn write_timeline(&self, out: &mut String) {
        let _ = writeln!(out, "timeline:");
        for event in &self.timeline {
            let mark = if event.ok { " " } else { "!" };
            let _ = write!(
                out,
                " {mark}{:>7.1}s  {:<6} {:<13} {}",
                event.t_ms as f64 / 1000.0,
                event.step,
                event.kind,
                event.text
            );
            if let Some(detail) = &event.detail {
                let _ = write!(out, " — {}", one_line(detail, 160));
            }
            out.push('\n');
        }
    }

    /// One line per invariant; the evidence only of those that failed.
    fn write_invariants(&self, out: &mut String) {
        let _ = writeln!(out, "invariants:");
        for invariant in &self.invariants {
            let verdict = match invariant.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::NotExercised => "n/a ",
            };
            let _ = writeln!(
                out,
                "  {verdict} {:<30} {}",
                invariant.name, invariant.summary
            );
            if invariant.verdict == Verdict::Fail {
                for line in &invariant.evidence {
                    let _ = writeln!(out, "         - {line}");
                }
            }
        }
    }

    fn write_figures(&self, out: &mut String) {
        let f = &self.figures;
        let list = |v: &[f64]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter()
                    .map(|s| format!("{s:.2}s"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let _ = writeln!(
            out,
            "figures: convergence {} · failover {} · writes acked {}/{} · writes lost {} · interruptions {} · workloads watched {}",
            list(&f.convergence_s),
            list(&f.failover_s),
            f.writes_acked,
            f.writes_sent,
            f.writes_lost,
            f.interruptions,
            f.workloads_watched
        );
    }
}

fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_details_become_one_short_line() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("abcdefghijkl", 5), "abcde…");
    }
}
