//! Nodes: the machines of the fleet, as the control plane's registry records them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::validate::{ValidationError, validate_labels, validate_node_name, validate_site};

/// What a node does in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Runs workloads; holds a cached copy of its view of the desired state.
    Agent,
    /// A Raft member holding the desired state.
    Control,
}

impl NodeRole {
    /// Every role, in the order help texts list them.
    pub const ALL: [NodeRole; 2] = [NodeRole::Agent, NodeRole::Control];

    /// The role's name as the CLI, certificates and metric labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Agent => "agent",
            NodeRole::Control => "control",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeRole {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeRole::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "role",
                    format!("unknown role {s:?} (expected agent or control)"),
                )
            })
    }
}

/// Whether the scheduler may place new replicas on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Eligible for new replicas.
    #[default]
    Active,
    /// Operator asked to move replicas away (`warren node drain`).
    Drain,
}

impl Availability {
    /// `active` or `drain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Drain => "drain",
        }
    }
}

/// What the control plane believes about a node's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Connected, or recently heard from by gossip.
    Ready,
    /// Neither its stream nor gossip has been heard since `since_ms` (unix millis). Its
    /// workloads are presumed to keep running; nothing moves unless a service says
    /// `on_disconnect: reschedule`.
    Unreachable {
        /// When the node was first found unreachable, unix millis.
        since_ms: u64,
    },
    /// Declared down (unreachable past the grace period, or shut down cleanly).
    Down,
    /// Removed by an operator; its certificate is revoked and it will be refused.
    Removed,
}

impl NodeState {
    /// `ready`, `unreachable`, `down` or `removed`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Unreachable { .. } => "unreachable",
            NodeState::Down => "down",
            NodeState::Removed => "removed",
        }
    }
}

/// Where a node listens, as `host:port` strings. `None` means the node does not serve that
/// endpoint (an agent has no API address, for example).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddresses {
    /// QUIC endpoint (control nodes: Raft, agents and joins).
    pub quic: Option<String>,
    /// HTTP API (control nodes).
    pub api: Option<String>,
    /// Gossip UDP endpoint.
    pub gossip: Option<String>,
    /// Prometheus metrics, `/health` and `/ready`.
    pub metrics: Option<String>,
    /// The agent's DNS server.
    pub dns: Option<String>,
}

/// A node as recorded in the control plane's registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Assigned at join.
    pub id: NodeId,
    /// Human name, a DNS label, unique in the cluster.
    pub name: String,
    /// Agent or control.
    pub role: NodeRole,
    /// The site (location) the node is in, a DNS label.
    pub site: String,
    /// Operator labels, matched by placement constraints `label.<key>`.
    pub labels: BTreeMap<String, String>,
    /// Whether new replicas may be placed here.
    pub availability: Availability,
    /// Liveness as control sees it.
    pub state: NodeState,
    /// Serial number of the node's current certificate (hex), once issued.
    pub cert_serial: Option<String>,
    /// Listen addresses.
    pub addresses: NodeAddresses,
    /// When the node joined, unix millis.
    pub joined_at_ms: u64,
}

impl Node {
    /// Checks the name, site and labels.
    ///
    /// # Errors
    /// The first problem found, naming the field (`name`, `site`, `labels.<key>`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_node_name(&self.name)?;
        validate_site(&self.site)?;
        validate_labels("labels", &self.labels)
    }

    /// Whether the node may receive new replicas: active, ready and not removed.
    pub fn is_schedulable(&self) -> bool {
        self.availability == Availability::Active && self.state == NodeState::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_parse() {
        assert_eq!("agent".parse::<NodeRole>().unwrap(), NodeRole::Agent);
        assert_eq!("control".parse::<NodeRole>().unwrap(), NodeRole::Control);
        let err = "Agent".parse::<NodeRole>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "role: unknown role \"Agent\" (expected agent or control)"
        );
        for role in NodeRole::ALL {
            assert_eq!(role.to_string().parse::<NodeRole>().unwrap(), role);
        }
    }

    #[test]
    fn state_json_shape() {
        let json = serde_json::to_string(&NodeState::Unreachable { since_ms: 5 }).unwrap();
        assert_eq!(json, r#"{"unreachable":{"since_ms":5}}"#);
        assert_eq!(
            serde_json::to_string(&NodeState::Ready).unwrap(),
            r#""ready""#
        );
    }
}
