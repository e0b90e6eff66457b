//! Starting a workload: who it runs as, its directories and secrets, its working directory,
//! its limits, then the process itself, registered without an await in between.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::process::Signal;
use warren_api::clock::unix_now_ms;

use super::{
    DEFAULT_PATH, IMAGE_ON_PROCESS_NODE, ProcessRuntime, SECRETS_DIR_ENV, Tracked, proc_stat_path,
    signal_group, spawn_error, spawn_reaper,
};
use crate::runtime::credentials::{self, Credentials, RunAsRequest};
use crate::runtime::privileges::{self, ChildSetup};
use crate::runtime::users::{GROUP_FILE, PASSWD_FILE, UserDb};
use crate::runtime::{
    Instance, RuntimeError, WorkloadHandle, WorkloadRecord, WorkloadRequest, dirs, logs, procfs,
    secrets, volumes, working_dir,
};

/// Where a workload's files are, decided before it is spawned.
struct Placement {
    credentials: Credentials,
    working_dir: PathBuf,
    secrets_dir: PathBuf,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
    /// `WARREN_VOLUME_<TARGET>` → the volume's directory.
    volume_env: BTreeMap<String, String>,
    /// Volume directories the workload may only read.
    read_only_volumes: Vec<PathBuf>,
}

impl ProcessRuntime {
    pub(super) fn start_now(
        &self,
        request: &WorkloadRequest,
    ) -> Result<WorkloadHandle, RuntimeError> {
        let replica = &request.replica;
        if request.image.is_some() {
            return Err(RuntimeError::Unsupported {
                what: IMAGE_ON_PROCESS_NODE.to_owned(),
            });
        }
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
        let placement = self.place(request)?;
        let placed = self
            .cgroups
            .prepare(replica, request.memory_bytes, request.cpu_millis)?;
        let std_command = self.command(request, &placement)?;
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
        let prepared = placed.add(pid).and_then(|()| read_start_time(pid));
        let exit = spawn_reaper(replica.clone(), child);
        let start_time_ticks = match prepared {
            Ok(ticks) => ticks,
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
            started_at_ms: unix_now_ms(),
            stdout_log: placement.stdout_log,
            stderr_log: placement.stderr_log,
            instance: Instance::Process {
                pid,
                start_time_ticks,
            },
            working_dir: placement.working_dir,
            credentials: Some(placement.credentials),
        };
        tracing::info!(%replica, pid, command = %command, "started workload");
        let tracked = Tracked {
            record: record.clone(),
            exit: Some(exit),
        };
        self.lock().insert(replica.clone(), tracked);
        Ok(WorkloadHandle::new(record))
    }

    /// Who the workload runs as and where its files go; its directories made and its secrets
    /// written, owned by it.
    fn place(&self, request: &WorkloadRequest) -> Result<Placement, RuntimeError> {
        let replica = &request.replica;
        let (credentials, work) = {
            // One start at a time picks a dynamic uid and makes the directory that holds it.
            let _allocating = self
                .allocating
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let credentials = self.credentials(request)?;
            let work = self.layout.prepare(replica, &credentials)?;
            (credentials, work)
        };
        let owner = credentials
            .switched
            .then_some((credentials.uid, credentials.gid));
        let (volume_env, read_only_volumes) = self.place_volumes(request, owner)?;
        // `$WARREN_VOLUME_<TARGET>` as the working dir: that volume's directory.
        let asked = request.working_dir.as_deref();
        let working_dir = volumes::working_dir(asked, &volume_env)
            .map(Path::new)
            .or(asked);
        let working_dir = working_dir::resolve(replica, working_dir, &work, &self.forbidden)?;
        let secrets_dir = self.secrets_dir(replica);
        if request.secrets.is_empty() {
            secrets::remove(&secrets_dir)?;
        } else {
            let tmpfs = self.options.secrets_tmpfs;
            secrets::write(replica, &secrets_dir, &request.secrets, tmpfs, owner)?;
        }
        let replica_dir = self.replica_dir(replica);
        Ok(Placement {
            credentials,
            working_dir,
            secrets_dir,
            stdout_log: replica_dir.join(logs::STDOUT_LOG),
            stderr_log: replica_dir.join(logs::STDERR_LOG),
            volume_env,
            read_only_volumes,
        })
    }

    /// The volumes' directories made (owned by `owner` when given), the variables that name
    /// them, and those the workload may only read.
    fn place_volumes(
        &self,
        request: &WorkloadRequest,
        owner: Option<(u32, u32)>,
    ) -> Result<(BTreeMap<String, String>, Vec<PathBuf>), RuntimeError> {
        let replica = &request.replica;
        let volume_dirs = self.volumes.prepare(replica, &request.volumes, owner)?;
        let volume_env = volumes::environment(replica, &request.volumes, |mount| {
            self.volumes.dir(&mount.volume).display().to_string()
        })?;
        let read_only_volumes: Vec<PathBuf> = request
            .volumes
            .iter()
            .zip(volume_dirs)
            .filter(|(mount, _)| mount.read_only)
            .map(|(_, dir)| dir)
            .collect();
        if !read_only_volumes.is_empty() && !self.agent.is_root() {
            tracing::warn!(%replica, "not root: read-only volumes are writable by this process workload");
        }
        Ok((volume_env, read_only_volumes))
    }

    /// The credentials of `request` on this box (see `credentials`).
    fn credentials(&self, request: &WorkloadRequest) -> Result<Credentials, RuntimeError> {
        let replica = &request.replica;
        let users = UserDb::load(Path::new(PASSWD_FILE), Path::new(GROUP_FILE))
            .map_err(|e| RuntimeError::io("read users", PASSWD_FILE, e))?;
        let run_as = RunAsRequest {
            user: request.user.as_deref(),
            group: request.group.as_deref(),
            cap_add: &request.cap_add,
        };
        let dynamic_uid = || {
            let taken = self
                .layout
                .dynamic_uids_taken(replica)
                .map_err(|e| e.to_string())?;
            let owner = self.layout.work_dir_owner(replica);
            dirs::dynamic_uid(replica, owner, &taken, |uid| users.has_uid(uid))
                .ok_or_else(|| "no free user id left for a replica of its own".to_owned())
        };
        credentials::resolve(run_as, self.agent, &users, dynamic_uid).map_err(|reason| {
            RuntimeError::RunAs {
                replica: replica.clone(),
                reason,
            }
        })
    }

    /// The command that runs the workload: its argv, environment, logs, working directory,
    /// process group, and what its child does before `exec` (see `privileges`).
    fn command(
        &self,
        request: &WorkloadRequest,
        placement: &Placement,
    ) -> Result<std::process::Command, RuntimeError> {
        use std::os::unix::process::CommandExt;
        let resolv_conf = self
            .options
            .resolv_conf
            .as_deref()
            .filter(|_| self.resolv_override);
        let read_only = if self.agent.is_root() {
            placement.read_only_volumes.as_slice()
        } else {
            &[]
        };
        let setup =
            ChildSetup::new(&placement.credentials, resolv_conf, read_only).map_err(|e| {
                RuntimeError::InvalidRequest {
                    replica: request.replica.clone(),
                    reason: e.to_string(),
                }
            })?;
        let mut command = std::process::Command::new(&request.argv[0]);
        command
            .args(&request.argv[1..])
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&request.env)
            .envs(&placement.volume_env)
            .current_dir(&placement.working_dir)
            .stdin(Stdio::null())
            .stdout(logs::open_append(&placement.stdout_log)?)
            .stderr(logs::open_append(&placement.stderr_log)?)
            .process_group(0);
        if !request.secrets.is_empty() {
            command.env(SECRETS_DIR_ENV, &placement.secrets_dir);
        }
        privileges::install(&mut command, setup);
        Ok(command)
    }
}

/// Field 22 of the new process's `/proc/<pid>/stat`.
fn read_start_time(pid: u32) -> Result<u64, RuntimeError> {
    procfs::read_stat(pid)
        .map_err(|e| RuntimeError::io("read process status", proc_stat_path(pid), e))?
        .map(|stat| stat.start_time_ticks)
        .ok_or_else(|| {
            RuntimeError::io(
                "read process status",
                proc_stat_path(pid),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
}
