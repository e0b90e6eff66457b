//! The native process runtime: a workload is a process the agent spawns directly.
//!
//! One directory per replica under the runtime's root (`--workloads-dir`, outside the agent's
//! data dir; see `dirs` for who owns what):
//!
//! ```text
//! <root>/<replica>/stdout.log[.1 …]   standard output, appended by the workload itself
//! <root>/<replica>/stderr.log[.1 …]   standard error
//! <root>/<replica>/secrets/           0700 uid (a private tmpfs when possible), files 0400 uid
//! <root>/<replica>/work/              0700 uid: the workload's own, its default working dir
//! ```
//!
//! Local volumes are directories of their own (`runtime::volumes`); a workload finds each by
//! `WARREN_VOLUME_<TARGET>`, the host path. A read-only mount is bound read-only over that
//! path in the workload's own mount namespace, which needs root: an agent that is not root
//! cannot enforce `read_only` for processes (it says so when such a workload starts).
//!
//! A workload runs as the user its spec names, or as a user of its own, with only the
//! capabilities its spec keeps and `no_new_privs` (`credentials`, `privileges`). Workloads an
//! older agent started keep running from `<data dir>/workloads/<replica>` (their record says
//! where): they are adopted, their secrets and logs kept up where they are.
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
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use warren_api::ids::ReplicaId;

use super::cgroup::CgroupLayout;
use super::credentials::AgentUser;
use super::dirs::{Layout, SECRETS_DIR};
use super::volumes::{self, Volumes};
use super::working_dir::Forbidden;
use super::{
    Instance, Runtime, RuntimeError, RuntimeFuture, RuntimeObservation, StopOutcome,
    WorkloadHandle, WorkloadRecord, WorkloadRequest, logs, procfs, secrets,
};

mod start;

/// Environment variable telling the workload where its secret files are. Set only when the
/// workload has secrets.
pub const SECRETS_DIR_ENV: &str = "WARREN_SECRETS_DIR";

/// Why a process-runtime node does not run a replica of an image service: said in the
/// replica's start-failed event, so that `service ps` shows it.
pub const IMAGE_ON_PROCESS_NODE: &str =
    "this node runs processes; image workloads need --runtime containerd";

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
    /// own DNS server): bind-mounted in a private mount namespace per workload. Needs root;
    /// without it, or when `None`, workloads use the host's resolver configuration. Default
    /// `None`.
    pub resolv_conf: Option<PathBuf>,
    /// Where replica directories go ([`ProcessRuntime::for_agent`]); `None`: beside the
    /// agent's data dir, as `<data dir>-workloads`. Never inside the data dir. Default `None`.
    pub workloads_dir: Option<PathBuf>,
    /// Where local volumes' directories go (`runtime::volumes`); `None`: beside the agent's
    /// data dir, as `<data dir>-volumes` (beside the workloads root for a runtime without a
    /// data dir). Default `None`.
    pub volumes_dir: Option<PathBuf>,
    /// Volumes served from host directories instead, by name: the allow-list of
    /// `--host-volume NAME=PATH` (`runtime::volumes`). Default empty.
    pub host_volumes: std::collections::BTreeMap<String, PathBuf>,
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
            workloads_dir: None,
            volumes_dir: None,
            host_volumes: std::collections::BTreeMap::new(),
        }
    }
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
        volumes::check_host_volumes(&self.host_volumes, None)
    }
}

/// What the runtime knows about one replica's workload.
#[derive(Debug)]
struct Tracked {
    record: WorkloadRecord,
    /// The exit status, published by the task that reaps the child; `None` for a workload
    /// adopted from an earlier agent (not our child, so its status is unknowable).
    exit: Option<watch::Receiver<RuntimeObservation>>,
}

/// The agent's data dir's sibling that holds replica directories unless told otherwise:
/// `/var/lib/warren` → `/var/lib/warren-workloads`.
pub fn default_workloads_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map_or_else(|| "warren".into(), std::ffi::OsStr::to_owned);
    name.push("-workloads");
    data_dir.with_file_name(name)
}

/// Runs workloads as native processes. See the [module docs](self).
#[derive(Debug)]
pub struct ProcessRuntime {
    layout: Layout,
    volumes: Volumes,
    /// Where an older agent kept replica directories (`<data dir>/workloads`).
    legacy_root: Option<PathBuf>,
    /// Where no working directory may be.
    forbidden: Vec<Forbidden>,
    options: ProcessRuntimeOptions,
    cgroups: CgroupLayout,
    /// Read once: it cannot change while this process lives.
    boot_id: String,
    agent: AgentUser,
    /// Whether workloads get [`ProcessRuntimeOptions::resolv_conf`] (the agent is root).
    resolv_override: bool,
    /// Held while a replica's user id is chosen and its directories made, so that two starts
    /// cannot pick the same dynamic uid.
    allocating: Mutex<()>,
    tracked: Mutex<HashMap<ReplicaId, Tracked>>,
}

impl ProcessRuntime {
    /// A runtime keeping its per-replica files under `root`, which is created if missing,
    /// for no agent in particular (tests, tools): only `root` is kept out of working dirs.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidOptions`], `root` not creatable, or `/proc` unreadable.
    pub fn new(root: PathBuf, options: ProcessRuntimeOptions) -> Result<Self, RuntimeError> {
        Self::build(root, None, options)
    }

    /// The runtime of the agent whose data dir is `data_dir`: replica directories in
    /// [`ProcessRuntimeOptions::workloads_dir`] (default [`default_workloads_dir`]), no working
    /// dir in or above the data dir, and workloads an older agent left in
    /// `<data dir>/workloads` kept up.
    ///
    /// # Errors
    /// As [`ProcessRuntime::new`]; [`RuntimeError::InvalidOptions`] for a workloads dir inside
    /// the data dir.
    pub fn for_agent(
        data_dir: &Path,
        options: ProcessRuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let root = options
            .workloads_dir
            .clone()
            .unwrap_or_else(|| default_workloads_dir(data_dir));
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        if absolute(&root).starts_with(absolute(data_dir)) {
            return Err(RuntimeError::InvalidOptions {
                reason: format!(
                    "workloads dir {} is inside the agent's data dir {}: workloads must not be able to name the agent's keys from their directory",
                    root.display(),
                    data_dir.display()
                ),
            });
        }
        Self::build(root, Some(data_dir), options)
    }

    fn build(
        root: PathBuf,
        data_dir: Option<&Path>,
        options: ProcessRuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        options
            .validate()
            .map_err(|reason| RuntimeError::InvalidOptions { reason })?;
        let agent = AgentUser::current();
        volumes::check_host_volumes(&options.host_volumes, data_dir)
            .map_err(|reason| RuntimeError::InvalidOptions { reason })?;
        let volumes = Volumes {
            root: options.volumes_dir.clone().unwrap_or_else(|| {
                volumes::default_volumes_dir(data_dir.unwrap_or(root.as_path()))
            }),
            host: options.host_volumes.clone(),
        };
        let layout = Layout { root };
        layout.create_root(agent.is_root())?;
        say_how_workloads_run(agent, &layout.root, &volumes.root);
        let boot_id =
            procfs::boot_id().map_err(|e| RuntimeError::io("read boot id", BOOT_ID_PATH, e))?;
        let cgroups = CgroupLayout {
            root: options.cgroup_root.clone(),
            parent: options.cgroup_parent.clone(),
        };
        let mut forbidden = Vec::new();
        if let Some(data_dir) = data_dir {
            forbidden.push(Forbidden {
                path: data_dir.to_owned(),
                what: "the agent's data dir",
            });
        }
        forbidden.push(Forbidden {
            path: layout.root.clone(),
            what: "the workloads directory",
        });
        let resolv_override = match &options.resolv_conf {
            Some(path) if !agent.is_root() => {
                tracing::info!(path = %path.display(), "not root: workloads keep the host's resolv.conf");
                false
            }
            Some(_) => true,
            None => false,
        };
        Ok(ProcessRuntime {
            layout,
            volumes,
            legacy_root: data_dir.map(|d| d.join(LEGACY_WORKLOADS_DIR)),
            forbidden,
            options,
            cgroups,
            boot_id,
            agent,
            resolv_override,
            allocating: Mutex::new(()),
            tracked: Mutex::new(HashMap::new()),
        })
    }

    /// The directory holding `replica`'s logs, secrets and `work` directory.
    pub fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.layout.replica_dir(replica)
    }

    /// `replica`'s own directory, its default working directory.
    pub fn work_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.layout.work_dir(replica)
    }

    /// Where `replica`'s secret files are written.
    pub fn secrets_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.replica_dir(replica).join(SECRETS_DIR)
    }

    /// Where the secrets of the workload `record` describes are: beside its logs (an older
    /// agent's workload keeps them in its directory under the data dir), owned by its user.
    fn secrets_of(record: &WorkloadRecord) -> (PathBuf, Option<(u32, u32)>) {
        let dir = record
            .stdout_log
            .parent()
            .map_or_else(|| PathBuf::from(SECRETS_DIR), |d| d.join(SECRETS_DIR));
        let owner = record
            .credentials
            .as_ref()
            .filter(|c| c.switched)
            .map(|c| (c.uid, c.gid));
        (dir, owner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaId, Tracked>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // a single insert or remove), so a poisoned lock is still usable.
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The exit watch of `record`'s process, if it is a child this runtime spawned.
    fn exit_watch(&self, record: &WorkloadRecord) -> Option<watch::Receiver<RuntimeObservation>> {
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
        exit: Option<&watch::Receiver<RuntimeObservation>>,
    ) -> Result<RuntimeObservation, RuntimeError> {
        if record.boot_id != self.boot_id {
            return Ok(RuntimeObservation::Gone);
        }
        if let Some(exit) = exit {
            return Ok(*exit.borrow());
        }
        // A container's record on a process-runtime node (the node's runtime was changed):
        // nothing of it is this runtime's.
        let Instance::Process {
            pid,
            start_time_ticks,
        } = record.instance
        else {
            return Ok(RuntimeObservation::Gone);
        };
        let stat = procfs::read_stat(pid)
            .map_err(|e| RuntimeError::io("read process status", proc_stat_path(pid), e))?;
        Ok(match stat {
            None => RuntimeObservation::Exited {
                code: None,
                signal: None,
            },
            Some(stat) if stat.start_time_ticks != start_time_ticks => RuntimeObservation::Gone,
            Some(stat) if stat.has_exited() => RuntimeObservation::Exited {
                code: None,
                signal: None,
            },
            Some(_) => RuntimeObservation::Running,
        })
    }

    /// The replica's tracked workload, if any, and whether it still runs.
    fn tracked_workload(
        &self,
        replica: &ReplicaId,
    ) -> Result<Option<(WorkloadRecord, bool)>, RuntimeError> {
        let existing = {
            let tracked = self.lock();
            tracked
                .get(replica)
                .map(|t| (t.record.clone(), t.exit.clone()))
        };
        let Some((record, exit)) = existing else {
            return Ok(None);
        };
        let running = self.liveness(&record, exit.as_ref())? == RuntimeObservation::Running;
        Ok(Some((record, running)))
    }

    fn refuse_if_running(&self, replica: &ReplicaId) -> Result<(), RuntimeError> {
        if let Some((record, true)) = self.tracked_workload(replica)? {
            return Err(RuntimeError::AlreadyRunning {
                replica: replica.clone(),
                pid: record.pid().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Whether any process of the workload's group still runs: the leader, or (once the
    /// leader is gone) any non-zombie member left behind.
    fn group_running(
        &self,
        record: &WorkloadRecord,
        exit: Option<&watch::Receiver<RuntimeObservation>>,
        pgid: u32,
    ) -> Result<bool, RuntimeError> {
        if self.liveness(record, exit)? == RuntimeObservation::Running {
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
        exit: Option<&watch::Receiver<RuntimeObservation>>,
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
        let Instance::Process { pid, .. } = record.instance else {
            return Ok(StopOutcome::AlreadyExited);
        };
        let exit = self.exit_watch(record);
        let exit = exit.as_ref();
        // Never signal a group whose number may now belong to someone else: after a reboot,
        // or when the recorded pid runs another program.
        let leader = self.liveness(record, exit)?;
        if leader == RuntimeObservation::Gone || !self.group_running(record, exit, pid)? {
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
            Ok(RuntimeObservation::Running) => {}
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
                t.record.instance == record.instance
                    || *exit.borrow() == RuntimeObservation::Running
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
        if let Some((record, running)) = self.tracked_workload(replica)? {
            if running {
                return Err(RuntimeError::StillRunning {
                    replica: replica.clone(),
                });
            }
            // An older agent's workload keeps its secrets beside its logs.
            secrets::remove(&Self::secrets_of(&record).0)?;
        }
        secrets::remove(&self.secrets_dir(replica))?;
        self.cgroups.remove(replica)?;
        self.lock().remove(replica);
        tracing::info!(%replica, "cleaned up replica");
        Ok(())
    }

    /// Removes `<root>/*/secrets` (and an older agent's `<data dir>/workloads/*/secrets`),
    /// whichever replicas they belong to.
    fn wipe_secrets_now(&self) -> Result<(), RuntimeError> {
        let mut first_error = None;
        for root in self.roots() {
            let entries = match std::fs::read_dir(root) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RuntimeError::io("list workloads", root, e)),
            };
            for entry in entries {
                let removed = entry
                    .map_err(|e| RuntimeError::io("list workloads", root, e))
                    .and_then(|entry| secrets::remove(&entry.path().join(SECRETS_DIR)));
                if let Err(e) = removed {
                    tracing::warn!(error = %e, "cannot remove secret files");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The directories replica directories are in: this runtime's root, and an older agent's.
    fn roots(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.layout.root).chain(self.legacy_root.iter())
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
    ) -> RuntimeFuture<'a, Result<RuntimeObservation, RuntimeError>> {
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
            let tracked = self
                .lock()
                .get(replica)
                .map(|t| Self::secrets_of(&t.record));
            let (dir, owner) = tracked.unwrap_or_else(|| (self.secrets_dir(replica), None));
            if secrets.is_empty() {
                secrets::remove(&dir)
            } else {
                secrets::write(replica, &dir, secrets, self.options.secrets_tmpfs, owner)
            }
        })
    }

    fn wipe_secrets(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.wipe_secrets_now() })
    }

    fn rotate_logs(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>> {
        let roots: Vec<PathBuf> = self.roots().cloned().collect();
        let max_bytes = self.options.log_max_bytes;
        let files_max = self.options.log_files_max;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                roots
                    .iter()
                    .map(|root| logs::rotate_all(root, max_bytes, files_max))
                    .fold(Ok(()), Result::and)
            })
            .await
            .map_err(|e| RuntimeError::io("rotate logs", "(blocking task)", io::Error::other(e)))?
        })
    }
}

const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Where an older agent kept replica directories, inside its data dir.
const LEGACY_WORKLOADS_DIR: &str = "workloads";

/// Says once, at start, what workloads run as on this box, and what stands in their way.
fn say_how_workloads_run(agent: AgentUser, root: &Path, volumes_root: &Path) {
    if !agent.is_root() {
        tracing::info!(
            uid = agent.uid,
            "the agent is not root: workloads run as its own user, without capabilities; specs that name another user, a group or capabilities fail to start"
        );
        return;
    }
    let closed = super::dirs::closed_ancestors(root);
    if let Some(first) = closed.first() {
        tracing::warn!(
            dir = %root.display(),
            closed = %first.display(),
            "other users cannot pass through a parent of the workloads dir: workloads running as their own user cannot open their secrets by path; give --workloads-dir a place under directories with o+x"
        );
    }
    // The root itself is made 0711 on first use; its parents must let users through too.
    let closed = super::dirs::closed_ancestors(volumes_root);
    if let Some(first) = closed.first() {
        tracing::warn!(
            dir = %volumes_root.display(),
            closed = %first.display(),
            "other users cannot pass through a parent of the volumes dir: process workloads running as their own user cannot reach their volumes; put the agent's data dir under directories with o+x"
        );
    }
}

fn proc_stat_path(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join("stat")
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
fn spawn_reaper(
    replica: ReplicaId,
    mut child: tokio::process::Child,
) -> watch::Receiver<RuntimeObservation> {
    let (sender, receiver) = watch::channel(RuntimeObservation::Running);
    tokio::spawn(async move {
        let observed = match child.wait().await {
            Ok(status) => RuntimeObservation::Exited {
                code: status.code(),
                signal: status.signal(),
            },
            Err(e) => {
                tracing::warn!(%replica, error = %e, "cannot wait for workload");
                RuntimeObservation::Exited {
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
