//! Secret values in the control plane: sealed under the cluster key at rest in the replicated
//! state, and re-sealed under a node's own key ([`node_secret_key`]) when they go into that
//! node's view.
//!
//! Must never: log a value, or let one leave this module in the clear.

use std::collections::{BTreeMap, BTreeSet};

use warren_api::{NodeId, SealedBlob, ServiceSpec};
use warren_transport::seal::{
    SealKey, gossip_key, gossip_key_secret_name, node_secret_key, node_secret_purpose, open_parts,
    seal_deterministic,
};

use crate::state::ClusterState;

/// The AES-GCM purpose string under which secret values are sealed in the replicated state.
pub const SECRET_PURPOSE: &str = "warren secret v1";

/// `key_id` of blobs sealed with a node key. Node keys do not rotate yet; the field is there
/// for when they do.
pub const NODE_KEY_ID: u32 = 1;

/// The gossip key every node seals its mesh datagrams with. Rotation moves to the next id (the
/// mesh accepts the old key for an overlap window); no operator command does that yet.
pub const GOSSIP_KEY_ID: u32 = 1;

/// The current gossip key, sealed for `node` like a secret, under its reserved view name
/// ([`gossip_key_secret_name`]). Deterministic, like the secrets.
pub fn gossip_key_for_node(cluster_key: &SealKey, node: NodeId) -> (String, SealedBlob) {
    let name = gossip_key_secret_name(GOSSIP_KEY_ID);
    let key = gossip_key(cluster_key, GOSSIP_KEY_ID);
    let (nonce, ciphertext) = seal_deterministic(
        &node_secret_key(cluster_key, node),
        &node_secret_purpose(&name),
        &key,
    );
    (
        name,
        SealedBlob {
            key_id: NODE_KEY_ID,
            nonce,
            ciphertext,
        },
    )
}

/// The secrets referenced by `specs`, each opened with the cluster key and sealed for `node`
/// with its derived key, by name.
///
/// Deterministic (see [`seal_deterministic`]): the same state gives the same blobs on every
/// control node and every call, so a rebuilt view differs from the last one only when a value
/// did. A referenced secret that is missing or does not open is left out (the agent then
/// refuses to start the replica, naming the secret); the second means a wrong cluster key or a
/// corrupt state and is logged as an error.
pub fn sealed_for_node<'a>(
    state: &ClusterState,
    specs: impl IntoIterator<Item = &'a ServiceSpec>,
    cluster_key: &SealKey,
    node: NodeId,
) -> BTreeMap<String, SealedBlob> {
    let names: BTreeSet<&str> = specs
        .into_iter()
        .flat_map(|spec| spec.secrets.iter().map(|s| s.name.as_str()))
        .collect();
    if names.is_empty() {
        return BTreeMap::new();
    }
    let node_key = node_secret_key(cluster_key, node);
    let mut sealed = BTreeMap::new();
    for name in names {
        let Some(record) = state.secrets.get(name) else {
            continue;
        };
        let at_rest = &record.sealed;
        let value = match open_parts(
            cluster_key,
            SECRET_PURPOSE,
            &at_rest.nonce,
            &at_rest.ciphertext,
        ) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(secret = name, node_id = %node, error = %error, "cannot open a stored secret with the cluster key; not delivering it");
                continue;
            }
        };
        let (nonce, ciphertext) = seal_deterministic(&node_key, &node_secret_purpose(name), &value);
        sealed.insert(
            name.to_owned(),
            SealedBlob {
                key_id: NODE_KEY_ID,
                nonce,
                ciphertext,
            },
        );
    }
    sealed
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warren_api::wire::ViewChange;
    use warren_api::{
        Availability, Node, NodeAddresses, NodeRole, NodeState, ProcessSpec, Revision, SecretRef,
        ServiceMode, ServiceName, Workload,
    };
    use warren_transport::seal::{SealError, seal_parts};

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

        let view = |log: &Log, node: u64| {
            node_view(&log.state, NodeId(node), &[], &cluster_key).expect("registered")
        };
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
}
