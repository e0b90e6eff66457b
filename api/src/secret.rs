//! Secrets: metadata the control plane shows, and the sealed blobs it stores and delivers.
//!
//! A secret's value never appears in this crate's types in the clear: [`Secret`] is metadata
//! only, and [`SealedBlob`] is AES-256-GCM output produced and opened elsewhere.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationError, validate_dns_label};

/// Largest secret value accepted, in bytes (before sealing).
pub const MAX_SECRET_BYTES: u64 = 512 * 1024;

/// What `warren secret ls` shows: everything about a secret except its value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Secret {
    /// A DNS label, unique in the cluster.
    pub name: String,
    /// Starts at 1; increases each time the value is replaced.
    pub version: u64,
    /// Size of the plaintext value.
    pub size_bytes: u64,
    /// When this version was created, unix millis.
    pub created_at_ms: u64,
}

impl Secret {
    /// Checks the name and size.
    ///
    /// # Errors
    /// A [`ValidationError`] on `name` or `size_bytes`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_dns_label("name", &self.name)?;
        if self.size_bytes > MAX_SECRET_BYTES {
            return Err(ValidationError::new(
                "size_bytes",
                format!(
                    "must be at most {MAX_SECRET_BYTES} bytes, got {}",
                    self.size_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// An AES-256-GCM sealed value: at rest in the state machine, in transit to a node (sealed for
/// that node), and in the agent's cache.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SealedBlob {
    /// Which key of the keyring sealed it, so keys can rotate.
    pub key_id: u32,
    /// The 96-bit GCM nonce; never used with the same key for two different values. Random
    /// at rest; derived from the name and value when sealed for a node, so that a node's view
    /// is a pure function of the state (`warren_transport::seal::seal_deterministic`).
    pub nonce: [u8; 12],
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

/// Prints the length of the ciphertext, not its bytes: logs stay short and reveal nothing.
impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedBlob")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_bytes() {
        let blob = SealedBlob {
            key_id: 2,
            nonce: [7; 12],
            ciphertext: vec![1, 2, 3],
        };
        assert_eq!(
            format!("{blob:?}"),
            "SealedBlob { key_id: 2, ciphertext_len: 3, .. }"
        );
    }

    #[test]
    fn validate() {
        let mut secret = Secret {
            name: "db-password".to_owned(),
            version: 1,
            size_bytes: 10,
            created_at_ms: 0,
        };
        assert!(secret.validate().is_ok());
        secret.size_bytes = MAX_SECRET_BYTES + 1;
        assert_eq!(secret.validate().unwrap_err().field, "size_bytes");
        secret.name = "DB".to_owned();
        assert_eq!(secret.validate().unwrap_err().field, "name");
    }
}
