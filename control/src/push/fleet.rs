//! What every agent's view shares at one revision — the service catalogue, the mesh peers,
//! each site's scrape targets — and each node's replicas, built once per revision for all push
//! sessions, each item encoded once ([`FleetParts`]); and what changed in them between two
//! revisions, worked out once per pair of revisions for every session that moves an agent
//! between them ([`FleetDelta`]). Without it each session built its agent's whole view on every
//! change (the catalogue and the peers are as long as the fleet): O(fleet²) work per change.
//!
//! A session keeps the node's own part of the view (its entry, services, replicas, secrets,
//! mesh settings, control addresses: small) and the [`FleetParts`] it last sent, and builds
//! each message from the own part's diff plus bytes encoded once here.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use warren_api::scrape::ScrapeTargets;
use warren_api::service::{stable_hash, stable_hash_of_encoded_list};
use warren_api::wire::{
    EncodeError, PeerInfo, ServiceEndpoint, ViewChange, encode, encode_list_change_from_parts,
};
use warren_api::{NodeId, NodeView, Replica, ReplicaId, Revision};

use crate::state::ClusterState;

/// The shared parts of the views at one revision.
#[derive(Debug)]
pub(crate) struct FleetParts {
    pub revision: Revision,
    /// Every endpoint (a [`crate::catalogue::catalogue`]), sorted by replica id, each encoded.
    endpoints: Vec<Endpoint>,
    /// What each site's nodes hold of them ([`crate::catalogue::scoped_to_site`]).
    catalogues: HashMap<String, SiteCatalogue>,
    /// Every node that is a peer of the others (see [`crate::catalogue::peers`]), sorted by
    /// node id; a node's view holds all but itself. With each its postcard bytes.
    peers: Vec<(PeerInfo, Vec<u8>)>,
    /// Each site's scrape targets, their hash and `SetScrape` encoded.
    scrape: HashMap<String, SiteScrape>,
    /// Each node's running replicas, sorted by id.
    replicas: HashMap<NodeId, Vec<Replica>>,
}

/// One catalogue endpoint, encoded as an `UpsertEndpoint` change and bare (a list item).
#[derive(Debug)]
struct Endpoint {
    entry: ServiceEndpoint,
    upsert: Vec<u8>,
    bare: Vec<u8>,
}

/// A site's catalogue: indices into [`FleetParts::endpoints`], in order, the hash of the list
/// and, once a session needs it, the whole list as a `SetCatalogue` change.
#[derive(Debug)]
struct SiteCatalogue {
    entries: Vec<usize>,
    hash: u64,
    set: std::sync::OnceLock<Vec<u8>>,
}

#[derive(Debug)]
struct SiteScrape {
    targets: ScrapeTargets,
    hash: u64,
    set: Vec<u8>,
}

impl FleetParts {
    /// Builds the parts of `state`'s current revision.
    ///
    /// # Errors
    /// A part over the message size limit.
    pub fn build(state: &ClusterState) -> Result<Self, EncodeError> {
        let all = crate::catalogue::catalogue(state);
        let endpoints = all
            .iter()
            .map(|e| {
                Ok(Endpoint {
                    upsert: encode(&ViewChange::UpsertEndpoint(e.clone()))?,
                    bare: encode(e)?,
                    entry: e.clone(),
                })
            })
            .collect::<Result<Vec<_>, EncodeError>>()?;
        let node_of = |id: NodeId| {
            state
                .nodes
                .get(&id)
                .map(|n| (n.site.as_str(), n.state == warren_api::NodeState::Ready))
        };
        let sites: BTreeSet<&str> = state.nodes.values().map(|n| n.site.as_str()).collect();
        let catalogues = sites
            .into_iter()
            .map(|site| {
                let entries = crate::catalogue::scoped_to_site(&all, node_of, site);
                let items = entries.iter().map(|&i| endpoints[i].bare.as_slice());
                let hash = stable_hash_of_encoded_list(entries.len(), items);
                let catalogue = SiteCatalogue {
                    entries,
                    hash,
                    set: std::sync::OnceLock::new(),
                };
                (site.to_owned(), catalogue)
            })
            .collect();
        let peers = crate::catalogue::peers(state, NodeId(0))
            .into_iter()
            .map(|p| {
                let bytes = encode(&p)?;
                Ok((p, bytes))
            })
            .collect::<Result<Vec<_>, EncodeError>>()?;
        Ok(FleetParts {
            revision: state.revision,
            endpoints,
            catalogues,
            peers,
            scrape: scrape_by_site(state)?,
            replicas: replicas_by_node(state),
        })
    }

    /// What nodes of `site` hold of the catalogue: indices into `endpoints`.
    fn catalogue_of(&self, site: &str) -> &[usize] {
        self.catalogues
            .get(site)
            .map_or(&[], |c| c.entries.as_slice())
    }

    /// The hash of `site`'s catalogue, as its agents' digests have it.
    fn catalogue_hash(&self, site: &str) -> u64 {
        match self.catalogues.get(site) {
            Some(c) => c.hash,
            None => stable_hash_of_encoded_list(0, std::iter::empty()),
        }
    }

    /// `SetCatalogue` with `site`'s whole catalogue, encoded (once per site and revision).
    fn set_catalogue(&self, site: &str) -> Result<Vec<u8>, EncodeError> {
        let encode_site = || {
            let entries = self.catalogue_of(site);
            encode_list_change_from_parts(
                &ViewChange::SetCatalogue(Vec::new()),
                entries.len(),
                entries.iter().map(|&i| self.endpoints[i].bare.as_slice()),
            )
        };
        match self.catalogues.get(site) {
            Some(c) => {
                if let Some(set) = c.set.get() {
                    return Ok(set.clone());
                }
                let set = encode_site()?;
                Ok(c.set.get_or_init(|| set).clone())
            }
            None => encode_site(),
        }
    }

    /// `node`'s running replicas, sorted by id.
    pub fn replicas_of(&self, node: NodeId) -> &[Replica] {
        self.replicas.get(&node).map_or(&[], Vec::as_slice)
    }

    /// `node`'s peers: every peer but itself.
    fn peers_of(&self, node: NodeId) -> impl Iterator<Item = &(PeerInfo, Vec<u8>)> {
        self.peers.iter().filter(move |(p, _)| p.node_id != node)
    }

    fn peer_count(&self, node: NodeId) -> usize {
        let own = self
            .peers
            .binary_search_by_key(&node, |(p, _)| p.node_id)
            .is_ok();
        self.peers.len() - usize::from(own)
    }

    /// The hash of `node`'s peer list, as the agent's digest has it.
    fn peers_hash(&self, node: NodeId) -> u64 {
        let items = self.peers_of(node).map(|(_, b)| b.as_slice());
        stable_hash_of_encoded_list(self.peer_count(node), items)
    }

    /// `SetPeers` with `node`'s whole peer list, encoded.
    fn set_peers(&self, node: NodeId) -> Result<Vec<u8>, EncodeError> {
        let items = self.peers_of(node).map(|(_, b)| b.as_slice());
        encode_list_change_from_parts(
            &ViewChange::SetPeers(Vec::new()),
            self.peer_count(node),
            items,
        )
    }

    fn site(&self, site: &str) -> Option<&SiteScrape> {
        self.scrape.get(site)
    }

    /// `own` (a node's own part, with an empty catalogue, peers and scrape) made whole.
    pub fn complete(&self, mut own: NodeView) -> NodeView {
        own.catalogue = self
            .catalogue_of(&own.node.site)
            .iter()
            .map(|&i| self.endpoints[i].entry.clone())
            .collect();
        own.peers = self.peers_of(own.node.id).map(|(p, _)| p.clone()).collect();
        own.scrape = self
            .site(&own.node.site)
            .map(|s| s.targets.clone())
            .unwrap_or_default();
        own
    }

    /// The encoded changes that bring an agent whose digest says `have` (catalogue, peers and
    /// scrape hashes) to these parts, for `node` in `site`; each whole.
    pub fn changes_since_digest(
        &self,
        node: NodeId,
        site: &str,
        have: &warren_api::wire::ViewDigest,
    ) -> Result<Vec<Vec<u8>>, EncodeError> {
        let mut changes = Vec::new();
        if have.catalogue != self.catalogue_hash(site) {
            changes.push(self.set_catalogue(site)?);
        }
        if have.peers != self.peers_hash(node) {
            changes.push(self.set_peers(node)?);
        }
        let scrape_hash = self.site(site).map_or(empty_scrape_hash(), |s| s.hash);
        if have.scrape != scrape_hash {
            changes.push(self.set_scrape(site)?);
        }
        Ok(changes)
    }

    fn set_scrape(&self, site: &str) -> Result<Vec<u8>, EncodeError> {
        match self.site(site) {
            Some(s) => Ok(s.set.clone()),
            None => encode(&ViewChange::SetScrape(ScrapeTargets::default())),
        }
    }
}

fn empty_scrape_hash() -> u64 {
    stable_hash(&ScrapeTargets::default())
}

fn scrape_by_site(state: &ClusterState) -> Result<HashMap<String, SiteScrape>, EncodeError> {
    let all = crate::catalogue::scrape_targets(state, None);
    let mut by_site: BTreeMap<String, ScrapeTargets> = BTreeMap::new();
    for node in &state.nodes {
        by_site.entry(node.1.site.clone()).or_default();
    }
    for target in all.nodes {
        let site = by_site.entry(target.site.clone()).or_default();
        site.nodes.push(target);
    }
    for target in all.workloads {
        let site = by_site.entry(target.site.clone()).or_default();
        site.workloads.push(target);
    }
    by_site
        .into_iter()
        .map(|(site, targets)| {
            let hash = stable_hash(&targets);
            let set = encode(&ViewChange::SetScrape(targets.clone()))?;
            Ok((site, SiteScrape { targets, hash, set }))
        })
        .collect()
}

fn replicas_by_node(state: &ClusterState) -> HashMap<NodeId, Vec<Replica>> {
    let mut by_node: HashMap<NodeId, Vec<Replica>> = HashMap::new();
    // `state.replicas` is sorted by id, so each node's list is too.
    for replica in state.replicas.values() {
        if replica.desired == warren_api::DesiredState::Running {
            by_node
                .entry(replica.node)
                .or_default()
                .push(replica.clone());
        }
    }
    by_node
}

/// What changed in the shared parts from one revision to another: each catalogue and peer
/// change encoded once.
#[derive(Debug, Default)]
pub(crate) struct FleetDelta {
    /// Each site's `UpsertEndpoint` / `RemoveEndpoint`, in order, encoded.
    catalogue: HashMap<String, Vec<Vec<u8>>>,
    /// `UpsertPeer` / `RemovePeer` by the node they are about, encoded.
    peers: Vec<(NodeId, Vec<u8>)>,
}

impl FleetDelta {
    fn between(from: &FleetParts, to: &FleetParts) -> Result<Self, EncodeError> {
        let mut delta = FleetDelta::default();
        for site in to.catalogues.keys() {
            let changes = catalogue_changes(from, to, site)?;
            delta.catalogue.insert(site.clone(), changes);
        }
        let old: BTreeMap<NodeId, &(PeerInfo, Vec<u8>)> =
            from.peers.iter().map(|p| (p.0.node_id, p)).collect();
        for (peer, bytes) in &to.peers {
            if old.get(&peer.node_id).is_none_or(|o| o.1 != *bytes) {
                let change = encode(&ViewChange::UpsertPeer(peer.clone()))?;
                delta.peers.push((peer.node_id, change));
            }
        }
        let new: BTreeMap<NodeId, ()> = to.peers.iter().map(|p| (p.0.node_id, ())).collect();
        for node in old.keys() {
            if !new.contains_key(node) {
                delta
                    .peers
                    .push((*node, encode(&ViewChange::RemovePeer(*node))?));
            }
        }
        Ok(delta)
    }
}

/// The entry changes that take `site`'s catalogue from `from` to `to`.
fn catalogue_changes(
    from: &FleetParts,
    to: &FleetParts,
    site: &str,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let listed = |parts: &'_ FleetParts| -> BTreeMap<ReplicaId, usize> {
        parts
            .catalogue_of(site)
            .iter()
            .map(|&i| (parts.endpoints[i].entry.replica.clone(), i))
            .collect()
    };
    let (old, new) = (listed(from), listed(to));
    let mut changes = Vec::new();
    for (id, &index) in &new {
        let entry = &to.endpoints[index];
        if old
            .get(id)
            .is_none_or(|&o| from.endpoints[o].upsert != entry.upsert)
        {
            changes.push(entry.upsert.clone());
        }
    }
    for id in old.keys() {
        if !new.contains_key(id) {
            changes.push(encode(&ViewChange::RemoveEndpoint(id.clone()))?);
        }
    }
    Ok(changes)
}

/// How a session tells an agent what changed in the shared parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Speaks {
    /// Entry by entry (wire version 7).
    Entries,
    /// Whole lists (an agent of wire version 6).
    WholeLists,
}

/// The encoded changes that take `node` (in `site`, formerly in `old_site`) from `from` to
/// `to`.
pub(crate) fn fleet_changes(
    cache: &FleetCache,
    from: &Arc<FleetParts>,
    to: &Arc<FleetParts>,
    node: NodeId,
    sites: (&str, &str),
    speaks: Speaks,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let (old_site, site) = sites;
    let mut changes = Vec::new();
    if old_site != site {
        changes.push(to.set_catalogue(site)?);
    }
    if !Arc::ptr_eq(from, to) && from.revision != to.revision {
        let delta = cache.delta(from, to)?;
        let catalogue = delta.catalogue.get(site).map_or(&[][..], Vec::as_slice);
        let catalogue = if old_site == site { catalogue } else { &[] };
        let peers: Vec<&Vec<u8>> = delta
            .peers
            .iter()
            .filter(|(about, _)| *about != node)
            .map(|(_, bytes)| bytes)
            .collect();
        match speaks {
            Speaks::Entries => {
                changes.extend(catalogue.iter().cloned());
                changes.extend(peers.into_iter().cloned());
            }
            Speaks::WholeLists => {
                if !catalogue.is_empty() {
                    changes.push(to.set_catalogue(site)?);
                }
                if !peers.is_empty() {
                    changes.push(to.set_peers(node)?);
                }
            }
        }
    }
    let scrape_of = |parts: &FleetParts, site: &str| parts.site(site).map(|s| s.hash);
    if old_site != site || scrape_of(from, old_site) != scrape_of(to, site) {
        changes.push(to.set_scrape(site)?);
    }
    Ok(changes)
}

/// How many deltas between pairs of revisions are kept: sessions move between the same few
/// pairs (most agents are at the previous revision when a change lands).
const DELTAS_KEPT: usize = 16;

/// The parts of the latest revision, and the deltas between recent pairs of revisions.
#[derive(Debug, Default)]
pub(crate) struct FleetCache {
    latest: Mutex<Option<Arc<FleetParts>>>,
    deltas: Mutex<VecDeque<KeptDelta>>,
}

/// A delta between the parts of two revisions, `(from, to)`.
#[derive(Debug)]
struct KeptDelta {
    between: (Revision, Revision),
    delta: Arc<FleetDelta>,
}

impl FleetCache {
    /// The parts at `state`'s revision: built by the first session that asks, shared by the
    /// others.
    ///
    /// # Errors
    /// A part over the message size limit.
    pub fn parts(&self, state: &ClusterState) -> Result<Arc<FleetParts>, EncodeError> {
        let mut latest = self.latest.lock().expect("not poisoned");
        if let Some(parts) = latest.as_ref()
            && parts.revision == state.revision
        {
            return Ok(parts.clone());
        }
        let parts = Arc::new(FleetParts::build(state)?);
        *latest = Some(parts.clone());
        Ok(parts)
    }

    fn delta(&self, from: &FleetParts, to: &FleetParts) -> Result<Arc<FleetDelta>, EncodeError> {
        let key = (from.revision, to.revision);
        let mut deltas = self.deltas.lock().expect("not poisoned");
        if let Some(kept) = deltas.iter().find(|k| k.between == key) {
            return Ok(kept.delta.clone());
        }
        let delta = Arc::new(FleetDelta::between(from, to)?);
        if deltas.len() == DELTAS_KEPT {
            deltas.pop_front();
        }
        deltas.push_back(KeptDelta {
            between: key,
            delta: delta.clone(),
        });
        Ok(delta)
    }
}
