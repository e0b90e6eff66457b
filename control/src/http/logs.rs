//! `POST /services/{service}/logs`: a service's workload logs, asked of the agents that run its
//! replicas (`crate::agent_logs`) and interleaved by time. A read: it changes nothing, and a
//! follow sends it again, to any control node, with the cursors of the last answer.

use std::collections::BTreeMap;
use std::time::Duration;

use warren_api::clock::unix_now_ms;

use warren_api::logs::{
    AgentLogReply, AgentLogRequest, LogLine, LogQuery, LogsReply, LogsUnavailable,
};
use warren_api::{NodeId, ReplicaId};

use super::respond::{ApiResult, ok};
use super::{Api, ApiError};
use crate::state::ClusterState;
use crate::status::AgentReport;

/// The replicas of one node that a query names.
#[derive(Debug, PartialEq, Eq)]
struct NodeTarget {
    node: NodeId,
    name: String,
    replicas: Vec<ReplicaId>,
}

impl Api {
    pub(super) async fn service_logs(&self, service: &str, query: LogQuery) -> ApiResult {
        query
            .validate()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let targets = log_targets(&*self.control.read_stale().await, service, &query)?;
        let agents = self.control.gather_agents(false).await;
        let budget = query.max_bytes() / u32::try_from(targets.len().max(1)).unwrap_or(u32::MAX);
        let mut asks = tokio::task::JoinSet::new();
        for (index, target) in targets.iter().enumerate() {
            let request = AgentLogRequest {
                replicas: target.replicas.clone(),
                since_ms: query.since_ms,
                tail: query.tail,
                follow: query.follow,
                after: (query.after.iter())
                    .filter(|c| target.replicas.contains(&c.replica))
                    .cloned()
                    .collect(),
                max_bytes: budget.max(1),
            };
            let holder = link_holder(agents.get(&target.node), unix_now_ms());
            let control = self.control.clone();
            let node = target.node;
            asks.spawn(async move {
                let answer = match holder {
                    Ok(holder) => control
                        .agent_logs(node, holder, request)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(why) => Err(why),
                };
                (index, answer)
            });
        }
        let mut answers = BTreeMap::new();
        while let Some(joined) = asks.join_next().await {
            if let Ok((index, answer)) = joined {
                answers.insert(index, answer);
            }
        }
        ok(&merge(&targets, answers, &agents))
    }
}

/// An agent whose connection has carried nothing (its QUIC keep-alives included, every
/// [`warren_api::wire::AGENT_KEEP_ALIVE`]) for this long is taken as cut off at once, rather than asked and
/// waited for until [`crate::agent_logs::AGENT_LOGS_TIMEOUT`].
pub const AGENT_SILENT_AFTER: Duration = Duration::from_secs(4);

/// The control member that holds the agent's link, or why its logs cannot be asked for.
fn link_holder(report: Option<&AgentReport>, now_ms: u64) -> Result<u64, String> {
    let Some(report) = report.filter(|r| r.connected) else {
        return Err("the agent has no link to control".to_owned());
    };
    let silent_ms = now_ms.saturating_sub(report.last_contact_ms);
    if silent_ms > AGENT_SILENT_AFTER.as_millis() as u64 {
        return Err("the agent is silent; its link is going down".to_owned());
    }
    Ok(report.control_id)
}

/// The replicas `query` names in `service`, by node, with each node's name.
fn log_targets(
    state: &ClusterState,
    service: &str,
    query: &LogQuery,
) -> Result<Vec<NodeTarget>, ApiError> {
    if !state.services.contains_key(service) {
        return Err(ApiError::NotFound(format!("service {service} not found")));
    }
    if let Some(replica) = &query.replica
        && replica.service.as_str() != service
    {
        return Err(ApiError::Invalid(format!(
            "replica: {replica} is not a replica of service {service}"
        )));
    }
    let mut by_node: BTreeMap<NodeId, Vec<ReplicaId>> = BTreeMap::new();
    for replica in state.replicas.values() {
        let wanted = match &query.replica {
            Some(one) => replica.id == *one,
            None => replica.id.service.as_str() == service,
        };
        if wanted {
            by_node
                .entry(replica.node)
                .or_default()
                .push(replica.id.clone());
        }
    }
    if by_node.is_empty()
        && let Some(replica) = &query.replica
    {
        return Err(ApiError::NotFound(format!(
            "replica {replica} not found; `warren service ps {service}` lists them"
        )));
    }
    Ok(by_node
        .into_iter()
        .map(|(node, replicas)| NodeTarget {
            node,
            name: state
                .nodes
                .get(&node)
                .map_or_else(|| format!("{node}"), |n| n.name.clone()),
            replicas,
        })
        .collect())
}

/// One answer from the agents' answers (by target index): their lines interleaved by time and
/// named by node, their cursors, and the replicas that could not be read with why and since
/// when their agent was last heard from.
fn merge(
    targets: &[NodeTarget],
    mut answers: BTreeMap<usize, Result<AgentLogReply, String>>,
    agents: &BTreeMap<NodeId, AgentReport>,
) -> LogsReply {
    let mut reply = LogsReply::default();
    for (index, target) in targets.iter().enumerate() {
        let answer = answers
            .remove(&index)
            .unwrap_or_else(|| Err("the request to the agent failed".to_owned()));
        let last_contact_ms = agents
            .get(&target.node)
            .map(|r| r.last_contact_ms)
            .filter(|ms| *ms > 0);
        let unavailable = |replica: &ReplicaId, reason: String| LogsUnavailable {
            replica: replica.clone(),
            node: target.name.clone(),
            last_contact_ms,
            reason,
        };
        match answer {
            Ok(agent) => {
                reply.truncated |= agent.truncated;
                reply.cursors.extend(agent.cursors);
                reply
                    .lines
                    .extend(agent.lines.into_iter().map(|line| LogLine {
                        replica: line.replica,
                        node: target.name.clone(),
                        stream: line.stream,
                        time_ms: line.time_ms,
                        text: line.text,
                    }));
                (reply.unavailable).extend(
                    (agent.missing.into_iter()).map(|(replica, why)| unavailable(&replica, why)),
                );
            }
            Err(why) => reply
                .unavailable
                .extend((target.replicas.iter()).map(|replica| unavailable(replica, why.clone()))),
        }
    }
    // Stable: lines of one stream keep their order (the agent never lets time go backwards
    // within a stream).
    reply.lines.sort_by_key(|line| line.time_ms);
    reply
}

#[cfg(test)]
mod tests {
    use warren_api::logs::{AgentLogLine, LogStream};

    use super::*;

    fn target(node: u64, name: &str, replicas: &[&str]) -> NodeTarget {
        NodeTarget {
            node: NodeId(node),
            name: name.to_owned(),
            replicas: replicas.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    fn line(replica: &str, time_ms: u64, text: &str) -> AgentLogLine {
        AgentLogLine {
            replica: replica.parse().unwrap(),
            stream: LogStream::Stdout,
            time_ms,
            text: text.to_owned(),
        }
    }

    fn apply(state: &mut ClusterState, index: u64, op: crate::command::Op) {
        let command = crate::command::Command {
            at_ms: 1_000 + index,
            op,
        };
        state
            .apply(warren_api::Revision(index), &command)
            .result
            .expect("applied");
    }

    fn agent(id: u64) -> warren_api::Node {
        warren_api::Node {
            id: NodeId(id),
            name: format!("edge-{id}"),
            role: warren_api::NodeRole::Agent,
            site: "lisbon".into(),
            labels: Default::default(),
            availability: warren_api::Availability::Active,
            state: warren_api::NodeState::Ready,
            cert_serial: Some(format!("serial{id}")),
            addresses: Default::default(),
            joined_at_ms: 0,
        }
    }

    /// Two agents, a service of three replicas and another of one: a query names the
    /// service's replicas by node, or one of them; unknown names are refused in words.
    #[test]
    fn queries_name_replicas_by_node() {
        use crate::command::Op;
        use warren_api::{ProcessSpec, ServiceName, ServiceSpec, Workload};
        let mut state = ClusterState::default();
        apply(&mut state, 1, Op::RegisterNode(agent(1)));
        apply(&mut state, 2, Op::RegisterNode(agent(2)));
        for (index, (name, replicas)) in [("web", 3), ("api", 1)].into_iter().enumerate() {
            let mut spec = ServiceSpec::new(
                ServiceName::new(name).unwrap(),
                Workload::Process(ProcessSpec {
                    command: vec!["sleep".into(), "1000".into()],
                    working_dir: None,
                }),
            );
            spec.mode = warren_api::ServiceMode::Replicated { replicas };
            apply(&mut state, 3 + index as u64, Op::PutService(spec));
        }
        let query = |replica: Option<&str>| LogQuery {
            replica: replica.map(|r| r.parse().unwrap()),
            ..LogQuery::default()
        };
        let targets = log_targets(&state, "web", &query(None)).unwrap();
        let named: Vec<(String, Vec<String>)> = (targets.iter())
            .map(|t| {
                (
                    t.name.clone(),
                    t.replicas.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(named.len(), 2, "{named:?}");
        let all: usize = named.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(all, 3, "{named:?}");
        assert!(
            named
                .iter()
                .flat_map(|(_, r)| r)
                .all(|r| r.starts_with("web."))
        );

        let one = log_targets(&state, "web", &query(Some("web.2"))).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].replicas, ["web.2".parse().unwrap()]);

        let error = |service: &str, replica: Option<&str>| {
            log_targets(&state, service, &query(replica))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(error("nope", None), "service nope not found");
        assert_eq!(
            error("web", Some("web.9")),
            "replica web.9 not found; `warren service ps web` lists them"
        );
        assert_eq!(
            error("web", Some("api.1")),
            "replica: api.1 is not a replica of service web"
        );
    }

    #[test]
    fn answers_interleave_by_time_and_failures_name_their_replicas() {
        let targets = [
            target(1, "edge-1", &["web.0"]),
            target(2, "edge-2", &["web.1"]),
            target(3, "edge-3", &["web.2", "web.3"]),
        ];
        let mut answers = BTreeMap::new();
        answers.insert(
            0,
            Ok(AgentLogReply {
                lines: vec![line("web.0", 10, "a"), line("web.0", 30, "c")],
                ..AgentLogReply::default()
            }),
        );
        answers.insert(
            1,
            Ok(AgentLogReply {
                lines: vec![line("web.1", 20, "b")],
                truncated: true,
                ..AgentLogReply::default()
            }),
        );
        answers.insert(2, Err("cut off".to_owned()));
        let merged = merge(&targets, answers, &BTreeMap::new());
        let order: Vec<(&str, &str)> = merged
            .lines
            .iter()
            .map(|l| (l.node.as_str(), l.text.as_str()))
            .collect();
        assert_eq!(order, [("edge-1", "a"), ("edge-2", "b"), ("edge-1", "c")]);
        assert!(merged.truncated);
        let unavailable: Vec<String> = merged
            .unavailable
            .iter()
            .map(|u| format!("{}@{}: {}", u.replica, u.node, u.reason))
            .collect();
        assert_eq!(
            unavailable,
            ["web.2@edge-3: cut off", "web.3@edge-3: cut off"]
        );
    }
}
