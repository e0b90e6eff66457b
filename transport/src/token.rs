//! Join tokens, in the Docker Swarm manner.
//!
//! A token reads `WRN1-<a|c>-<ca fingerprint>-<token id>-<secret>`:
//! - the role letter (agent/control) is informational; the server-side record decides;
//! - the CA fingerprint (SHA-256 of the cluster CA certificate, base32) lets the joiner verify
//!   the server *before* it sends the secret;
//! - the token id (8 bytes, hex) names the server-side record;
//! - the secret is 160 random bits (base32).
//!
//! The server stores only a [`TokenRecord`]: the SHA-256 of the secret, the role, expiry and
//! single-use state. Secrets are compared in constant time. A secret of 160 random bits needs no
//! slow password hash: there is nothing to brute-force.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use warren_api::NodeRole;

const PREFIX: &str = "WRN1";
const SECRET_LEN: usize = 20;
const ID_LEN: usize = 8;
// The floor: at least 128 bits of secret.
const _: () = assert!(SECRET_LEN * 8 >= 128);
const B32: data_encoding::Encoding = data_encoding::BASE32_DNSSEC;

/// Longest token string accepted before parsing; anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 256;

/// The public half of a token: names the server-side record.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenId(pub [u8; ID_LEN]);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl FromStr for TokenId {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| TokenError::Malformed("token id is not hex"))?;
        let bytes: [u8; ID_LEN] = bytes
            .try_into()
            .map_err(|_| TokenError::Malformed("token id has the wrong length"))?;
        Ok(Self(bytes))
    }
}

/// A join token as the operator sees it. `Display` prints the whole token (secret included);
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The role letter in the token (the server-side record is authoritative).
    pub role: NodeRole,
    /// SHA-256 of the cluster CA certificate.
    pub ca_fingerprint: [u8; 32],
    /// Names the server-side record.
    pub id: TokenId,
    secret: [u8; SECRET_LEN],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("role", &self.role)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// SHA-256 of the secret: all the server ever stores or logs.
    pub fn secret_sha256(&self) -> [u8; 32] {
        sha256(&self.secret)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            NodeRole::Agent => 'a',
            NodeRole::Control => 'c',
        };
        write!(
            f,
            "{PREFIX}-{role}-{}-{}-{}",
            B32.encode(&self.ca_fingerprint),
            self.id,
            B32.encode(&self.secret)
        )
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("token is too long"));
        }
        let parts: Vec<&str> = s.split('-').collect();
        let [prefix, role, fingerprint, id, secret] = parts.as_slice() else {
            return Err(TokenError::Malformed(
                "expected WRN1-<role>-<ca>-<id>-<secret>",
            ));
        };
        if *prefix != PREFIX {
            return Err(TokenError::Malformed("token does not start with WRN1"));
        }
        let role = match *role {
            "a" => NodeRole::Agent,
            "c" => NodeRole::Control,
            _ => {
                return Err(TokenError::Malformed(
                    "role must be 'a' (agent) or 'c' (control)",
                ));
            }
        };
        let fingerprint = B32
            .decode(fingerprint.as_bytes())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(TokenError::Malformed(
                "CA fingerprint is not 32 bytes of base32",
            ))?;
        let secret = B32
            .decode(secret.as_bytes())
            .ok()
            .and_then(|b| <[u8; SECRET_LEN]>::try_from(b).ok())
            .ok_or(TokenError::Malformed("secret is not 20 bytes of base32"))?;
        Ok(Self {
            role,
            ca_fingerprint: fingerprint,
            id: id.parse()?,
            secret,
        })
    }
}

/// Why a token was refused. Every variant is a refusal the joiner sees as one line.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The string is not a Warren token.
    #[error("malformed join token: {0}")]
    Malformed(&'static str),
    /// The token pins another cluster's CA.
    #[error("join token belongs to another cluster (CA fingerprint mismatch)")]
    WrongCluster,
    /// No record with that id (never minted, or pruned after expiry).
    #[error("join token is not known to this cluster")]
    Unknown,
    /// The secret does not match the record: a forged token.
    #[error("join token is invalid")]
    BadSecret,
    /// Minted for another role.
    #[error("join token is for role {token}, not {wanted}")]
    WrongRole {
        /// The record's role.
        token: &'static str,
        /// The role the joiner asked for.
        wanted: &'static str,
    },
    /// Past its expiry.
    #[error("join token has expired")]
    Expired,
    /// A single-use token that was already redeemed.
    #[error("join token was single-use and has already been used")]
    AlreadyUsed,
    /// Revoked by an operator.
    #[error("join token has been revoked")]
    Revoked,
}

impl TokenError {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::WrongCluster => "wrong_cluster",
            Self::Unknown => "unknown",
            Self::BadSecret => "bad_secret",
            Self::WrongRole { .. } => "wrong_role",
            Self::Expired => "expired",
            Self::AlreadyUsed => "already_used",
            Self::Revoked => "revoked",
        }
    }
}

/// What the server keeps about a token: never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's id.
    pub id: TokenId,
    /// The role a joiner with this token gets.
    pub role: NodeRole,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// When it was minted (unix ms).
    pub created_at_ms: u64,
    /// When it stops working (unix ms); `None` = never.
    pub expires_at_ms: Option<u64>,
    /// Whether the first successful join uses it up.
    pub single_use: bool,
    /// When a single-use token was redeemed.
    pub used_at_ms: Option<u64>,
    /// Revoked by an operator.
    pub revoked: bool,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the OS random source is available");
    bytes
}

/// Options for minting a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MintOptions {
    /// The role joiners get.
    pub role: NodeRole,
    /// How long the token works; `None` = until revoked.
    pub ttl: Option<Duration>,
    /// Whether the first join uses it up.
    pub single_use: bool,
}

impl TokenRecord {
    /// Checks a presented token against this record, in constant time on the secret.
    ///
    /// # Errors
    /// The [`TokenError`] that refuses the token.
    pub fn check(
        &self,
        token: &JoinToken,
        wanted: NodeRole,
        now_ms: u64,
    ) -> Result<(), TokenError> {
        self.check_hashed(&token.secret_sha256(), wanted, now_ms)
    }

    /// As [`Self::check`], given the SHA-256 of the presented secret. The control plane
    /// proposes only the hash through Raft, so no plaintext secret reaches the log on disk.
    ///
    /// # Errors
    /// The [`TokenError`] that refuses the token.
    pub fn check_hashed(
        &self,
        presented_sha256: &[u8; 32],
        wanted: NodeRole,
        now_ms: u64,
    ) -> Result<(), TokenError> {
        if !bool::from(presented_sha256.ct_eq(&self.secret_sha256)) {
            return Err(TokenError::BadSecret);
        }
        if self.revoked {
            return Err(TokenError::Revoked);
        }
        if self.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Err(TokenError::Expired);
        }
        if self.single_use && self.used_at_ms.is_some() {
            return Err(TokenError::AlreadyUsed);
        }
        if self.role != wanted {
            return Err(TokenError::WrongRole {
                token: self.role.as_str(),
                wanted: wanted.as_str(),
            });
        }
        Ok(())
    }
}

/// Mints a fresh token and the record the server keeps for it.
pub fn mint(
    ca_fingerprint: [u8; 32],
    options: MintOptions,
    now_ms: u64,
) -> (JoinToken, TokenRecord) {
    let token = JoinToken {
        role: options.role,
        ca_fingerprint,
        id: TokenId(random_bytes()),
        secret: random_bytes(),
    };
    let record = TokenRecord {
        id: token.id,
        role: options.role,
        secret_sha256: sha256(&token.secret),
        created_at_ms: now_ms,
        expires_at_ms: options
            .ttl
            .map(|ttl| now_ms.saturating_add(ttl.as_millis() as u64)),
        single_use: options.single_use,
        used_at_ms: None,
        revoked: false,
    };
    (token, record)
}

/// The server-side set of token records. The control plane keeps one in its replicated state;
/// a [`crate::join::LocalJoinAuthority`] keeps one in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBook {
    records: BTreeMap<TokenId, TokenRecord>,
}

impl TokenBook {
    /// Adds a record (as minted by [`mint`]).
    pub fn insert(&mut self, record: TokenRecord) {
        self.records.insert(record.id, record);
    }

    /// Verifies a token for `wanted` and, if it is single-use, marks it used.
    ///
    /// # Errors
    /// The [`TokenError`] that refuses the token; the book is unchanged then.
    pub fn redeem(
        &mut self,
        token: &JoinToken,
        cluster_fingerprint: [u8; 32],
        wanted: NodeRole,
        now_ms: u64,
    ) -> Result<TokenId, TokenError> {
        if !bool::from(token.ca_fingerprint.ct_eq(&cluster_fingerprint)) {
            return Err(TokenError::WrongCluster);
        }
        self.redeem_hashed(token.id, &token.secret_sha256(), wanted, now_ms)
    }

    /// As [`Self::redeem`] for a token whose cluster was already checked, given the SHA-256 of
    /// its secret (what the control plane puts in its log).
    ///
    /// # Errors
    /// The [`TokenError`] that refuses the token; the book is unchanged then.
    pub fn redeem_hashed(
        &mut self,
        id: TokenId,
        presented_sha256: &[u8; 32],
        wanted: NodeRole,
        now_ms: u64,
    ) -> Result<TokenId, TokenError> {
        let record = self.records.get_mut(&id).ok_or(TokenError::Unknown)?;
        record.check_hashed(presented_sha256, wanted, now_ms)?;
        if record.single_use {
            record.used_at_ms = Some(now_ms);
        }
        Ok(record.id)
    }

    /// The record for a token id.
    pub fn get(&self, id: TokenId) -> Option<&TokenRecord> {
        self.records.get(&id)
    }

    /// Revokes a token; returns whether it existed.
    pub fn revoke(&mut self, id: TokenId) -> bool {
        self.records
            .get_mut(&id)
            .map(|r| r.revoked = true)
            .is_some()
    }

    /// Gives a single-use token its use back, after the join that redeemed it was undone.
    /// Returns whether there was a use to give back (multi-use tokens have none).
    pub fn give_back(&mut self, id: TokenId) -> bool {
        self.records
            .get_mut(&id)
            .and_then(|r| r.used_at_ms.take())
            .is_some()
    }

    /// Drops records that can never be redeemed again (expired, used up or revoked).
    pub fn prune(&mut self, now_ms: u64) -> usize {
        self.prune_except(now_ms, |_| false)
    }

    /// As [`Self::prune`], but keeps the records `keep` names: a used single-use token whose
    /// join may still be undone must stay, so that [`Self::give_back`] finds it.
    pub fn prune_except(&mut self, now_ms: u64, keep: impl Fn(TokenId) -> bool) -> usize {
        let before = self.records.len();
        self.records.retain(|id, r| {
            keep(*id)
                || !(r.revoked
                    || r.expires_at_ms.is_some_and(|at| now_ms >= at)
                    || (r.single_use && r.used_at_ms.is_some()))
        });
        before - self.records.len()
    }

    /// All records, by id.
    pub fn records(&self) -> impl Iterator<Item = &TokenRecord> {
        self.records.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: [u8; 32] = [7; 32];
    const NOW: u64 = 1_000_000;

    fn book_with(options: MintOptions) -> (TokenBook, JoinToken) {
        let (token, record) = mint(FP, options, NOW);
        let mut book = TokenBook::default();
        book.insert(record);
        (book, token)
    }

    fn agent(ttl_s: Option<u64>, single_use: bool) -> MintOptions {
        MintOptions {
            role: NodeRole::Agent,
            ttl: ttl_s.map(Duration::from_secs),
            single_use,
        }
    }

    #[test]
    fn token_string_round_trips_and_secret_is_long_enough() {
        let (token, _) = mint(FP, agent(None, false), NOW);
        let text = token.to_string();
        assert!(text.starts_with("WRN1-a-"), "{text}");
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert!(!format!("{token:?}").contains(&B32.encode(&token.secret)));
    }

    #[test]
    fn each_bad_token_case_is_refused_with_its_own_error() {
        let (mut book, token) = book_with(agent(Some(60), true));
        // Wrong cluster.
        assert_eq!(
            book.redeem(&token, [8; 32], NodeRole::Agent, NOW),
            Err(TokenError::WrongCluster)
        );
        // Forged: right id, wrong secret.
        let mut forged = token.clone();
        forged.secret[0] ^= 1;
        assert_eq!(
            book.redeem(&forged, FP, NodeRole::Agent, NOW),
            Err(TokenError::BadSecret)
        );
        // Unknown id.
        let mut unknown = token.clone();
        unknown.id.0[0] ^= 1;
        assert_eq!(
            book.redeem(&unknown, FP, NodeRole::Agent, NOW),
            Err(TokenError::Unknown)
        );
        // Wrong role.
        assert!(matches!(
            book.redeem(&token, FP, NodeRole::Control, NOW),
            Err(TokenError::WrongRole { .. })
        ));
        // Expired.
        assert_eq!(
            book.redeem(&token, FP, NodeRole::Agent, NOW + 60_000),
            Err(TokenError::Expired)
        );
        // Valid once, then reused.
        assert!(book.redeem(&token, FP, NodeRole::Agent, NOW + 1).is_ok());
        assert_eq!(
            book.redeem(&token, FP, NodeRole::Agent, NOW + 2),
            Err(TokenError::AlreadyUsed)
        );
        // Revoked.
        let (mut book, token) = book_with(agent(None, false));
        assert!(book.revoke(token.id));
        assert_eq!(
            book.redeem(&token, FP, NodeRole::Agent, NOW),
            Err(TokenError::Revoked)
        );
    }

    #[test]
    fn multi_use_token_works_repeatedly_and_prune_keeps_live_ones() {
        let (mut book, token) = book_with(agent(None, false));
        for i in 0..3 {
            assert!(book.redeem(&token, FP, NodeRole::Agent, NOW + i).is_ok());
        }
        let (used_token, used) = mint(FP, agent(None, true), NOW);
        book.insert(used);
        book.redeem(&used_token, FP, NodeRole::Agent, NOW).unwrap();
        assert_eq!(book.prune(NOW), 1);
        assert_eq!(book.records().count(), 1);
    }

    #[test]
    fn a_given_back_single_use_token_works_again_and_is_kept_while_asked() {
        let (mut book, token) = book_with(agent(None, true));
        book.redeem(&token, FP, NodeRole::Agent, NOW).unwrap();
        assert_eq!(book.prune_except(NOW, |id| id == token.id), 0);
        assert!(book.give_back(token.id));
        assert!(!book.give_back(token.id), "only one use to give back");
        book.redeem(&token, FP, NodeRole::Agent, NOW + 1).unwrap();
        assert_eq!(
            book.redeem(&token, FP, NodeRole::Agent, NOW + 2),
            Err(TokenError::AlreadyUsed)
        );
        let (mut multi, token) = book_with(agent(None, false));
        multi.redeem(&token, FP, NodeRole::Agent, NOW).unwrap();
        assert!(
            !multi.give_back(token.id),
            "multi-use tokens are never used up"
        );
    }

    #[test]
    fn malformed_strings_are_refused() {
        let (token, _) = mint(FP, agent(None, false), NOW);
        let good = token.to_string();
        for bad in [
            "",
            "WRN1",
            "SWMTKN-1-abc-def",
            &good.replacen("WRN1", "WRN2", 1),
            &good.replacen("-a-", "-x-", 1),
            &good[..good.len() - 1],
            &format!("{good}-extra"),
            &"A".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(bad.parse::<JoinToken>(), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = s.parse::<JoinToken>();
        }
    }
}
