//! Carrying out the planner's actions on the runtime — start (with the replica's secrets),
//! stop, restart, adopt — and recording each in the restart book and the workload records;
//! also the two ways every workload is stopped: the node's removal and the self-check knob.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;
use warren_api::clock::unix_now_ms;
use warren_api::service::DEFAULT_STOP_GRACE_PERIOD_MS;
use warren_api::{Event, NodeView, ReplicaId, SealedBlob, Service, TaskState};

use super::super::{BOOK_KEY, RECORD_PREFIX, REMOVED_KEY, VIEW_KEY};
use super::{Reconciler, record_key};
use crate::planner::{self, Action, RestartBook};
use crate::secrets::{self, ReplicaStartError};

impl Reconciler {
    /// The self-check knob ([`AgentOptions::selfcheck_stop_on_disconnect`]) with the link
    /// lost: stops every workload and plans nothing, so none starts again until the link is
    /// back. Deliberately the opposite of what the agent promises.
    pub(super) async fn stop_while_link_lost(&mut self) {
        self.health_monitor.sync(Vec::new());
        self.health.clear();
        if self.handles.is_empty() {
            return;
        }
        warn!(
            n_workloads = self.handles.len(),
            "self-check knob WARREN_SELFCHECK_STOP_ON_DISCONNECT fired: the link to control is lost, stopping every workload"
        );
        let now = unix_now_ms();
        let mut events = Vec::new();
        for (replica, workload_hash) in self.stop_every_workload().await {
            self.states.insert(replica.clone(), TaskState::Stopped);
            events.push(self.book.record_stopped(
                &replica,
                workload_hash,
                planner::StopReason::SelfCheckLinkLost,
                now,
            ));
        }
        self.record_events(events);
        self.put_book();
        self.flush().await;
    }

    /// Carries out one action; returns the events it caused.
    pub(super) async fn execute(&mut self, action: &Action, view: &NodeView) -> Vec<Event> {
        let now = unix_now_ms();
        match action {
            Action::Stop {
                replica,
                workload_hash,
                grace_ms,
                reason,
            } => {
                if self.stop(replica, Duration::from_millis(*grace_ms)).await {
                    vec![
                        self.book
                            .record_stopped(replica, *workload_hash, *reason, now),
                    ]
                } else {
                    vec![]
                }
            }
            Action::Adopt {
                replica,
                service,
                workload_hash,
                since_ms,
            } => vec![
                self.book
                    .record_adopted(replica, service, *workload_hash, *since_ms, now),
            ],
            Action::Restart {
                replica,
                service,
                workload_hash,
                previous_hash,
                reason,
            } => {
                if self.is_live(replica).await {
                    let grace = Duration::from_millis(service.spec.stop_grace_period_ms);
                    if !self.stop(replica, grace).await {
                        return vec![];
                    }
                    if matches!(reason, planner::RestartReason::Unhealthy) {
                        self.book
                            .record_exited(replica, service, *previous_hash, None, now);
                    }
                }
                self.health.remove(replica);
                vec![
                    self.start(replica, service, *workload_hash, &view.secrets)
                        .await,
                ]
            }
            Action::Start {
                replica,
                service,
                workload_hash,
            } => {
                if self.is_live(replica).await {
                    // The planner starts only once the old workload has stopped; a live one
                    // here is a race with its exit: plan again next pass.
                    return vec![];
                }
                self.health.remove(replica);
                vec![
                    self.start(replica, service, *workload_hash, &view.secrets)
                        .await,
                ]
            }
            Action::Wait { .. } => vec![],
        }
    }

    async fn is_live(&self, replica: &ReplicaId) -> bool {
        let Some(handle) = self.handles.get(replica) else {
            return false;
        };
        matches!(
            self.runtime.observe(handle).await,
            Ok(crate::runtime::RuntimeObservation::Running) | Err(_)
        )
    }

    /// Stops every held workload, each with its service's stop grace period; returns the
    /// replicas stopped, with their workload hashes.
    async fn stop_every_workload(&mut self) -> Vec<(ReplicaId, u64)> {
        let held: Vec<(ReplicaId, u64)> = self
            .handles
            .iter()
            .map(|(replica, handle)| (replica.clone(), handle.record().workload_hash))
            .collect();
        let mut stopped = Vec::with_capacity(held.len());
        for (replica, workload_hash) in held {
            let grace_ms = self
                .book
                .get(&replica)
                .map_or(DEFAULT_STOP_GRACE_PERIOD_MS, |r| r.stop_grace_period_ms);
            if self.stop(&replica, Duration::from_millis(grace_ms)).await {
                stopped.push((replica, workload_hash));
            }
        }
        stopped
    }

    /// Stops the replica's workload and forgets it; returns whether it is stopped.
    async fn stop(&mut self, replica: &ReplicaId, grace: Duration) -> bool {
        if let Some(handle) = self.handles.get(replica)
            && let Err(error) = self.runtime.stop(handle, grace).await
        {
            warn!(%replica, error = %error, "cannot stop workload; trying again next pass");
            return false;
        }
        if let Err(error) = self.runtime.cleanup(replica).await {
            warn!(%replica, error = %error, "cannot clean up after workload");
        }
        self.handles.remove(replica);
        self.exits.remove(replica);
        self.start_errors.remove(replica);
        self.oom_kills.remove(replica);
        self.secrets.forget(replica);
        self.remove_key(&record_key(replica));
        self.flush().await;
        true
    }

    async fn start(
        &mut self,
        replica: &ReplicaId,
        service: &Service,
        workload_hash: u64,
        sealed: &BTreeMap<String, SealedBlob>,
    ) -> Event {
        let now = unix_now_ms();
        let started = match self.secrets.request(replica, &service.spec, sealed) {
            Ok(request) => self
                .runtime
                .start(&request)
                .await
                .map_err(ReplicaStartError::from),
            Err(error) => Err(error),
        };
        match started {
            Ok(handle) => {
                if let Err(error) = self.cache.put(&record_key(replica), handle.record()) {
                    warn!(%replica, error = %error, "cannot record the started workload");
                }
                let mut event = self
                    .book
                    .record_started(replica, service, workload_hash, now);
                // One flush makes the record and the book that counts the start durable
                // together, before anything else happens: a crash after it adopts the
                // workload rather than starting a second copy.
                self.put_book();
                self.flush().await;
                let runs_as = handle.record().credentials.as_ref().map(|c| c.describe());
                self.handles.insert(replica.clone(), handle);
                self.exits.remove(replica);
                self.start_errors.remove(replica);
                // Who it runs as, said with every start: `service ps` and the events show it.
                if let Some(runs_as) = runs_as {
                    event.message.push_str(&format!(" as {runs_as}"));
                }
                event
            }
            Err(error) => {
                warn!(%replica, error = %error, "cannot start workload");
                self.start_errors.insert(replica.clone(), error.to_string());
                self.book.record_start_failed(
                    replica,
                    service,
                    workload_hash,
                    now,
                    &error.to_string(),
                )
            }
        }
    }

    /// The node was removed: stop everything, wipe records, secrets and the view, and mark
    /// the cache so that an offline boot does not start the workloads again.
    pub(super) async fn teardown(&mut self) {
        self.health_monitor.shutdown().await;
        self.health.clear();
        self.stop_every_workload().await;
        // Stopping removed the stopped replicas' secrets; this catches any left behind (a
        // workload that would not stop, one the agent lost track of).
        if let Err(error) = self.runtime.wipe_secrets().await {
            warn!(error = %error, "cannot remove every secret file");
        }
        if let Err(error) = secrets::remove_key(&self.data_dir) {
            warn!(error = %error, "cannot remove the node secret key");
        }
        self.secrets.clear();
        for key in self.cache.keys_with_prefix(RECORD_PREFIX) {
            self.remove_key(&key);
        }
        self.remove_key(BOOK_KEY);
        self.remove_key(VIEW_KEY);
        if let Err(error) = self.cache.put(REMOVED_KEY, &true) {
            warn!(error = %error, "cannot mark the cache as removed");
        }
        self.flush().await;
        self.book = RestartBook::new();
        self.book_stored = RestartBook::new();
        self.states.clear();
        self.reporter.clear();
        self.link.connected = false;
        self.write_status(None, true);
    }
}
