//! The native process runtime against real processes: start, logs, stop (SIGTERM, SIGKILL),
//! exit codes, adoption after the agent goes away, secrets, log rotation and cgroup limits.
//!
//! The cgroup test needs root and writable cgroup v1, the resolv.conf and credentials tests root;
//! through `prerequisites::require` they print why they skip otherwise (and fail under
//! `CI=true`). Every test kills what it started, even when it fails.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

mod prerequisites;
use warren_api::ids::{ReplicaId, ServiceName};
use warren_edge_agent::runtime::{
    Instance, ProcessRuntime, ProcessRuntimeOptions, Runtime, RuntimeError, RuntimeObservation,
    StopOutcome, WorkloadHandle, WorkloadRecord, WorkloadRequest,
};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variable that turns [`agent_helper_process`] from a no-op into a stand-in
/// agent: it names the file the helper writes its workload record to.
const HELPER_RECORD_ENV: &str = "WARREN_RUNTIME_TEST_HELPER_RECORD";
/// The runtime root the helper uses.
const HELPER_ROOT_ENV: &str = "WARREN_RUNTIME_TEST_HELPER_ROOT";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::DEBUG)
        .try_init();
}

fn replica(service: &str, slot: u32) -> ReplicaId {
    ReplicaId::replicated(ServiceName::new(service).unwrap(), slot)
}

fn request(replica: ReplicaId, argv: &[&str]) -> WorkloadRequest {
    WorkloadRequest {
        replica,
        image: None,
        workload_hash: 0x5eed,
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        working_dir: None,
        user: None,
        group: None,
        cap_add: Vec::new(),
        secrets: Vec::new(),
        volumes: Vec::new(),
        memory_bytes: None,
        cpu_millis: None,
        registry_auth: None,
    }
}

fn options() -> ProcessRuntimeOptions {
    ProcessRuntimeOptions {
        secrets_tmpfs: false,
        cgroup_parent: format!("warren-test-{}", std::process::id()),
        ..ProcessRuntimeOptions::default()
    }
}

fn runtime(root: &Path) -> Arc<dyn Runtime> {
    Arc::new(ProcessRuntime::new(root.to_owned(), options()).unwrap())
}

fn pid_of(handle: &WorkloadHandle) -> u32 {
    handle.record().pid().unwrap()
}

/// Kills the process groups it holds when dropped, so that a failing test leaves no
/// `sleep 1000` behind.
#[derive(Default)]
struct KillOnDrop(Vec<u32>);

impl KillOnDrop {
    fn add(&mut self, handle: &WorkloadHandle) {
        self.0.push(pid_of(handle));
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let pid = Pid::from_raw(i32::try_from(*pid).unwrap()).unwrap();
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }
}

/// Whether `pid` is a live (non-zombie) process.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next();
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_observed(
    runtime: &dyn Runtime,
    handle: &WorkloadHandle,
    expected: RuntimeObservation,
) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let observed = runtime.observe(handle).await.unwrap();
        if observed == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {expected:?}, still {observed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A workload prints to both streams and sleeps: it runs, its output lands in its log
/// files, and SIGTERM stops it within the grace period.
#[tokio::test]
async fn logs_output_and_stops_with_sigterm() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut guard = KillOnDrop::default();
    let argv = ["sh", "-c", "echo hi; echo err >&2; exec sleep 1000"];
    let handle = runtime
        .start(&request(replica("web", 0), &argv))
        .await
        .unwrap();
    guard.add(&handle);

    assert_eq!(
        runtime.observe(&handle).await.unwrap(),
        RuntimeObservation::Running
    );
    let record = handle.record().clone();
    assert_eq!(record.stdout_log, dir.path().join("web.0/stdout.log"));
    wait_until("both lines are logged", || {
        read(&record.stdout_log) == "hi\n" && read(&record.stderr_log) == "err\n"
    })
    .await;

    let outcome = runtime
        .stop(&handle, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Terminated);
    assert_eq!(
        runtime.observe(&handle).await.unwrap(),
        RuntimeObservation::Exited {
            code: None,
            signal: Some(15)
        }
    );
    assert_eq!(
        runtime.stop(&handle, Duration::from_secs(1)).await.unwrap(),
        StopOutcome::AlreadyExited
    );
}

/// A workload that ignores SIGTERM is killed with SIGKILL once the grace period is over,
/// and not before.
#[tokio::test]
async fn ignoring_sigterm_gets_sigkill_after_grace() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut guard = KillOnDrop::default();
    let argv = ["sh", "-c", "trap '' TERM; echo ready; sleep 1000"];
    let handle = runtime
        .start(&request(replica("stubborn", 0), &argv))
        .await
        .unwrap();
    guard.add(&handle);
    // The trap must be in place before the signal arrives.
    wait_until("the trap is set", || {
        read(&handle.record().stdout_log) == "ready\n"
    })
    .await;

    let grace = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = runtime.stop(&handle, grace).await.unwrap();
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(started.elapsed() >= grace, "killed before the grace period");
    assert_eq!(
        runtime.observe(&handle).await.unwrap(),
        RuntimeObservation::Exited {
            code: None,
            signal: Some(9)
        }
    );
}

/// The whole process group is stopped: a background child that ignores SIGTERM keeps the
/// workload "running" after its leader exits, so it is killed too.
#[tokio::test]
async fn stop_covers_the_whole_process_group() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut guard = KillOnDrop::default();
    let argv = [
        "sh",
        "-c",
        "(trap '' TERM; exec sleep 1000) & echo ready; wait",
    ];
    let handle = runtime
        .start(&request(replica("tree", 0), &argv))
        .await
        .unwrap();
    guard.add(&handle);
    wait_until("the workload is ready", || {
        read(&handle.record().stdout_log) == "ready\n"
    })
    .await;
    // Let the background job set its trap.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let outcome = runtime
        .stop(&handle, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Killed);
    let pgid = pid_of(&handle);
    let pid = Pid::from_raw(i32::try_from(pgid).unwrap()).unwrap();
    // Only zombies (if any) may be left in the group.
    wait_until("the group is gone", || {
        rustix::process::test_kill_process_group(pid).is_err()
    })
    .await;
}

/// Exit codes of workloads that end on their own are reported.
#[tokio::test]
async fn exit_code_is_observed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let handle = runtime
        .start(&request(replica("batch", 0), &["sh", "-c", "exit 3"]))
        .await
        .unwrap();
    wait_observed(
        runtime.as_ref(),
        &handle,
        RuntimeObservation::Exited {
            code: Some(3),
            signal: None,
        },
    )
    .await;
    assert_eq!(
        runtime.stop(&handle, Duration::from_secs(1)).await.unwrap(),
        StopOutcome::AlreadyExited
    );
    // An exited replica may be started again.
    let again = runtime
        .start(&request(replica("batch", 0), &["sh", "-c", "exit 0"]))
        .await
        .unwrap();
    wait_observed(
        runtime.as_ref(),
        &again,
        RuntimeObservation::Exited {
            code: Some(0),
            signal: None,
        },
    )
    .await;
}

/// A running replica is not started twice.
#[tokio::test]
async fn second_start_of_running_replica_is_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut guard = KillOnDrop::default();
    let request = request(replica("once", 0), &["sleep", "1000"]);
    let handle = runtime.start(&request).await.unwrap();
    guard.add(&handle);
    let err = runtime.start(&request).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::AlreadyRunning { pid, .. } if pid == pid_of(&handle)),
        "{err}"
    );
    assert!(!err.is_retryable());
    runtime.stop(&handle, Duration::from_secs(5)).await.unwrap();
}

/// The agent restarts: runtime A starts a workload and is dropped; runtime B adopts the
/// recorded workload (same pid), observes it and stops it. The exit status of a process
/// that is not B's child is unknowable.
#[tokio::test]
async fn adopts_workload_after_runtime_is_dropped() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut guard = KillOnDrop::default();
    let record = {
        let runtime_a = runtime(dir.path());
        let handle = runtime_a
            .start(&request(replica("web", 1), &["sleep", "1000"]))
            .await
            .unwrap();
        guard.add(&handle);
        handle.record().clone()
    };
    // Round-trip through JSON, as the agent's cache would.
    let record: WorkloadRecord =
        serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
    let pid = record.pid().unwrap();
    assert!(
        process_alive(pid),
        "dropping the runtime killed the workload"
    );

    let runtime_b = runtime(dir.path());
    let handle = runtime_b.adopt(&record).await.expect("adopted");
    assert_eq!(pid_of(&handle), pid);
    assert_eq!(handle.record(), &record);
    assert_eq!(
        runtime_b.observe(&handle).await.unwrap(),
        RuntimeObservation::Running
    );
    assert!(matches!(
        runtime_b
            .start(&request(replica("web", 1), &["true"]))
            .await,
        Err(RuntimeError::AlreadyRunning { .. })
    ));

    let outcome = runtime_b
        .stop(&handle, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Terminated);
    assert_eq!(
        runtime_b.observe(&handle).await.unwrap(),
        RuntimeObservation::Exited {
            code: None,
            signal: None
        }
    );
    assert!(runtime_b.adopt(&record).await.is_none());
}

/// Records that do not describe the running process are not adopted: a different start
/// time (the pid was reused), another boot, a pid that does not exist.
#[tokio::test]
async fn refuses_to_adopt_mismatched_records() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime_a = runtime(dir.path());
    let mut guard = KillOnDrop::default();
    let handle = runtime_a
        .start(&request(replica("web", 2), &["sleep", "1000"]))
        .await
        .unwrap();
    guard.add(&handle);
    let record = handle.record().clone();
    let runtime_b = runtime(dir.path());

    let mut reused_pid = record.clone();
    let Instance::Process {
        pid,
        start_time_ticks,
    } = record.instance
    else {
        panic!("the process runtime records processes");
    };
    reused_pid.instance = Instance::Process {
        pid,
        start_time_ticks: start_time_ticks + 1,
    };
    assert!(runtime_b.adopt(&reused_pid).await.is_none());

    let mut other_boot = record.clone();
    other_boot.boot_id = "00000000-0000-0000-0000-000000000000".to_owned();
    assert!(runtime_b.adopt(&other_boot).await.is_none());

    let mut no_process = record.clone();
    no_process.instance = Instance::Process {
        pid: u32::try_from(i32::MAX).unwrap(),
        start_time_ticks,
    };
    assert!(runtime_b.adopt(&no_process).await.is_none());

    // The genuine record is adopted; the process itself was never touched.
    assert!(runtime_b.adopt(&record).await.is_some());
    assert!(process_alive(pid));
    runtime_a
        .stop(&handle, Duration::from_secs(5))
        .await
        .unwrap();
}

/// The workload leads its own process group (so signals to the agent's group miss it), and
/// dropping the runtime leaves it running.
#[tokio::test]
async fn workload_has_own_process_group_and_outlives_runtime() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut guard = KillOnDrop::default();
    let handle = {
        let runtime = runtime(dir.path());
        let handle = runtime
            .start(&request(replica("own", 0), &["sleep", "1000"]))
            .await
            .unwrap();
        guard.add(&handle);
        handle
    };
    let pid = Pid::from_raw(i32::try_from(pid_of(&handle)).unwrap()).unwrap();
    let workload_pgid = rustix::process::getpgid(Some(pid)).unwrap();
    assert_eq!(workload_pgid, pid);
    assert_ne!(workload_pgid, rustix::process::getpgrp());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(process_alive(pid_of(&handle)));
}

/// Not a test on its own: [`workload_survives_agent_sigkill`] runs the test binary again
/// with only this test selected and [`HELPER_RECORD_ENV`] set, making it a stand-in agent
/// that starts a workload, writes its record and waits to be killed. Without the variable
/// it does nothing.
#[test]
fn agent_helper_process() {
    let (Ok(record_path), Ok(root)) = (
        std::env::var(HELPER_RECORD_ENV),
        std::env::var(HELPER_ROOT_ENV),
    ) else {
        return;
    };
    let tokio_runtime = tokio::runtime::Runtime::new().unwrap();
    tokio_runtime.block_on(async {
        let runtime = runtime(Path::new(&root));
        let handle = runtime
            .start(&request(replica("survivor", 0), &["sleep", "1000"]))
            .await
            .unwrap();
        let temporary = PathBuf::from(format!("{record_path}.tmp"));
        std::fs::write(&temporary, serde_json::to_vec(handle.record()).unwrap()).unwrap();
        std::fs::rename(&temporary, &record_path).unwrap();
        // Wait to be SIGKILLed, like an agent that crashes.
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

/// The agent process is SIGKILLed while its workload runs: the workload keeps running, and
/// a new runtime adopts and stops it.
#[tokio::test]
async fn workload_survives_agent_sigkill() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workloads");
    let record_path = dir.path().join("record.json");
    let mut agent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "agent_helper_process", "--nocapture"])
        .env(HELPER_RECORD_ENV, &record_path)
        .env(HELPER_ROOT_ENV, &root)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the helper agent wrote its record", || record_path.exists()).await;
    let record: WorkloadRecord =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let mut guard = KillOnDrop::default();
    guard.0.push(record.pid().unwrap());

    agent.kill().unwrap();
    let status = agent.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        process_alive(record.pid().unwrap()),
        "the workload died with its agent"
    );

    let runtime = runtime(&root);
    let handle = runtime.adopt(&record).await.expect("adopted");
    assert_eq!(
        runtime.observe(&handle).await.unwrap(),
        RuntimeObservation::Running
    );
    assert_eq!(
        runtime
            .stop(&handle, Duration::from_secs(10))
            .await
            .unwrap(),
        StopOutcome::Terminated
    );
}

/// Unusable requests fail with an error that says what is wrong, naming the command.
#[tokio::test]
async fn start_errors_name_the_problem() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());

    let err = runtime
        .start(&request(replica("a", 0), &["warren-no-such-command", "x"]))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "command not found: warren-no-such-command");

    let err = runtime
        .start(&request(replica("a", 0), &["/nonexistent/bin/tool"]))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "command not found: /nonexistent/bin/tool");

    let not_executable = dir.path().join("script.sh");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_executable = not_executable.to_str().unwrap();
    let err = runtime
        .start(&request(replica("a", 0), &[not_executable]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("permission denied: {not_executable}")
    );

    let mut missing_dir = request(replica("a", 0), &["true"]);
    missing_dir.working_dir = Some(PathBuf::from("/nonexistent/dir"));
    let err = runtime.start(&missing_dir).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::WorkingDirNotFound { .. }),
        "{err}"
    );

    let err = runtime
        .start(&request(replica("a", 0), &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty command"), "{err}");

    let mut bad_secret = request(replica("a", 0), &["true"]);
    bad_secret.secrets = vec![("../escape".to_owned(), b"x".to_vec())];
    let err = runtime.start(&bad_secret).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidRequest { .. }), "{err}");
}

/// The environment is exactly the spec's (plus a default PATH); the working directory
/// defaults to the replica's own `work` directory, a relative one is inside it, and one that
/// leaves it is refused.
#[tokio::test]
async fn environment_and_working_directory() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut request = request(
        replica("env", 0),
        &["sh", "-c", "echo \"$GREETING $HOME\"; pwd; mkdir data"],
    );
    request
        .env
        .insert("GREETING".to_owned(), "hello".to_owned());
    let handle = runtime.start(&request).await.unwrap();
    wait_observed(
        runtime.as_ref(),
        &handle,
        RuntimeObservation::Exited {
            code: Some(0),
            signal: None,
        },
    )
    .await;
    let work = std::fs::canonicalize(dir.path().join("env.0").join("work")).unwrap();
    assert_eq!(handle.record().working_dir, work);
    assert_eq!(
        read(&handle.record().stdout_log),
        format!("hello \n{}\n", work.display())
    );

    request.working_dir = Some(PathBuf::from("data"));
    request.argv = vec!["pwd".to_owned()];
    let handle = runtime.start(&request).await.unwrap();
    wait_observed(
        runtime.as_ref(),
        &handle,
        RuntimeObservation::Exited {
            code: Some(0),
            signal: None,
        },
    )
    .await;
    assert!(read(&handle.record().stdout_log).ends_with("/env.0/work/data\n"));

    for escape in ["../..", "/"] {
        request.working_dir = Some(PathBuf::from(escape));
        let err = runtime.start(&request).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidRequest { .. }),
            "{escape}: {err}"
        );
    }
}

/// Secrets are files (0400) in a private directory (0700) named by `WARREN_SECRETS_DIR`,
/// on tmpfs when the runtime may mount one, and `cleanup` removes them once the workload
/// is stopped.
#[tokio::test]
async fn secrets_are_private_files_removed_by_cleanup() {
    init_tracing();
    for secrets_tmpfs in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(
            dir.path().to_owned(),
            ProcessRuntimeOptions {
                secrets_tmpfs,
                ..options()
            },
        )
        .unwrap();
        let mut guard = KillOnDrop::default();
        let replica = replica("vault", 0);
        let mut request = request(
            replica.clone(),
            &[
                "sh",
                "-c",
                "cat \"$WARREN_SECRETS_DIR/token\"; exec sleep 1000",
            ],
        );
        request.secrets = vec![
            ("token".to_owned(), b"s3cret".to_vec()),
            ("ca.pem".to_owned(), b"-----BEGIN".to_vec()),
        ];
        let handle = runtime.start(&request).await.unwrap();
        guard.add(&handle);
        wait_until("the workload read its secret", || {
            read(&handle.record().stdout_log) == "s3cret"
        })
        .await;

        let secrets_dir = runtime.secrets_dir(&replica);
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&secrets_dir), 0o700);
        assert_eq!(mode(&secrets_dir.join("token")), 0o400);
        assert_eq!(mode(&secrets_dir.join("ca.pem")), 0o400);
        let on_tmpfs = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|line| line.contains(secrets_dir.to_str().unwrap()) && line.contains("tmpfs"));
        println!("secrets_tmpfs={secrets_tmpfs}: secrets on tmpfs: {on_tmpfs}");
        if !secrets_tmpfs {
            assert!(!on_tmpfs);
        }

        let err = runtime.cleanup(&replica).await.unwrap_err();
        assert!(matches!(err, RuntimeError::StillRunning { .. }), "{err}");
        runtime.stop(&handle, Duration::from_secs(5)).await.unwrap();
        runtime.cleanup(&replica).await.unwrap();
        assert!(!secrets_dir.exists());
        // The logs stay for inspection.
        assert!(handle.record().stdout_log.exists());
        runtime.cleanup(&replica).await.unwrap();
    }
}

/// A chatty workload's logs are rotated by size; at most `log_files_max` files per stream
/// exist at any time, and the workload keeps writing to the live file.
#[tokio::test]
async fn log_rotation_keeps_at_most_n_files() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(
        dir.path().to_owned(),
        ProcessRuntimeOptions {
            log_max_bytes: 4096,
            log_files_max: 3,
            ..options()
        },
    )
    .unwrap();
    let mut guard = KillOnDrop::default();
    let line = "x".repeat(1000);
    let script = format!("while true; do echo {line}; sleep 0.01; done");
    let handle = runtime
        .start(&request(replica("chatty", 0), &["sh", "-c", &script]))
        .await
        .unwrap();
    guard.add(&handle);
    let replica_dir = dir.path().join("chatty.0");
    let stdout_files = || {
        std::fs::read_dir(&replica_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with("stdout.log")
            })
            .count()
    };

    let mut n_rotations_seen = 0;
    let deadline = Instant::now() + TIMEOUT;
    while !replica_dir.join("stdout.log.2").exists() || n_rotations_seen < 5 {
        assert!(Instant::now() < deadline, "logs never rotated");
        tokio::time::sleep(Duration::from_millis(60)).await;
        runtime.rotate_logs().await.unwrap();
        n_rotations_seen += 1;
        assert!(stdout_files() <= 3, "more than 3 stdout log files");
    }
    assert!(!replica_dir.join("stdout.log.3").exists());
    // The workload writes on after a rotation.
    wait_until("the live log grows again", || {
        std::fs::metadata(replica_dir.join("stdout.log"))
            .unwrap()
            .len()
            > 0
    })
    .await;
    runtime.stop(&handle, Duration::from_secs(5)).await.unwrap();
}

/// Memory and CPU limits through cgroup v1: the groups get the limits and the workload's
/// pid, a workload over its memory limit is OOM-killed, and stopping removes the groups.
/// Needs root and writable cgroup v1 memory and cpu controllers.
#[tokio::test]
async fn cgroup_v1_limits_when_root() {
    init_tracing();
    let options = options();
    let memory_root = options.cgroup_root.join("memory");
    let cpu_root = options.cgroup_root.join("cpu");
    const TEST: &str = "cgroup_v1_limits_when_root";
    let parents = [
        memory_root.join(&options.cgroup_parent),
        cpu_root.join(&options.cgroup_parent),
    ];
    let controllers = || {
        (!memory_root.is_dir() || !cpu_root.is_dir()).then(|| {
            format!(
                "no cgroup v1 memory and cpu controllers under {}",
                options.cgroup_root.display()
            )
        })
    };
    let writable = || {
        parents.iter().find_map(|parent| {
            std::fs::create_dir_all(parent)
                .err()
                .map(|e| format!("cannot create {}: {e}", parent.display()))
        })
    };
    // In order, each only when the one before holds: creating groups needs root.
    let missing = prerequisites::root().or_else(controllers).or_else(writable);
    if !prerequisites::require(TEST, [missing]) {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(dir.path().to_owned(), options.clone()).unwrap();
    let mut guard = KillOnDrop::default();
    let replica = replica("limited", 0);
    let mut limited = request(replica.clone(), &["sleep", "1000"]);
    limited.memory_bytes = Some(32 * 1024 * 1024);
    limited.cpu_millis = Some(500);
    let handle = runtime.start(&limited).await.unwrap();
    guard.add(&handle);
    let pid = pid_of(&handle).to_string();
    let memory_group = parents[0].join(replica.to_string());
    let cpu_group = parents[1].join(replica.to_string());
    assert_eq!(
        read(&memory_group.join("memory.limit_in_bytes")).trim(),
        "33554432"
    );
    assert_eq!(read(&cpu_group.join("cpu.cfs_quota_us")).trim(), "50000");
    assert_eq!(read(&cpu_group.join("cpu.cfs_period_us")).trim(), "100000");
    assert!(
        read(&memory_group.join("cgroup.procs"))
            .lines()
            .any(|l| l == pid)
    );
    assert!(
        read(&cpu_group.join("cgroup.procs"))
            .lines()
            .any(|l| l == pid)
    );

    assert_eq!(
        runtime.stop(&handle, Duration::from_secs(5)).await.unwrap(),
        StopOutcome::Terminated
    );
    assert!(!memory_group.exists() && !cpu_group.exists());

    // 100 MB held by a shell in a 32 MiB group: the OOM killer ends it. The sleep lets the
    // runtime move the shell into the group before it starts allocating.
    let mut hog = request(
        replica.clone(),
        &[
            "sh",
            "-c",
            "sleep 0.5; x=$(head -c 100000000 /dev/zero | tr '\\0' x); echo survived",
        ],
    );
    hog.memory_bytes = Some(32 * 1024 * 1024);
    let handle = runtime.start(&hog).await.unwrap();
    guard.add(&handle);
    wait_observed(
        &runtime,
        &handle,
        RuntimeObservation::Exited {
            code: None,
            signal: Some(9),
        },
    )
    .await;
    assert_eq!(read(&handle.record().stdout_log), "");
    runtime.stop(&handle, Duration::from_secs(1)).await.unwrap();
    runtime.cleanup(&replica).await.unwrap();
    assert!(!memory_group.exists());
    for parent in &parents {
        std::fs::remove_dir(parent).unwrap();
    }
}

/// Limits asked for on a box without usable cgroups (here: a cgroup root that does not
/// exist) are skipped with a log line; the workload runs anyway.
#[tokio::test]
async fn limits_skipped_when_cgroups_unavailable() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(
        dir.path().join("workloads"),
        ProcessRuntimeOptions {
            cgroup_root: dir.path().join("no-cgroups-here"),
            ..options()
        },
    )
    .unwrap();
    let mut guard = KillOnDrop::default();
    let mut limited = request(replica("limited", 1), &["sleep", "1000"]);
    limited.memory_bytes = Some(64 * 1024 * 1024);
    limited.cpu_millis = Some(100);
    let handle = runtime.start(&limited).await.unwrap();
    guard.add(&handle);
    assert_eq!(
        runtime.observe(&handle).await.unwrap(),
        RuntimeObservation::Running
    );
    runtime.stop(&handle, Duration::from_secs(5)).await.unwrap();
    runtime.cleanup(&replica("limited", 1)).await.unwrap();
}

/// Starting a replica again rewrites its secrets: new content replaces old, and files of
/// secrets no longer referenced disappear.
#[tokio::test]
async fn restart_rewrites_secrets() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let replica = replica("vault", 1);
    let mut request = request(replica.clone(), &["true"]);
    request.secrets = vec![
        ("a".to_owned(), b"one".to_vec()),
        ("b".to_owned(), b"two".to_vec()),
    ];
    let exited = RuntimeObservation::Exited {
        code: Some(0),
        signal: None,
    };
    let handle = runtime.start(&request).await.unwrap();
    wait_observed(runtime.as_ref(), &handle, exited).await;

    request.secrets = vec![("a".to_owned(), b"uno".to_vec())];
    let handle = runtime.start(&request).await.unwrap();
    wait_observed(runtime.as_ref(), &handle, exited).await;
    let secrets_dir = dir.path().join("vault.1/secrets");
    assert_eq!(std::fs::read(secrets_dir.join("a")).unwrap(), b"uno");
    assert!(!secrets_dir.join("b").exists());

    // Without secrets, the directory goes away.
    request.secrets.clear();
    let handle = runtime.start(&request).await.unwrap();
    wait_observed(runtime.as_ref(), &handle, exited).await;
    assert!(!secrets_dir.exists());
}

/// With `resolv_conf` set (as the agent does when it serves DNS on port 53), a workload sees
/// that file as its `/etc/resolv.conf`, while the host's stays untouched; a command that does
/// not exist still fails at start with its own error. Needs root (a private mount namespace
/// per workload); prints why it skips otherwise.
#[tokio::test]
async fn workloads_see_the_agents_resolv_conf_when_root() {
    init_tracing();
    if !prerequisites::require(
        "workloads_see_the_agents_resolv_conf_when_root",
        [prerequisites::root()],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.11\nsearch warren\n").unwrap();
    let host_before = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let runtime: Arc<dyn Runtime> = Arc::new(
        ProcessRuntime::new(
            dir.path().join("workloads"),
            ProcessRuntimeOptions {
                resolv_conf: Some(resolv.clone()),
                ..options()
            },
        )
        .unwrap(),
    );
    let handle = runtime
        .start(&request(replica("dns", 0), &["cat", "/etc/resolv.conf"]))
        .await
        .unwrap();
    wait_observed(
        runtime.as_ref(),
        &handle,
        RuntimeObservation::Exited {
            code: Some(0),
            signal: None,
        },
    )
    .await;
    let seen = read(
        &dir.path()
            .join("workloads")
            .join("dns.0")
            .join("stdout.log"),
    );
    assert_eq!(seen, "nameserver 127.0.0.11\nsearch warren\n");
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_before,
        "the host's resolv.conf is untouched"
    );
    let missing = runtime
        .start(&request(replica("dns", 1), &["no-such-command-here"]))
        .await;
    assert!(missing.is_err(), "{missing:?}");
}

/// What a workload's process holds: `uid gid groups` from `/proc/self/status`, then its
/// capability sets and `NoNewPrivs`, one `Name:\tvalue` per line.
const SHOW_CREDENTIALS: &str =
    "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status";

/// The value of field `name` in what [`SHOW_CREDENTIALS`] printed.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .map_or("", str::trim)
}

/// Runs [`SHOW_CREDENTIALS`] as `user` with `cap_add`; returns what it printed and the record.
async fn credentials_of(
    runtime: &dyn Runtime,
    replica: ReplicaId,
    user: Option<&str>,
    cap_add: &[&str],
) -> (String, WorkloadRecord) {
    let mut request = request(replica, &["sh", "-c", SHOW_CREDENTIALS]);
    request.user = user.map(str::to_owned);
    request.cap_add = cap_add.iter().map(|c| (*c).to_owned()).collect();
    let handle = runtime.start(&request).await.unwrap();
    let exited = RuntimeObservation::Exited {
        code: Some(0),
        signal: None,
    };
    wait_observed(runtime, &handle, exited).await;
    (read(&handle.record().stdout_log), handle.record().clone())
}

/// A workload runs as a user of its own (its `work` directory its own, 0700), or as the user
/// its spec names, with no capability in any set (bounding included) but those `cap_add`
/// keeps, in its ambient set so that a non-root uid holds them, and with `no_new_privs`;
/// `root` and `ALL` only when asked for. An unknown user fails the start, naming it. Needs
/// root (switching users); prints why it skips otherwise.
#[tokio::test]
async fn workloads_run_as_their_user_with_only_their_capabilities() {
    use std::os::unix::fs::MetadataExt;
    init_tracing();
    if !prerequisites::require(
        "workloads_run_as_their_user_with_only_their_capabilities",
        [prerequisites::root()],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());

    let (own, record) = credentials_of(runtime.as_ref(), replica("own", 0), None, &[]).await;
    let credentials = record.credentials.clone().unwrap();
    assert!(
        (2_080_000_000..2_080_065_536).contains(&credentials.uid),
        "{own}"
    );
    let uid = credentials.uid.to_string();
    assert_eq!(field(&own, "Uid"), [uid.as_str(); 4].join("\t"), "{own}");
    assert_eq!(field(&own, "Gid"), [uid.as_str(); 4].join("\t"), "{own}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&own, set), "0000000000000000", "{set}: {own}");
    }
    assert_eq!(field(&own, "NoNewPrivs"), "1", "{own}");
    let work = std::fs::metadata(dir.path().join("own.0/work")).unwrap();
    assert_eq!((work.uid(), work.mode() & 0o777), (credentials.uid, 0o700));
    // Another replica gets another uid; the same replica keeps its own.
    let (_, other) = credentials_of(runtime.as_ref(), replica("own", 1), None, &[]).await;
    assert_ne!(other.credentials.unwrap().uid, credentials.uid);
    let (_, again) = credentials_of(runtime.as_ref(), replica("own", 0), None, &[]).await;
    assert_eq!(again.credentials.unwrap().uid, credentials.uid);

    // NET_BIND_SERVICE is capability 10: bit 0x400 in every set but the bounding set's others.
    let (nobody, _) = credentials_of(
        runtime.as_ref(),
        replica("nobody", 0),
        Some("65534"),
        &["NET_BIND_SERVICE"],
    )
    .await;
    assert!(field(&nobody, "Uid").starts_with("65534\t"), "{nobody}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&nobody, set), "0000000000000400", "{set}: {nobody}");
    }

    let (root, _) = credentials_of(runtime.as_ref(), replica("root", 0), Some("root"), &[]).await;
    assert!(field(&root, "Uid").starts_with("0\t"), "{root}");
    assert_eq!(
        field(&root, "CapEff"),
        "0000000000000000",
        "root, but no capability: {root}"
    );
    let (all, _) = credentials_of(runtime.as_ref(), replica("root", 1), Some("0"), &["ALL"]).await;
    assert_ne!(field(&all, "CapEff"), "0000000000000000", "{all}");

    let mut ghost = request(replica("ghost", 0), &["true"]);
    ghost.user = Some("no-such-user-here".to_owned());
    let err = runtime.start(&ghost).await.unwrap_err();
    assert!(matches!(err, RuntimeError::RunAs { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(r#"unknown user "no-such-user-here""#),
        "{err}"
    );
}

/// A process-runtime node given a replica of an image service refuses it with the reason the
/// replica's start-failed event (and `service ps`) shows.
#[tokio::test]
async fn image_workload_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut image = request(replica("img", 0), &[]);
    image.image = Some("busybox:1".to_owned());
    let err = runtime.start(&image).await.unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "unsupported: this node runs processes; image workloads need --runtime containerd"
    );
}
