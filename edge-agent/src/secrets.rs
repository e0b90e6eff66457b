//! This node's secrets: the node secret key, and opening the view's sealed secrets into the
//! `(file name, plaintext)` pairs a workload gets as files.
//!
//! Control seals each secret a node needs with that node's own key (derived from the cluster
//! key, see [`warren_transport::seal::node_secret_key`]); the node receives the key once, in
//! its join grant, and keeps it in [`SECRET_KEY_FILE`] (0600) in its data dir. The view — and
//! so the cache — holds secrets sealed only. Plaintext exists in memory while a workload's
//! files are written, and in those files (on tmpfs when the agent may mount one).
//!
//! A running workload is never restarted because a secret's value changed (that would break
//! adoption: the workload hash covers which secrets a workload has, not their values). Its
//! files are rewritten in place instead, each one swapped atomically; see `NodeSecrets::refresh`.
//!
//! Must never: log a plaintext value, or write one anywhere but a workload's secret files.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use tracing::{debug, info, warn};
use warren_api::{NodeView, ReplicaId, SealedBlob, ServiceSpec};
use warren_transport::seal::{SealError, SealKey, node_secret_purpose, open_parts};
use warren_transport::write_atomic;

use crate::runtime::{Runtime, RuntimeError, WorkloadHandle, WorkloadRequest};

/// The node secret key's file in the data dir: 64 hex digits and a newline, mode 0600.
pub const SECRET_KEY_FILE: &str = "secret.key";

/// Writes the node secret key to `data_dir` (0600, atomically).
///
/// # Errors
/// Any I/O error writing the file.
pub fn save_key(data_dir: &Path, key: &SealKey) -> io::Result<()> {
    let text = format!("{}\n", key.to_hex());
    write_atomic(&data_dir.join(SECRET_KEY_FILE), text.as_bytes(), 0o600)
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file exists but cannot be read.
    #[error("read {SECRET_KEY_FILE}: {0}")]
    Io(#[from] io::Error),
    /// The file is not 64 hex digits.
    #[error("{SECRET_KEY_FILE}: {0}")]
    Corrupt(#[from] SealError),
}

/// Reads the node secret key from `data_dir`; `None` when the file does not exist (an agent
/// that joined before control delivered secrets).
///
/// # Errors
/// [`KeyFileError`] when the file exists but is unreadable or corrupt.
pub fn load_key(data_dir: &Path) -> Result<Option<SealKey>, KeyFileError> {
    match std::fs::read_to_string(data_dir.join(SECRET_KEY_FILE)) {
        Ok(text) => Ok(Some(SealKey::from_hex(&text)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyFileError::Io(e)),
    }
}

/// Deletes the node secret key from `data_dir`. Idempotent.
///
/// # Errors
/// Any I/O error other than the file being absent.
pub fn remove_key(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(data_dir.join(SECRET_KEY_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Why a secret a workload references could not be given to it. The messages name the
/// secret, never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The node has no secret key.
    #[error(
        "secret {name}: this node has no secret key (it joined before control delivered \
         secrets); join it again with a new data dir"
    )]
    NoKey {
        /// The secret.
        name: String,
    },
    /// The view does not carry the secret.
    #[error("secret {name} is not in this node's view (missing in the cluster, or not delivered)")]
    NotInView {
        /// The secret.
        name: String,
    },
    /// The sealed value does not open with this node's key.
    #[error("secret {name} cannot be opened with this node's key: {source}")]
    Unopenable {
        /// The secret.
        name: String,
        /// Why.
        source: SealError,
    },
}

/// Why a replica could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaStartError {
    /// A secret it references could not be opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The runtime refused or failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What a replica's secret files were written from: each file name with the nonce of the
/// sealed blob it came from. Control seals deterministically, so the same nonce means the
/// same value; no plaintext needs to be kept to notice a change.
type Written = Vec<(String, [u8; 12])>;

/// The node key and what each held workload's secret files hold.
/// Opens the view entry `name`, sealed for this node with its key (the secrets, and the
/// gossip key under its reserved name).
pub(crate) fn open_blob(
    key: &SealKey,
    name: &str,
    blob: &SealedBlob,
) -> Result<Vec<u8>, SealError> {
    open_parts(
        key,
        &node_secret_purpose(name),
        &blob.nonce,
        &blob.ciphertext,
    )
}

#[derive(Debug, Default)]
pub(crate) struct NodeSecrets {
    key: Option<SealKey>,
    written: BTreeMap<ReplicaId, Written>,
}

impl NodeSecrets {
    /// Loads the key from `data_dir`. A missing or unusable key is logged, not fatal: the
    /// workloads that need no secrets run regardless.
    pub(crate) fn load(data_dir: &Path) -> Self {
        let key = match load_key(data_dir) {
            Ok(Some(key)) => Some(key),
            Ok(None) => {
                warn!(
                    "this agent has no node secret key (it joined before control delivered \
                     secrets): workloads that use secrets will fail to start; join again with \
                     a new data dir to get one"
                );
                None
            }
            Err(error) => {
                tracing::error!(
                    error = %error,
                    "node secret key unusable: workloads that use secrets will fail to start"
                );
                None
            }
        };
        NodeSecrets {
            key,
            written: BTreeMap::new(),
        }
    }

    /// Opens the secrets `spec` references from the view's `sealed` secrets.
    fn open(
        &self,
        spec: &ServiceSpec,
        sealed: &BTreeMap<String, SealedBlob>,
    ) -> Result<Vec<(String, Vec<u8>)>, SecretError> {
        let mut files = Vec::with_capacity(spec.secrets.len());
        for reference in &spec.secrets {
            let name = &reference.name;
            let Some(key) = &self.key else {
                return Err(SecretError::NoKey { name: name.clone() });
            };
            let blob = sealed
                .get(name)
                .ok_or_else(|| SecretError::NotInView { name: name.clone() })?;
            let plaintext =
                open_blob(key, name, blob).map_err(|source| SecretError::Unopenable {
                    name: name.clone(),
                    source,
                })?;
            files.push((reference.target.clone(), plaintext));
        }
        Ok(files)
    }

    /// The start request for `replica` of `spec`, with its secrets opened from `sealed`.
    ///
    /// # Errors
    /// [`ReplicaStartError::Secret`] naming the first secret that cannot be opened;
    pub(crate) fn request(
        &mut self,
        replica: &ReplicaId,
        spec: &ServiceSpec,
        sealed: &BTreeMap<String, SealedBlob>,
    ) -> Result<WorkloadRequest, ReplicaStartError> {
        let files = self.open(spec, sealed)?;
        let request = WorkloadRequest::for_spec(replica.clone(), spec, files);
        self.written
            .insert(replica.clone(), written_from(spec, sealed));
        Ok(request)
    }

    /// Forgets what `replica`'s files hold (its workload stopped for good).
    pub(crate) fn forget(&mut self, replica: &ReplicaId) {
        self.written.remove(replica);
    }

    /// Forgets the key and every record: the node was removed.
    pub(crate) fn clear(&mut self) {
        self.key = None;
        self.written.clear();
    }

    /// Rewrites the secret files of held workloads whose secrets changed value in `view`.
    ///
    /// Only workloads that run the view's spec (same workload hash) are touched: one about to
    /// be replaced gets its files when its successor starts. A workload adopted from an earlier
    /// agent has its files written once, since what they hold is unknown. A secret that does
    /// not open leaves the files as they are, with one warning per change.
    pub(crate) async fn refresh(
        &mut self,
        runtime: &dyn Runtime,
        view: &NodeView,
        held: &BTreeMap<ReplicaId, WorkloadHandle>,
    ) {
        for (replica, handle) in held {
            let Some(service) = view.services.get(&replica.service) else {
                continue;
            };
            let spec = &service.spec;
            // Registry credentials are the pull's, never a file: a spec with no other secret
            // has no files to keep up to date.
            if spec.secrets.iter().all(|s| s.is_registry_auth())
                || view.replica(replica).is_none()
                || handle.record().workload_hash != spec.workload_hash()
            {
                continue;
            }
            let wanted = written_from(spec, &view.secrets);
            let previous = self.written.get(replica);
            if previous == Some(&wanted) {
                continue;
            }
            let mut files = match self.open(spec, &view.secrets) {
                Ok(files) => files,
                Err(error) => {
                    warn!(%replica, error = %error, "cannot update secret files; the workload keeps the ones it has");
                    self.written.insert(replica.clone(), wanted);
                    continue;
                }
            };
            drop(crate::runtime::take_registry_auth(spec, &mut files));
            if let Err(error) = runtime.write_secrets(replica, &files).await {
                // Not recorded: tried again next pass.
                warn!(%replica, error = %error, "cannot update secret files");
                continue;
            }
            if previous.is_some() {
                info!(%replica, n_secrets = files.len(), "secret value changed; rewrote the workload's secret files");
            } else {
                debug!(%replica, n_secrets = files.len(), "wrote secret files of an adopted workload");
            }
            self.written.insert(replica.clone(), wanted);
        }
    }
}

/// The [`Written`] record for `spec`'s secrets as `sealed` holds them now. A secret missing
/// from `sealed` gets an all-zero nonce, so that its later arrival counts as a change.
fn written_from(spec: &ServiceSpec, sealed: &BTreeMap<String, SealedBlob>) -> Written {
    spec.secrets
        .iter()
        .map(|reference| {
            let nonce = sealed.get(&reference.name).map_or([0; 12], |b| b.nonce);
            (reference.target.clone(), nonce)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use warren_api::{NodeId, ProcessSpec, SecretRef, ServiceName, Workload};
    use warren_transport::seal::{node_secret_key, seal_deterministic};

    use super::*;

    fn spec(secrets: &[(&str, &str)]) -> ServiceSpec {
        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["sleep".into(), "1".into()],
                working_dir: None,
            }),
        );
        spec.secrets = secrets
            .iter()
            .map(|(name, target)| SecretRef {
                name: (*name).into(),
                target: (*target).into(),
            })
            .collect();
        spec
    }

    fn sealed_for(key: &SealKey, values: &[(&str, &[u8])]) -> BTreeMap<String, SealedBlob> {
        values
            .iter()
            .map(|(name, value)| {
                let (nonce, ciphertext) =
                    seal_deterministic(key, &node_secret_purpose(name), value);
                let blob = SealedBlob {
                    key_id: 1,
                    nonce,
                    ciphertext,
                };
                ((*name).to_owned(), blob)
            })
            .collect()
    }

    fn replica() -> ReplicaId {
        ReplicaId::replicated(ServiceName::new("web").unwrap(), 0)
    }

    #[test]
    fn opens_referenced_secrets_into_their_target_files() {
        let cluster = SealKey::generate();
        let key = node_secret_key(&cluster, NodeId(3));
        let sealed = sealed_for(&key, &[("db", b"hunter2"), ("api", b"tok"), ("x", b"-")]);
        let mut secrets = NodeSecrets {
            key: Some(key),
            written: BTreeMap::new(),
        };
        let request = secrets
            .request(
                &replica(),
                &spec(&[("db", "db.txt"), ("api", "api")]),
                &sealed,
            )
            .unwrap();
        assert_eq!(
            request.secrets,
            [
                ("db.txt".to_owned(), b"hunter2".to_vec()),
                ("api".to_owned(), b"tok".to_vec())
            ]
        );
        assert_eq!(secrets.written[&replica()].len(), 2);
    }

    /// Each failure names the secret and never shows a value.
    #[test]
    fn a_secret_that_cannot_be_opened_fails_the_start_naming_it() {
        let cluster = SealKey::generate();
        let other_node = node_secret_key(&cluster, NodeId(4));
        let sealed = sealed_for(&other_node, &[("db", b"hunter2")]);
        let check = |key: Option<SealKey>, spec: ServiceSpec, expected: &str| {
            let mut secrets = NodeSecrets {
                key,
                written: BTreeMap::new(),
            };
            let error = secrets.request(&replica(), &spec, &sealed).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with(expected), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
            assert!(secrets.written.is_empty());
        };
        let own = node_secret_key(&cluster, NodeId(3));
        check(
            Some(own.clone()),
            spec(&[("db", "db")]),
            "secret db cannot be opened with this node's key",
        );
        check(
            Some(own),
            spec(&[("missing", "m")]),
            "secret missing is not in this node's view",
        );
        check(
            None,
            spec(&[("db", "db")]),
            "secret db: this node has no secret key",
        );
        // No secrets referenced: no key needed.
        let mut keyless = NodeSecrets::default();
        assert!(keyless.request(&replica(), &spec(&[]), &sealed).is_ok());
    }

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_key(dir.path()).unwrap().is_none());
        let key = SealKey::generate();
        save_key(dir.path(), &key).unwrap();
        let path = dir.path().join(SECRET_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_key(dir.path()).unwrap(), Some(key));
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            load_key(dir.path()),
            Err(KeyFileError::Corrupt(_))
        ));
        remove_key(dir.path()).unwrap();
        assert!(!path.exists());
        remove_key(dir.path()).unwrap();
    }
}
