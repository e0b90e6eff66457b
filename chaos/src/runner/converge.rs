//! The `converge` step: wait until the fleet runs what control wants, and how long that took.
//!
//! "Converged" (the `converge` step) means, all at once:
//! - every agent that is not removed has its `warren` running, its link up, and has stored
//!   the view control last announced to it;
//! - the replicas control wants running (`service ps`, desired `running`) are exactly the
//!   replicas the agents run (`status.json` says running and `/proc` has the process), and
//!   control reports each of them `running`;
//! - a removed node runs no process but (perhaps) its agent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use warren_api::DesiredState;
use warren_api::rest::{ReplicaInfo, ServiceInfo};

use super::Runner;
use crate::fleet::{Node, Role};
use crate::netns;
use crate::observe::{AgentStatusFile, proc_start_ticks};
use crate::record::Convergence;

/// How often a `converge` step re-checks.
const CONVERGE_POLL: Duration = Duration::from_millis(250);

impl Runner<'_> {
    /// Polls until the fleet has converged or `bound` has passed since the last heal (or
    /// since now, when nothing was healed since the previous `converge` step).
    pub(super) fn converge(&mut self, bound: Duration, at: &str) -> Result<()> {
        let from_ms = self.convergence_start();
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
                    let text = format!("converged in {:.2}s", took as f64 / 1000.0);
                    let convergence = Convergence {
                        step: at.to_owned(),
                        from_ms,
                        bound_ms,
                        took_ms: within.then_some(took),
                        detail: summary,
                    };
                    self.record_convergence(at, convergence, &text, within);
                    return Ok(());
                }
                Err(reason) => last_reason = reason,
            }
            if now >= from_ms + bound_ms {
                let text = format!("not converged within {:.0}s", bound.as_secs_f64());
                let convergence = Convergence {
                    step: at.to_owned(),
                    from_ms,
                    bound_ms,
                    took_ms: None,
                    detail: last_reason,
                };
                self.record_convergence(at, convergence, &text, false);
                return Ok(());
            }
            std::thread::sleep(CONVERGE_POLL);
        }
    }

    /// When the clock of a `converge` step starts: the latest heal, if it came after the
    /// previous `converge` step, else now.
    fn convergence_start(&self) -> u64 {
        let started = self.now_ms();
        self.record
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
            .unwrap_or(started)
    }

    /// Records a `converge` step's result and its line in the timeline.
    fn record_convergence(&mut self, at: &str, convergence: Convergence, text: &str, ok: bool) {
        let detail = convergence.detail.clone();
        self.record.convergences.push(convergence);
        self.event(at, "converge", text, ok, Some(detail));
    }

    /// `Ok(summary)` when converged, else `Err(what differs)`.
    fn converged(&self, removed: &BTreeSet<String>) -> Result<String, String> {
        let (wanted, n_services) = self.wanted_replicas()?;
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
                self.removed_node_is_quiet(node, workloads)?;
                continue;
            }
            running.extend(replicas_running_on(node, latest.get(&node.name))?);
        }
        if wanted != running {
            return Err(difference(&wanted, &running));
        }
        Ok(format!(
            "{} replicas of {} services run where control wants them",
            wanted.len(),
            n_services
        ))
    }

    /// The (node, replica) pairs control wants running, and how many services there are;
    /// `Err` when control reports one of them not running.
    fn wanted_replicas(&self) -> Result<(BTreeSet<(String, String)>, usize), String> {
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
        Ok((wanted, services.len()))
    }

    /// A removed node runs no workload and no process but its agent and the harness's
    /// helpers.
    fn removed_node_is_quiet(&self, node: &Node, workloads: usize) -> Result<(), String> {
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
        Ok(())
    }
}

/// The (node, replica) pairs an agent runs, by its status file and `/proc`; `Err` when the
/// agent is not running, not connected or behind control.
fn replicas_running_on(
    node: &Node,
    status: Option<&AgentStatusFile>,
) -> Result<Vec<(String, String)>, String> {
    let Some(pid) = node.pid().filter(|&p| proc_start_ticks(p).is_some()) else {
        return Err(format!("agent {} is not running", node.name));
    };
    let Some(status) = status else {
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
    let mut running = Vec::new();
    for replica in &status.replicas {
        if replica.state == "running" && replica.pid.is_some_and(|p| proc_start_ticks(p).is_some())
        {
            running.push((node.name.clone(), replica.replica.to_string()));
        }
    }
    Ok(running)
}

/// What differs between the replicas control wants and those that run.
fn difference(wanted: &BTreeSet<(String, String)>, running: &BTreeSet<(String, String)>) -> String {
    let missing: Vec<String> = wanted
        .difference(running)
        .map(|(n, r)| format!("{r} on {n}"))
        .collect();
    let extra: Vec<String> = running
        .difference(wanted)
        .map(|(n, r)| format!("{r} on {n}"))
        .collect();
    format!(
        "not running: [{}]; running but not wanted: [{}]",
        missing.join(", "),
        extra.join(", ")
    )
}
