//! Members as gossip describes them: the metadata keys a node publishes, the typed [`Member`]
//! read back from them, checking authorising claims against the registry, and liveness changes
//! for the control plane. Pure: no chitchat, no I/O.
//!
//! **Everything here is claimed, not proven.** The gossip key is shared by the whole cluster:
//! any node holding it can publish any metadata under any node id. Gossip is therefore only a
//! hint (docs/design.md §2). Before a WireGuard public key or an overlay address from gossip is used to
//! build a tunnel or a route, it must be checked against the node registry in Raft with
//! [`Member::verify_claims`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use warren_api::{NodeId, NodeRole};

/// Metadata key: the node's human name.
pub const KEY_NAME: &str = "name";
/// Metadata key: `agent` or `control`.
pub const KEY_ROLE: &str = "role";
/// Metadata key: the node's site.
pub const KEY_SITE: &str = "site";
/// Metadata key: the node's WireGuard overlay address. Claimed; verify before use.
pub const KEY_OVERLAY_ADDR: &str = "overlay_addr";
/// Metadata key: the node's WireGuard public key (base64). Claimed; verify before use.
pub const KEY_WG_PUBLIC_KEY: &str = "wg_public_key";
/// Metadata key: the revision of the desired state the agent has applied.
pub const KEY_AGENT_REVISION: &str = "agent_revision";
/// Metadata key prefix: an advertised endpoint, `endpoint.<purpose>` = `host:port`.
pub const ENDPOINT_PREFIX: &str = "endpoint.";
/// Endpoint purpose (`endpoint.wg`): where the node's WireGuard port is. A hint: peers use it
/// only with an overlay address and key the registry backs.
pub const WG_ENDPOINT: &str = "wg";
/// Metadata key prefix: a running service's endpoints on this node, `service.<name>` =
/// comma-separated `ip:port`.
pub const SERVICE_PREFIX: &str = "service.";

/// How this node sees a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    /// Heartbeats arrive as expected.
    Alive,
    /// Still alive for the failure detector, but its heartbeat has not advanced for more than
    /// half the detector's current timeout: on its way to dead unless it is heard from soon.
    Suspect,
    /// The failure detector's phi passed the threshold.
    Dead,
}

impl Liveness {
    /// The metric label and the word `warren node ls` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "dead",
        }
    }
}

/// Authorising metadata as a member claims it. Unchecked: see [`Member::verify_claims`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimedIdentity {
    /// The overlay address it claims.
    pub overlay_addr: Option<IpAddr>,
    /// The WireGuard public key it claims.
    pub wg_public_key: Option<String>,
}

/// One member of the mesh, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's id. Its metadata below is what that node signed with its certificate's key
    /// ([`crate::identity`]); empty for a member none of whose state passed the check.
    pub node_id: NodeId,
    /// Increases every time the node process starts (its start time, unix ms).
    pub generation: u64,
    /// Where it gossips.
    pub gossip_addr: SocketAddr,
    /// Its human name, if published.
    pub name: Option<String>,
    /// Its role, if published and known.
    pub role: Option<NodeRole>,
    /// Its site, if published.
    pub site: Option<String>,
    /// Liveness as this node's failure detector sees it, bounded by the member's own signature.
    pub liveness: Liveness,
    /// Overlay address and WireGuard key, unchecked.
    pub claimed: ClaimedIdentity,
    /// Advertised endpoints by purpose (`quic`, `api`, `metrics`, `dns`, …).
    pub endpoints: BTreeMap<String, String>,
    /// The desired-state revision the agent has applied, if published.
    pub agent_revision: Option<u64>,
    /// Running service endpoints on that node, by service name.
    pub services: BTreeMap<String, Vec<SocketAddr>>,
    /// Every metadata key and value, raw.
    pub meta: BTreeMap<String, String>,
}

impl Member {
    /// Builds a member from its gossip identity and metadata. Values that do not parse are
    /// left out of the typed fields (they stay in `meta`).
    pub fn from_meta(
        node_id: NodeId,
        generation: u64,
        gossip_addr: SocketAddr,
        liveness: Liveness,
        meta: BTreeMap<String, String>,
    ) -> Self {
        let endpoints = meta
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(ENDPOINT_PREFIX)?, value)))
            .map(|(purpose, value)| (purpose.to_owned(), value.clone()))
            .collect();
        let services = meta
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(SERVICE_PREFIX)?, value)))
            .map(|(service, value)| (service.to_owned(), parse_endpoints(value)))
            .collect();
        Self {
            node_id,
            generation,
            gossip_addr,
            name: meta.get(KEY_NAME).cloned(),
            role: meta.get(KEY_ROLE).and_then(|role| role.parse().ok()),
            site: meta.get(KEY_SITE).cloned(),
            liveness,
            claimed: ClaimedIdentity {
                overlay_addr: meta.get(KEY_OVERLAY_ADDR).and_then(|ip| ip.parse().ok()),
                wg_public_key: meta.get(KEY_WG_PUBLIC_KEY).cloned(),
            },
            endpoints,
            agent_revision: meta.get(KEY_AGENT_REVISION).and_then(|r| r.parse().ok()),
            services,
            meta,
        }
    }

    /// Checks the member's authorising claims against what the node registry (control's
    /// replicated state) records for that node id, and returns them only if they match.
    ///
    /// # Errors
    /// [`ClaimError`] naming the first claim that is missing or differs.
    pub fn verify_claims(
        &self,
        registered: &RegisteredIdentity,
    ) -> Result<VerifiedIdentity, ClaimError> {
        if registered.node_id != self.node_id {
            return Err(ClaimError::WrongNode {
                claimed: self.node_id,
                registered: registered.node_id,
            });
        }
        let wg_public_key = match (&self.claimed.wg_public_key, &registered.wg_public_key) {
            (Some(claimed), Some(expected)) if claimed == expected => claimed.clone(),
            (None, _) => return Err(ClaimError::Missing("wg_public_key")),
            (Some(_), _) => return Err(ClaimError::Mismatch("wg_public_key")),
        };
        let overlay_addr = match (self.claimed.overlay_addr, registered.overlay_addr) {
            (Some(claimed), Some(expected)) if claimed == expected => claimed,
            (None, _) => return Err(ClaimError::Missing("overlay_addr")),
            (Some(_), _) => return Err(ClaimError::Mismatch("overlay_addr")),
        };
        Ok(VerifiedIdentity {
            node_id: self.node_id,
            wg_public_key,
            overlay_addr,
        })
    }
}

fn parse_endpoints(value: &str) -> Vec<SocketAddr> {
    value
        .split(',')
        .filter_map(|endpoint| endpoint.trim().parse().ok())
        .collect()
}

/// Formats endpoints the way [`Member`] parses them.
pub fn format_endpoints(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What the node registry records for a node: the caller (control, or an agent from its view)
/// fills this from replicated state, never from gossip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredIdentity {
    /// The node.
    pub node_id: NodeId,
    /// Its registered WireGuard public key, if it has one yet.
    pub wg_public_key: Option<String>,
    /// Its allocated overlay address, if it has one yet.
    pub overlay_addr: Option<IpAddr>,
}

/// Authorising metadata that matched the registry: safe to build tunnels and routes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The node.
    pub node_id: NodeId,
    /// Its WireGuard public key, as registered.
    pub wg_public_key: String,
    /// Its overlay address, as registered.
    pub overlay_addr: IpAddr,
}

/// A gossip claim the registry does not back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The registry entry is for another node.
    #[error("registry entry is for node {registered}, the member claims {claimed}")]
    WrongNode {
        /// The node id the member claims.
        claimed: NodeId,
        /// The node id of the registry entry.
        registered: NodeId,
    },
    /// The member does not publish this claim yet.
    #[error("member does not claim {0}")]
    Missing(&'static str),
    /// The member's claim differs from the registry (or the registry has none).
    #[error("claimed {0} does not match the node registry")]
    Mismatch(&'static str),
}

impl ClaimError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClaimError::WrongNode { .. } => "wrong_node",
            ClaimError::Missing(_) => "missing",
            ClaimError::Mismatch(_) => "mismatch",
        }
    }
}

/// A node went unreachable or came back, as the leader turns into log entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivenessChange {
    /// Was alive or suspect, now dead.
    Unreachable(NodeId),
    /// Was dead, now alive.
    Back(NodeId),
}

/// The liveness changes between two member lists. Suspect is not a change: it turns into one
/// only if the node goes dead. A member that appears alive for the first time, or disappears
/// (garbage-collected after the dead-node grace), is not a change either: joins and removals
/// come from the registry, not from gossip.
pub fn liveness_changes(before: &[Member], after: &[Member]) -> Vec<LivenessChange> {
    let before: BTreeMap<NodeId, Liveness> =
        before.iter().map(|m| (m.node_id, m.liveness)).collect();
    after
        .iter()
        .filter_map(|member| {
            let was = *before.get(&member.node_id)?;
            match (was, member.liveness) {
                (Liveness::Alive | Liveness::Suspect, Liveness::Dead) => {
                    Some(LivenessChange::Unreachable(member.node_id))
                }
                (Liveness::Dead, Liveness::Alive) => Some(LivenessChange::Back(member.node_id)),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, liveness: Liveness, meta: &[(&str, &str)]) -> Member {
        Member::from_meta(
            NodeId(id),
            1,
            SocketAddr::from(([127, 0, 0, 1], 7946)),
            liveness,
            meta.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn typed_fields_come_from_meta() {
        let m = member(
            1,
            Liveness::Alive,
            &[
                (KEY_NAME, "edge-1"),
                (KEY_ROLE, "agent"),
                (KEY_SITE, "lyon"),
                (KEY_OVERLAY_ADDR, "10.42.1.0"),
                (KEY_WG_PUBLIC_KEY, "pk"),
                (KEY_AGENT_REVISION, "42"),
                ("endpoint.quic", "192.0.2.1:7101"),
                ("service.web", "10.42.1.5:80, 10.42.1.6:80,junk"),
            ],
        );
        assert_eq!(m.name.as_deref(), Some("edge-1"));
        assert_eq!(m.role, Some(NodeRole::Agent));
        assert_eq!(m.site.as_deref(), Some("lyon"));
        assert_eq!(m.agent_revision, Some(42));
        assert_eq!(m.endpoints["quic"], "192.0.2.1:7101");
        assert_eq!(m.services["web"].len(), 2);
        assert_eq!(m.claimed.overlay_addr, Some("10.42.1.0".parse().unwrap()));
    }

    #[test]
    fn claims_are_checked_against_the_registry() {
        let m = member(
            1,
            Liveness::Alive,
            &[(KEY_OVERLAY_ADDR, "10.42.1.0"), (KEY_WG_PUBLIC_KEY, "pk")],
        );
        let registered = RegisteredIdentity {
            node_id: NodeId(1),
            wg_public_key: Some("pk".into()),
            overlay_addr: Some("10.42.1.0".parse().unwrap()),
        };
        let check = |registered: RegisteredIdentity, expected: Result<(), &str>| {
            let got = m
                .verify_claims(&registered)
                .map(|_| ())
                .map_err(|e| e.kind());
            assert_eq!(got, expected, "{registered:?}");
        };
        check(registered.clone(), Ok(()));
        check(
            RegisteredIdentity {
                wg_public_key: Some("other".into()),
                ..registered.clone()
            },
            Err("mismatch"),
        );
        check(
            RegisteredIdentity {
                overlay_addr: None,
                ..registered.clone()
            },
            Err("mismatch"),
        );
        check(
            RegisteredIdentity {
                node_id: NodeId(2),
                ..registered.clone()
            },
            Err("wrong_node"),
        );
        let silent = member(1, Liveness::Alive, &[]);
        assert_eq!(
            silent.verify_claims(&registered),
            Err(ClaimError::Missing("wg_public_key"))
        );
    }

    #[test]
    fn only_dead_transitions_are_liveness_changes() {
        let before = [
            member(1, Liveness::Alive, &[]),
            member(2, Liveness::Suspect, &[]),
            member(3, Liveness::Dead, &[]),
            member(4, Liveness::Alive, &[]),
        ];
        let after = [
            member(1, Liveness::Suspect, &[]),
            member(2, Liveness::Dead, &[]),
            member(3, Liveness::Alive, &[]),
            member(5, Liveness::Alive, &[]),
        ];
        assert_eq!(
            liveness_changes(&before, &after),
            vec![
                LivenessChange::Unreachable(NodeId(2)),
                LivenessChange::Back(NodeId(3))
            ]
        );
    }
}
