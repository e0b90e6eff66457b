use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Membership};

use super::*;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Blank,
    }
}

fn membership(index: u64) -> Entry<TypeConfig> {
    let voters = BTreeSet::from([1]);
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

fn open_temp() -> (tempfile::TempDir, LogStore, StateMachineStore) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let (log, sm) = open(dir.path(), StoreTuning::default()).expect("open a fresh store");
    (dir, log, sm)
}

#[test]
fn index_keys_sort_like_indexes() {
    let indexes = [0, 1, 255, 256, 65_535, 1 << 32, u64::MAX - 1, u64::MAX];
    for pair in indexes.windows(2) {
        assert!(index_key(pair[0]) < index_key(pair[1]), "{pair:?}");
        assert_eq!(key_index(&index_key(pair[0])).expect("8-byte key"), pair[0]);
    }
    assert!(key_index(b"short").is_err());
}

#[test]
fn first_index_of_ranges() {
    fn check(range: impl RangeBounds<u64>, expected: Option<u64>) {
        assert_eq!(first_index(&range), expected);
    }
    check(.., Some(0));
    check(5.., Some(5));
    check(5..9, Some(5));
    check((Bound::Excluded(5), Bound::Unbounded), Some(6));
    check((Bound::Excluded(u64::MAX), Bound::Unbounded), None);
}

/// A snapshot written in format 1 (before unfinished joins were recorded) is read, with
/// no unfinished joins, and one of format 3 (before key rotation) with key generation 1; a
/// format this build does not know is named as such.
#[test]
fn snapshots_of_formats_1_and_3_are_read_and_an_unknown_format_named() {
    #[derive(Serialize)]
    struct StateV1<'a> {
        cluster: &'a Option<crate::state::ClusterInfo>,
        nodes: &'a std::collections::BTreeMap<NodeId, warren_api::Node>,
        revoked_serials: &'a std::collections::BTreeSet<String>,
        services:
            &'a std::collections::BTreeMap<warren_api::ServiceName, crate::state::ServiceRecord>,
        replicas: &'a std::collections::BTreeMap<warren_api::ReplicaId, warren_api::Replica>,
        unschedulable: &'a std::collections::BTreeMap<warren_api::ServiceName, u32>,
        secrets: &'a std::collections::BTreeMap<String, crate::state::SecretRecord>,
        volumes: &'a std::collections::BTreeMap<String, warren_api::Volume>,
        tokens: &'a warren_transport::TokenBook,
        revision: Revision,
    }
    let mut state = ClusterState::default();
    state.revoked_serials.insert("serial-9".into());
    state.revision = Revision(7);
    state.key_gen = 1;
    let v1 = StateV1 {
        cluster: &state.cluster,
        nodes: &state.nodes,
        revoked_serials: &state.revoked_serials,
        services: &state.services,
        replicas: &state.replicas,
        unschedulable: &state.unschedulable,
        secrets: &state.secrets,
        volumes: &state.volumes,
        tokens: &state.tokens,
        revision: state.revision,
    };
    let meta = Meta {
        last_log_id: Some(log_id(1, 7)),
        last_membership: MembershipRecord::default(),
        snapshot_id: "1-7-1".into(),
    };
    let data = postcard::to_allocvec(&(1u32, meta.last_log_id, &meta.last_membership, v1))
        .expect("encode a format-1 snapshot");
    let payload = decode_payload(&meta, &data).expect("format 1 is read");
    assert_eq!(payload.state, state);
    assert!(payload.state.pending_joins.is_empty());

    // Format 3: the current fields up to the admins, no key generation.
    let data = postcard::to_allocvec(&(
        3u32,
        meta.last_log_id,
        &meta.last_membership,
        (
            &state.cluster,
            &state.nodes,
            &state.revoked_serials,
            &state.services,
        ),
        (
            &state.replicas,
            &state.unschedulable,
            &state.secrets,
            &state.volumes,
        ),
        &state.tokens,
        (&state.pending_joins, &state.admins, state.revision),
    ))
    .expect("encode a format-3 snapshot");
    let payload = decode_payload(&meta, &data).expect("format 3 is read");
    assert_eq!(payload.state, state);
    assert_eq!(payload.state.key_generation(), 1);

    let mut data = postcard::to_allocvec(&9u32).expect("encode a format number");
    data.extend_from_slice(&[0xff; 16]);
    let text = decode_payload(&meta, &data)
        .expect_err("format 9 is refused")
        .to_string();
    assert!(
        text.contains(&format!(
            "has format 9; this build reads formats 1 to {SNAPSHOT_FORMAT}"
        )),
        "{text}"
    );
}

#[test]
fn tuning_validation() {
    fn check(tuning: StoreTuning, ok: bool) {
        assert_eq!(tuning.validate().is_ok(), ok, "{tuning:?}");
    }
    check(StoreTuning::default(), true);
    check(
        StoreTuning {
            cache_capacity_bytes: 1 << 20,
            flush_every_ms: None,
        },
        true,
    );
    check(
        StoreTuning {
            cache_capacity_bytes: 1024,
            ..StoreTuning::default()
        },
        false,
    );
    check(
        StoreTuning {
            flush_every_ms: Some(0),
            ..StoreTuning::default()
        },
        false,
    );
}

/// Index 0 (the membership `Raft::initialize` writes) applies on a fresh state; an entry at
/// or below the applied revision is a storage error, not a panic in `ClusterState`.
#[tokio::test]
async fn apply_accepts_index_zero_and_refuses_going_back() {
    let (_dir, _log, mut sm) = open_temp();
    let outcomes = sm
        .apply([membership(0), blank(1)])
        .await
        .expect("apply 0 and 1");
    assert_eq!(
        outcomes.iter().map(|o| o.revision).collect::<Vec<_>>(),
        [Revision(0), Revision(1)]
    );
    assert_eq!(sm.state().read().await.revision, Revision(1));

    let error = sm.apply([blank(1)]).await.expect_err("index 1 again");
    assert!(
        error.to_string().contains("invalid next log to apply"),
        "{error}"
    );
    let error = sm
        .apply([membership(0)])
        .await
        .expect_err("index 0 after index 1");
    assert!(matches!(error, StorageError::Defensive { .. }), "{error}");
}

/// A snapshot build that finishes after a newer snapshot was installed does not replace it.
#[tokio::test]
async fn a_late_build_does_not_replace_a_newer_installed_snapshot() {
    let (_leader_dir, _leader_log, mut leader) = open_temp();
    leader
        .apply((0..5).map(blank))
        .await
        .expect("apply on the leader");
    let newer = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    let (_dir, _log, mut sm) = open_temp();
    sm.apply([blank(0), blank(1)]).await.expect("apply");
    let mut late_builder = sm.get_snapshot_builder().await;
    sm.install_snapshot(&newer.meta, newer.snapshot)
        .await
        .expect("install");
    let late = late_builder.build_snapshot().await.expect("late build");
    assert_eq!(late.meta.last_log_id, Some(log_id(1, 1)));

    let current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(current.meta, newer.meta);
    assert_eq!(sm.state().read().await.revision, Revision(4));
}

fn members(index: u64, voters: &[u64], learners: &[u64]) -> Entry<TypeConfig> {
    let nodes: BTreeMap<u64, RaftMember> = voters
        .iter()
        .chain(learners)
        .map(|id| {
            let member = RaftMember {
                quic_addr: format!("127.0.0.{id}:7101"),
                api_addr: format!("127.0.0.{id}:7100"),
                name: format!("c{id}"),
            };
            (*id, member)
        })
        .collect();
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(
            vec![voters.iter().copied().collect()],
            nodes,
        )),
    }
}

/// The control addresses agents are given come from the membership *applied* at the
/// state's revision (learners included), and survive a snapshot install and a reopen —
/// so a view is a function of the applied state, never of a membership merely appended.
#[tokio::test]
async fn control_addrs_follow_the_applied_membership() {
    let (dir, log, mut sm) = open_temp();
    sm.apply([members(0, &[1], &[]), blank(1)])
        .await
        .expect("apply");
    let one = vec!["127.0.0.1:7101".to_owned()];
    assert_eq!(sm.state().read().await.control_addrs, one);
    sm.apply([members(2, &[1], &[2])]).await.expect("apply");
    let two = vec!["127.0.0.1:7101".to_owned(), "127.0.0.2:7101".to_owned()];
    {
        let state = sm.state();
        let state = state.read().await;
        assert_eq!((state.revision, &state.control_addrs), (Revision(2), &two));
    }
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let (_other_dir, _other_log, mut other) = open_temp();
    other
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    assert_eq!(other.state().read().await.control_addrs, two);
    drop((log, sm));
    let (_log, reopened) = open(dir.path(), StoreTuning::default()).expect("reopen");
    assert_eq!(reopened.state().read().await.control_addrs, two);
    let members = [NodeId(1), NodeId(2)].into();
    assert_eq!(reopened.state().read().await.control_members, members);
}

/// Snapshot bytes corrupted under a running store are a storage error when read.
#[tokio::test]
async fn corrupt_current_snapshot_is_a_storage_error() {
    let (_dir, _log, mut sm) = open_temp();
    sm.apply((0..3).map(blank)).await.expect("apply");
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    sm.snapshots
        .tree
        .insert(KEY_SNAPSHOT_DATA, &b"junk"[..])
        .expect("insert");
    let error = sm.get_current_snapshot().await.expect_err("corrupt data");
    assert!(error.to_string().contains("data is corrupt"), "{error}");

    sm.snapshots
        .tree
        .insert(KEY_SNAPSHOT_META, &b"\xff"[..])
        .expect("insert");
    let error = sm
        .get_current_snapshot()
        .await
        .expect_err("corrupt metadata");
    assert!(
        error
            .to_string()
            .contains("stored snapshot metadata is corrupt"),
        "{error}"
    );
}

/// Entries of a purge interrupted by a crash are removed at open.
#[tokio::test]
async fn open_removes_entries_left_by_an_interrupted_purge() {
    let (dir, mut log, sm) = open_temp();
    log.blocking_append((0..5).map(blank))
        .await
        .expect("append");
    // What a crash between the two steps of `purge` leaves: the purge point, all entries.
    let bytes = encode(&log_id(1, 2), "log id").expect("encode");
    log.meta.insert(KEY_LAST_PURGED, bytes).expect("insert");
    log.flush().await.expect("flush");
    drop((log, sm));

    let (mut log, _sm) = open(dir.path(), StoreTuning::default()).expect("reopen");
    let indexes: Vec<u64> = log
        .try_get_log_entries(..)
        .await
        .expect("read")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, [3, 4]);
}
