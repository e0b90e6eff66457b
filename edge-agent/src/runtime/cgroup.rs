//! Memory and CPU limits through cgroup v1: `<cgroup root>/memory/<parent>/<replica>` with
//! `memory.limit_in_bytes`, and `<cgroup root>/cpu/<parent>/<replica>` with
//! `cpu.cfs_quota_us` over a 100 ms period.
//!
//! A controller that is missing or not writable (not root, cgroup v2 only) is skipped with
//! a log line: the workload runs without that limit rather than not at all.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use warren_api::ids::ReplicaId;

use super::RuntimeError;

/// CFS period used for CPU limits: 100 ms, the kernel's default.
const CFS_PERIOD_US: u64 = 100_000;
/// Smallest quota the kernel accepts.
const CFS_QUOTA_MIN_US: u64 = 1_000;

/// Where a runtime's cgroups live.
#[derive(Clone, Debug)]
pub(crate) struct CgroupLayout {
    /// Usually `/sys/fs/cgroup`.
    pub(crate) root: PathBuf,
    /// The runtime's own group under each controller, e.g. `warren`.
    pub(crate) parent: String,
}

/// The cgroup directories a workload was placed in.
#[derive(Clone, Debug, Default)]
pub(crate) struct Placed {
    dirs: Vec<PathBuf>,
}

/// `cpu.cfs_quota_us` for `cpu_millis` thousandths of a core.
pub(crate) fn cfs_quota_us(cpu_millis: u32) -> u64 {
    (u64::from(cpu_millis) * CFS_PERIOD_US / 1000).max(CFS_QUOTA_MIN_US)
}

impl CgroupLayout {
    fn dir(&self, controller: &str, replica: &ReplicaId) -> PathBuf {
        self.root
            .join(controller)
            .join(&self.parent)
            .join(replica.to_string())
    }

    /// Every directory this layout may create for `replica`.
    pub(crate) fn dirs(&self, replica: &ReplicaId) -> [PathBuf; 2] {
        [self.dir("memory", replica), self.dir("cpu", replica)]
    }

    /// Creates the replica's groups and writes the limits, before the workload starts.
    /// Controllers that are unavailable are skipped and logged.
    ///
    /// # Errors
    /// A limit the kernel refuses in a group that could be created.
    pub(crate) fn prepare(
        &self,
        replica: &ReplicaId,
        memory_bytes: Option<u64>,
        cpu_millis: Option<u32>,
    ) -> Result<Placed, RuntimeError> {
        let mut placed = Placed::default();
        if let Some(memory_bytes) = memory_bytes {
            let limits = [("memory.limit_in_bytes", memory_bytes.to_string())];
            if let Some(dir) = self.make_group("memory", replica, &limits)? {
                placed.dirs.push(dir);
            }
        }
        if let Some(cpu_millis) = cpu_millis {
            let limits = [
                ("cpu.cfs_period_us", CFS_PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", cfs_quota_us(cpu_millis).to_string()),
            ];
            if let Some(dir) = self.make_group("cpu", replica, &limits)? {
                placed.dirs.push(dir);
            }
        }
        Ok(placed)
    }

    /// `Ok(None)` when the controller is unavailable.
    fn make_group(
        &self,
        controller: &str,
        replica: &ReplicaId,
        limits: &[(&str, String)],
    ) -> Result<Option<PathBuf>, RuntimeError> {
        let controller_root = self.root.join(controller);
        let dir = self.dir(controller, replica);
        if !controller_root.is_dir() {
            tracing::warn!(
                %replica,
                path = %controller_root.display(),
                "cgroup v1 controller not mounted; running without its limit"
            );
            return Ok(None);
        }
        if let Err(e) = fs::create_dir_all(&dir) {
            tracing::warn!(
                %replica,
                path = %dir.display(),
                error = %e,
                "cannot create cgroup; running without its limit"
            );
            return Ok(None);
        }
        for (file, value) in limits {
            let path = dir.join(file);
            fs::write(&path, value).map_err(|source| RuntimeError::Cgroup { path, source })?;
        }
        tracing::debug!(%replica, path = %dir.display(), "cgroup ready");
        Ok(Some(dir))
    }

    /// Removes the replica's groups if they are empty. Returns the first error other than
    /// "not there"; a group that still has processes stays (EBUSY) and is reported.
    pub(crate) fn remove(&self, replica: &ReplicaId) -> Result<(), RuntimeError> {
        let mut first_error = None;
        for dir in self.dirs(replica) {
            match fs::remove_dir(&dir) {
                Ok(()) => tracing::debug!(%replica, path = %dir.display(), "removed cgroup"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_error.get_or_insert(RuntimeError::Cgroup { path: dir, source });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Placed {
    /// Moves process `pid` into every prepared group. A process that already exited is not
    /// an error (there is nothing left to limit).
    pub(crate) fn add(&self, pid: u32) -> Result<(), RuntimeError> {
        for dir in &self.dirs {
            add_to(dir, pid)?;
        }
        Ok(())
    }
}

fn add_to(dir: &Path, pid: u32) -> Result<(), RuntimeError> {
    let path = dir.join("cgroup.procs");
    match fs::write(&path, pid.to_string()) {
        Ok(()) => Ok(()),
        // ESRCH: the process exited (and was reaped) already.
        Err(e) if e.raw_os_error() == Some(3) => Ok(()),
        Err(source) => Err(RuntimeError::Cgroup { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_scales_with_millis() {
        assert_eq!(cfs_quota_us(1000), 100_000);
        assert_eq!(cfs_quota_us(250), 25_000);
        assert_eq!(cfs_quota_us(2500), 250_000);
        assert_eq!(cfs_quota_us(1), CFS_QUOTA_MIN_US);
    }
}
