//! A node's view of the desired state, and the deltas that move it from one revision to the
//! next.
//!
//! Control sends an agent either a whole [`NodeView`] or a [`ViewDelta`]; the agent applies
//! deltas with [`NodeView::apply`], a pure function, then persists and acks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ReplicaId, Revision, ServiceName};
use crate::node::Node;
use crate::overlay::OwnMesh;
use crate::replica::Replica;
use crate::scrape::ScrapeTargets;
use crate::secret::SealedBlob;
use crate::service::{PortSpec, Service};

/// Everything one node needs to run its share of the cluster while cut off.
///
/// `replicas` is kept sorted by id, with unique ids; [`NodeView::apply`] maintains that, and
/// control builds snapshots that way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The revision this view reflects.
    pub revision: Revision,
    /// The cluster this view belongs to; never changes.
    pub cluster_id: [u8; 32],
    /// The node's own registry entry.
    pub node: Node,
    /// Specs of the services this node runs replicas of.
    pub services: BTreeMap<ServiceName, Service>,
    /// This node's placements.
    pub replicas: Vec<Replica>,
    /// Secrets the node's replicas reference, sealed for this node, by name.
    pub secrets: BTreeMap<String, SealedBlob>,
    /// The service endpoints this node's DNS answers with: every endpoint of a service with
    /// up to 16 of them; of a larger one, those in the node's site and 8 from elsewhere.
    pub catalogue: Vec<ServiceEndpoint>,
    /// QUIC addresses of the control nodes, so the agent can fail over.
    pub control_addrs: Vec<String>,
    /// Mesh peers (other nodes): gossip seeds, and WireGuard peers once they registered a key.
    pub peers: Vec<PeerInfo>,
    /// This node's own place in the WireGuard overlay, once the registry allocated it one.
    pub mesh: Option<OwnMesh>,
    /// The metrics endpoints of this node's site (its nodes, and the replicas there that
    /// declare one), so the agent serves Prometheus discovery for its site while cut off.
    pub scrape: ScrapeTargets,
}

/// One replica's address in the service catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// The service.
    pub service: ServiceName,
    /// The replica behind this endpoint.
    pub replica: ReplicaId,
    /// The node it runs on.
    pub node: NodeId,
    /// IP address to reach it at (the node's overlay address).
    pub address: String,
    /// Ports it serves.
    pub ports: Vec<PortSpec>,
}

/// Another node, as the mesh needs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its id.
    pub node_id: NodeId,
    /// Its name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its WireGuard overlay address, once assigned.
    pub overlay_ip: Option<String>,
    /// Its WireGuard public key, once registered. Authoritative: gossip hints are checked
    /// against this.
    pub wg_public_key: Option<[u8; 32]>,
    /// Its gossip endpoints (`host:port`): the mesh's seeds.
    pub endpoints: Vec<String>,
    /// The key it rolls to during a key rotation: accepted beside `wg_public_key` until the
    /// registry commits it. Authoritative, as `wg_public_key` is.
    pub wg_next_public_key: Option<[u8; 32]>,
    /// The UDP endpoint (`host:port`) its WireGuard interface listens on, as it registered it.
    /// A hint the data plane starts from; an authenticated packet from elsewhere moves it.
    pub wg_endpoint: Option<String>,
}

/// Changes from revision `from` to revision `to` of one node's view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDelta {
    /// The revision the delta applies to.
    pub from: Revision,
    /// The revision after it; greater than `from`.
    pub to: Revision,
    /// Applied in order.
    pub changes: Vec<ViewChange>,
}

impl ViewDelta {
    /// Whether the delta changes nothing and stays at its revision (`from == to`, no
    /// changes): what an older control node may send when only something outside the
    /// replicated state moved. Applying it is a no-op.
    pub fn is_noop(&self) -> bool {
        self.from == self.to && self.changes.is_empty()
    }
}

/// One change to a [`NodeView`]. New kinds are added at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewChange {
    /// Add or replace a service (keyed by its spec's name). Boxed: a spec is much larger than
    /// the other changes (postcard encodes a box as its content).
    UpsertService(Box<Service>),
    /// Remove a service; nothing happens if it is absent.
    RemoveService(ServiceName),
    /// Add or replace a replica (keyed by its id).
    UpsertReplica(Replica),
    /// Remove a replica; nothing happens if it is absent.
    RemoveReplica(ReplicaId),
    /// Add or replace a sealed secret.
    UpsertSecret(String, SealedBlob),
    /// Remove a secret; nothing happens if it is absent.
    RemoveSecret(String),
    /// Replace the service catalogue.
    SetCatalogue(Vec<ServiceEndpoint>),
    /// Replace the peer list.
    SetPeers(Vec<PeerInfo>),
    /// Replace the control addresses.
    SetControlAddrs(Vec<String>),
    /// Replace the node's own registry entry (same node id).
    SetNode(Node),
    /// Replace the node's own mesh settings.
    SetMesh(Option<OwnMesh>),
    /// Replace the site's metrics endpoints.
    SetScrape(ScrapeTargets),
    /// Add or replace one mesh peer (keyed by node id; the list stays sorted by it). Wire
    /// version 7: control sends an older agent the whole list ([`ViewChange::SetPeers`]).
    UpsertPeer(PeerInfo),
    /// Remove one mesh peer; nothing happens if it is absent. Wire version 7.
    RemovePeer(NodeId),
    /// Add or replace one catalogue endpoint (keyed by replica id; the catalogue stays sorted
    /// by it). Wire version 7: control sends an older agent the whole catalogue.
    UpsertEndpoint(ServiceEndpoint),
    /// Remove one catalogue endpoint; nothing happens if it is absent. Wire version 7.
    RemoveEndpoint(ReplicaId),
}

/// What an agent has cached, compactly: one hash per item of its view. Sent in the hello so
/// that control can answer with only what changed (a delta) instead of the whole view, from
/// whichever control node the agent reaches and with no per-agent history on control.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDigest {
    /// Revision of the cached view.
    pub revision: Revision,
    /// Hash of the node's own entry.
    pub node: u64,
    /// Hash of each service spec.
    pub services: BTreeMap<ServiceName, u64>,
    /// Hash of each replica.
    pub replicas: BTreeMap<ReplicaId, u64>,
    /// Hash of each sealed secret.
    pub secrets: BTreeMap<String, u64>,
    /// Hash of the catalogue.
    pub catalogue: u64,
    /// Hash of the peer list.
    pub peers: u64,
    /// Hash of the control addresses.
    pub control_addrs: u64,
    /// Hash of the node's own mesh settings.
    pub mesh: u64,
    /// Hash of the site's metrics endpoints.
    pub scrape: u64,
}

/// Why a delta was not applied. The view is unchanged in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The delta starts from another revision. The agent missed or repeated something: it
    /// reconnects with its revision and gets a fresh delta or a snapshot.
    #[error("delta from revision {from} does not apply to view at revision {current}")]
    WrongBase {
        /// The view's revision.
        current: Revision,
        /// The delta's `from`.
        from: Revision,
    },
    /// The delta goes back (`to < from`), or changes the view without moving forward
    /// (`to == from` with changes). Revisions never go back, and a view's content at one
    /// revision never changes. (`to == from` without changes is a no-op, not an error.)
    #[error("delta from revision {from} to {to} does not move forward")]
    NotForward {
        /// The delta's `from`.
        from: Revision,
        /// The delta's `to`.
        to: Revision,
    },
    /// A `SetNode` for a different node than the view's.
    #[error("delta sets node {got} in the view of node {expected}")]
    NodeMismatch {
        /// The view's node.
        expected: NodeId,
        /// The node in the delta.
        got: NodeId,
    },
}

impl ApplyError {
    /// A fixed label for metrics: `wrong_base`, `not_forward` or `node_mismatch`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApplyError::WrongBase { .. } => "wrong_base",
            ApplyError::NotForward { .. } => "not_forward",
            ApplyError::NodeMismatch { .. } => "node_mismatch",
        }
    }
}

impl NodeView {
    /// Applies `delta`, all of it or nothing, and moves the view to `delta.to`. A no-op delta
    /// ([`ViewDelta::is_noop`]) at the view's revision leaves it as it is.
    ///
    /// # Errors
    /// [`ApplyError::WrongBase`] when `delta.from` is not the view's revision,
    /// [`ApplyError::NotForward`] when `delta.to < delta.from`, or `delta.to == delta.from`
    /// with changes, and [`ApplyError::NodeMismatch`] when a change replaces the node with
    /// another node. The view is left unchanged.
    pub fn apply(&mut self, delta: &ViewDelta) -> Result<(), ApplyError> {
        if delta.from != self.revision {
            return Err(ApplyError::WrongBase {
                current: self.revision,
                from: delta.from,
            });
        }
        if delta.is_noop() {
            return Ok(());
        }
        if delta.to <= delta.from {
            return Err(ApplyError::NotForward {
                from: delta.from,
                to: delta.to,
            });
        }
        // Check everything before changing anything, so a refused delta leaves no trace.
        for change in &delta.changes {
            if let ViewChange::SetNode(node) = change
                && node.id != self.node.id
            {
                return Err(ApplyError::NodeMismatch {
                    expected: self.node.id,
                    got: node.id,
                });
            }
        }
        for change in &delta.changes {
            self.apply_change(change);
        }
        self.replicas.sort_by(|a, b| a.id.cmp(&b.id));
        self.revision = delta.to;
        Ok(())
    }

    fn apply_change(&mut self, change: &ViewChange) {
        match change {
            ViewChange::UpsertService(service) => {
                self.services
                    .insert(service.spec.name.clone(), Service::clone(service));
            }
            ViewChange::RemoveService(name) => {
                self.services.remove(name);
            }
            ViewChange::UpsertReplica(replica) => {
                match self.replicas.iter_mut().find(|r| r.id == replica.id) {
                    Some(existing) => *existing = replica.clone(),
                    None => self.replicas.push(replica.clone()),
                }
            }
            ViewChange::RemoveReplica(id) => self.replicas.retain(|r| r.id != *id),
            ViewChange::UpsertSecret(name, blob) => {
                self.secrets.insert(name.clone(), blob.clone());
            }
            ViewChange::RemoveSecret(name) => {
                self.secrets.remove(name);
            }
            ViewChange::SetCatalogue(catalogue) => self.catalogue.clone_from(catalogue),
            ViewChange::SetPeers(peers) => self.peers.clone_from(peers),
            ViewChange::SetControlAddrs(addrs) => self.control_addrs.clone_from(addrs),
            ViewChange::SetNode(node) => self.node.clone_from(node),
            ViewChange::SetMesh(mesh) => self.mesh.clone_from(mesh),
            ViewChange::SetScrape(scrape) => self.scrape.clone_from(scrape),
            ViewChange::UpsertPeer(peer) => {
                match self
                    .peers
                    .binary_search_by_key(&peer.node_id, |p| p.node_id)
                {
                    Ok(at) => self.peers[at] = peer.clone(),
                    Err(at) => self.peers.insert(at, peer.clone()),
                }
            }
            ViewChange::RemovePeer(node) => {
                if let Ok(at) = self.peers.binary_search_by_key(node, |p| p.node_id) {
                    self.peers.remove(at);
                }
            }
            ViewChange::UpsertEndpoint(endpoint) => {
                match self
                    .catalogue
                    .binary_search_by(|e| e.replica.cmp(&endpoint.replica))
                {
                    Ok(at) => self.catalogue[at] = endpoint.clone(),
                    Err(at) => self.catalogue.insert(at, endpoint.clone()),
                }
            }
            ViewChange::RemoveEndpoint(replica) => {
                if let Ok(at) = self.catalogue.binary_search_by(|e| e.replica.cmp(replica)) {
                    self.catalogue.remove(at);
                }
            }
        }
    }

    /// The delta that turns this view into `target`: `self.apply(&self.diff(target))` makes
    /// `self == target`, provided `target` is at a later revision, has the same node id and
    /// cluster id, and keeps its replicas sorted by id.
    pub fn diff(&self, target: &NodeView) -> ViewDelta {
        let mut changes = Vec::new();
        if self.node != target.node {
            changes.push(ViewChange::SetNode(target.node.clone()));
        }
        for (name, service) in &target.services {
            if self.services.get(name) != Some(service) {
                changes.push(ViewChange::UpsertService(Box::new(service.clone())));
            }
        }
        for name in self.services.keys() {
            if !target.services.contains_key(name) {
                changes.push(ViewChange::RemoveService(name.clone()));
            }
        }
        let current: BTreeMap<&ReplicaId, &Replica> =
            self.replicas.iter().map(|r| (&r.id, r)).collect();
        let wanted: BTreeMap<&ReplicaId, &Replica> =
            target.replicas.iter().map(|r| (&r.id, r)).collect();
        for (id, replica) in &wanted {
            if current.get(id) != Some(replica) {
                changes.push(ViewChange::UpsertReplica((*replica).clone()));
            }
        }
        for id in current.keys() {
            if !wanted.contains_key(id) {
                changes.push(ViewChange::RemoveReplica((*id).clone()));
            }
        }
        for (name, blob) in &target.secrets {
            if self.secrets.get(name) != Some(blob) {
                changes.push(ViewChange::UpsertSecret(name.clone(), blob.clone()));
            }
        }
        for name in self.secrets.keys() {
            if !target.secrets.contains_key(name) {
                changes.push(ViewChange::RemoveSecret(name.clone()));
            }
        }
        if self.catalogue != target.catalogue {
            changes.push(ViewChange::SetCatalogue(target.catalogue.clone()));
        }
        if self.peers != target.peers {
            changes.push(ViewChange::SetPeers(target.peers.clone()));
        }
        if self.control_addrs != target.control_addrs {
            changes.push(ViewChange::SetControlAddrs(target.control_addrs.clone()));
        }
        if self.mesh != target.mesh {
            changes.push(ViewChange::SetMesh(target.mesh.clone()));
        }
        if self.scrape != target.scrape {
            changes.push(ViewChange::SetScrape(target.scrape.clone()));
        }
        ViewDelta {
            from: self.revision,
            to: target.revision,
            changes,
        }
    }

    /// This view's [`ViewDigest`].
    pub fn digest(&self) -> ViewDigest {
        use crate::service::stable_hash;
        ViewDigest {
            revision: self.revision,
            node: stable_hash(&self.node),
            services: self
                .services
                .iter()
                .map(|(name, s)| (name.clone(), stable_hash(s)))
                .collect(),
            replicas: self
                .replicas
                .iter()
                .map(|r| (r.id.clone(), stable_hash(r)))
                .collect(),
            secrets: self
                .secrets
                .iter()
                .map(|(name, blob)| (name.clone(), stable_hash(blob)))
                .collect(),
            catalogue: stable_hash(&self.catalogue),
            peers: stable_hash(&self.peers),
            control_addrs: stable_hash(&self.control_addrs),
            mesh: stable_hash(&self.mesh),
            scrape: stable_hash(&self.scrape),
        }
    }

    /// The delta from a view with digest `have` to this one: applied to the view `have` was
    /// made from, it gives this view. Its `from` is `have.revision`; it moves forward only if
    /// this view is at a later revision.
    pub fn delta_since(&self, have: &ViewDigest) -> ViewDelta {
        use crate::service::stable_hash;
        let mut changes = Vec::new();
        if stable_hash(&self.node) != have.node {
            changes.push(ViewChange::SetNode(self.node.clone()));
        }
        for (name, service) in &self.services {
            if have.services.get(name) != Some(&stable_hash(service)) {
                changes.push(ViewChange::UpsertService(Box::new(service.clone())));
            }
        }
        for name in have.services.keys() {
            if !self.services.contains_key(name) {
                changes.push(ViewChange::RemoveService(name.clone()));
            }
        }
        for replica in &self.replicas {
            if have.replicas.get(&replica.id) != Some(&stable_hash(replica)) {
                changes.push(ViewChange::UpsertReplica(replica.clone()));
            }
        }
        for id in have.replicas.keys() {
            if self.replica(id).is_none() {
                changes.push(ViewChange::RemoveReplica(id.clone()));
            }
        }
        for (name, blob) in &self.secrets {
            if have.secrets.get(name) != Some(&stable_hash(blob)) {
                changes.push(ViewChange::UpsertSecret(name.clone(), blob.clone()));
            }
        }
        for name in have.secrets.keys() {
            if !self.secrets.contains_key(name) {
                changes.push(ViewChange::RemoveSecret(name.clone()));
            }
        }
        if stable_hash(&self.catalogue) != have.catalogue {
            changes.push(ViewChange::SetCatalogue(self.catalogue.clone()));
        }
        if stable_hash(&self.peers) != have.peers {
            changes.push(ViewChange::SetPeers(self.peers.clone()));
        }
        if stable_hash(&self.control_addrs) != have.control_addrs {
            changes.push(ViewChange::SetControlAddrs(self.control_addrs.clone()));
        }
        if stable_hash(&self.mesh) != have.mesh {
            changes.push(ViewChange::SetMesh(self.mesh.clone()));
        }
        if stable_hash(&self.scrape) != have.scrape {
            changes.push(ViewChange::SetScrape(self.scrape.clone()));
        }
        ViewDelta {
            from: have.revision,
            to: self.revision,
            changes,
        }
    }

    /// The replica with this id, if the node holds it.
    pub fn replica(&self, id: &ReplicaId) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.id == *id)
    }
}
