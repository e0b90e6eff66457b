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

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::observe::{History, Workload};
use crate::record::Record;
use crate::scenario::Write;

/// How long after a kill the workload must be back.
const RESTART_WITHIN_MS: u64 = 20_000;

/// At most this many evidence lines per invariant (the count says how many more).
const EVIDENCE_LINES: usize = 12;

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// The scenario never did what the invariant is about.
    NotExercised,
}

/// One invariant's result.
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

/// Figures of a run.
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

/// What a service may look like after a write: absent, or present with these replicas
/// (`None`: any count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Absent,
    Present(Option<u32>),
}

impl Outcome {
    fn admits(self, actual: Option<Option<u32>>) -> bool {
        match (self, actual) {
            (Outcome::Absent, None) => true,
            (Outcome::Present(None), Some(_)) => true,
            (Outcome::Present(Some(want)), Some(got)) => got == Some(want),
            _ => false,
        }
    }
}

/// Lost writes, each with the line of evidence saying why.
fn lost_writes(record: &Record, end: &FinalState) -> Vec<String> {
    let mut lost = Vec::new();
    if let Some(services) = &end.services {
        let mut by_service: BTreeMap<&str, Vec<&crate::record::WriteRecord>> = BTreeMap::new();
        for write in &record.writes {
            if let Some(service) = write.write.service() {
                by_service.entry(service).or_default().push(write);
            }
        }
        for (service, writes) in by_service {
            let Some(last_acked) = writes.iter().rposition(|w| w.acked) else {
                continue;
            };
            // The last acknowledged write's outcome, or one of a later unacknowledged write
            // (its outcome is unknown: it may have applied).
            let mut allowed = Vec::new();
            for (index, write) in writes.iter().enumerate() {
                let outcome = match &write.write {
                    // `None`: global; any count is fine.
                    Write::Create { replicas, .. } => Outcome::Present(*replicas),
                    Write::Scale { replicas, .. } => Outcome::Present(Some(*replicas)),
                    // An update may change the count too (`--replicas`): any count.
                    Write::Update { .. } => Outcome::Present(None),
                    Write::Remove { .. } => Outcome::Absent,
                    Write::RemoveNode { .. } => continue,
                };
                if index >= last_acked {
                    allowed.push(outcome);
                }
            }
            let actual = services.get(service).copied();
            if !allowed.iter().any(|o| o.admits(actual)) {
                let write = writes[last_acked];
                let found = match actual {
                    None => "absent".to_owned(),
                    Some(None) => "present (global)".to_owned(),
                    Some(Some(n)) => format!("present with {n} replicas"),
                };
                lost.push(format!(
                    "step {} `warren {}` acknowledged at {}, but service {service} is {found} at the end",
                    write.step,
                    write.command,
                    at(write.done_ms)
                ));
            }
        }
    }
    if let Some(nodes) = &end.nodes {
        for write in record.writes.iter().filter(|w| w.acked) {
            if let Write::RemoveNode { node } = &write.write {
                if nodes.contains(node) {
                    lost.push(format!(
                        "step {} `warren {}` acknowledged at {}, but node {node} is still registered",
                        write.step,
                        write.command,
                        at(write.done_ms)
                    ));
                }
            }
        }
    }
    lost
}

fn no_acknowledged_write_lost(
    record: &Record,
    end: &FinalState,
    lost: &[String],
) -> InvariantResult {
    const NAME: &str = "no_acknowledged_write_lost";
    let acked = record.writes.iter().filter(|w| w.acked).count();
    if end.services.is_none() || end.nodes.is_none() {
        return InvariantResult::new(
            NAME,
            Verdict::Fail,
            "the control plane could not be read at the end, so no write can be confirmed".into(),
            Vec::new(),
        );
    }
    if acked == 0 {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "no write was acknowledged".into(),
            Vec::new(),
        );
    }
    let unacked = record.writes.len() - acked;
    if lost.is_empty() {
        InvariantResult::new(
            NAME,
            Verdict::Pass,
            format!(
                "{acked} acknowledged writes all present at the end ({unacked} unacknowledged)"
            ),
            Vec::new(),
        )
    } else {
        InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!("{} of {acked} acknowledged writes lost", lost.len()),
            lost.to_vec(),
        )
    }
}

/// Whether a death somewhere between `last_alive` and `found_gone` may have happened inside a
/// fault window (network or process): the sample interval is not allowed to move it out.
fn in_fault(record: &Record, last_alive: u64, found_gone: u64) -> bool {
    record
        .windows
        .iter()
        .any(|w| w.from_ms <= found_gone && w.to_ms.is_none_or(|to| last_alive <= to))
}

/// Why the scenario itself ended this workload, if it did.
fn explained(record: &Record, w: &Workload, died: u64) -> bool {
    let in_life = |t: u64| w.first_seen_ms <= t && t <= died;
    if record
        .kills
        .iter()
        .any(|k| k.node == w.node && k.pid == w.pid)
    {
        return true;
    }
    // A reboot's time is its sample taken just before the kill: the workload must have been
    // seen alive then, or it died before the reboot and the reboot explains nothing.
    if record
        .reboots
        .iter()
        .any(|r| r.node == w.node && w.last_alive_ms >= r.t_ms && r.t_ms <= died)
    {
        return true;
    }
    let slot: Option<u32> = w
        .replica
        .rsplit_once('.')
        .and_then(|(_, key)| (key.len() < 16).then(|| key.parse().ok()).flatten());
    record.writes.iter().any(|write| {
        // Sent during the workload's life: it may take effect any time after. A write the
        // scenario expected to be refused explains nothing.
        if !in_life(write.sent_ms) || write.expected_failure {
            return false;
        }
        match &write.write {
            Write::Update { service } | Write::Remove { service } => *service == w.service,
            Write::Scale { service, replicas } => {
                *service == w.service && slot.is_some_and(|s| s > *replicas)
            }
            Write::RemoveNode { node } => *node == w.node,
            Write::Create { .. } => false,
        }
    })
}

/// Workload deaths the scenario did not cause, with whether each fell inside a fault.
fn unexplained_deaths<'a>(record: &Record, history: &'a History) -> Vec<(&'a Workload, bool)> {
    history
        .workloads
        .iter()
        .filter_map(|w| {
            let died = w.died_ms?;
            (!explained(record, w, died)).then(|| (w, in_fault(record, w.last_alive_ms, died)))
        })
        .collect()
}

fn death_line(w: &Workload) -> String {
    format!(
        "{} on {} (pid {}): alive at {}, gone at {}",
        w.replica,
        w.node,
        w.pid,
        at(w.last_alive_ms),
        w.died_ms.map_or_else(|| "-".into(), at)
    )
}

fn workloads_keep_running(
    record: &Record,
    history: &History,
    deaths: &[&(&Workload, bool)],
) -> InvariantResult {
    const NAME: &str = "workloads_keep_running";
    // Process faults count too: while a control node is dead or frozen, agents attached to
    // it are cut off just the same.
    let faults: Vec<_> = record.windows.iter().collect();
    if faults.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "no fault in this scenario".into(),
            Vec::new(),
        );
    }
    // Workloads alive through the start of each fault: what the check watched.
    let alive_at: Vec<usize> = faults
        .iter()
        .map(|window| {
            history
                .workloads
                .iter()
                .filter(|w| {
                    w.first_seen_ms <= window.from_ms
                        && w.died_ms.is_none_or(|d| d > window.from_ms)
                })
                .count()
        })
        .collect();
    let watched: Vec<String> = faults
        .iter()
        .zip(&alive_at)
        .map(|(window, alive)| {
            format!(
                "{alive} workloads alive when `{}` began at {}",
                window.fault,
                at(window.from_ms)
            )
        })
        .collect();
    let total: usize = alive_at.iter().sum();
    if !deaths.is_empty() {
        let mut evidence: Vec<String> = deaths.iter().map(|(w, _)| death_line(w)).collect();
        evidence.extend(watched);
        return InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!(
                "{} workloads stopped during a fault without the scenario stopping them",
                deaths.len()
            ),
            evidence,
        );
    }
    if total == 0 {
        return InvariantResult::new(
            NAME,
            Verdict::Fail,
            "no workload was running when the faults began: nothing was checked".into(),
            watched,
        );
    }
    InvariantResult::new(
        NAME,
        Verdict::Pass,
        format!("no workload stopped during {} faults", faults.len()),
        watched,
    )
}

fn no_restart_on_reconnect(
    record: &Record,
    history: &History,
    deaths: &[&(&Workload, bool)],
) -> InvariantResult {
    const NAME: &str = "no_restart_on_reconnect";
    if !deaths.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!(
                "{} workloads stopped outside any fault without the scenario stopping them",
                deaths.len()
            ),
            deaths.iter().map(|(w, _)| death_line(w)).collect(),
        );
    }
    let healed: Vec<u64> = record.windows.iter().filter_map(|w| w.to_ms).collect();
    let Some(&last_heal) = healed.iter().max() else {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "nothing was healed".into(),
            Vec::new(),
        );
    };
    let kept = history
        .workloads
        .iter()
        .filter(|w| w.first_seen_ms <= last_heal && w.died_ms.is_none())
        .count();
    InvariantResult::new(
        NAME,
        Verdict::Pass,
        format!(
            "{kept} workloads from before the last heal ({}) still run with the same pid",
            at(last_heal)
        ),
        Vec::new(),
    )
}

fn agents_never_go_back(history: &History) -> InvariantResult {
    const NAME: &str = "agents_never_go_back";
    if !history.regressions.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!("{} revision steps back", history.regressions.len()),
            history
                .regressions
                .iter()
                .map(|r| {
                    format!(
                        "{} went from revision {} to {} at {}",
                        r.node,
                        r.from,
                        r.to,
                        at(r.t_ms)
                    )
                })
                .collect(),
        );
    }
    let changes: usize = history.revisions.values().map(Vec::len).sum();
    if changes == 0 {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "no agent reported a revision".into(),
            Vec::new(),
        );
    }
    InvariantResult::new(
        NAME,
        Verdict::Pass,
        format!(
            "{changes} revision changes on {} agents over {} samples, none backwards",
            history.revisions.len(),
            history.samples
        ),
        history
            .revisions
            .iter()
            .map(|(node, series)| {
                let revs: Vec<String> = series.iter().map(|(_, r)| r.to_string()).collect();
                format!("{node}: {}", revs.join(" → "))
            })
            .collect(),
    )
}

fn converges_after_heal(record: &Record) -> InvariantResult {
    const NAME: &str = "converges_after_heal";
    if record.convergences.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "no converge step".into(),
            Vec::new(),
        );
    }
    let evidence: Vec<String> = record
        .convergences
        .iter()
        .map(|c| match c.took_ms {
            Some(took) => format!(
                "step {}: converged {:.2}s after {} (bound {:.0}s)",
                c.step,
                secs(took),
                at(c.from_ms),
                secs(c.bound_ms)
            ),
            None => format!(
                "step {}: not converged {:.0}s after {}: {}",
                c.step,
                secs(c.bound_ms),
                at(c.from_ms),
                c.detail
            ),
        })
        .collect();
    let failed = record
        .convergences
        .iter()
        .filter(|c| c.took_ms.is_none())
        .count();
    if failed > 0 {
        InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!(
                "{failed} of {} converge steps missed their bound",
                record.convergences.len()
            ),
            evidence,
        )
    } else {
        InvariantResult::new(
            NAME,
            Verdict::Pass,
            format!(
                "{} converge steps within their bound",
                record.convergences.len()
            ),
            evidence,
        )
    }
}

fn removed_node_stops_workloads(record: &Record, history: &History) -> InvariantResult {
    const NAME: &str = "removed_node_stops_workloads";
    let removed = record.removed_nodes();
    if removed.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "no node was removed".into(),
            Vec::new(),
        );
    }
    let mut evidence = Vec::new();
    let mut failed = false;
    for node in &removed {
        let all: Vec<&Workload> = history
            .workloads
            .iter()
            .filter(|w| w.node == *node)
            .collect();
        let alive = history.alive_on(node);
        if all.is_empty() {
            failed = true;
            evidence.push(format!(
                "{node}: no workload was ever seen on it, so nothing was checked"
            ));
        } else if alive.is_empty() {
            let last = all.iter().filter_map(|w| w.died_ms).max().unwrap_or(0);
            evidence.push(format!(
                "{node}: all {} workloads stopped, the last at {}",
                all.len(),
                at(last)
            ));
        } else {
            failed = true;
            evidence.extend(alive.iter().map(|w| {
                format!(
                    "{node}: {} (pid {}) still runs at the end",
                    w.replica, w.pid
                )
            }));
        }
    }
    let verdict = if failed { Verdict::Fail } else { Verdict::Pass };
    let summary = if failed {
        "a removed node still runs workloads (or none was watched)".to_owned()
    } else {
        format!("{} removed nodes run no workload", removed.len())
    };
    InvariantResult::new(NAME, verdict, summary, evidence)
}

fn killed_workloads_restarted(record: &Record, history: &History) -> InvariantResult {
    const NAME: &str = "killed_workloads_restarted";
    // (node, replica, pid, when): every workload the scenario killed, one by one or by
    // powering its node off.
    let mut victims: Vec<(&str, &str, u32, u64, &str)> = record
        .kills
        .iter()
        .map(|k| (k.node.as_str(), k.replica.as_str(), k.pid, k.t_ms, "killed"))
        .collect();
    for reboot in &record.reboots {
        victims.extend(
            history
                .workloads
                .iter()
                .filter(|w| {
                    w.node == reboot.node
                        && w.first_seen_ms <= reboot.t_ms
                        && w.died_ms.is_some_and(|d| d >= reboot.t_ms)
                })
                .map(|w| {
                    (
                        w.node.as_str(),
                        w.replica.as_str(),
                        w.pid,
                        reboot.t_ms,
                        "powered off",
                    )
                }),
        );
    }
    if victims.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "no workload was killed".into(),
            Vec::new(),
        );
    }
    let mut failed = 0;
    let evidence: Vec<String> = victims
        .iter()
        .map(|&(node, replica, pid, t_ms, how)| {
            let back = history.workloads.iter().find(|w| {
                w.node == node
                    && w.replica == replica
                    && w.pid != pid
                    && w.first_seen_ms >= t_ms
                    && w.first_seen_ms <= t_ms + RESTART_WITHIN_MS
            });
            match back {
                Some(w) => format!(
                    "{replica} on {node}: pid {pid} {how} at {}, pid {} seen at {} ({:.1}s)",
                    at(t_ms),
                    w.pid,
                    at(w.first_seen_ms),
                    secs(w.first_seen_ms - t_ms)
                ),
                None => {
                    failed += 1;
                    format!(
                        "{replica} on {node}: pid {pid} {how} at {}, no new process within {:.0}s",
                        at(t_ms),
                        secs(RESTART_WITHIN_MS)
                    )
                }
            }
        })
        .collect();
    if failed > 0 {
        InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!(
                "{failed} of {} killed workloads did not come back",
                victims.len()
            ),
            evidence,
        )
    } else {
        InvariantResult::new(
            NAME,
            Verdict::Pass,
            format!("{} killed workloads came back", victims.len()),
            evidence,
        )
    }
}

fn operator_expectations(record: &Record) -> InvariantResult {
    const NAME: &str = "operator_expectations";
    if record.expectations.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::NotExercised,
            "no CLI step stated an expectation".into(),
            Vec::new(),
        );
    }
    let failed = record.expectations.iter().filter(|e| !e.passed).count();
    let evidence = record
        .expectations
        .iter()
        .map(|e| {
            format!(
                "step {} {}: {} ({})",
                e.step,
                e.text,
                if e.passed { "held" } else { "VIOLATED" },
                e.detail
            )
        })
        .collect();
    if failed > 0 {
        InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!(
                "{failed} of {} expectations violated",
                record.expectations.len()
            ),
            evidence,
        )
    } else {
        InvariantResult::new(
            NAME,
            Verdict::Pass,
            format!("{} expectations held", record.expectations.len()),
            evidence,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kill, Window, WriteRecord};

    fn workload(node: &str, replica: &str, pid: u32, seen: u64, died: Option<u64>) -> Workload {
        let json = serde_json::json!({
            "node": node, "replica": replica,
            "service": replica.split('.').next().unwrap_or(replica),
            "pid": pid, "first_seen_ms": seen, "last_alive_ms": died.unwrap_or(seen),
            "died_ms": died,
        });
        serde_json::from_value(json).expect("workload")
    }

    fn write(step: &str, sent: u64, write: Write, acked: bool) -> WriteRecord {
        WriteRecord {
            step: step.into(),
            sent_ms: sent,
            done_ms: sent + 50,
            write,
            acked,
            command: "…".into(),
            expected_failure: false,
        }
    }

    fn window(from: u64, to: Option<u64>) -> Window {
        Window {
            fault: "cut site b off".into(),
            from_ms: from,
            to_ms: to,
            network: true,
        }
    }

    fn verdict(results: &[InvariantResult], name: &str) -> Verdict {
        results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .verdict
    }

    fn end(services: &[(&str, Option<u32>)], nodes: &[&str]) -> FinalState {
        FinalState {
            services: Some(
                services
                    .iter()
                    .map(|(n, r)| ((*n).to_owned(), *r))
                    .collect(),
            ),
            nodes: Some(nodes.iter().map(|n| (*n).to_owned()).collect()),
        }
    }

    #[test]
    fn a_stop_during_a_partition_fails_and_one_the_scenario_caused_does_not() {
        let mut record = Record {
            windows: vec![window(1_000, Some(5_000))],
            ..Record::default()
        };
        let mut history = History {
            workloads: vec![
                workload("b-1", "web.1", 10, 500, None),
                workload("b-1", "web.2", 11, 500, Some(2_000)),
            ],
            ..History::default()
        };
        let (results, figures) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Fail);
        assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Pass);
        assert_eq!(figures.interruptions, 1);
        // The same stop, caused by a kill of that pid: explained.
        record.kills.push(Kill {
            node: "b-1".into(),
            replica: "web.2".into(),
            pid: 11,
            t_ms: 1_900,
        });
        let (results, figures) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Pass);
        assert_eq!(figures.interruptions, 0);
        // … and it was never restarted.
        assert_eq!(
            verdict(&results, "killed_workloads_restarted"),
            Verdict::Fail
        );
        history
            .workloads
            .push(workload("b-1", "web.2", 12, 3_000, None));
        let (results, _) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(
            verdict(&results, "killed_workloads_restarted"),
            Verdict::Pass
        );
    }

    #[test]
    fn a_restart_after_heal_fails_unless_the_service_changed_during_its_life() {
        let mut record = Record {
            windows: vec![window(1_000, Some(5_000))],
            ..Record::default()
        };
        let history = History {
            workloads: vec![
                workload("b-1", "web.1", 10, 500, Some(6_000)),
                workload("b-1", "web.1", 12, 6_200, None),
                workload("b-1", "web.3", 13, 500, Some(6_000)),
            ],
            ..History::default()
        };
        let (results, _) = check_all(&record, &history, &end(&[("web", Some(2))], &[]));
        assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Fail);
        assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Pass);
        // Scaling to 2 during the partition explains web.3, not web.1.
        record.writes.push(write(
            "3",
            2_000,
            Write::Scale {
                service: "web".into(),
                replicas: 2,
            },
            true,
        ));
        let (_, figures) = check_all(&record, &history, &end(&[("web", Some(2))], &[]));
        assert_eq!(figures.interruptions, 1);
        // An update of the service explains both.
        record.writes.push(write(
            "4",
            2_500,
            Write::Update {
                service: "web".into(),
            },
            true,
        ));
        let (results, figures) = check_all(&record, &history, &end(&[("web", Some(2))], &[]));
        assert_eq!(figures.interruptions, 0);
        assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Pass);
    }

    /// A death found one sample after the heal may have happened before it: it counts as a
    /// stop during the fault. A write the scenario expected to be refused explains no stop.
    #[test]
    fn the_sample_interval_and_refused_writes_excuse_nothing() {
        let mut record = Record {
            windows: vec![window(1_000, Some(5_000))],
            ..Record::default()
        };
        let mut dying = workload("b-1", "web.2", 11, 500, Some(5_150));
        dying.last_alive_ms = 4_950;
        let history = History {
            workloads: vec![workload("b-1", "web.1", 10, 500, None), dying],
            ..History::default()
        };
        let (results, _) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Fail);
        assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Pass);
        let mut refused = write(
            "3",
            2_000,
            Write::Scale {
                service: "web".into(),
                replicas: 1,
            },
            false,
        );
        refused.expected_failure = true;
        record.writes.push(refused);
        let (_, figures) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(
            figures.interruptions, 1,
            "the refused scale explains nothing"
        );
    }

    #[test]
    fn nothing_watched_is_a_failure_not_a_pass() {
        let record = Record {
            windows: vec![window(1_000, Some(5_000))],
            ..Record::default()
        };
        let (results, _) = check_all(&record, &History::default(), &end(&[], &[]));
        assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Fail);
        let (results, _) = check_all(&Record::default(), &History::default(), &end(&[], &[]));
        assert_eq!(
            verdict(&results, "workloads_keep_running"),
            Verdict::NotExercised
        );
    }

    #[test]
    fn acknowledged_writes_must_survive_and_unknown_outcomes_may_go_either_way() {
        let scale = |n| Write::Scale {
            service: "web".into(),
            replicas: n,
        };
        let mut record = Record::default();
        record.writes.push(write(
            "1",
            0,
            Write::Create {
                service: "web".into(),
                replicas: Some(2),
            },
            true,
        ));
        record.writes.push(write("2", 100, scale(4), true));
        record.writes.push(write("3", 200, scale(5), false));
        let lost = |record: &Record, services: &[(&str, Option<u32>)]| {
            let (results, figures) = check_all(record, &History::default(), &end(services, &[]));
            (
                verdict(&results, "no_acknowledged_write_lost"),
                figures.writes_lost,
            )
        };
        assert_eq!(lost(&record, &[("web", Some(4))]), (Verdict::Pass, 0));
        assert_eq!(lost(&record, &[("web", Some(5))]), (Verdict::Pass, 0));
        assert_eq!(lost(&record, &[("web", Some(2))]), (Verdict::Fail, 1));
        assert_eq!(lost(&record, &[]), (Verdict::Fail, 1));
        record.writes.push(write(
            "4",
            300,
            Write::Remove {
                service: "web".into(),
            },
            true,
        ));
        assert_eq!(lost(&record, &[]), (Verdict::Pass, 0));
        assert_eq!(lost(&record, &[("web", Some(4))]), (Verdict::Fail, 1));
        // A node removal must stick.
        record.writes.push(write(
            "5",
            400,
            Write::RemoveNode { node: "a-1".into() },
            true,
        ));
        let (results, _) = check_all(&record, &History::default(), &end(&[], &["a-1"]));
        assert_eq!(
            verdict(&results, "no_acknowledged_write_lost"),
            Verdict::Fail
        );
        // Unreadable control plane: nothing confirmed.
        let (results, _) = check_all(&record, &History::default(), &FinalState::default());
        assert_eq!(
            verdict(&results, "no_acknowledged_write_lost"),
            Verdict::Fail
        );
    }

    #[test]
    fn a_removed_node_must_end_with_no_workload() {
        let mut record = Record::default();
        record.writes.push(write(
            "1",
            1_000,
            Write::RemoveNode { node: "a-1".into() },
            true,
        ));
        let mut history = History {
            workloads: vec![workload("a-1", "web.1", 10, 500, None)],
            ..History::default()
        };
        let (results, _) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(
            verdict(&results, "removed_node_stops_workloads"),
            Verdict::Fail
        );
        history.workloads[0].died_ms = Some(9_000);
        let (results, figures) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(
            verdict(&results, "removed_node_stops_workloads"),
            Verdict::Pass
        );
        assert_eq!(figures.interruptions, 0, "the removal explains the stop");
    }

    #[test]
    fn revisions_going_back_fail_and_convergence_bounds_are_enforced() {
        let mut history = History::default();
        history.revisions.insert("a-1".into(), vec![(1, 3), (2, 5)]);
        let mut record = Record::default();
        record.convergences.push(crate::record::Convergence {
            step: "7".into(),
            from_ms: 1_000,
            bound_ms: 30_000,
            took_ms: None,
            detail: "a-1: web.1 not running".into(),
        });
        let (results, _) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(verdict(&results, "agents_never_go_back"), Verdict::Pass);
        assert_eq!(verdict(&results, "converges_after_heal"), Verdict::Fail);
        history.regressions.push(crate::observe::Regression {
            node: "a-1".into(),
            t_ms: 3,
            from: 5,
            to: 4,
        });
        let (results, _) = check_all(&record, &history, &end(&[], &[]));
        assert_eq!(verdict(&results, "agents_never_go_back"), Verdict::Fail);
    }
}
