//! The invariants about workload processes: none dies during a fault or after a heal unless
//! the scenario caused it, every one it killed comes back, a removed node runs none.

use super::{InvariantResult, Verdict, at, secs};
use crate::observe::{History, Workload};
use crate::record::Record;
use crate::scenario::Write;

/// How long after a kill the workload must be back.
const RESTART_WITHIN_MS: u64 = 20_000;

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
pub(super) fn unexplained_deaths<'a>(
    record: &Record,
    history: &'a History,
) -> Vec<(&'a Workload, bool)> {
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

pub(super) fn workloads_keep_running(
    record: &Record,
    history: &History,
    deaths: &[&(&Workload, bool)],
) -> InvariantResult {
    const NAME: &str = "workloads_keep_running";
    // Process faults count too: while a control node is dead or frozen, agents attached to
    // it are cut off just the same.
    let faults: Vec<_> = record.windows.iter().collect();
    if faults.is_empty() {
        return InvariantResult::not_exercised(NAME, "no fault in this scenario");
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

pub(super) fn no_restart_on_reconnect(
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
        return InvariantResult::not_exercised(NAME, "nothing was healed");
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

pub(super) fn removed_node_stops_workloads(record: &Record, history: &History) -> InvariantResult {
    const NAME: &str = "removed_node_stops_workloads";
    let removed = record.removed_nodes();
    if removed.is_empty() {
        return InvariantResult::not_exercised(NAME, "no node was removed");
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
    InvariantResult::fail_or_pass(
        NAME,
        failed,
        "a removed node still runs workloads (or none was watched)".to_owned(),
        format!("{} removed nodes run no workload", removed.len()),
        evidence,
    )
}

pub(super) fn killed_workloads_restarted(record: &Record, history: &History) -> InvariantResult {
    const NAME: &str = "killed_workloads_restarted";
    let victims = victims(record, history);
    if victims.is_empty() {
        return InvariantResult::not_exercised(NAME, "no workload was killed");
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
    InvariantResult::fail_or_pass(
        NAME,
        failed > 0,
        format!(
            "{failed} of {} killed workloads did not come back",
            victims.len()
        ),
        format!("{} killed workloads came back", victims.len()),
        evidence,
    )
}

/// (node, replica, pid, when, how): every workload the scenario killed, one by one or by
/// powering its node off.
fn victims<'a>(
    record: &'a Record,
    history: &'a History,
) -> Vec<(&'a str, &'a str, u32, u64, &'static str)> {
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
    victims
}
