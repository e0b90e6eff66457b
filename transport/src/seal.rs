//! AES-256-GCM sealing of small blobs kept on disk (the CA key).
//!
//! A sealed blob is `magic (4) | version (1) | nonce (12) | ciphertext+tag`. The nonce is random
//! per seal; the caller's `purpose` string is bound as associated data so a blob sealed for one
//! purpose cannot be opened as another.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

const MAGIC: &[u8; 4] = b"WRNS";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;

/// A 256-bit key-encryption key. Debug output never shows the bytes.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

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

/// Opens what [`seal_parts`] produced.
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

    use super::*;

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
