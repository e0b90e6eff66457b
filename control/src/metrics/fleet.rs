//! The fleet as one control node sees it, per service and per agent: replicas desired (from
//! the state, on the leader only, so that a sum over control nodes is right), running and
//! healthy (from this node's own status book: each agent streams to one control node, so the
//! sum over control nodes is the fleet's), and each agent's link (local book) and readiness
//! (the registry, leader only).
//!
//! [`figures`] decides, from the state and the book, with no I/O; [`FleetSeries::set`] writes
//! the figures into the gauges, removing the series of services and agents that went away.

use std::collections::{BTreeMap, HashMap, HashSet};

use prometheus::core::{Atomic, Collector, GenericGaugeVec};
use prometheus::{GaugeVec, IntGaugeVec, Opts};
use warren_api::{NodeId, NodeRole, NodeState, TaskState};

use super::Registrar;
use crate::state::ClusterState;
use crate::status::{AgentReport, counts_as_running};

/// Labels of a per-agent series.
const AGENT_LABELS: [&str; 3] = ["agent", "agent_id", "agent_site"];

/// One service's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ServiceFigures {
    /// Replicas the spec asks for; `None` off the leader.
    pub desired: Option<i64>,
    /// Replicas in state running on agents whose link this node holds.
    pub running: i64,
    /// Of those, the ones that pass their health check (all of them when there is none).
    pub healthy: i64,
}

/// One agent's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct AgentFigures {
    /// Its name, id (16 hex digits) and site.
    pub labels: [String; 3],
    /// Whether this node holds its stream, and seconds since its last message here; `None`
    /// when it never streamed to this node since this node started.
    pub link: Option<(bool, f64)>,
    /// Whether the registry says it is ready; `None` off the leader.
    pub ready: Option<bool>,
}

/// Every figure of one refresh.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Fleet {
    /// By service name.
    pub services: BTreeMap<String, ServiceFigures>,
    /// By node id.
    pub agents: BTreeMap<NodeId, AgentFigures>,
}

/// The fleet's figures from the state and this node's book of agents (`reports`), at
/// `now_ms` (control clock). `is_leader` adds what only the leader exports.
pub(crate) fn figures<'a>(
    state: &ClusterState,
    reports: impl IntoIterator<Item = &'a AgentReport>,
    is_leader: bool,
    now_ms: u64,
) -> Fleet {
    let mut fleet = Fleet {
        services: state
            .services
            .keys()
            .map(|name| (name.to_string(), ServiceFigures::default()))
            .collect(),
        agents: BTreeMap::new(),
    };
    if is_leader {
        set_leader_figures(state, &mut fleet);
    }
    for report in reports {
        let Some(node) =
            (state.nodes.get(&report.node_id)).filter(|n| n.state != NodeState::Removed)
        else {
            continue;
        };
        let age_seconds = now_ms.saturating_sub(report.last_contact_ms) as f64 / 1000.0;
        (fleet.agents.entry(node.id))
            .or_insert_with(|| agent_figures(node))
            .link = Some((report.connected, age_seconds));
        if report.connected {
            count_replicas(state, report, &mut fleet.services);
        }
    }
    fleet
}

fn agent_figures(node: &warren_api::Node) -> AgentFigures {
    AgentFigures {
        labels: [node.name.clone(), node.id.to_string(), node.site.clone()],
        ..AgentFigures::default()
    }
}

/// Desired replicas per service, and each agent's readiness from the registry.
fn set_leader_figures(state: &ClusterState, fleet: &mut Fleet) {
    let mut placed: HashMap<&str, i64> = HashMap::new();
    for replica in state.replicas.values() {
        *placed.entry(replica.id.service.as_str()).or_default() += 1;
    }
    for (name, record) in &state.services {
        let desired = match record.current.spec.replicas() {
            Some(replicas) => i64::from(replicas),
            // A global service wants one replica per node it may run on: those placed, and
            // those no node could take.
            None => {
                placed.get(name.as_str()).copied().unwrap_or(0)
                    + i64::from(state.unschedulable.get(name).copied().unwrap_or(0))
            }
        };
        if let Some(figures) = fleet.services.get_mut(name.as_str()) {
            figures.desired = Some(desired);
        }
    }
    let agents = (state.nodes.values())
        .filter(|n| n.role == NodeRole::Agent && n.state != NodeState::Removed);
    for node in agents {
        fleet
            .agents
            .entry(node.id)
            .or_insert_with(|| agent_figures(node))
            .ready = Some(node.state == NodeState::Ready);
    }
}

/// Counts the replicas `report` says run that the state places on its node.
fn count_replicas(
    state: &ClusterState,
    report: &AgentReport,
    services: &mut BTreeMap<String, ServiceFigures>,
) {
    for replica in &report.replicas {
        let placed_here =
            (state.replicas.get(&replica.id)).is_some_and(|p| p.node == report.node_id);
        if !placed_here || replica.state != TaskState::Running {
            continue;
        }
        let service = &replica.id.service;
        let (Some(record), Some(figures)) = (
            state.services.get(service),
            services.get_mut(service.as_str()),
        ) else {
            continue;
        };
        figures.running += 1;
        if counts_as_running(replica, record.current.spec.health.is_some()) {
            figures.healthy += 1;
        }
    }
}

/// The per-service and per-agent gauges.
#[derive(Clone, Debug)]
pub(crate) struct FleetSeries {
    desired: IntGaugeVec,
    running: IntGaugeVec,
    healthy: IntGaugeVec,
    connected: IntGaugeVec,
    last_contact_age_seconds: GaugeVec,
    ready: IntGaugeVec,
}

impl FleetSeries {
    pub(super) fn register(add: &Registrar<'_>) -> Self {
        let by = |name: &str, help: &str, labels: &[&str]| {
            add.registered(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        FleetSeries {
            desired: by(
                "warren_service_replicas_desired",
                "Replicas the service asks for (a global service: one per node it may run on). Exported by the Raft leader only.",
                &["service"],
            ),
            running: by(
                "warren_service_replicas_running",
                "Replicas in state running on agents whose link this control node holds; sum over control nodes for the fleet.",
                &["service"],
            ),
            healthy: by(
                "warren_service_replicas_healthy",
                "Of the running replicas on agents whose link this control node holds, those passing their health check (all of them for a service without one, as service ls counts).",
                &["service"],
            ),
            connected: by(
                "warren_control_agent_connected",
                "1 while this control node holds the agent's stream, 0 once it ended; for agents that streamed here since this node started.",
                &AGENT_LABELS,
            ),
            last_contact_age_seconds: add.registered(
                GaugeVec::new(
                    Opts::new(
                        "warren_control_agent_last_contact_age_seconds",
                        "Seconds since this control node last heard from the agent over its stream.",
                    ),
                    &AGENT_LABELS,
                )
                .expect("valid metric"),
            ),
            ready: by(
                "warren_control_agent_ready",
                "1 while the registry says the agent is ready, 0 while unreachable or down. Exported by the Raft leader only.",
                &AGENT_LABELS,
            ),
        }
    }

    /// Sets every gauge to `fleet`: series for what is in it, none for what is not.
    pub(super) fn set(&self, fleet: &Fleet) {
        let services = |pick: fn(&ServiceFigures) -> Option<i64>| -> Vec<(Vec<&str>, i64)> {
            (fleet.services.iter())
                .filter_map(|(name, f)| Some((vec![name.as_str()], pick(f)?)))
                .collect()
        };
        set_exactly(&self.desired, &["service"], &services(|f| f.desired));
        set_exactly(&self.running, &["service"], &services(|f| Some(f.running)));
        set_exactly(&self.healthy, &["service"], &services(|f| Some(f.healthy)));
        let agents = fleet.agents.values();
        let connected: Vec<_> = (agents.clone())
            .filter_map(|a| Some((labels(a), i64::from(a.link?.0))))
            .collect();
        let age: Vec<_> = (agents.clone())
            .filter_map(|a| Some((labels(a), a.link?.1)))
            .collect();
        let ready: Vec<_> = agents
            .filter_map(|a| Some((labels(a), i64::from(a.ready?))))
            .collect();
        set_exactly(&self.connected, &AGENT_LABELS, &connected);
        set_exactly(&self.last_contact_age_seconds, &AGENT_LABELS, &age);
        set_exactly(&self.ready, &AGENT_LABELS, &ready);
    }
}

/// An agent's label values, in the order of [`AGENT_LABELS`].
fn labels(agent: &AgentFigures) -> Vec<&str> {
    agent.labels.iter().map(String::as_str).collect()
}

/// Sets `vec` to exactly `values` (label values in the order of `names`): each series set,
/// and every other series removed. Removing rather than resetting first means a scrape
/// running at the same time never sees a series missing.
fn set_exactly<P: Atomic>(vec: &GenericGaugeVec<P>, names: &[&str], values: &[(Vec<&str>, P::T)]) {
    for (labels, value) in values {
        vec.with_label_values(labels).set(*value);
    }
    let wanted: HashSet<&[&str]> = values.iter().map(|(labels, _)| labels.as_slice()).collect();
    for family in vec.collect() {
        for metric in family.get_metric() {
            let by_name: HashMap<&str, &str> = (metric.get_label().iter())
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            let labels: Vec<&str> = (names.iter())
                .map(|name| by_name.get(name).copied().unwrap_or(""))
                .collect();
            if !wanted.contains(labels.as_slice()) {
                let _ = vec.remove_label_values(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests;
