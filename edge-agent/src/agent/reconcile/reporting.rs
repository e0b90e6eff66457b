//! What a reconcile pass tells others: events (logged, counted, queued for control), the
//! replicas' states for the link's status reports, and `status.json`.

use std::collections::BTreeMap;

use tracing::info;
use warren_api::clock::unix_now_ms;
use warren_api::wire::Listener;
use warren_api::{Event, EventKind, HealthState, NodeView, ReplicaId, ReplicaStatus, TaskState};

use super::super::status_file::{AgentStatus, LocalReplica};
use super::Reconciler;
use crate::planner::SIGNALLED;
use crate::runtime::{WorkloadHandle, WorkloadRecord};

impl Reconciler {
    pub(super) fn record_events(&self, mut events: Vec<Event>) {
        for event in &mut events {
            self.name_oom_kill(event);
        }
        log_events(&events);
        self.metrics.count_events(&events);
        self.reporter.push_events(events);
    }

    /// The planner knows a run the OOM killer ended only as one that a signal ended: its
    /// exit and restart events say `OOM-killed (memory limit …)` instead, as `service ps` does.
    fn name_oom_kill(&self, event: &mut Event) {
        let Some(replica) = &event.replica else {
            return;
        };
        let exited = matches!(event.kind, EventKind::Exited { .. } | EventKind::Restarted);
        let last_exit_ms = self
            .book
            .get(replica)
            .and_then(|h| h.last_exit.as_ref())
            .map(|e| e.at_ms);
        if let Some((at_ms, message)) = self.oom_kills.get(replica)
            && exited
            && last_exit_ms == Some(*at_ms)
        {
            event.message = event.message.replace(SIGNALLED, message);
        }
    }

    /// Hands the replicas' states to the reporter (the link sends them if they changed). A
    /// replica with no workload describes the agent's attempts at what `view` asks for: its
    /// `workload_hash` is the view's.
    pub(super) fn report(&mut self, view: &NodeView) {
        let revision = view.revision;
        let now = unix_now_ms();
        let mut statuses = Vec::new();
        let mut known: BTreeMap<ReplicaId, TaskState> = self.states.clone();
        for replica in self.handles.keys() {
            known.entry(replica.clone()).or_insert(TaskState::Running);
        }
        for (replica, state) in known {
            let record = self.handles.get(&replica).map(WorkloadHandle::record);
            let history = self.book.get(&replica);
            let last_exit = history.and_then(|h| h.last_exit.as_ref());
            let mut status = ReplicaStatus {
                id: replica.clone(),
                node: self.identity.node_id,
                state,
                pid: record
                    .and_then(WorkloadRecord::pid)
                    .filter(|_| has_process(state)),
                started_at_ms: record.map(|r| r.started_at_ms),
                exit_code: last_exit.and_then(|e| e.code),
                restarts: history.map_or(0, |h| h.restarts),
                health: self.health.get(&replica).copied().unwrap_or_default(),
                message: match state {
                    TaskState::Running | TaskState::Starting => None,
                    _ => last_exit.map(|exit| match self.start_errors.get(&replica) {
                        Some(error) if exit.start_failed => format!("could not start: {error}"),
                        _ => match self.oom_kills.get(&replica) {
                            Some((at_ms, message)) if *at_ms == exit.at_ms => message.clone(),
                            _ => exit.describe(),
                        },
                    }),
                },
                updated_at_ms: now,
                workload_hash: record
                    .map(|r| r.workload_hash)
                    .or_else(|| desired_hash(view, &replica)),
            };
            if let Some(previous) = self.reported.get(&replica) {
                let unchanged = ReplicaStatus {
                    updated_at_ms: previous.updated_at_ms,
                    ..status.clone()
                };
                if unchanged == *previous {
                    status.updated_at_ms = previous.updated_at_ms;
                }
            }
            statuses.push(status);
        }
        let workloads: Vec<(&str, TaskState, HealthState)> = statuses
            .iter()
            .map(|s| (s.id.service.as_str(), s.state, s.health))
            .collect();
        self.metrics.set_workloads(
            &workloads,
            view.replicas.iter().map(|r| r.id.service.as_str()),
        );
        self.reported = statuses.iter().map(|s| (s.id.clone(), s.clone())).collect();
        self.reporter.set_replicas(revision, statuses);
    }

    /// Writes `status.json` if what it says changed (see [`StatusWriter`]); `force` writes it
    /// regardless.
    pub(super) fn write_status(&mut self, view: Option<&NodeView>, force: bool) {
        let mut replicas: BTreeMap<ReplicaId, LocalReplica> = BTreeMap::new();
        for (replica, state) in &self.states {
            replicas.insert(replica.clone(), self.replica_status(replica, *state));
        }
        for replica in self.handles.keys() {
            replicas
                .entry(replica.clone())
                .or_insert_with(|| self.replica_status(replica, TaskState::Running));
        }
        let status = AgentStatus {
            node_id: self.identity.node_id,
            name: self.identity.name.clone(),
            site: self.identity.site.clone(),
            agent_pid: std::process::id(),
            updated_at_ms: unix_now_ms(),
            revision: view.map_or(self.revision, |v| v.revision.0),
            link: self.link.clone(),
            replicas: replicas.into_values().collect(),
            metrics_addr: self.listeners.bound(Listener::Metrics),
            listeners: self.listeners.snapshot(),
            discovery: self.discovery.borrow().clone(),
        };
        self.status_file.write(&status, force);
    }

    /// The agent stops with its workloads left running: the last `status.json` says the link
    /// is down, and the cache is flushed.
    pub(in crate::agent) async fn record_stop(&mut self) {
        self.link.connected = false;
        self.write_status(None, true);
        self.flush().await;
    }

    fn replica_status(&self, replica: &ReplicaId, state: TaskState) -> LocalReplica {
        let record = self.handles.get(replica).map(WorkloadHandle::record);
        let health = self.health.get(replica).copied();
        LocalReplica {
            replica: replica.clone(),
            state,
            pid: record
                .and_then(WorkloadRecord::pid)
                .filter(|_| has_process(state)),
            restarts: self.book.get(replica).map_or(0, |r| r.restarts),
            workload_hash: record.map(|r| format!("{:016x}", r.workload_hash)),
            started_at_ms: record.map(|r| r.started_at_ms),
            health: health.unwrap_or_default(),
            health_detail: health
                .and_then(|_| self.health_monitor.last_failure(replica))
                .map(str::to_owned),
        }
    }
}

fn log_events(events: &[Event]) {
    for event in events {
        match &event.replica {
            Some(replica) => info!(%replica, kind = ?event.kind, "{}", event.message),
            None => info!(kind = ?event.kind, "{}", event.message),
        }
    }
}

/// Whether a replica in `state` has a process to show: a failed or completed replica waiting
/// out a backoff keeps its last record, whose pid is gone (or, later, someone else's).
fn has_process(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Starting | TaskState::Running | TaskState::Unhealthy | TaskState::Stopping
    )
}

/// The workload hash `view` asks `replica` to run with.
fn desired_hash(view: &NodeView, replica: &ReplicaId) -> Option<u64> {
    view.replicas
        .iter()
        .find(|r| &r.id == replica)
        .map(|r| r.workload_hash)
}
