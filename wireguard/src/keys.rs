//! Curve25519 keys in WireGuard's form: 32 bytes, written as base64 like `wg genkey` does, and
//! the key file the agent keeps its private key in.
//!
//! The key file is written once with mode 0600 (temp file, then link or rename, so a reader
//! never sees half a key) and refused when its mode lets group or others read it: a private key
//! that others could read is a key that must be replaced, not used.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use boringtun::x25519;
use data_encoding::BASE64;
use zeroize::Zeroize;

/// Length in bytes of a WireGuard key, public or private.
pub const KEY_LEN: usize = 32;

/// Mode bits that must be clear on a private key file: any access for group or others.
const KEY_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// A Curve25519 private key. Zeroed when dropped; its `Debug` shows only the public key.
#[derive(Clone)]
pub struct PrivateKey([u8; KEY_LEN]);

/// A Curve25519 public key, shown and parsed as base64 (the `wg` format).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

/// Why a base64 key could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeKeyError {
    /// The text is not base64.
    #[error("key is not valid base64")]
    Base64(#[source] data_encoding::DecodeError),
    /// The text decodes to the wrong number of bytes.
    #[error("key is {0} bytes, expected {KEY_LEN}")]
    Length(usize),
}

/// Why a key file could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file exists but could not be read.
    #[error("read key file {path}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The key file (or its temp file) could not be written.
    #[error("write key file {path}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The key file gives group or others some access (read, write or execute).
    #[error("key file {path} has mode {mode:04o}, which gives group or others access; want 0600")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold one base64 key.
    #[error("key file {path} does not hold a WireGuard key")]
    Contents {
        /// The key file.
        path: PathBuf,
        /// Why its text is not a key.
        #[source]
        source: DecodeKeyError,
    },
}

impl PrivateKey {
    /// Makes a fresh key from the OS's random source, clamped as `wg genkey` clamps it.
    pub fn generate() -> PrivateKey {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; KEY_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .expect("the OS random source does not fail on Linux");
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(bytes)
    }

    /// The public key that belongs to this private key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.secret()).to_bytes())
    }

    /// The key as base64, as `wg` writes it. Treat the result as a secret.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }

    /// Parses a base64 key as `wg genkey` prints it.
    ///
    /// # Errors
    /// [`DecodeKeyError`] when the text is not base64 of 32 bytes.
    pub fn from_base64(text: &str) -> Result<PrivateKey, DecodeKeyError> {
        decode_key(text).map(PrivateKey)
    }

    /// The key in boringtun's form.
    pub(crate) fn secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

impl PublicKey {
    /// The key as base64, as `wg` writes it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }

    /// Parses a base64 key as `wg pubkey` prints it.
    ///
    /// # Errors
    /// [`DecodeKeyError`] when the text is not base64 of 32 bytes.
    pub fn from_base64(text: &str) -> Result<PublicKey, DecodeKeyError> {
        decode_key(text).map(PublicKey)
    }

    /// The key in boringtun's form.
    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], DecodeKeyError> {
    let mut bytes = BASE64
        .decode(text.trim().as_bytes())
        .map_err(DecodeKeyError::Base64)?;
    let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| DecodeKeyError::Length(bytes.len()));
    bytes.zeroize();
    key
}

/// Loads the private key at `path`, or creates one there (mode 0600) when there is none.
///
/// Creation is atomic: the key is written to a temp file beside `path` and linked into place,
/// so two processes racing here end up with the same key.
///
/// # Errors
/// [`KeyError::Permissions`] when the file's mode lets group or others read it; other
/// [`KeyError`]s when it cannot be read, written or parsed.
pub fn load_or_create(path: impl AsRef<Path>) -> Result<PrivateKey, KeyError> {
    let path = path.as_ref();
    match load(path) {
        Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let key = PrivateKey::generate();
    let temp = write_temp(path, &key)?;
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        // Another process created the file first: its key is the one.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => load(path),
        Err(source) => Err(KeyError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `key` to `path` (mode 0600), replacing any file there atomically.
///
/// # Errors
/// [`KeyError::Write`] when the temp file cannot be written or renamed into place.
pub fn save(path: impl AsRef<Path>, key: &PrivateKey) -> Result<(), KeyError> {
    let path = path.as_ref();
    let temp = write_temp(path, key)?;
    fs::rename(&temp, path).map_err(|source| {
        let _ = fs::remove_file(&temp);
        KeyError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn load(path: &Path) -> Result<PrivateKey, KeyError> {
    let read_error = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mode = fs::metadata(path).map_err(read_error)?.permissions().mode();
    if mode & KEY_FILE_FORBIDDEN_MODE != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let mut text = fs::read_to_string(path).map_err(read_error)?;
    let key = PrivateKey::from_base64(&text).map_err(|source| KeyError::Contents {
        path: path.to_path_buf(),
        source,
    });
    text.zeroize();
    key
}

/// Writes the key into a fresh 0600 file beside `path` and returns that file's path.
fn write_temp(path: &Path, key: &PrivateKey) -> Result<PathBuf, KeyError> {
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(format!(".tmp.{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let write_error = |source| KeyError::Write {
        path: temp.clone(),
        source,
    };
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(write_error)?;
    let mut text = key.to_base64();
    text.push('\n');
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    text.zeroize();
    if let Err(source) = written {
        let _ = fs::remove_file(&temp);
        return Err(write_error(source));
    }
    Ok(temp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_matches_wg_format() {
        let key = PrivateKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44, "wg keys are 44 base64 characters");
        let back = PrivateKey::from_base64(&text).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        let public = key.public_key();
        assert_eq!(PublicKey::from_base64(&public.to_string()).unwrap(), public);
    }

    #[test]
    fn known_wg_key_pair() {
        // From `wg genkey | tee /dev/stderr | wg pubkey`.
        let private =
            PrivateKey::from_base64("WEzTp7GqjVI1ksn9fxA8qEudKZzlGVeE/2hVfd/XZWU=").unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "DNSPdGQeiSripMZnf1wUDftLV92vVm0B3enEwYFwZms="
        );
    }

    #[test]
    fn bad_base64_is_refused() {
        assert!(matches!(
            PublicKey::from_base64("not base64!"),
            Err(DecodeKeyError::Base64(_))
        ));
        assert!(matches!(
            PublicKey::from_base64("AAAA"),
            Err(DecodeKeyError::Length(3))
        ));
    }

    #[test]
    fn debug_does_not_show_the_private_key() {
        let key = PrivateKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.to_base64()));
        assert!(shown.contains(&key.public_key().to_base64()));
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let created = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load_or_create(&path).unwrap();
        assert_eq!(loaded.public_key(), created.public_key());
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file is left behind");
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        save(&path, &PrivateKey::generate()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(&path).unwrap_err();
        assert!(matches!(error, KeyError::Permissions { mode: 0o644, .. }));
        let message = error.to_string();
        assert!(
            message.contains("0644") && message.contains("wg.key"),
            "{message}"
        );
    }

    #[test]
    fn key_file_with_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        fs::write(&path, "hello\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::Contents { .. })
        ));
    }
}
