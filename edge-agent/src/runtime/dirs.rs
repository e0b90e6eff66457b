//! Where the process runtime keeps each replica's files, who owns them, and the user ids of
//! replicas that run as a user of their own.
//!
//! ```text
//! <root>/                          0711 root: workloads pass through, cannot list
//! <root>/<replica>/                0711 root: the agent's; the workload cannot rename or
//!                                  replace what is in it
//! <root>/<replica>/stdout.log …    0640 root: the workload writes them through the
//!                                  descriptors it was started with
//! <root>/<replica>/secrets/        0700 uid (a private tmpfs when possible), files 0400 uid
//! <root>/<replica>/work/           0700 uid: the workload's own directory, its default
//!                                  working directory
//! ```
//!
//! The root lives outside the agent's data dir (`--workloads-dir`, default `<data dir>-workloads`
//! beside it): a workload must not be able to name the agent's keys by a path from its own
//! directory. The agent, running as root, only ever writes in directories it owns, so a
//! workload cannot point one of its writes elsewhere with a symlink; the one it hands over
//! (`work`) it only creates and chowns. An agent that is not root owns everything and changes
//! no owner.
//!
//! A replica without a `user` gets a uid of [`DYNAMIC_UIDS`] of its own: its `work` directory's
//! owner says which, so it keeps it across restarts of the agent and of the replica, and no
//! other replica's `work` directory has it.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use warren_api::ids::ReplicaId;

use super::RuntimeError;
use super::credentials::{Credentials, DYNAMIC_UIDS};

/// Name of the workload's own directory inside its replica directory.
pub(crate) const WORK_DIR: &str = "work";
/// Name of the secrets directory inside a replica directory.
pub(crate) const SECRETS_DIR: &str = "secrets";

/// The agent's directories (mode 0711 when the agent is root: workloads must pass through).
const AGENT_DIR_MODE: u32 = 0o711;
/// What a workload's own directory allows: its owner only.
const WORK_DIR_MODE: u32 = 0o700;

/// Where replica directories live.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// One directory per replica.
    pub(crate) root: PathBuf,
}

impl Layout {
    pub(crate) fn replica_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.root.join(replica.to_string())
    }

    pub(crate) fn work_dir(&self, replica: &ReplicaId) -> PathBuf {
        self.replica_dir(replica).join(WORK_DIR)
    }

    /// Creates the root (and its parents) and makes it the agent's, 0711 when root.
    pub(crate) fn create_root(&self, agent_is_root: bool) -> Result<(), RuntimeError> {
        fs::create_dir_all(&self.root)
            .map_err(|e| RuntimeError::io("create workloads directory", &self.root, e))?;
        if agent_is_root {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(AGENT_DIR_MODE))
                .map_err(|e| RuntimeError::io("set mode of", &self.root, e))?;
        }
        Ok(())
    }

    /// Makes `replica`'s directory and its `work` directory, owned by `credentials` (when the
    /// runtime switches users), and returns the `work` directory.
    pub(crate) fn prepare(
        &self,
        replica: &ReplicaId,
        credentials: &Credentials,
    ) -> Result<PathBuf, RuntimeError> {
        let replica_dir = self.replica_dir(replica);
        let mode = if credentials.switched {
            AGENT_DIR_MODE
        } else {
            0o700
        };
        create_dir_with_mode(&replica_dir, mode, "create replica directory")?;
        let work = replica_dir.join(WORK_DIR);
        create_dir_with_mode(&work, WORK_DIR_MODE, "create work directory")?;
        if credentials.switched {
            // `work` is an entry of a directory only the agent may change, so this names the
            // directory just made, not something a workload put in its place.
            std::os::unix::fs::chown(&work, Some(credentials.uid), Some(credentials.gid))
                .map_err(|e| RuntimeError::io("hand over work directory", &work, e))?;
        }
        Ok(work)
    }

    /// The owner of `replica`'s `work` directory, if it exists.
    pub(crate) fn work_dir_owner(&self, replica: &ReplicaId) -> Option<u32> {
        fs::metadata(self.work_dir(replica)).ok().map(|m| m.uid())
    }

    /// The dynamic uids other replicas' `work` directories hold.
    pub(crate) fn dynamic_uids_taken(
        &self,
        except: &ReplicaId,
    ) -> Result<BTreeSet<u32>, RuntimeError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(RuntimeError::io("list workloads", &self.root, e)),
        };
        let mut taken = BTreeSet::new();
        let own = except.to_string();
        for entry in entries {
            let entry = entry.map_err(|e| RuntimeError::io("list workloads", &self.root, e))?;
            if entry.file_name().to_str() == Some(own.as_str()) {
                continue;
            }
            if let Ok(meta) = fs::metadata(entry.path().join(WORK_DIR))
                && DYNAMIC_UIDS.contains(&meta.uid())
            {
                taken.insert(meta.uid());
            }
        }
        Ok(taken)
    }
}

/// Creates `dir` (one level) with `mode`, or sets `mode` on the directory already there.
fn create_dir_with_mode(dir: &Path, mode: u32, what: &'static str) -> Result<(), RuntimeError> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RuntimeError::io(what, dir, e)),
    }
    // The umask may have narrowed it, an older build made it wider.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| RuntimeError::io(what, dir, e))
}

/// The dynamic uid for `replica`: the one its `work` directory already has, else the first
/// free one from a slot derived from its id (so that a replica tends to get the same uid on
/// every node), skipping `taken` and any uid `in_passwd`. `None` when the range is full.
pub(crate) fn dynamic_uid(
    replica: &ReplicaId,
    current_owner: Option<u32>,
    taken: &BTreeSet<u32>,
    in_passwd: impl Fn(u32) -> bool,
) -> Option<u32> {
    if let Some(uid) = current_owner.filter(|uid| DYNAMIC_UIDS.contains(uid))
        && !taken.contains(&uid)
    {
        return Some(uid);
    }
    let count = DYNAMIC_UIDS.end - DYNAMIC_UIDS.start;
    let slot = fnv1a32(replica.to_string().as_bytes()) % count;
    (0..count)
        .map(|step| DYNAMIC_UIDS.start + (slot + step) % count)
        .find(|uid| !taken.contains(uid) && !in_passwd(*uid))
}

/// FNV-1a 32: a stable spread of replica ids over the range (not `std`'s hasher, which may
/// change between builds).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// Ancestors of `dir` that users other than root cannot pass through: a workload running as
/// its own user cannot reach its files by absolute path (its secrets) below them.
pub(crate) fn closed_ancestors(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .filter(|a| fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0))
        .map(Path::to_path_buf)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::ids::ServiceName;

    fn replica(slot: u32) -> ReplicaId {
        ReplicaId::replicated(ServiceName::new("web").unwrap(), slot)
    }

    #[test]
    fn dynamic_uids_are_stable_distinct_and_kept() {
        let none = BTreeSet::new();
        let first = dynamic_uid(&replica(0), None, &none, |_| false).unwrap();
        assert!(DYNAMIC_UIDS.contains(&first));
        assert_eq!(
            dynamic_uid(&replica(0), None, &none, |_| false),
            Some(first)
        );
        // Another replica whose slot is taken moves on to the next free uid.
        let taken = BTreeSet::from([first]);
        let other = dynamic_uid(&replica(0), None, &taken, |_| false).unwrap();
        assert_ne!(other, first);
        // A replica keeps the uid its directory has, unless another replica holds it.
        assert_eq!(
            dynamic_uid(&replica(1), Some(first), &none, |_| false),
            Some(first)
        );
        assert_ne!(
            dynamic_uid(&replica(1), Some(first), &taken, |_| false),
            Some(first)
        );
        // An owner outside the range (the spec named a user before) is not kept.
        assert!(
            DYNAMIC_UIDS.contains(&dynamic_uid(&replica(1), Some(33), &none, |_| false).unwrap())
        );
        // Uids /etc/passwd lists are skipped; a full range gives none.
        assert_ne!(
            dynamic_uid(&replica(0), None, &none, |uid| uid == first),
            Some(first)
        );
        assert_eq!(dynamic_uid(&replica(0), None, &none, |_| true), None);
    }

    #[test]
    fn replica_directories_are_the_agents_and_work_the_workloads() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().join("workloads"),
        };
        let root = rustix::process::geteuid().is_root();
        layout.create_root(root).unwrap();
        let me = super::super::credentials::AgentUser::current();
        let credentials = Credentials {
            uid: if root { 2_080_000_001 } else { me.uid },
            gid: if root { 2_080_000_001 } else { me.gid },
            groups: vec![],
            capabilities: 0,
            switched: root,
        };
        let work = layout.prepare(&replica(0), &credentials).unwrap();
        assert_eq!(work, layout.work_dir(&replica(0)));
        let meta = fs::metadata(&work).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (credentials.uid, 0o700));
        assert_eq!(layout.work_dir_owner(&replica(0)), Some(credentials.uid));
        let replica_meta = fs::metadata(layout.replica_dir(&replica(0))).unwrap();
        assert_eq!(replica_meta.uid(), me.uid, "the agent's");
        if root {
            assert_eq!(replica_meta.mode() & 0o777, 0o711);
            assert_eq!(
                layout.dynamic_uids_taken(&replica(1)).unwrap(),
                BTreeSet::from([2_080_000_001])
            );
            assert!(layout.dynamic_uids_taken(&replica(0)).unwrap().is_empty());
        }
    }
}
