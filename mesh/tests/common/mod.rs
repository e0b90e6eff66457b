//! An in-process mesh cluster on 127.0.0.1 (port 0) for tests and the bench: start N nodes,
//! partition, heal, kill, and wait for conditions on every node's view.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus::Registry;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use warren_api::{NodeId, NodeRole};
use warren_mesh::{
    GossipFaultSwitch, GossipKey, KeyId, Keyring, Liveness, Member, MemberConfig, Mesh, MeshConfig,
    MeshIdentity, MeshMetrics, MeshTimers,
};

pub const CLUSTER_ID: &str = "test-cluster";

/// A node's signing identity for tests. The cluster CA stands outside this crate, so here a
/// credential is `node id (u64 LE) ‖ P-256 public key` and the authority believes exactly
/// that: a node can only sign as the node id its credential names, `signer`'s.
pub fn identity_signed_by(signer: NodeId) -> MeshIdentity {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("generate P-256 key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("load P-256 key");
    let mut credential = signer.0.to_le_bytes().to_vec();
    credential.extend_from_slice(key.public_key().as_ref());
    MeshIdentity::new(
        move || credential.clone(),
        move |message| {
            key.sign(&SystemRandom::new(), message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| "signing failed".to_owned())
        },
        |node, credential| {
            let (id, public_key) = credential.split_at_checked(8).ok_or("short credential")?;
            if id != node.0.to_le_bytes() {
                return Err(format!("credential is not for node {node}"));
            }
            Ok(public_key.to_vec())
        },
    )
}

/// One node of the fixture. `mesh` is `None` once killed.
pub struct Node {
    pub mesh: Option<Mesh>,
    pub node_id: NodeId,
    pub addr: SocketAddr,
    pub fault: GossipFaultSwitch,
    pub metrics: MeshMetrics,
    pub registry: Registry,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub key: GossipKey,
    pub timers: MeshTimers,
}

pub fn config(
    node_id: NodeId,
    seeds: Vec<SocketAddr>,
    keyring: Keyring,
    timers: MeshTimers,
    fault: GossipFaultSwitch,
) -> MeshConfig {
    MeshConfig {
        member: MemberConfig {
            node_id,
            name: format!("node-{}", node_id.0),
            role: if node_id.0 == 1 {
                NodeRole::Control
            } else {
                NodeRole::Agent
            },
            site: if node_id.0.is_multiple_of(2) {
                "a"
            } else {
                "b"
            }
            .to_owned(),
            scope: String::new(),
            cluster_id: CLUSTER_ID.to_owned(),
            advertise_addr: None,
            seeds,
            identity: identity_signed_by(node_id),
            timers,
        },
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        keyring,
        fault: Some(fault),
    }
}

/// Starts one node with its own registry and fault switch.
pub async fn start_node(
    node_id: NodeId,
    seeds: Vec<SocketAddr>,
    keyring: Keyring,
    timers: MeshTimers,
) -> Node {
    let registry = Registry::new();
    let metrics = MeshMetrics::register(&registry).expect("register mesh metrics");
    let fault = GossipFaultSwitch::new();
    let mesh = Mesh::start(
        config(node_id, seeds, keyring, timers, fault.clone()),
        metrics.clone(),
    )
    .await
    .expect("start mesh node");
    Node {
        addr: mesh.local_addr(),
        mesh: Some(mesh),
        node_id,
        fault,
        metrics,
        registry,
    }
}

impl Cluster {
    /// Starts `n` nodes with ids 1..=n; node 1 is everyone's seed.
    pub async fn start(n: usize, timers: MeshTimers) -> Self {
        let key = GossipKey::generate(KeyId(1));
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        for i in 0..n {
            let seeds = nodes
                .first()
                .map(|seed| vec![seed.addr])
                .unwrap_or_default();
            let node = start_node(
                NodeId(i as u64 + 1),
                seeds,
                Keyring::new(key.clone()),
                timers.clone(),
            )
            .await;
            nodes.push(node);
        }
        Self { nodes, key, timers }
    }

    /// Adds one more node, seeded by node 1.
    pub async fn add(&mut self) -> usize {
        let node_id = NodeId(self.nodes.len() as u64 + 1);
        let node = start_node(
            node_id,
            vec![self.nodes[0].addr],
            Keyring::new(self.key.clone()),
            self.timers.clone(),
        )
        .await;
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn mesh(&self, idx: usize) -> &Mesh {
        self.nodes[idx].mesh.as_ref().expect("node is running")
    }

    /// Indexes of running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].mesh.is_some())
            .collect()
    }

    /// Stops a node (it leaves silently: peers must detect it).
    pub async fn kill(&mut self, idx: usize) {
        if let Some(mesh) = self.nodes[idx].mesh.take() {
            mesh.shutdown().await;
        }
    }

    /// Cuts every link between `a` and `b`, both ways, at the transport.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for &i in a {
            self.nodes[i]
                .fault
                .block(b.iter().map(|&j| self.nodes[j].addr));
        }
        for &j in b {
            self.nodes[j]
                .fault
                .block(a.iter().map(|&i| self.nodes[i].addr));
        }
    }

    pub fn heal(&self) {
        for node in &self.nodes {
            node.fault.heal();
        }
    }

    /// What node `idx` sees now (from its watch, refreshed every gossip interval).
    pub fn view(&self, idx: usize) -> Vec<Member> {
        self.mesh(idx).watch().borrow().clone()
    }

    /// Whether node `observer` sees `subject` with `liveness`.
    pub fn sees(&self, observer: usize, subject: usize, liveness: Liveness) -> bool {
        let subject = self.nodes[subject].node_id;
        // Borrowed, not cloned: waits call this for every pair of a 100-node cluster, and
        // cloning every view each time would load the CPU the gossip being measured runs on.
        self.mesh(observer)
            .watch()
            .borrow()
            .iter()
            .any(|m| m.node_id == subject && m.liveness == liveness)
    }

    /// Whether every observer sees every subject with `liveness`.
    pub fn all_see(&self, observers: &[usize], subjects: &[usize], liveness: Liveness) -> bool {
        observers
            .iter()
            .all(|&o| subjects.iter().all(|&s| self.sees(o, s, liveness)))
    }

    /// Whether every observer knows every subject and calls none of them dead (alive or
    /// suspect): converged, whatever the failure detector's passing doubts.
    pub fn all_know_none_dead(&self, observers: &[usize], subjects: &[usize]) -> bool {
        observers.iter().all(|&o| {
            subjects.iter().all(|&s| {
                let subject = self.nodes[s].node_id;
                self.mesh(o)
                    .watch()
                    .borrow()
                    .iter()
                    .any(|m| m.node_id == subject && m.liveness != Liveness::Dead)
            })
        })
    }

    /// Whether no observer sees any subject with `liveness`.
    pub fn none_see(&self, observers: &[usize], subjects: &[usize], liveness: Liveness) -> bool {
        observers
            .iter()
            .all(|&o| subjects.iter().all(|&s| !self.sees(o, s, liveness)))
    }

    /// (alive, suspect, dead, missing) over every (observer, subject) pair of running nodes,
    /// and the drops of all running nodes by reason: what to print when a wait times out.
    pub fn census(&self) -> String {
        let running = self.running();
        let (mut alive, mut suspect, mut dead, mut missing) = (0, 0, 0, 0);
        for &o in &running {
            let view = self.view(o);
            for &s in &running {
                match view.iter().find(|m| m.node_id == self.nodes[s].node_id) {
                    Some(m) if m.liveness == Liveness::Alive => alive += 1,
                    Some(m) if m.liveness == Liveness::Suspect => suspect += 1,
                    Some(_) => dead += 1,
                    None => missing += 1,
                }
            }
        }
        let drops: Vec<String> = warren_mesh::DropReason::ALL
            .iter()
            .map(|&r| {
                let n: u64 = running
                    .iter()
                    .map(|&i| self.nodes[i].metrics.dropped(r))
                    .sum();
                (r, n)
            })
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let states: Vec<String> = ["accepted", "pending"]
            .into_iter()
            .chain(warren_mesh::Unverified::ALL.iter().map(|u| u.label()))
            .map(|outcome| {
                let n: u64 = running
                    .iter()
                    .map(|&i| self.nodes[i].metrics.member_states(outcome))
                    .sum();
                (outcome, n)
            })
            .filter(|(_, n)| *n > 0)
            .map(|(outcome, n)| format!("{outcome}={n}"))
            .collect();
        format!(
            "pairs alive={alive} suspect={suspect} dead={dead} missing={missing}; drops {}; states {}",
            drops.join(" "),
            states.join(" ")
        )
    }

    /// Sum of the datagram bytes every running node has sent.
    pub fn bytes_sent(&self) -> u64 {
        self.nodes.iter().map(|n| n.metrics.bytes_sent()).sum()
    }

    pub async fn shutdown(mut self) {
        for idx in 0..self.nodes.len() {
            self.kill(idx).await;
        }
    }
}

/// Polls `condition` every 20 ms until it holds; the time it took, or `None` after `timeout`.
pub async fn wait_until(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
