//! Sealing and opening gossip packets: round trips, each refusal's reason, the replay cache's bounds, key rotation, and that keys never show in Debug.

use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;

fn sender(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7946);

fn ring(id: u32) -> Keyring {
    Keyring::new(GossipKey::generate(KeyId(id)))
}

#[test]
fn seal_then_open_returns_the_payload() {
    let mut ring = ring(1);
    let sealed = ring.seal(b"hello", NOW);
    assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD_BYTES);
    let opened = ring.open(&sealed, PEER, NOW + 5).expect("opens");
    assert_eq!(opened.payload, b"hello");
    assert_eq!(opened.key_id, KeyId(1));
}

#[test]
fn a_scoped_datagram_names_its_mesh_and_the_name_is_authenticated() {
    let mut ring = ring(1);
    let sealed = ring.seal_scoped(KeyId(1), "edge-a", b"hello", NOW);
    assert_eq!(sealed[2], VERSION_SCOPED);
    assert_eq!(sealed.len(), 5 + 1 + 6 + SEAL_OVERHEAD_BYTES);
    let opened = ring.open(&sealed, PEER, NOW).expect("opens");
    assert_eq!(
        (opened.payload.as_slice(), opened.scope.as_str()),
        (&b"hello"[..], "edge-a")
    );
    let unscoped = ring.seal_scoped(KeyId(1), "", b"hello", NOW);
    assert_eq!(
        unscoped[2], VERSION,
        "the unnamed scope keeps the first format"
    );
    assert_eq!(ring.open(&unscoped, PEER, NOW).expect("opens").scope, "");
    // Relabelling either version as the other changes the authenticated header.
    let mut relabelled = ring.seal_scoped(KeyId(1), "edge-a", b"x", NOW);
    relabelled[2] = VERSION;
    assert_eq!(ring.open(&relabelled, PEER, NOW), Err(DropReason::Forged));
    let longest = "s".repeat(MAX_SCOPE_BYTES);
    let full = ring.seal_scoped(KeyId(1), &longest, &vec![7; MAX_PAYLOAD_BYTES], NOW);
    assert_eq!(full.len(), MAX_DATAGRAM_BYTES);
    assert_eq!(ring.open(&full, PEER, NOW).expect("opens").scope, longest);
}

#[test]
fn each_check_has_its_reason() {
    let mut ring = ring(1);
    let sealed = ring.seal(b"x", NOW);
    let check = |ring: &mut Keyring, datagram: &[u8], now: u64, expected: DropReason| {
        assert_eq!(ring.open(datagram, PEER, now), Err(expected), "{expected}");
    };
    check(&mut ring, &sealed[..10], NOW, DropReason::TooShort);
    check(
        &mut ring,
        &vec![0u8; MAX_DATAGRAM_BYTES + 1],
        NOW,
        DropReason::TooLarge,
    );
    let mut bad_magic = sealed.clone();
    bad_magic[0] = b'X';
    check(&mut ring, &bad_magic, NOW, DropReason::BadMagic);
    let mut bad_version = sealed.clone();
    bad_version[2] = 3;
    check(&mut ring, &bad_version, NOW, DropReason::BadMagic);
    let foreign = self::ring(9).seal(b"x", NOW);
    check(&mut ring, &foreign, NOW, DropReason::UnknownKey);
    let same_id_other_key = self::ring(1).seal(b"x", NOW);
    check(&mut ring, &same_id_other_key, NOW, DropReason::Forged);
    check(
        &mut ring,
        &sealed,
        NOW + REPLAY_WINDOW_MS + 1,
        DropReason::Stale,
    );
    check(
        &mut ring,
        &sealed,
        NOW - MAX_FUTURE_SKEW_MS - 1,
        DropReason::Stale,
    );
    ring.open(&sealed, PEER, NOW).expect("first time is fine");
    check(&mut ring, &sealed, NOW + 1, DropReason::Replayed);
}

#[test]
fn labels_are_distinct() {
    let labels: std::collections::BTreeSet<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), DropReason::ALL.len());
}

#[test]
fn replay_cache_forgets_what_the_window_already_refuses() {
    let mut ring = ring(1);
    for i in 0..100 {
        let sealed = ring.seal(b"x", NOW + i);
        ring.open(&sealed, PEER, NOW + i).expect("opens");
    }
    assert_eq!(ring.replay_cache_len(), 100);
    let later = NOW + REPLAY_WINDOW_MS + 50;
    let sealed = ring.seal(b"x", later);
    ring.open(&sealed, PEER, later).expect("opens");
    // Timestamps NOW..NOW+49 are now outside the window and forgotten.
    assert_eq!(ring.replay_cache_len(), 51);
}

#[test]
fn a_full_replay_cache_refuses_rather_than_forgets() {
    let mut ring = ring(1);
    for i in 0..MAX_REPLAY_CACHE_ENTRIES {
        let sealed = ring.seal(b"", NOW);
        let from = sender((i / MAX_REPLAY_ENTRIES_PER_SENDER) as u16);
        ring.open(&sealed, from, NOW).expect("opens");
    }
    let sealed = ring.seal(b"", NOW);
    assert_eq!(
        ring.open(&sealed, sender(u16::MAX), NOW),
        Err(DropReason::ReplayCacheFull)
    );
    assert_eq!(ring.replay_cache_len(), MAX_REPLAY_CACHE_ENTRIES);
}

/// A key holder flooding from one socket fills its own share of the replay cache, not the
/// cache: other senders are still accepted, and its share frees up as its timestamps age
/// out of the window. Far-future timestamps are refused outright.
#[test]
fn one_sender_cannot_fill_the_replay_cache() {
    let mut ring = ring(1);
    let flooder = sender(666);
    for _ in 0..MAX_REPLAY_ENTRIES_PER_SENDER {
        let sealed = ring.seal(b"", NOW + MAX_FUTURE_SKEW_MS);
        ring.open(&sealed, flooder, NOW).expect("within its quota");
    }
    let more = ring.seal(b"", NOW);
    assert_eq!(
        ring.open(&more, flooder, NOW),
        Err(DropReason::SenderOverQuota)
    );
    let honest = ring.seal(b"", NOW);
    ring.open(&honest, PEER, NOW)
        .expect("another sender is accepted");
    let far_future = ring.seal(b"", NOW + MAX_FUTURE_SKEW_MS + 1);
    assert_eq!(ring.open(&far_future, PEER, NOW), Err(DropReason::Stale));
    // Once its timestamps leave the window, the flooder's share is free again.
    let later = NOW + MAX_FUTURE_SKEW_MS + REPLAY_WINDOW_MS + 1;
    let sealed = ring.seal(b"", later);
    ring.open(&sealed, flooder, later)
        .expect("its share aged out");
    assert_eq!(ring.replay_cache_len(), 1);
}

#[test]
fn rotation_accepts_the_old_key_for_the_overlap_only() {
    let old = GossipKey::generate(KeyId(1));
    let new = GossipKey::generate(KeyId(2));
    let not_rotated = Keyring::new(old.clone());
    let mut rotated = Keyring::new(old);
    rotated.rotate(new, 10_000, NOW).expect("new id");
    assert_eq!(rotated.current_id(), KeyId(2));
    assert_eq!(rotated.previous(), Some((KeyId(1), NOW + 10_000)));

    let from_old = not_rotated.seal(b"a", NOW + 5_000);
    assert!(rotated.open(&from_old, PEER, NOW + 5_000).is_ok());
    let from_old = not_rotated.seal(b"b", NOW + 10_001);
    assert_eq!(
        rotated.open(&from_old, PEER, NOW + 10_001),
        Err(DropReason::UnknownKey)
    );
    // Replies to a peer on the old key use the old key while it is accepted.
    assert_eq!(rotated.seal_with(KeyId(1), b"c", NOW)[3], 1);
    assert_eq!(rotated.seal_with(KeyId(1), b"c", NOW + 10_001)[3], 2);
}

#[test]
fn rotation_refuses_a_reused_id() {
    let mut ring = ring(1);
    assert_eq!(
        ring.rotate(GossipKey::generate(KeyId(1)), 1, NOW),
        Err(RotateError::KeyIdInUse(KeyId(1)))
    );
    ring.rotate(GossipKey::generate(KeyId(2)), 1, NOW)
        .expect("new id");
    assert_eq!(
        ring.rotate(GossipKey::generate(KeyId(1)), 1, NOW),
        Err(RotateError::KeyIdInUse(KeyId(1)))
    );
}

#[test]
fn debug_never_shows_key_bytes() {
    let key = GossipKey::from_bytes(KeyId(7), [0xAB; 32]);
    let text = format!("{key:?} {:?}", Keyring::new(key.clone()));
    assert!(!text.contains("171") && !text.to_lowercase().contains("ab, "));
    assert!(text.contains("redacted"));
}

proptest! {
    #[test]
    fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2048),
                   skew in -(MAX_FUTURE_SKEW_MS as i64)..=(REPLAY_WINDOW_MS as i64)) {
        let mut ring = ring(3);
        let sealed = ring.seal(&payload, NOW);
        let opened = ring.open(&sealed, PEER, NOW.wrapping_add_signed(skew)).expect("opens");
        prop_assert_eq!(opened.payload, payload);
    }

    #[test]
    fn any_single_bit_flip_is_refused(payload in proptest::collection::vec(any::<u8>(), 0..256),
                                      bit in any::<proptest::sample::Index>()) {
        let mut ring = ring(3);
        let mut sealed = ring.seal(&payload, NOW);
        let bit = bit.index(sealed.len() * 8);
        sealed[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(ring.open(&sealed, PEER, NOW).is_err());
        prop_assert_eq!(ring.replay_cache_len(), 0);
    }
}
