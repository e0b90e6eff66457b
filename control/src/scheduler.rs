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

use std::collections::BTreeMap;

use warren_api::{
    Availability, DesiredState, Node, NodeId, NodeRole, NodeState, OnDisconnect, Replica,
    ReplicaId, ReplicaKey, Service, ServiceMode, ServiceName,
};

/// The scheduler's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every replica that should exist, with its node.
    pub replicas: BTreeMap<ReplicaId, Replica>,
    /// Replicas that could not be placed (no eligible node), by service.
    pub unschedulable: BTreeMap<ServiceName, u32>,
}

/// Whether new replicas of `service` may be placed on `node`: an active, ready agent that
/// matches the placement. Control nodes run no workloads.
fn placeable(service: &Service, node: &Node) -> bool {
    node.role == NodeRole::Agent
        && node.is_schedulable()
        && service.spec.placement.allows_node(node)
}

/// Whether an existing replica of `service` may stay on `node` at `now_ms`.
pub fn keepable(service: &Service, node: &Node, now_ms: u64) -> bool {
    if node.role != NodeRole::Agent
        || node.availability != Availability::Active
        || !service.spec.placement.allows_node(node)
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

/// Computes the placements. Deterministic: the same inputs give the same plan.
pub fn schedule(
    nodes: &BTreeMap<NodeId, Node>,
    services: &[&Service],
    current: &BTreeMap<ReplicaId, Replica>,
    now_ms: u64,
) -> Plan {
    schedule_with_load(nodes, services, current, now_ms, Load::default())
}

/// Places one service's replicas when nothing but that service changed (create, update,
/// scale, rollback): every other service's replicas stay as they are and count as load, so
/// the cost is one service's, not the whole cluster's. Returns the plan for that service only.
pub fn schedule_one(
    nodes: &BTreeMap<NodeId, Node>,
    service: &Service,
    current: &BTreeMap<ReplicaId, Replica>,
    now_ms: u64,
) -> Plan {
    let mut load = Load::default();
    for replica in current
        .values()
        .filter(|r| r.id.service != service.spec.name)
    {
        if let Some(node) = nodes.get(&replica.node) {
            load.add(&replica.id.service, node);
        }
    }
    let own: BTreeMap<ReplicaId, Replica> = current
        .iter()
        .filter(|(id, _)| id.service == service.spec.name)
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect();
    schedule_with_load(nodes, &[service], &own, now_ms, load)
}

fn schedule_with_load(
    nodes: &BTreeMap<NodeId, Node>,
    services: &[&Service],
    current: &BTreeMap<ReplicaId, Replica>,
    now_ms: u64,
    mut load: Load,
) -> Plan {
    let mut services: Vec<&Service> = services.to_vec();
    services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let mut plan = Plan::default();

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
            let kept = current.get(&id).and_then(|replica| {
                let node = nodes.get(&replica.node)?;
                keepable(service, node, now_ms).then_some((replica, node))
            });
            match kept {
                Some((replica, node)) => {
                    load.add(&service.spec.name, node);
                    plan.replicas.insert(id, replica.clone());
                }
                None => missing.push((service, id)),
            }
        }
    }

    // Pass 2: place what is missing on the best placeable node.
    for (service, id) in missing {
        let target = match id.key {
            ReplicaKey::Node(node_id) => nodes.get(&node_id).filter(|n| placeable(service, n)),
            ReplicaKey::Slot(_) => nodes
                .values()
                .filter(|node| placeable(service, node))
                .min_by_key(|node| load.rank(&service.spec.name, node)),
        };
        match target {
            Some(node) => {
                load.add(&service.spec.name, node);
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
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use warren_api::{
        Constraint, NodeAddresses, NodeRole, Placement, ProcessSpec, ServiceSpec, Workload,
    };

    use super::*;

    const SITES: [&str; 3] = ["lisbon", "porto", "faro"];

    fn node(id: u64, site: &str, availability: Availability, state: NodeState) -> Node {
        Node {
            id: NodeId(id),
            name: format!("n{id}"),
            role: NodeRole::Agent,
            site: site.to_owned(),
            labels: BTreeMap::from([(
                "tier".to_owned(),
                if id % 2 == 0 { "a" } else { "b" }.to_owned(),
            )]),
            availability,
            state,
            cert_serial: None,
            addresses: NodeAddresses::default(),
            joined_at_ms: 0,
        }
    }

    fn service(
        name: &str,
        mode: ServiceMode,
        placement: Placement,
        on_disconnect: OnDisconnect,
    ) -> Service {
        let workload = Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None,
        });
        let mut spec = ServiceSpec::new(ServiceName::new(name).unwrap(), workload);
        spec.mode = mode;
        spec.placement = placement;
        spec.on_disconnect = on_disconnect;
        Service { version: 1, spec }
    }

    fn ready_nodes(n: u64) -> BTreeMap<NodeId, Node> {
        (1..=n)
            .map(|i| {
                (
                    NodeId(i),
                    node(
                        i,
                        SITES[(i as usize) % 3],
                        Availability::Active,
                        NodeState::Ready,
                    ),
                )
            })
            .collect()
    }

    fn run(
        nodes: &BTreeMap<NodeId, Node>,
        services: &[Service],
        current: &BTreeMap<ReplicaId, Replica>,
        now: u64,
    ) -> Plan {
        let refs: Vec<&Service> = services.iter().collect();
        schedule(nodes, &refs, current, now)
    }

    fn count_by_site(plan: &Plan, nodes: &BTreeMap<NodeId, Node>) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for replica in plan.replicas.values() {
            *out.entry(nodes[&replica.node].site.clone()).or_default() += 1;
        }
        out
    }

    #[test]
    fn replicas_spread_across_sites_then_nodes() {
        let nodes = ready_nodes(6);
        let web = service(
            "web",
            ServiceMode::Replicated { replicas: 6 },
            Placement::default(),
            OnDisconnect::Keep,
        );
        let plan = run(&nodes, &[web], &BTreeMap::new(), 0);
        assert_eq!(plan.replicas.len(), 6);
        assert!(count_by_site(&plan, &nodes).values().all(|&c| c == 2));
        let on_nodes: BTreeSet<NodeId> = plan.replicas.values().map(|r| r.node).collect();
        assert_eq!(on_nodes.len(), 6, "one per node when there is room");
    }

    #[test]
    fn unreachable_node_keeps_its_replicas_unless_the_service_says_reschedule() {
        let mut nodes = ready_nodes(3);
        let keep = service(
            "keep",
            ServiceMode::Replicated { replicas: 3 },
            Placement::default(),
            OnDisconnect::Keep,
        );
        let moving = service(
            "moving",
            ServiceMode::Replicated { replicas: 3 },
            Placement::default(),
            OnDisconnect::Reschedule { after_ms: 60_000 },
        );
        let services = [keep, moving];
        let before = run(&nodes, &services, &BTreeMap::new(), 0);
        nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Unreachable { since_ms: 1_000 };
        // Within the reschedule delay nothing moves.
        let during = run(&nodes, &services, &before.replicas, 30_000);
        assert_eq!(during.replicas, before.replicas);
        // After it, only the `reschedule` service's replica on node 1 moves.
        let after = run(&nodes, &services, &before.replicas, 61_000);
        for (id, replica) in &after.replicas {
            let was = &before.replicas[id];
            if id.service.as_str() == "moving" && was.node == NodeId(1) {
                assert_ne!(replica.node, NodeId(1));
            } else {
                assert_eq!(replica, was, "{id} moved");
            }
        }
    }

    #[test]
    fn drain_moves_replicas_and_removed_nodes_get_none() {
        let mut nodes = ready_nodes(4);
        let web = service(
            "web",
            ServiceMode::Replicated { replicas: 4 },
            Placement::default(),
            OnDisconnect::Keep,
        );
        let services = [web];
        let before = run(&nodes, &services, &BTreeMap::new(), 0);
        nodes.get_mut(&NodeId(2)).unwrap().availability = Availability::Drain;
        nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Removed;
        let after = run(&nodes, &services, &before.replicas, 0);
        assert_eq!(after.replicas.len(), 4);
        assert!(
            after
                .replicas
                .values()
                .all(|r| r.node != NodeId(2) && r.node != NodeId(3))
        );
        // Replicas on untouched nodes stayed put.
        for (id, replica) in &before.replicas {
            if replica.node == NodeId(1) || replica.node == NodeId(4) {
                assert_eq!(&after.replicas[id], replica);
            }
        }
    }

    #[test]
    fn global_service_runs_once_per_eligible_node_and_honours_constraints() {
        let nodes = ready_nodes(6);
        let placement = Placement {
            sites: vec![],
            constraints: vec![Constraint::parse("label.tier==a").unwrap()],
        };
        let agent = service("agent", ServiceMode::Global, placement, OnDisconnect::Keep);
        let plan = run(&nodes, &[agent], &BTreeMap::new(), 0);
        let on: Vec<u64> = plan.replicas.values().map(|r| r.node.0).collect();
        assert_eq!(on, vec![2, 4, 6]);
    }

    #[test]
    fn no_eligible_node_is_reported_as_unschedulable() {
        let nodes = ready_nodes(3);
        let placement = Placement {
            sites: vec!["madrid".into()],
            constraints: vec![],
        };
        let web = service(
            "web",
            ServiceMode::Replicated { replicas: 2 },
            placement,
            OnDisconnect::Keep,
        );
        let plan = run(&nodes, &[web], &BTreeMap::new(), 0);
        assert!(plan.replicas.is_empty());
        assert_eq!(plan.unschedulable.get("web"), Some(&2));
    }

    fn arb_nodes() -> impl Strategy<Value = BTreeMap<NodeId, Node>> {
        proptest::collection::vec((0usize..3, any::<bool>(), 0u8..4), 1..12).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (site, drained, state))| {
                    let id = i as u64 + 1;
                    let availability = if drained {
                        Availability::Drain
                    } else {
                        Availability::Active
                    };
                    let state = match state {
                        0 | 1 => NodeState::Ready,
                        2 => NodeState::Unreachable { since_ms: 500 },
                        _ => NodeState::Removed,
                    };
                    (NodeId(id), node(id, SITES[site], availability, state))
                })
                .collect()
        })
    }

    fn arb_services() -> impl Strategy<Value = Vec<Service>> {
        proptest::collection::vec(
            (
                0u32..8,
                any::<bool>(),
                proptest::option::of(0usize..3),
                any::<bool>(),
            ),
            1..4,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (replicas, global, site, reschedule))| {
                    let mode = if global {
                        ServiceMode::Global
                    } else {
                        ServiceMode::Replicated { replicas }
                    };
                    let placement = Placement {
                        sites: site.map(|s| vec![SITES[s].to_owned()]).unwrap_or_default(),
                        constraints: vec![],
                    };
                    let policy = if reschedule {
                        OnDisconnect::Reschedule { after_ms: 1_000 }
                    } else {
                        OnDisconnect::Keep
                    };
                    service(&format!("svc{i}"), mode, placement, policy)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn same_inputs_give_the_same_plan(nodes in arb_nodes(), services in arb_services(), now in 0u64..5_000) {
            let first = run(&nodes, &services, &BTreeMap::new(), now);
            let again = run(&nodes, &services, &BTreeMap::new(), now);
            prop_assert_eq!(&first, &again);
            // Rescheduling a settled plan changes nothing.
            let settled = run(&nodes, &services, &first.replicas, now);
            prop_assert_eq!(settled.replicas, first.replicas);
        }

        #[test]
        fn replica_count_is_honoured_and_no_new_replica_lands_on_an_ineligible_node(
            nodes in arb_nodes(), services in arb_services(), now in 0u64..5_000,
        ) {
            let plan = run(&nodes, &services, &BTreeMap::new(), now);
            for service in &services {
                let placeable = nodes.values().filter(|n| placeable(service, n)).count();
                let placed = plan.replicas.values().filter(|r| r.id.service == service.spec.name).count();
                let unschedulable = plan.unschedulable.get(&service.spec.name).copied().unwrap_or(0) as usize;
                match service.spec.mode {
                    ServiceMode::Replicated { replicas } => {
                        prop_assert_eq!(placed + unschedulable, replicas as usize);
                        if placeable > 0 { prop_assert_eq!(unschedulable, 0); }
                    }
                    ServiceMode::Global => prop_assert_eq!(placed, placeable),
                }
            }
            for replica in plan.replicas.values() {
                let service = services.iter().find(|s| s.spec.name == replica.id.service).unwrap();
                prop_assert!(placeable(service, &nodes[&replica.node]), "{} on ineligible {}", replica.id, replica.node);
            }
        }

        #[test]
        fn replicated_services_spread_evenly_over_sites_with_room(replicas in 0u32..30, n_nodes in 3u64..10) {
            let nodes = ready_nodes(n_nodes);
            let web = service("web", ServiceMode::Replicated { replicas }, Placement::default(), OnDisconnect::Keep);
            let plan = run(&nodes, &[web], &BTreeMap::new(), 0);
            let by_site = count_by_site(&plan, &nodes);
            let max = by_site.values().copied().max().unwrap_or(0);
            let min = SITES.iter().map(|s| by_site.get(*s).copied().unwrap_or(0)).min().unwrap_or(0);
            prop_assert!(max - min <= 1, "uneven spread {by_site:?}");
        }

        #[test]
        fn placing_one_service_leaves_a_plan_the_full_scheduler_keeps(
            nodes in arb_nodes(), services in arb_services(), extra in 1u32..8,
        ) {
            let settled = run(&nodes, &services, &BTreeMap::new(), 0);
            let added = service("zz-new", ServiceMode::Replicated { replicas: extra }, Placement::default(), OnDisconnect::Keep);
            let one = schedule_one(&nodes, &added, &settled.replicas, 0);
            let mut replicas = settled.replicas.clone();
            replicas.extend(one.replicas.clone());
            let mut all = services.clone();
            all.push(added.clone());
            let full = run(&nodes, &all, &replicas, 0);
            prop_assert_eq!(&full.replicas, &replicas, "the full scheduler keeps what schedule_one placed");
            let placeable = nodes.values().filter(|n| placeable(&added, n)).count();
            if placeable > 0 { prop_assert_eq!(one.replicas.len(), extra as usize); }
        }

        #[test]
        fn kept_replicas_never_move_when_nothing_changes_but_time(
            nodes in arb_nodes(), services in arb_services(),
        ) {
            let keep_only: Vec<Service> = services.into_iter().map(|mut s| { s.spec.on_disconnect = OnDisconnect::Keep; s }).collect();
            let plan = run(&nodes, &keep_only, &BTreeMap::new(), 0);
            let later = run(&nodes, &keep_only, &plan.replicas, 10_000_000);
            for (id, replica) in &plan.replicas {
                prop_assert_eq!(later.replicas.get(id), Some(replica));
            }
        }
    }
}
