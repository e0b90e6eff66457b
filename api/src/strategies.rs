//! Proptest strategies for every type in the crate, written by hand.
//!
//! Free-text fields get arbitrary printable text; fields with a type-level invariant (service
//! names, constraint keys) get values that satisfy it, since nothing else can be built.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

use crate::event::{Event, EventKind};
use crate::ids::{NodeId, ReplicaId, ReplicaKey, Revision, ServiceName};
use crate::node::{Availability, Node, NodeAddresses, NodeRole, NodeState};
use crate::overlay::{OverlayRange, OwnMesh};
use crate::placement::{Constraint, ConstraintKey, ConstraintOp, Placement};
use crate::replica::{DesiredState, HealthState, Replica, ReplicaStatus, TaskState};
use crate::scrape::{NodeTarget, ScrapeTargets, WorkloadTarget};
use crate::secret::{SealedBlob, Secret};
use crate::service::{
    FailureAction, FailureRatio, HealthCheck, ImageSpec, MetricsEndpoint, OnDisconnect, PortSpec,
    Probe, ProcessSpec, Protocol, Resources, RestartCondition, RestartPolicy, SecretRef, Service,
    ServiceMode, ServiceSpec, UpdateConfig, VolumeMount, Workload,
};
use crate::volume::{Volume, VolumeDriver};
use crate::wire::{
    AgentHello, AgentToControl, ControlToAgent, Listener, ListenerStatus, MeshDeclaration,
    MeshPeerReport, NodeView, PeerInfo, Refusal, RefusalReason, ServiceEndpoint, StatusReport,
    ViewChange, ViewDelta,
};

pub fn text() -> BoxedStrategy<String> {
    "\\PC{0,12}".boxed()
}

pub fn dns_label() -> BoxedStrategy<String> {
    "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?".boxed()
}

fn label_key() -> BoxedStrategy<String> {
    "[a-zA-Z0-9]([a-z0-9._/-]{0,6}[a-z0-9])?".boxed()
}

pub fn labels() -> BoxedStrategy<BTreeMap<String, String>> {
    btree_map(label_key(), text(), 0..3).boxed()
}

fn strings() -> BoxedStrategy<Vec<String>> {
    vec(text(), 0..3).boxed()
}

pub fn node_id() -> BoxedStrategy<NodeId> {
    any::<u64>().prop_map(NodeId).boxed()
}

pub fn revision() -> BoxedStrategy<Revision> {
    any::<u64>().prop_map(Revision).boxed()
}

pub fn service_name() -> BoxedStrategy<ServiceName> {
    dns_label()
        .prop_map(|s| ServiceName::new(s).expect("strategy yields DNS labels"))
        .boxed()
}

pub fn replica_key() -> BoxedStrategy<ReplicaKey> {
    prop_oneof![
        any::<u32>().prop_map(ReplicaKey::Slot),
        node_id().prop_map(ReplicaKey::Node),
    ]
    .boxed()
}

pub fn replica_id() -> BoxedStrategy<ReplicaId> {
    (service_name(), replica_key())
        .prop_map(|(service, key)| ReplicaId { service, key })
        .boxed()
}

pub fn node_role() -> BoxedStrategy<NodeRole> {
    prop_oneof![Just(NodeRole::Agent), Just(NodeRole::Control)].boxed()
}

pub fn node_state() -> BoxedStrategy<NodeState> {
    prop_oneof![
        Just(NodeState::Ready),
        any::<u64>().prop_map(|since_ms| NodeState::Unreachable { since_ms }),
        Just(NodeState::Down),
        Just(NodeState::Removed),
    ]
    .boxed()
}

pub fn node_addresses() -> BoxedStrategy<NodeAddresses> {
    let addr = || option::of(text());
    (addr(), addr(), addr(), addr(), addr())
        .prop_map(|(quic, api, gossip, metrics, dns)| NodeAddresses {
            quic,
            api,
            gossip,
            metrics,
            dns,
        })
        .boxed()
}

/// A node with the given id strategy, so views can pin their node id.
pub fn node_with_id(id: BoxedStrategy<NodeId>) -> BoxedStrategy<Node> {
    let availability = prop_oneof![Just(Availability::Active), Just(Availability::Drain)];
    (
        id,
        dns_label(),
        node_role(),
        dns_label(),
        labels(),
        availability,
        node_state(),
        option::of(text()),
        node_addresses(),
        any::<u64>(),
    )
        .prop_map(
            |(
                id,
                name,
                role,
                site,
                labels,
                availability,
                state,
                cert_serial,
                addresses,
                joined,
            )| {
                Node {
                    id,
                    name,
                    role,
                    site,
                    labels,
                    availability,
                    state,
                    cert_serial,
                    addresses,
                    joined_at_ms: joined,
                }
            },
        )
        .boxed()
}

pub fn node() -> BoxedStrategy<Node> {
    node_with_id(node_id())
}

pub fn workload() -> BoxedStrategy<Workload> {
    prop_oneof![
        (strings(), option::of(text())).prop_map(|(command, working_dir)| {
            Workload::Process(ProcessSpec {
                command,
                working_dir,
            })
        }),
        (text(), strings())
            .prop_map(|(reference, args)| Workload::Image(ImageSpec { reference, args })),
    ]
    .boxed()
}

pub fn service_mode() -> BoxedStrategy<ServiceMode> {
    prop_oneof![
        any::<u32>().prop_map(|replicas| ServiceMode::Replicated { replicas }),
        Just(ServiceMode::Global),
    ]
    .boxed()
}

pub fn constraint() -> BoxedStrategy<Constraint> {
    let key = prop_oneof![
        Just(ConstraintKey::Site),
        Just(ConstraintKey::NodeName),
        label_key().prop_map(ConstraintKey::Label),
    ];
    let op = prop_oneof![Just(ConstraintOp::Eq), Just(ConstraintOp::NotEq)];
    (key, op, text())
        .prop_map(|(key, op, value)| Constraint { key, op, value })
        .boxed()
}

pub fn placement() -> BoxedStrategy<Placement> {
    (vec(text(), 0..3), vec(constraint(), 0..3))
        .prop_map(|(sites, constraints)| Placement { sites, constraints })
        .boxed()
}

pub fn port_spec() -> BoxedStrategy<PortSpec> {
    let protocol = prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)];
    (option::of(text()), any::<u16>(), protocol)
        .prop_map(|(name, port, protocol)| PortSpec {
            name,
            port,
            protocol,
        })
        .boxed()
}

pub fn health_check() -> BoxedStrategy<HealthCheck> {
    let probe = prop_oneof![
        text().prop_map(|url| Probe::Http { url }),
        any::<u16>().prop_map(|port| Probe::Tcp { port }),
        strings().prop_map(|command| Probe::Exec { command }),
    ];
    (
        probe,
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(probe, interval_ms, timeout_ms, retries, start_period_ms)| HealthCheck {
                probe,
                interval_ms,
                timeout_ms,
                retries,
                start_period_ms,
            },
        )
        .boxed()
}

pub fn restart_policy() -> BoxedStrategy<RestartPolicy> {
    let condition = prop_oneof![
        Just(RestartCondition::Always),
        Just(RestartCondition::OnFailure),
        Just(RestartCondition::Never),
    ];
    (
        condition,
        any::<u64>(),
        any::<u64>(),
        option::of(any::<u32>()),
    )
        .prop_map(
            |(condition, backoff_initial_ms, backoff_max_ms, max_attempts)| RestartPolicy {
                condition,
                backoff_initial_ms,
                backoff_max_ms,
                max_attempts,
            },
        )
        .boxed()
}

pub fn on_disconnect() -> BoxedStrategy<OnDisconnect> {
    prop_oneof![
        Just(OnDisconnect::Keep),
        any::<u64>().prop_map(|after_ms| OnDisconnect::Reschedule { after_ms }),
    ]
    .boxed()
}

pub fn secret_ref() -> BoxedStrategy<SecretRef> {
    (text(), text())
        .prop_map(|(name, target)| SecretRef { name, target })
        .boxed()
}

pub fn volume_mount() -> BoxedStrategy<VolumeMount> {
    (text(), text(), any::<bool>())
        .prop_map(|(volume, target, read_only)| VolumeMount {
            volume,
            target,
            read_only,
        })
        .boxed()
}

pub fn resources() -> BoxedStrategy<Resources> {
    (option::of(any::<u64>()), option::of(any::<u32>()))
        .prop_map(|(memory_bytes, cpu_millis)| Resources {
            memory_bytes,
            cpu_millis,
        })
        .boxed()
}

pub fn update_config() -> BoxedStrategy<UpdateConfig> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![
            Just(FailureAction::Pause),
            Just(FailureAction::Rollback),
            Just(FailureAction::Continue)
        ],
        0..=FailureRatio::MAX_PER_MILLE,
    )
        .prop_map(
            |(parallelism, delay_ms, monitor_ms, failure_action, per_mille)| UpdateConfig {
                parallelism,
                delay_ms,
                monitor_ms,
                failure_action,
                max_failure_ratio: FailureRatio::from_per_mille(per_mille)
                    .expect("the range ends at the maximum"),
            },
        )
        .boxed()
}

/// A spec named by `name`, so views can use a small pool of names.
pub fn service_spec_named(name: BoxedStrategy<ServiceName>) -> BoxedStrategy<ServiceSpec> {
    let first = (
        name,
        workload(),
        service_mode(),
        placement(),
        btree_map(text(), text(), 0..3),
        vec(port_spec(), 0..3),
        option::of(health_check()),
        restart_policy(),
    );
    let second = (
        on_disconnect(),
        vec(secret_ref(), 0..2),
        vec(volume_mount(), 0..2),
        resources(),
        update_config(),
        any::<u64>(),
        labels(),
    );
    let third = (
        option::of(text()),
        option::of(text()),
        vec(text(), 0..2),
        option::of(metrics_endpoint()),
    );
    (first, second, third)
        .prop_map(
            |(
                (name, workload, mode, placement, env, ports, health, restart),
                (on_disconnect, secrets, volumes, resources, update, stop_grace, labels),
                (user, group, cap_add, metrics),
            )| ServiceSpec {
                name,
                workload,
                mode,
                placement,
                env,
                ports,
                health,
                restart,
                on_disconnect,
                secrets,
                volumes,
                resources,
                user,
                group,
                cap_add,
                update,
                stop_grace_period_ms: stop_grace,
                labels,
                metrics,
            },
        )
        .boxed()
}

pub fn service_spec() -> BoxedStrategy<ServiceSpec> {
    service_spec_named(service_name())
}

pub fn service_named(name: BoxedStrategy<ServiceName>) -> BoxedStrategy<Service> {
    (any::<u64>(), service_spec_named(name))
        .prop_map(|(version, spec)| Service { version, spec })
        .boxed()
}

pub fn service() -> BoxedStrategy<Service> {
    service_named(service_name())
}

pub fn secret() -> BoxedStrategy<Secret> {
    (text(), any::<u64>(), any::<u64>(), any::<u64>())
        .prop_map(|(name, version, size_bytes, created_at_ms)| Secret {
            name,
            version,
            size_bytes,
            created_at_ms,
        })
        .boxed()
}

pub fn sealed_blob() -> BoxedStrategy<SealedBlob> {
    (any::<u32>(), any::<[u8; 12]>(), vec(any::<u8>(), 0..48))
        .prop_map(|(key_id, nonce, ciphertext)| SealedBlob {
            key_id,
            nonce,
            ciphertext,
        })
        .boxed()
}

pub fn volume() -> BoxedStrategy<Volume> {
    (text(), option::of(any::<u64>()), labels())
        .prop_map(|(name, size_limit_bytes, labels)| Volume {
            name,
            driver: VolumeDriver::Local,
            size_limit_bytes,
            labels,
        })
        .boxed()
}

/// A replica with the given id strategy.
pub fn replica_with_id(id: BoxedStrategy<ReplicaId>) -> BoxedStrategy<Replica> {
    let desired = prop_oneof![Just(DesiredState::Running), Just(DesiredState::Shutdown)];
    (id, node_id(), any::<u64>(), any::<u64>(), desired)
        .prop_map(
            |(id, node, service_version, workload_hash, desired)| Replica {
                id,
                node,
                service_version,
                workload_hash,
                desired,
            },
        )
        .boxed()
}

pub fn replica() -> BoxedStrategy<Replica> {
    replica_with_id(replica_id())
}

pub fn task_state() -> BoxedStrategy<TaskState> {
    prop_oneof![
        Just(TaskState::Pending),
        Just(TaskState::Assigned),
        Just(TaskState::Starting),
        Just(TaskState::Running),
        Just(TaskState::Unhealthy),
        Just(TaskState::Stopping),
        Just(TaskState::Stopped),
        Just(TaskState::Failed),
        Just(TaskState::Completed),
        Just(TaskState::Orphaned),
    ]
    .boxed()
}

pub fn health_state() -> BoxedStrategy<HealthState> {
    prop_oneof![
        Just(HealthState::Unknown),
        Just(HealthState::Healthy),
        Just(HealthState::Unhealthy),
    ]
    .boxed()
}

pub fn replica_status() -> BoxedStrategy<ReplicaStatus> {
    (
        replica_id(),
        node_id(),
        task_state(),
        option::of(any::<u32>()),
        option::of(any::<u64>()),
        option::of(any::<i32>()),
        any::<u32>(),
        health_state(),
        option::of(text()),
        any::<u64>(),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(
                id,
                node,
                state,
                pid,
                started,
                exit_code,
                restarts,
                health,
                message,
                updated,
                hash,
            )| {
                ReplicaStatus {
                    id,
                    node,
                    state,
                    pid,
                    started_at_ms: started,
                    exit_code,
                    restarts,
                    health,
                    message,
                    updated_at_ms: updated,
                    workload_hash: hash,
                }
            },
        )
        .boxed()
}

pub fn event_kind() -> BoxedStrategy<EventKind> {
    prop_oneof![
        Just(EventKind::Started),
        option::of(any::<i32>()).prop_map(|code| EventKind::Exited { code }),
        Just(EventKind::Restarted),
        Just(EventKind::RestartsExhausted),
        Just(EventKind::StartFailed),
        health_state().prop_map(|health| EventKind::HealthChanged { health }),
        Just(EventKind::OomKilled),
        Just(EventKind::Adopted),
        Just(EventKind::Stopped),
        Just(EventKind::LinkLost),
        Just(EventKind::LinkRestored),
        Just(EventKind::ImagePulled),
    ]
    .boxed()
}

pub fn event() -> BoxedStrategy<Event> {
    (any::<u64>(), option::of(replica_id()), event_kind(), text())
        .prop_map(|(at_ms, replica, kind, message)| Event {
            at_ms,
            replica,
            kind,
            message,
        })
        .boxed()
}

pub fn service_endpoint() -> BoxedStrategy<ServiceEndpoint> {
    (
        service_name(),
        replica_id(),
        node_id(),
        text(),
        vec(port_spec(), 0..3),
    )
        .prop_map(|(service, replica, node, address, ports)| ServiceEndpoint {
            service,
            replica,
            node,
            address,
            ports,
        })
        .boxed()
}

pub fn peer_info() -> BoxedStrategy<PeerInfo> {
    (
        node_id(),
        text(),
        text(),
        option::of(text()),
        option::of(any::<[u8; 32]>()),
        strings(),
        option::of(any::<[u8; 32]>()),
        option::of(text()),
    )
        .prop_map(
            |(
                node_id,
                name,
                site,
                overlay_ip,
                wg_public_key,
                endpoints,
                wg_next_public_key,
                wg_endpoint,
            )| PeerInfo {
                node_id,
                name,
                site,
                overlay_ip,
                wg_public_key,
                endpoints,
                wg_next_public_key,
                wg_endpoint,
            },
        )
        .boxed()
}

pub fn own_mesh() -> BoxedStrategy<OwnMesh> {
    (
        8u8..24,
        any::<u32>(),
        any::<u32>(),
        option::of(any::<[u8; 32]>()),
        (option::of(any::<[u8; 32]>()), any::<u32>()),
    )
        .prop_map(
            |(prefix, network, address, public_key, (next_public_key, rotations_requested))| {
                OwnMesh {
                    range: OverlayRange {
                        network: Ipv4Addr::from(network & (u32::MAX << (32 - u32::from(prefix)))),
                        prefix,
                    },
                    address: Ipv4Addr::from(address),
                    public_key,
                    next_public_key,
                    rotations_requested,
                }
            },
        )
        .boxed()
}

pub fn mesh_peer_report() -> BoxedStrategy<MeshPeerReport> {
    (
        text(),
        option::of(text()),
        option::of(any::<u64>()),
        any::<u64>(),
        (any::<u64>(), any::<bool>()),
    )
        .prop_map(
            |(name, endpoint, last_handshake_ms, rx_bytes, (tx_bytes, up))| MeshPeerReport {
                name,
                endpoint,
                last_handshake_ms,
                rx_bytes,
                tx_bytes,
                up,
            },
        )
        .boxed()
}

pub fn mesh_declaration() -> BoxedStrategy<MeshDeclaration> {
    (
        any::<[u8; 32]>(),
        option::of(any::<[u8; 32]>()),
        option::of(text()),
    )
        .prop_map(|(public_key, next_public_key, endpoint)| MeshDeclaration {
            public_key,
            next_public_key,
            endpoint,
        })
        .boxed()
}

/// Names drawn from a pool of three, so generated changes often hit the same keys.
pub fn pooled_service_name() -> BoxedStrategy<ServiceName> {
    prop_oneof![Just("a"), Just("b"), Just("c")]
        .prop_map(|s| ServiceName::new(s).expect("pool names are DNS labels"))
        .boxed()
}

/// Replica ids drawn from a small pool.
pub fn pooled_replica_id() -> BoxedStrategy<ReplicaId> {
    (pooled_service_name(), 0u32..3)
        .prop_map(|(service, slot)| ReplicaId::replicated(service, slot))
        .boxed()
}

/// Secret names drawn from a small pool.
pub fn pooled_secret_name() -> BoxedStrategy<String> {
    prop_oneof![Just("s1".to_owned()), Just("s2".to_owned())].boxed()
}

/// A change for the view of node `node_id`, over small key pools.
pub fn metrics_endpoint() -> BoxedStrategy<MetricsEndpoint> {
    (any::<u16>(), text())
        .prop_map(|(port, path)| MetricsEndpoint { port, path })
        .boxed()
}

pub fn scrape_targets() -> BoxedStrategy<ScrapeTargets> {
    let node = (node_id(), text(), text(), node_role(), text()).prop_map(
        |(node_id, name, site, role, address)| NodeTarget {
            node_id,
            name,
            site,
            role,
            address,
        },
    );
    let workload = (
        pooled_replica_id(),
        node_id(),
        text(),
        text(),
        text(),
        text(),
    )
        .prop_map(
            |(replica, node_id, node, site, address, path)| WorkloadTarget {
                replica,
                node_id,
                node,
                site,
                address,
                path,
            },
        );
    (vec(node, 0..2), vec(workload, 0..2))
        .prop_map(|(nodes, workloads)| ScrapeTargets { nodes, workloads })
        .boxed()
}

pub fn view_change_for(node_id: NodeId) -> BoxedStrategy<ViewChange> {
    prop_oneof![
        service_named(pooled_service_name()).prop_map(|s| ViewChange::UpsertService(Box::new(s))),
        pooled_service_name().prop_map(ViewChange::RemoveService),
        replica_with_id(pooled_replica_id()).prop_map(ViewChange::UpsertReplica),
        pooled_replica_id().prop_map(ViewChange::RemoveReplica),
        (pooled_secret_name(), sealed_blob())
            .prop_map(|(name, blob)| ViewChange::UpsertSecret(name, blob)),
        pooled_secret_name().prop_map(ViewChange::RemoveSecret),
        vec(service_endpoint(), 0..2).prop_map(|c| ViewChange::SetCatalogue(sorted_catalogue(c))),
        vec(peer_info(), 0..2).prop_map(|p| ViewChange::SetPeers(sorted_peers(p))),
        strings().prop_map(ViewChange::SetControlAddrs),
        node_with_id(Just(node_id).boxed()).prop_map(ViewChange::SetNode),
        option::of(own_mesh()).prop_map(ViewChange::SetMesh),
        scrape_targets().prop_map(ViewChange::SetScrape),
        peer_info().prop_map(ViewChange::UpsertPeer),
        self::node_id().prop_map(ViewChange::RemovePeer),
        service_endpoint().prop_map(ViewChange::UpsertEndpoint),
        pooled_replica_id().prop_map(ViewChange::RemoveEndpoint),
    ]
    .boxed()
}

/// A catalogue as control builds it: sorted by replica id, one endpoint per replica.
pub fn sorted_catalogue(catalogue: Vec<ServiceEndpoint>) -> Vec<ServiceEndpoint> {
    let by_replica: BTreeMap<ReplicaId, ServiceEndpoint> = catalogue
        .into_iter()
        .map(|e| (e.replica.clone(), e))
        .collect();
    by_replica.into_values().collect()
}

/// A peer list as control builds it: sorted by node id, one entry per node.
pub fn sorted_peers(peers: Vec<PeerInfo>) -> Vec<PeerInfo> {
    let by_node: BTreeMap<NodeId, PeerInfo> = peers.into_iter().map(|p| (p.node_id, p)).collect();
    by_node.into_values().collect()
}

pub fn view_change() -> BoxedStrategy<ViewChange> {
    node_id().prop_flat_map(view_change_for).boxed()
}

pub fn view_delta() -> BoxedStrategy<ViewDelta> {
    (revision(), revision(), vec(view_change(), 0..4))
        .prop_map(|(from, to, changes)| ViewDelta { from, to, changes })
        .boxed()
}

/// A well-formed view of node `node_id` over the small key pools: replicas sorted by id with
/// unique ids, services keyed by their spec's name.
pub fn node_view_for(node_id: NodeId) -> BoxedStrategy<NodeView> {
    (
        revision(),
        any::<[u8; 32]>(),
        node_with_id(Just(node_id).boxed()),
        vec(service_named(pooled_service_name()), 0..3),
        vec(replica_with_id(pooled_replica_id()), 0..4),
        btree_map(pooled_secret_name(), sealed_blob(), 0..2),
        vec(service_endpoint(), 0..2),
        strings(),
        (
            vec(peer_info(), 0..2),
            option::of(own_mesh()),
            scrape_targets(),
        ),
    )
        .prop_map(
            |(
                revision,
                cluster_id,
                node,
                services,
                replicas,
                secrets,
                catalogue,
                addrs,
                (peers, mesh, scrape),
            )| {
                let services = services
                    .into_iter()
                    .map(|s| (s.spec.name.clone(), s))
                    .collect();
                let replicas: BTreeMap<ReplicaId, Replica> =
                    replicas.into_iter().map(|r| (r.id.clone(), r)).collect();
                NodeView {
                    revision,
                    cluster_id,
                    node,
                    services,
                    replicas: replicas.into_values().collect(),
                    secrets,
                    catalogue: sorted_catalogue(catalogue),
                    control_addrs: addrs,
                    peers: sorted_peers(peers),
                    mesh,
                    scrape,
                }
            },
        )
        .boxed()
}

pub fn node_view() -> BoxedStrategy<NodeView> {
    node_id().prop_flat_map(node_view_for).boxed()
}

pub fn agent_hello() -> BoxedStrategy<AgentHello> {
    (
        any::<u16>(),
        node_id(),
        revision(),
        option::of(any::<[u8; 32]>()),
        text(),
        option::of(node_view().prop_map(|v| v.digest())),
    )
        .prop_map(
            |(wire_version, node_id, last_revision, cache_cluster_id, agent_version, have)| {
                AgentHello {
                    wire_version,
                    node_id,
                    last_revision,
                    cache_cluster_id,
                    agent_version,
                    have,
                }
            },
        )
        .boxed()
}

pub fn status_report() -> BoxedStrategy<StatusReport> {
    (
        node_id(),
        revision(),
        vec(replica_status(), 0..3),
        vec(event(), 0..3),
        any::<u64>(),
    )
        .prop_map(
            |(node_id, revision, replicas, events, events_dropped)| StatusReport {
                node_id,
                revision,
                replicas,
                events,
                events_dropped,
            },
        )
        .boxed()
}

pub fn agent_to_control() -> BoxedStrategy<AgentToControl> {
    prop_oneof![
        agent_hello().prop_map(AgentToControl::Hello),
        revision().prop_map(|revision| AgentToControl::Ack { revision }),
        status_report().prop_map(AgentToControl::Status),
        proptest::collection::vec(listener_status(), 0..4).prop_map(AgentToControl::Listeners),
        mesh_declaration().prop_map(AgentToControl::Mesh),
        proptest::collection::vec(mesh_peer_report(), 0..3).prop_map(AgentToControl::MeshPeers),
    ]
    .boxed()
}

pub fn listener_status() -> BoxedStrategy<ListenerStatus> {
    let listener = prop_oneof![
        Just(Listener::Metrics),
        Just(Listener::Dns),
        Just(Listener::Gossip),
    ];
    (listener, text(), any::<bool>(), option::of(text()))
        .prop_map(|(listener, addr, up, error)| ListenerStatus {
            listener,
            addr,
            up,
            error,
        })
        .boxed()
}

pub fn refusal() -> BoxedStrategy<Refusal> {
    let reason = prop_oneof![
        Just(RefusalReason::NodeRemoved),
        any::<u16>().prop_map(|supported| RefusalReason::WireVersion { supported }),
        Just(RefusalReason::NotRegistered),
        Just(RefusalReason::NodeIdMismatch),
        any::<u64>().prop_map(|retry_after_ms| RefusalReason::Overloaded { retry_after_ms }),
    ];
    (reason, text())
        .prop_map(|(reason, message)| Refusal { reason, message })
        .boxed()
}

pub fn control_to_agent() -> BoxedStrategy<ControlToAgent> {
    prop_oneof![
        node_view().prop_map(|view| ControlToAgent::Snapshot(Box::new(view))),
        view_delta().prop_map(ControlToAgent::Delta),
        refusal().prop_map(ControlToAgent::Refused),
        revision().prop_map(|revision| ControlToAgent::Heartbeat { revision }),
    ]
    .boxed()
}

pub fn log_stream() -> BoxedStrategy<crate::logs::LogStream> {
    prop_oneof![
        Just(crate::logs::LogStream::Stdout),
        Just(crate::logs::LogStream::Stderr)
    ]
    .boxed()
}

pub fn log_cursor() -> BoxedStrategy<crate::logs::LogCursor> {
    (replica_id(), log_stream(), any::<u64>())
        .prop_map(|(replica, stream, offset)| crate::logs::LogCursor {
            replica,
            stream,
            offset,
        })
        .boxed()
}

pub fn agent_log_request() -> BoxedStrategy<crate::logs::AgentLogRequest> {
    (
        vec(replica_id(), 0..4),
        option::of(any::<u64>()),
        option::of(any::<u32>()),
        any::<bool>(),
        vec(log_cursor(), 0..4),
        any::<u32>(),
    )
        .prop_map(|(replicas, since_ms, tail, follow, after, max_bytes)| {
            crate::logs::AgentLogRequest {
                replicas,
                since_ms,
                tail,
                follow,
                after,
                max_bytes,
            }
        })
        .boxed()
}

pub fn agent_log_reply() -> BoxedStrategy<crate::logs::AgentLogReply> {
    let line = (replica_id(), log_stream(), any::<u64>(), text()).prop_map(
        |(replica, stream, time_ms, text)| crate::logs::AgentLogLine {
            replica,
            stream,
            time_ms,
            text,
        },
    );
    (
        vec(line, 0..4),
        vec(log_cursor(), 0..4),
        vec((replica_id(), text()), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(lines, cursors, missing, truncated)| crate::logs::AgentLogReply {
                lines,
                cursors,
                missing,
                truncated,
            },
        )
        .boxed()
}
