//! Local volumes end to end, with a real control node, a real agent and a real `sh` workload:
//! the workload writes through `$WARREN_VOLUME_<TARGET>` into `<data dir>-volumes/<volume>`,
//! the volume is pinned to the agent's node, `volume rm` is refused (409) while a service
//! mounts it, a killed workload comes back to its data, the binding survives a control
//! restart (from a snapshot: one every few entries), and once the service is gone the volume
//! can be removed (its directory stays on the node).

use std::path::Path;
use std::time::Duration;

use hyper::{Method, StatusCode};
use tracing::info;
use warren_api::rest::{ReplicaInfo, VolumeInfo};
use warren_api::{
    ProcessSpec, ServiceMode, ServiceName, ServiceSpec, TaskState, Volume, VolumeDriver,
    VolumeMount, Workload,
};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode};
use warren_tests::{
    agent_status, alive, api_call, api_get, join_agent, kill9, propose, spawn_agent,
    start_control_with, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// Service `notes`: appends a line to `runs` in its volume each time it starts (through the
/// variable), then sleeps in it (its working dir, asked for by the variable's name).
fn notes_service() -> ServiceSpec {
    let script = r#"echo run >> "$WARREN_VOLUME_NOTES/runs"; pwd > where; exec sleep 1000"#;
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        working_dir: Some("$WARREN_VOLUME_NOTES".into()),
    });
    let mut spec = ServiceSpec::new(ServiceName::new("notes").expect("valid name"), workload);
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    spec.restart.backoff_initial_ms = 100;
    spec.volumes = vec![VolumeMount {
        volume: "data".into(),
        target: "notes".into(),
        read_only: false,
    }];
    spec
}

/// The pid of the running replica of `notes`, from the agent's status.
fn running_pid(dir: &Path) -> Option<u32> {
    agent_status(dir)?
        .replicas
        .into_iter()
        .find(|r| r.replica.service.as_str() == "notes" && r.state == TaskState::Running)
        .and_then(|r| r.pid)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// Volume + service → the workload writes in the node's volume directory; `volume ls` and
/// `service ps` show the node that holds it; `volume rm` is refused while the service mounts
/// it; kill -9 → the restarted workload finds its first line; control restarts → it still
/// knows edge-1 holds the volume; service rm → `volume rm` succeeds and the data stays on
/// disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_keeps_its_volume_and_the_volume_outlives_it() {
    warren_tests::init();
    let dir = tempfile::tempdir().expect("tempdir");
    // Snapshots every few entries, so that the restart below reads the binding from one.
    let config = || ControlConfig {
        snapshot_every: 3,
        ..ControlConfig::default()
    };
    let (control, fingerprint) = start_control_with(dir.path(), config()).await;
    // Workloads run as users of their own when the test is root: they pass through here.
    warren_tests::passable(dir.path());
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let (cancel, task) = spawn_agent(&agent_dir);

    info!("--- a volume and a service that mounts it");
    let volume = Volume {
        name: "data".into(),
        driver: VolumeDriver::Local,
        size_limit_bytes: None,
        labels: Default::default(),
    };
    propose(&control, Op::PutVolume(volume)).await;
    propose(&control, Op::PutService(notes_service())).await;
    let runs = warren_edge_agent::runtime::volumes::default_volumes_dir(&agent_dir)
        .join("data")
        .join("runs");
    wait_until("the workload to write in its volume", LONG, || {
        (lines(&runs) == 1).then_some(())
    })
    .await;
    let volume_dir = runs.parent().expect("in the volume");
    let started_in = wait_until("the workload to say where it runs", LONG, || {
        std::fs::read_to_string(volume_dir.join("where"))
            .ok()
            .filter(|text| text.ends_with('\n'))
    })
    .await;
    assert_eq!(
        Path::new(started_in.trim()),
        volume_dir.canonicalize().expect("volume dir")
    );

    info!("--- the volume is held by edge-1, and the replica pinned there");
    let usage: Vec<VolumeInfo> = api_get(&control, "/volume-usage").await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].node_name.as_deref(), Some("edge-1"));
    assert_eq!(usage[0].services, ["notes"]);
    assert_eq!(usage[0].replicas[0].replica, "notes.1");
    let replicas: Vec<ReplicaInfo> = api_get(&control, "/services/notes/replicas").await;
    assert_eq!(replicas[0].pinned_by.as_deref(), Some("data"));

    info!("--- volume rm is refused while the service mounts it");
    let (status, body) = api_call(&control, Method::DELETE, "/volumes/data").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("used by service notes"), "{body}");

    info!("--- kill -9: the restarted workload finds its data");
    let first = wait_until("the replica running", LONG, || running_pid(&agent_dir)).await;
    kill9(first);
    wait_until("the second run to add its line", LONG, || {
        (lines(&runs) == 2).then_some(())
    })
    .await;
    let second = wait_until("the replica running again", LONG, || {
        running_pid(&agent_dir).filter(|pid| *pid != first)
    })
    .await;

    info!("--- control restarts: edge-1 still holds the volume");
    let control_dir = control.data_dir().to_owned();
    control.shutdown().await;
    let control = ControlNode::run(&control_dir, config())
        .await
        .expect("control restarts");
    let usage: Vec<VolumeInfo> = api_get(&control, "/volume-usage").await;
    assert_eq!(usage[0].node_name.as_deref(), Some("edge-1"));

    info!("--- service rm, then volume rm: allowed, and the data stays on disk");
    propose(
        &control,
        Op::RemoveService(ServiceName::new("notes").expect("valid")),
    )
    .await;
    wait_until("the workload to stop", LONG, || {
        (!alive(second)).then_some(())
    })
    .await;
    let (status, body) = api_call(&control, Method::DELETE, "/volumes/data").await;
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(lines(&runs), 2);

    cancel.cancel();
    task.await.expect("agent task").expect("agent run");
    control.shutdown().await;
}
