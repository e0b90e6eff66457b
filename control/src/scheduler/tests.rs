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
            if id.is_multiple_of(2) { "a" } else { "b" }.to_owned(),
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
    let fleet = Fleet {
        nodes,
        volume_nodes: &BTreeMap::new(),
    };
    schedule(fleet, &refs, current, now)
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
        let fleet = Fleet { nodes: &nodes, volume_nodes: &BTreeMap::new() };
        let one = schedule_one(fleet, &added, &settled.replicas, 0);
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

// ---------------------------------------------------------------------------------------------
// Local volumes pin replicas to the node that holds them
// ---------------------------------------------------------------------------------------------

fn with_volume(mut service: Service, volume: &str) -> Service {
    service.spec.volumes.push(warren_api::VolumeMount {
        volume: volume.to_owned(),
        target: volume.to_owned(),
        read_only: false,
    });
    service
}

fn replicated(name: &str, replicas: u32) -> Service {
    service(
        name,
        ServiceMode::Replicated { replicas },
        Placement::default(),
        OnDisconnect::Reschedule { after_ms: 1_000 },
    )
}

fn run_pinned(
    nodes: &BTreeMap<NodeId, Node>,
    services: &[Service],
    current: &BTreeMap<ReplicaId, Replica>,
    volume_nodes: &BTreeMap<String, NodeId>,
    now: u64,
) -> Plan {
    let refs: Vec<&Service> = services.iter().collect();
    schedule(
        Fleet {
            nodes,
            volume_nodes,
        },
        &refs,
        current,
        now,
    )
}

/// Replicas of a service with a local volume all go to one node, which the plan records as
/// the volume's holder; a second service mounting the same volume follows them there.
#[test]
fn a_volume_gathers_its_replicas_on_the_node_placed_first() {
    let nodes = ready_nodes(4);
    let services = [
        with_volume(replicated("db", 3), "data"),
        with_volume(replicated("backup", 1), "data"),
    ];
    let plan = run_pinned(&nodes, &services, &BTreeMap::new(), &BTreeMap::new(), 0);
    assert_eq!(plan.replicas.len(), 4);
    let holder = plan.volume_nodes["data"];
    assert!(plan.replicas.values().all(|r| r.node == holder), "{plan:?}");
}

/// While the holder is down, a pinned replica is not moved: it waits, unschedulable, and
/// returns to the holder when it is back; the binding never changes.
#[test]
fn a_pinned_replica_waits_for_its_node_instead_of_moving() {
    let mut nodes = ready_nodes(3);
    let services = [with_volume(replicated("db", 1), "data")];
    let held = BTreeMap::from([("data".to_owned(), NodeId(2))]);
    let plan = run_pinned(&nodes, &services, &BTreeMap::new(), &held, 0);
    assert_eq!(
        plan.replicas.values().next().map(|r| r.node),
        Some(NodeId(2))
    );

    nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Unreachable { since_ms: 0 };
    let later = run_pinned(&nodes, &services, &plan.replicas, &held, 5_000);
    assert!(later.replicas.is_empty(), "not moved elsewhere: {later:?}");
    assert_eq!(later.unschedulable[&ServiceName::new("db").unwrap()], 1);
    assert_eq!(later.volume_nodes, held);

    nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Ready;
    let back = run_pinned(&nodes, &services, &later.replicas, &held, 6_000);
    assert_eq!(
        back.replicas.values().next().map(|r| r.node),
        Some(NodeId(2))
    );
    assert!(back.unschedulable.is_empty());
}

/// A replica already placed away from its volume's holder (placed before volumes were
/// pinned) is moved to the holder.
#[test]
fn a_replica_off_its_volumes_node_is_moved_there() {
    let nodes = ready_nodes(3);
    let db = with_volume(replicated("db", 1), "data");
    let free = run(&nodes, &[replicated("db", 1)], &BTreeMap::new(), 0);
    let on = free.replicas.values().next().unwrap().node;
    let holder = if on == NodeId(1) {
        NodeId(3)
    } else {
        NodeId(1)
    };
    let held = BTreeMap::from([("data".to_owned(), holder)]);
    let plan = run_pinned(&nodes, &[db], &free.replicas, &held, 0);
    assert_eq!(plan.replicas.values().next().map(|r| r.node), Some(holder));
}

/// Two volumes held by different nodes leave a service nowhere to go; a global service is not
/// pinned at all (each replica uses its own node's directory).
#[test]
fn split_volumes_are_unschedulable_and_global_services_are_free() {
    let nodes = ready_nodes(3);
    let split = with_volume(with_volume(replicated("db", 1), "a"), "b");
    let held = BTreeMap::from([("a".to_owned(), NodeId(1)), ("b".to_owned(), NodeId(2))]);
    assert!(matches!(Pin::of(&split.spec, &held), Pin::Split { .. }));
    let plan = run_pinned(&nodes, &[split], &BTreeMap::new(), &held, 0);
    assert!(plan.replicas.is_empty());

    let global = with_volume(
        service(
            "agent",
            ServiceMode::Global,
            Placement::default(),
            OnDisconnect::Keep,
        ),
        "a",
    );
    let plan = run_pinned(&nodes, &[global], &BTreeMap::new(), &held, 0);
    assert_eq!(plan.replicas.len(), 3);
}

/// `services` with volume `a` or `b` mounted where `volumes` says (by index; none past it).
fn with_volumes(services: Vec<Service>, volumes: &[Option<bool>]) -> Vec<Service> {
    services
        .into_iter()
        .enumerate()
        .map(|(i, s)| match volumes.get(i).copied().flatten() {
            Some(first) => with_volume(s, if first { "a" } else { "b" }),
            None => s,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every placed replica of a replicated service that mounts a volume is on the node the
    /// plan says holds it, and a settled plan stays as it is, bindings included.
    #[test]
    fn replicas_of_a_volume_share_its_node_and_settle(
        nodes in arb_nodes(),
        services in arb_services(),
        volumes in proptest::collection::vec(proptest::option::of(any::<bool>()), 4),
        now in 0u64..5_000,
    ) {
        let services = with_volumes(services, &volumes);
        let plan = run_pinned(&nodes, &services, &BTreeMap::new(), &BTreeMap::new(), now);
        for replica in plan.replicas.values() {
            let service = services.iter().find(|s| s.spec.name == replica.id.service).unwrap();
            if service.spec.mode == ServiceMode::Global {
                continue;
            }
            for mount in &service.spec.volumes {
                prop_assert_eq!(plan.volume_nodes.get(&mount.volume), Some(&replica.node));
            }
        }
        let settled = run_pinned(&nodes, &services, &plan.replicas, &plan.volume_nodes, now);
        prop_assert_eq!(&settled.replicas, &plan.replicas);
        prop_assert_eq!(&settled.volume_nodes, &plan.volume_nodes);
    }
}

/// Images go to containerd nodes, commands to process nodes, either to a node that registered
/// no runtime; a replica on a node of the wrong kind is moved off it.
#[test]
fn workloads_go_to_nodes_whose_runtime_runs_them() {
    let mut nodes = ready_nodes(3);
    let runtime = |nodes: &mut BTreeMap<NodeId, Node>, id: u64, value: &str| {
        nodes
            .get_mut(&NodeId(id))
            .unwrap()
            .labels
            .insert(warren_api::RUNTIME_LABEL.to_owned(), value.to_owned());
    };
    runtime(&mut nodes, 1, warren_api::RUNTIME_PROCESS);
    runtime(&mut nodes, 2, warren_api::RUNTIME_CONTAINERD);
    let global = |name: &str, image: bool| {
        let mut service = service(
            name,
            ServiceMode::Global,
            Placement::default(),
            OnDisconnect::Keep,
        );
        if image {
            service.spec.workload = Workload::Image(warren_api::ImageSpec {
                reference: "busybox".into(),
                args: Vec::new(),
            });
        }
        service
    };
    let plan = run(
        &nodes,
        &[global("cmd", false), global("img", true)],
        &BTreeMap::new(),
        0,
    );
    let on = |service: &str| -> BTreeSet<u64> {
        plan.replicas
            .values()
            .filter(|r| r.id.service.as_str() == service)
            .map(|r| r.node.0)
            .collect()
    };
    assert_eq!(on("cmd"), BTreeSet::from([1, 3]));
    assert_eq!(on("img"), BTreeSet::from([2, 3]));

    // A replicated image replica sitting on a process node is not kept there.
    let image = {
        let mut s = global("img", true);
        s.spec.mode = ServiceMode::Replicated { replicas: 1 };
        s
    };
    let misplaced = Replica {
        id: ReplicaId::replicated(image.spec.name.clone(), 1),
        node: NodeId(1),
        service_version: 1,
        workload_hash: image.spec.workload_hash(),
        desired: DesiredState::Running,
    };
    let current = BTreeMap::from([(misplaced.id.clone(), misplaced)]);
    let plan = run(&nodes, &[image], &current, 0);
    let moved: Vec<u64> = plan.replicas.values().map(|r| r.node.0).collect();
    assert!(moved == [2] || moved == [3], "{moved:?}");
}
