//! AES-256-GCM sealing of small blobs: the CA key and secret values under the cluster key, and
//! secret values under each node's own key for delivery to agents.
//!
//! A sealed blob is `magic (4) | version (1) | nonce (12) | ciphertext+tag`. The caller's
//! `purpose` string is bound as associated data so a blob sealed for one purpose cannot be
//! opened as another. [`seal`] draws a random nonce; [`seal_deterministic`] derives it from the
//! key, purpose and plaintext (see there for why that is safe and when to use it).
//!
//! [`node_secret_key`] derives a node's secret key from the cluster key, so every control node
//! can seal for any node without storing a key per node.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use ring::{hkdf, hmac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use warren_api::NodeId;

const MAGIC: &[u8; 4] = b"WRNS";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;

/// A 256-bit key-encryption key. Debug output never shows the bytes; equality is checked in
/// constant time. Serializable so that a join grant can carry a node's key (over TLS).
#[derive(Clone, Serialize, Deserialize)]
pub struct SealKey([u8; 32]);

impl PartialEq for SealKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SealKey {}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let key = Key::<Aes256Gcm>::generate();
        Self(key.into())
    }

    /// Wraps existing key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes, for writing to a key file.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Encodes the key as lowercase hex (64 characters) for a key file.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }

    /// Parses a key from hex, ignoring surrounding whitespace.
    ///
    /// # Errors
    /// [`SealError::BadKey`] when the text is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim().as_bytes())
            .map_err(|_| SealError::BadKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self(bytes))
    }
}

/// Why a sealed blob could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Shorter than the header, or not our magic bytes.
    #[error("not a sealed warren blob (bad header)")]
    BadHeader,
    /// A version this build does not know.
    #[error("sealed blob has unsupported version {0}")]
    UnsupportedVersion(u8),
    /// Wrong key, wrong purpose, or the ciphertext was altered.
    #[error("sealed blob failed authentication (wrong key or corrupted data)")]
    Authentication,
    /// A key file that is not 64 hex digits.
    #[error("seal key must be 64 hex digits")]
    BadKey,
}

/// Seals `plaintext` under `key`, binding `purpose` as associated data.
pub fn seal(key: &SealKey, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.0));
    let nonce = Nonce::generate();
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: purpose.as_bytes(),
            },
        )
        .expect("AES-GCM encryption only fails for inputs larger than 64 GiB");
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(nonce.as_slice());
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens a blob made by [`seal`] with the same key and purpose.
///
/// # Errors
/// [`SealError`] when the header is wrong or authentication fails.
pub fn open(key: &SealKey, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < HEADER_LEN || &sealed[..MAGIC.len()] != MAGIC {
        return Err(SealError::BadHeader);
    }
    let version = sealed[MAGIC.len()];
    if version != VERSION {
        return Err(SealError::UnsupportedVersion(version));
    }
    let nonce_bytes: [u8; NONCE_LEN] = sealed[MAGIC.len() + 1..HEADER_LEN]
        .try_into()
        .expect("slice has exactly NONCE_LEN bytes");
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.0));
    cipher
        .decrypt(
            &Nonce::from(nonce_bytes),
            Payload {
                msg: &sealed[HEADER_LEN..],
                aad: purpose.as_bytes(),
            },
        )
        .map_err(|_| SealError::Authentication)
}

/// Seals `plaintext` and returns the nonce and the ciphertext (with tag) separately, for
/// formats that store them as fields (`warren_api::SealedBlob`).
pub fn seal_parts(key: &SealKey, purpose: &str, plaintext: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
    let sealed = seal(key, purpose, plaintext);
    let nonce: [u8; NONCE_LEN] = sealed[MAGIC.len() + 1..HEADER_LEN]
        .try_into()
        .expect("header holds the nonce");
    (nonce, sealed[HEADER_LEN..].to_vec())
}

/// `info` prefix of the HKDF expansion that turns the cluster key into a node's secret key.
const NODE_KEY_INFO: &[u8] = b"warren node secret key v1";

/// Domain separation for the HMAC that derives [`seal_deterministic`]'s nonces, so that these
/// HMAC outputs can never coincide with an HMAC computed under the same key for another use.
const DETERMINISTIC_NONCE_DOMAIN: &[u8] = b"warren deterministic nonce v1";

/// The key that seals secret values for node `node_id`:
/// `HKDF-SHA256(salt = none, ikm = cluster key, info = "warren node secret key v1" ||
/// node_id as 8 bytes big-endian)`.
///
/// Derived rather than stored, so every control node computes the same key from the cluster
/// key it already holds, and the replicated state gains nothing to protect. A node receives its
/// own key once, in its join grant; knowing it reveals nothing about the cluster key or any
/// other node's key (HKDF outputs for different `info` are independent).
pub fn node_secret_key(cluster_key: &SealKey, node_id: NodeId) -> SealKey {
    SealKey(derive_key(
        cluster_key,
        &[NODE_KEY_INFO, &node_id.0.to_be_bytes()],
    ))
}

/// `HKDF-SHA256(salt = none, ikm = cluster key, info = the concatenation of info)`: 32 bytes.
fn derive_key(cluster_key: &SealKey, info: &[&[u8]]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&cluster_key.0);
    let okm = prk
        .expand(info, hkdf::HKDF_SHA256)
        .expect("32 bytes is within HKDF-SHA256's output limit");
    let mut key = [0u8; 32];
    okm.fill(&mut key)
        .expect("the output buffer has the length asked for");
    key
}

/// `info` prefix of the gossip keys.
const GOSSIP_KEY_INFO: &[u8] = b"warren gossip key v1";

/// Name under which a node's view carries gossip key `id`, sealed for the node like a secret.
/// Secret references are DNS labels, which have no `.`, so no workload can ask for it.
pub fn gossip_key_secret_name(id: u32) -> String {
    format!("warren.gossip-key.{id}")
}

/// The gossip key `id` from the name its view entry carries, if it is one.
pub fn gossip_key_id_of(name: &str) -> Option<u32> {
    name.strip_prefix("warren.gossip-key.")?.parse().ok()
}

/// Gossip key `id` (the mesh seals every datagram with it):
/// `HKDF-SHA256(salt = none, ikm = cluster key, info = "warren gossip key v1" || id as 4 bytes
/// big-endian)`. Derived like the node keys, so every control node has it without storing it;
/// rotating means moving to the next id.
pub fn gossip_key(cluster_key: &SealKey, id: u32) -> [u8; 32] {
    derive_key(cluster_key, &[GOSSIP_KEY_INFO, &id.to_be_bytes()])
}

/// The purpose (associated data) under which the secret `name` is sealed for a node. Binding
/// the name means a blob delivered as one secret cannot be opened as another.
pub fn node_secret_purpose(name: &str) -> String {
    format!("warren node secret v1/{name}")
}

/// Seals `plaintext` like [`seal_parts`], but with a nonce derived from the input instead of a
/// random one: the first 12 bytes of `HMAC-SHA256(key, "warren deterministic nonce v1" ||
/// len(purpose) as 8 bytes big-endian || purpose || plaintext)`.
///
/// Why: a node's view must be a pure function of the replicated state, so that rebuilding it
/// (on every applied entry, on every control node an agent may reconnect to) gives the same
/// bytes and no spurious delta. A random nonce would make every rebuild a "change".
///
/// Why it is safe (the SIV argument, as in AES-GCM-SIV and RFC 5297): AES-GCM breaks only
/// when one nonce is used under one key for two *different* messages. Here the nonce is a PRF
/// of `(purpose, plaintext)` — the length prefix makes that encoding injective, so two
/// different pairs collide only if HMAC-SHA256 truncated to 96 bits does (about 2^-96 per
/// pair). The same pair gives the same nonce and therefore the same ciphertext, which reveals
/// exactly one thing to an observer: that the value is unchanged. Nothing else leaks.
///
/// Use it only where that equality leak is acceptable and determinism is needed; [`seal`] and
/// [`seal_parts`] stay the default.
pub fn seal_deterministic(
    key: &SealKey,
    purpose: &str,
    plaintext: &[u8],
) -> ([u8; NONCE_LEN], Vec<u8>) {
    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &key.0));
    mac.update(DETERMINISTIC_NONCE_DOMAIN);
    mac.update(&(purpose.len() as u64).to_be_bytes());
    mac.update(purpose.as_bytes());
    mac.update(plaintext);
    let tag = mac.sign();
    let nonce: [u8; NONCE_LEN] = tag.as_ref()[..NONCE_LEN]
        .try_into()
        .expect("an HMAC-SHA256 tag is longer than a nonce");
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.0));
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: purpose.as_bytes(),
            },
        )
        .expect("AES-GCM encryption only fails for inputs larger than 64 GiB");
    (nonce, ciphertext)
}

/// Opens what [`seal_parts`] or [`seal_deterministic`] produced.
///
/// # Errors
/// [`SealError::Authentication`] for a wrong key, purpose or altered data.
pub fn open_parts(
    key: &SealKey,
    purpose: &str,
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    sealed.extend_from_slice(MAGIC);
    sealed.push(VERSION);
    sealed.extend_from_slice(nonce);
    sealed.extend_from_slice(ciphertext);
    open(key, purpose, &sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_keys_are_stable_distinct_and_named() {
        let cluster = SealKey::generate();
        assert_eq!(gossip_key(&cluster, 1), gossip_key(&cluster, 1));
        assert_ne!(gossip_key(&cluster, 1), gossip_key(&cluster, 2));
        assert_ne!(gossip_key(&cluster, 1), gossip_key(&SealKey::generate(), 1));
        assert_ne!(
            &gossip_key(&cluster, 1),
            node_secret_key(&cluster, NodeId(1)).as_bytes()
        );
        assert_eq!(gossip_key_id_of(&gossip_key_secret_name(7)), Some(7));
        assert_eq!(gossip_key_id_of("db"), None);
        assert_eq!(gossip_key_id_of("warren.gossip-key.x"), None);
    }

    #[test]
    fn parts_round_trip() {
        let key = SealKey::generate();
        let (nonce, ciphertext) = seal_parts(&key, "secret", b"value");
        assert_eq!(
            open_parts(&key, "secret", &nonce, &ciphertext).unwrap(),
            b"value"
        );
        assert!(open_parts(&key, "other", &nonce, &ciphertext).is_err());
    }

    fn counting_key() -> SealKey {
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = i as u8;
        }
        SealKey::from_bytes(bytes)
    }

    /// Known answers computed independently (Python's `hmac` module, RFC 5869 by hand): the
    /// derivation and the nonce are a contract between control nodes and agents of different
    /// builds, so they must never drift.
    #[test]
    fn node_key_and_nonce_known_answers() {
        let node_key = node_secret_key(&counting_key(), NodeId(42));
        assert_eq!(
            node_key.to_hex(),
            "2d396b76538b5d36f980e609be6bd938318b97c7dd3d43f85e8682d3b566ccc0"
        );
        let (nonce, _) = seal_deterministic(&node_key, &node_secret_purpose("db"), b"hunter2");
        assert_eq!(
            data_encoding::HEXLOWER.encode(&nonce),
            "2426ccea5d64915318e723e2"
        );
    }

    #[test]
    fn node_keys_differ_per_node_and_per_cluster() {
        let cluster = counting_key();
        let a = node_secret_key(&cluster, NodeId(1));
        assert_eq!(a, node_secret_key(&cluster, NodeId(1)));
        assert_ne!(a, node_secret_key(&cluster, NodeId(2)));
        assert_ne!(a, node_secret_key(&SealKey::generate(), NodeId(1)));
        assert_ne!(a, cluster);
    }

    #[test]
    fn deterministic_seal_is_deterministic_and_opens_only_with_its_key_and_purpose() {
        let cluster = counting_key();
        let node = node_secret_key(&cluster, NodeId(7));
        let other_node = node_secret_key(&cluster, NodeId(8));
        let purpose = node_secret_purpose("db");

        let first = seal_deterministic(&node, &purpose, b"hunter2");
        assert_eq!(first, seal_deterministic(&node, &purpose, b"hunter2"));
        let (nonce, ciphertext) = &first;
        assert_eq!(
            open_parts(&node, &purpose, nonce, ciphertext).unwrap(),
            b"hunter2"
        );
        assert_eq!(
            open_parts(&other_node, &purpose, nonce, ciphertext),
            Err(SealError::Authentication)
        );
        assert_eq!(
            open_parts(&node, &node_secret_purpose("api"), nonce, ciphertext),
            Err(SealError::Authentication)
        );

        // Different plaintext, purpose or key: a different nonce, never a reused one.
        let changed = seal_deterministic(&node, &purpose, b"hunter3");
        assert_ne!(changed.0, first.0);
        let renamed = seal_deterministic(&node, &node_secret_purpose("dc"), b"hunter2");
        assert_ne!(renamed.0, first.0);
        assert_ne!(
            seal_deterministic(&other_node, &purpose, b"hunter2").0,
            first.0
        );
        // The length prefix keeps (purpose, plaintext) pairs apart even when their
        // concatenations are equal.
        assert_ne!(
            seal_deterministic(&node, "ab", b"c").0,
            seal_deterministic(&node, "a", b"bc").0
        );
    }

    #[test]
    fn seal_key_serde_round_trips_and_debug_hides_it() {
        let key = SealKey::generate();
        let bytes = postcard::to_allocvec(&key).unwrap();
        assert_eq!(postcard::from_bytes::<SealKey>(&bytes).unwrap(), key);
        assert_eq!(format!("{key:?}"), "SealKey(..)");
    }

    #[test]
    fn seal_round_trips_and_binds_key_and_purpose() {
        let key = SealKey::generate();
        let sealed = seal(&key, "ca-key", b"secret bytes");
        assert_eq!(open(&key, "ca-key", &sealed).unwrap(), b"secret bytes");
        assert_eq!(open(&key, "other", &sealed), Err(SealError::Authentication));
        assert_eq!(
            open(&SealKey::generate(), "ca-key", &sealed),
            Err(SealError::Authentication)
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&key, "ca-key", &flipped),
            Err(SealError::Authentication)
        );
        assert_eq!(open(&key, "ca-key", b"WRN"), Err(SealError::BadHeader));
    }

    #[test]
    fn key_hex_round_trips() {
        let key = SealKey::generate();
        assert_eq!(
            SealKey::from_hex(&key.to_hex()).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert_eq!(SealKey::from_hex("abcd").unwrap_err(), SealError::BadKey);
    }
}
