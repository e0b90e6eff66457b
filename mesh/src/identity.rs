//! Binding each member's gossip state to the member: only a node can say it is alive, or what
//! its metadata is.
//!
//! The gossip key is shared by the cluster, and chitchat lets any peer relay (or invent) any
//! node's state, so a key holder could otherwise gossip as another node: keep a killed node
//! alive with made-up heartbeats, or change what it publishes. So every node also publishes an
//! *attestation* of its own state, signed with its certificate's key:
//!
//! ```text
//! warren.cert  = base64url(the node's certificate, DER)      (changes on renewal)
//! warren.sig   = base64url(at_ms u64 LE ‖ ECDSA P-256 signature, 64 bytes)
//! signed statement    = "warren gossip state v1\0" ‖ len ‖ cluster id ‖ node id u64 LE
//!                       ‖ generation u64 LE ‖ at_ms u64 LE ‖ SHA-256 of every other key-value
//! ```
//!
//! The owner re-signs every [`attest_interval`](crate::MeshTimers::attest_interval) and at once
//! when its metadata changes (the attestation is always its newest key). A receiver accepts a
//! member's state only when the credential is the cluster's certificate for that very node id
//! (the caller's [`MeshIdentity`] decides, from the CA it trusts) and the signature covers
//! exactly the key-values it holds; it keeps the last state that passed, and a member whose
//! attestation has not moved forward for
//! [`attest_timeout`](crate::MeshTimers::attest_timeout) is dead whatever its heartbeat says.
//!
//! What a key holder can still do: relay a node's genuine state late, or write junk under its
//! id (the junk fails the check; the member then looks dead once its last good attestation ages
//! out). Gossip can therefore make a node look dead, never alive or different — and control
//! never acts on gossip's "dead" alone while the node's own link is up.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{ChitchatId, NodeState};
use data_encoding::BASE64URL_NOPAD;
use ring::digest;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use tracing::{debug, warn};
use warren_api::NodeId;

use crate::keyring::REPLAY_WINDOW_MS;
use crate::metrics::MeshMetrics;

/// Metadata key of the node's credential (its certificate).
pub const KEY_CREDENTIAL: &str = "warren.cert";
/// Metadata key of the node's signed attestation of its own state.
pub const KEY_ATTESTATION: &str = "warren.sig";
/// Length of a fixed-form ECDSA P-256 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Most credentials whose public key a node remembers (one per member and renewal).
const MAX_KEYS_CACHED: usize = 8_192;
/// How long a credential's check holds before it is made again: what the caller trusts moves
/// (a node is registered after its first gossip reaches control; a certificate is revoked).
/// Refusals are retried sooner, since the usual reason is a registration still on its way.
const KEY_ACCEPTED_FOR: Duration = Duration::from_secs(60);
const KEY_REFUSED_FOR: Duration = Duration::from_secs(2);

type KeyCache = HashMap<([u8; 32], NodeId), (Instant, Result<Vec<u8>, String>)>;

const STATEMENT_DOMAIN: &[u8] = b"warren gossip state v1\0";

type Credential = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;
type Sign = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;
type PublicKeyOf = Arc<dyn Fn(NodeId, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// How this node signs its state and checks others': given by the caller, who holds the
/// node's certificate and the cluster's CA (this crate knows neither).
#[derive(Clone)]
pub struct MeshIdentity {
    credential: Credential,
    sign: Sign,
    public_key_of: PublicKeyOf,
}

impl fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshIdentity")
    }
}

impl MeshIdentity {
    /// - `credential`: this node's credential as peers check it (its certificate, DER); read
    ///   at every signature, so a renewed certificate is published at once.
    /// - `sign`: signs a statement with the credential's key (ECDSA P-256 SHA-256, the
    ///   64-byte fixed form).
    /// - `public_key_of`: the P-256 public key (uncompressed point) that a member's credential
    ///   proves is `node`'s; an error in words when it proves nothing (another CA, another
    ///   node id, a forged or revoked certificate).
    pub fn new(
        credential: impl Fn() -> Vec<u8> + Send + Sync + 'static,
        sign: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
        public_key_of: impl Fn(NodeId, &[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            credential: Arc::new(credential),
            sign: Arc::new(sign),
            public_key_of: Arc::new(public_key_of),
        }
    }
}

/// Why a member's state was not accepted. Each has a stable metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unverified {
    /// No attestation or no credential published.
    Missing,
    /// The attestation or credential is not well-formed.
    Malformed,
    /// The credential is not the cluster's certificate for this node.
    Credential,
    /// The signature does not cover the state held (forged, or changed by a relay).
    Signature,
    /// Signed earlier than an attestation already accepted from this member (a replay).
    Replayed,
}

impl Unverified {
    /// Every reason, for metrics that start at zero.
    pub const ALL: [Unverified; 5] = [
        Unverified::Missing,
        Unverified::Malformed,
        Unverified::Credential,
        Unverified::Signature,
        Unverified::Replayed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Unverified::Missing => "missing",
            Unverified::Malformed => "malformed",
            Unverified::Credential => "credential",
            Unverified::Signature => "signature",
            Unverified::Replayed => "replayed",
        }
    }
}

/// The statement a node signs about its own state.
fn statement(
    cluster_id: &str,
    node_id: NodeId,
    generation: u64,
    at_ms: u64,
    digest: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATEMENT_DOMAIN.len() + cluster_id.len() + 64);
    out.extend_from_slice(STATEMENT_DOMAIN);
    out.extend_from_slice(&(cluster_id.len() as u64).to_le_bytes());
    out.extend_from_slice(cluster_id.as_bytes());
    out.extend_from_slice(&node_id.0.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.extend_from_slice(digest);
    out
}

/// SHA-256 over every key-value but the attestation, each length-prefixed, in key order.
fn state_digest<'a>(key_values: impl Iterator<Item = (&'a str, &'a str)>) -> digest::Digest {
    let mut context = digest::Context::new(&digest::SHA256);
    for (key, value) in key_values.filter(|(key, _)| *key != KEY_ATTESTATION) {
        context.update(&(key.len() as u64).to_le_bytes());
        context.update(key.as_bytes());
        context.update(&(value.len() as u64).to_le_bytes());
        context.update(value.as_bytes());
    }
    context.finish()
}

fn encode_attestation(at_ms: u64, signature: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(8 + signature.len());
    bytes.extend_from_slice(&at_ms.to_le_bytes());
    bytes.extend_from_slice(signature);
    BASE64URL_NOPAD.encode(&bytes)
}

fn decode_attestation(value: &str) -> Option<(u64, Vec<u8>)> {
    let bytes = BASE64URL_NOPAD.decode(value.as_bytes()).ok()?;
    if bytes.len() != 8 + SIGNATURE_LEN {
        return None;
    }
    let at_ms = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    Some((at_ms, bytes[8..].to_vec()))
}

/// Signs this node's state: the owner's side.
pub(crate) struct Attester {
    identity: MeshIdentity,
    cluster_id: String,
    node_id: NodeId,
    generation: u64,
    last_at_ms: u64,
}

impl fmt::Debug for Attester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attester")
            .field("node_id", &self.node_id)
            .field("last_at_ms", &self.last_at_ms)
            .finish_non_exhaustive()
    }
}

impl Attester {
    pub(crate) fn new(
        identity: MeshIdentity,
        cluster_id: String,
        node_id: NodeId,
        generation: u64,
    ) -> Self {
        Self {
            identity,
            cluster_id,
            node_id,
            generation,
            last_at_ms: 0,
        }
    }

    /// Publishes the credential (if it changed) and a fresh attestation of `state`, which must
    /// be this node's own. The attestation is written last, so it is the state's newest key.
    ///
    /// # Errors
    /// The signer's error, in words; the previous attestation then stays (and ages).
    pub(crate) fn attest(&mut self, state: &mut NodeState, now_ms: u64) -> Result<(), String> {
        let credential = BASE64URL_NOPAD.encode(&(self.identity.credential)());
        if state.get(KEY_CREDENTIAL) != Some(credential.as_str()) {
            state.set(KEY_CREDENTIAL, credential);
        }
        let at_ms = now_ms.max(self.last_at_ms + 1);
        let digest = state_digest(state.key_values());
        let message = statement(
            &self.cluster_id,
            self.node_id,
            self.generation,
            at_ms,
            digest.as_ref(),
        );
        let signature = (self.identity.sign)(&message)?;
        if signature.len() != SIGNATURE_LEN {
            return Err(format!(
                "signer returned {} bytes, not a {SIGNATURE_LEN}-byte P-256 signature",
                signature.len()
            ));
        }
        state.set(KEY_ATTESTATION, encode_attestation(at_ms, &signature));
        self.last_at_ms = at_ms;
        Ok(())
    }

    /// [`attest`](Self::attest), counting the outcome; a failure is logged (peers will see
    /// this node dead once its last attestation ages out, which is the truth about a node
    /// that cannot sign).
    pub(crate) fn attest_or_warn(
        &mut self,
        state: &mut NodeState,
        now_ms: u64,
        metrics: &MeshMetrics,
    ) {
        match self.attest(state, now_ms) {
            Ok(()) => metrics
                .attestations_total
                .with_label_values(&["signed"])
                .inc(),
            Err(error) => {
                metrics
                    .attestations_total
                    .with_label_values(&["failed"])
                    .inc();
                warn!(node_id = %self.node_id, %error, "could not sign this node's gossip state");
            }
        }
    }
}

/// A member's state that passed the check.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    /// When the member signed its newest accepted attestation (its clock).
    pub at_ms: u64,
    /// When that attestation was accepted here.
    pub accepted_at: Instant,
    /// Its metadata, as signed.
    pub meta: Arc<BTreeMap<String, String>>,
}

#[derive(Debug, Default)]
struct Checked {
    /// The state's max version at the last check: nothing is re-checked until it moves.
    version: Option<u64>,
    accepted: Option<Accepted>,
    last_refusal: Option<Unverified>,
}

/// What a node accepted of each member's state: the receiver's side.
pub(crate) struct Verifier {
    identity: MeshIdentity,
    cluster_id: String,
    /// Public key (or refusal) per credential, by SHA-256 of the credential and the node id,
    /// with when it was checked.
    keys: KeyCache,
    members: HashMap<ChitchatId, Checked>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("members", &self.members.len())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// What [`Verifier::check`] found new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckOutcome {
    /// Nothing moved since the last check.
    Unchanged,
    /// A newer attestation was accepted.
    Accepted,
    /// The state moved past its attestation; the owner's next one is on its way.
    Pending,
    /// The state was refused.
    Refused(Unverified),
}

impl Verifier {
    pub(crate) fn new(identity: MeshIdentity, cluster_id: String) -> Self {
        Self {
            identity,
            cluster_id,
            keys: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// Checks `state` of member `id` (node `node_id`) if it moved since the last check.
    pub(crate) fn check(
        &mut self,
        id: &ChitchatId,
        node_id: NodeId,
        state: &NodeState,
        now: Instant,
    ) -> CheckOutcome {
        let Self {
            identity,
            cluster_id,
            keys,
            members,
        } = self;
        let version = state.max_version();
        let checked = members.entry(id.clone()).or_default();
        if checked.version == Some(version) {
            return CheckOutcome::Unchanged;
        }
        checked.version = Some(version);
        let last_at_ms = checked.accepted.as_ref().map(|a| a.at_ms);
        let outcome = verify(
            identity,
            (keys, now),
            cluster_id,
            (id, node_id),
            state,
            last_at_ms,
        );
        match outcome {
            Ok(at_ms) => {
                checked.accepted = Some(Accepted {
                    at_ms,
                    accepted_at: now,
                    meta: Arc::new(
                        state
                            .key_values()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                    ),
                });
                checked.last_refusal = None;
                CheckOutcome::Accepted
            }
            Err(None) => CheckOutcome::Pending,
            Err(Some(reason)) => {
                // A member that has not signed yet is starting (its first state can travel
                // before its first signature): worth a warning only when it is something else.
                if checked.last_refusal != Some(reason) && reason != Unverified::Missing {
                    warn!(node_id = %node_id, generation = id.generation_id, reason = reason.label(), "gossip state of a member refused: it is not what the member signed");
                } else {
                    debug!(node_id = %node_id, reason = reason.label(), "gossip state refused again");
                }
                checked.last_refusal = Some(reason);
                CheckOutcome::Refused(reason)
            }
        }
    }

    /// The last state accepted from member `id`.
    pub(crate) fn accepted(&self, id: &ChitchatId) -> Option<&Accepted> {
        self.members.get(id)?.accepted.as_ref()
    }

    /// Forgets members chitchat no longer holds, and the key cache when it is full.
    pub(crate) fn retain(&mut self, present: impl Fn(&ChitchatId) -> bool) {
        self.members.retain(|id, _| present(id));
        if self.keys.len() > MAX_KEYS_CACHED {
            self.keys.clear();
        }
    }
}

/// The attested time if `state` is what member `node_id` signed and newer than `last_at_ms`;
/// `Err(None)` when the state moved past its attestation (not yet re-signed), `Err(Some(_))`
/// when it is refused.
fn verify(
    identity: &MeshIdentity,
    (keys, now): (&mut KeyCache, Instant),
    cluster_id: &str,
    (id, node_id): (&ChitchatId, NodeId),
    state: &NodeState,
    last_at_ms: Option<u64>,
) -> Result<u64, Option<Unverified>> {
    let (Some(attestation), Some(credential)) = (
        state.get_versioned(KEY_ATTESTATION),
        state.get(KEY_CREDENTIAL),
    ) else {
        return Err(Some(Unverified::Missing));
    };
    if attestation.is_deleted() {
        return Err(Some(Unverified::Missing));
    }
    if attestation.version < state.max_version() {
        return Err(None);
    }
    let (at_ms, signature) =
        decode_attestation(&attestation.value).ok_or(Some(Unverified::Malformed))?;
    if last_at_ms.is_some_and(|last| at_ms <= last) {
        return Err(Some(Unverified::Replayed));
    }
    let credential = BASE64URL_NOPAD
        .decode(credential.as_bytes())
        .map_err(|_| Some(Unverified::Malformed))?;
    let fingerprint: [u8; 32] = digest::digest(&digest::SHA256, &credential)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes");
    let cached = keys
        .entry((fingerprint, node_id))
        .or_insert_with(|| (now, (identity.public_key_of)(node_id, &credential)));
    let holds_for = if cached.1.is_ok() {
        KEY_ACCEPTED_FOR
    } else {
        KEY_REFUSED_FOR
    };
    if now.saturating_duration_since(cached.0) > holds_for {
        *cached = (now, (identity.public_key_of)(node_id, &credential));
    }
    let public_key = match &cached.1 {
        Ok(key) => key,
        Err(why) => {
            debug!(node_id = %node_id, error = %why, "gossip credential refused");
            return Err(Some(Unverified::Credential));
        }
    };
    let digest = state_digest(state.key_values());
    let message = statement(
        cluster_id,
        node_id,
        id.generation_id,
        at_ms,
        digest.as_ref(),
    );
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key.as_slice())
        .verify(&message, &signature)
        .map_err(|_| Some(Unverified::Signature))?;
    Ok(at_ms)
}

/// Whether an accepted attestation still vouches for its member at `now`: accepted here within
/// `timeout`, and signed within `timeout` plus the clock skew gossip tolerates (so that a node
/// that learns of a member late does not take an old attestation for a fresh one for long).
pub(crate) fn is_fresh(accepted: &Accepted, timeout: Duration, now: Instant, now_ms: u64) -> bool {
    let held_for = now.saturating_duration_since(accepted.accepted_at);
    let age_ms = now_ms.saturating_sub(accepted.at_ms);
    held_for <= timeout && age_ms <= timeout.as_millis() as u64 + REPLAY_WINDOW_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_encoding_round_trips_and_refuses_junk() {
        let signature = [7u8; SIGNATURE_LEN];
        let encoded = encode_attestation(42, &signature);
        assert_eq!(decode_attestation(&encoded), Some((42, signature.to_vec())));
        assert_eq!(decode_attestation("not base64!"), None);
        assert_eq!(
            decode_attestation(&BASE64URL_NOPAD.encode(&[1, 2, 3])),
            None
        );
    }

    #[test]
    fn the_digest_covers_every_key_but_the_attestation() {
        let base = [("a", "1"), ("b", "2")];
        let with_attestation = [("a", "1"), ("b", "2"), (KEY_ATTESTATION, "x")];
        let changed = [("a", "1"), ("b", "3")];
        // Moving bytes between key and value must change the digest too.
        let shifted = [("a", "1"), ("b2", "")];
        let d = |kv: &[(&'static str, &'static str)]| {
            state_digest(kv.iter().copied()).as_ref().to_vec()
        };
        assert_eq!(d(&base), d(&with_attestation));
        assert_ne!(d(&base), d(&changed));
        assert_ne!(d(&changed), d(&shifted));
    }

    #[test]
    fn the_statement_names_cluster_node_generation_and_time() {
        let digest = [0u8; 32];
        let a = statement("c", NodeId(1), 5, 9, &digest);
        for other in [
            statement("d", NodeId(1), 5, 9, &digest),
            statement("c", NodeId(2), 5, 9, &digest),
            statement("c", NodeId(1), 6, 9, &digest),
            statement("c", NodeId(1), 5, 10, &digest),
            statement("c", NodeId(1), 5, 9, &[1u8; 32]),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn freshness_needs_a_recent_acceptance_and_a_plausible_signing_time() {
        let now = Instant::now();
        let timeout = Duration::from_secs(10);
        let accepted = |ago: Duration, at_ms: u64| Accepted {
            at_ms,
            accepted_at: now - ago,
            meta: Arc::default(),
        };
        let now_ms = 1_000_000;
        assert!(is_fresh(
            &accepted(Duration::from_secs(1), now_ms),
            timeout,
            now,
            now_ms
        ));
        assert!(!is_fresh(
            &accepted(Duration::from_secs(11), now_ms),
            timeout,
            now,
            now_ms
        ));
        let ancient = now_ms - 10_000 - REPLAY_WINDOW_MS - 1;
        assert!(!is_fresh(
            &accepted(Duration::ZERO, ancient),
            timeout,
            now,
            now_ms
        ));
    }
}
