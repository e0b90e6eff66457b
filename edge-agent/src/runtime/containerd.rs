//! The container runtime: a workload is a container of an OCI image, run by containerd.
//!
//! The agent talks gRPC to containerd's socket (`--containerd-socket`) in a namespace of its
//! own (`warren`). Each replica is one container whose id is the replica id (`web.0`); its
//! `warren.workload_hash` label holds the spec hash it was made from. The container's task runs
//! under containerd's shim, not under the agent: the agent can exit, crash or be upgraded and
//! every container keeps running; the next agent [adopts](Runtime::adopt) it by id, label and
//! task pid, and restarts none.
//!
//! Files stay where the process runtime keeps them (`<root>/<replica>/…`, see `dirs`): the
//! task's standard output and error reach `stdout.log` and `stderr.log` through the log
//! writer the shim starts beside it (`logger`: the `warren` binary, `binary://` stdio; without
//! one, containerd's `file://` stdio sends both to `stdout.log`), so logs keep flowing while
//! no agent runs; secrets go to
//! `secrets/`, bind-mounted read-only at `/run/secrets`. Local volumes (`runtime::volumes`)
//! are bind-mounted at `/volumes/<target>`.
//!
//! - `client`: the connection, namespace and leases.
//! - `exec`: running an exec health check inside a replica's container.
//! - `layout`: importing an OCI image-layout tarball (`warren image load`).
//! - `logger`: the log writer the shim starts beside each task.
//! - `oom`: whether the kernel's OOM killer ended a container, from its memory cgroup.
//! - `options`: [`ContainerdOptions`].
//! - `registry_auth`: the `user:password` of a service's registry-auth secret, and what a
//!   registry's refusal means.
//! - `resolve`: finding a replica's image in the store, or pulling it in the background.
//! - `image`: names, manifests and configs; unpacking layers into snapshots.
//! - `pull`: pulling an image from an OCI registry, in the background of the start that
//!   found it missing.
//! - `spec`: the OCI runtime spec of a replica's container.
//! - `task`: containers and tasks: create, start, inspect, signal, delete.
//!
//! Must never: stop or delete a container because the agent exits; adopt a task that is not
//! the recorded one; touch containers outside its namespace.

mod client;
mod exec;
mod image;
mod layout;
mod logger;
mod oom;
mod options;
mod pull;
mod registry_auth;
mod resolve;
mod spec;
mod task;
#[doc(hidden)]
pub mod testkit;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::OnceCell;
use warren_api::ids::ReplicaId;

pub use self::client::{Connection, ContainerdError};
pub use self::exec::{ContainerExec, ExecError, ExecExit, exec_in_container};
pub use self::image::{ImageError, normalize_reference};
pub use self::layout::{ImportError, ImportedImage, import_layout};
pub use self::logger::{LOGGER_NAME, run as run_logger};
pub use self::options::ContainerdOptions;
pub use self::pull::{PullError, PullProgress, pull};
pub use self::registry_auth::RegistryCredentials;
pub use self::spec::{CGROUP_PARENT, SECRETS_MOUNT};
use self::task::TaskState;
use super::dirs::{Layout, SECRETS_DIR};
use super::volumes::{self, Volumes};
use super::{
    Credentials, Instance, Runtime, RuntimeError, RuntimeFuture, RuntimeObservation, StopOutcome,
    WorkloadHandle, WorkloadRecord, WorkloadRequest, logs, procfs, secrets,
};

/// containerd's socket unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// The containerd namespace Warren's containers and images live in.
pub const DEFAULT_NAMESPACE: &str = "warren";
/// The snapshotter containers' filesystems come from.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// Label holding the spec hash a container was made from.
pub const WORKLOAD_HASH_LABEL: &str = "warren.workload_hash";

/// The file in a replica's directory an exec health check's output goes to, for the reason
/// it failed.
const HEALTH_EXEC_LOG: &str = "health-exec.log";

/// The overflow user and group: who a root container's exec health checks run as.
const NOBODY: u32 = 65_534;

/// Signal numbers containerd's Kill call takes.
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// How long [`Runtime::stop`] waits for a task to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often [`Runtime::stop`] asks whether the task has exited.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Runs workloads as containerd containers. See the [module docs](self).
#[derive(Debug)]
pub struct ContainerdRuntime {
    options: ContainerdOptions,
    layout: Layout,
    volumes: Volumes,
    boot_id: String,
    /// Whether the agent is root: secrets on tmpfs and owned by the container's user.
    is_root: bool,
    /// Made on first use, so that the agent starts (and reports) while containerd is down.
    connection: OnceCell<Connection>,
    tracked: Mutex<HashMap<ReplicaId, WorkloadRecord>>,
    /// Background pulls by image name: a start that finds its image missing starts one and
    /// fails with its progress; a later start finds the image.
    pulls: Mutex<HashMap<String, pull::PullJob>>,
    /// Events for the node's event log since the reconciler last took them (images pulled).
    events: Mutex<Vec<warren_api::Event>>,
}

impl Drop for ContainerdRuntime {
    fn drop(&mut self) {
        let pulls = self.pulls.get_mut().unwrap_or_else(|e| e.into_inner());
        for job in pulls.values() {
            job.task.abort();
        }
    }
}

impl ContainerdRuntime {
    /// A runtime keeping per-replica files (logs, secrets) under `root`, created if missing.
    /// containerd is connected to on first use.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidOptions`], `root` not creatable, `/proc` unreadable.
    pub fn new(root: PathBuf, mut options: ContainerdOptions) -> Result<Self, RuntimeError> {
        options
            .validate()
            .map_err(|reason| RuntimeError::InvalidOptions { reason })?;
        // containerd and its shim resolve paths from their own working directory, and a
        // relative log path in a file:// URI would even be read as a host name: only
        // absolute paths go to them.
        let absolute =
            |p: &Path| std::path::absolute(p).map_err(|e| RuntimeError::io("resolve path", p, e));
        let root = absolute(&root)?;
        if let Some(resolv) = &options.resolv_conf {
            options.resolv_conf = Some(absolute(resolv)?);
        }
        let is_root = rustix::process::geteuid().is_root();
        let volumes_root = match &options.volumes_dir {
            Some(dir) => absolute(dir)?,
            None => volumes::default_volumes_dir(&root),
        };
        let volumes = Volumes {
            root: volumes_root,
            host: options.host_volumes.clone(),
        };
        let layout = Layout { root };
        layout.create_root(is_root)?;
        let boot_id = procfs::boot_id()
            .map_err(|e| RuntimeError::io("read boot id", "/proc/sys/kernel/random/boot_id", e))?;
        tracing::info!(socket = %options.socket.display(), namespace = options.namespace, root = %layout.root.display(), "workloads run as containerd containers");
        Ok(ContainerdRuntime {
            options,
            layout,
            volumes,
            boot_id,
            is_root,
            connection: OnceCell::new(),
            tracked: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
        })
    }

    /// The connection, made now if this is the first use.
    ///
    /// # Errors
    /// [`ContainerdError::Connect`] when containerd does not answer; the next call tries again.
    pub async fn connection(&self) -> Result<&Connection, ContainerdError> {
        self.connection
            .get_or_try_init(|| Connection::connect(&self.options.socket, &self.options.namespace))
            .await
    }

    /// Imports an OCI image-layout tarball into this runtime's namespace and unpacks it.
    ///
    /// # Errors
    /// [`ImportError`].
    pub async fn import(&self, tarball: &Path) -> Result<Vec<ImportedImage>, ImportError> {
        let conn = self.connection().await?;
        import_layout(conn, &self.options.snapshotter, tarball).await
    }

    /// The directory holding `replica`'s logs and secrets.
    pub fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.layout.replica_dir(replica)
    }

    fn secrets_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.replica_dir(replica).join(SECRETS_DIR)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaId, WorkloadRecord>> {
        // Every update is one insert or remove: a poisoned map is still whole.
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn start_now(&self, request: &WorkloadRequest) -> Result<WorkloadHandle, RuntimeError> {
        let Some(reference) = request.image.as_deref() else {
            return Err(RuntimeError::Unsupported {
                what: "a native process on a containerd node: give the service an --image"
                    .to_owned(),
            });
        };
        for (name, _) in &request.secrets {
            secrets::validate_name(&request.replica, name)?;
        }
        let conn = self.connection().await?;
        let id = request.replica.to_string();
        let running = match task::state(conn, &id).await? {
            TaskState::Running { pid } => Some(pid),
            _ => None,
        };
        if running.is_none() {
            task::remove_all(conn, &self.options.snapshotter, &id).await?;
        }
        let (image, pulled) = self
            .resolve_image(conn, reference, request.registry_auth.as_ref())
            .await?;
        if let Some(summary) = pulled {
            self.note(warren_api::Event {
                at_ms: warren_api::clock::unix_now_ms(),
                replica: Some(request.replica.clone()),
                kind: warren_api::EventKind::ImagePulled,
                message: summary,
            });
        }
        let process = spec::container_process(request, &image.config.config)?;
        let stdout_log = self.replica_dir(&request.replica).join(logs::STDOUT_LOG);
        if let Some(pid) = running {
            return self
                .take_over(conn, request, pid, stdout_log, &process)
                .await;
        }
        let secrets_dir = self.prepare_files(request, (process.uid, process.gid))?;
        let owner = (self.is_root && process.uid != 0).then_some((process.uid, process.gid));
        let volume_dirs = self
            .volumes
            .prepare(&request.replica, &request.volumes, owner)?;
        drop(logs::open_append(&stdout_log)?);
        let files = spec::HostFiles {
            secrets_dir: secrets_dir.as_deref(),
            resolv_conf: self.options.resolv_conf.as_deref(),
            volume_dirs: &volume_dirs,
        };
        let runtime_spec = spec::runtime_spec(request, &process, files);
        let made = task::Create {
            id: &id,
            workload_hash: request.workload_hash,
            image: &image,
            snapshotter: &self.options.snapshotter,
            spec: &runtime_spec,
            log: &stdout_log,
            logger: self.options.logger.as_deref(),
        };
        let pid = made.run(conn).await?;
        let record = self.record(request, id, pid, stdout_log, (process.uid, process.gid));
        self.lock().insert(request.replica.clone(), record.clone());
        tracing::info!(replica = %request.replica, pid, image = image.name, "started container");
        Ok(WorkloadHandle::new(record))
    }

    /// The replica's container already runs (a start whose caller went away before it got
    /// the handle, a record the agent lost): the same spec is taken over as it runs; another
    /// spec's is the caller's to stop.
    async fn take_over(
        &self,
        conn: &Connection,
        request: &WorkloadRequest,
        pid: u32,
        stdout_log: PathBuf,
        process: &spec::ContainerProcess,
    ) -> Result<WorkloadHandle, RuntimeError> {
        let id = request.replica.to_string();
        if task::workload_hash(conn, &id).await? != Some(request.workload_hash) {
            return Err(RuntimeError::AlreadyRunning {
                replica: request.replica.clone(),
                pid,
            });
        }
        let record = self.record(request, id, pid, stdout_log, (process.uid, process.gid));
        self.lock().insert(request.replica.clone(), record.clone());
        tracing::info!(replica = %request.replica, pid, "took over the replica's running container");
        Ok(WorkloadHandle::new(record))
    }

    /// Makes the replica's directory and writes its secrets, owned by the container's user
    /// (root agent); returns the secrets directory when there are secrets.
    fn prepare_files(
        &self,
        request: &WorkloadRequest,
        (uid, gid): (u32, u32),
    ) -> Result<Option<PathBuf>, RuntimeError> {
        let dir = self.replica_dir(&request.replica);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io("create replica directory", &dir, e))?;
        let secrets_dir = self.secrets_dir(&request.replica);
        if request.secrets.is_empty() {
            secrets::remove(&secrets_dir)?;
            return Ok(None);
        }
        let owner = (self.is_root && uid != 0).then_some((uid, gid));
        secrets::write(
            &request.replica,
            &secrets_dir,
            &request.secrets,
            self.is_root,
            owner,
        )?;
        Ok(Some(secrets_dir))
    }

    fn record(
        &self,
        request: &WorkloadRequest,
        id: String,
        pid: u32,
        log: PathBuf,
        (uid, gid): (u32, u32),
    ) -> WorkloadRecord {
        // Exec health checks run inside the container (`exec_target`); these credentials
        // describe the container's user, and are what a check would run as on the host (with
        // no capability, as nobody for a container running as its own root), never the agent.
        let (uid, gid) = if uid == 0 {
            (NOBODY, NOBODY)
        } else {
            (uid, gid)
        };
        let credentials = Credentials {
            uid,
            gid,
            groups: vec![gid],
            capabilities: 0,
            switched: self.is_root,
        };
        let started_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WorkloadRecord {
            replica: request.replica.clone(),
            workload_hash: request.workload_hash,
            boot_id: self.boot_id.clone(),
            started_at_ms,
            stdout_log: log.clone(),
            stderr_log: log,
            instance: Instance::Container { id, pid },
            working_dir: self.replica_dir(&request.replica),
            credentials: Some(credentials),
        }
    }

    async fn observe_now(
        &self,
        record: &WorkloadRecord,
    ) -> Result<RuntimeObservation, RuntimeError> {
        let Instance::Container { id, pid } = &record.instance else {
            return Ok(RuntimeObservation::Gone);
        };
        if record.boot_id != self.boot_id {
            return Ok(RuntimeObservation::Gone);
        }
        let conn = self.connection().await?;
        Ok(match task::state(conn, id).await? {
            TaskState::Running { pid: now } if now == *pid => RuntimeObservation::Running,
            TaskState::Exited { pid: now, status } if now == *pid => {
                match self.oom_kill(&record.replica, status) {
                    Some(kill) => RuntimeObservation::OomKilled {
                        memory_limit_bytes: kill.memory_limit_bytes,
                    },
                    None => exit_observation(status),
                }
            }
            TaskState::Running { .. } | TaskState::Exited { .. } => RuntimeObservation::Gone,
            TaskState::NoTask if task::container_exists(conn, id).await? => {
                RuntimeObservation::Exited {
                    code: None,
                    signal: None,
                }
            }
            TaskState::NoTask => RuntimeObservation::Gone,
        })
    }

    /// The OOM kill that ended the replica's task, which exited with `status`: a SIGKILL
    /// (as runc reports it) in a memory cgroup (which runc keeps until the task is deleted)
    /// whose OOM killer struck. A task that outlived the kill of one of its processes exits
    /// on its own terms and is not an OOM kill.
    fn oom_kill(&self, replica: &ReplicaId, status: u32) -> Option<oom::OomKill> {
        if status != 128 + SIGKILL {
            return None;
        }
        oom::find(&self.options.cgroup_root, &replica.to_string())
    }

    async fn stop_now(
        &self,
        record: &WorkloadRecord,
        grace: Duration,
    ) -> Result<StopOutcome, RuntimeError> {
        let Instance::Container { id, .. } = &record.instance else {
            return Ok(StopOutcome::AlreadyExited);
        };
        let replica = &record.replica;
        if self.observe_now(record).await? != RuntimeObservation::Running {
            return Ok(StopOutcome::AlreadyExited);
        }
        let conn = self.connection().await?;
        tracing::info!(%replica, grace_ms = grace.as_millis(), "stopping container");
        task::kill(conn, id, SIGTERM).await?;
        let outcome = if wait_exit(conn, id, grace).await? {
            StopOutcome::Terminated
        } else {
            tracing::warn!(%replica, "container outlived its grace period; killing it");
            task::kill(conn, id, SIGKILL).await?;
            if !wait_exit(conn, id, KILL_WAIT).await? {
                return Err(RuntimeError::NotStopped {
                    replica: replica.clone(),
                    pid: record.pid().unwrap_or_default(),
                });
            }
            StopOutcome::Killed
        };
        tracing::info!(%replica, ?outcome, "stopped container");
        Ok(outcome)
    }

    async fn adopt_now(&self, record: &WorkloadRecord) -> Option<WorkloadHandle> {
        let Instance::Container { id, .. } = &record.instance else {
            return None;
        };
        let replica = &record.replica;
        let conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(%replica, error = %e, "not adopting container");
                return None;
            }
        };
        match task::workload_hash(conn, id).await {
            Ok(Some(hash)) if hash == record.workload_hash => {}
            Ok(found) => {
                tracing::info!(%replica, ?found, "not adopting container: made from another spec");
                return None;
            }
            Err(e) => {
                tracing::warn!(%replica, error = %e, "not adopting container");
                return None;
            }
        }
        match self.observe_now(record).await {
            Ok(RuntimeObservation::Running) => {}
            observed => {
                tracing::info!(%replica, ?observed, "not adopting container: not running");
                return None;
            }
        }
        self.lock().insert(replica.clone(), record.clone());
        tracing::info!(%replica, pid = ?record.pid(), "adopted running container");
        Some(WorkloadHandle::new(record.clone()))
    }

    async fn cleanup_now(&self, replica: &ReplicaId) -> Result<(), RuntimeError> {
        let conn = self.connection().await?;
        let id = replica.to_string();
        if let TaskState::Running { .. } = task::state(conn, &id).await? {
            return Err(RuntimeError::StillRunning {
                replica: replica.clone(),
            });
        }
        task::remove_all(conn, &self.options.snapshotter, &id).await?;
        secrets::remove(&self.secrets_dir(replica))?;
        remove_cgroup_dirs(&self.options.cgroup_root, &id);
        self.lock().remove(replica);
        tracing::info!(%replica, "cleaned up container");
        Ok(())
    }

    fn wipe_secrets_now(&self) -> Result<(), RuntimeError> {
        let root = &self.layout.root;
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(RuntimeError::io("list workloads", root, e)),
        };
        let mut first_error = None;
        for entry in entries {
            let removed = entry
                .map_err(|e| RuntimeError::io("list workloads", root, e))
                .and_then(|entry| secrets::remove(&entry.path().join(SECRETS_DIR)));
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove secret files");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A stopped task's exit status as the agent reports it: runc reports death by signal N as
/// 128 + N.
fn exit_observation(status: u32) -> RuntimeObservation {
    match status {
        129..=192 => RuntimeObservation::Exited {
            code: None,
            signal: Some(status as i32 - 128),
        },
        _ => RuntimeObservation::Exited {
            code: Some(status as i32),
            signal: None,
        },
    }
}

/// Polls until the task is no longer running or `wait` has passed; returns whether it went.
async fn wait_exit(conn: &Connection, id: &str, wait: Duration) -> Result<bool, RuntimeError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if !matches!(task::state(conn, id).await?, TaskState::Running { .. }) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(STOP_POLL_INTERVAL).await;
    }
}

/// Removes the (empty) cgroup directories runc leaves for container `id` under every
/// controller; what cannot be removed is logged and left.
fn remove_cgroup_dirs(cgroup_root: &Path, id: &str) {
    let Ok(controllers) = std::fs::read_dir(cgroup_root) else {
        return;
    };
    for controller in controllers.flatten() {
        let dir = controller.path().join(CGROUP_PARENT).join(id);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove container cgroup")
            }
        }
    }
}

impl Runtime for ContainerdRuntime {
    fn start<'a>(
        &'a self,
        request: &'a WorkloadRequest,
    ) -> RuntimeFuture<'a, Result<WorkloadHandle, RuntimeError>> {
        Box::pin(self.start_now(request))
    }

    fn observe<'a>(
        &'a self,
        handle: &'a WorkloadHandle,
    ) -> RuntimeFuture<'a, Result<RuntimeObservation, RuntimeError>> {
        Box::pin(self.observe_now(handle.record()))
    }

    fn stop<'a>(
        &'a self,
        handle: &'a WorkloadHandle,
        grace: Duration,
    ) -> RuntimeFuture<'a, Result<StopOutcome, RuntimeError>> {
        Box::pin(self.stop_now(handle.record(), grace))
    }

    fn adopt<'a>(
        &'a self,
        record: &'a WorkloadRecord,
    ) -> RuntimeFuture<'a, Option<WorkloadHandle>> {
        Box::pin(self.adopt_now(record))
    }

    fn cleanup<'a>(
        &'a self,
        replica: &'a ReplicaId,
    ) -> RuntimeFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.cleanup_now(replica))
    }

    fn write_secrets<'a>(
        &'a self,
        replica: &'a ReplicaId,
        secrets: &'a [(String, Vec<u8>)],
    ) -> RuntimeFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            // The files keep the owner start gave the directory: the container's user.
            let dir = self.secrets_dir(replica);
            let owner = std::fs::metadata(&dir)
                .ok()
                .map(|m| {
                    (
                        std::os::unix::fs::MetadataExt::uid(&m),
                        std::os::unix::fs::MetadataExt::gid(&m),
                    )
                })
                .filter(|&(uid, _)| self.is_root && uid != 0);
            secrets::write(
                replica,
                &self.secrets_dir(replica),
                secrets,
                self.is_root,
                owner,
            )
        })
    }

    fn wipe_secrets(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.wipe_secrets_now() })
    }

    fn take_events(&self) -> Vec<warren_api::Event> {
        std::mem::take(&mut *self.lock_events())
    }

    fn exec_target(&self, record: &WorkloadRecord) -> Option<ContainerExec> {
        let Instance::Container { id, .. } = &record.instance else {
            return None;
        };
        Some(ContainerExec {
            socket: self.options.socket.clone(),
            namespace: self.options.namespace.clone(),
            container_id: id.clone(),
            output: self.replica_dir(&record.replica).join(HEALTH_EXEC_LOG),
        })
    }

    fn rotate_logs(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>> {
        let root = self.layout.root.clone();
        let (max_bytes, files_max) = (self.options.log_max_bytes, self.options.log_files_max);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || logs::rotate_all(&root, max_bytes, files_max))
                .await
                .map_err(|e| RuntimeError::io("rotate logs", PathBuf::new(), io::Error::other(e)))?
        })
    }
}
