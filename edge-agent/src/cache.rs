//! The agent's durable cache (sled): the node's view as last received, and small records the
//! agent keeps about its workloads. This is what lets a box boot and run its workloads with no
//! control plane at all.
//!
//! Every value is stored as `format (1 byte) | CRC-32 of the payload (4 bytes LE) | postcard
//! payload`, so a truncated or corrupt value is detected when read, with a clear error naming
//! the key. Values are written in [`FORMAT`]; one an older build wrote is read through its old
//! layout ([`formats`]), so an upgraded agent keeps its view and adopts its workloads. The cache records the cluster and node it belongs to; opening it for another
//! cluster or node is refused. [`Cache::store_view`] flushes before it returns: the agent acks
//! a revision only after this.

use std::path::{Path, PathBuf};

use warren_api::{NodeId, NodeView};

pub mod formats;

pub use formats::Cached;

/// The format values are written in; older ones are read through [`Cached::decode_older`].
/// 2: specs with `user`, `group` and `cap_add`.
pub const FORMAT: u8 = 2;
/// How long [`Cache::open`] waits for a lock held by a cache that is still closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const HEADER: usize = 5;
const META_KEY: &str = "meta";
const VIEW_KEY: &str = "view";

/// sled tuning for small boxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTuning {
    /// sled page cache, bytes.
    pub cache_capacity_bytes: u64,
    /// Background flush interval; acks flush explicitly regardless.
    pub flush_every_ms: Option<u64>,
}

impl Default for CacheTuning {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 8 << 20,
            flush_every_ms: Some(1_000),
        }
    }
}

/// Which cluster and node a cache belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheIdentity {
    /// SHA-256 of the cluster CA.
    pub cluster_id: [u8; 32],
    /// This node.
    pub node_id: NodeId,
}

/// Why the cache could not be used. Each is one clear line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Another process holds the cache.
    #[error("agent cache {} is locked by another process; is another warren agent using this data dir?", path.display())]
    Locked {
        /// The cache dir.
        path: PathBuf,
    },
    /// sled failed to open or write.
    #[error("agent cache {}: {source}", path.display())]
    Sled {
        /// The cache dir.
        path: PathBuf,
        /// Why.
        source: sled::Error,
    },
    /// A value failed its checksum or does not decode.
    #[error("agent cache {}: {key} is corrupt ({detail}); move the cache aside to re-fetch it from control", path.display())]
    Corrupt {
        /// The cache dir.
        path: PathBuf,
        /// Which key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The cache belongs to another cluster or node.
    #[error("agent cache {} belongs to {found}, not {expected}", path.display())]
    Foreign {
        /// The cache dir.
        path: PathBuf,
        /// What this agent is.
        expected: String,
        /// What the cache says.
        found: String,
    },
}

/// The agent's cache.
#[derive(Debug)]
pub struct Cache {
    db: sled::Db,
    path: PathBuf,
}

fn encode<T: Cached>(value: &T) -> Vec<u8> {
    let payload = postcard::to_stdvec(value).expect("cache values serialize");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(FORMAT);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

impl Cache {
    /// Opens (or creates) the cache under `dir/cache`.
    ///
    /// # Errors
    /// [`CacheError::Locked`] when another agent uses it, [`CacheError::Sled`] otherwise.
    pub fn open(dir: &Path, tuning: CacheTuning) -> Result<Self, CacheError> {
        let path = dir.join("cache");
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(tuning.cache_capacity_bytes)
            .flush_every_ms(tuning.flush_every_ms);
        // A cache dropped a moment ago (an agent restarted in the same process, or a process
        // still exiting) releases its lock only once sled's flusher has stopped: wait a little.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(source) if source.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    return Err(CacheError::Locked { path: path.clone() });
                }
                Err(source) => {
                    return Err(CacheError::Sled {
                        path: path.clone(),
                        source,
                    });
                }
            }
        };
        Ok(Self { db, path })
    }

    fn sled_error(&self) -> impl FnOnce(sled::Error) -> CacheError + '_ {
        move |source| CacheError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, key: &str, detail: impl Into<String>) -> CacheError {
        CacheError::Corrupt {
            path: self.path.clone(),
            key: key.to_owned(),
            detail: detail.into(),
        }
    }

    /// Reads and checks one value, of this build's format or an older one.
    ///
    /// # Errors
    /// [`CacheError::Corrupt`] when the value is truncated, fails its checksum, has a format
    /// this build does not know, or does not decode as `T`.
    pub fn get<T: Cached>(&self, key: &str) -> Result<Option<T>, CacheError> {
        let Some(bytes) = self.db.get(key).map_err(self.sled_error())? else {
            return Ok(None);
        };
        if bytes.len() < HEADER {
            return Err(self.corrupt(key, format!("truncated to {} bytes", bytes.len())));
        }
        let format = bytes[0];
        if format == 0 || format > FORMAT {
            return Err(self.corrupt(
                key,
                format!("unknown format {format}; this build reads 1 to {FORMAT}"),
            ));
        }
        let stored = u32::from_le_bytes(bytes[1..HEADER].try_into().expect("4 bytes"));
        let payload = &bytes[HEADER..];
        if crc32fast::hash(payload) != stored {
            return Err(self.corrupt(key, "checksum mismatch"));
        }
        let decoded = if format == FORMAT {
            postcard::from_bytes(payload)
        } else {
            T::decode_older(format, payload)
        };
        decoded
            .map(Some)
            .map_err(|e| self.corrupt(key, format!("format {format}: {e}")))
    }

    /// Writes one value (not yet flushed).
    ///
    /// # Errors
    /// [`CacheError::Sled`].
    pub fn put<T: Cached>(&self, key: &str, value: &T) -> Result<(), CacheError> {
        self.db
            .insert(key, encode(value))
            .map_err(self.sled_error())?;
        Ok(())
    }

    /// Removes one value.
    ///
    /// # Errors
    /// [`CacheError::Sled`].
    pub fn remove(&self, key: &str) -> Result<(), CacheError> {
        self.db.remove(key).map_err(self.sled_error())?;
        Ok(())
    }

    /// Keys with a prefix, in order.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.db
            .scan_prefix(prefix)
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| String::from_utf8(k.to_vec()).ok())
            .collect()
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    /// [`CacheError::Sled`].
    pub async fn flush(&self) -> Result<(), CacheError> {
        self.db.flush_async().await.map_err(self.sled_error())?;
        Ok(())
    }

    /// Which cluster and node the cache belongs to, if recorded.
    ///
    /// # Errors
    /// [`CacheError::Corrupt`].
    pub fn identity(&self) -> Result<Option<CacheIdentity>, CacheError> {
        self.get(META_KEY)
    }

    /// Binds the cache to a cluster and node, or checks that it already is.
    ///
    /// # Errors
    /// [`CacheError::Foreign`] when it belongs to another cluster or node.
    pub async fn claim(&self, identity: CacheIdentity) -> Result<(), CacheError> {
        match self.identity()? {
            Some(found) if found == identity => Ok(()),
            Some(found) => Err(CacheError::Foreign {
                path: self.path.clone(),
                expected: describe(&identity),
                found: describe(&found),
            }),
            None => {
                self.put(META_KEY, &identity)?;
                self.flush().await
            }
        }
    }

    /// The cached view, checked against the cache's identity.
    ///
    /// # Errors
    /// [`CacheError::Corrupt`] or [`CacheError::Foreign`].
    pub fn view(&self) -> Result<Option<NodeView>, CacheError> {
        let Some(view) = self.get::<NodeView>(VIEW_KEY)? else {
            return Ok(None);
        };
        if let Some(identity) = self.identity()?
            && (view.cluster_id != identity.cluster_id || view.node.id != identity.node_id)
        {
            return Err(CacheError::Foreign {
                path: self.path.clone(),
                expected: describe(&identity),
                found: describe(&CacheIdentity {
                    cluster_id: view.cluster_id,
                    node_id: view.node.id,
                }),
            });
        }
        Ok(Some(view))
    }

    /// Stores a view and flushes it: after this returns, the revision may be acked.
    ///
    /// # Errors
    /// [`CacheError::Sled`].
    pub async fn store_view(&self, view: &NodeView) -> Result<(), CacheError> {
        self.put(VIEW_KEY, view)?;
        self.flush().await
    }

    /// Bytes the cache occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Writes raw bytes under a key (tests use it to play a corrupted disk).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &str, bytes: &[u8]) -> Result<(), CacheError> {
        self.db.insert(key, bytes).map_err(self.sled_error())?;
        Ok(())
    }
}

fn describe(identity: &CacheIdentity) -> String {
    let cluster: String = identity.cluster_id[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("cluster {cluster}… node {}", identity.node_id)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warren_api::{Availability, Node, NodeAddresses, NodeRole, NodeState, Revision};

    use super::*;

    fn view(revision: u64, cluster: u8) -> NodeView {
        NodeView {
            revision: Revision(revision),
            cluster_id: [cluster; 32],
            node: Node {
                id: NodeId(7),
                name: "edge-1".into(),
                role: NodeRole::Agent,
                site: "lisbon".into(),
                labels: BTreeMap::new(),
                availability: Availability::Active,
                state: NodeState::Ready,
                cert_serial: None,
                addresses: NodeAddresses::default(),
                joined_at_ms: 0,
            },
            services: BTreeMap::new(),
            replicas: vec![],
            secrets: BTreeMap::new(),
            catalogue: vec![],
            control_addrs: vec!["127.0.0.1:7101".into()],
            peers: vec![],
        }
    }

    #[tokio::test]
    async fn view_survives_reopen_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
            cache
                .claim(CacheIdentity {
                    cluster_id: [1; 32],
                    node_id: NodeId(7),
                })
                .await
                .unwrap();
            cache.store_view(&view(42, 1)).await.unwrap();
        }
        let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
        assert_eq!(cache.view().unwrap().unwrap().revision, Revision(42));
        // Another process cannot open it while we hold it.
        assert!(matches!(
            Cache::open(dir.path(), CacheTuning::default()),
            Err(CacheError::Locked { .. })
        ));
        // Flip one payload byte: the checksum catches it.
        let mut bytes = cache.db.get(VIEW_KEY).unwrap().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        cache.put_raw(VIEW_KEY, &bytes).unwrap();
        let err = cache.view().unwrap_err();
        assert!(
            err.to_string()
                .contains("view is corrupt (checksum mismatch)"),
            "{err}"
        );
        // Truncated.
        cache.put_raw(VIEW_KEY, &bytes[..3]).unwrap();
        assert!(cache.view().unwrap_err().to_string().contains("truncated"));
    }

    #[tokio::test]
    async fn a_cache_from_another_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
        cache
            .claim(CacheIdentity {
                cluster_id: [1; 32],
                node_id: NodeId(7),
            })
            .await
            .unwrap();
        let err = cache
            .claim(CacheIdentity {
                cluster_id: [2; 32],
                node_id: NodeId(7),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Foreign { .. }), "{err}");
        cache.store_view(&view(1, 2)).await.unwrap();
        assert!(matches!(cache.view(), Err(CacheError::Foreign { .. })));
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `view(42, 1)` holding service `web` (version 2: `sh -c "echo hi"` in `data`, two
    /// replicas, env MODE=edge, port http:8080, secret db, label team=a), as the build before
    /// cache format 2 stored it (header included).
    const VIEW_FORMAT_1: &str = "01cd3552d62a01010101010101010101010101010101010101010101010101010101010101010706656467652d\
        3100066c6973626f6e00000000000000000000010377656202037765620003027368022d63076563686f206869\
        0104646174610002000001044d4f4445046564676501010468747470903f000000e807e0d40300000102646202\
        64620000000100904e01047465616d0161000000010e3132372e302e302e313a3731303100";

    /// A view cached by the older build is read, its spec running as root with every
    /// capability and keeping its workload hash; a format from a newer build is refused.
    #[tokio::test]
    async fn a_view_of_format_1_is_read_and_a_newer_format_refused() {
        use warren_api::{
            ProcessSpec, SecretRef, Service, ServiceMode, ServiceName, ServiceSpec, Workload,
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
        cache
            .claim(CacheIdentity {
                cluster_id: [1; 32],
                node_id: NodeId(7),
            })
            .await
            .unwrap();
        cache.put_raw(VIEW_KEY, &unhex(VIEW_FORMAT_1)).unwrap();
        let read = cache.view().unwrap().unwrap();

        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                working_dir: Some("data".into()),
            }),
        );
        spec.mode = ServiceMode::Replicated { replicas: 2 };
        spec.env.insert("MODE".into(), "edge".into());
        spec.ports = vec!["http:8080".parse().unwrap()];
        spec.secrets = vec![SecretRef::new("db")];
        spec.labels.insert("team".into(), "a".into());
        spec.user = Some("root".into());
        spec.cap_add = vec!["ALL".into()];
        let mut expected = view(42, 1);
        expected
            .services
            .insert(spec.name.clone(), Service { version: 2, spec });
        assert_eq!(read, expected);
        let web = &read.services[&ServiceName::new("web").unwrap()].spec;
        assert_eq!(
            web.workload_hash(),
            0xd852_ad39_3787_4142,
            "an upgrade restarts nothing"
        );

        // Written back, it is in this build's format.
        cache.store_view(&read).await.unwrap();
        assert_eq!(cache.db.get(VIEW_KEY).unwrap().unwrap()[0], FORMAT);
        assert_eq!(cache.view().unwrap().unwrap(), expected);

        let mut newer = unhex(VIEW_FORMAT_1);
        newer[0] = FORMAT + 1;
        cache.put_raw(VIEW_KEY, &newer).unwrap();
        let err = cache.view().unwrap_err().to_string();
        assert!(
            err.contains("unknown format 3; this build reads 1 to 2"),
            "{err}"
        );
    }

    /// The record of `web.0` (pid 4242) an older agent kept: logs in its data dir's
    /// `workloads/web.0`.
    const RECORD_FORMAT_1: &str = "01e59c2de5037765620000c2829dbc93a7aba9d8012462336335303037642d633962302d346161332d62363430\
        2d65613961313765373866313180d095ffbc312a2f7661722f6c69622f77617272656e2f776f726b6c6f616473\
        2f7765622e302f7374646f75742e6c6f672a2f7661722f6c69622f77617272656e2f776f726b6c6f6164732f77\
        65622e302f7374646572722e6c6f67009221c0c407";

    /// A workload record of the older agent reads as a workload that runs as that agent did
    /// (no credentials) in the directory of its logs, which was its working directory: it is
    /// adopted, and its health checks run where and as they did.
    #[test]
    fn a_workload_record_of_format_1_is_read() {
        use crate::runtime::{Instance, WorkloadRecord};
        use std::path::PathBuf;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
        cache
            .put_raw("workload/web.0", &unhex(RECORD_FORMAT_1))
            .unwrap();
        let record: WorkloadRecord = cache.get("workload/web.0").unwrap().unwrap();
        assert_eq!(
            record.instance,
            Instance::Process {
                pid: 4242,
                start_time_ticks: 123_456
            }
        );
        assert_eq!(record.workload_hash, 0xd852_ad39_3787_4142);
        assert_eq!(
            record.stdout_log,
            PathBuf::from("/var/lib/warren/workloads/web.0/stdout.log")
        );
        assert_eq!(
            record.working_dir,
            PathBuf::from("/var/lib/warren/workloads/web.0")
        );
        assert_eq!(record.credentials, None);
    }
}
