//! This node's WireGuard keys on disk: the current private key, and the next one while a
//! rotation is under way. Both are files of their own (mode 0600) in `<data dir>/wireguard/`;
//! a private key never leaves the box.
//!
//! A rotation, step by step (docs/wireguard.md, "Rotating a key"):
//! 1. [`KeyRing::begin_rotation`] makes the next key and saves it; the device accepts both,
//!    and the node declares both to control, which records the next key beside the current one.
//! 2. Once the node's view shows the next key recorded (so its peers' views carry it too),
//!    and an overlap has passed, [`KeyRing::promote`] makes it the current key. The device
//!    initiates with it and still answers to the old one; the node declares the new key alone.
//! 3. Once the view shows the new key alone, the old one is forgotten.
//!
//! A crash between any two steps leaves files the next start reads consistently.

use std::io;
use std::path::{Path, PathBuf};

use warren_wireguard::keys::{self, KeyError};
use warren_wireguard::{PrivateKey, PublicKey};

/// The current key's file in the key directory.
const CURRENT: &str = "private.key";
/// The next key's file, while a rotation is under way.
const NEXT: &str = "next.key";
/// How many operator-asked rotations this node acted on (`warren node rotate-key`).
const ROTATIONS: &str = "rotations";

/// The node's private keys.
#[derive(Debug)]
pub struct KeyRing {
    dir: PathBuf,
    current: PrivateKey,
    next: Option<PrivateKey>,
    /// The key just replaced by [`KeyRing::promote`], still answered to until the registry
    /// holds the new one alone.
    retiring: Option<PrivateKey>,
    /// Operator-asked rotations acted on.
    rotations_handled: u32,
}

impl KeyRing {
    /// Loads the keys from `dir`, making the current one (and the directory, 0700) if absent.
    ///
    /// # Errors
    /// A key file that cannot be read, is not a key, or that others may read.
    pub fn open(dir: &Path) -> Result<KeyRing, KeyError> {
        create_private_dir(dir).map_err(|source| KeyError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let current = keys::load_or_create(dir.join(CURRENT))?;
        let next_path = dir.join(NEXT);
        let next = if next_path.exists() {
            let next = keys::load_or_create(&next_path)?;
            // A crash after promoting and before removing the file: the rotation is done.
            if next.public_key() == current.public_key() {
                remove(&next_path)?;
                None
            } else {
                Some(next)
            }
        } else {
            None
        };
        // Unreadable or absent: none acted on yet.
        let rotations_handled = std::fs::read_to_string(dir.join(ROTATIONS))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        Ok(KeyRing {
            dir: dir.to_owned(),
            current,
            next,
            retiring: None,
            rotations_handled,
        })
    }

    /// How many operator-asked rotations this node acted on.
    pub fn rotations_handled(&self) -> u32 {
        self.rotations_handled
    }

    /// Records that the node acted on `count` operator-asked rotations; a node that cannot
    /// write it acts on them again after a restart (one more rotation, never one fewer).
    pub fn note_rotations_handled(&mut self, count: u32) {
        self.rotations_handled = count;
        if let Err(error) = std::fs::write(self.dir.join(ROTATIONS), count.to_string()) {
            tracing::warn!(error = %error, "cannot record the WireGuard rotations acted on");
        }
    }

    /// The key the node initiates with.
    pub fn current_public(&self) -> PublicKey {
        self.current.public_key()
    }

    /// The key it rolls to, during a rotation.
    pub fn next_public(&self) -> Option<PublicKey> {
        self.next.as_ref().map(PrivateKey::public_key)
    }

    /// Every key the device should answer to, the one it initiates with first.
    pub fn device_keys(&self) -> Vec<PrivateKey> {
        let mut keys = vec![self.current.clone()];
        keys.extend(self.next.iter().cloned());
        keys.extend(self.retiring.iter().cloned());
        keys
    }

    /// Starts a rotation: makes and saves the next key. `false` when one is under way already.
    ///
    /// # Errors
    /// The key cannot be saved.
    pub fn begin_rotation(&mut self) -> Result<bool, KeyError> {
        if self.next.is_some() {
            return Ok(false);
        }
        let next = PrivateKey::generate();
        keys::save(self.dir.join(NEXT), &next)?;
        self.next = Some(next);
        Ok(true)
    }

    /// Makes the next key the current one; the old one is still answered to until
    /// [`KeyRing::retire`]. `false` when no rotation is under way.
    ///
    /// # Errors
    /// The key files cannot be written.
    pub fn promote(&mut self) -> Result<bool, KeyError> {
        let Some(next) = self.next.take() else {
            return Ok(false);
        };
        keys::save(self.dir.join(CURRENT), &next)?;
        remove(&self.dir.join(NEXT))?;
        self.retiring = Some(std::mem::replace(&mut self.current, next));
        Ok(true)
    }

    /// Forgets the key [`KeyRing::promote`] replaced. `false` when there was none.
    pub fn retire(&mut self) -> bool {
        self.retiring.take().is_some()
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn remove(path: &Path) -> Result<(), KeyError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KeyError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_keeps_the_old_key_until_retired_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("wireguard");
        let mut ring = KeyRing::open(&keys_dir).unwrap();
        let first = ring.current_public();
        assert_eq!(KeyRing::open(&keys_dir).unwrap().current_public(), first);
        assert!(ring.begin_rotation().unwrap());
        assert!(!ring.begin_rotation().unwrap(), "one rotation at a time");
        let next = ring.next_public().unwrap();
        assert_eq!(ring.device_keys().len(), 2);
        // A restart mid-rotation resumes it.
        assert_eq!(KeyRing::open(&keys_dir).unwrap().next_public(), Some(next));
        assert!(ring.promote().unwrap());
        assert_eq!(ring.current_public(), next);
        assert_eq!(ring.device_keys()[1].public_key(), first);
        assert!(ring.retire());
        assert_eq!(ring.device_keys().len(), 1);
        let reopened = KeyRing::open(&keys_dir).unwrap();
        assert_eq!(reopened.current_public(), next);
        assert_eq!(reopened.next_public(), None);
        assert_eq!(reopened.rotations_handled(), 0);
        ring.note_rotations_handled(3);
        assert_eq!(KeyRing::open(&keys_dir).unwrap().rotations_handled(), 3);
    }
}
