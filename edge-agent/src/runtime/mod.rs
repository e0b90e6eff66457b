//! Runtimes: what actually starts, watches and stops a replica's workload on this box.
//!
//! The agent talks to every runtime through the [`Runtime`] trait, holding it as
//! `Arc<dyn Runtime>`. The trait's vocabulary is runtime-neutral: a [`WorkloadRequest`] goes
//! in, an opaque [`WorkloadHandle`] comes out, and the handle's [`WorkloadRecord`] is what the
//! agent persists in its cache so that it can [`adopt`](Runtime::adopt) the workload again
//! after its own restart instead of starting a second copy.
//!
//! - [`process`]: the native process runtime ([`ProcessRuntime`]): each workload in its own
//!   process group, logs appended to files, SIGTERM then SIGKILL, adoption by pid + start time.
//! - [`containerd`]: the container runtime ([`ContainerdRuntime`]): each workload a container
//!   of an OCI image under containerd's shim, adoption by container id + spec-hash label.
//! - `procfs`, `logs`, `secrets`, `cgroup`: the process runtime's pieces (reading `/proc`,
//!   log rotation, secret files, cgroup v1 limits).
//! - [`volumes`]: local volumes, one directory per volume on the node, kept across
//!   replicas' restarts; both runtimes mount them from there.
//! - [`credentials`], `users`, `privileges`, `dirs`, `working_dir`: who a workload runs as
//!   (a spec's `user`, `group`, `cap_add` on this box), dropping to it in the child, the
//!   replica directories and their owners, and where a workload may start.
//!
//! Must never: kill a workload because the agent exits or drops a runtime; adopt a process
//! that merely reuses a recorded pid; log a secret's content; run a workload as root, or with
//! a capability, its spec did not ask for.

mod cgroup;
pub mod containerd;
pub mod credentials;
mod dirs;
pub(crate) mod logs;
pub(crate) mod privileges;
pub mod process;
mod procfs;
mod secrets;
mod users;
pub mod volumes;
mod working_dir;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warren_api::ids::ReplicaId;
use warren_api::service::{ServiceSpec, VolumeMount, Workload};

pub use containerd::{ContainerdOptions, ContainerdRuntime};
pub use credentials::Credentials;
pub use process::{ProcessRuntime, ProcessRuntimeOptions, default_workloads_dir};

/// The future every [`Runtime`] operation returns: boxed so that the trait stays usable as
/// `dyn Runtime`.
pub type RuntimeFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts, observes, stops and re-attaches to workloads.
///
/// Implementations must keep workloads independent of the agent: dropping the runtime, or the
/// agent process dying, leaves every workload running.
///
/// Operations on different replicas may run concurrently. The caller (the reconcile loop)
/// runs one operation at a time per replica; two concurrent `start`s of one replica may
/// both succeed.
pub trait Runtime: Send + Sync + fmt::Debug {
    /// Starts the workload described by `request`.
    ///
    /// # Errors
    /// [`RuntimeError::CommandNotFound`] and friends when the workload cannot be started;
    /// [`RuntimeError::AlreadyRunning`] when this runtime already runs the replica.
    ///
    /// # Cancel safety
    /// The process is spawned and registered without an await in between: dropping the
    /// future either starts nothing or leaves a tracked, running workload.
    fn start<'a>(
        &'a self,
        request: &'a WorkloadRequest,
    ) -> RuntimeFuture<'a, Result<WorkloadHandle, RuntimeError>>;

    /// Reports whether the workload is running, has exited, or is gone without a trace.
    ///
    /// # Errors
    /// Only when the runtime cannot tell (e.g. `/proc` unreadable).
    ///
    /// # Cancel safety
    /// Safe: observing changes nothing.
    fn observe<'a>(
        &'a self,
        handle: &'a WorkloadHandle,
    ) -> RuntimeFuture<'a, Result<RuntimeObservation, RuntimeError>>;

    /// Asks the workload to stop (SIGTERM to its process group), forces it (SIGKILL) once
    /// `grace` has passed, and reports which was needed.
    ///
    /// # Errors
    /// [`RuntimeError::Signal`] when a signal cannot be sent; [`RuntimeError::NotStopped`]
    /// when the workload survives even SIGKILL for a while (uninterruptible sleep).
    ///
    /// # Cancel safety
    /// Dropping the future mid-grace leaves the workload signalled but perhaps running;
    /// calling `stop` again is safe and signals it again.
    fn stop<'a>(
        &'a self,
        handle: &'a WorkloadHandle,
        grace: Duration,
    ) -> RuntimeFuture<'a, Result<StopOutcome, RuntimeError>>;

    /// Re-attaches to a workload recorded by an earlier instance of the agent, if that very
    /// workload is still running: same boot, same process, not a reused id.
    ///
    /// # Cancel safety
    /// Safe: adoption only reads and registers.
    fn adopt<'a>(&'a self, record: &'a WorkloadRecord)
    -> RuntimeFuture<'a, Option<WorkloadHandle>>;

    /// Forgets a replica that is stopped for good: removes its secrets and resource limits.
    /// Logs are kept for inspection.
    ///
    /// # Errors
    /// [`RuntimeError::StillRunning`] when the replica's workload still runs (stop it
    /// first); I/O errors removing files.
    ///
    /// # Cancel safety
    /// Safe to repeat: every step is idempotent.
    fn cleanup<'a>(&'a self, replica: &'a ReplicaId)
    -> RuntimeFuture<'a, Result<(), RuntimeError>>;

    /// Replaces `replica`'s secret files with `secrets` while its workload may be running:
    /// each file is swapped atomically, so a workload that reads it again sees the new value
    /// and never half of one. Files of secrets not in `secrets` are removed.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidRequest`] for a file name that is not a plain name; I/O errors.
    ///
    /// # Cancel safety
    /// Safe to repeat; a dropped call leaves every file either old or new.
    fn write_secrets<'a>(
        &'a self,
        replica: &'a ReplicaId,
        secrets: &'a [(String, Vec<u8>)],
    ) -> RuntimeFuture<'a, Result<(), RuntimeError>>;

    /// Removes the secret files of every replica this runtime has files for, tracked or not:
    /// the node has left the cluster. Stop the workloads first.
    ///
    /// # Errors
    /// The first I/O error met; the other replicas' files are still removed.
    ///
    /// # Cancel safety
    /// Safe to repeat: every step is idempotent.
    fn wipe_secrets(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>>;

    /// Keeps the workloads' log files within their size bound; the agent calls this
    /// periodically. A runtime whose logs are bounded elsewhere does nothing.
    ///
    /// # Errors
    /// The first I/O error met; the other files are still rotated.
    ///
    /// # Cancel safety
    /// Safe: the work runs on a blocking thread and finishes even if the future is dropped.
    fn rotate_logs(&self) -> RuntimeFuture<'_, Result<(), RuntimeError>>;

    /// Where the workload's exec health checks run when not on the host: inside its
    /// container. `None` (the default): on the host, as the workload's user.
    fn exec_target(&self, record: &WorkloadRecord) -> Option<containerd::ContainerExec> {
        let _ = record;
        None
    }

    /// What happened inside the runtime since the last call that the node's events should
    /// say (an image pulled for a replica). The default: nothing.
    fn take_events(&self) -> Vec<warren_api::Event> {
        Vec::new()
    }
}

/// Everything a runtime needs to start one replica.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadRequest {
    /// The replica this workload is.
    pub replica: ReplicaId,
    /// The image reference for a container workload; `None` for a native process.
    pub image: Option<String>,
    /// [`ServiceSpec::workload_hash`] of the spec it is started from; recorded so that the
    /// agent can tell later whether a running workload matches the current spec.
    pub workload_hash: u64,
    /// The program and its arguments; not run through a shell. Never empty for a process; for
    /// an image, the arguments to its entrypoint (empty: the image's own).
    pub argv: Vec<String>,
    /// The workload's whole environment (the agent's own is not inherited), except `PATH`,
    /// which defaults to the runtime's, and `WARREN_SECRETS_DIR`, which the runtime sets.
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` means the replica's own directory, and a relative path is
    /// taken relative to it.
    pub working_dir: Option<PathBuf>,
    /// The user to run as (a name or number); `None`: a user of the replica's own.
    pub user: Option<String>,
    /// The group to run as; `None`: the user's primary group.
    pub group: Option<String>,
    /// Capabilities to keep (`NET_BIND_SERVICE`, `ALL`); every other one is dropped.
    pub cap_add: Vec<String>,
    /// Secret files: (file name, plaintext). Never logged.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// Local volumes to mount ([`volumes`]): each one's directory is made on first use and
    /// kept, and the workload finds it by [`volumes::env_name`] of its target.
    pub volumes: Vec<VolumeMount>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a core.
    pub cpu_millis: Option<u32>,
    /// The secret the image is pulled with, when the spec names one. Never logged.
    pub registry_auth: Option<RegistryAuthSecret>,
}

/// The secret holding a service's registry credentials (see
/// [`warren_api::service::REGISTRY_AUTH_TARGET`]): its name, to say which one is wrong, and
/// its plaintext. `Debug` shows the name only.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuthSecret {
    /// The secret's name.
    pub secret: String,
    /// What it holds: `user:password`.
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for RegistryAuthSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuthSecret")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// Takes the registry credentials out of a spec's opened secrets, `(target, plaintext)` in
/// the order of `spec.secrets`: they are for the pull, never a file the workload sees.
pub fn take_registry_auth(
    spec: &ServiceSpec,
    secrets: &mut Vec<(String, Vec<u8>)>,
) -> Option<RegistryAuthSecret> {
    let reference = spec.secrets.iter().find(|s| s.is_registry_auth())?;
    let idx = secrets
        .iter()
        .position(|(target, _)| *target == reference.target)?;
    let (_, plaintext) = secrets.remove(idx);
    Some(RegistryAuthSecret {
        secret: reference.name.clone(),
        plaintext,
    })
}

impl fmt::Debug for WorkloadRequest {
    /// Shows secret names and sizes, never their content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets: Vec<(&str, usize)> = self
            .secrets
            .iter()
            .map(|(name, plaintext)| (name.as_str(), plaintext.len()))
            .collect();
        f.debug_struct("WorkloadRequest")
            .field("replica", &self.replica)
            .field("image", &self.image)
            .field("workload_hash", &self.workload_hash)
            .field("argv", &self.argv)
            .field("env", &self.env)
            .field("working_dir", &self.working_dir)
            .field("user", &self.user)
            .field("group", &self.group)
            .field("cap_add", &self.cap_add)
            .field("secrets", &secrets)
            .field("volumes", &self.volumes)
            .field("memory_bytes", &self.memory_bytes)
            .field("cpu_millis", &self.cpu_millis)
            .field("registry_auth", &self.registry_auth)
            .finish()
    }
}

impl WorkloadRequest {
    /// The request for `replica` of service `spec` (a process or an image), with the
    /// plaintext of the secrets it references (registry credentials among them go to
    /// `registry_auth`, not to the files). Which runtime can run it is the runtime's to say:
    /// the process runtime refuses images.
    pub fn for_spec(
        replica: ReplicaId,
        spec: &ServiceSpec,
        mut secrets: Vec<(String, Vec<u8>)>,
    ) -> Self {
        let registry_auth = take_registry_auth(spec, &mut secrets);
        let (image, argv, working_dir) = match &spec.workload {
            Workload::Process(process) => (
                None,
                process.command.clone(),
                process.working_dir.as_ref().map(PathBuf::from),
            ),
            Workload::Image(image) => (Some(image.reference.clone()), image.args.clone(), None),
        };
        WorkloadRequest {
            replica,
            image,
            workload_hash: spec.workload_hash(),
            argv,
            env: spec.env.clone(),
            working_dir,
            user: spec.user.clone(),
            group: spec.group.clone(),
            cap_add: spec.cap_add.clone(),
            secrets,
            volumes: spec.volumes.clone(),
            memory_bytes: spec.resources.memory_bytes,
            cpu_millis: spec.resources.cpu_millis,
            registry_auth,
        }
    }
}

/// What the agent persists about a started workload, to find it again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// The replica.
    pub replica: ReplicaId,
    /// The spec hash the workload was started from.
    pub workload_hash: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started: a record from an earlier boot
    /// describes a workload that no longer exists, whatever its pid says now.
    pub boot_id: String,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// File receiving the workload's standard output.
    pub stdout_log: PathBuf,
    /// File receiving the workload's standard error.
    pub stderr_log: PathBuf,
    /// Runtime-specific identity of the running instance.
    pub instance: Instance,
    /// Where it started (its exec health checks run there too).
    pub working_dir: PathBuf,
    /// Who it runs as (its exec health checks run so too); `None` for a workload an agent
    /// from before users were set started: it runs as that agent did.
    pub credentials: Option<Credentials>,
}

impl WorkloadRecord {
    /// The process id: a native process's, or a container's init process's.
    pub fn pid(&self) -> Option<u32> {
        match self.instance {
            Instance::Process { pid, .. } | Instance::Container { pid, .. } => Some(pid),
        }
    }
}

/// Runtime-specific identity of a running workload. Each runtime adds its own variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instance {
    /// A native process, leader of its own process group.
    Process {
        /// Process id, equal to the process group id.
        pid: u32,
        /// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot. With the
        /// boot id, it tells the recorded process from a later one that reuses its pid.
        start_time_ticks: u64,
    },
    /// A containerd container whose task runs under containerd's shim.
    Container {
        /// Container id (the replica id) in the runtime's containerd namespace; its
        /// `warren.workload_hash` label holds the spec hash it was made from.
        id: String,
        /// Host pid of the task's init process: a task with another pid is a later one.
        pid: u32,
    },
}

/// A running (or once running) workload, as returned by [`Runtime::start`] and
/// [`Runtime::adopt`]. Opaque apart from its [`WorkloadRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadHandle {
    record: WorkloadRecord,
}

impl WorkloadHandle {
    fn new(record: WorkloadRecord) -> Self {
        WorkloadHandle { record }
    }

    /// What to persist to adopt this workload later.
    pub fn record(&self) -> &WorkloadRecord {
        &self.record
    }

    /// The replica.
    pub fn replica(&self) -> &ReplicaId {
        &self.record.replica
    }
}

/// The state of a workload as a runtime sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeObservation {
    /// Still running.
    Running,
    /// Has exited. `code` for a normal exit, `signal` when a signal ended it; both `None`
    /// when the runtime cannot know (a process adopted from an earlier agent).
    Exited {
        /// Exit status of a normal exit.
        code: Option<i32>,
        /// Number of the signal that terminated it.
        signal: Option<i32>,
    },
    /// No trace of it: a record from an earlier boot, or its pid now belongs to another
    /// process.
    Gone,
    /// Has exited because the kernel's OOM killer ended it for exceeding its memory limit.
    OomKilled {
        /// The limit it ran under, when the runtime can still read it.
        memory_limit_bytes: Option<u64>,
    },
}

impl RuntimeObservation {
    /// Whether the workload has ended, by an exit of its own or by the OOM killer.
    pub fn has_exited(self) -> bool {
        matches!(
            self,
            RuntimeObservation::Exited { .. } | RuntimeObservation::OomKilled { .. }
        )
    }
}

/// `OOM-killed (memory limit 64 MiB)`: how people are told the OOM killer ended a workload.
pub fn describe_oom_kill(memory_limit_bytes: Option<u64>) -> String {
    const MIB: u64 = 1 << 20;
    match memory_limit_bytes {
        Some(bytes) if bytes % MIB == 0 => format!("OOM-killed (memory limit {} MiB)", bytes / MIB),
        Some(bytes) => format!("OOM-killed (memory limit {bytes} bytes)"),
        None => "OOM-killed (memory limit reached)".to_owned(),
    }
}

/// How [`Runtime::stop`] ended the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// It was no longer running; no signal was sent.
    AlreadyExited,
    /// It exited within the grace period after SIGTERM.
    Terminated,
    /// It outlived the grace period and was killed with SIGKILL.
    Killed,
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The program does not exist (or, for a script, its interpreter does not).
    #[error("command not found: {command}")]
    CommandNotFound {
        /// `argv[0]`.
        command: String,
    },
    /// The program exists but may not be executed.
    #[error("permission denied: {command}")]
    PermissionDenied {
        /// `argv[0]`.
        command: String,
    },
    /// The workload cannot run as its spec asks on this box: an unknown user or group, or
    /// an agent that is not root asked for another user or for capabilities.
    #[error("cannot run {replica} as asked: {reason}")]
    RunAs {
        /// The replica.
        replica: ReplicaId,
        /// What is wrong, in one line.
        reason: String,
    },
    /// The working directory does not exist or is not a directory.
    #[error("working directory not found: {}", path.display())]
    WorkingDirNotFound {
        /// The resolved working directory.
        path: PathBuf,
    },
    /// The request itself is unusable (empty argv, a secret file name with a `/`, …).
    #[error("invalid workload request for {replica}: {reason}")]
    InvalidRequest {
        /// The replica.
        replica: ReplicaId,
        /// What is wrong.
        reason: String,
    },
    /// The runtime's own settings are unusable.
    #[error("invalid runtime options: {reason}")]
    InvalidOptions {
        /// Which setting and why.
        reason: String,
    },
    /// The runtime cannot run this kind of workload.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What was asked for.
        what: String,
    },
    /// This runtime already runs a workload for the replica.
    #[error("replica {replica} is already running (pid {pid})")]
    AlreadyRunning {
        /// The replica.
        replica: ReplicaId,
        /// Its running process.
        pid: u32,
    },
    /// The operation needs the workload stopped first.
    #[error("replica {replica} is still running; stop it first")]
    StillRunning {
        /// The replica.
        replica: ReplicaId,
    },
    /// Spawning failed for another reason.
    #[error("cannot start {command}: {source}")]
    Spawn {
        /// `argv[0]`.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// Sending a signal failed (other than "no such process", which means it exited).
    #[error("cannot signal process group {pgid}: {source}")]
    Signal {
        /// The process group.
        pgid: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The workload still runs after SIGKILL and a wait.
    #[error("replica {replica} (pid {pid}) did not exit after SIGKILL")]
    NotStopped {
        /// The replica.
        replica: ReplicaId,
        /// Its process.
        pid: u32,
    },
    /// A cgroup could not be set up although cgroups are available.
    #[error("cgroup {}: {source}", path.display())]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The image is neither in containerd's store nor obtainable now; the agent retries.
    #[error("image unavailable: {reference}: {reason}; retrying")]
    ImageUnavailable {
        /// The image reference of the spec.
        reference: String,
        /// Why, in one line.
        reason: String,
    },
    /// containerd failed or cannot be reached.
    #[error(transparent)]
    Containerd(#[from] containerd::ContainerdError),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "open log file".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl RuntimeError {
    /// Whether trying the same operation again, unchanged, may succeed. Wrong requests,
    /// missing programs and state conflicts are not retryable; OS failures are.
    pub fn is_retryable(&self) -> bool {
        match self {
            RuntimeError::CommandNotFound { .. }
            | RuntimeError::PermissionDenied { .. }
            | RuntimeError::WorkingDirNotFound { .. }
            | RuntimeError::InvalidRequest { .. }
            | RuntimeError::RunAs { .. }
            | RuntimeError::InvalidOptions { .. }
            | RuntimeError::Unsupported { .. }
            | RuntimeError::AlreadyRunning { .. }
            | RuntimeError::StillRunning { .. } => false,
            RuntimeError::Spawn { .. }
            | RuntimeError::Signal { .. }
            | RuntimeError::NotStopped { .. }
            | RuntimeError::Cgroup { .. }
            | RuntimeError::ImageUnavailable { .. }
            | RuntimeError::Containerd(_)
            | RuntimeError::Io { .. } => true,
        }
    }

    fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RuntimeError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use warren_api::ids::ServiceName;
    use warren_api::service::{ImageSpec, ProcessSpec, Resources};

    use super::*;

    fn replica() -> ReplicaId {
        ReplicaId::replicated(ServiceName::new("web").unwrap(), 0)
    }

    #[test]
    fn request_from_process_spec() {
        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["server".to_owned(), "--port=80".to_owned()],
                working_dir: Some("/srv".to_owned()),
            }),
        );
        spec.env.insert("MODE".to_owned(), "edge".to_owned());
        spec.resources = Resources {
            memory_bytes: Some(1 << 20),
            cpu_millis: Some(250),
        };
        let secrets = vec![("token".to_owned(), b"s3cret".to_vec())];
        let request = WorkloadRequest::for_spec(replica(), &spec, secrets);
        assert_eq!(request.image, None);
        assert_eq!(request.workload_hash, spec.workload_hash());
        assert_eq!(request.argv, ["server", "--port=80"]);
        assert_eq!(request.working_dir, Some(PathBuf::from("/srv")));
        assert_eq!(request.env["MODE"], "edge");
        assert_eq!(request.memory_bytes, Some(1 << 20));
        assert_eq!(request.cpu_millis, Some(250));
        // Debug output names secrets but never shows them.
        let debug = format!("{request:?}");
        assert!(debug.contains("\"token\", 6"), "{debug}");
        assert!(!debug.contains("s3cret"), "{debug}");

        let image = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Image(ImageSpec {
                reference: "nginx:1".to_owned(),
                args: vec![],
            }),
        );
        let request = WorkloadRequest::for_spec(replica(), &image, vec![]);
        assert_eq!(request.image.as_deref(), Some("nginx:1"));
        assert!(request.argv.is_empty());
        assert_eq!(request.registry_auth, None);
    }

    /// Registry credentials go to the pull, not to a file, and are never shown.
    #[test]
    fn registry_auth_is_taken_out_of_the_files() {
        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Image(ImageSpec {
                reference: "registry.example/app:1".to_owned(),
                args: vec![],
            }),
        );
        spec.secrets = vec![
            warren_api::SecretRef::new("token"),
            warren_api::SecretRef::registry_auth("regcred"),
        ];
        let secrets = vec![
            ("token".to_owned(), b"t".to_vec()),
            (
                warren_api::service::REGISTRY_AUTH_TARGET.to_owned(),
                b"puller:pa55".to_vec(),
            ),
        ];
        let request = WorkloadRequest::for_spec(replica(), &spec, secrets);
        assert_eq!(request.secrets, [("token".to_owned(), b"t".to_vec())]);
        let auth = request.registry_auth.as_ref().expect("registry auth");
        assert_eq!(auth.secret, "regcred");
        assert_eq!(auth.plaintext, b"puller:pa55");
        let debug = format!("{request:?}");
        assert!(
            debug.contains("regcred") && !debug.contains("pa55"),
            "{debug}"
        );
    }

    #[test]
    fn record_json_round_trip() {
        let record = WorkloadRecord {
            replica: replica(),
            workload_hash: u64::MAX,
            boot_id: "b3c5007d-c9b0-4aa3-b640-ea9a17e78f11".to_owned(),
            started_at_ms: 1_700_000_000_000,
            stdout_log: PathBuf::from("/var/lib/warren-workloads/web.0/stdout.log"),
            stderr_log: PathBuf::from("/var/lib/warren-workloads/web.0/stderr.log"),
            instance: Instance::Process {
                pid: 4242,
                start_time_ticks: 123_456,
            },
            working_dir: PathBuf::from("/var/lib/warren-workloads/web.0/work"),
            credentials: Some(Credentials {
                uid: 2_080_000_001,
                gid: 2_080_000_001,
                groups: vec![2_080_000_001],
                capabilities: 1 << 10,
                switched: true,
            }),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(
            json.contains(r#""instance":{"process":{"pid":4242"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<WorkloadRecord>(&json).unwrap(),
            record
        );
        assert_eq!(record.pid(), Some(4242));
    }
}
