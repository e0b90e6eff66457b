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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use warren_api::scrape::ScrapeTargets;
use warren_api::service::{stable_hash, stable_hash_of_encoded_list};
use warren_api::wire::{
    EncodeError, PeerInfo, ServiceEndpoint, ViewChange, encode, encode_list_change_from_parts,
};
use warren_api::{NodeId, NodeView, Replica, ReplicaId, Revision};

use crate::peer_scope::{FULL_MESH_PEERS, PeerScope};
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
    /// node id, with each its postcard bytes; a node's view holds those its [`PeerScope`]
    /// gives it (all but itself in a full mesh).
    peers: Vec<(PeerInfo, Vec<u8>)>,
    scope: PeerScope,
    /// Beyond a full mesh: what every node of each site holds of `peers` (indices, in order),
    /// and each site's own nodes among them.
    site_peers: HashMap<String, Vec<usize>>,
    site_members: HashMap<String, Vec<usize>>,
    /// Where each peer is in `peers`.
    index_of: HashMap<NodeId, usize>,
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
    pub fn build(state: &ClusterState, full_mesh_up_to: usize) -> Result<Self, EncodeError> {
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
        let catalogues: HashMap<String, SiteCatalogue> =
            crate::catalogue::scoped_by_site(state, &all)
                .into_iter()
                .map(|(site, entries)| {
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
        let scope = PeerScope::new(
            state,
            peers.len(),
            &all,
            catalogues
                .iter()
                .map(|(site, c)| (site.as_str(), c.entries.as_slice())),
            full_mesh_up_to,
        );
        let index_of: HashMap<NodeId, usize> = peers
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (p.node_id, i))
            .collect();
        let (site_peers, site_members) =
            peers_by_site(&scope, &peers, &index_of, catalogues.keys());
        Ok(FleetParts {
            revision: state.revision,
            endpoints,
            catalogues,
            peers,
            scope,
            site_peers,
            site_members,
            index_of,
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

    /// `node`'s peers (it is in `site`): indices into `peers`, in order.
    fn peers_of(&self, node: NodeId, site: &str) -> Vec<usize> {
        let mut list: Vec<usize> = if self.scope.is_full() || self.scope.is_control(node) {
            (0..self.peers.len()).collect()
        } else if let Some(held) = self.site_peers.get(site) {
            held.clone()
        } else {
            (0..self.peers.len())
                .filter(|&i| self.scope.site_holds(site, &self.peers[i].0))
                .collect()
        };
        let mut more = false;
        for other in self.scope.sites_naming(node).filter(|s| *s != site) {
            list.extend(self.site_members.get(other).into_iter().flatten());
            more = true;
        }
        if more {
            list.sort_unstable();
            list.dedup();
        }
        list.retain(|&i| self.peers[i].0.node_id != node);
        list
    }

    /// The hash of `node`'s peer list, as the agent's digest has it.
    fn peers_hash(&self, node: NodeId, site: &str) -> u64 {
        let list = self.peers_of(node, site);
        let items = list.iter().map(|&i| self.peers[i].1.as_slice());
        stable_hash_of_encoded_list(list.len(), items)
    }

    /// `SetPeers` with `node`'s whole peer list, encoded.
    fn set_peers(&self, node: NodeId, site: &str) -> Result<Vec<u8>, EncodeError> {
        let list = self.peers_of(node, site);
        let items = list.iter().map(|&i| self.peers[i].1.as_slice());
        encode_list_change_from_parts(&ViewChange::SetPeers(Vec::new()), list.len(), items)
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
        own.peers = self
            .peers_of(own.node.id, &own.node.site)
            .into_iter()
            .map(|i| self.peers[i].0.clone())
            .collect();
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
        if have.peers != self.peers_hash(node, site) {
            changes.push(self.set_peers(node, site)?);
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

/// Beyond a full mesh, what every node of each of `sites` holds of `peers` (its own nodes,
/// the nodes its catalogue names, the control nodes) and each site's own nodes among them
/// (indices into `peers`, in order); empty in a full mesh. As long as those lists, not
/// sites × peers.
fn peers_by_site<'a>(
    scope: &PeerScope,
    peers: &[(PeerInfo, Vec<u8>)],
    index_of: &HashMap<NodeId, usize>,
    sites: impl Iterator<Item = &'a String>,
) -> (HashMap<String, Vec<usize>>, HashMap<String, Vec<usize>>) {
    let (mut held, mut members) = (HashMap::new(), HashMap::<String, Vec<usize>>::new());
    if scope.is_full() {
        return (held, members);
    }
    for (i, (peer, _)) in peers.iter().enumerate() {
        members.entry(peer.site.clone()).or_default().push(i);
    }
    let controls: Vec<usize> = scope
        .controls()
        .filter_map(|id| index_of.get(&id).copied())
        .collect();
    for site in sites {
        let mut list = members.get(site).cloned().unwrap_or_default();
        list.extend(
            scope
                .named_by(site)
                .filter_map(|id| index_of.get(&id).copied()),
        );
        list.extend(&controls);
        list.sort_unstable();
        list.dedup();
        held.insert(site.clone(), list);
    }
    (held, members)
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

/// What changed in the shared parts from one revision to another: each change encoded once.
#[derive(Debug, Default)]
pub(crate) struct FleetDelta {
    /// Each site's `UpsertEndpoint` / `RemoveEndpoint`, in order, encoded.
    catalogue: HashMap<String, Vec<Vec<u8>>>,
    /// Whether who holds whom is worked out alike at both revisions ([`PeerScope`]): then a
    /// node's peer changes are among `peers` alone.
    same_scope: bool,
    /// The peers that are new, changed or gone, by node id: `UpsertPeer` (with the peer's
    /// place in the later parts) or `RemovePeer` (with its place in the earlier), encoded.
    peers: Vec<PeerChange>,
}

#[derive(Debug)]
enum PeerChange {
    Upsert { index: usize, bytes: Vec<u8> },
    Remove { index: usize, bytes: Vec<u8> },
}

impl FleetDelta {
    fn between(from: &FleetParts, to: &FleetParts) -> Result<Self, EncodeError> {
        let mut delta = FleetDelta::default();
        for site in to.catalogues.keys() {
            let changes = catalogue_changes(from, to, site)?;
            delta.catalogue.insert(site.clone(), changes);
        }
        delta.same_scope = from.scope == to.scope;
        for (index, (peer, bytes)) in to.peers.iter().enumerate() {
            let before = from.index_of.get(&peer.node_id);
            if before.is_none_or(|&i| from.peers[i].1 != *bytes) {
                let bytes = encode(&ViewChange::UpsertPeer(peer.clone()))?;
                delta.peers.push(PeerChange::Upsert { index, bytes });
            }
        }
        for (index, (peer, _)) in from.peers.iter().enumerate() {
            if !to.index_of.contains_key(&peer.node_id) {
                let bytes = encode(&ViewChange::RemovePeer(peer.node_id))?;
                delta.peers.push(PeerChange::Remove { index, bytes });
            }
        }
        Ok(delta)
    }

    /// `node`'s peer changes (it is in `site` at both revisions) when the scope is the same at
    /// both: a changed peer it holds now is upserted, a gone one it held removed. As long as
    /// the changes, not the node's peers.
    fn peer_changes(
        &self,
        from: &FleetParts,
        to: &FleetParts,
        node: NodeId,
        site: &str,
    ) -> Result<Vec<Vec<u8>>, EncodeError> {
        let mut changes = Vec::new();
        for change in &self.peers {
            match change {
                PeerChange::Upsert { index, bytes } => {
                    if to.scope.holds(node, site, &to.peers[*index].0) {
                        changes.push(bytes.clone());
                    } else if let Some(&i) = from.index_of.get(&to.peers[*index].0.node_id)
                        && from.scope.holds(node, site, &from.peers[i].0)
                    {
                        // Its site moved out of this node's scope.
                        let id = to.peers[*index].0.node_id;
                        changes.push(encode(&ViewChange::RemovePeer(id))?);
                    }
                }
                PeerChange::Remove { index, bytes } => {
                    if from.scope.holds(node, site, &from.peers[*index].0) {
                        changes.push(bytes.clone());
                    }
                }
            }
        }
        Ok(changes)
    }
}

/// The `UpsertPeer` / `RemovePeer` changes that take `node` from its peers in `from` (when it
/// was in `old_site`) to those in `to` (in `site`): peers new to it or changed, then peers it
/// no longer holds. Each list is as long as the node's scope, not the fleet's.
fn peer_changes(
    from: &FleetParts,
    to: &FleetParts,
    node: NodeId,
    (old_site, site): (&str, &str),
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let old: HashMap<NodeId, &[u8]> = from
        .peers_of(node, old_site)
        .into_iter()
        .map(|i| (from.peers[i].0.node_id, from.peers[i].1.as_slice()))
        .collect();
    let new = to.peers_of(node, site);
    let mut changes = Vec::new();
    for &i in &new {
        let (peer, bytes) = &to.peers[i];
        if old
            .get(&peer.node_id)
            .is_none_or(|o| *o != bytes.as_slice())
        {
            changes.push(encode(&ViewChange::UpsertPeer(peer.clone()))?);
        }
    }
    let kept: HashSet<NodeId> = new.iter().map(|&i| to.peers[i].0.node_id).collect();
    let mut gone: Vec<NodeId> = old
        .keys()
        .filter(|id| !kept.contains(id))
        .copied()
        .collect();
    gone.sort_unstable();
    for id in gone {
        changes.push(encode(&ViewChange::RemovePeer(id))?);
    }
    Ok(changes)
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
        let peers = if delta.same_scope && old_site == site {
            delta.peer_changes(from, to, node, site)?
        } else {
            peer_changes(from, to, node, sites)?
        };
        match speaks {
            Speaks::Entries => {
                changes.extend(catalogue.iter().cloned());
                changes.extend(peers);
            }
            Speaks::WholeLists => {
                if !catalogue.is_empty() {
                    changes.push(to.set_catalogue(site)?);
                }
                if !peers.is_empty() {
                    changes.push(to.set_peers(node, site)?);
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
#[derive(Debug)]
pub(crate) struct FleetCache {
    latest: Mutex<Option<Arc<FleetParts>>>,
    deltas: Mutex<VecDeque<KeptDelta>>,
    /// Up to how many peers the fleet is a full mesh ([`FULL_MESH_PEERS`]; tests scope
    /// smaller fleets).
    full_mesh_up_to: usize,
}

impl Default for FleetCache {
    fn default() -> Self {
        FleetCache::full_mesh_up_to(FULL_MESH_PEERS)
    }
}

/// A delta between the parts of two revisions, `(from, to)`.
#[derive(Debug)]
struct KeptDelta {
    between: (Revision, Revision),
    delta: Arc<FleetDelta>,
}

impl FleetCache {
    /// A cache whose views hold every peer up to `peers` peers in the fleet, scoped beyond.
    pub fn full_mesh_up_to(peers: usize) -> Self {
        FleetCache {
            latest: Mutex::default(),
            deltas: Mutex::default(),
            full_mesh_up_to: peers,
        }
    }

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
        let parts = Arc::new(FleetParts::build(state, self.full_mesh_up_to)?);
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
