//! The native process runtime: a workload is a process the agent spawns directly.
//!
//! Layout under the runtime's root (e.g. `<data-dir>/workloads`), one directory per replica:
//!
//! ```text
//! <root>/<replica>/stdout.log[.1 …]   standard output, appended by the workload itself
//! <root>/<replica>/stderr.log[.1 …]   standard error
//! <root>/<replica>/secrets/           0700 (a private tmpfs when possible), files 0400
//! ```
//!
//! Each workload leads its own process group (`setpgid(0, 0)` at spawn), so signals meant for
//! the agent (a terminal's Ctrl-C, a service manager's group kill) do not reach it and
//! [`stop`](Runtime::stop) can signal the workload's whole tree at once. Nothing ties a
//! workload's life to the agent's: no `kill_on_drop`, no parent-death signal, log files the
//! workload holds itself. The agent reaps the children it spawned; a workload it
//! [adopts](Runtime::adopt) after a restart is watched through `/proc`, identified by pid
//! *and* start time so that a reused pid is never mistaken for it.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use warren_transport::ca::unix_now_ms as unix_ms_now;

use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use warren_api::ids::ReplicaId;

use super::cgroup::CgroupLayout;
use super::{
    Instance, Observed, Runtime, RuntimeError, RuntimeFuture, StopOutcome, WorkloadHandle,
    WorkloadRecord, WorkloadRequest, logs, procfs, secrets,
};

/// Environment variable telling the workload where its secret files are. Set only when the
/// workload has secrets.
pub const SECRETS_DIR_ENV: &str = "WARREN_SECRETS_DIR";

/// `PATH` given to workloads whose environment does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long [`Runtime::stop`] waits for a workload to vanish after SIGKILL before reporting
/// [`RuntimeError::NotStopped`].
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often [`Runtime::stop`] checks whether the workload has exited.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Settings of a [`ProcessRuntime`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessRuntimeOptions {
    /// A log file larger than this is rotated by [`Runtime::rotate_logs`]. Default 10 MiB.
    pub log_max_bytes: u64,
    /// Log files kept per stream, the live one included (`stdout.log`, `.1`, `.2` for 3).
    /// Default 3.
    pub log_files_max: u32,
    /// Where the cgroup v1 controllers are mounted. Default `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// The runtime's group under each controller; workloads go in `<parent>/<replica>`.
    /// Default `warren`.
    pub cgroup_parent: String,
    /// Try to put each replica's secrets on a private tmpfs (needs root). Default true.
    pub secrets_tmpfs: bool,
    /// A file each workload sees as its `/etc/resolv.conf` (the agent writes it to point at its
    /// own DNS server): bind-mounted in a private mount namespace per workload, through
    /// `unshare` and `mount`. Needs root and util-linux; without them, or when `None`, workloads
    /// use the host's resolver configuration. Default `None`.
    pub resolv_conf: Option<PathBuf>,
}

impl Default for ProcessRuntimeOptions {
    fn default() -> Self {
        ProcessRuntimeOptions {
            log_max_bytes: 10 * 1024 * 1024,
            log_files_max: 3,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "warren".to_owned(),
            secrets_tmpfs: true,
            resolv_conf: None,
        }
    }
}

/// Where `unshare` is looked for (it must exist before any workload's PATH applies).
const UNSHARE_PATHS: [&str; 2] = ["/usr/bin/unshare", "/bin/unshare"];

/// Runs as `sh -c` inside the workload's new mount namespace: bind the agent's resolv.conf over
/// the host's, then become the workload (same pid, so adoption by pid and start time holds).
/// Exit 125 when the mount fails, so the failure is not mistaken for the workload's own.
const RESOLV_WRAPPER: &str = "mount --bind \"$1\" /etc/resolv.conf || exit 125; shift; exec \"$@\"";

/// `unshare` if the resolver override can work here: root and util-linux present.
fn resolver_wrapper(resolv_conf: Option<&Path>) -> Option<PathBuf> {
    let resolv = resolv_conf?;
    if !rustix::process::geteuid().is_root() {
        tracing::info!(path = %resolv.display(), "not root: workloads keep the host's resolv.conf");
        return None;
    }
    let unshare = UNSHARE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if unshare.is_none() {
        tracing::warn!("`unshare` not found (util-linux): workloads keep the host's resolv.conf");
    }
    unshare
}

/// Whether `command` names an executable the workload's PATH finds: the resolver wrapper is used
/// only then, so a missing command still fails at spawn with its own error.
fn command_exists(command: &str) -> bool {
    if command.contains('/') {
        return Path::new(command).is_file();
    }
    DEFAULT_PATH
        .split(':')
        .any(|dir| Path::new(dir).join(command).is_file())
}

impl ProcessRuntimeOptions {
    /// Checks the settings against each other and the file system's rules.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.log_files_max == 0 {
            return Err("log_files_max must be at least 1".to_owned());
        }
        if self.log_max_bytes < 4096 {
            return Err(format!(
                "log_max_bytes must be at least 4096, got {}",
                self.log_max_bytes
            ));
        }
        let parent = &self.cgroup_parent;
        if parent.is_empty() || parent == "." || parent == ".." || parent.contains('/') {
            return Err(format!(
                "cgroup_parent must be a single directory name, got {parent:?}"
            ));
        }
        Ok(())
    }
}

/// What the runtime knows about one replica's workload.
#[derive(Debug)]
struct Tracked {
    record: WorkloadRecord,
    /// The exit status, published by the task that reaps the child; `None` for a workload
    /// adopted from an earlier agent (not our child, so its status is unknowable).
    exit: Option<watch::Receiver<Observed>>,
}

/// Runs workloads as native processes. See the [module docs](self).
#[derive(Debug)]
pub struct ProcessRuntime {
    root: PathBuf,
    options: ProcessRuntimeOptions,
    cgroups: CgroupLayout,
    /// Read once: it cannot change while this process lives.
    boot_id: String,
    /// `unshare`, when workloads get [`ProcessRuntimeOptions::resolv_conf`].
    unshare: Option<PathBuf>,
    tracked: Mutex<HashMap<ReplicaId, Tracked>>,
}

impl ProcessRuntime {
    /// A runtime keeping its per-replica files under `root`, which is created if missing.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidOptions`], `root` not creatable, or `/proc` unreadable.
    pub fn new(root: PathBuf, options: ProcessRuntimeOptions) -> Result<Self, RuntimeError> {
        options
            .validate()
            .map_err(|reason| RuntimeError::InvalidOptions { reason })?;
        std::fs::create_dir_all(&root)
            .map_err(|e| RuntimeError::io("create workloads directory", &root, e))?;
        let boot_id =
            procfs::boot_id().map_err(|e| RuntimeError::io("read boot id", BOOT_ID_PATH, e))?;
        let cgroups = CgroupLayout {
            root: options.cgroup_root.clone(),
            parent: options.cgroup_parent.clone(),
        };
        let unshare = resolver_wrapper(options.resolv_conf.as_deref());
        Ok(ProcessRuntime {
            root,
            options,
            cgroups,
            boot_id,
            unshare,
            tracked: Mutex::new(HashMap::new()),
        })
    }

    /// The directory holding `replica`'s logs and secrets, and its default working
    /// directory.
    pub fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.root.join(replica.to_string())
    }

    /// Where `replica`'s secret files are written.
    pub fn secrets_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.replica_dir(replica).join("secrets")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaId, Tracked>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // a single insert or remove), so a poisoned lock is still usable.
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The exit watch of `record`'s process, if it is a child this runtime spawned.
    fn exit_watch(&self, record: &WorkloadRecord) -> Option<watch::Receiver<Observed>> {
        let tracked = self.lock();
        let entry = tracked.get(&record.replica)?;
        if entry.record.instance != record.instance {
            return None;
        }
        entry.exit.clone()
    }

    /// The state of the workload `record` describes.
    fn liveness(
        &self,
        record: &WorkloadRecord,
        exit: Option<&watch::Receiver<Observed>>,
    ) -> Result<Observed, RuntimeError> {
        if record.boot_id != self.boot_id {
            return Ok(Observed::Gone);
        }
        if let Some(exit) = exit {
            return Ok(*exit.borrow());
        }
        let Instance::Process {
            pid,
            start_time_ticks,
        } = record.instance;
        let stat = procfs::read_stat(pid)
            .map_err(|e| RuntimeError::io("read process status", proc_stat_path(pid), e))?;
        Ok(match stat {
            None => Observed::Exited {
                code: None,
                signal: None,
            },
            Some(stat) if stat.start_time_ticks != start_time_ticks => Observed::Gone,
            Some(stat) if stat.has_exited() => Observed::Exited {
                code: None,
                signal: None,
            },
            Some(_) => Observed::Running,
        })
    }

    fn start_now(&self, request: &WorkloadRequest) -> Result<WorkloadHandle, RuntimeError> {
        let replica = &request.replica;
        let Some(command) = request.argv.first().filter(|c| !c.is_empty()) else {
            return Err(RuntimeError::InvalidRequest {
                replica: replica.clone(),
                reason: "empty command".to_owned(),
            });
        };
        for (name, _) in &request.secrets {
            secrets::validate_name(replica, name)?;
        }
        self.refuse_if_running(replica)?;

        let replica_dir = self.replica_dir(replica);
        create_private_dir(&replica_dir)?;
        let working_dir = match &request.working_dir {
            None => replica_dir.clone(),
            Some(dir) => replica_dir.join(dir),
        };
        if !working_dir.is_dir() {
            return Err(RuntimeError::WorkingDirNotFound { path: working_dir });
        }
        let secrets_dir = self.secrets_dir(replica);
        if request.secrets.is_empty() {
            secrets::remove(&secrets_dir)?;
        } else {
            secrets::write(
                replica,
                &secrets_dir,
                &request.secrets,
                self.options.secrets_tmpfs,
            )?;
        }
        let placed = self
            .cgroups
            .prepare(replica, request.memory_bytes, request.cpu_millis)?;
        let stdout_log = replica_dir.join(logs::STDOUT_LOG);
        let stderr_log = replica_dir.join(logs::STDERR_LOG);

        let resolv = self
            .options
            .resolv_conf
            .as_ref()
            .zip(self.unshare.as_ref())
            .filter(|_| command_exists(command));
        let mut std_command = match resolv {
            Some((resolv, unshare)) => {
                let mut wrapped = std::process::Command::new(unshare);
                wrapped
                    .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                    .arg(RESOLV_WRAPPER)
                    .arg("warren-resolv")
                    .arg(resolv)
                    .arg(command);
                wrapped
            }
            None => std::process::Command::new(command),
        };
        std_command
            .args(&request.argv[1..])
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&request.env)
            .current_dir(&working_dir)
            .stdin(Stdio::null())
            .stdout(logs::open_append(&stdout_log)?)
            .stderr(logs::open_append(&stderr_log)?)
            .process_group(0);
        if !request.secrets.is_empty() {
            std_command.env(SECRETS_DIR_ENV, &secrets_dir);
        }
        // No kill_on_drop: the workload must outlive this handle, this runtime and the agent.
        let child = match tokio::process::Command::from(std_command).spawn() {
            Ok(child) => child,
            Err(e) => {
                self.remove_cgroups(replica);
                return Err(spawn_error(command, e));
            }
        };
        let pid = child
            .id()
            .expect("a child that has not been waited for has a pid");

        // The child cannot be reaped before the waiter below runs, so its /proc entry (a
        // zombie at worst) is there to read.
        let prepared = placed.add(pid).and_then(|()| {
            procfs::read_stat(pid)
                .map_err(|e| RuntimeError::io("read process status", proc_stat_path(pid), e))?
                .ok_or_else(|| {
                    RuntimeError::io(
                        "read process status",
                        proc_stat_path(pid),
                        io::Error::from(io::ErrorKind::NotFound),
                    )
                })
        });
        let exit = spawn_reaper(replica.clone(), child);
        let stat = match prepared {
            Ok(stat) => stat,
            Err(e) => {
                // A workload without its limits, or one we could never adopt again, must not
                // run on.
                let _ = signal_group(pid, Signal::KILL);
                return Err(e);
            }
        };

        let record = WorkloadRecord {
            replica: replica.clone(),
            workload_hash: request.workload_hash,
            boot_id: self.boot_id.clone(),
            started_at_ms: unix_ms_now(),
            stdout_log,
            stderr_log,
            instance: Instance::Process {
                pid,
                start_time_ticks: stat.start_time_ticks,
            },
        };
        tracing::info!(%replica, pid, command = %command, "started workload");
        self.lock().insert(
            replica.clone(),
            Tracked {
                record: record.clone(),
                exit: Some(exit),
            },
        );
        Ok(WorkloadHandle::new(record))
    }

    fn refuse_if_running(&self, replica: &ReplicaId) -> Result<(), RuntimeError> {
        let existing = {
            let tracked = self.lock();
            tracked
                .get(replica)
                .map(|t| (t.record.clone(), t.exit.clone()))
        };
        if let Some((record, exit)) = existing {
            if self.liveness(&record, exit.as_ref())? == Observed::Running {
                return Err(RuntimeError::AlreadyRunning {
                    replica: replica.clone(),
                    pid: record.pid().unwrap_or_default(),
                });
            }
        }
        Ok(())
    }

    /// Whether any process of the workload's group still runs: the leader, or (once the
    /// leader is gone) any non-zombie member left behind.
    fn group_running(
        &self,
        record: &WorkloadRecord,
        exit: Option<&watch::Receiver<Observed>>,
        pgid: u32,
    ) -> Result<bool, RuntimeError> {
        if self.liveness(record, exit)? == Observed::Running {
            return Ok(true);
        }
        if !group_exists(pgid) {
            return Ok(false);
        }
        procfs::group_has_live_member(pgid).map_err(|e| RuntimeError::io("scan /proc", "/proc", e))
    }

    /// Polls until the group has no running process or `deadline`; returns whether it
    /// emptied.
    async fn wait_group_exit(
        &self,
        record: &WorkloadRecord,
        exit: Option<&watch::Receiver<Observed>>,
        pgid: u32,
        deadline: tokio::time::Instant,
    ) -> Result<bool, RuntimeError> {
        loop {
            if !self.group_running(record, exit, pgid)? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(STOP_POLL_INTERVAL).await;
        }
    }

    async fn stop_workload(
        &self,
        handle: &WorkloadHandle,
        grace: Duration,
    ) -> Result<StopOutcome, RuntimeError> {
        let record = handle.record();
        let replica = &record.replica;
        let Instance::Process { pid, .. } = record.instance;
        let exit = self.exit_watch(record);
        let exit = exit.as_ref();
        // Never signal a group whose number may now belong to someone else: after a reboot,
        // or when the recorded pid runs another program.
        let leader = self.liveness(record, exit)?;
        if leader == Observed::Gone || !self.group_running(record, exit, pid)? {
            self.remove_cgroups(replica);
            return Ok(StopOutcome::AlreadyExited);
        }

        tracing::info!(%replica, pid, grace_ms = grace.as_millis(), "stopping workload");
        if !signal_group(pid, Signal::TERM)? {
            self.remove_cgroups(replica);
            return Ok(StopOutcome::AlreadyExited);
        }
        let grace_deadline = tokio::time::Instant::now() + grace;
        let outcome = if self
            .wait_group_exit(record, exit, pid, grace_deadline)
            .await?
        {
            StopOutcome::Terminated
        } else {
            tracing::warn!(%replica, pid, "workload outlived its grace period; killing it");
            signal_group(pid, Signal::KILL)?;
            let kill_deadline = tokio::time::Instant::now() + KILL_WAIT;
            if !self
                .wait_group_exit(record, exit, pid, kill_deadline)
                .await?
            {
                return Err(RuntimeError::NotStopped {
                    replica: replica.clone(),
                    pid,
                });
            }
            StopOutcome::Killed
        };
        tracing::info!(%replica, pid, ?outcome, "stopped workload");
        self.remove_cgroups(replica);
        Ok(outcome)
    }

    fn remove_cgroups(&self, replica: &ReplicaId) {
        if let Err(e) = self.cgroups.remove(replica) {
            tracing::warn!(%replica, error = %e, "cannot remove cgroup");
        }
    }

    fn adopt_now(&self, record: &WorkloadRecord) -> Option<WorkloadHandle> {
        let replica = &record.replica;
        let pid = record.pid();
        if record.boot_id != self.boot_id {
            tracing::info!(%replica, ?pid, "not adopting workload: it started before a reboot");
            return None;
        }
        match self.liveness(record, None) {
            Ok(Observed::Running) => {}
            Ok(observed) => {
                tracing::info!(%replica, ?pid, ?observed, "not adopting workload: not running");
                return None;
            }
            Err(e) => {
                tracing::warn!(%replica, ?pid, error = %e, "not adopting workload");
                return None;
            }
        }
        let mut tracked = self.lock();
        // Keep what this runtime knows better: its own child (whose exit status it will
        // see), or a different child of ours that runs for the replica right now.
        let keep_existing = tracked.get(replica).is_some_and(|t| {
            t.exit.as_ref().is_some_and(|exit| {
                t.record.instance == record.instance || *exit.borrow() == Observed::Running
            })
        });
        if !keep_existing {
            tracked.insert(
                replica.clone(),
                Tracked {
                    record: record.clone(),
                    exit: None,
                },
            );
        }
        tracing::info!(%replica, ?pid, "adopted running workload");
        Some(WorkloadHandle::new(record.clone()))
    }

    fn cleanup_now(&self, replica: &ReplicaId) -> Result<(), RuntimeError> {
        let existing = {
            let tracked = self.lock();
            tracked
                .get(replica)
                .map(|t| (t.record.clone(), t.exit.clone()))
        };
        if let Some((record, exit)) = existing {
            if self.liveness(&record, exit.as_ref())? == Observed::Running {
                return Err(RuntimeError::StillRunning {
                    replica: replica.clone(),
                });
            }
        }
        secrets::remove(&self.secrets_dir(replica))?;
        self.cgroups.remove(replica)?;
        self.lock().remove(replica);
        tracing::info!(%replica, "cleaned up replica");
        Ok(())
    }

    /// Removes `<root>/*/secrets`, whichever replicas they belong to.
    fn wipe_secrets_now(&self) -> Result<(), RuntimeError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(RuntimeError::io("list workloads", &self.root, e)),
        };
        let mut first_error = None;
        for entry in entries {
            let removed = entry
                .map_err(|e| RuntimeError::io("list workloads", &self.root, e))
                .and_then(|entry| secrets::remove(&entry.path().join("secrets")));
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove secret files");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Runtime for ProcessRuntime {
    fn start<'a>(
        &'a self,
        request: &'a WorkloadRequest,
    ) -> RuntimeFuture<'a, Result<WorkloadHandle, RuntimeError>> {
        Box::pin(async move { self.start_now(request) })
    }

    fn observe<'a>(
        &'a self,
        handle: &'a WorkloadHandle,
    ) -> RuntimeFuture<'a, Result<Observed, RuntimeError>> {
        Box::pin(async move {
            let exit = self.exit_watch(handle.record());
            self.liveness(handle.record(), exit.as_ref())
        })
    }

    fn stop<'a>(
        &'a self,
        handle: &'a WorkloadHandle,
        grace: Duration,
    ) -> RuntimeFuture<'a, Result<StopOutcome, RuntimeError>> {
        Box::pin(self.stop_workload(handle, grace))
    }

    fn adopt<'a>(
        &'a self,
        record: &'a WorkloadRecord,
    ) -> RuntimeFuture<'a, Option<WorkloadHandle>> {
        Box::pin(async move { self.adopt_now(record) })
    }

    fn cleanup<'a>(
        &'a self,
        replica: &'a ReplicaId,
    ) -> RuntimeFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move { self.cleanup_now(replica) })
    }

    fn write_secrets<'a>(
        &'a self,
        replica: &'a ReplicaId,
        secrets: &'a [(String, Vec<u8>)],
    ) -> RuntimeFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let dir = self.secrets_dir(replica);
            if secrets.is_empty() {
                secrets::remove(&dir)
            } else {
                secrets::write(replica, &dir, secrets, self.options.secrets_tmpfs)
            }
        })
    }

    fn wipe_secrets(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.wipe_secrets_now() })
    }

    fn rotate_logs(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>> {
        let root = self.root.clone();
        let max_bytes = self.options.log_max_bytes;
        let files_max = self.options.log_files_max;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || logs::rotate_all(&root, max_bytes, files_max))
                .await
                .map_err(|e| {
                    RuntimeError::io("rotate logs", "(blocking task)", io::Error::other(e))
                })?
        })
    }
}

const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

fn proc_stat_path(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join("stat")
}

fn create_private_dir(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(RuntimeError::io("create replica directory", dir, e)),
    }
}

fn spawn_error(command: &str, error: io::Error) -> RuntimeError {
    let command = command.to_owned();
    match error.kind() {
        io::ErrorKind::NotFound => RuntimeError::CommandNotFound { command },
        io::ErrorKind::PermissionDenied => RuntimeError::PermissionDenied { command },
        _ => RuntimeError::Spawn {
            command,
            source: error,
        },
    }
}

/// Reaps `child` when it exits and publishes how it ended. The task outlives the runtime if
/// need be; it ends when the child does (or with the tokio runtime, leaving the child
/// running).
fn spawn_reaper(replica: ReplicaId, mut child: tokio::process::Child) -> watch::Receiver<Observed> {
    let (sender, receiver) = watch::channel(Observed::Running);
    tokio::spawn(async move {
        let observed = match child.wait().await {
            Ok(status) => Observed::Exited {
                code: status.code(),
                signal: status.signal(),
            },
            Err(e) => {
                tracing::warn!(%replica, error = %e, "cannot wait for workload");
                Observed::Exited {
                    code: None,
                    signal: None,
                }
            }
        };
        tracing::info!(%replica, ?observed, "workload exited");
        // Nobody listening (the runtime is gone) is fine.
        let _ = sender.send(observed);
    });
    receiver
}

fn pid_of(pgid: u32) -> Option<Pid> {
    i32::try_from(pgid).ok().and_then(Pid::from_raw)
}

/// Sends `signal` to process group `pgid`. `Ok(false)` when the group no longer exists.
fn signal_group(pgid: u32, signal: Signal) -> Result<bool, RuntimeError> {
    let Some(pid) = pid_of(pgid) else {
        return Ok(false);
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(RuntimeError::Signal {
            pgid,
            source: e.into(),
        }),
    }
}

/// Whether process group `pgid` has any member, zombies included.
fn group_exists(pgid: u32) -> bool {
    pid_of(pgid).is_some_and(|pid| {
        !matches!(
            rustix::process::test_kill_process_group(pid),
            Err(Errno::SRCH)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_defaults_and_validation() {
        let defaults: ProcessRuntimeOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, ProcessRuntimeOptions::default());
        assert_eq!(defaults.log_max_bytes, 10 * 1024 * 1024);
        assert_eq!(defaults.log_files_max, 3);
        assert!(defaults.validate().is_ok());
        assert!(serde_json::from_str::<ProcessRuntimeOptions>(r#"{"log_files":3}"#).is_err());

        fn check(options: ProcessRuntimeOptions, expected_in_error: &str) {
            let err = options.validate().unwrap_err();
            assert!(err.contains(expected_in_error), "{err}");
        }
        let base = ProcessRuntimeOptions::default();
        check(
            ProcessRuntimeOptions {
                log_files_max: 0,
                ..base.clone()
            },
            "log_files_max",
        );
        check(
            ProcessRuntimeOptions {
                log_max_bytes: 10,
                ..base.clone()
            },
            "log_max_bytes",
        );
        for parent in ["", "..", "a/b"] {
            check(
                ProcessRuntimeOptions {
                    cgroup_parent: parent.to_owned(),
                    ..base.clone()
                },
                "cgroup_parent",
            );
        }
    }

    #[test]
    fn spawn_errors_are_classified() {
        let not_found = spawn_error("foo", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(not_found.to_string(), "command not found: foo");
        assert!(!not_found.is_retryable());
        let denied = spawn_error("foo", io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(denied.to_string(), "permission denied: foo");
        let other = spawn_error("foo", io::Error::from_raw_os_error(7));
        assert!(matches!(other, RuntimeError::Spawn { .. }));
        assert!(other.is_retryable());
    }
}
