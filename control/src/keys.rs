//! The cluster keys a control node holds: one per generation.
//!
//! Generation 1 is the key `control init` made. Rotating (when a node is removed, or on
//! `warren cluster rotate-keys`) adds the next generation; the replicated state then says which
//! generation seals the CA key and new secret values ([`crate::state::ClusterState::key_gen`]),
//! and the gossip key of that generation is the one the mesh uses. Older generations are kept:
//! secret values sealed under one stay readable until the next rotation re-seals them, and node
//! secret keys derive from generation 1 for the life of the cluster (an agent's `secret.key`
//! never changes). A removed node holds only the generations made before its removal.
//!
//! On disk (`cluster.key`, 0600) one line per generation, `GEN HEX`; the single hex line of a
//! data dir written before rotation existed reads as generation 1.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use warren_api::Revision;
use warren_transport::seal::{SealError, SealKey};

use crate::control::Control;

/// The cluster keys by generation (never empty).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    by_gen: BTreeMap<u32, SealKey>,
}

impl fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKeys(generations {:?})", self.by_gen.keys())
    }
}

/// Why a `cluster.key` text does not parse.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A line is not `GEN HEX`.
    #[error("line {line}: expected `GENERATION HEX-KEY`")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A key does not decode.
    #[error("line {line}: {source}")]
    BadKey {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        #[source]
        source: SealError,
    },
    /// No key at all.
    #[error("no key")]
    Empty,
    /// Generation 1 is missing (node secret keys derive from it).
    #[error("generation 1 is missing")]
    NoFirst,
}

impl ClusterKeys {
    /// The keys of a new cluster: `first` as generation 1.
    pub fn first(first: SealKey) -> Self {
        Self {
            by_gen: BTreeMap::from([(1, first)]),
        }
    }

    /// Key generation `generation`, if this node holds it.
    pub fn get(&self, generation: u32) -> Option<&SealKey> {
        self.by_gen.get(&generation)
    }

    /// The newest generation this node holds.
    pub fn newest(&self) -> u32 {
        self.by_gen.keys().next_back().copied().unwrap_or(1)
    }

    /// Generation 1, from which node secret keys derive.
    pub fn root(&self) -> &SealKey {
        self.by_gen
            .get(&1)
            .expect("generation 1 is always held (checked when parsed)")
    }

    /// Adds `key` as `generation`. Returns whether it was new; a generation already held with
    /// another key is an error (two leaders rotating at once must not both win).
    ///
    /// # Errors
    /// In words, when `generation` is held with a different key.
    pub fn add(&mut self, generation: u32, key: SealKey) -> Result<bool, String> {
        match self.by_gen.get(&generation) {
            Some(held) if *held == key => Ok(false),
            Some(_) => Err(format!(
                "cluster key generation {generation} is already held with another key"
            )),
            None => {
                self.by_gen.insert(generation, key);
                Ok(true)
            }
        }
    }

    /// Sets `generation` to `key`, replacing what was held: for a generation not in force yet
    /// (left by a rotation that never committed), or one that does not open what the state
    /// sealed with it.
    pub fn set(&mut self, generation: u32, key: SealKey) {
        self.by_gen.insert(generation, key);
    }

    /// Every generation held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &SealKey)> {
        self.by_gen
            .iter()
            .map(|(generation, key)| (*generation, key))
    }

    /// Merges `other`'s generations in; `Err` on a conflicting generation.
    ///
    /// # Errors
    /// As [`Self::add`].
    pub fn merge(&mut self, other: &ClusterKeys) -> Result<bool, String> {
        let mut added = false;
        for (generation, key) in &other.by_gen {
            added |= self.add(*generation, key.clone())?;
        }
        Ok(added)
    }

    /// The `cluster.key` text: `GEN HEX` per line, oldest first.
    pub fn to_text(&self) -> String {
        self.by_gen
            .iter()
            .map(|(generation, key)| format!("{generation} {}\n", key.to_hex()))
            .collect()
    }

    /// Parses a `cluster.key` text; a single bare hex line (data dirs from before rotation) is
    /// generation 1.
    ///
    /// # Errors
    /// [`KeysError`] naming the line.
    pub fn from_text(text: &str) -> Result<Self, KeysError> {
        let mut by_gen = BTreeMap::new();
        for (idx, line) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (generation, hex) = match line.split_once(' ') {
                Some((generation, hex)) => (
                    generation
                        .parse::<u32>()
                        .map_err(|_| KeysError::Malformed { line: line_no })?,
                    hex.trim(),
                ),
                None => (1, line),
            };
            let key = SealKey::from_hex(hex).map_err(|source| KeysError::BadKey {
                line: line_no,
                source,
            })?;
            by_gen.insert(generation, key);
        }
        if by_gen.is_empty() {
            return Err(KeysError::Empty);
        }
        if !by_gen.contains_key(&1) {
            return Err(KeysError::NoFirst);
        }
        Ok(Self { by_gen })
    }
}

/// Keeps this control node on the cluster key generation in force: whenever the applied state
/// moves to a generation this node does not hold (it was down or cut off when the leader handed
/// it out), fetches it from the other members, retrying every few seconds; once held, moves the
/// node's gossip mesh to that generation's key. Runs until `cancel`.
pub(crate) async fn follow(
    control: Arc<Control>,
    mut applied: watch::Receiver<Revision>,
    cancel: CancellationToken,
) {
    const RETRY: Duration = Duration::from_secs(2);
    let mut verified = 0;
    loop {
        let (generation, held) = {
            let state = control.read_stale().await;
            let generation = state.key_generation();
            let held = generation == verified || control.holds_key_in_force(&state);
            (generation, held)
        };
        let held = held || control.fetch_key_in_force().await;
        if held {
            verified = generation;
            rotate_mesh(&control, generation);
        }
        let wait = if held { Duration::MAX } else { RETRY };
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
        }
    }
}

/// Moves the mesh (if it runs) to the gossip key of `generation` if it is on an older one.
fn rotate_mesh(control: &Control, generation: u32) {
    let (Some(mesh), Some(keys)) = (control.gossip_keys(), control.cluster_keys()) else {
        return;
    };
    if mesh.current_id().0 >= generation {
        return;
    }
    let Some(key) = crate::gossip::gossip_key_for(&keys, generation) else {
        return;
    };
    if let Err(error) = mesh.rotate(key, warren_mesh::config::DEFAULT_KEY_ROTATION_OVERLAP) {
        warn!(error = %error, generation, "cannot move the gossip mesh to the new key");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_a_bare_hex_line_is_generation_one() {
        let first = SealKey::generate();
        let mut keys = ClusterKeys::first(first.clone());
        assert!(keys.add(2, SealKey::generate()).unwrap());
        assert!(!keys.add(2, keys.get(2).unwrap().clone()).unwrap());
        assert!(
            keys.add(2, SealKey::generate()).is_err(),
            "a conflicting generation"
        );
        let parsed = ClusterKeys::from_text(&keys.to_text()).unwrap();
        assert_eq!(parsed, keys);
        assert_eq!(parsed.newest(), 2);
        assert_eq!(parsed.root(), &first);

        let legacy = ClusterKeys::from_text(&format!("{}\n", first.to_hex())).unwrap();
        assert_eq!(legacy, ClusterKeys::first(first));
    }

    #[test]
    fn bad_texts_name_the_line() {
        let key = SealKey::generate().to_hex();
        for (text, expected) in [
            ("", "no key"),
            ("x y\n", "line 1: expected"),
            (&format!("1 {key}\n2 zz\n") as &str, "line 2:"),
            (&format!("2 {key}\n"), "generation 1 is missing"),
        ] {
            let error = ClusterKeys::from_text(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
