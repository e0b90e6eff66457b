//! The store reads what the build before spec format 2 wrote: its log entries and its
//! snapshots, from bytes that build produced (golden hex below), and refuses what a newer
//! build wrote.

use openraft::CommittedLeaderId;
use openraft::storage::RaftLogStorageExt;
use warren_api::{
    ProcessSpec, SecretRef, Service, ServiceMode, ServiceName, ServiceSpec, Workload,
};

use super::*;
use crate::command::{Command, Op};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The spec the golden bytes hold, as the older build had it.
fn sample_spec() -> ServiceSpec {
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").expect("valid name"),
        Workload::Process(ProcessSpec {
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            working_dir: Some("data".into()),
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 2 };
    spec.env.insert("MODE".into(), "edge".into());
    spec.ports = vec!["http:8080".parse().expect("valid port")];
    spec.secrets = vec![SecretRef::new("db")];
    spec.labels.insert("team".into(), "a".into());
    spec
}

/// What `sample_spec()` of the older build reads as now: root, every capability.
fn upgraded(mut spec: ServiceSpec) -> ServiceSpec {
    spec.user = Some("root".into());
    spec.cap_add = vec!["ALL".into()];
    spec
}

/// `Entry { log_id: (term 2, node 1, index 5), Normal(Command { at_ms: 1_700_000_000_000,
/// op: PutService(sample_spec()) }) }` as the build before spec format 2 encoded it.
const ENTRY_V1_AT_5: &str = "0201050180d095ffbc3109037765620003027368022d63076563686f206869010464\
    6174610002000001044d4f4445046564676501010468747470903f000000e807e0d4030000010264620264620000\
    000100904e01047465616d0161";

/// Snapshot data of format 3 (last applied (2, 1, 9), default membership, revision 9) whose
/// state holds service `web`: version 2 is `sample_spec()`, the previous spec the same without
/// `env`; created at 1_700_000_000_000, updated 100 s later.
const SNAPSHOT_V3: &str = "0301020109000000000000010377656202037765620003027368022d630765636\
    86f2068690104646174610002000001044d4f4445046564676501010468747470903f000000e807e0d403000001\
    0264620264620000000100904e01047465616d016101037765620003027368022d63076563686f2068690104646\
    17461000200000001010468747470903f000000e807e0d4030000010264620264620000000100904e0104746561\
    6d016180d095ffbc31a0dd9bffbc31000000000000000009";

fn put_service(index: u64, spec: ServiceSpec) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(2, index),
        payload: EntryPayload::Normal(Command {
            at_ms: 1_700_000_000_000,
            op: Op::PutService(spec),
        }),
    }
}

fn spec_at(entries: &[Entry<TypeConfig>], index: u64) -> ServiceSpec {
    let entry = entries
        .iter()
        .find(|e| e.log_id.index == index)
        .unwrap_or_else(|| panic!("no entry at {index}"));
    match &entry.payload {
        EntryPayload::Normal(Command {
            op: Op::PutService(spec),
            ..
        }) => spec.clone(),
        other => panic!("entry {index} is {other:?}"),
    }
}

/// Makes the store in `dir` look as the older build left it: layout 1, no formats recorded,
/// a blank entry at 4 and its `PutService` at 5.
async fn play_the_older_build(dir: &Path) {
    let (log, _sm) = open(dir, StoreTuning::default()).expect("open a fresh store");
    log.meta
        .insert(KEY_LAYOUT, &1u32.to_be_bytes())
        .expect("insert");
    log.meta.remove(KEY_LOG_FORMATS).expect("remove");
    let blank = Entry::<TypeConfig> {
        log_id: log_id(2, 4),
        payload: EntryPayload::Blank,
    };
    let blank = encode(&blank, "entry").expect("encode");
    log.log.insert(index_key(4), blank).expect("insert");
    log.log
        .insert(index_key(5), unhex(ENTRY_V1_AT_5))
        .expect("insert");
    log.flush().await.expect("flush");
}

/// An older build's log: its entries read in their format (specs as root with every
/// capability, workload hash unchanged), this build's appended after them in its own, across
/// reopens; a truncation below the older stretch rewrites it in the new format.
#[tokio::test]
async fn a_log_of_the_older_build_is_read_and_extended() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    play_the_older_build(dir.path()).await;

    let (mut log, sm) = open(dir.path(), StoreTuning::default()).expect("upgrade on open");
    let mut new = sample_spec();
    new.user = Some("www-data".into());
    log.blocking_append([put_service(6, new.clone())])
        .await
        .expect("append");
    drop((log, sm));

    let (mut log, sm) = open(dir.path(), StoreTuning::default()).expect("reopen");
    let entries = log.try_get_log_entries(4..).await.expect("read");
    assert_eq!(entries.len(), 3);
    let old = spec_at(&entries, 5);
    assert_eq!(old, upgraded(sample_spec()));
    assert_eq!(
        old.workload_hash(),
        0xd852_ad39_3787_4142,
        "restarts nothing"
    );
    assert_eq!(spec_at(&entries, 6), new);
    let formats = log.formats().clone();
    assert_eq!(
        (formats.format_at(5), formats.format_at(6)),
        (1, warren_api::older::SPEC_FORMAT)
    );

    // A leader's log replaces 5 on: rewritten by this build, read in its format.
    log.truncate(log_id(2, 5)).await.expect("truncate");
    log.blocking_append([put_service(5, new.clone())])
        .await
        .expect("append");
    drop((log, sm));
    let (mut log, _sm) = open(dir.path(), StoreTuning::default()).expect("reopen");
    let entries = log.try_get_log_entries(4..).await.expect("read");
    assert_eq!(spec_at(&entries, 5), new);
}

/// A snapshot of format 3 is read with its specs (current and previous) upgraded and its
/// workload hash unchanged; a directory of a newer layout, or a log in a newer spec format,
/// is refused with a line that says so.
#[tokio::test]
async fn a_snapshot_of_format_3_is_read_and_newer_layouts_refused() {
    let meta = Meta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: MembershipRecord::default(),
        snapshot_id: "2-9-1".into(),
    };
    let payload = decode_payload(&meta, &unhex(SNAPSHOT_V3)).expect("format 3 is read");
    let record = &payload.state.services[&ServiceName::new("web").expect("valid")];
    assert_eq!(
        record.current,
        Service {
            version: 2,
            spec: upgraded(sample_spec())
        }
    );
    let mut previous = upgraded(sample_spec());
    previous.env.clear();
    assert_eq!(record.previous, Some(previous));
    assert_eq!(record.current.spec.workload_hash(), 0xd852_ad39_3787_4142);
    assert_eq!(payload.format, SNAPSHOT_FORMAT);

    let dir = tempfile::tempdir().expect("create a temp dir");
    let (log, sm) = open(dir.path(), StoreTuning::default()).expect("open");
    log.meta
        .insert(KEY_LAYOUT, &3u32.to_be_bytes())
        .expect("insert");
    log.flush().await.expect("flush");
    drop((log, sm));
    let error = open(dir.path(), StoreTuning::default()).expect_err("layout 3 is refused");
    assert!(
        error
            .to_string()
            .contains("has layout version 3; this build reads versions 1 to 2"),
        "{error}"
    );

    let dir = tempfile::tempdir().expect("create a temp dir");
    let (log, sm) = open(dir.path(), StoreTuning::default()).expect("open");
    let newer = postcard::to_allocvec(&vec![(0u64, 4u32), (7, 5)]).expect("encode");
    log.meta.insert(KEY_LOG_FORMATS, newer).expect("insert");
    log.flush().await.expect("flush");
    drop((log, sm));
    let error = open(dir.path(), StoreTuning::default()).expect_err("spec format 5 is refused");
    assert!(
        error.to_string().contains(
            "the raft log holds spec format 5 from index 7; this build reads spec formats 1 to 4"
        ),
        "{error}"
    );
}

/// Snapshot data of format 4 (last applied (2, 1, 9), default membership, revision 9) whose
/// state holds one node: `edge-7`, an agent in lisbon, gossip at 10.0.0.7:7946, certificate
/// serial `ab`, joined at 1_700_000_000_000.
const SNAPSHOT_V4: &str = "04010201090000000001070706656467652d3700066c6973626f6e00000001026162\
    0000010d31302e302e302e373a37393436000080d095ffbc31000000000000000000000009";

/// A snapshot from before the WireGuard overlay is read with the default range and no node in
/// the mesh; the node gets the first slot when it declares a key.
#[test]
fn a_snapshot_of_format_4_is_read_without_mesh_entries() {
    let meta = Meta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: MembershipRecord::default(),
        snapshot_id: "2-9-1".into(),
    };
    let payload = decode_payload(&meta, &unhex(SNAPSHOT_V4)).expect("format 4 is read");
    assert_eq!(payload.format, SNAPSHOT_FORMAT);
    let mut state = payload.state;
    let node = &state.nodes[&warren_api::NodeId(7)];
    assert_eq!(node.name, "edge-7");
    assert_eq!(node.addresses.gossip.as_deref(), Some("10.0.0.7:7946"));
    assert_eq!(state.overlay, warren_api::OverlayRange::default());
    assert!(state.mesh.is_empty());
    let command = Command {
        at_ms: 1_700_000_100_000,
        op: Op::SetMesh {
            node: warren_api::NodeId(7),
            public_key: [7; 32],
            next_public_key: None,
            endpoint: Some("10.0.0.7:51820".into()),
        },
    };
    state
        .apply(warren_api::Revision(10), &command)
        .result
        .expect("applied");
    assert_eq!(
        state.overlay_address(warren_api::NodeId(7)),
        Some("10.42.1.1".parse().unwrap())
    );
}

/// Snapshot data of format 5 (last applied (2, 1, 9), default membership, revision 9): the
/// format-4 state above (node `edge-7`, ready) with volume `data` (local, no limit, no labels).
const SNAPSHOT_V5: &str = "05010201090000000001070706656467652d3700066c6973626f6e00000001026162\
    0000010d31302e302e302e373a37393436000080d095ffbc310000000000010464617461046461746100000000\
    000000000a2a0000100009";

/// A snapshot from before volumes were pinned is read with no volume held by any node; the
/// first placement of a replica that mounts one records its node.
#[test]
fn a_snapshot_of_format_5_is_read_without_volume_nodes() {
    let meta = Meta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: MembershipRecord::default(),
        snapshot_id: "2-9-1".into(),
    };
    let payload = decode_payload(&meta, &unhex(SNAPSHOT_V5)).expect("format 5 is read");
    assert_eq!(payload.format, SNAPSHOT_FORMAT);
    let mut state = payload.state;
    assert!(state.volumes.contains_key("data"));
    assert!(state.volume_nodes.is_empty());
    let mut spec = sample_spec();
    spec.secrets.clear();
    spec.volumes = vec![warren_api::VolumeMount {
        volume: "data".into(),
        target: "data".into(),
        read_only: false,
    }];
    let command = Command {
        at_ms: 1_700_000_100_000,
        op: Op::PutService(spec),
    };
    state
        .apply(warren_api::Revision(10), &command)
        .result
        .expect("applied");
    assert_eq!(state.volume_nodes["data"], warren_api::NodeId(7));
}

/// The spec-format-2 sample: `sample_spec()` running as `www-data`, updated two at a time
/// with 5 s between batches.
fn sample_spec_v2() -> ServiceSpec {
    let mut spec = sample_spec();
    spec.user = Some("www-data".into());
    spec.update.parallelism = 2;
    spec.update.delay_ms = 5_000;
    spec
}

/// `put_service(5, sample_spec_v2())` as the build before health-gated rollouts (spec format 2)
/// encoded it.
const ENTRY_V2_AT_5: &str = "0201050180d095ffbc3109037765620003027368022d63076563686f20686901046461\
    74610002000001044d4f4445046564676501010468747470903f000000e807e0d4030000010264620264620000\
    0001087777772d646174610000028827904e01047465616d0161";

/// Snapshot data of format 6 (last applied (2, 1, 9), default membership): node `edge-7` and
/// service `web` at version 2 (`sample_spec_v2()` without secrets, one at a time, env
/// MODE=cloud; version 1 had MODE=edge), its rollout of version 2 under way (one replica moved).
/// The older build applied these three entries at revisions 1 to 3; the revision (the last
/// byte) was then set to 9 by hand so that the data matches its metadata.
const SNAPSHOT_V6: &str = "06010201090000000001070706656467652d3700066c6973626f6e0000000102616200\
    0000000080d095ffbc3100010377656202037765620003027368022d63076563686f2068690104646174610002\
    000001044d4f444505636c6f756401010468747470903f000000e807e0d40300000000000001087777772d6461\
    74610000018827904e01047465616d016101037765620003027368022d63076563686f20686901046461746100\
    02000001044d4f4445046564676501010468747470903f000000e807e0d40300000000000001087777772d6461\
    74610000018827904e01047465616d0161e8d795ffbc31d0df95ffbc310102d0df95ffbc310203776562000103\
    77656200010702a3b991c4d4a4a6ac0100037765620002037765620002070190a081c0c0ecfbe5f10100000000\
    00000000000a2a000010010701000000000009";

/// A spec-format-2 entry reads with the default gating and its workload hash unchanged.
#[tokio::test]
async fn an_entry_of_spec_format_2_is_read_with_default_gating() {
    let entry = decode_entry(5, &unhex(ENTRY_V2_AT_5), 2).expect("format 2 is read");
    let spec = spec_at(&[entry], 5);
    let mut expected = sample_spec_v2();
    expected.update = warren_api::UpdateConfig {
        parallelism: 2,
        delay_ms: 5_000,
        ..warren_api::UpdateConfig::default()
    };
    assert_eq!(spec, expected);
    assert_eq!(
        spec.workload_hash(),
        0x202c_6d8a_30d6_b2d5,
        "restarts nothing"
    );
}

/// A format-6 snapshot with a rollout under way reads it as active, watching no batch: the
/// leader's next verdict moves the next batch.
#[test]
fn a_snapshot_of_format_6_keeps_its_rollout_going() {
    let meta = Meta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: MembershipRecord::default(),
        snapshot_id: "2-9-1".into(),
    };
    let payload = decode_payload(&meta, &unhex(SNAPSHOT_V6)).expect("format 6 is read");
    assert_eq!(payload.format, SNAPSHOT_FORMAT);
    let record = &payload.state.services[&ServiceName::new("web").expect("valid")];
    assert_eq!(record.current.version, 2);
    assert_eq!(record.current.spec.update.monitor_ms, 5_000);
    let rollout = record.rollout.as_ref().expect("the rollout survives");
    assert!(rollout.is_active());
    assert_eq!(
        (rollout.version, rollout.last_step_at_ms),
        (2, 1_700_000_002_000)
    );
    assert!(rollout.batch.is_empty());
    assert_eq!(payload.state.replicas.len(), 2);
    assert_eq!(payload.state.volume_nodes.len(), 0);
}

/// `put_service(5, sample_spec_v2())` with 7 s of monitoring, as the build before metrics
/// endpoints (spec format 3) encoded it.
const ENTRY_V3_AT_5: &str = "0201050180d095ffbc3109037765620003027368022d63076563686f20686901046461\
    74610002000001044d4f4445046564676501010468747470903f000000e807e0d4030000010264620264620000\
    0001087777772d646174610000028827d8360000904e01047465616d0161";

/// `SNAPSHOT_V6` as read by the build before metrics endpoints and written again by it
/// (snapshot format 7): node `edge-7`, service `web` at version 2 with its rollout under way.
const SNAPSHOT_V7: &str = "07010201090000000001070706656467652d3700066c6973626f6e0000000102616200\
    0000000080d095ffbc3100010377656202037765620003027368022d63076563686f2068690104646174610002\
    000001044d4f444505636c6f756401010468747470903f000000e807e0d40300000000000001087777772d6461\
    7461000001882788270000904e01047465616d016101037765620003027368022d63076563686f206869010464\
    6174610002000001044d4f4445046564676501010468747470903f000000e807e0d40300000000000001087777\
    772d64617461000001882788270000904e01047465616d0161e8d795ffbc31d0df95ffbc310102d0df95ffbc31\
    000000000000020377656200010377656200010702a3b991c4d4a4a6ac0100037765620002037765620002070190\
    a081c0c0ecfbe5f1010000000000000000000a2a00001001070100000000000009";

/// A spec-format-3 entry reads with no metrics endpoint and its workload hash unchanged.
#[tokio::test]
async fn an_entry_of_spec_format_3_is_read_without_a_metrics_endpoint() {
    let entry = decode_entry(5, &unhex(ENTRY_V3_AT_5), 3).expect("format 3 is read");
    let spec = spec_at(&[entry], 5);
    let mut expected = sample_spec_v2();
    expected.update.monitor_ms = 7_000;
    assert_eq!(spec, expected);
    assert_eq!(spec.metrics, None);
    assert_eq!(
        spec.workload_hash(),
        0x202c_6d8a_30d6_b2d5,
        "restarts nothing"
    );
}

/// A format-7 snapshot reads with its services and rollout as they were, no metrics endpoint.
#[test]
fn a_snapshot_of_format_7_is_read_without_metrics_endpoints() {
    let meta = Meta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: MembershipRecord::default(),
        snapshot_id: "2-9-1".into(),
    };
    let payload = decode_payload(&meta, &unhex(SNAPSHOT_V7)).expect("format 7 is read");
    assert_eq!(payload.format, SNAPSHOT_FORMAT);
    let record = &payload.state.services[&ServiceName::new("web").expect("valid")];
    assert_eq!(record.current.version, 2);
    assert_eq!(record.current.spec.metrics, None);
    assert!(record.rollout.as_ref().is_some_and(|r| r.is_active()));
    assert_eq!(payload.state.replicas.len(), 2);
}
