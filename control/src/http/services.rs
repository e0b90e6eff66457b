//! `/services`: specs with their versions and rollouts, the replicas placed and what their
//! agents report, and the writes (create, update, scale, roll back, remove).

use std::collections::BTreeMap;

use warren_api::rest::{ReplicaInfo, RolloutInfo, ScaleRequest, ServiceInfo, WriteResult};
use warren_api::{NodeId, ServiceName, ServiceSpec};

use super::respond::{ApiResult, ok, written};
use super::{Api, ApiError};
use crate::command::{Op, PutIfVersion};
use crate::state::{ClusterState, version_conflict};
use crate::status::{AgentReport, counts_as_running};

impl Api {
    pub(super) async fn list_services(&self, stale: bool) -> ApiResult {
        let agents = self.control.gather_agents(true).await;
        let state = self.read(stale).await?;
        ok(&state
            .services
            .keys()
            .filter_map(|name| service_info(&state, name.as_str(), &agents))
            .collect::<Vec<_>>())
    }

    pub(super) async fn get_service(&self, name: &str, stale: bool) -> ApiResult {
        let agents = self.control.gather_agents(true).await;
        let state = self.read(stale).await?;
        let info = service_info(&state, name, &agents)
            .ok_or_else(|| ApiError::NotFound(format!("service {name} not found")))?;
        ok(&info)
    }

    pub(super) async fn service_replicas(&self, name: &str, stale: bool) -> ApiResult {
        let agents = self.control.gather_agents(true).await;
        let state = self.read(stale).await?;
        if !state.services.contains_key(name) {
            return Err(ApiError::NotFound(format!("service {name} not found")));
        }
        let replicas: Vec<ReplicaInfo> = state
            .replicas
            .values()
            .filter(|r| r.id.service.as_str() == name)
            .map(|r| replica_info(&state, r, agents.get(&r.node)))
            .collect();
        ok(&replicas)
    }

    pub(super) async fn create_service(&self, spec: ServiceSpec) -> ApiResult {
        if self
            .control
            .read_stale()
            .await
            .services
            .contains_key(&spec.name)
        {
            return Err(ApiError::Conflict(format!(
                "service {} already exists; use `warren service update` or `warren apply`",
                spec.name
            )));
        }
        spec.validate()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        written(self.control.propose(Op::PutService(spec)).await?)
    }

    pub(super) async fn put_service(
        &self,
        name: &str,
        spec: ServiceSpec,
        if_version: Option<u64>,
    ) -> ApiResult {
        if spec.name.as_str() != name {
            return Err(ApiError::Invalid(format!(
                "name: body says {}, path says {name}",
                spec.name
            )));
        }
        spec.validate()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        // `apply -f` re-sends every service each time: an unchanged spec (checked against a
        // linearizable read, so a lagging follower cannot wrongly call it unchanged) answers
        // without appending a Raft entry.
        {
            let state = self.control.read_linearizable().await?;
            let version = state
                .services
                .get(&spec.name)
                .map_or(0, |r| r.current.version);
            if let Some(expected) = if_version
                && expected != version
            {
                return Err(ApiError::Conflict(version_conflict(
                    &spec.name, version, expected,
                )));
            }
            if let Some(current) = state.services.get(&spec.name)
                && current.current.spec == spec
                && current
                    .rollout
                    .as_ref()
                    .is_none_or(|r| r.phase != crate::state::RolloutPhase::Paused)
            {
                return ok(&WriteResult {
                    revision: state.revision.0,
                    changed: false,
                    created: false,
                    version: Some(current.current.version),
                });
            }
        }
        let op = match if_version {
            Some(version) => Op::PutServiceIfVersion(PutIfVersion { spec, version }),
            None => Op::PutService(spec),
        };
        written(self.control.propose(op).await?)
    }

    pub(super) async fn scale_service(&self, name: &str, scale: ScaleRequest) -> ApiResult {
        let op = Op::ScaleService {
            name: service_name(name)?,
            replicas: scale.replicas,
        };
        written(self.control.propose(op).await?)
    }

    pub(super) async fn rollback_service(&self, name: &str) -> ApiResult {
        let op = Op::RollbackService(service_name(name)?);
        written(self.control.propose(op).await?)
    }

    pub(super) async fn remove_service(&self, name: &str) -> ApiResult {
        let op = Op::RemoveService(service_name(name)?);
        written(self.control.propose(op).await?)
    }
}

pub(super) fn service_name(name: &str) -> Result<ServiceName, ApiError> {
    ServiceName::new(name).map_err(|e| ApiError::Invalid(e.to_string()))
}

/// A service with its counts: placed from the state, running from what the agents report.
fn service_info(
    state: &ClusterState,
    name: &str,
    agents: &BTreeMap<NodeId, AgentReport>,
) -> Option<ServiceInfo> {
    let record = state.services.get(name)?;
    let placed: Vec<&warren_api::Replica> = state
        .replicas
        .values()
        .filter(|r| r.id.service.as_str() == name)
        .collect();
    let checked = record.current.spec.health.is_some();
    let (mut running, mut stale) = (0, 0);
    for replica in &placed {
        let agent = agents.get(&replica.node);
        let Some(reported) = agent.and_then(|a| a.replicas.iter().find(|s| s.id == replica.id))
        else {
            continue;
        };
        if counts_as_running(reported, checked) {
            running += 1;
        }
        if !agent.is_some_and(|a| a.connected) {
            stale += 1;
        }
    }
    let unschedulable = state.unschedulable.get(name).copied().unwrap_or(0);
    Some(ServiceInfo {
        spec: record.current.spec.clone(),
        version: record.current.version,
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
        replicas_desired: record.current.spec.replicas(),
        replicas_placed: placed.len(),
        replicas_running: Some(running),
        replicas_stale: stale,
        unschedulable,
        pending_reason: (unschedulable > 0).then(|| {
            super::volumes::pin_text(state, &record.current.spec)
                .unwrap_or_else(|| crate::scheduler::why_unplaceable(&record.current, &state.nodes))
        }),
        rolling_out: record
            .rollout
            .as_ref()
            .filter(|r| r.is_active())
            .map(|r| r.version),
        can_roll_back: record.previous.is_some(),
        pinned: super::volumes::pin_text(state, &record.current.spec),
        rollout: rollout_info(record, &placed),
    })
}

/// The service's last rollout, as operators see it.
fn rollout_info(
    record: &crate::state::ServiceRecord,
    placed: &[&warren_api::Replica],
) -> Option<RolloutInfo> {
    let rollout = record.rollout.as_ref()?;
    Some(RolloutInfo {
        version: rollout.version,
        state: rollout.phase.as_str().to_owned(),
        updated: rollout.updated,
        total: u32::try_from(placed.len()).unwrap_or(u32::MAX),
        failed: rollout.failed,
        unreachable: rollout.unreachable,
        message: rollout.message.clone(),
    })
}

/// One replica for `service ps`: the assignment from the state, the actual state from its
/// agent's last report (`assigned` until one mentions it).
fn replica_info(
    state: &ClusterState,
    replica: &warren_api::Replica,
    agent: Option<&AgentReport>,
) -> ReplicaInfo {
    let node = state.nodes.get(&replica.node);
    let reported = agent.and_then(|a| a.replicas.iter().find(|s| s.id == replica.id));
    ReplicaInfo {
        id: replica.id.to_string(),
        node: replica.node,
        node_name: node.map(|n| n.name.clone()).unwrap_or_default(),
        site: node.map(|n| n.site.clone()).unwrap_or_default(),
        service_version: replica.service_version,
        desired: replica.desired,
        state: reported.map_or("assigned", |s| s.state.as_str()).to_owned(),
        node_state: node
            .map(|n| n.state.as_str().to_owned())
            .unwrap_or_else(|| "unknown".into()),
        pid: reported.and_then(|s| s.pid),
        restarts: reported.map_or(0, |s| s.restarts),
        health: reported
            .map_or(warren_api::HealthState::Unknown, |s| s.health)
            .as_str()
            .to_owned(),
        message: reported.and_then(|s| s.message.clone()),
        updated_at_ms: reported.map(|s| s.updated_at_ms),
        stale: reported.is_some() && !agent.is_some_and(|a| a.connected),
        pinned_by: state.services.get(&replica.id.service).and_then(|record| {
            super::volumes::pinned_by(state, &record.current.spec, replica.node)
        }),
    }
}
