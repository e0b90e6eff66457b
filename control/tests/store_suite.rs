//! The Raft store against openraft's storage conformance suite, across restarts, and with
//! corrupted bytes on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageHelper, StorageIOError, StoredMembership, Vote,
};
use tempfile::TempDir;
use tracing::info;
use warren_api::{NodeRole, Revision, Volume, VolumeDriver};
use warren_control::store::{self, LogStore, OpenError, StateMachineStore, StoreTuning};
use warren_control::types::{LogId, StorageError};
use warren_control::{ClusterState, Command, Effect, Op, TypeConfig};
use warren_transport::TokenRecord;
use warren_transport::token::TokenId;

/// Opens a fresh store in its own temp dir for every suite case.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = store::open(dir.path(), StoreTuning::default())
            .map_err(|e| StorageIOError::write(AnyError::error(e)))?;
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite: log, vote, membership, apply and snapshot transfer.
#[test]
fn conformance_suite() {
    Suite::test_all(TempStoreBuilder).expect("openraft storage suite passes");
}

fn open_store(dir: &Path) -> (LogStore, StateMachineStore) {
    store::open(dir, StoreTuning::default()).expect("open the raft store")
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(2, 1), index)
}

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload,
    }
}

fn command(at_ms: u64, op: Op) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Command { at_ms, op })
}

fn volume(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        driver: VolumeDriver::Local,
        size_limit_bytes: Some(1 << 30),
        labels: BTreeMap::from([("tier".to_owned(), "fast".to_owned())]),
    }
}

fn token() -> TokenRecord {
    TokenRecord {
        id: TokenId([7; 8]),
        role: NodeRole::Agent,
        secret_sha256: [9; 32],
        created_at_ms: 1_000,
        expires_at_ms: Some(1_000 + 3_600_000),
        single_use: true,
        used_at_ms: None,
        revoked: false,
    }
}

fn membership() -> Membership<u64, warren_control::RaftMember> {
    Membership::new(vec![BTreeSet::from([1])], None)
}

/// A small history: the initial membership, a blank entry, a token, two volumes.
fn history() -> Vec<Entry<TypeConfig>> {
    vec![
        entry(0, EntryPayload::Membership(membership())),
        entry(1, EntryPayload::Blank),
        entry(2, command(1_000, Op::AddToken(token()))),
        entry(3, command(1_001, Op::PutVolume(volume("data")))),
        entry(4, command(1_002, Op::PutVolume(volume("logs")))),
    ]
}

async fn state_of(sm: &StateMachineStore) -> ClusterState {
    sm.state().read().await.clone()
}

/// Vote, log, committed id, snapshot and state all come back after the store is dropped and
/// reopened; openraft's start-up re-applies the committed entry that came after the snapshot.
#[tokio::test]
async fn restart_restores_log_vote_committed_snapshot_and_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new_committed(2, 1);

    info!("--- write: vote, five entries, apply four, snapshot, apply the fifth");
    let (snapshot_meta, state_before) = {
        let (mut log, mut sm) = open_store(dir.path());
        let mut applied = sm.watch_applied();
        log.save_vote(&vote).await.expect("save vote");
        log.blocking_append(history()).await.expect("append");

        let outcomes = sm
            .apply(history().into_iter().take(4))
            .await
            .expect("apply 0..=3");
        let revisions: Vec<Revision> = outcomes.iter().map(|o| o.revision).collect();
        assert_eq!(revisions, [0, 1, 2, 3].map(Revision));
        assert_eq!(outcomes[2].result, Ok(Effect::Done), "token added");
        assert_eq!(outcomes[3].result, Ok(Effect::Done), "volume added");
        assert!(applied.has_changed().expect("sender alive"));
        assert_eq!(*applied.borrow_and_update(), Revision(3));

        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(3)));
        assert!(
            snapshot.meta.snapshot_id.contains("-3-"),
            "{}",
            snapshot.meta.snapshot_id
        );

        sm.apply(history().into_iter().skip(4))
            .await
            .expect("apply 4");
        assert_eq!(*applied.borrow_and_update(), Revision(4));
        log.save_committed(Some(log_id(4)))
            .await
            .expect("save committed");
        (snapshot.meta, state_of(&sm).await)
    };
    assert_eq!(state_before.revision, Revision(4));
    assert_eq!(state_before.volumes.len(), 2);
    assert!(state_before.tokens.get(TokenId([7; 8])).is_some());

    info!("--- reopen: everything on disk is back, the state is the snapshot's");
    let (mut log, mut sm) = open_store(dir.path());
    assert_eq!(log.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(
        log.read_committed().await.expect("read committed"),
        Some(log_id(4))
    );
    let log_state = log.get_log_state().await.expect("log state");
    assert_eq!(
        (log_state.last_purged_log_id, log_state.last_log_id),
        (None, Some(log_id(4)))
    );
    let entries = log.try_get_log_entries(..).await.expect("read log");
    assert_eq!(
        entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        (0..5).map(log_id).collect::<Vec<_>>()
    );
    assert_eq!(
        format!("{:?}", entries[3].payload),
        format!("{:?}", history()[3].payload)
    );

    let current = sm
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta, snapshot_meta);
    let (last_applied, last_membership) = sm.applied_state().await.expect("applied state");
    assert_eq!(last_applied, Some(log_id(3)));
    assert_eq!(
        last_membership,
        StoredMembership::new(Some(log_id(0)), membership())
    );
    assert_eq!(sm.state().read().await.revision, Revision(3));
    assert_eq!(*sm.watch_applied().borrow(), Revision(3));

    info!("--- openraft's start-up re-applies up to the committed id");
    let applied = sm.watch_applied();
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(
        sm.applied_state().await.expect("applied state").0,
        Some(log_id(4))
    );
    assert_eq!(state_of(&sm).await, state_before);
    assert_eq!(*applied.borrow(), Revision(4));
}

/// A snapshot built on one store and installed on another replaces the state there, and the
/// installed snapshot is what the second store loads after a restart.
#[tokio::test]
async fn installed_snapshot_replaces_state_and_survives_restart() {
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let follower_dir = tempfile::tempdir().expect("temp dir");
    let (_leader_log, mut leader) = open_store(leader_dir.path());
    leader.apply(history()).await.expect("apply");
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    info!("--- install on a follower that has applied something else");
    let (_follower_log, mut follower) = open_store(follower_dir.path());
    follower
        .apply([entry(0, EntryPayload::Blank)])
        .await
        .expect("apply blank");
    let applied = follower.watch_applied();
    let mut receiving = follower
        .begin_receiving_snapshot()
        .await
        .expect("begin receiving");
    *receiving = *snapshot.snapshot;
    follower
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .expect("install");
    assert_eq!(state_of(&follower).await, state_of(&leader).await);
    assert_eq!(*applied.borrow(), Revision(4));
    drop((_follower_log, follower));

    info!("--- restart the follower");
    let (_follower_log, mut follower) = open_store(follower_dir.path());
    assert_eq!(state_of(&follower).await, state_of(&leader).await);
    assert_eq!(
        follower.applied_state().await.expect("applied").0,
        Some(log_id(4))
    );
    let current = follower
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(current.meta, snapshot.meta);
}

/// A second store on the same directory is refused with a message that says why.
#[test]
fn second_open_of_a_locked_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _first = open_store(dir.path());
    let error = store::open(dir.path(), StoreTuning::default()).expect_err("second open");
    assert!(matches!(error, OpenError::Locked { .. }), "{error:?}");
    assert!(
        error.to_string().contains("is locked by another process"),
        "{error}"
    );
}

/// Runs `corrupt` on the closed store's raw sled database. A store dropped a moment ago may
/// still hold sled's lock until sled's background threads (the flusher, an async flush) let go
/// of it, so the open waits for it as `store::open` does.
fn with_raw_db(dir: &Path, corrupt: impl FnOnce(&sled::Db)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let db = loop {
        match sled::open(dir.join("raft")) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.expect("open sled directly"),
        }
    };
    corrupt(&db);
    db.flush().expect("flush");
}

/// Garbage in a log entry is a storage error naming the index, for reads that touch it only.
#[tokio::test]
async fn corrupt_log_entry_is_a_storage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (mut log, _sm) = open_store(dir.path());
        log.blocking_append(history()).await.expect("append");
    }
    with_raw_db(dir.path(), |db| {
        let tree = db.open_tree("raft_log").expect("log tree");
        tree.insert(2u64.to_be_bytes(), &b"\xff\xff\xff garbage"[..])
            .expect("insert");
    });

    let (mut log, _sm) = open_store(dir.path());
    assert_eq!(
        log.try_get_log_entries(0..2)
            .await
            .expect("entries before")
            .len(),
        2
    );
    assert_eq!(
        log.get_log_state()
            .await
            .expect("last entry is intact")
            .last_log_id,
        Some(log_id(4))
    );
    let error = log
        .try_get_log_entries(..)
        .await
        .expect_err("entry 2 is corrupt");
    assert!(matches!(error, StorageError::IO { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("index 2 is corrupt"), "{message}");
    drop((log, _sm));

    info!("--- an intact entry stored under the wrong index, and a corrupt last entry");
    with_raw_db(dir.path(), |db| {
        let tree = db.open_tree("raft_log").expect("log tree");
        let entry_1 = tree.get(1u64.to_be_bytes()).expect("get").expect("entry 1");
        tree.insert(3u64.to_be_bytes(), entry_1).expect("insert");
        tree.insert(4u64.to_be_bytes(), &b"\x00"[..])
            .expect("insert");
    });
    let (mut log, _sm) = open_store(dir.path());
    let error = log
        .try_get_log_entries(3..4)
        .await
        .expect_err("entry 3 is misplaced");
    assert!(
        error
            .to_string()
            .contains("stored at index 3 says it is at index 1"),
        "{error}"
    );
    let error = log
        .get_log_state()
        .await
        .expect_err("last entry is corrupt");
    assert!(error.to_string().contains("index 4 is corrupt"), "{error}");
}

/// A persisted snapshot that does not decode stops the store from opening, with a reason.
#[tokio::test]
async fn corrupt_snapshot_refuses_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (_log, mut sm) = open_store(dir.path());
        sm.apply(history()).await.expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
    }
    with_raw_db(dir.path(), |db| {
        let tree = db.open_tree("snapshot").expect("snapshot tree");
        tree.insert("data", &b"\x01\x02 not a snapshot"[..])
            .expect("insert");
    });
    let error = store::open(dir.path(), StoreTuning::default()).expect_err("corrupt snapshot");
    assert!(matches!(error, OpenError::Corrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("data is corrupt"), "{error}");
    // One sentence in our words: no Debug output of openraft's types.
    assert!(!error.to_string().contains("Signature {"), "{error}");
}

/// A vote that does not decode is a storage error.
#[tokio::test]
async fn corrupt_vote_is_a_storage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (mut log, _sm) = open_store(dir.path());
        log.save_vote(&Vote::new(1, 1)).await.expect("save vote");
    }
    with_raw_db(dir.path(), |db| {
        let tree = db.open_tree("raft_meta").expect("meta tree");
        tree.insert("vote", &b"\xff"[..]).expect("insert");
    });
    let (mut log, _sm) = open_store(dir.path());
    let error = log.read_vote().await.expect_err("corrupt vote");
    assert!(
        error.to_string().contains("stored vote is corrupt"),
        "{error}"
    );
}

/// Set in the child process of `acknowledged_writes_survive_abort` to the store's directory.
const CRASH_DIR_ENV: &str = "WARREN_STORE_TEST_CRASH_DIR";

/// A process crash right after acknowledged writes: a child process saves a vote and appends
/// entries with background flushing off, then aborts without running any destructor; the
/// parent reopens the store and finds every write. This checks sled's recovery from an unclean
/// stop (the other tests drop the store, which flushes). It cannot observe fsync: an abort keeps
/// what reached the kernel, so only power loss would tell a missing flush apart, and this test
/// passes with the flushes removed.
#[test]
fn acknowledged_writes_survive_abort() {
    if let Ok(dir) = std::env::var(CRASH_DIR_ENV) {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(async {
            let tuning = StoreTuning {
                flush_every_ms: None,
                ..StoreTuning::default()
            };
            let (mut log, _sm) = store::open(Path::new(&dir), tuning).expect("open in the child");
            log.save_vote(&Vote::new(5, 1)).await.expect("save vote");
            log.blocking_append(history()).await.expect("append");
        });
        std::process::abort();
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "acknowledged_writes_survive_abort",
            "--nocapture",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .status()
        .expect("run the child");
    assert!(!status.success(), "the child aborts");

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let (mut log, _sm) = open_store(dir.path());
        assert_eq!(
            log.read_vote().await.expect("read vote"),
            Some(Vote::new(5, 1))
        );
        let entries = log.try_get_log_entries(..).await.expect("read log");
        assert_eq!(entries.len(), history().len());
    });
}
