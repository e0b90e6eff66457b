//! Secrets end to end, with a real control node, a real agent and real `sh` workloads: a secret
//! reaches the workload as a file (its own, 0400, outside the agent's data dir) and nowhere else
//! in the clear, a new value is rewritten in place without a restart (also after the cluster
//! key rotated), removing the node wipes the files and the node key; and an agent without a
//! node key runs what needs no secrets and
//! fails only what does.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;
use warren_api::{
    ProcessSpec, SecretRef, ServiceMode, ServiceName, ServiceSpec, TaskState, Workload,
};
use warren_control::Op;
use warren_edge_agent::agent::RunEnd;
use warren_edge_agent::secrets::SECRET_KEY_FILE;
use warren_tests::{
    agent_status, alive, join_agent, propose, put_secret, sleep_service, spawn_agent,
    start_control, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// The state and pid of the (only) replica of `service` in the agent's status.
fn replica_state(dir: &Path, service: &str) -> Option<(TaskState, Option<u32>)> {
    agent_status(dir)?
        .replicas
        .into_iter()
        .find(|r| r.replica.service.to_string() == service)
        .map(|r| (r.state, r.pid))
}

/// Service `name` running `sh -c script` once, with secret `db` as the file `db.txt`.
fn secret_service(name: &str, script: String) -> ServiceSpec {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sh".into(), "-c".into(), script],
        working_dir: None,
    });
    let mut spec = ServiceSpec::new(ServiceName::new(name).expect("valid name"), workload);
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    spec.secrets = vec![SecretRef {
        name: "db".into(),
        target: "db.txt".into(),
    }];
    spec
}

/// Every regular file under `dir`, recursively, except those under a `secrets` directory.
fn files_outside_secrets(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && entry.file_name() != "secrets" {
            files_outside_secrets(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Create a secret and a service that copies it out of `$WARREN_SECRETS_DIR` every 100 ms →
/// the workload sees the plaintext; the agent's data dir (cache, status, logs) holds it
/// nowhere; a new value of the secret reaches the same process (no restart); removing the
/// node stops the workload and deletes its secret files and the node key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_reach_the_workload_sealed_and_leave_with_the_node() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;

    info!("--- join: the node key is stored, private, in a data dir only its owner enters");
    warren_tests::passable(dir.path());
    let agent_dir = dir.path().join("agent");
    let workloads_dir = warren_edge_agent::runtime::default_workloads_dir(&agent_dir);
    let dir_mode = || std::fs::metadata(&agent_dir).unwrap().permissions().mode() & 0o777;
    let widen =
        || std::fs::set_permissions(&agent_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(&agent_dir).unwrap();
    widen();
    let identity = join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let key_file = agent_dir.join(SECRET_KEY_FILE);
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    assert_eq!(dir_mode(), 0o700, "join makes the data dir private");
    // Widened since (a dir made by an older build): the agent tightens it when it starts.
    widen();

    info!("--- a secret and a service that reads it");
    let plaintext = b"warren-e2e-secret-5f0c1d";
    put_secret(&control, "db", plaintext).await;
    // The workload writes in its own directory (its working directory); the test, root or the
    // agent's user, reads it there.
    let work = workloads_dir.join("vault.1").join("work");
    let seen = work.join("seen-5f0c");
    let seen_dir = work.join("seen-dir");
    let script = "echo \"$WARREN_SECRETS_DIR\" > seen-dir; \
         while true; do cat \"$WARREN_SECRETS_DIR/db.txt\" > seen-5f0c.tmp && mv seen-5f0c.tmp seen-5f0c; \
         sleep 0.1; done"
        .to_owned();
    propose(&control, Op::PutService(secret_service("vault", script))).await;
    let (_cancel, task) = spawn_agent(&agent_dir);
    wait_until("the agent to make its data dir private", LONG, || {
        (dir_mode() == 0o700).then_some(())
    })
    .await;

    let read = |path: &Path| std::fs::read(path).ok();
    wait_until("the workload to see the secret", LONG, || {
        read(&seen).filter(|v| v == plaintext)
    })
    .await;
    let pid = wait_until(
        "the workload running in the agent's status",
        LONG,
        || match replica_state(&agent_dir, "vault")? {
            (TaskState::Running, pid) => pid,
            _ => None,
        },
    )
    .await;
    let secrets_dir = PathBuf::from(
        String::from_utf8(read(&seen_dir).unwrap())
            .unwrap()
            .trim_end(),
    );
    assert!(
        secrets_dir.starts_with(&workloads_dir) && !secrets_dir.starts_with(&agent_dir),
        "{}",
        secrets_dir.display()
    );
    let file = std::fs::metadata(secrets_dir.join("db.txt")).unwrap();
    assert_eq!(file.permissions().mode() & 0o777, 0o400);
    // Owned by the workload's user: only it (and root) can read it.
    let work_owner = std::fs::metadata(&work).unwrap().uid();
    assert_eq!(file.uid(), work_owner);
    if rustix::process::geteuid().is_root() {
        assert_ne!(
            file.uid(),
            0,
            "a workload without `user` does not run as root"
        );
    }

    info!("--- the plaintext is nowhere in the agent's files but the workload's secret file");
    let mut files = Vec::new();
    files_outside_secrets(&agent_dir, &mut files);
    for log in ["stdout.log", "stderr.log"] {
        files.push(workloads_dir.join("vault.1").join(log));
    }
    let cache_files: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.starts_with(agent_dir.join("cache")))
        .collect();
    assert!(!cache_files.is_empty(), "{files:?}");
    // The cache is readable as bytes (not compressed): it does hold the service's command.
    let marker = "seen-5f0c".to_owned();
    assert!(
        cache_files
            .iter()
            .any(|f| holds(&std::fs::read(f).unwrap_or_default(), marker.as_bytes())),
        "the cached view is in {cache_files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        assert!(
            !holds(&bytes, plaintext),
            "{} holds the plaintext",
            file.display()
        );
    }

    info!("--- a new value: rewritten in place, the same process reads it");
    let updated = b"warren-e2e-secret-rotated-88a2";
    put_secret(&control, "db", updated).await;
    wait_until("the workload to see the new value", LONG, || {
        read(&seen).filter(|v| v == updated)
    })
    .await;
    assert_eq!(
        replica_state(&agent_dir, "vault"),
        Some((TaskState::Running, Some(pid))),
        "a secret's new value does not restart the workload"
    );

    info!("--- the cluster key rotates: the stored values are re-sealed, the agent's key stays");
    let generation = control
        .control()
        .rotate_cluster_key("the test asks")
        .await
        .expect("rotated");
    assert_eq!(generation, 2);
    let after_rotation = b"warren-e2e-secret-after-rekey-17c9";
    put_secret(&control, "db", after_rotation).await;
    wait_until(
        "the workload to see the value sealed after the rotation",
        LONG,
        || read(&seen).filter(|v| v == after_rotation),
    )
    .await;

    info!("--- remove the node: workload stopped, secret files and node key gone");
    propose(&control, Op::RemoveNode(identity.node_id)).await;
    let end = tokio::time::timeout(LONG, task).await.unwrap().unwrap();
    assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    assert!(!alive(pid), "pid {pid} stopped");
    assert!(!secrets_dir.exists(), "{} removed", secrets_dir.display());
    assert!(!key_file.exists(), "node key removed");
    control.shutdown().await;
}

/// An agent without a node key (it joined before control delivered secrets) runs the
/// services that need no secret and reports the one that does as failed; it does not crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_without_a_node_key_fails_only_workloads_with_secrets() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    let identity = join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    std::fs::remove_file(agent_dir.join(SECRET_KEY_FILE)).unwrap();

    put_secret(&control, "db", b"never delivered in the clear").await;
    propose(&control, Op::PutService(sleep_service(1))).await;
    let script = "cat \"$WARREN_SECRETS_DIR/db.txt\"; exec sleep 1000".to_owned();
    propose(&control, Op::PutService(secret_service("vault", script))).await;
    let (_cancel, task) = spawn_agent(&agent_dir);

    wait_until("web running and vault failed", LONG, || {
        let web = replica_state(&agent_dir, "web")?;
        let vault = replica_state(&agent_dir, "vault")?;
        (web.0 == TaskState::Running && vault == (TaskState::Failed, None)).then_some(())
    })
    .await;
    assert!(!task.is_finished(), "the agent runs on");
    let (_, web_pid) = replica_state(&agent_dir, "web").unwrap();

    info!("--- remove the node: a keyless agent tears down just the same");
    propose(&control, Op::RemoveNode(identity.node_id)).await;
    let end = tokio::time::timeout(LONG, task).await.unwrap().unwrap();
    assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    assert!(!alive(web_pid.unwrap()), "web stopped");
    control.shutdown().await;
}
