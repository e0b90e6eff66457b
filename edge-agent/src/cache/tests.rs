//! The cache: views survive a reopen, corruption and foreign caches are named, and records of earlier formats are still read.

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
        mesh: None,
        scrape: Default::default(),
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
        err.contains("unknown format 6; this build reads 1 to 5"),
        "{err}"
    );
}

/// `view(42, 1)` with one peer (node 8, `edge-8` in porto, gossip at 10.0.0.8:7946), as the
/// build before cache format 3 stored it (header included).
const VIEW_FORMAT_2: &str = "02c542665a2a01010101010101010101010101010101010101010101010101010101010101010706656467652d\
    3100066c6973626f6e0000000000000000000000000000010e3132372e302e302e313a37313031010806656467\
    652d3805706f72746f0000010d31302e302e302e383a37393436";

/// A view cached before the WireGuard overlay is read with its peers as they were, no
/// WireGuard endpoint or next key, and no mesh settings.
#[tokio::test]
async fn a_view_of_format_2_is_read_without_mesh_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
    cache
        .claim(CacheIdentity {
            cluster_id: [1; 32],
            node_id: NodeId(7),
        })
        .await
        .unwrap();
    cache.put_raw(VIEW_KEY, &unhex(VIEW_FORMAT_2)).unwrap();
    let read = cache.view().unwrap().unwrap();
    let mut expected = view(42, 1);
    expected.peers.push(warren_api::wire::PeerInfo {
        node_id: NodeId(8),
        name: "edge-8".into(),
        site: "porto".into(),
        overlay_ip: None,
        wg_public_key: None,
        endpoints: vec!["10.0.0.8:7946".into()],
        wg_next_public_key: None,
        wg_endpoint: None,
    });
    assert_eq!(read, expected);
    assert_eq!(read.mesh, None);
}

/// `view(42, 1)` holding service `web` (version 2: `sh -c "echo hi"` in `data` as `www-data`,
/// two replicas updated two at a time 5 s apart, env MODE=edge, port http:8080, secret db,
/// label team=a), as the build before cache format 4 stored it (header included).
const VIEW_FORMAT_3: &str = "037f3367e22a01010101010101010101010101010101010101010101010101010101010101010706656467652d\
    3100066c6973626f6e00000000000000000000010377656202037765620003027368022d63076563686f206869\
    0104646174610002000001044d4f4445046564676501010468747470903f000000e807e0d40300000102646202\
    646200000001087777772d646174610000028827904e01047465616d0161000000010e3132372e302e302e313a\
    373130310000";

/// A view cached before health-gated rollouts is read with its spec's update config given the
/// default gating, and its workload hash unchanged.
#[tokio::test]
async fn a_view_of_format_3_is_read_with_default_gating() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
    cache
        .claim(CacheIdentity {
            cluster_id: [1; 32],
            node_id: NodeId(7),
        })
        .await
        .unwrap();
    cache.put_raw(VIEW_KEY, &unhex(VIEW_FORMAT_3)).unwrap();
    let read = cache.view().unwrap().unwrap();
    let web = &read.services[&warren_api::ServiceName::new("web").unwrap()];
    assert_eq!(web.version, 2);
    assert_eq!(web.spec.user.as_deref(), Some("www-data"));
    assert_eq!(
        web.spec.update,
        warren_api::UpdateConfig {
            parallelism: 2,
            delay_ms: 5_000,
            ..warren_api::UpdateConfig::default()
        }
    );
    assert_eq!(
        web.spec.workload_hash(),
        0x202c_6d8a_30d6_b2d5,
        "restarts nothing"
    );
    assert_eq!(read.replicas, view(42, 1).replicas);
}

/// `view(42, 1)` holding service `web` (version 2: `sh -c "echo hi"` in `data` as `www-data`,
/// two replicas updated two at a time 5 s apart with 7 s of monitoring, env MODE=edge, port
/// http:8080, secret db, label team=a), as the build before cache format 5 stored it (header
/// included).
const VIEW_FORMAT_4: &str = "0413b649972a01010101010101010101010101010101010101010101010101010101010101010706656467652d\
    3100066c6973626f6e00000000000000000000010377656202037765620003027368022d63076563686f206869\
    0104646174610002000001044d4f4445046564676501010468747470903f000000e807e0d40300000102646202\
    646200000001087777772d646174610000028827d8360000904e01047465616d0161000000010e3132372e302e\
    302e313a373130310000";

/// A view cached before metrics endpoints is read with no endpoint declared and no site
/// targets, its workload hash unchanged.
#[tokio::test]
async fn a_view_of_format_4_is_read_without_metrics_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
    cache
        .claim(CacheIdentity {
            cluster_id: [1; 32],
            node_id: NodeId(7),
        })
        .await
        .unwrap();
    cache.put_raw(VIEW_KEY, &unhex(VIEW_FORMAT_4)).unwrap();
    let read = cache.view().unwrap().unwrap();
    let web = &read.services[&warren_api::ServiceName::new("web").unwrap()];
    assert_eq!(web.version, 2);
    assert_eq!(web.spec.update.monitor_ms, 7_000);
    assert_eq!(web.spec.metrics, None);
    assert_eq!(read.scrape, warren_api::scrape::ScrapeTargets::default());
    assert_eq!(
        web.spec.workload_hash(),
        0x202c_6d8a_30d6_b2d5,
        "restarts nothing"
    );
    assert_eq!(read.replicas, view(42, 1).replicas);
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

/// A workload record written in cache format 2 or 3 (today's layout, with working dir and
/// credentials) reads as it was written, not through the format-1 layout: an upgraded agent
/// adopts what its predecessor started.
#[test]
fn a_workload_record_of_formats_2_and_3_is_read_as_written() {
    use crate::runtime::{Instance, WorkloadRecord};
    use std::path::PathBuf;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), CacheTuning::default()).unwrap();
    let record = WorkloadRecord {
        replica: "web.0".parse().unwrap(),
        workload_hash: 0x202c_6d8a_30d6_b2d5,
        boot_id: "boot".into(),
        started_at_ms: 1_700_000_000_000,
        stdout_log: PathBuf::from("/var/lib/warren/workloads/web.0/stdout.log"),
        stderr_log: PathBuf::from("/var/lib/warren/workloads/web.0/stderr.log"),
        instance: Instance::Process {
            pid: 4242,
            start_time_ticks: 123_456,
        },
        working_dir: PathBuf::from("/srv/web"),
        credentials: None,
    };
    let payload = postcard::to_allocvec(&record).unwrap();
    for format in [2u8, 3] {
        let mut bytes = vec![format];
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        cache.put_raw("workload/web.0", &bytes).unwrap();
        let read: WorkloadRecord = cache.get("workload/web.0").unwrap().unwrap();
        assert_eq!(read, record, "format {format}");
    }
}
