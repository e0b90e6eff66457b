//! The WireGuard overlay: the cluster's address range, each node's slot in it, and what the
//! registry in Raft records of a node's mesh identity (its overlay slot, its public keys, and
//! the UDP endpoint it listens on).
//!
//! A node's slot `n` is the `n`-th /24 of the range: the node takes its first address
//! (`10.42.n.1` in the default `10.42.0.0/16`) and the whole /24 routes to it, for its
//! workloads. Slot 0 (the range's first /24) is never given out, so no node holds the range's
//! network address. Allocation is a pure function of the slots in use, so every control node
//! allocates the same slot in the same log entry.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::validate::ValidationError;

/// The prefix length of each node's share of the overlay.
pub const NODE_PREFIX: u8 = 24;

/// The overlay range a cluster uses unless `control init --overlay-range` says otherwise.
pub const DEFAULT_OVERLAY_RANGE: OverlayRange = OverlayRange {
    network: Ipv4Addr::new(10, 42, 0, 0),
    prefix: 16,
};

/// An IPv4 range the overlay allocates /24s from, e.g. `10.42.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OverlayRange {
    /// The range's first address (host bits zero).
    pub network: Ipv4Addr,
    /// Its prefix length, 8 to 23: room for at least one node besides slot 0.
    pub prefix: u8,
}

impl OverlayRange {
    /// How many slots the range holds, slot 0 included.
    pub fn slot_count(self) -> u32 {
        1 << (NODE_PREFIX - self.prefix)
    }

    /// The network address of slot `slot`'s /24, if the range has that slot.
    pub fn subnet(self, slot: u32) -> Option<Ipv4Addr> {
        (slot < self.slot_count()).then(|| Ipv4Addr::from(u32::from(self.network) + (slot << 8)))
    }

    /// The address the node in slot `slot` takes: the first host of its /24.
    pub fn node_address(self, slot: u32) -> Option<Ipv4Addr> {
        self.subnet(slot)
            .map(|net| Ipv4Addr::from(u32::from(net) + 1))
    }

    /// Whether `addr` lies in the range.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(addr) & mask == u32::from(self.network)
    }

    /// The lowest slot from 1 up that is not in `used`, or `None` when the range is full.
    pub fn allocate(self, used: &BTreeSet<u32>) -> Option<u32> {
        (1..self.slot_count()).find(|slot| !used.contains(slot))
    }
}

impl Default for OverlayRange {
    fn default() -> Self {
        DEFAULT_OVERLAY_RANGE
    }
}

impl fmt::Display for OverlayRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for OverlayRange {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: String| ValidationError::new("overlay range", why);
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid(format!("{s:?} is not an IPv4 CIDR like 10.42.0.0/16")))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| invalid(format!("{addr:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid(format!("{prefix:?} is not a prefix length")))?;
        if !(8..NODE_PREFIX).contains(&prefix) {
            return Err(invalid(format!(
                "/{prefix} does not hold a /24 per node: use a prefix from /8 to /23 (e.g. 10.42.0.0/16 for 255 nodes)"
            )));
        }
        let range = OverlayRange { network, prefix };
        if !range.contains(network) || u32::from(network) & ((1 << (32 - prefix)) - 1) != 0 {
            return Err(invalid(format!(
                "{s} has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(network) & (u32::MAX << (32 - prefix)))
            )));
        }
        Ok(range)
    }
}

/// What the registry records of one node's place in the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshEntry {
    /// The node's slot in the overlay range (its /24), allocated when it registered.
    pub slot: u32,
    /// The WireGuard public key peers authenticate it by, once it registered one.
    pub public_key: Option<[u8; 32]>,
    /// During a key rotation, the key it rolls to: peers accept both until it is committed
    /// as `public_key`.
    pub next_public_key: Option<[u8; 32]>,
    /// The UDP endpoint (`host:port`) its WireGuard interface listens on, as it declared it.
    pub endpoint: Option<String>,
    /// How many key rotations operators asked of it (`warren node rotate-key`); the node rolls
    /// its key when this passes the count it last acted on.
    pub rotations_requested: u32,
}

/// A node's own mesh settings, as its view carries them: where it sits in the overlay and
/// which of its keys the registry holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnMesh {
    /// The cluster's overlay range (the interface's netmask: the whole range routes through
    /// it).
    pub range: OverlayRange,
    /// This node's overlay address (the first host of its /24).
    pub address: Ipv4Addr,
    /// The public key the registry holds for this node.
    pub public_key: Option<[u8; 32]>,
    /// The key this node is rolling to, once the registry recorded it.
    pub next_public_key: Option<[u8; 32]>,
    /// How many key rotations operators asked of this node (see [`MeshEntry`]).
    pub rotations_requested: u32,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn slots_map_to_24s_of_the_range() {
        let range = DEFAULT_OVERLAY_RANGE;
        assert_eq!(range.slot_count(), 256);
        assert_eq!(range.node_address(1), Some(Ipv4Addr::new(10, 42, 1, 1)));
        assert_eq!(range.subnet(255), Some(Ipv4Addr::new(10, 42, 255, 0)));
        assert_eq!(range.subnet(256), None);
        let wide: OverlayRange = "10.64.0.0/12".parse().unwrap();
        assert_eq!(wide.node_address(4095), Some(Ipv4Addr::new(10, 79, 255, 1)));
        assert!(range.contains(Ipv4Addr::new(10, 42, 7, 9)));
        assert!(!range.contains(Ipv4Addr::new(10, 43, 0, 1)));
    }

    #[test]
    fn ranges_that_cannot_hold_nodes_are_refused_in_words() {
        assert_eq!(
            "10.42.0.0/16".parse::<OverlayRange>().unwrap().to_string(),
            "10.42.0.0/16"
        );
        for (text, words) in [
            ("10.42.0.0", "not an IPv4 CIDR"),
            ("10.42.0.0/24", "does not hold a /24 per node"),
            ("10.42.0.0/7", "does not hold a /24 per node"),
            ("10.42.1.0/16", "did you mean 10.42.0.0/16"),
            ("fd00::/64", "not an IPv4 address"),
        ] {
            let error = text.parse::<OverlayRange>().unwrap_err().to_string();
            assert!(error.contains(words), "{text}: {error}");
        }
    }

    proptest! {
        /// Across any sequence of joins and removals, no two nodes hold the same slot, slot 0 is
        /// never given, and a join fails only when every slot is taken.
        #[test]
        fn allocation_never_gives_a_slot_twice(ops in proptest::collection::vec(any::<(bool, u8)>(), 1..300)) {
            let range: OverlayRange = "10.42.0.0/20".parse().unwrap();
            let mut nodes: Vec<u32> = Vec::new();
            for (join, pick) in ops {
                if join || nodes.is_empty() {
                    let used: BTreeSet<u32> = nodes.iter().copied().collect();
                    match range.allocate(&used) {
                        Some(slot) => {
                            prop_assert!(slot != 0 && slot < range.slot_count());
                            prop_assert!(!used.contains(&slot));
                            nodes.push(slot);
                        }
                        None => prop_assert_eq!(used.len() as u32, range.slot_count() - 1),
                    }
                } else {
                    nodes.remove(usize::from(pick) % nodes.len());
                }
            }
        }
    }
}
