//! The invariants, checked after a run over what the runner recorded ([`Record`]) and what the
//! observer saw ([`History`]). Pure functions: each returns pass, fail or "not exercised" with
//! the evidence for its verdict.
//!
//! | invariant | holds when |
//! |---|---|
//! | `no_acknowledged_write_lost` | every service ends as its last acknowledged write left it (or as a later unacknowledged write, which may have applied); a node whose removal was acknowledged is removed |
//! | `workloads_keep_running` | no workload process died during a fault unless the scenario caused it (killed it, rebooted its node, or changed or removed its service, or its node) |
//! | `no_restart_on_reconnect` | the same, outside faults: after a heal, unchanged workloads are adopted, never restarted |
//! | `agents_never_go_back` | no agent's view revision ever decreased |
//! | `converges_after_heal` | every `converge` step converged within its bound |
//! | `removed_node_stops_workloads` | a node whose removal was acknowledged runs no workload at the end |
//! | `killed_workloads_restarted` | every workload the scenario killed (or whose node it powered off) came back on its node within 20 s (restart policy, offline boot; also while cut off) |
//! | `operator_expectations` | every CLI step did what the scenario said (fail, fail fast, name the reason) |
//! | `overlay_connectivity` | at every `overlay` step, every running agent pinged every other running agent's WireGuard overlay address |
//!
//! Here: the verdict types, [`check_all`] and the figures. Each invariant lives in the file of
//! what it is about:
//! - `writes`: `no_acknowledged_write_lost`;
//! - `workloads`: which workload deaths the scenario explains, and the four invariants about
//!   workload processes;
//! - `revisions`: `agents_never_go_back`;
//! - `convergence`: `converges_after_heal`;
//! - `expectations`: `operator_expectations`;
//! - `overlay`: `overlay_connectivity`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::observe::History;
use crate::record::Record;

mod convergence;
mod expectations;
mod overlay;
mod revisions;
mod workloads;
mod writes;

use convergence::converges_after_heal;
use expectations::operator_expectations;
use overlay::overlay_connectivity;
use revisions::agents_never_go_back;
use workloads::{
    killed_workloads_restarted, no_restart_on_reconnect, removed_node_stops_workloads,
    unexplained_deaths, workloads_keep_running,
};
use writes::{lost_writes, no_acknowledged_write_lost};

/// At most this many evidence lines per invariant (the count says how many more).
const EVIDENCE_LINES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// The scenario never did what the invariant is about.
    NotExercised,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvariantResult {
    pub name: String,
    pub verdict: Verdict,
    /// One line: what was checked and what was found.
    pub summary: String,
    pub evidence: Vec<String>,
}

impl InvariantResult {
    fn new(name: &str, verdict: Verdict, summary: String, mut evidence: Vec<String>) -> Self {
        if evidence.len() > EVIDENCE_LINES {
            let more = evidence.len() - EVIDENCE_LINES;
            evidence.truncate(EVIDENCE_LINES);
            evidence.push(format!("… and {more} more"));
        }
        InvariantResult {
            name: name.to_owned(),
            verdict,
            summary,
            evidence,
        }
    }

    /// The scenario never did what the invariant is about.
    fn not_exercised(name: &str, summary: &str) -> Self {
        InvariantResult::new(name, Verdict::NotExercised, summary.to_owned(), Vec::new())
    }

    /// Fails with `fail_summary` when `failed`, else passes with `pass_summary`; the
    /// evidence either way.
    fn fail_or_pass(
        name: &str,
        failed: bool,
        fail_summary: String,
        pass_summary: String,
        evidence: Vec<String>,
    ) -> Self {
        if failed {
            InvariantResult::new(name, Verdict::Fail, fail_summary, evidence)
        } else {
            InvariantResult::new(name, Verdict::Pass, pass_summary, evidence)
        }
    }
}

/// The cluster's state at the end of the run, as the CLI reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// Service name → replicas wanted (`None` for global services). `None` when the
    /// control plane could not be asked.
    pub services: Option<BTreeMap<String, Option<u32>>>,
    /// Nodes registered and not removed.
    pub nodes: Option<BTreeSet<String>>,
}

/// What a run measured, for the report and the summary line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub convergence_s: Vec<f64>,
    pub failover_s: Vec<f64>,
    pub writes_sent: usize,
    pub writes_acked: usize,
    pub writes_lost: usize,
    /// Workload processes that died without the scenario causing it.
    pub interruptions: usize,
    pub workloads_watched: usize,
}

fn secs(ms: u64) -> f64 {
    // Milliseconds of a run fit an f64 exactly.
    #[allow(clippy::cast_precision_loss)]
    let ms = ms as f64;
    ms / 1000.0
}

fn at(ms: u64) -> String {
    format!("t={:.1}s", secs(ms))
}

/// Every invariant, in the order of the table above, and the figures.
pub fn check_all(
    record: &Record,
    history: &History,
    end: &FinalState,
) -> (Vec<InvariantResult>, Figures) {
    let lost = lost_writes(record, end);
    let deaths = unexplained_deaths(record, history);
    let (during, outside): (Vec<_>, Vec<_>) = deaths.iter().partition(|(_, in_fault)| *in_fault);
    let results = vec![
        no_acknowledged_write_lost(record, end, &lost),
        workloads_keep_running(record, history, &during),
        no_restart_on_reconnect(record, history, &outside),
        agents_never_go_back(history),
        converges_after_heal(record),
        removed_node_stops_workloads(record, history),
        killed_workloads_restarted(record, history),
        operator_expectations(record),
        overlay_connectivity(record),
    ];
    let figures = Figures {
        convergence_s: record
            .convergences
            .iter()
            .filter_map(|c| c.took_ms.map(secs))
            .collect(),
        failover_s: record
            .failovers
            .iter()
            .filter_map(|f| f.first_write_ms.map(|w| secs(w.saturating_sub(f.t_ms))))
            .collect(),
        // Retries of one step are one write.
        writes_sent: record
            .writes
            .iter()
            .map(|w| w.step.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        writes_acked: record.writes.iter().filter(|w| w.acked).count(),
        writes_lost: lost.len(),
        interruptions: deaths.len(),
        workloads_watched: history.workloads.len(),
    };
    (results, figures)
}

#[cfg(test)]
mod tests;
