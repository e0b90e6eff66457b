//! Codec and view properties: every type round-trips through postcard and JSON, decoding
//! never panics, truncated and padded input is refused, and deltas compose.

use std::collections::BTreeMap;
use std::fmt::Debug;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;
use crate::ids::{ReplicaId, ServiceName};
use crate::replica::Replica;
use crate::strategies as s;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(48)
}

/// Encodes with the wire codec and with serde_json and checks both decode to `value`.
fn check_round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, value, "postcard");
    let json = serde_json::to_string(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T =
        serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
    prop_assert_eq!(&back, value, "json: {}", json);
    Ok(())
}

macro_rules! round_trip_tests {
    ($($name:ident: $strategy:expr;)*) => {
        proptest! {
            #![proptest_config(config())]
            $(
                #[test]
                fn $name(value in $strategy) {
                    check_round_trip(&value)?;
                }
            )*
        }
    };
}

round_trip_tests! {
    round_trip_node_id: s::node_id();
    round_trip_revision: s::revision();
    round_trip_service_name: s::service_name();
    round_trip_replica_key: s::replica_key();
    round_trip_replica_id: s::replica_id();
    round_trip_node_role: s::node_role();
    round_trip_node_state: s::node_state();
    round_trip_node_addresses: s::node_addresses();
    round_trip_node: s::node();
    round_trip_workload: s::workload();
    round_trip_service_mode: s::service_mode();
    round_trip_constraint: s::constraint();
    round_trip_placement: s::placement();
    round_trip_port_spec: s::port_spec();
    round_trip_health_check: s::health_check();
    round_trip_restart_policy: s::restart_policy();
    round_trip_on_disconnect: s::on_disconnect();
    round_trip_secret_ref: s::secret_ref();
    round_trip_volume_mount: s::volume_mount();
    round_trip_resources: s::resources();
    round_trip_update_config: s::update_config();
    round_trip_service_spec: s::service_spec();
    round_trip_service: s::service();
    round_trip_secret: s::secret();
    round_trip_sealed_blob: s::sealed_blob();
    round_trip_volume: s::volume();
    round_trip_replica: s::replica();
    round_trip_task_state: s::task_state();
    round_trip_health_state: s::health_state();
    round_trip_replica_status: s::replica_status();
    round_trip_event_kind: s::event_kind();
    round_trip_event: s::event();
    round_trip_service_endpoint: s::service_endpoint();
    round_trip_peer_info: s::peer_info();
    round_trip_view_change: s::view_change();
    round_trip_view_delta: s::view_delta();
    round_trip_node_view: s::node_view();
    round_trip_agent_hello: s::agent_hello();
    round_trip_status_report: s::status_report();
    round_trip_refusal: s::refusal();
    round_trip_agent_to_control: s::agent_to_control();
    round_trip_control_to_agent: s::control_to_agent();
    round_trip_log_cursor: s::log_cursor();
    round_trip_agent_log_request: s::agent_log_request();
    round_trip_agent_log_reply: s::agent_log_reply();
}

/// Every strict prefix at the sampled cut points decodes to `Truncated`.
fn check_truncations<T>(bytes: &[u8], cuts: &[Index]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Debug,
{
    let mut cut_points: Vec<usize> = cuts.iter().map(|idx| idx.index(bytes.len())).collect();
    cut_points.push(0);
    for cut in cut_points {
        let got = decode::<T>(&bytes[..cut]);
        prop_assert_eq!(got.unwrap_err(), DecodeError::Truncated, "cut at {}", cut);
    }
    Ok(())
}

fn check_trailing<T>(bytes: &[u8], extra: &[u8]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Debug,
{
    let mut padded = bytes.to_vec();
    padded.extend_from_slice(extra);
    let got = decode::<T>(&padded);
    prop_assert_eq!(
        got.unwrap_err(),
        DecodeError::TrailingBytes { count: extra.len() }
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn garbage_never_panics(bytes in vec(any::<u8>(), 0..4096)) {
        let _ = decode::<AgentToControl>(&bytes);
        let _ = decode::<ControlToAgent>(&bytes);
        let _ = decode::<NodeView>(&bytes);
        let _ = decode::<ViewDelta>(&bytes);
        let _ = decode::<crate::logs::AgentLogRequest>(&bytes);
        let _ = decode::<crate::logs::AgentLogReply>(&bytes);
    }

    #[test]
    fn garbage_after_valid_tag_never_panics(tag in 0u8..5, bytes in vec(any::<u8>(), 0..512)) {
        // Random bytes rarely get past the first enum tag; this pins a valid one.
        let mut input = vec![tag];
        input.extend_from_slice(&bytes);
        let _ = decode::<AgentToControl>(&input);
        let _ = decode::<ControlToAgent>(&input);
    }

    #[test]
    fn agent_to_control_truncated_and_padded(
        message in s::agent_to_control(),
        cuts in vec(any::<Index>(), 8),
        extra in vec(any::<u8>(), 1..8),
    ) {
        let bytes = encode(&message).unwrap();
        check_truncations::<AgentToControl>(&bytes, &cuts)?;
        check_trailing::<AgentToControl>(&bytes, &extra)?;
    }

    #[test]
    fn control_to_agent_truncated_and_padded(
        message in s::control_to_agent(),
        cuts in vec(any::<Index>(), 8),
        extra in vec(any::<u8>(), 1..8),
    ) {
        let bytes = encode(&message).unwrap();
        check_truncations::<ControlToAgent>(&bytes, &cuts)?;
        check_trailing::<ControlToAgent>(&bytes, &extra)?;
    }
}

#[test]
fn too_large_is_refused_before_decoding() {
    let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let err = decode::<AgentToControl>(&bytes).unwrap_err();
    assert_eq!(err.kind(), "too_large");
    assert_eq!(
        err.to_string(),
        format!(
            "message too large: {} bytes, limit {MAX_MESSAGE_BYTES}",
            MAX_MESSAGE_BYTES + 1
        )
    );
    let huge = vec![0u8; MAX_MESSAGE_BYTES];
    assert!(matches!(encode(&huge), Err(EncodeError::TooLarge { .. })));
}

#[test]
fn decode_error_kinds_and_messages() {
    let ack = encode(&AgentToControl::Ack {
        revision: Revision(300),
    })
    .unwrap();
    let err = decode::<AgentToControl>(&ack[..1]).unwrap_err();
    assert_eq!(
        (err.kind(), err.to_string()),
        ("truncated", "message truncated".to_owned())
    );
    let mut padded = ack.clone();
    padded.push(0);
    let err = decode::<AgentToControl>(&padded).unwrap_err();
    assert_eq!(
        (err.kind(), err.to_string()),
        (
            "trailing_bytes",
            "1 trailing bytes after message".to_owned()
        )
    );
    let err = decode::<AgentToControl>(&[9]).unwrap_err();
    assert_eq!(err.kind(), "invalid");
    assert!(err.to_string().starts_with("invalid message: "), "{err}");
}

#[test]
fn invalid_service_name_is_refused_by_decode() {
    // Same layout as a valid name; only the validation rule can catch it.
    let bytes = encode("Not-A-Label").unwrap();
    assert_eq!(decode::<ServiceName>(&bytes).unwrap_err().kind(), "invalid");
}

/// Builds the view that a sequence of changes should produce, with plain maps and no
/// `apply`: the reference the property below compares against.
fn build_directly(start: &NodeView, changes: &[ViewChange], revision: Revision) -> NodeView {
    let mut services = start.services.clone();
    let mut replicas: BTreeMap<ReplicaId, Replica> = start
        .replicas
        .iter()
        .map(|r| (r.id.clone(), r.clone()))
        .collect();
    let mut secrets = start.secrets.clone();
    let mut catalogue: BTreeMap<ReplicaId, ServiceEndpoint> = start
        .catalogue
        .iter()
        .map(|e| (e.replica.clone(), e.clone()))
        .collect();
    let mut peers: BTreeMap<NodeId, PeerInfo> =
        start.peers.iter().map(|p| (p.node_id, p.clone())).collect();
    let mut control_addrs = start.control_addrs.clone();
    let mut node = start.node.clone();
    let mut mesh = start.mesh.clone();
    let mut scrape = start.scrape.clone();
    for change in changes {
        match change.clone() {
            ViewChange::UpsertService(service) => {
                services.insert(service.spec.name.clone(), *service);
            }
            ViewChange::RemoveService(name) => {
                services.remove(&name);
            }
            ViewChange::UpsertReplica(replica) => {
                replicas.insert(replica.id.clone(), replica);
            }
            ViewChange::RemoveReplica(id) => {
                replicas.remove(&id);
            }
            ViewChange::UpsertSecret(name, blob) => {
                secrets.insert(name, blob);
            }
            ViewChange::RemoveSecret(name) => {
                secrets.remove(&name);
            }
            ViewChange::SetCatalogue(new) => {
                catalogue = new.into_iter().map(|e| (e.replica.clone(), e)).collect();
            }
            ViewChange::SetPeers(new) => peers = new.into_iter().map(|p| (p.node_id, p)).collect(),
            ViewChange::UpsertPeer(peer) => {
                peers.insert(peer.node_id, peer);
            }
            ViewChange::RemovePeer(node) => {
                peers.remove(&node);
            }
            ViewChange::UpsertEndpoint(endpoint) => {
                catalogue.insert(endpoint.replica.clone(), endpoint);
            }
            ViewChange::RemoveEndpoint(replica) => {
                catalogue.remove(&replica);
            }
            ViewChange::SetControlAddrs(new) => control_addrs = new,
            ViewChange::SetNode(new) => node = new,
            ViewChange::SetMesh(new) => mesh = new,
            ViewChange::SetScrape(new) => scrape = new,
        }
    }
    NodeView {
        revision,
        cluster_id: start.cluster_id,
        node,
        services,
        replicas: replicas.into_values().collect(),
        secrets,
        catalogue: catalogue.into_values().collect(),
        control_addrs,
        peers: peers.into_values().collect(),
        mesh,
        scrape,
    }
}

/// A starting view at a small revision and batches of changes for the same node.
fn view_and_batches() -> impl Strategy<Value = (NodeView, Vec<(u64, Vec<ViewChange>)>)> {
    s::node_id().prop_flat_map(|node_id| {
        let start = s::node_view_for(node_id).prop_map(|mut view| {
            view.revision = Revision(view.revision.0 % 1_000);
            view
        });
        let batch = (1u64..5, vec(s::view_change_for(node_id), 0..5));
        (start, vec(batch, 0..5))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn applying_deltas_equals_building_directly((start, batches) in view_and_batches()) {
        let mut view = start.clone();
        let mut all_changes = Vec::new();
        for (step, changes) in &batches {
            let delta = ViewDelta {
                from: view.revision,
                to: Revision(view.revision.0 + step),
                changes: changes.clone(),
            };
            view.apply(&delta).unwrap();
            all_changes.extend(changes.iter().cloned());
        }
        let expected = build_directly(&start, &all_changes, view.revision);
        prop_assert_eq!(view, expected);
    }

    #[test]
    fn wrong_base_or_backwards_is_refused_and_leaves_view_unchanged(
        (start, batches) in view_and_batches(),
        offset in 1u64..10,
        backwards in 0u64..3,
    ) {
        let changes = batches.into_iter().flat_map(|(_, c)| c).collect::<Vec<_>>();
        let mut view = start.clone();

        let wrong_base = ViewDelta {
            from: Revision(start.revision.0 + offset),
            to: Revision(start.revision.0 + offset + 1),
            changes: changes.clone(),
        };
        prop_assert_eq!(
            view.apply(&wrong_base).unwrap_err(),
            ApplyError::WrongBase { current: start.revision, from: wrong_base.from }
        );
        prop_assert_eq!(&view, &start);

        let not_forward = ViewDelta {
            from: start.revision,
            to: Revision(start.revision.0.saturating_sub(backwards)),
            changes,
        };
        if not_forward.is_noop() {
            // Same revision, nothing to change: a no-op, accepted.
            prop_assert_eq!(view.apply(&not_forward), Ok(()));
        } else {
            prop_assert_eq!(view.apply(&not_forward).unwrap_err().kind(), "not_forward");
        }
        prop_assert_eq!(&view, &start);
    }

    /// A delta that stays at the view's revision is accepted only when it changes nothing;
    /// one that changes something without moving forward is refused, either way the view
    /// is unchanged.
    #[test]
    fn same_revision_delta_is_a_noop_or_refused(
        (start, batches) in view_and_batches(),
    ) {
        let changes = batches.into_iter().flat_map(|(_, c)| c).collect::<Vec<_>>();
        let mut view = start.clone();
        let noop = ViewDelta { from: start.revision, to: start.revision, changes: vec![] };
        prop_assert!(noop.is_noop());
        prop_assert_eq!(view.apply(&noop), Ok(()));
        prop_assert_eq!(&view, &start);
        prop_assume!(!changes.is_empty());
        let changing = ViewDelta { from: start.revision, to: start.revision, changes };
        prop_assert!(!changing.is_noop());
        prop_assert_eq!(view.apply(&changing).unwrap_err().kind(), "not_forward");
        prop_assert_eq!(&view, &start);
    }

    #[test]
    fn diff_then_apply_reaches_target(
        (start, target) in s::node_id().prop_flat_map(|id| (s::node_view_for(id), s::node_view_for(id))),
    ) {
        let mut target = target;
        target.cluster_id = start.cluster_id;
        target.revision = Revision(start.revision.0.saturating_add(1).max(target.revision.0));
        prop_assume!(target.revision > start.revision);
        let delta = start.diff(&target);
        let mut view = start.clone();
        view.apply(&delta).unwrap();
        prop_assert_eq!(&view, &target);
        let delta_round_trip: ViewDelta = decode(&encode(&delta).unwrap()).unwrap();
        prop_assert_eq!(delta_round_trip, delta);
    }

    /// What control sends a reconnecting agent: the delta from the agent's digest alone
    /// (control has no copy of the agent's view) reaches the target, and is no larger than
    /// the diff from the full view.
    #[test]
    fn delta_since_digest_reaches_target(
        (start, target) in s::node_id().prop_flat_map(|id| (s::node_view_for(id), s::node_view_for(id))),
    ) {
        let mut target = target;
        target.cluster_id = start.cluster_id;
        target.revision = Revision(start.revision.0.saturating_add(1).max(target.revision.0));
        prop_assume!(target.revision > start.revision);
        let delta = target.delta_since(&start.digest());
        prop_assert_eq!(delta.changes.len(), start.diff(&target).changes.len());
        let mut view = start.clone();
        view.apply(&delta).unwrap();
        prop_assert_eq!(&view, &target);
        let unchanged = start.delta_since(&start.digest());
        prop_assert!(unchanged.changes.is_empty());
    }
}

proptest! {
    #![proptest_config(config())]

    /// A delta spliced from changes encoded one by one is the delta encoded whole.
    #[test]
    fn delta_from_parts_is_the_delta_encoded_whole(
        from in s::revision(),
        to in s::revision(),
        changes in vec(s::view_change(), 0..200),
    ) {
        let whole = encode(&ControlToAgent::Delta(ViewDelta { from, to, changes: changes.clone() })).unwrap();
        let parts: Vec<Vec<u8>> = changes.iter().map(|c| encode(c).unwrap()).collect();
        let spliced = encode_delta_from_parts(from, to, parts.len(), parts.iter().map(Vec::as_slice)).unwrap();
        prop_assert_eq!(spliced, whole);
    }

    /// A list hashed or encoded from its items encoded one by one is the list hashed or
    /// encoded whole.
    #[test]
    fn list_from_parts_is_the_list_whole(peers in vec(s::peer_info(), 0..200)) {
        let parts: Vec<Vec<u8>> = peers.iter().map(|p| encode(p).unwrap()).collect();
        let items = || parts.iter().map(Vec::as_slice);
        let hash = crate::service::stable_hash_of_encoded_list(parts.len(), items());
        prop_assert_eq!(hash, crate::service::stable_hash(&peers));
        let set = encode_list_change_from_parts(&ViewChange::SetPeers(Vec::new()), parts.len(), items());
        prop_assert_eq!(set.unwrap(), encode(&ViewChange::SetPeers(peers.clone())).unwrap());
    }
}

#[test]
fn set_node_for_another_node_is_refused() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut view = s::node_view().new_tree(&mut runner).unwrap().current();
    view.revision = Revision(5);
    let mut other = view.node.clone();
    other.id = NodeId(view.node.id.0 ^ 1);
    let delta = ViewDelta {
        from: Revision(5),
        to: Revision(6),
        changes: vec![
            ViewChange::RemoveSecret("s1".to_owned()),
            ViewChange::SetNode(other),
        ],
    };
    let mut applied = view.clone();
    let err = applied.apply(&delta).unwrap_err();
    assert_eq!(err.kind(), "node_mismatch");
    assert_eq!(applied, view);
}

#[test]
fn json_shapes_are_readable() {
    let hello = AgentToControl::Hello(AgentHello {
        wire_version: WIRE_VERSION,
        node_id: NodeId(1),
        last_revision: Revision(42),
        cache_cluster_id: None,
        agent_version: "0.1.0".to_owned(),
        have: None,
    });
    assert_eq!(
        serde_json::to_string(&hello).unwrap(),
        r#"{"hello":{"wire_version":7,"node_id":"0000000000000001","last_revision":42,"cache_cluster_id":null,"agent_version":"0.1.0","have":null}}"#
    );
    let refused = ControlToAgent::Refused(Refusal {
        reason: RefusalReason::WireVersion { supported: 1 },
        message: "upgrade".to_owned(),
    });
    assert_eq!(
        serde_json::to_string(&refused).unwrap(),
        r#"{"refused":{"reason":{"wire_version":{"supported":1}},"message":"upgrade"}}"#
    );
    assert!(RefusalReason::NodeRemoved.is_permanent());
    assert!(!RefusalReason::NotRegistered.is_permanent());
}
