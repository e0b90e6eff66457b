//! The gossip keyring: sealing and opening gossip datagrams with AES-256-GCM. Sans-IO: the
//! caller passes the time (`now_unix_ms`) in; the only effect is drawing random nonces.
//!
//! A sealed datagram is
//!
//! ```text
//! magic "WM" (2) | version 1 (1) | key id u32 LE (4) | nonce (12) | AES-256-GCM(ciphertext + tag 16)
//! ```
//!
//! with the 19-byte header as associated data, so none of it can be changed without the tag
//! failing. The ciphertext's plaintext starts with the sender's clock (unix ms, u64 LE); the
//! rest is the payload.
//!
//! **Scopes.** One gossip socket can carry several meshes (a control node is in every site's
//! mesh, [`crate::GossipSocket`]). A datagram of a named scope is version 2: its plaintext
//! holds, after the clock, the scope's length (u8, at most [`MAX_SCOPE_BYTES`]) and name, so
//! the scope is authenticated too. Version 1 is the unnamed scope `""`, byte for byte the
//! format of earlier releases.
//!
//! **Replay.** A datagram is accepted only if its sender timestamp is at most
//! [`REPLAY_WINDOW_MS`] behind the receiver's clock and at most [`MAX_FUTURE_SKEW_MS`] ahead
//! of it, and only once: the receiver remembers every (timestamp, nonce) it accepted until the
//! timestamp leaves the window. The memory is bounded by [`MAX_REPLAY_CACHE_ENTRIES`]; when
//! full, new datagrams are dropped (and counted as `replay_cache_full`) rather than the cache
//! growing or forgetting — forgetting early would let a replay in. Checks run after
//! authentication, so only key holders can fill it; and one sender (a source address) holds
//! at most [`MAX_REPLAY_ENTRIES_PER_SENDER`] of it (`sender_over_quota` past that), so a key
//! holder flooding from one socket cannot fill the cache and blind the node to everyone else.
//!
//! **Rotation.** [`Keyring::rotate`] makes a new key current and keeps the old one accepted
//! until the overlap ends, so nodes that have not rotated yet keep talking to those that have.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

/// The first bytes of every sealed gossip datagram.
pub const MAGIC: [u8; 2] = *b"WM";
/// The sealed format's version for the unnamed scope (`""`).
pub const VERSION: u8 = 1;
/// The sealed format's version for a named scope: the plaintext names it after the clock.
pub const VERSION_SCOPED: u8 = 2;
/// Longest scope name: a site name is a DNS label (63 bytes at most).
pub const MAX_SCOPE_BYTES: usize = 63;
/// Nonce length of AES-GCM.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length of AES-GCM.
pub const TAG_LEN: usize = 16;
/// magic + version + key id + nonce.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + 4 + NONCE_LEN;
/// The sender's clock at the start of every plaintext.
pub const TIMESTAMP_LEN: usize = 8;
/// Bytes a sealed datagram adds to its payload.
pub const SEAL_OVERHEAD_BYTES: usize = HEADER_LEN + TIMESTAMP_LEN + TAG_LEN;
/// Largest sealed datagram sent or accepted. Larger datagrams are refused before any
/// decryption. 32 KiB: chitchat messages up to 64 KiB travel in a few fragments (see
/// `fragment`), and a datagram this size still fits in one UDP datagram on IPv4 and IPv6.
pub const MAX_DATAGRAM_BYTES: usize = 32 * 1024;
/// Largest payload [`Keyring::seal`] takes (room left for the longest scope name).
pub const MAX_PAYLOAD_BYTES: usize = MAX_DATAGRAM_BYTES - SEAL_OVERHEAD_BYTES - 1 - MAX_SCOPE_BYTES;
/// How far a sender's timestamp may be from the receiver's clock, either way: 60 s. Node clocks
/// must agree within this (NTP keeps them within milliseconds); a node whose clock is off by
/// more is refused as `stale` until its clock is fixed. It also bounds how long a captured
/// datagram could be replayed, and how long the replay cache must remember a nonce.
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// How far ahead of the receiver's clock a sender's timestamp may be: 10 s. A datagram from
/// the future stays in the replay cache until it leaves the window, so a generous bound would
/// let a key holder park entries there for twice as long; clocks kept by NTP agree within
/// milliseconds.
pub const MAX_FUTURE_SKEW_MS: u64 = 10_000;
/// Most (timestamp, nonce) pairs remembered for replay detection: 65 536 entries of 20 bytes
/// plus tree overhead, a few MB at most. A node of a 100-node cluster receives about ten
/// datagrams a second at the default gossip interval, ~1 200 per window; the cap leaves room
/// for 50 times that.
pub const MAX_REPLAY_CACHE_ENTRIES: usize = 65_536;
/// Most replay-cache entries one sender (source address) may hold: 2 048, about 29 datagrams
/// a second for the 70 s a timestamp can stay in the window — several times what one peer
/// sends one node (a gossip round is a few datagrams).
pub const MAX_REPLAY_ENTRIES_PER_SENDER: usize = 2_048;

/// Identifies a gossip key on the wire, so a receiver picks the right key without trying each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A cluster gossip key: 32 secret bytes and the id that names them on the wire. `Debug`
/// never prints the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey {
    id: KeyId,
    bytes: [u8; 32],
}

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GossipKey")
            .field("id", &self.id)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

impl GossipKey {
    /// A key made of `bytes` (as distributed by the control plane).
    pub fn from_bytes(id: KeyId, bytes: [u8; 32]) -> Self {
        Self { id, bytes }
    }

    /// A fresh random key.
    pub fn generate(id: KeyId) -> Self {
        let key = Key::<Aes256Gcm>::generate();
        let bytes: [u8; 32] = key.into();
        Self { id, bytes }
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret bytes, for handing the key to another node over an authenticated channel.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.bytes))
    }
}

/// Why a datagram was dropped. Each has a stable metric label ([`DropReason::label`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than a header, timestamp and tag.
    TooShort,
    /// Longer than [`MAX_DATAGRAM_BYTES`].
    TooLarge,
    /// Not our magic or version: not Warren gossip, or a newer format.
    BadMagic,
    /// Sealed with a key this node does not hold (another cluster, or a retired key).
    UnknownKey,
    /// Authentication failed: changed in transit or made without the key.
    Forged,
    /// A (timestamp, nonce) already accepted.
    Replayed,
    /// Sender timestamp more than [`REPLAY_WINDOW_MS`] behind our clock or more than
    /// [`MAX_FUTURE_SKEW_MS`] ahead of it.
    Stale,
    /// The replay cache is full; accepting would mean forgetting a nonce too early.
    ReplayCacheFull,
    /// Authentic, but not a valid fragment or chitchat message.
    Malformed,
    /// Dropped on purpose by a test's fault switch.
    FaultInjected,
    /// The sender already holds [`MAX_REPLAY_ENTRIES_PER_SENDER`] replay-cache entries.
    SenderOverQuota,
    /// Authentic, but for a mesh (scope) this node does not run: a site it is not in.
    UnknownScope,
    /// The mesh's queue of received messages is full: it is not keeping up.
    Backlog,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 13] = [
        DropReason::TooShort,
        DropReason::TooLarge,
        DropReason::BadMagic,
        DropReason::UnknownKey,
        DropReason::Forged,
        DropReason::Replayed,
        DropReason::Stale,
        DropReason::ReplayCacheFull,
        DropReason::Malformed,
        DropReason::FaultInjected,
        DropReason::SenderOverQuota,
        DropReason::UnknownScope,
        DropReason::Backlog,
    ];

    /// The metric label: stable, lowercase, snake case.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::TooLarge => "too_large",
            DropReason::BadMagic => "bad_magic",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Forged => "forged",
            DropReason::Replayed => "replayed",
            DropReason::Stale => "stale",
            DropReason::ReplayCacheFull => "replay_cache_full",
            DropReason::Malformed => "malformed",
            DropReason::FaultInjected => "fault_injected",
            DropReason::SenderOverQuota => "sender_over_quota",
            DropReason::UnknownScope => "unknown_scope",
            DropReason::Backlog => "backlog",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A rotation the keyring refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// The new key has the id of a key the ring holds; receivers could not tell them apart.
    #[error("key id {0} is already in the keyring")]
    KeyIdInUse(KeyId),
}

/// A datagram that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The payload given to [`Keyring::seal`].
    pub payload: Vec<u8>,
    /// The key it was sealed with.
    pub key_id: KeyId,
    /// The mesh it is for (`""`: the unnamed scope, version 1).
    pub scope: String,
}

/// The keys this node seals and opens gossip with, and the replay cache.
pub struct Keyring {
    current: GossipKey,
    /// The key before the last rotation, accepted until the given unix ms.
    previous: Option<(GossipKey, u64)>,
    /// (sender timestamp, nonce) of every datagram accepted within the window, and its sender.
    seen: BTreeMap<(u64, [u8; NONCE_LEN]), SocketAddr>,
    /// Entries of `seen` by sender.
    per_sender: HashMap<SocketAddr, usize>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.as_ref().map(|(k, until)| (k.id, until)),
            )
            .field("seen", &self.seen.len())
            .finish()
    }
}

impl Keyring {
    /// A keyring with one key.
    pub fn new(current: GossipKey) -> Self {
        Self {
            current,
            previous: None,
            seen: BTreeMap::new(),
            per_sender: HashMap::new(),
        }
    }

    /// The key new datagrams are sealed with.
    pub fn current_id(&self) -> KeyId {
        self.current.id
    }

    /// The previous key and the unix ms until which it is accepted, if any.
    pub fn previous(&self) -> Option<(KeyId, u64)> {
        self.previous.as_ref().map(|(key, until)| (key.id, *until))
    }

    /// Makes `new` the current key; the current one stays accepted for `overlap_ms` more.
    /// A previous key still in its overlap is retired at once (one rotation at a time).
    ///
    /// # Errors
    /// [`RotateError::KeyIdInUse`] if `new` has the id of the current or previous key.
    pub fn rotate(
        &mut self,
        new: GossipKey,
        overlap_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(), RotateError> {
        let id_in_use = new.id == self.current.id
            || self
                .previous
                .as_ref()
                .is_some_and(|(key, _)| key.id == new.id);
        if id_in_use {
            return Err(RotateError::KeyIdInUse(new.id));
        }
        let old = std::mem::replace(&mut self.current, new);
        self.previous = Some((old, now_unix_ms.saturating_add(overlap_ms)));
        Ok(())
    }

    /// Whether datagrams sealed with `key_id` are accepted at `now_unix_ms`.
    pub fn accepts(&self, key_id: KeyId, now_unix_ms: u64) -> bool {
        self.key_for(key_id, now_unix_ms).is_some()
    }

    fn key_for(&self, key_id: KeyId, now_unix_ms: u64) -> Option<&GossipKey> {
        if key_id == self.current.id {
            return Some(&self.current);
        }
        match &self.previous {
            Some((key, until)) if key.id == key_id && now_unix_ms <= *until => Some(key),
            _ => None,
        }
    }

    /// Seals `payload` with the current key and a fresh random nonce.
    ///
    /// # Panics
    /// If `payload` is longer than [`MAX_PAYLOAD_BYTES`]: callers fragment first.
    pub fn seal(&self, payload: &[u8], now_unix_ms: u64) -> Vec<u8> {
        self.seal_with(self.current.id, payload, now_unix_ms)
    }

    /// Seals with `key_id` if the ring accepts it now, else with the current key. Replies to a
    /// peer that has not rotated yet use the previous key during the overlap, so both
    /// directions keep working while a rotation rolls through the fleet.
    ///
    /// # Panics
    /// If `payload` is longer than [`MAX_PAYLOAD_BYTES`].
    pub fn seal_with(&self, key_id: KeyId, payload: &[u8], now_unix_ms: u64) -> Vec<u8> {
        self.seal_scoped(key_id, "", payload, now_unix_ms)
    }

    /// [`seal_with`](Self::seal_with) for the mesh named `scope` (`""`: the unnamed one).
    ///
    /// # Panics
    /// If `payload` is longer than [`MAX_PAYLOAD_BYTES`] or `scope` than [`MAX_SCOPE_BYTES`].
    pub fn seal_scoped(
        &self,
        key_id: KeyId,
        scope: &str,
        payload: &[u8],
        now_unix_ms: u64,
    ) -> Vec<u8> {
        assert!(
            payload.len() <= MAX_PAYLOAD_BYTES,
            "gossip payload of {} bytes exceeds MAX_PAYLOAD_BYTES; fragment first",
            payload.len()
        );
        assert!(
            scope.len() <= MAX_SCOPE_BYTES,
            "gossip scope of {} bytes exceeds MAX_SCOPE_BYTES",
            scope.len()
        );
        let key = self.key_for(key_id, now_unix_ms).unwrap_or(&self.current);
        let nonce = Nonce::generate();
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2] = if scope.is_empty() {
            VERSION
        } else {
            VERSION_SCOPED
        };
        header[3..7].copy_from_slice(&key.id.0.to_le_bytes());
        header[7..].copy_from_slice(nonce.as_slice());
        let mut plaintext = Vec::with_capacity(TIMESTAMP_LEN + 1 + scope.len() + payload.len());
        plaintext.extend_from_slice(&now_unix_ms.to_le_bytes());
        if !scope.is_empty() {
            plaintext.push(scope.len() as u8);
            plaintext.extend_from_slice(scope.as_bytes());
        }
        plaintext.extend_from_slice(payload);
        let ciphertext = key
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: &plaintext,
                    aad: &header,
                },
            )
            .expect("AES-GCM encryption only fails for inputs larger than 64 GiB");
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Checks and opens a datagram from `sender`: size, header, key, tag, timestamp window,
    /// replay, the sender's quota — in that order, so that nothing unauthenticated reaches the
    /// replay cache.
    ///
    /// # Errors
    /// The [`DropReason`] of the first check that fails.
    pub fn open(
        &mut self,
        datagram: &[u8],
        sender: SocketAddr,
        now_unix_ms: u64,
    ) -> Result<Opened, DropReason> {
        if datagram.len() > MAX_DATAGRAM_BYTES {
            return Err(DropReason::TooLarge);
        }
        if datagram.len() < SEAL_OVERHEAD_BYTES {
            return Err(DropReason::TooShort);
        }
        let (header, ciphertext) = datagram.split_at(HEADER_LEN);
        if header[..2] != MAGIC || !matches!(header[2], VERSION | VERSION_SCOPED) {
            return Err(DropReason::BadMagic);
        }
        let key_id = KeyId(u32::from_le_bytes(
            header[3..7].try_into().expect("4 bytes of key id"),
        ));
        let nonce: [u8; NONCE_LEN] = header[7..].try_into().expect("12 bytes of nonce");
        let key = self
            .key_for(key_id, now_unix_ms)
            .ok_or(DropReason::UnknownKey)?;
        let mut plaintext = key
            .cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: header,
                },
            )
            .map_err(|_| DropReason::Forged)?;
        let sent_at_ms = u64::from_le_bytes(
            plaintext[..TIMESTAMP_LEN]
                .try_into()
                .expect("authenticated plaintext holds the timestamp"),
        );
        let too_old = now_unix_ms.saturating_sub(sent_at_ms) > REPLAY_WINDOW_MS;
        let too_new = sent_at_ms.saturating_sub(now_unix_ms) > MAX_FUTURE_SKEW_MS;
        if too_old || too_new {
            return Err(DropReason::Stale);
        }
        let scope = if header[2] == VERSION_SCOPED {
            read_scope(&plaintext[TIMESTAMP_LEN..]).ok_or(DropReason::Malformed)?
        } else {
            ""
        }
        .to_owned();
        self.forget_before(now_unix_ms.saturating_sub(REPLAY_WINDOW_MS));
        if self.seen.contains_key(&(sent_at_ms, nonce)) {
            return Err(DropReason::Replayed);
        }
        let held = self.per_sender.entry(sender).or_default();
        if *held >= MAX_REPLAY_ENTRIES_PER_SENDER {
            return Err(DropReason::SenderOverQuota);
        }
        if self.seen.len() >= MAX_REPLAY_CACHE_ENTRIES {
            return Err(DropReason::ReplayCacheFull);
        }
        *held += 1;
        self.seen.insert((sent_at_ms, nonce), sender);
        let scope_len = if header[2] == VERSION_SCOPED {
            1 + scope.len()
        } else {
            0
        };
        plaintext.drain(..TIMESTAMP_LEN + scope_len);
        Ok(Opened {
            payload: plaintext,
            key_id,
            scope,
        })
    }

    /// Entries in the replay cache now.
    pub fn replay_cache_len(&self) -> usize {
        self.seen.len()
    }

    /// Forgets nonces whose timestamps are older than `oldest_ms`: a datagram that old is
    /// refused as stale anyway, so its nonce no longer needs remembering.
    fn forget_before(&mut self, oldest_ms: u64) {
        while let Some((&(sent_at_ms, _), _)) = self.seen.first_key_value() {
            if sent_at_ms >= oldest_ms {
                break;
            }
            let Some((_, sender)) = self.seen.pop_first() else {
                break;
            };
            if let Some(held) = self.per_sender.get_mut(&sender) {
                *held -= 1;
                if *held == 0 {
                    self.per_sender.remove(&sender);
                }
            }
        }
    }
}

/// The scope named at the start of a version-2 plaintext (after the clock): a length byte
/// and that many bytes of UTF-8, not empty, at most [`MAX_SCOPE_BYTES`].
fn read_scope(rest: &[u8]) -> Option<&str> {
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if len == 0 || len > MAX_SCOPE_BYTES || rest.len() < len {
        return None;
    }
    std::str::from_utf8(&rest[..len]).ok()
}

#[cfg(test)]
mod tests;
