//! What a scenario run did, as the runner recorded it: the timeline, and the structured facts
//! the invariant checks need (fault windows, writes, kills, convergences, failovers).
//! Times are milliseconds since the run's start.

use serde::{Deserialize, Serialize};

use crate::scenario::Write;

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub t_ms: u64,
    /// Which step: `4`, or `6.2.1` inside a repeat (round 2, step 1).
    pub step: String,
    /// `fault`, `heal`, `cli`, `wait`, `kill_workload`, `reboot`, `restart`, `kill_leader`,
    /// `converge`, `note`.
    pub kind: String,
    pub text: String,
    pub ok: bool,
    /// Output, errors, measured times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A fault from its apply to its heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub fault: String,
    pub from_ms: u64,
    /// `None` while in place (or when the run ended with it in place).
    pub to_ms: Option<u64>,
    /// Whether it cuts the network (as opposed to killing or pausing a process).
    pub network: bool,
}

/// A write sent through the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub step: String,
    pub sent_ms: u64,
    pub done_ms: u64,
    pub write: Write,
    /// The CLI exited 0: the control plane acknowledged it.
    pub acked: bool,
    pub command: String,
    /// The scenario said it must fail (e.g. on a minority node): it explains no stop.
    #[serde(default)]
    pub expected_failure: bool,
}

/// A workload the scenario killed on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    pub node: String,
    pub replica: String,
    pub pid: u32,
    pub t_ms: u64,
}

/// An agent power-cycled on purpose (every workload of it killed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reboot {
    pub node: String,
    /// The observer's sample taken just before the kill.
    pub t_ms: u64,
}

/// One `converge` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    pub step: String,
    /// Measured from the latest heal before it (or from the step's start when none).
    pub from_ms: u64,
    pub bound_ms: u64,
    /// How long it took; `None` when it did not converge within the bound.
    pub took_ms: Option<u64>,
    /// What was still different when it gave up, or what converged.
    pub detail: String,
}

/// A leader killed, and the first write acknowledged after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub killed: String,
    pub t_ms: u64,
    pub first_write_ms: Option<u64>,
}

/// An expectation a CLI step stated (fail, fail fast, an error text) and whether it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub step: String,
    pub text: String,
    pub passed: bool,
    pub detail: String,
}

/// Everything the runner recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub timeline: Vec<Event>,
    pub windows: Vec<Window>,
    pub writes: Vec<WriteRecord>,
    pub kills: Vec<Kill>,
    pub reboots: Vec<Reboot>,
    pub convergences: Vec<Convergence>,
    pub failovers: Vec<Failover>,
    pub expectations: Vec<Expectation>,
    /// Overlay pings between agents (`overlay` steps), the last try of each pair per step.
    #[serde(default)]
    pub overlay_probes: Vec<OverlayProbe>,
}

/// One ping across the WireGuard overlay, from inside one agent's namespace to another's
/// overlay address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayProbe {
    pub step: String,
    pub t_ms: u64,
    pub from: String,
    pub to: String,
    pub address: String,
    pub answered: bool,
}

impl Record {
    /// Nodes whose removal the control plane acknowledged, in the order removed.
    pub fn removed_nodes(&self) -> Vec<&str> {
        self.writes
            .iter()
            .filter(|w| w.acked)
            .filter_map(|w| match &w.write {
                Write::RemoveNode { node } => Some(node.as_str()),
                _ => None,
            })
            .collect()
    }
}
