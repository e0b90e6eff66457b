//! A workload the previous release's agent started keeps being handled after the upgrade: its
//! record, in cache format 1, is read; the real process, running in the old replica directory
//! under the data dir, is adopted by pid and start time, stopped, and its secrets (where the
//! old agent put them) are removed. No root needed.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use warren_api::ids::{ReplicaId, ServiceName};
use warren_edge_agent::agent::AgentOptions;
use warren_edge_agent::cache::{Cache, CacheTuning};
use warren_edge_agent::offline::stop_workloads;
use warren_edge_agent::runtime::Instance;

/// `WorkloadRecord` as cache format 1 laid it out.
#[derive(Serialize)]
struct RecordV1 {
    replica: ReplicaId,
    workload_hash: u64,
    boot_id: String,
    started_at_ms: u64,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
    instance: Instance,
}

/// A cache value as the previous release wrote it: format 1, CRC-32, postcard payload.
fn format_1_value(value: &impl Serialize) -> Vec<u8> {
    let payload = postcard::to_allocvec(value).unwrap();
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
fn start_time_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next();
        !matches!(state, Some("Z" | "X"))
    })
}

/// The previous release's layout: `<data dir>/workloads/web.1/` with logs and secrets, a
/// `sleep` in its own process group, and a format-1 record of it. After the upgrade the
/// offline stop (what `warren dev` does on exit, through the same runtime as the agent)
/// adopts it, stops it and removes its secrets.
#[tokio::test]
async fn a_workload_of_the_previous_release_is_adopted_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("agent");
    let old_replica_dir = data_dir.join("workloads").join("web.1");
    let old_secrets = old_replica_dir.join("secrets");
    std::fs::create_dir_all(&old_secrets).unwrap();
    std::fs::write(old_secrets.join("db"), b"old secret").unwrap();
    let stdout_log = old_replica_dir.join("stdout.log");
    let stderr_log = old_replica_dir.join("stderr.log");

    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .current_dir(&old_replica_dir)
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    let replica = ReplicaId::replicated(ServiceName::new("web").unwrap(), 1);
    let record = RecordV1 {
        replica: replica.clone(),
        workload_hash: 0xd852_ad39_3787_4142,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
            .to_owned(),
        started_at_ms: 1,
        stdout_log,
        stderr_log,
        instance: Instance::Process {
            pid,
            start_time_ticks: start_time_ticks(pid),
        },
    };
    {
        let cache = Cache::open(&data_dir, CacheTuning::default()).unwrap();
        cache
            .put_raw("workload/web.1", &format_1_value(&record))
            .unwrap();
        cache.flush().await.unwrap();
    }

    let stopped = stop_workloads(&data_dir, &AgentOptions::default()).await;
    let _ = child.kill();
    let stopped = stopped.unwrap();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0].replica, replica);
    assert!(stopped[0].was_running, "adopted by pid and start time");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pid {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !old_secrets.exists(),
        "the old agent's secrets are removed where it put them"
    );
    assert!(
        data_dir.with_file_name("agent-workloads").is_dir(),
        "the new workloads dir is beside the data dir"
    );
}
