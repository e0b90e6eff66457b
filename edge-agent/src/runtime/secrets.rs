//! Secret files for a workload: a 0700 directory per replica holding one 0400 file per
//! secret, both owned by the workload's user (so only it, and root, can read them), on a
//! private tmpfs when the agent may mount one (so plaintext never reaches a disk), otherwise a
//! plain directory under the runtime's root.
//!
//! The directory is the workload's to read, and it may put files in it: the agent creates each
//! file with `O_EXCL` (never through a name the workload planted), hands it over by its
//! descriptor, and renames it into place.
//!
//! Content is never logged; only names and counts are.

use std::ffi::CString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};
use warren_api::ids::ReplicaId;
use warren_api::secret::MAX_SECRET_BYTES;
use warren_api::validate::MAX_SECRETS;

use super::RuntimeError;

/// Size cap of a replica's secrets tmpfs: every secret at its largest, twice over (a rewrite
/// goes through a temporary file). Only a cap; tmpfs uses memory for what is written.
const TMPFS_SIZE_BYTES: u64 = 2 * MAX_SECRETS as u64 * MAX_SECRET_BYTES;

/// Checks that `name` is usable as a single file name.
pub(crate) fn validate_name(replica: &ReplicaId, name: &str) -> Result<(), RuntimeError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with(".tmp-")
        || name.contains('/')
        || name.contains('\0');
    if bad {
        return Err(RuntimeError::InvalidRequest {
            replica: replica.clone(),
            reason: format!("secret file name {name:?} is not a plain file name"),
        });
    }
    Ok(())
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    let Some(parent) = dir.parent() else {
        return false;
    };
    match (fs::metadata(dir), fs::metadata(parent)) {
        (Ok(own), Ok(parent)) => own.dev() != parent.dev(),
        _ => false,
    }
}

/// The user and group that own a workload's secrets; `None`: the agent's own (it is not root,
/// or the workload runs as the agent).
pub(crate) type Owner = Option<(u32, u32)>;

/// Creates `dir` (mode 0700) and, when `try_tmpfs`, mounts a private tmpfs on it unless one
/// is already there (a restart of the same replica); `owner` gets it. Returns whether it is
/// on tmpfs.
fn prepare_dir(
    replica: &ReplicaId,
    dir: &Path,
    try_tmpfs: bool,
    owner: Owner,
) -> Result<bool, RuntimeError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RuntimeError::io("create secrets directory", dir, e)),
    }
    let on_tmpfs = mount_tmpfs(replica, dir, try_tmpfs, owner)?;
    if let Some((uid, gid)) = owner {
        // `dir` is an entry of the agent's own replica directory: nothing a workload put there.
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| RuntimeError::io("hand over secrets directory", dir, e))?;
    }
    Ok(on_tmpfs)
}

/// Mounts a private tmpfs on `dir` when `try_tmpfs` and none is there yet; returns whether
/// `dir` is on tmpfs. A directory on the data disk is made 0700 whatever it was.
fn mount_tmpfs(
    replica: &ReplicaId,
    dir: &Path,
    try_tmpfs: bool,
    owner: Owner,
) -> Result<bool, RuntimeError> {
    if is_mount_point(dir) {
        return Ok(true);
    }
    if try_tmpfs {
        let (uid, gid) = owner.unwrap_or_else(|| {
            let me = super::credentials::AgentUser::current();
            (me.uid, me.gid)
        });
        let options = CString::new(format!(
            "mode=0700,uid={uid},gid={gid},size={TMPFS_SIZE_BYTES}"
        ))
        .expect("formatted mount options contain no NUL");
        let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        match rustix::mount::mount("tmpfs", dir, "tmpfs", flags, options.as_c_str()) {
            Ok(()) => {
                tracing::info!(%replica, dir = %dir.display(), "secrets on a private tmpfs");
                return Ok(true);
            }
            Err(e) => tracing::info!(
                %replica,
                dir = %dir.display(),
                error = %e,
                "cannot mount tmpfs for secrets; using a 0700 directory on the data disk"
            ),
        }
    } else {
        tracing::info!(%replica, dir = %dir.display(), "secrets in a 0700 directory on the data disk");
    }
    // Whatever umask or an older agent left, the directory must be private.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| RuntimeError::io("restrict secrets directory", dir, e))?;
    Ok(false)
}

/// Writes `secrets` into `dir` as 0400 files owned by `owner`, replacing what was there. Each
/// file is written to a temporary name and renamed, so a reader never sees half a secret.
pub(crate) fn write(
    replica: &ReplicaId,
    dir: &Path,
    secrets: &[(String, Vec<u8>)],
    try_tmpfs: bool,
    owner: Owner,
) -> Result<(), RuntimeError> {
    for (name, _) in secrets {
        validate_name(replica, name)?;
    }
    let on_tmpfs = prepare_dir(replica, dir, try_tmpfs, owner)?;
    // Files of secrets the spec no longer references must not linger.
    let entries = fs::read_dir(dir).map_err(|e| RuntimeError::io("list secrets", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| RuntimeError::io("list secrets", dir, e))?;
        let wanted = secrets
            .iter()
            .any(|(name, _)| entry.file_name().to_str() == Some(name.as_str()));
        if !wanted {
            remove_file(&entry.path())?;
        }
    }
    for (name, plaintext) in secrets {
        let path = dir.join(name);
        let temporary = dir.join(format!(".tmp-{name}"));
        remove_file(&temporary)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&temporary)
            .map_err(|e| RuntimeError::io("create secret file", &temporary, e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| RuntimeError::io("hand over secret file", &temporary, e))?;
        }
        file.write_all(plaintext)
            .and_then(|()| file.sync_all())
            .map_err(|e| RuntimeError::io("write secret file", &temporary, e))?;
        fs::rename(&temporary, &path)
            .map_err(|e| RuntimeError::io("install secret file", &path, e))?;
    }
    tracing::debug!(%replica, n_secrets = secrets.len(), on_tmpfs, "wrote secret files");
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), RuntimeError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io("remove secret file", path, e)),
    }
}

/// Removes `dir` with everything in it, unmounting its tmpfs first. Idempotent.
pub(crate) fn remove(dir: &Path) -> Result<(), RuntimeError> {
    if !dir.exists() {
        return Ok(());
    }
    if is_mount_point(dir) {
        // Unmounting discards the content; a lazy unmount if something still holds a file
        // open, so that the name at least disappears now.
        if let Err(e) = rustix::mount::unmount(dir, UnmountFlags::empty()) {
            tracing::warn!(dir = %dir.display(), error = %e, "secrets tmpfs busy; detaching it");
            rustix::mount::unmount(dir, UnmountFlags::DETACH)
                .map_err(|e| RuntimeError::io("unmount secrets tmpfs", dir, e.into()))?;
        }
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io("remove secrets directory", dir, e)),
    }
}
