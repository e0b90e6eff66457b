//! openraft storage on sled: the Raft log, the vote and the state machine with its snapshots.
//!
//! One sled database at `<data dir>/raft` holds three trees:
//! - `raft_log`: log entries keyed by their index in big-endian (so key order is index order),
//!   each a postcard-encoded [`Entry`];
//! - `raft_meta`: the vote, the committed log id, the last purged log id, the layout version
//!   and the log's [`LogFormats`] (from which index each spec format was written);
//! - `snapshot`: the current snapshot, its metadata and its data written in one batch.
//!
//! The state machine, [`ClusterState`], lives in memory and is made durable by snapshots: [`open`]
//! loads the last snapshot, and openraft then re-applies the committed entries after it (it
//! learns how far to go from [`RaftLogStorage::read_committed`]).
//!
//! Nothing is acknowledged before it is on disk: `append` calls openraft's [`LogFlushed`]
//! callback only after sled has flushed, and `save_vote`, `truncate`, `purge`, `build_snapshot`
//! and `install_snapshot` flush before they return. `save_committed` alone does not flush: a
//! committed id lost in a crash only means fewer entries are re-applied at start-up, and those
//! are applied again as soon as a leader reports them committed.
//!
//! Nothing read from disk is trusted: an entry, vote or snapshot that does not decode is a
//! [`StorageError`] (or an [`OpenError`] at open) naming what was corrupt, never a panic.

// openraft's trait methods return its 224-byte `StorageError`; the helpers here return the same
// type so `?` carries it through unchanged.
#![allow(
    clippy::result_large_err,
    reason = "the error type is openraft's StorageError"
)]

use std::fmt;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, DefensiveError, Entry, EntryPayload, ErrorSubject, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership, Violation, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock, watch};
use warren_api::{NodeId, Revision};

use crate::command::Outcome;
use crate::older::{
    ClusterStateV1, ClusterStateV2, ClusterStateV3, ClusterStateV4, ClusterStateV5, ClusterStateV6,
    ClusterStateV7, EntryV1, EntryV2, EntryV3, upgrade_entry,
};
use crate::state::ClusterState;
use crate::types::{LogId, RaftMember, StorageError, TypeConfig};

#[cfg(test)]
mod format_tests;
mod log_formats;

use log_formats::LogFormats;

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const SNAPSHOT_TREE: &str = "snapshot";

const KEY_LAYOUT: &[u8] = b"layout";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_LOG_FORMATS: &[u8] = b"log_formats";
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

/// The sled database's directory inside a control node's data dir.
pub const RAFT_DIR: &str = "raft";

/// Version of the on-disk layout (trees, keys, encodings). Bumped by any change an older build
/// would misread; [`open`] refuses a directory with a newer version and upgrades an older one.
/// 2: the log's spec formats are recorded ([`LogFormats`]), and entries from the recorded
/// index on hold spec-format-2 specs, which a build of layout 1 would misread.
pub const LAYOUT_VERSION: u32 = 2;

/// Version of the snapshot data format, checked when a snapshot is loaded or installed.
/// 2: the state records unfinished control-node joins (`ClusterState::pending_joins`).
/// 3: the state records admin certificates (`ClusterState::admins`).
/// 4: specs in spec format 2 (`user`, `group`, `cap_add`); the cluster key generation in force
///    (`ClusterState::key_gen`) and the serials renewed certificates replaced
///    (`ClusterState::previous_cert_serials`).
/// 5: the WireGuard overlay (`ClusterState::overlay`, `ClusterState::mesh`).
/// 6: the node that holds each local volume (`ClusterState::volume_nodes`).
/// 7: specs in spec format 3 (health-gated rollouts); rollouts record their watched batch,
///    phase, counts and message (`Rollout`).
/// 8: specs in spec format 4 (metrics endpoints).
const SNAPSHOT_FORMAT: u32 = 8;

type MembershipRecord = StoredMembership<u64, RaftMember>;
type Meta = SnapshotMeta<u64, RaftMember>;

// ---------------------------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------------------------

/// sled settings for the Raft store. The defaults suit a small box (1–2 GB of RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreTuning {
    /// sled's page cache in bytes. Default 64 MiB: the log and snapshot of a fleet of hundreds
    /// of nodes fit in it, and it is a small share of a 1 GB box.
    pub cache_capacity_bytes: u64,
    /// How often sled flushes in the background, in ms; `None` flushes only when asked.
    /// Default 500 ms. Durability does not depend on it (every acknowledged write is flushed
    /// explicitly); it bounds how much of `save_committed` a crash can lose.
    pub flush_every_ms: Option<u64>,
}

impl StoreTuning {
    /// The smallest page cache accepted: 1 MiB.
    pub const CACHE_CAPACITY_BYTES_MIN: u64 = 1 << 20;

    /// Checks the settings.
    ///
    /// # Errors
    /// [`OpenError::InvalidTuning`] if the cache is under
    /// [`StoreTuning::CACHE_CAPACITY_BYTES_MIN`] or `flush_every_ms` is `Some(0)`.
    pub fn validate(&self) -> Result<(), OpenError> {
        if self.cache_capacity_bytes < Self::CACHE_CAPACITY_BYTES_MIN {
            return Err(OpenError::InvalidTuning(format!(
                "cache_capacity_bytes is {}; it must be at least {} (1 MiB)",
                self.cache_capacity_bytes,
                Self::CACHE_CAPACITY_BYTES_MIN
            )));
        }
        if self.flush_every_ms == Some(0) {
            return Err(OpenError::InvalidTuning(
                "flush_every_ms must be greater than 0 (omit it to flush only on demand)".into(),
            ));
        }
        Ok(())
    }
}

impl Default for StoreTuning {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 << 20,
            flush_every_ms: Some(500),
        }
    }
}

/// Why the Raft store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The tuning is out of range.
    #[error("invalid raft store tuning: {0}")]
    InvalidTuning(String),
    /// Another process (or another store in this one) has the database open.
    #[error(
        "raft data dir {} is locked by another process; is another warren control node using it?",
        path.display()
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// sled failed to open the database or one of its trees.
    #[error("open raft data dir {}: {source}", path.display())]
    Sled {
        /// The database directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The directory was written by a newer build.
    #[error(
        "raft data dir {} has layout version {found}; this build reads versions 1 to {expected} \
         (a newer Warren wrote it)",
        path.display()
    )]
    UnsupportedLayout {
        /// The database directory.
        path: PathBuf,
        /// The version on disk.
        found: u32,
        /// The version this build writes.
        expected: u32,
    },
    /// Something stored does not decode or does not add up.
    #[error("raft data dir {} holds corrupt data: {}", path.display(), innermost(source.as_ref()))]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// What was corrupt (boxed: openraft's error is large).
        source: Box<StorageError>,
    },
}

/// The deepest cause of `error`, for people: openraft's own error text prints its subjects
/// with Debug formatting (`Snapshot(Some(SnapshotSignature { … }))`), our causes say it in
/// words.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// How long [`open`] waits for a lock held by a store that is still closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting up to [`LOCK_WAIT`] while another handle still holds the lock: a store
/// dropped a moment ago (a restart in the same process, a process still exiting) releases it
/// only once sled's background flusher has stopped.
fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Opens (or creates) the Raft store at `dir/raft`: the log store and the state machine,
/// loaded from the last snapshot.
///
/// # Errors
/// [`OpenError`]: the tuning is invalid, the directory is locked by another process, sled
/// fails, the layout version is foreign, or the persisted snapshot is corrupt.
pub fn open(dir: &Path, tuning: StoreTuning) -> Result<(LogStore, StateMachineStore), OpenError> {
    tuning.validate()?;
    let path = dir.join(RAFT_DIR);
    let config = sled::Config::new()
        .path(&path)
        .cache_capacity(tuning.cache_capacity_bytes)
        .flush_every_ms(tuning.flush_every_ms);
    let db = open_waiting_for_lock(&config).map_err(|source| open_error(&path, source))?;
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|source| open_error(&path, source))
    };
    let (log, meta, snapshot) = (tree(LOG_TREE)?, tree(META_TREE)?, tree(SNAPSHOT_TREE)?);
    let formats = open_layout(&log, &meta, &path)?;

    let corrupt = |source| OpenError::Corrupt {
        path: path.clone(),
        source: Box::new(source),
    };
    let log_store = LogStore {
        db: db.clone(),
        log,
        meta,
        path: path.clone(),
        formats: Arc::new(std::sync::Mutex::new(formats)),
    };
    log_store.remove_purged_leftovers().map_err(corrupt)?;
    let snapshots = SnapshotStore {
        db,
        tree: snapshot,
        counter: Arc::new(AtomicU64::new(0)),
        write_lock: Arc::new(Mutex::new(())),
    };
    let state_machine = StateMachineStore::load(snapshots).map_err(corrupt)?;
    tracing::info!(
        path = %path.display(),
        revision = %state_machine.revision_now(),
        "opened raft store"
    );
    Ok((log_store, state_machine))
}

fn open_error(path: &Path, source: sled::Error) -> OpenError {
    // sled reports a held lock as a plain I/O error; its message is the only sign.
    let locked =
        matches!(&source, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"));
    if locked {
        OpenError::Locked {
            path: path.to_owned(),
        }
    } else {
        OpenError::Sled {
            path: path.to_owned(),
            source,
        }
    }
}

fn read_layout(meta: &sled::Tree, path: &Path) -> Result<Option<u32>, OpenError> {
    let sled_error = |source| OpenError::Sled {
        path: path.to_owned(),
        source,
    };
    let Some(bytes) = meta.get(KEY_LAYOUT).map_err(sled_error)? else {
        return Ok(None);
    };
    <[u8; 4]>::try_from(bytes.as_ref())
        .map(|b| Some(u32::from_be_bytes(b)))
        .map_err(|_| {
            corrupt_at_open(
                path,
                format!("layout marker is {} bytes, expected 4", bytes.len()),
            )
        })
}

fn corrupt_at_open(path: &Path, message: String) -> OpenError {
    OpenError::Corrupt {
        path: path.to_owned(),
        source: Box::new(StorageIOError::read(AnyError::error(message)).into()),
    }
}

/// The index the next appended entry gets: after the last entry, or the last purged one.
fn next_index(log: &sled::Tree, meta: &sled::Tree, path: &Path) -> Result<u64, OpenError> {
    let corrupt = |source: StorageError| OpenError::Corrupt {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let last = match log.last() {
        Ok(Some((key, _))) => Some(key_index(&key).map_err(corrupt)?),
        Ok(None) => None,
        Err(source) => return Err(open_error(path, source)),
    };
    let purged: Option<LogId> = get_decoded(meta, KEY_LAST_PURGED, "last purged log id")
        .map_err(|e| corrupt(StorageIOError::read_logs(e).into()))?;
    Ok(last
        .max(purged.map(|id| id.index))
        .map_or(0, |index| index.saturating_add(1)))
}

/// Checks the layout version and returns the log's spec formats, upgrading what an older
/// build left: a new directory is marked with this layout, a layout-1 directory gets its
/// entries so far recorded as spec format 1, and a newer one is refused.
fn open_layout(log: &sled::Tree, meta: &sled::Tree, path: &Path) -> Result<LogFormats, OpenError> {
    let sled_error = |source| open_error(path, source);
    let (mut formats, found) = match read_layout(meta, path)? {
        // A new directory. The marker is flushed with the first vote or append.
        None => (LogFormats::current(), None),
        Some(1) => (LogFormats::before_recording(), Some(1)),
        Some(LAYOUT_VERSION) => {
            let formats = get_decoded(meta, KEY_LOG_FORMATS, "log formats")
                .map_err(|e| corrupt_at_open(path, e.to_string()))?
                .ok_or_else(|| corrupt_at_open(path, "log formats are missing".to_owned()))?;
            (formats, Some(LAYOUT_VERSION))
        }
        Some(found) => {
            return Err(OpenError::UnsupportedLayout {
                path: path.to_owned(),
                found,
                expected: LAYOUT_VERSION,
            });
        }
    };
    let (from_index, newest) = formats.newest();
    if newest > warren_api::older::SPEC_FORMAT {
        return Err(corrupt_at_open(
            path,
            format!(
                "the raft log holds spec format {newest} from index {from_index}; this build \
                 reads spec formats 1 to {} (a newer Warren wrote it)",
                warren_api::older::SPEC_FORMAT
            ),
        ));
    }
    let next = next_index(log, meta, path)?;
    if formats.opened(next) || found != Some(LAYOUT_VERSION) {
        if found == Some(1) {
            tracing::info!(
                path = %path.display(),
                next_index = next,
                "raft log written by an older build: its entries are read in their format, \
                 new ones are written in this build's"
            );
        }
        // Formats first: a crash before the marker leaves a layout-1 dir, upgraded again.
        let bytes =
            encode(&formats, "log formats").map_err(|e| corrupt_at_open(path, e.to_string()))?;
        meta.insert(KEY_LOG_FORMATS, bytes).map_err(sled_error)?;
        meta.insert(KEY_LAYOUT, &LAYOUT_VERSION.to_be_bytes())
            .map_err(sled_error)?;
    }
    Ok(formats)
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------------------------

/// The key of the entry at `index`: big-endian, so sled's byte order is index order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| {
            StorageIOError::read_logs(AnyError::error(format!(
                "raft log key is {} bytes, expected an 8-byte index",
                key.len()
            )))
            .into()
        })
}

/// The first index a range asks for; `None` if it starts past `u64::MAX`.
fn first_index(range: &impl RangeBounds<u64>) -> Option<u64> {
    match range.start_bound() {
        Bound::Included(&index) => Some(index),
        Bound::Excluded(&index) => index.checked_add(1),
        Bound::Unbounded => Some(0),
    }
}

/// Decodes the entry stored at `index`, whose specs are in spec format `format` (upgraded to
/// the current types if older).
fn decode_entry(index: u64, bytes: &[u8], format: u32) -> Result<Entry<TypeConfig>, StorageError> {
    let corrupt = |message: String| -> StorageError {
        StorageIOError::read_log_at_index(index, AnyError::error(message)).into()
    };
    let bad = |e: postcard::Error| {
        corrupt(format!(
            "raft log entry at index {index} is corrupt (spec format {format}, {} bytes): {e}",
            bytes.len()
        ))
    };
    let entry: Entry<TypeConfig> = match format {
        1 => postcard::from_bytes::<EntryV1>(bytes)
            .map(upgrade_entry)
            .map_err(bad)?,
        2 => postcard::from_bytes::<EntryV2>(bytes)
            .map(upgrade_entry)
            .map_err(bad)?,
        3 => postcard::from_bytes::<EntryV3>(bytes)
            .map(upgrade_entry)
            .map_err(bad)?,
        warren_api::older::SPEC_FORMAT => postcard::from_bytes(bytes).map_err(bad)?,
        other => {
            return Err(corrupt(format!(
                "raft log entry at index {index} has spec format {other}, which this build \
                 does not read"
            )));
        }
    };
    if entry.log_id.index != index {
        return Err(corrupt(format!(
            "raft log entry stored at index {index} says it is at index {}",
            entry.log_id.index
        )));
    }
    Ok(entry)
}

/// Reads and decodes `key`; the error names `what` for people.
fn get_decoded<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, AnyError> {
    let Some(bytes) = tree
        .get(key)
        .map_err(|e| AnyError::new(&e).add_context(|| format!("read {what}")))?
    else {
        return Ok(None);
    };
    postcard::from_bytes(&bytes).map(Some).map_err(|e| {
        AnyError::error(format!(
            "stored {what} is corrupt ({} bytes): {e}",
            bytes.len()
        ))
    })
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, AnyError> {
    postcard::to_allocvec(value).map_err(|e| AnyError::error(format!("encode {what}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Log store
// ---------------------------------------------------------------------------------------------

/// The Raft log and vote on sled. Cheap to clone: clones share the database (openraft's log
/// readers are clones).
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    path: PathBuf,
    /// Shared by the clones: a truncation or append changes what every reader decodes.
    formats: Arc<std::sync::Mutex<LogFormats>>,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // sled's own Debug prints every entry.
        f.debug_struct("LogStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(drop)
    }

    fn formats(&self) -> std::sync::MutexGuard<'_, LogFormats> {
        // Every update is one assignment: a panic cannot leave the value half-changed.
        self.formats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn decode(&self, index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError> {
        let format = self.formats().format_at(index);
        decode_entry(index, bytes, format)
    }

    /// Records that every entry from `index` on is written by this build (not yet flushed):
    /// before the entries themselves, so that none is ever read in an older format.
    fn written_from(&self, index: u64) -> Result<(), StorageError> {
        let mut formats = self.formats();
        let mut updated = formats.clone();
        if !updated.written_from(index) {
            return Ok(());
        }
        let bytes = encode(&updated, "log formats").map_err(StorageIOError::write_logs)?;
        self.meta
            .insert(KEY_LOG_FORMATS, bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        *formats = updated;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        get_decoded(&self.meta, KEY_LAST_PURGED, "last purged log id")
            .map_err(|e| StorageIOError::read_logs(e).into())
    }

    /// Removes every entry whose key is in `keys` in one atomic batch.
    fn remove_keys(&self, keys: sled::Iter) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in keys.keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// A crash between recording a purge and removing its entries leaves them behind; they are
    /// harmless but removed here so the log starts right after the last purged id.
    fn remove_purged_leftovers(&self) -> Result<(), StorageError> {
        match self.last_purged()? {
            Some(purged) => self.remove_keys(self.log.range(..=index_key(purged.index))),
            None => Ok(()),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let Some(start) = first_index(&range) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            entries.push(self.decode(index, &value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_entry = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((key, value)) => Some(self.decode(key_index(&key)?, &value)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_entry.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let bytes = encode(vote, "vote").map_err(StorageIOError::write_vote)?;
        self.meta
            .insert(KEY_VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        get_decoded(&self.meta, KEY_VOTE, "vote").map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: see the module docs.
        let bytes = encode(&committed, "committed log id").map_err(StorageIOError::write)?;
        self.meta
            .insert(KEY_COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            get_decoded(&self.meta, KEY_COMMITTED, "committed log id")
                .map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One batch: a crash cannot leave a hole in the middle of an append.
        let mut batch = sled::Batch::default();
        let mut entries = entries.into_iter().peekable();
        if let Some(first) = entries.peek() {
            self.written_from(first.log_id.index)?;
        }
        for entry in entries {
            let bytes = encode(&entry, "raft log entry")
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Durable before acknowledged: openraft counts the entries towards a quorum once the
        // callback fires.
        match self.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(format!("flush raft log: {e}"))));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "truncate raft log");
        self.remove_keys(self.log.range(index_key(log_id.index)..))?;
        // After the removal: a crash between the two leaves nothing at those indexes to misread.
        self.written_from(log_id.index)?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "purge raft log");
        // The purge point is made durable before any entry goes, so the log never starts after
        // a gap; entries left behind by a crash are removed at open.
        let bytes = encode(&log_id, "last purged log id").map_err(StorageIOError::write_logs)?;
        self.meta
            .insert(KEY_LAST_PURGED, bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.remove_keys(self.log.range(..=index_key(log_id.index)))
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots on disk
// ---------------------------------------------------------------------------------------------

/// What a snapshot's data holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotPayload {
    /// [`SNAPSHOT_FORMAT`] when written.
    format: u32,
    last_applied: Option<LogId>,
    last_membership: MembershipRecord,
    state: ClusterState,
}

/// The persisted snapshot's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: Meta,
    /// The snapshot counter when it was written, so ids stay unique across restarts.
    counter: u64,
}

fn snapshot_error(meta: &Meta, message: String) -> StorageError {
    StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(message)).into()
}

/// A snapshot's data in an older format, whose state is `S` ([`ClusterStateV1`],
/// [`ClusterStateV2`], [`ClusterStateV3`], [`ClusterStateV4`], [`ClusterStateV5`], [`ClusterStateV7`],
/// [`ClusterStateV6`]).
#[derive(Deserialize)]
struct OlderPayload<S> {
    #[allow(dead_code, reason = "read to keep postcard's positions")]
    format: u32,
    last_applied: Option<LogId>,
    last_membership: MembershipRecord,
    state: S,
}

impl<S: Into<ClusterState>> OlderPayload<S> {
    fn upgrade(self) -> SnapshotPayload {
        SnapshotPayload {
            format: SNAPSHOT_FORMAT,
            last_applied: self.last_applied,
            last_membership: self.last_membership,
            state: self.state.into(),
        }
    }
}

/// Decodes snapshot data of the current format or an older one this build still reads (as
/// the current format), or says in words what is wrong with it.
fn decode_any_format(data: &[u8]) -> Result<SnapshotPayload, String> {
    let corrupt = |e: postcard::Error| format!("data is corrupt ({} bytes): {e}", data.len());
    // The format number leads the payload.
    match postcard::take_from_bytes::<u32>(data).map_err(corrupt)?.0 {
        SNAPSHOT_FORMAT => postcard::from_bytes(data).map_err(corrupt),
        1 => postcard::from_bytes::<OlderPayload<ClusterStateV1>>(data)
            .map(OlderPayload::upgrade)
            .map_err(corrupt),
        2 => postcard::from_bytes::<OlderPayload<ClusterStateV2>>(data)
            .map(OlderPayload::upgrade)
            .map_err(corrupt),
        3 => postcard::from_bytes::<OlderPayload<ClusterStateV3>>(data)
            .map(OlderPayload::upgrade)
            .map_err(corrupt),
        4 => postcard::from_bytes::<OlderPayload<ClusterStateV4>>(data)
            .map(OlderPayload::upgrade)
            .map_err(corrupt),
        6 => postcard::from_bytes::<OlderPayload<ClusterStateV6>>(data)
            .map(OlderPayload::upgrade)
            .map_err(corrupt),
        7 => postcard::from_bytes::<OlderPayload<ClusterStateV7>>(data)
            .map(OlderPayload::upgrade)
            .map_err(corrupt),
        5 => postcard::from_bytes::<OlderPayload<ClusterStateV5>>(data)
            .map(OlderPayload::upgrade)
            .map_err(corrupt),
        other => Err(format!(
            "has format {other}; this build reads formats 1 to {SNAPSHOT_FORMAT} (a newer Warren wrote it, or the data is corrupt)"
        )),
    }
}

/// Decodes snapshot data and checks it agrees with its metadata.
fn decode_payload(meta: &Meta, data: &[u8]) -> Result<SnapshotPayload, StorageError> {
    let payload = decode_any_format(data).map_err(|message| {
        snapshot_error(meta, format!("snapshot {} {message}", meta.snapshot_id))
    })?;
    let revision = Revision(meta.last_log_id.map_or(0, |id| id.index));
    if payload.last_applied != meta.last_log_id
        || payload.last_membership != meta.last_membership
        || payload.state.revision != revision
    {
        return Err(snapshot_error(
            meta,
            format!(
                "snapshot {} data does not match its metadata (data: last applied index {}, revision {}; \
                 metadata: last log index {})",
                meta.snapshot_id,
                index_text(payload.last_applied),
                payload.state.revision,
                index_text(meta.last_log_id)
            ),
        ));
    }
    Ok(payload)
}

/// A log id's index for people (`none` before the first entry), not openraft's Debug output.
fn index_text(log_id: Option<LogId>) -> String {
    log_id.map_or_else(|| "none".to_owned(), |id| id.index.to_string())
}

/// Which snapshot wins when two are written at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replace {
    /// A built snapshot: kept only if it is not older than the current one (a build runs in its
    /// own task and may finish after a newer snapshot was installed).
    IfNotOlder,
    /// An installed snapshot: openraft has decided it replaces the state.
    Always,
}

/// The `snapshot` tree, shared by the state machine and its snapshot builders.
#[derive(Clone)]
struct SnapshotStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Makes snapshot ids unique: bumped by every build.
    counter: Arc<AtomicU64>,
    /// Serializes snapshot writes (builds and installs).
    write_lock: Arc<Mutex<()>>,
}

impl SnapshotStore {
    fn read_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        get_decoded(&self.tree, KEY_SNAPSHOT_META, "snapshot metadata")
            .map_err(|e| StorageIOError::read_snapshot(None, e).into())
    }

    /// The current snapshot's record and its data, checked to decode.
    fn read(&self) -> Result<Option<(SnapshotRecord, Vec<u8>, SnapshotPayload)>, StorageError> {
        let Some(record) = self.read_record()? else {
            return Ok(None);
        };
        let data = self
            .tree
            .get(KEY_SNAPSHOT_DATA)
            .map_err(|e| StorageIOError::read_snapshot(Some(record.meta.signature()), &e))?
            .ok_or_else(|| {
                snapshot_error(
                    &record.meta,
                    format!("snapshot {} has no data", record.meta.snapshot_id),
                )
            })?
            .to_vec();
        let payload = decode_payload(&record.meta, &data)?;
        Ok(Some((record, data, payload)))
    }

    /// Persists a snapshot (metadata and data in one batch) and flushes. Returns whether it
    /// was written.
    async fn write(
        &self,
        record: &SnapshotRecord,
        data: &[u8],
        replace: Replace,
    ) -> Result<bool, StorageError> {
        let signature = Some(record.meta.signature());
        let write_error = |e: AnyError| -> StorageError {
            StorageIOError::write_snapshot(signature.clone(), e).into()
        };
        let _guard = self.write_lock.lock().await;
        if replace == Replace::IfNotOlder {
            let current = self.read_record()?;
            if let Some(current) = current.filter(|c| c.meta.last_log_id > record.meta.last_log_id)
            {
                tracing::info!(
                    built = %record.meta.snapshot_id,
                    current = %current.meta.snapshot_id,
                    "built snapshot is older than the current one; not keeping it"
                );
                return Ok(false);
            }
        }
        let mut batch = sled::Batch::default();
        batch.insert(
            KEY_SNAPSHOT_META,
            encode(record, "snapshot metadata").map_err(write_error)?,
        );
        batch.insert(KEY_SNAPSHOT_DATA, data);
        self.tree
            .apply_batch(batch)
            .map_err(|e| write_error(AnyError::new(&e)))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| write_error(AnyError::new(&e)))?;
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

/// The state machine: [`ClusterState`] in memory, its last applied log id and membership, and
/// the current snapshot on sled.
///
/// The rest of the control plane reads the state through [`StateMachineStore::state`] and
/// learns of progress through [`StateMachineStore::watch_applied`]; take both handles before
/// giving the store to [`openraft::Raft::new`].
pub struct StateMachineStore {
    state: Arc<RwLock<ClusterState>>,
    applied_tx: watch::Sender<Revision>,
    last_applied: Option<LogId>,
    last_membership: MembershipRecord,
    snapshots: SnapshotStore,
    /// Where the time each applied batch took goes, once a node's metrics are attached.
    apply_duration: Option<prometheus::Histogram>,
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("last_applied", &self.last_applied)
            .field("last_membership", &self.last_membership)
            .finish_non_exhaustive()
    }
}

impl StateMachineStore {
    fn load(snapshots: SnapshotStore) -> Result<Self, StorageError> {
        let (state, last_applied, last_membership) = match snapshots.read()? {
            Some((record, _data, payload)) => {
                snapshots.counter.store(record.counter, Ordering::Relaxed);
                tracing::info!(
                    snapshot_id = %record.meta.snapshot_id,
                    revision = %payload.state.revision,
                    "loaded raft snapshot"
                );
                (
                    payload.state,
                    record.meta.last_log_id,
                    record.meta.last_membership,
                )
            }
            None => (ClusterState::default(), None, MembershipRecord::default()),
        };
        let mut state = state;
        set_members(&mut state, &last_membership);
        let (applied_tx, _) = watch::channel(state.revision);
        Ok(Self {
            state: Arc::new(RwLock::new(state)),
            applied_tx,
            last_applied,
            last_membership,
            snapshots,
            apply_duration: None,
        })
    }

    /// Observes the time each applied batch takes in `histogram`.
    pub fn time_applies(&mut self, histogram: prometheus::Histogram) {
        self.apply_duration = Some(histogram);
    }

    /// A shared handle on the replicated state. Readers should hold the lock briefly: `apply`
    /// waits for it.
    pub fn state(&self) -> Arc<RwLock<ClusterState>> {
        Arc::clone(&self.state)
    }

    /// The revision of the last applied entry, updated after every applied batch and every
    /// installed snapshot.
    pub fn watch_applied(&self) -> watch::Receiver<Revision> {
        self.applied_tx.subscribe()
    }

    fn revision_now(&self) -> Revision {
        *self.applied_tx.borrow()
    }

    /// Checks that `entry` comes right after what was applied.
    fn check_order(
        &self,
        state: &ClusterState,
        entry: &Entry<TypeConfig>,
    ) -> Result<(), StorageError> {
        let revision = Revision(entry.log_id.index);
        // Index 0 holds only the membership `Raft::initialize` writes: the state starts at
        // revision 0, so there is no revision to move past.
        let first_config = entry.log_id.index == 0
            && self.last_applied.is_none()
            && !matches!(entry.payload, EntryPayload::Normal(_));
        if revision > state.revision || first_config {
            return Ok(());
        }
        Err(DefensiveError::new(
            ErrorSubject::Apply(entry.log_id),
            Violation::ApplyNonConsecutive {
                prev: self.last_applied,
                next: entry.log_id,
            },
        )
        .into())
    }

    fn apply_entry(&mut self, state: &mut ClusterState, entry: Entry<TypeConfig>) -> Outcome {
        let revision = Revision(entry.log_id.index);
        self.last_applied = Some(entry.log_id);
        if let EntryPayload::Normal(command) = &entry.payload {
            return state.apply(revision, command);
        }
        if let EntryPayload::Membership(membership) = entry.payload {
            state.note_membership(revision, membership.voter_ids());
            self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
            set_members(state, &self.last_membership);
        } else if revision > state.revision {
            state.note_revision(revision);
        }
        Outcome {
            revision,
            ..Outcome::default()
        }
    }
}

/// Sets the state's view of the applied membership: its nodes (voters and learners) and their
/// QUIC addresses, in node-id order.
fn set_members(state: &mut ClusterState, membership: &MembershipRecord) {
    let nodes = membership.membership().nodes();
    (state.control_members, state.control_addrs) = nodes
        .map(|(id, member)| (NodeId(*id), member.quic_addr.clone()))
        .unzip();
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, MembershipRecord), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Waiting for the state's lock counts: readers holding it delay the apply too.
        let _timer = self.apply_duration.as_ref().map(|h| h.start_timer());
        let entries = entries.into_iter();
        let mut outcomes = Vec::with_capacity(entries.size_hint().0);
        let state_lock = Arc::clone(&self.state);
        let revision = {
            let mut state = state_lock.write().await;
            for entry in entries {
                self.check_order(&state, &entry)?;
                outcomes.push(self.apply_entry(&mut state, entry));
            }
            state.revision
        };
        // After the lock is released, so a woken reader sees the new state at once.
        if !outcomes.is_empty() {
            self.applied_tx.send_replace(revision);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A copy taken now: openraft builds in another task while entries keep being applied,
        // and the state, last applied id and membership must describe the same moment.
        let state = self.state.read().await.clone();
        SnapshotBuilder {
            payload: SnapshotPayload {
                format: SNAPSHOT_FORMAT,
                last_applied: self.last_applied,
                last_membership: self.last_membership.clone(),
                state,
            },
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let payload = decode_payload(meta, &data)?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            counter: self.snapshots.counter.load(Ordering::Relaxed),
        };
        // On disk before in memory: the state never shows what a restart would lose.
        self.snapshots
            .write(&record, &data, Replace::Always)
            .await?;
        let revision = payload.state.revision;
        let mut state = payload.state;
        set_members(&mut state, &meta.last_membership);
        let mut current = self.state.write().await;
        // A new epoch: whatever the snapshot holds, readers of the certificates re-read them.
        state.certs_epoch.0 = current.certs_epoch.0 + 1;
        *current = state;
        drop(current);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.applied_tx.send_replace(revision);
        tracing::info!(snapshot_id = %meta.snapshot_id, %revision, "installed raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.snapshots.read()?.map(|(record, data, _)| Snapshot {
            meta: record.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from the copy of the state taken by
/// [`RaftStateMachine::get_snapshot_builder`], persists it and makes it current.
pub struct SnapshotBuilder {
    payload: SnapshotPayload,
    snapshots: SnapshotStore,
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("last_applied", &self.payload.last_applied)
            .finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let counter = self.snapshots.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match self.payload.last_applied {
            Some(log_id) => format!("{log_id}-{counter}"),
            None => format!("none-{counter}"),
        };
        let meta = Meta {
            last_log_id: self.payload.last_applied,
            last_membership: self.payload.last_membership.clone(),
            snapshot_id,
        };
        let data = encode(&self.payload, "snapshot data")
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        let record = SnapshotRecord { meta, counter };
        if self
            .snapshots
            .write(&record, &data, Replace::IfNotOlder)
            .await?
        {
            tracing::info!(
                snapshot_id = %record.meta.snapshot_id,
                revision = %self.payload.state.revision,
                size_bytes = data.len(),
                "built raft snapshot"
            );
        }
        Ok(Snapshot {
            meta: record.meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests;
