//! Fault injection for tests: a switch that drops gossip datagrams to and from chosen peers.
//!
//! A [`GossipFaultSwitch`] given in [`MeshConfig::fault`](crate::MeshConfig::fault) sits under a
//! node's sealed socket. Datagrams to a blocked address are sealed and then discarded (the send
//! reports success); datagrams from one are read and discarded before decryption. Gossip sees
//! only silence, as on a cut link. Both are counted as `fault_injected` drops. Clones share
//! one state, so a test keeps a clone per node and cuts links while the nodes run.
//!
//! The switch never changes a datagram and drops nothing while no address is blocked.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// A cheap, clonable set of blocked peer addresses.
#[derive(Clone, Default)]
pub struct GossipFaultSwitch {
    state: Arc<FaultState>,
}

#[derive(Default)]
struct FaultState {
    /// Fast path: no lock taken while nothing is blocked.
    any_blocked: AtomicBool,
    blocked: RwLock<HashSet<SocketAddr>>,
}

impl fmt::Debug for GossipFaultSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GossipFaultSwitch")
            .field("blocked", &self.blocked().len())
            .finish()
    }
}

impl GossipFaultSwitch {
    /// A switch that blocks nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops datagrams to and from each of `peers` from now on.
    pub fn block(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let mut blocked = self.state.blocked.write().expect("fault switch lock");
        blocked.extend(peers);
        self.state
            .any_blocked
            .store(!blocked.is_empty(), Ordering::SeqCst);
    }

    /// Lets everything through again.
    pub fn heal(&self) {
        let mut blocked = self.state.blocked.write().expect("fault switch lock");
        blocked.clear();
        self.state.any_blocked.store(false, Ordering::SeqCst);
    }

    /// Whether datagrams to or from `peer` are dropped.
    pub fn is_blocked(&self, peer: SocketAddr) -> bool {
        self.state.any_blocked.load(Ordering::SeqCst)
            && self
                .state
                .blocked
                .read()
                .expect("fault switch lock")
                .contains(&peer)
    }

    /// The blocked addresses.
    pub fn blocked(&self) -> HashSet<SocketAddr> {
        self.state
            .blocked
            .read()
            .expect("fault switch lock")
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_until_healed_and_clones_share_state() {
        let switch = GossipFaultSwitch::new();
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        assert!(!switch.is_blocked(peer));
        switch.clone().block([peer]);
        assert!(switch.is_blocked(peer));
        assert!(!switch.is_blocked(SocketAddr::from(([127, 0, 0, 1], 10))));
        switch.heal();
        assert!(!switch.is_blocked(peer));
    }
}
