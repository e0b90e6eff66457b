//! Local volumes under the process runtime, with real processes: the data a workload writes
//! through `WARREN_VOLUME_<TARGET>` is there again after it is killed, cleaned up and started
//! anew, and a read-only mount refuses writes (that one needs root, for the mount namespace;
//! through `prerequisites::require` it prints why it skips otherwise, and fails under
//! `CI=true`). A volume on the agent's allow-list of host directories is that directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod prerequisites;
use warren_api::ids::{ReplicaId, ServiceName};
use warren_api::service::VolumeMount;
use warren_edge_agent::runtime::{
    ProcessRuntime, ProcessRuntimeOptions, Runtime, RuntimeObservation, WorkloadHandle,
    WorkloadRequest,
};

const TIMEOUT: Duration = Duration::from_secs(20);

fn request(service: &str, script: &str, volume: &str, read_only: bool) -> WorkloadRequest {
    WorkloadRequest {
        replica: ReplicaId::replicated(ServiceName::new(service).expect("service name"), 1),
        image: None,
        workload_hash: 0x5eed,
        argv: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        env: BTreeMap::new(),
        working_dir: None,
        user: None,
        group: None,
        cap_add: Vec::new(),
        secrets: Vec::new(),
        volumes: vec![VolumeMount {
            volume: volume.to_owned(),
            target: "state".to_owned(),
            read_only,
        }],
        memory_bytes: None,
        cpu_millis: None,
        registry_auth: None,
    }
}

fn options(dir: &Path) -> ProcessRuntimeOptions {
    ProcessRuntimeOptions {
        secrets_tmpfs: false,
        cgroup_parent: format!("warren-test-{}", std::process::id()),
        volumes_dir: Some(dir.join("volumes")),
        ..ProcessRuntimeOptions::default()
    }
}

fn runtime(dir: &Path) -> Arc<dyn Runtime> {
    Arc::new(ProcessRuntime::new(dir.join("workloads"), options(dir)).expect("runtime"))
}

async fn wait_exited(runtime: &dyn Runtime, handle: &WorkloadHandle) -> RuntimeObservation {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let observed = runtime.observe(handle).await.expect("observe");
        if matches!(observed, RuntimeObservation::Exited { .. }) {
            return observed;
        }
        assert!(Instant::now() < deadline, "still {observed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counter kept in the volume: each run appends a line and prints how many there are. The
/// second run is killed mid-sleep, its replica cleaned up (as a removal does), and the third
/// still finds both earlier lines.
#[tokio::test]
async fn data_outlives_kill_cleanup_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(dir.path());
    let script = r#"echo run >> "$WARREN_VOLUME_STATE/runs"; wc -l < "$WARREN_VOLUME_STATE/runs"; exec sleep "${NAP:-0}""#;

    let first = runtime
        .start(&request("counter", script, "counts", false))
        .await
        .expect("first start");
    wait_exited(runtime.as_ref(), &first).await;

    let mut killed = request("counter", script, "counts", false);
    killed.env.insert("NAP".to_owned(), "1000".to_owned());
    let second = runtime.start(&killed).await.expect("second start");
    // Its count printed means its line is in the volume too.
    let printed = second.record().stdout_log.clone();
    let deadline = Instant::now() + TIMEOUT;
    while std::fs::read_to_string(&printed)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the second run never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime
        .stop(&second, Duration::from_millis(10))
        .await
        .expect("stop");
    runtime
        .cleanup(&second.record().replica)
        .await
        .expect("cleanup");

    let third = runtime
        .start(&request("counter", script, "counts", false))
        .await
        .expect("third start");
    wait_exited(runtime.as_ref(), &third).await;
    // The replica's log is kept across runs too: one count per run.
    let printed = std::fs::read_to_string(&third.record().stdout_log).expect("stdout");
    assert_eq!(printed, "1\n2\n3\n", "the third run counts every run");
}

/// A read-only mount: the workload reads what is there and cannot write (as root, the mount
/// is read-only in its own namespace, so even root inside cannot).
#[tokio::test]
async fn a_read_only_mount_refuses_writes() {
    if !prerequisites::require("a_read_only_mount_refuses_writes", [prerequisites::root()]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(dir.path());
    let volume = dir.path().join("volumes/seed");
    std::fs::create_dir_all(&volume).expect("volume dir");
    std::fs::write(volume.join("given"), "hello\n").expect("seed");
    let script = r#"cat "$WARREN_VOLUME_STATE/given"; if echo x > "$WARREN_VOLUME_STATE/new"; then echo wrote; else echo refused; fi"#;
    let handle = runtime
        .start(&request("reader", script, "seed", true))
        .await
        .expect("start");
    wait_exited(runtime.as_ref(), &handle).await;
    let printed = std::fs::read_to_string(&handle.record().stdout_log).expect("stdout");
    assert_eq!(printed, "hello\nrefused\n");
    assert!(!volume.join("new").exists());
    // The host's view of the directory stays writable: only the workload's is read-only.
    std::fs::write(volume.join("host"), "ok").expect("host writes");
}

/// A volume on the agent's allow-list of host directories: the workload's variable names that
/// directory, a working dir of `$WARREN_VOLUME_STATE` starts it there, and it writes there;
/// nothing is made under the volumes root.
#[tokio::test]
async fn a_host_volume_is_the_host_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let media = dir.path().join("srv-media");
    std::fs::create_dir(&media).expect("host dir");
    // The agent keeps a host directory's owner and mode: the operator lets the workload's
    // user (one of its own, when the test is root) write there.
    std::fs::set_permissions(&media, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut options = options(dir.path());
    options
        .host_volumes
        .insert("media".to_owned(), media.clone());
    let runtime = ProcessRuntime::new(dir.path().join("workloads"), options).expect("runtime");
    // Started in the volume, asked for by its variable: a relative write lands there.
    let script = r#"echo "$WARREN_VOLUME_STATE"; echo hi > greeting"#;
    let mut asked = request("media", script, "media", false);
    asked.working_dir = Some("$WARREN_VOLUME_STATE".into());
    let handle = runtime.start(&asked).await.expect("start");
    wait_exited(&runtime, &handle).await;
    let printed = std::fs::read_to_string(&handle.record().stdout_log).expect("stdout");
    let errors = std::fs::read_to_string(&handle.record().stderr_log).unwrap_or_default();
    assert_eq!(printed.trim(), media.display().to_string(), "{errors}");
    assert_eq!(errors, "");
    assert_eq!(
        std::fs::read_to_string(media.join("greeting")).expect("written"),
        "hi\n"
    );
    assert!(!dir.path().join("volumes").exists());
}
