//! Placement of replicas: a pure, deterministic function of the node registry, the services and
//! the current placements. It runs inside the state machine's `apply`, so every control node
//! computes the same placements from the same log.
//!
//! Rules, in order:
//! 1. A replica stays where it is while it may ([`keepable`]): its node exists, is not removed
//!    or drained, still matches the placement, and is either reachable or covered by the
//!    service's `on_disconnect` policy (`keep` forever; `reschedule=D` until the node has been
//!    unreachable for D). Staying put is what avoids needless restarts after a partition.
//! 2. Missing replicas go to the best *placeable* node (active, ready, matching the
//!    placement), chosen by fewest replicas of the service in the node's site, then on the
//!    node, then fewest replicas on the node overall, then lowest node id. This spreads a
//!    service across sites first and nodes second, and breaks every tie deterministically.
//! 3. Replicated services use slots `1..=replicas`; scaling down drops the highest slots.
//!    Global services get one replica per placeable node, keyed by node.
//! 4. Kept replicas keep their service version and workload hash (a rolling update moves them
//!    in batches elsewhere); new placements get the service's current version and hash.
//! 5. A replicated service that mounts a local volume goes only to the node that holds the
//!    volume's data ([`Pin`]): the node its first replica was placed on, recorded in the
//!    plan's `volume_nodes`. While that node exists, its replicas are kept or placed there and
//!    nowhere else: when it cannot take them (down, drained), they wait, unschedulable. A
//!    global service's replicas each use their own node's directory and are not pinned.

mod explain;

use std::collections::BTreeMap;

use warren_api::{
    Availability, DesiredState, Node, NodeId, NodeRole, NodeState, OnDisconnect, Replica,
    ReplicaId, ReplicaKey, Service, ServiceMode, ServiceName, ServiceSpec,
};

pub use explain::why_unplaceable;

/// The scheduler's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every replica that should exist, with its node.
    pub replicas: BTreeMap<ReplicaId, Replica>,
    /// Replicas that could not be placed (no eligible node), by service.
    pub unschedulable: BTreeMap<ServiceName, u32>,
    /// The node holding each local volume: the input's, plus those this plan placed first.
    pub volume_nodes: BTreeMap<String, NodeId>,
}

/// Where a service's local volumes let its replicas go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Anywhere: it mounts no volume a node holds yet (or it is global).
    Free,
    /// Only to `node`, which holds `volume`.
    Node {
        /// The node that holds the data.
        node: NodeId,
        /// The (first) volume held there.
        volume: String,
    },
    /// Nowhere: two of its volumes are held by different nodes.
    Split {
        /// A volume and its node.
        first: (String, NodeId),
        /// Another volume, held by another node.
        second: (String, NodeId),
    },
}

impl Pin {
    /// The pin of `service` given which node holds each volume.
    pub fn of(service: &ServiceSpec, volume_nodes: &BTreeMap<String, NodeId>) -> Pin {
        if service.mode == ServiceMode::Global {
            return Pin::Free;
        }
        let mut pin = Pin::Free;
        for mount in &service.volumes {
            let Some(&node) = volume_nodes.get(&mount.volume) else {
                continue;
            };
            match &pin {
                Pin::Free => {
                    pin = Pin::Node {
                        node,
                        volume: mount.volume.clone(),
                    }
                }
                Pin::Node { node: held, volume } if *held != node => {
                    return Pin::Split {
                        first: (volume.clone(), *held),
                        second: (mount.volume.clone(), node),
                    };
                }
                _ => {}
            }
        }
        pin
    }

    /// Whether a replica may be on `node`.
    fn allows(&self, node: NodeId) -> bool {
        match self {
            Pin::Free => true,
            Pin::Node { node: held, .. } => *held == node,
            Pin::Split { .. } => false,
        }
    }
}

/// Records `node` as the holder of every volume of `service` that no node holds yet (a
/// replicated service's replica was just kept or placed there).
fn hold_volumes(service: &Service, node: NodeId, volume_nodes: &mut BTreeMap<String, NodeId>) {
    if service.spec.mode == ServiceMode::Global {
        return;
    }
    for mount in &service.spec.volumes {
        volume_nodes.entry(mount.volume.clone()).or_insert(node);
    }
}

/// Whether new replicas of `service` may be placed on `node`: an active, ready agent that
/// matches the placement. Control nodes run no workloads.
fn placeable(service: &Service, node: &Node) -> bool {
    node.role == NodeRole::Agent
        && node.is_schedulable()
        && service.spec.placement.allows_node(node)
        && warren_api::runtime_fits(&service.spec.workload, node)
}

/// Whether an existing replica of `service` may stay on `node` at `now_ms`.
pub fn keepable(service: &Service, node: &Node, now_ms: u64) -> bool {
    if node.role != NodeRole::Agent
        || node.availability != Availability::Active
        || !service.spec.placement.allows_node(node)
        || !warren_api::runtime_fits(&service.spec.workload, node)
    {
        return false;
    }
    let unreachable_since = match node.state {
        NodeState::Ready => return true,
        NodeState::Removed => return false,
        NodeState::Unreachable { since_ms } => Some(since_ms),
        NodeState::Down => None,
    };
    match service.spec.on_disconnect {
        OnDisconnect::Keep => true,
        OnDisconnect::Reschedule { after_ms } => {
            unreachable_since.is_some_and(|since| now_ms < since.saturating_add(after_ms))
        }
    }
}

/// Replica counts used to rank nodes for the next placement.
#[derive(Default)]
struct Load {
    per_node: BTreeMap<NodeId, usize>,
    per_service_node: BTreeMap<(ServiceName, NodeId), usize>,
    per_service_site: BTreeMap<(ServiceName, String), usize>,
}

impl Load {
    fn add(&mut self, service: &ServiceName, node: &Node) {
        *self.per_node.entry(node.id).or_default() += 1;
        *self
            .per_service_node
            .entry((service.clone(), node.id))
            .or_default() += 1;
        *self
            .per_service_site
            .entry((service.clone(), node.site.clone()))
            .or_default() += 1;
    }

    fn rank(&self, service: &ServiceName, node: &Node) -> (usize, usize, usize, NodeId) {
        let site = self
            .per_service_site
            .get(&(service.clone(), node.site.clone()))
            .copied();
        let on_node = self
            .per_service_node
            .get(&(service.clone(), node.id))
            .copied();
        let total = self.per_node.get(&node.id).copied();
        (
            site.unwrap_or(0),
            on_node.unwrap_or(0),
            total.unwrap_or(0),
            node.id,
        )
    }
}

fn new_replica(id: ReplicaId, service: &Service, node: NodeId) -> Replica {
    Replica {
        id,
        node,
        service_version: service.version,
        workload_hash: service.spec.workload_hash(),
        desired: DesiredState::Running,
    }
}

/// The replica ids a service should have, given the placeable nodes (for global services).
fn wanted_ids(service: &Service, nodes: &BTreeMap<NodeId, Node>) -> Vec<ReplicaId> {
    let name = &service.spec.name;
    match service.spec.mode {
        ServiceMode::Replicated { replicas } => (1..=replicas)
            .map(|slot| ReplicaId::replicated(name.clone(), slot))
            .collect(),
        ServiceMode::Global => nodes
            .values()
            .filter(|node| placeable(service, node))
            .map(|node| ReplicaId::global(name.clone(), node.id))
            .collect(),
    }
}

/// What the scheduler places replicas on: the node registry and which node holds each local
/// volume.
#[derive(Clone, Copy, Debug)]
pub struct Fleet<'a> {
    /// Every node (removed ones as tombstones).
    pub nodes: &'a BTreeMap<NodeId, Node>,
    /// The node holding each local volume's data.
    pub volume_nodes: &'a BTreeMap<String, NodeId>,
}

/// Computes the placements. Deterministic: the same inputs give the same plan.
pub fn schedule(
    fleet: Fleet<'_>,
    services: &[&Service],
    current: &BTreeMap<ReplicaId, Replica>,
    now_ms: u64,
) -> Plan {
    schedule_with_load(fleet, services, current, now_ms, Load::default())
}

/// Places one service's replicas when nothing but that service changed (create, update,
/// scale, rollback): every other service's replicas stay as they are and count as load, so
/// the cost is one service's, not the whole cluster's. Returns the plan for that service only.
pub fn schedule_one(
    fleet: Fleet<'_>,
    service: &Service,
    current: &BTreeMap<ReplicaId, Replica>,
    now_ms: u64,
) -> Plan {
    let mut load = Load::default();
    for replica in current
        .values()
        .filter(|r| r.id.service != service.spec.name)
    {
        if let Some(node) = fleet.nodes.get(&replica.node) {
            load.add(&replica.id.service, node);
        }
    }
    let own: BTreeMap<ReplicaId, Replica> = current
        .iter()
        .filter(|(id, _)| id.service == service.spec.name)
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect();
    schedule_with_load(fleet, &[service], &own, now_ms, load)
}

fn schedule_with_load(
    fleet: Fleet<'_>,
    services: &[&Service],
    current: &BTreeMap<ReplicaId, Replica>,
    now_ms: u64,
    mut load: Load,
) -> Plan {
    let nodes = fleet.nodes;
    let mut services: Vec<&Service> = services.to_vec();
    services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let mut plan = Plan {
        volume_nodes: fleet.volume_nodes.clone(),
        ..Plan::default()
    };

    // Pass 1: keep every replica that may stay, across all services, so the load seen by
    // pass 2 includes them.
    let mut missing: Vec<(&Service, ReplicaId)> = Vec::new();
    for service in &services {
        let mut wanted = wanted_ids(service, nodes);
        if service.spec.mode == ServiceMode::Global {
            // A global replica on a node that is no longer placeable but still keepable
            // (unreachable under `keep`) stays.
            let kept_elsewhere = current.values().filter(|r| {
                r.id.service == service.spec.name
                    && matches!(r.id.key, ReplicaKey::Node(n) if n == r.node)
                    && !wanted.contains(&r.id)
                    && nodes
                        .get(&r.node)
                        .is_some_and(|n| keepable(service, n, now_ms))
            });
            wanted.extend(kept_elsewhere.map(|r| r.id.clone()).collect::<Vec<_>>());
        }
        for id in wanted {
            let pin = Pin::of(&service.spec, &plan.volume_nodes);
            let kept = current.get(&id).and_then(|replica| {
                let node = nodes.get(&replica.node)?;
                (keepable(service, node, now_ms) && pin.allows(node.id)).then_some((replica, node))
            });
            match kept {
                Some((replica, node)) => {
                    load.add(&service.spec.name, node);
                    hold_volumes(service, node.id, &mut plan.volume_nodes);
                    plan.replicas.insert(id, replica.clone());
                }
                None => missing.push((service, id)),
            }
        }
    }

    // Pass 2: place what is missing on the best placeable node.
    for (service, id) in missing {
        let pin = Pin::of(&service.spec, &plan.volume_nodes);
        let target = match id.key {
            ReplicaKey::Node(node_id) => nodes.get(&node_id).filter(|n| placeable(service, n)),
            ReplicaKey::Slot(_) => nodes
                .values()
                .filter(|node| placeable(service, node) && pin.allows(node.id))
                .min_by_key(|node| load.rank(&service.spec.name, node)),
        };
        match target {
            Some(node) => {
                load.add(&service.spec.name, node);
                hold_volumes(service, node.id, &mut plan.volume_nodes);
                plan.replicas
                    .insert(id.clone(), new_replica(id, service, node.id));
            }
            None => {
                *plan
                    .unschedulable
                    .entry(service.spec.name.clone())
                    .or_default() += 1
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests;
