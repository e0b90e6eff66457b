//! Which nodes a node holds as peers (its WireGuard tunnels, the names and overlay addresses
//! its DNS answers with, its gossip seeds). In a fleet of up to [`FULL_MESH_PEERS`] nodes that
//! is every other node: a full mesh. Beyond, holding every node made each view as long as the
//! fleet (N peers sent to each of N agents), so a node holds:
//!
//! - the nodes of its own site;
//! - the nodes its site's catalogue names (every replica its workloads can reach by name,
//!   [`crate::catalogue::scoped_to_site`]);
//! - the nodes of every site whose catalogue names it (the other end of those tunnels: a
//!   WireGuard peer answers only keys it holds, so the relation must go both ways);
//! - the control nodes, which hold every node (an operator at the centre reaches every box).
//!
//! The relation is symmetric: `a` holds `b` exactly when `b` holds `a`. A pure function of the
//! state, so every control node scopes alike.

use std::collections::{BTreeSet, HashMap, HashSet};

use warren_api::wire::{PeerInfo, ServiceEndpoint};
use warren_api::{NodeId, NodeRole};

use crate::state::ClusterState;

/// Up to this many peers in the fleet, every node holds every other: a full mesh.
pub const FULL_MESH_PEERS: usize = 256;

/// Who holds whom, at one revision. See the module's text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerScope {
    /// The fleet is small enough for a full mesh.
    full: bool,
    /// The nodes each site's catalogue names.
    named: HashMap<String, HashSet<NodeId>>,
    /// The other sites whose catalogues name each node.
    naming: HashMap<NodeId, BTreeSet<String>>,
    controls: HashSet<NodeId>,
}

impl PeerScope {
    /// The scope of `state`, with `peers` nodes eligible as peers and each site's catalogue
    /// given as indices into `endpoints` (a [`crate::catalogue::catalogue`]); a full mesh up to
    /// `full_mesh_up_to` peers.
    pub fn new<'a>(
        state: &ClusterState,
        peers: usize,
        endpoints: &[ServiceEndpoint],
        catalogues: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        full_mesh_up_to: usize,
    ) -> Self {
        if peers <= full_mesh_up_to {
            return PeerScope {
                full: true,
                ..PeerScope::default()
            };
        }
        let mut scope = PeerScope::default();
        for (site, entries) in catalogues {
            let named: HashSet<NodeId> = entries.iter().map(|&i| endpoints[i].node).collect();
            for node in &named {
                if state.nodes.get(node).is_some_and(|n| n.site != site) {
                    scope
                        .naming
                        .entry(*node)
                        .or_default()
                        .insert(site.to_owned());
                }
            }
            scope.named.insert(site.to_owned(), named);
        }
        scope.controls = state
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Control)
            .map(|n| n.id)
            .collect();
        scope
    }

    /// Whether the fleet is a full mesh.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Whether `node` is a control node (it holds every node).
    pub fn is_control(&self, node: NodeId) -> bool {
        self.controls.contains(&node)
    }

    /// The nodes `site`'s catalogue names.
    pub fn named_by(&self, site: &str) -> impl Iterator<Item = NodeId> + '_ {
        self.named.get(site).into_iter().flatten().copied()
    }

    /// The control nodes.
    pub fn controls(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.controls.iter().copied()
    }

    /// Whether every node of `site` holds `peer`, whatever the node (its site, what its site's
    /// catalogue names, the control nodes).
    pub fn site_holds(&self, site: &str, peer: &PeerInfo) -> bool {
        self.full
            || peer.site == site
            || self.controls.contains(&peer.node_id)
            || self
                .named
                .get(site)
                .is_some_and(|n| n.contains(&peer.node_id))
    }

    /// The other sites whose catalogues name `node`: their nodes are its peers too.
    pub fn sites_naming(&self, node: NodeId) -> impl Iterator<Item = &str> {
        self.naming
            .get(&node)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether `node`, of `site`, holds `peer`.
    pub fn holds(&self, node: NodeId, site: &str, peer: &PeerInfo) -> bool {
        peer.node_id != node
            && (self.is_control(node)
                || self.site_holds(site, peer)
                || self
                    .naming
                    .get(&node)
                    .is_some_and(|s| s.contains(&peer.site)))
    }
}

/// `node`'s peers in `state` (scoped as the module says beyond `full_mesh_up_to` peers),
/// sorted by node id.
pub fn peers_of(state: &ClusterState, node: NodeId, full_mesh_up_to: usize) -> Vec<PeerInfo> {
    let all = crate::catalogue::peers(state, NodeId(0));
    let Some(entry) = state.nodes.get(&node) else {
        return all.into_iter().filter(|p| p.node_id != node).collect();
    };
    if all.len() <= full_mesh_up_to || entry.role == NodeRole::Control {
        return all.into_iter().filter(|p| p.node_id != node).collect();
    }
    let site = entry.site.as_str();
    let endpoints = crate::catalogue::catalogue(state);
    let catalogues = crate::catalogue::scoped_by_site(state, &endpoints);
    let scope = PeerScope::new(
        state,
        all.len(),
        &endpoints,
        catalogues.iter().map(|(s, e)| (*s, e.as_slice())),
        full_mesh_up_to,
    );
    all.into_iter()
        .filter(|p| scope.holds(node, site, p))
        .collect()
}
