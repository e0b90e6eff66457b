use std::collections::BTreeMap;

use warren_api::wire::ViewChange;
use warren_api::{
    Availability, Node, NodeAddresses, NodeRole, NodeState, ProcessSpec, Revision, SecretRef,
    ServiceMode, ServiceName, Workload,
};
use warren_transport::seal::{SealError, SealKey, seal_parts};

use super::*;
use crate::command::{Command, Op};
use crate::push::node_view;

struct Log {
    state: ClusterState,
    index: u64,
}

impl Log {
    fn apply(&mut self, op: Op) {
        self.index += 1;
        let command = Command {
            at_ms: 1_000 + self.index,
            op,
        };
        let outcome = self.state.apply(Revision(self.index), &command);
        outcome.result.expect("applied");
    }
}

fn agent(id: u64) -> Node {
    Node {
        id: NodeId(id),
        name: format!("edge-{id}"),
        role: NodeRole::Agent,
        site: "lisbon".into(),
        labels: BTreeMap::new(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: Some(format!("serial{id}")),
        addresses: NodeAddresses::default(),
        joined_at_ms: 0,
    }
}

fn put_secret(cluster_key: &SealKey, name: &str, value: &[u8]) -> Op {
    let (nonce, ciphertext) = seal_parts(cluster_key, SECRET_PURPOSE, value);
    Op::PutSecret {
        name: name.into(),
        size_bytes: value.len() as u64,
        sealed: SealedBlob {
            key_id: 1,
            nonce,
            ciphertext,
        },
    }
}

fn open(key: &SealKey, name: &str, blob: &SealedBlob) -> Result<Vec<u8>, SealError> {
    open_parts(
        key,
        &node_secret_purpose(name),
        &blob.nonce,
        &blob.ciphertext,
    )
}

/// Node 1 runs the only replica of a service that references `db`: its view carries `db`
/// sealed for node 1 alone, rebuilding the view changes nothing, and a new value of the
/// secret is one `UpsertSecret` in the next delta. Node 2 runs nothing and gets no secret.
#[test]
fn a_view_carries_exactly_its_services_secrets_sealed_for_its_node() {
    let cluster_key = SealKey::generate();
    let mut log = Log {
        state: ClusterState::default(),
        index: 0,
    };
    log.apply(Op::RegisterNode(agent(1)));
    log.apply(Op::RegisterNode(agent(2)));
    log.apply(put_secret(&cluster_key, "db", b"hunter2"));
    log.apply(put_secret(&cluster_key, "unused", b"nobody reads me"));
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").unwrap(),
        Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None,
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    spec.secrets = vec![SecretRef {
        name: "db".into(),
        target: "db.txt".into(),
    }];
    log.apply(Op::PutService(spec));

    let keys = ClusterKeys::first(cluster_key.clone());
    let view =
        |log: &Log, node: u64| node_view(&log.state, NodeId(node), &[], &keys).expect("registered");
    let first = view(&log, 1);
    assert_eq!(first.replicas.len(), 1, "{first:?}");
    // Besides its services' secrets, every view carries the gossip key.
    assert_eq!(
        first.secrets.keys().collect::<Vec<_>>(),
        ["db", "warren.gossip-key.1"]
    );
    let blob = &first.secrets["db"];
    assert_ne!(
        *blob, log.state.secrets["db"].sealed,
        "re-sealed, not the stored blob"
    );
    let node_1 = node_secret_key(&cluster_key, NodeId(1));
    let node_2 = node_secret_key(&cluster_key, NodeId(2));
    assert_eq!(open(&node_1, "db", blob).unwrap(), b"hunter2");
    assert_eq!(open(&node_2, "db", blob), Err(SealError::Authentication));
    assert_eq!(
        open(&cluster_key, "db", blob),
        Err(SealError::Authentication)
    );
    let second_node = view(&log, 2);
    assert_eq!(
        second_node.secrets.keys().collect::<Vec<_>>(),
        ["warren.gossip-key.1"]
    );
    let gossip = &second_node.secrets["warren.gossip-key.1"];
    assert_eq!(
        open(&node_2, "warren.gossip-key.1", gossip).unwrap(),
        warren_transport::seal::gossip_key(&cluster_key, 1),
        "the gossip key, sealed for node 2 alone"
    );
    assert_eq!(
        open(&node_1, "warren.gossip-key.1", gossip),
        Err(SealError::Authentication)
    );
    assert_eq!(
        view(&log, 1),
        first,
        "rebuilding the view gives the same bytes"
    );

    log.apply(put_secret(&cluster_key, "db", b"hunter3"));
    assert_eq!(log.state.secrets["db"].meta.version, 2);
    let second = view(&log, 1);
    let delta = first.diff(&second);
    assert_eq!(delta.changes.len(), 1, "{delta:?}");
    let ViewChange::UpsertSecret(name, new_blob) = &delta.changes[0] else {
        panic!("expected an UpsertSecret, got {delta:?}");
    };
    assert_eq!(name, "db");
    assert_eq!(open(&node_1, "db", new_blob).unwrap(), b"hunter3");
}

/// A rotation re-seals the stored values with the new generation (the old key no longer
/// opens them) and moves every view to the new gossip key; a node's own key does not change,
/// so its secrets still open. A control node that lacks the new generation builds no view.
#[test]
fn a_rotation_reseals_at_rest_and_moves_views_to_the_new_gossip_key() {
    let first_key = SealKey::generate();
    let mut keys = ClusterKeys::first(first_key.clone());
    let mut log = Log {
        state: ClusterState::default(),
        index: 0,
    };
    let ca = warren_transport::ClusterCa::generate(
        "t",
        warren_transport::Validity::starting_at(
            warren_api::clock::unix_now(),
            warren_transport::ca::CA_LIFETIME,
        ),
    )
    .unwrap();
    log.apply(Op::InitCluster {
        name: "t".into(),
        ca_cert_der: ca.cert_der().to_vec(),
        ca_key_sealed: ca.sealed_key(&first_key),
    });
    log.apply(Op::RegisterNode(agent(1)));
    log.apply(put_secret(&first_key, "db", b"hunter2"));
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").unwrap(),
        Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None,
        }),
    );
    spec.secrets = vec![SecretRef {
        name: "db".into(),
        target: "db.txt".into(),
    }];
    log.apply(Op::PutService(spec));

    let old_keys = keys.clone();
    keys.add(2, SealKey::generate()).unwrap();
    log.apply(crate::rekey::rotation(&log.state, &keys, 2).unwrap());
    assert_eq!(log.state.key_generation(), 2);
    let at_rest = &log.state.secrets["db"].sealed;
    assert_eq!(at_rest.key_id, 2);
    assert_eq!(open_at_rest(&keys, at_rest).unwrap(), b"hunter2");
    assert!(open_at_rest(&old_keys, at_rest).is_err());
    let info = log.state.cluster.as_ref().unwrap();
    assert!(
        warren_transport::ClusterCa::from_sealed(
            &info.ca_cert_der,
            &info.ca_key_sealed,
            &first_key
        )
        .is_err()
    );

    let view = node_view(&log.state, NodeId(1), &[], &keys).expect("registered");
    assert_eq!(
        view.secrets.keys().collect::<Vec<_>>(),
        ["db", "warren.gossip-key.2"]
    );
    let node_1 = node_secret_key(&first_key, NodeId(1));
    assert_eq!(
        open(&node_1, "db", &view.secrets["db"]).unwrap(),
        b"hunter2"
    );
    assert_eq!(
        open(
            &node_1,
            "warren.gossip-key.2",
            &view.secrets["warren.gossip-key.2"]
        )
        .unwrap(),
        warren_transport::seal::gossip_key(keys.get(2).unwrap(), 2)
    );
    assert!(node_view(&log.state, NodeId(1), &[], &old_keys).is_none());
    assert!(
        crate::rekey::rotation(&log.state, &keys, 2).is_err(),
        "generation 2 is in force already"
    );
}
