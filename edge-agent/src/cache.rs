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
/// 3: views carry the WireGuard overlay (`NodeView::mesh`, peers' next keys and endpoints).
/// 4: views with spec format 3 (health-gated rollouts).
/// 5: views with spec format 4 (metrics endpoints) and their site's metrics endpoints.
pub const FORMAT: u8 = 5;
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
    /// sled's own `flush_async` hands the flush to sled's thread pool, whose every hand-off
    /// wakes all seven of its idle threads one after the other (`notify_all`), and the flush
    /// hands its write to that pool once more: with 100 agents on 2 cores those wake-ups, each
    /// waiting its turn for a CPU, were most of the time from a view's arrival to its write
    /// (19 of 20 ms traced on a loaded box). Tokio's blocking pool wakes one thread.
    ///
    /// # Errors
    /// [`CacheError::Sled`].
    pub async fn flush(&self) -> Result<(), CacheError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(flushed) => {
                flushed.map_err(self.sled_error())?;
                Ok(())
            }
            // A panic in sled's flush is the caller's, as it was when sled ran it.
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
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
mod tests;
