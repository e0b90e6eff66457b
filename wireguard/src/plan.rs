//! The deciding part of peer updates, free of I/O: which new peer is which old peer, where a
//! peer's packets go after a config change, and which of a peer's tunnels carries traffic.
//!
//! The device applies these decisions; keeping them here makes them testable without a TUN.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::PeerConfig;

/// After this long without a handshake, a learned endpoint gives way to the configured one
/// (WireGuard's REJECT_AFTER_TIME: by then every session with the peer has expired).
pub const ENDPOINT_STALE_AFTER: Duration = Duration::from_secs(180);

/// What became of one peer of the new list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerMatch {
    /// Same as old peer `old`: keep it as it is.
    Unchanged { old: usize },
    /// Old peer `old` (it shares a public key) with other settings: carry its state over.
    Changed { old: usize },
    /// A peer we did not have.
    Added,
}

/// Matches each new peer with the old one that shares a public key with it. Old peers that
/// match none are the removed ones: [`removed_peers`].
pub(crate) fn match_peers(old: &[PeerConfig], new: &[PeerConfig]) -> Vec<PeerMatch> {
    new.iter()
        .map(|peer| {
            let found = old.iter().position(|candidate| {
                candidate
                    .public_keys
                    .iter()
                    .any(|key| peer.public_keys.contains(key))
            });
            match found {
                Some(old_idx) if old[old_idx] == *peer => PeerMatch::Unchanged { old: old_idx },
                Some(old_idx) => PeerMatch::Changed { old: old_idx },
                None => PeerMatch::Added,
            }
        })
        .collect()
}

/// Indexes of old peers that no new peer matched.
pub(crate) fn removed_peers(n_old: usize, matches: &[PeerMatch]) -> Vec<usize> {
    (0..n_old)
        .filter(|old_idx| {
            !matches.iter().any(|m| match m {
                PeerMatch::Unchanged { old } | PeerMatch::Changed { old } => old == old_idx,
                PeerMatch::Added => false,
            })
        })
        .collect()
}

/// Where a peer's packets go, and where the agent said they should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EndpointState {
    /// Where we send now.
    pub current: Option<SocketAddr>,
    /// What the configuration says.
    pub configured: Option<SocketAddr>,
}

impl EndpointState {
    /// The state of a peer first configured with `configured`.
    pub(crate) fn new(configured: Option<SocketAddr>) -> EndpointState {
        EndpointState {
            current: configured,
            configured,
        }
    }

    /// Applies a new configured endpoint: it replaces the current (possibly learned) one only
    /// if it changed, or if the peer has had no handshake for [`ENDPOINT_STALE_AFTER`].
    pub(crate) fn configure(
        self,
        configured: Option<SocketAddr>,
        since_handshake: Option<Duration>,
    ) -> EndpointState {
        let current = if configured != self.configured || is_stale(since_handshake) {
            configured.or(self.current)
        } else {
            self.current
        };
        EndpointState {
            current,
            configured,
        }
    }

    /// An authenticated packet came from `source`: roam there.
    pub(crate) fn authenticated_from(self, source: SocketAddr) -> EndpointState {
        EndpointState {
            current: Some(source),
            ..self
        }
    }

    /// On a timer tick: a learned endpoint that has gone quiet falls back to the configured one.
    pub(crate) fn tick(self, since_handshake: Option<Duration>) -> EndpointState {
        match self.configured {
            Some(configured) if self.current != self.configured && is_stale(since_handshake) => {
                EndpointState {
                    current: Some(configured),
                    ..self
                }
            }
            _ => self,
        }
    }
}

fn is_stale(since_handshake: Option<Duration>) -> bool {
    since_handshake.is_none_or(|elapsed| elapsed >= ENDPOINT_STALE_AFTER)
}

/// One of a peer's tunnels as the chooser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TunnelView {
    /// Position of our key in our key list (0 = the one we initiate with).
    pub our_key_pos: usize,
    /// Position of their key in the peer's key list (last = newest).
    pub their_key_pos: usize,
    /// Whether the tunnel has a session that can carry data.
    pub has_session: bool,
    /// Time since its last completed handshake.
    pub since_handshake: Option<Duration>,
}

/// Picks the tunnel that carries a peer's outbound traffic: among tunnels with a session, the
/// peer's later key first, then our current key, then the most recent handshake. With no
/// session anywhere, the tunnel we would initiate on: our current key, their latest key.
pub(crate) fn choose_outbound(tunnels: &[TunnelView]) -> usize {
    let rank = |view: &TunnelView| {
        (
            view.has_session,
            view.their_key_pos,
            std::cmp::Reverse(view.our_key_pos),
            std::cmp::Reverse(view.since_handshake.unwrap_or(Duration::MAX)),
        )
    };
    tunnels
        .iter()
        .enumerate()
        .max_by_key(|(_, view)| rank(view))
        .map_or(0, |(idx, _)| idx)
}

/// Whether to start a handshake on a tunnel ahead of need: it is one we initiate on (our
/// current key), it has no session, and it ranks above the tunnel carrying traffic, so a
/// rotation's new key gets its session while the old one still carries packets.
pub(crate) fn should_prepare(view: &TunnelView, outbound: &TunnelView) -> bool {
    view.our_key_pos == 0
        && !view.has_session
        && (view.their_key_pos > outbound.their_key_pos || outbound.our_key_pos > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use std::net::Ipv4Addr;

    fn peer(label: &str, keys: &[crate::keys::PublicKey]) -> PeerConfig {
        PeerConfig {
            label: label.to_string(),
            public_keys: keys.to_vec(),
            allowed_ips: vec![(Ipv4Addr::new(10, 42, 1, 0), 24)],
            endpoint: None,
            persistent_keepalive: None,
        }
    }

    #[test]
    fn unchanged_peers_are_kept_and_missing_ones_removed() {
        let [k1, k2, k3, k4] = std::array::from_fn(|_| PrivateKey::generate().public_key());
        let old = vec![peer("a", &[k1]), peer("b", &[k2]), peer("c", &[k3])];
        let mut b_rotating = peer("b", &[k2, k4]);
        b_rotating.endpoint = None;
        let new = vec![
            peer("a", &[k1]),
            b_rotating,
            peer("d", &[PrivateKey::generate().public_key()]),
        ];
        let matches = match_peers(&old, &new);
        assert_eq!(
            matches,
            vec![
                PeerMatch::Unchanged { old: 0 },
                PeerMatch::Changed { old: 1 },
                PeerMatch::Added
            ]
        );
        assert_eq!(removed_peers(old.len(), &matches), vec![2]);
        assert_eq!(
            match_peers(&old, &old)
                .iter()
                .filter(|m| matches!(m, PeerMatch::Unchanged { .. }))
                .count(),
            3
        );
    }

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([192, 168, 0, 1], port)))
    }

    #[test]
    fn endpoint_rules() {
        let fresh = Some(Duration::from_secs(5));
        let stale = Some(ENDPOINT_STALE_AFTER);
        let roamed = EndpointState::new(addr(1)).authenticated_from(addr(2).unwrap());
        assert_eq!(roamed.current, addr(2));
        // Same configured value, recent handshake: the learned endpoint stays.
        assert_eq!(roamed.configure(addr(1), fresh).current, addr(2));
        // Same configured value, no handshake for long: back to the configured one.
        assert_eq!(roamed.configure(addr(1), stale).current, addr(1));
        // A changed configured value wins at once.
        assert_eq!(roamed.configure(addr(3), fresh).current, addr(3));
        // No configured value keeps what was learned.
        assert_eq!(roamed.configure(None, fresh).current, addr(2));
        assert_eq!(roamed.tick(fresh).current, addr(2));
        assert_eq!(roamed.tick(stale).current, addr(1));
        assert_eq!(roamed.tick(None).current, addr(1));
    }

    fn view(our: usize, their: usize, session: bool, secs: u64) -> TunnelView {
        TunnelView {
            our_key_pos: our,
            their_key_pos: their,
            has_session: session,
            since_handshake: session.then(|| Duration::from_secs(secs)),
        }
    }

    #[test]
    fn outbound_prefers_later_key_once_it_has_a_session() {
        // Their rotation: old key (0) has a session, new key (1) not yet.
        let tunnels = [view(0, 0, true, 30), view(0, 1, false, 0)];
        assert_eq!(choose_outbound(&tunnels), 0);
        assert!(should_prepare(&tunnels[1], &tunnels[0]));
        let tunnels = [view(0, 0, true, 1), view(0, 1, true, 30)];
        assert_eq!(choose_outbound(&tunnels), 1);
        // Our rotation: our new key (0) preferred once it has a session.
        let tunnels = [view(0, 0, false, 0), view(1, 0, true, 5)];
        assert_eq!(choose_outbound(&tunnels), 1);
        assert!(should_prepare(&tunnels[0], &tunnels[1]));
        let tunnels = [view(0, 0, true, 50), view(1, 0, true, 5)];
        assert_eq!(choose_outbound(&tunnels), 0);
        // Nothing anywhere: initiate with our current key to their latest.
        let tunnels = [view(0, 0, false, 0), view(0, 1, false, 0)];
        assert_eq!(choose_outbound(&tunnels), 1);
        // Among equals, the most recent handshake.
        let tunnels = [view(0, 0, true, 50), view(0, 0, true, 5)];
        assert_eq!(choose_outbound(&tunnels), 1);
    }
}
