//! Fragments: chitchat messages may be up to 64 KiB, more than one sealed datagram carries
//! ([`crate::keyring::MAX_PAYLOAD_BYTES`]), so a message is split into at
//! most [`MAX_FRAGMENTS`] payloads, each sealed on its own. Sans-IO; the caller passes `now`.
//!
//! Fragment payload: `message id u32 LE | index u8 | count u8 | chunk`. Reassembly keeps at
//! most [`MAX_REASSEMBLY_SLOTS`] partial messages and forgets one after
//! [`REASSEMBLY_TIMEOUT`]; a lost fragment costs one gossip exchange, which the next round
//! repeats anyway.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::keyring::MAX_PAYLOAD_BYTES;

/// message id + index + count.
pub const FRAGMENT_HEADER_LEN: usize = 4 + 1 + 1;
/// Message bytes in one fragment.
pub const CHUNK_BYTES: usize = MAX_PAYLOAD_BYTES - FRAGMENT_HEADER_LEN;
/// Largest message: chitchat's own limit (65 507 bytes, the IPv4 UDP maximum) fits.
pub const MAX_MESSAGE_BYTES: usize = CHUNK_BYTES * MAX_FRAGMENTS;
/// Fragments of one message at most.
pub const MAX_FRAGMENTS: usize = 3;
/// Partial messages kept at once; the oldest is dropped to make room.
pub const MAX_REASSEMBLY_SLOTS: usize = 32;
/// A partial message older than this is dropped: fragments travel back to back, so they arrive
/// within milliseconds of each other or not at all.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);

const _: () = assert!(MAX_MESSAGE_BYTES >= 65_507);

/// Splits `message` into fragment payloads. `None` if it is longer than [`MAX_MESSAGE_BYTES`].
pub fn split(message_id: u32, message: &[u8]) -> Option<Vec<Vec<u8>>> {
    if message.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let count = message.len().div_ceil(CHUNK_BYTES).max(1);
    let fragments = (0..count)
        .map(|index| {
            let chunk = &message[index * CHUNK_BYTES..message.len().min((index + 1) * CHUNK_BYTES)];
            let mut fragment = Vec::with_capacity(FRAGMENT_HEADER_LEN + chunk.len());
            fragment.extend_from_slice(&message_id.to_le_bytes());
            fragment.push(index as u8);
            fragment.push(count as u8);
            fragment.extend_from_slice(chunk);
            fragment
        })
        .collect();
    Some(fragments)
}

/// What a fragment did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembled {
    /// The message is complete.
    Message(Vec<u8>),
    /// Kept; more fragments are needed.
    Pending,
    /// Not a well-formed fragment (bad header, duplicate index, count mismatch).
    Malformed,
}

#[derive(Debug)]
struct Partial {
    peer: SocketAddr,
    message_id: u32,
    started: Instant,
    parts: Vec<Option<Vec<u8>>>,
}

/// Partial messages, by sender and message id.
#[derive(Debug, Default)]
pub struct Reassembly {
    partials: VecDeque<Partial>,
}

impl Reassembly {
    /// Takes one authenticated fragment payload from `peer`.
    pub fn accept(&mut self, peer: SocketAddr, fragment: &[u8], now: Instant) -> Reassembled {
        if fragment.len() < FRAGMENT_HEADER_LEN {
            return Reassembled::Malformed;
        }
        let message_id = u32::from_le_bytes(fragment[..4].try_into().expect("4 bytes"));
        let (index, count) = (fragment[4] as usize, fragment[5] as usize);
        let chunk = &fragment[FRAGMENT_HEADER_LEN..];
        if count == 0 || count > MAX_FRAGMENTS || index >= count || chunk.len() > CHUNK_BYTES {
            return Reassembled::Malformed;
        }
        if count == 1 {
            return Reassembled::Message(chunk.to_vec());
        }
        self.partials
            .retain(|p| now.saturating_duration_since(p.started) < REASSEMBLY_TIMEOUT);
        let position = self
            .partials
            .iter()
            .position(|p| p.peer == peer && p.message_id == message_id);
        let position = match position {
            Some(position) => position,
            None => {
                if self.partials.len() >= MAX_REASSEMBLY_SLOTS {
                    self.partials.pop_front();
                }
                self.partials.push_back(Partial {
                    peer,
                    message_id,
                    started: now,
                    parts: vec![None; count],
                });
                self.partials.len() - 1
            }
        };
        let partial = &mut self.partials[position];
        if partial.parts.len() != count || partial.parts[index].is_some() {
            self.partials.remove(position);
            return Reassembled::Malformed;
        }
        partial.parts[index] = Some(chunk.to_vec());
        if partial.parts.iter().any(Option::is_none) {
            return Reassembled::Pending;
        }
        let partial = self
            .partials
            .remove(position)
            .expect("position is in range");
        Reassembled::Message(partial.parts.into_iter().flatten().flatten().collect())
    }

    /// Partial messages held now.
    pub fn len(&self) -> usize {
        self.partials.len()
    }

    /// Whether no partial message is held.
    pub fn is_empty(&self) -> bool {
        self.partials.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn small_messages_are_one_fragment() {
        let fragments = split(7, b"hi").expect("fits");
        assert_eq!(fragments.len(), 1);
        let mut reassembly = Reassembly::default();
        assert_eq!(
            reassembly.accept(peer(1), &fragments[0], Instant::now()),
            Reassembled::Message(b"hi".to_vec())
        );
    }

    #[test]
    fn chitchat_maximum_fits_and_more_does_not() {
        assert!(split(1, &vec![0; 65_507]).is_some());
        assert!(split(1, &vec![0; MAX_MESSAGE_BYTES + 1]).is_none());
    }

    #[test]
    fn fragments_of_different_peers_do_not_mix() {
        let message = vec![5u8; CHUNK_BYTES + 10];
        let fragments = split(1, &message).expect("fits");
        let now = Instant::now();
        let mut reassembly = Reassembly::default();
        assert_eq!(
            reassembly.accept(peer(1), &fragments[0], now),
            Reassembled::Pending
        );
        assert_eq!(
            reassembly.accept(peer(2), &fragments[1], now),
            Reassembled::Pending
        );
        assert_eq!(reassembly.len(), 2);
        assert_eq!(
            reassembly.accept(peer(1), &fragments[1], now),
            Reassembled::Message(message)
        );
    }

    #[test]
    fn stale_partials_and_bad_headers_are_dropped() {
        let fragments = split(1, &vec![1u8; CHUNK_BYTES * 2]).expect("fits");
        let now = Instant::now();
        let mut reassembly = Reassembly::default();
        reassembly.accept(peer(1), &fragments[0], now);
        assert_eq!(
            reassembly.accept(peer(1), &fragments[0], now),
            Reassembled::Malformed
        );
        reassembly.accept(peer(1), &fragments[0], now);
        assert_eq!(
            reassembly.accept(peer(1), &fragments[1], now + REASSEMBLY_TIMEOUT),
            Reassembled::Pending,
            "the first half expired, so the second half starts a new partial"
        );
        assert_eq!(
            reassembly.accept(peer(1), &[0, 0, 0, 0, 2, 2], now),
            Reassembled::Malformed
        );
        assert_eq!(
            reassembly.accept(peer(1), &[0, 0, 0], now),
            Reassembled::Malformed
        );
    }

    #[test]
    fn partials_are_bounded() {
        let now = Instant::now();
        let mut reassembly = Reassembly::default();
        for id in 0..(MAX_REASSEMBLY_SLOTS as u32 * 2) {
            let fragments = split(id, &vec![0u8; CHUNK_BYTES + 1]).expect("fits");
            reassembly.accept(peer(1), &fragments[0], now);
        }
        assert_eq!(reassembly.len(), MAX_REASSEMBLY_SLOTS);
    }

    proptest! {
        #[test]
        fn split_then_reassemble_in_any_order(len in 0usize..(CHUNK_BYTES * 3), reverse: bool) {
            let message: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut fragments = split(9, &message).expect("fits");
            if reverse {
                fragments.reverse();
            }
            let mut reassembly = Reassembly::default();
            let now = Instant::now();
            let mut outcome = Reassembled::Pending;
            for fragment in &fragments {
                outcome = reassembly.accept(peer(1), fragment, now);
            }
            prop_assert_eq!(outcome, Reassembled::Message(message));
            prop_assert!(reassembly.is_empty());
        }
    }
}
