//! Local volumes on this node: one directory per volume, shared by both runtimes.
//!
//! ```text
//! <volumes root>/                  0711 root: workloads pass through, cannot list
//! <volumes root>/<volume>/         0700, owned by the user of the replica that last started
//!                                  with it (when the agent switches users)
//! ```
//!
//! The root is `<data dir>-volumes` beside the agent's data dir ([`default_volumes_dir`]), for
//! the reason the workloads dir is beside it too: a workload must reach its volume by path
//! (processes do), and must not be able to name the agent's keys from there. It is a root of
//! its own, not a directory in the workloads dir, because the agent walks the workloads dir's
//! entries as replica directories (removing their `secrets/`): a volume named `secrets` would
//! be wiped.
//!
//! A volume's directory is made when a replica that mounts it first starts, and nothing the
//! runtimes do removes it: a replica's stop, restart, removal or rescheduling on the same node
//! finds the data where it left it.
//!
//! The agent's operator may serve some volumes from host directories instead
//! (`--host-volume NAME=PATH`, [`check_host_volumes`]): an allow-list by volume name, so that
//! a spec can only name a volume, never a host path. Such a directory must exist; the agent
//! neither creates it nor changes its owner or mode.
//!
//! A workload finds each mount by an environment variable, [`env_name`] of the mount's target
//! (`data` → `WARREN_VOLUME_DATA`), whose value is the path it sees: the host directory for a
//! process, [`container_path`] (`/volumes/<target>`) for a container. A process whose
//! `working_dir` is `$WARREN_VOLUME_DATA` starts in that directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use warren_api::ids::ReplicaId;
use warren_api::service::VolumeMount;

use super::RuntimeError;

/// Prefix of the environment variable that gives a workload a mount's path.
pub const VOLUME_ENV_PREFIX: &str = "WARREN_VOLUME_";

/// Where a container sees its volumes: `/volumes/<target>`.
pub const CONTAINER_VOLUMES_DIR: &str = "/volumes";

/// What the root allows when the agent is root: workloads pass through to their volume.
const ROOT_MODE: u32 = 0o711;
/// What a volume's directory allows: its owner only.
const VOLUME_MODE: u32 = 0o700;

/// The agent's data dir's sibling that holds volume directories: `/var/lib/warren` →
/// `/var/lib/warren-volumes`. A runtime built without a data dir (tests, tools) passes its
/// workloads root, which puts them beside that.
pub fn default_volumes_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map_or_else(|| "warren".into(), std::ffi::OsStr::to_owned);
    name.push("-volumes");
    data_dir.with_file_name(name)
}

/// The environment variable that names the mount at `target`: [`VOLUME_ENV_PREFIX`], then the
/// target upper-cased with every character that is not an ASCII letter or digit as `_`
/// (`cache-v2` → `WARREN_VOLUME_CACHE_V2`).
pub fn env_name(target: &str) -> String {
    let suffix: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{VOLUME_ENV_PREFIX}{suffix}")
}

/// Where a container sees the mount at `target`.
pub fn container_path(target: &str) -> String {
    format!("{CONTAINER_VOLUMES_DIR}/{target}")
}

/// The environment a workload gets for its mounts: [`env_name`] of each target → the path
/// `path_of(mount)` gives.
///
/// # Errors
/// [`RuntimeError::InvalidRequest`] when two targets give the same variable (`a-b`, `a_b`):
/// one of them would be unreachable.
pub(crate) fn environment(
    replica: &ReplicaId,
    mounts: &[VolumeMount],
    path_of: impl Fn(&VolumeMount) -> String,
) -> Result<BTreeMap<String, String>, RuntimeError> {
    let mut env = BTreeMap::new();
    for mount in mounts {
        let name = env_name(&mount.target);
        if env.insert(name.clone(), path_of(mount)).is_some() {
            return Err(RuntimeError::InvalidRequest {
                replica: replica.clone(),
                reason: format!(
                    "two volume targets give the same variable {name}; rename one of them"
                ),
            });
        }
    }
    Ok(env)
}

/// Checks an allow-list of host volumes: names are DNS labels, paths absolute and not in or
/// above `data_dir` (a workload must not reach the agent's keys through a volume).
///
/// # Errors
/// A message naming the offending volume.
pub fn check_host_volumes(
    host_volumes: &BTreeMap<String, PathBuf>,
    data_dir: Option<&Path>,
) -> Result<(), String> {
    for (name, path) in host_volumes {
        warren_api::validate::validate_dns_label("volume", name)
            .map_err(|e| format!("host volume {name:?}: {}", e.message))?;
        if !path.is_absolute() {
            return Err(format!(
                "host volume {name}: {} is not an absolute path",
                path.display()
            ));
        }
        if let Some(data_dir) = data_dir {
            let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
            if data_dir.starts_with(path) || path.starts_with(&data_dir) {
                return Err(format!(
                    "host volume {name}: {} is in or above the agent's data dir {}",
                    path.display(),
                    data_dir.display()
                ));
            }
        }
    }
    Ok(())
}

/// The directory a working dir of `$WARREN_VOLUME_<TARGET>` names, from `env` (the mounts'
/// variables); `None` for any other working dir (a path, which the runtime resolves as such).
pub(crate) fn working_dir<'a>(
    asked: Option<&Path>,
    env: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    let name = asked?.to_str()?.strip_prefix('$')?;
    env.get(name).map(String::as_str)
}

/// Where volumes live on this node.
#[derive(Clone, Debug)]
pub(crate) struct Volumes {
    pub(crate) root: PathBuf,
    /// Volumes served from a host directory instead of one under `root`.
    pub(crate) host: BTreeMap<String, PathBuf>,
}

impl Volumes {
    /// The directory of `volume` (made or not).
    pub(crate) fn dir(&self, volume: &str) -> PathBuf {
        match self.host.get(volume) {
            Some(path) => path.clone(),
            None => self.root.join(volume),
        }
    }

    /// A host volume's directory, which must already be one.
    fn host_dir(&self, replica: &ReplicaId, volume: &str, path: &Path) -> Result<(), RuntimeError> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(RuntimeError::InvalidRequest {
                replica: replica.clone(),
                reason: format!(
                    "host volume {volume}: {} is not a directory",
                    path.display()
                ),
            }),
            Err(e) => Err(RuntimeError::io("open host volume", path, e)),
        }
    }

    /// Makes the directory of every volume `mounts` name, if missing, owned by `owner` when
    /// given; returns them in the order of `mounts`. Never removes or empties anything.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidRequest`] for a volume name that is not a plain name (the
    /// control plane checks it; a cache from elsewhere might not); I/O errors.
    pub(crate) fn prepare(
        &self,
        replica: &ReplicaId,
        mounts: &[VolumeMount],
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<PathBuf>, RuntimeError> {
        if mounts.is_empty() {
            return Ok(Vec::new());
        }
        let mut dirs = Vec::with_capacity(mounts.len());
        for mount in mounts {
            if let Some(path) = self.host.get(&mount.volume) {
                self.host_dir(replica, &mount.volume, path)?;
                dirs.push(path.clone());
                continue;
            }
            self.create_root(owner.is_some())?;
            if warren_api::validate::validate_dns_label("volume", &mount.volume).is_err() {
                return Err(RuntimeError::InvalidRequest {
                    replica: replica.clone(),
                    reason: format!("volume name {:?} is not a DNS label", mount.volume),
                });
            }
            let dir = self.dir(&mount.volume);
            match fs::DirBuilder::new().mode(VOLUME_MODE).create(&dir) {
                Ok(()) => {
                    tracing::info!(%replica, volume = mount.volume, path = %dir.display(), "created volume")
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(RuntimeError::io("create volume directory", &dir, e)),
            }
            if let Some((uid, gid)) = owner {
                // The directory is an entry of a root only the agent may change, so this names
                // the volume's directory, not something a workload put in its place.
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .map_err(|e| RuntimeError::io("hand over volume directory", &dir, e))?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    fn create_root(&self, agent_is_root: bool) -> Result<(), RuntimeError> {
        fs::create_dir_all(&self.root)
            .map_err(|e| RuntimeError::io("create volumes directory", &self.root, e))?;
        if agent_is_root {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(ROOT_MODE))
                .map_err(|e| RuntimeError::io("set mode of", &self.root, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use warren_api::ids::ServiceName;

    use super::*;

    fn mount(volume: &str, target: &str) -> VolumeMount {
        VolumeMount {
            volume: volume.to_owned(),
            target: target.to_owned(),
            read_only: false,
        }
    }

    fn replica() -> ReplicaId {
        ReplicaId::replicated(ServiceName::new("web").expect("valid"), 1)
    }

    #[test]
    fn env_names_are_upper_case_with_underscores() {
        let check = |target: &str, expected: &str| assert_eq!(env_name(target), expected);
        check("data", "WARREN_VOLUME_DATA");
        check("cache-v2", "WARREN_VOLUME_CACHE_V2");
        check("db.files", "WARREN_VOLUME_DB_FILES");
    }

    #[test]
    fn targets_that_give_the_same_variable_are_refused() {
        let mounts = [mount("a", "x-y"), mount("b", "x_y")];
        let err = environment(&replica(), &mounts, |m| m.target.clone()).unwrap_err();
        assert!(err.to_string().contains("WARREN_VOLUME_X_Y"), "{err}");
    }

    #[test]
    fn a_working_dir_may_name_a_volume_variable() {
        let env = BTreeMap::from([("WARREN_VOLUME_DATA".to_owned(), "/v/data".to_owned())]);
        let check = |asked: Option<&str>, expected: Option<&str>| {
            assert_eq!(
                working_dir(asked.map(Path::new), &env),
                expected,
                "{asked:?}"
            );
        };
        check(Some("$WARREN_VOLUME_DATA"), Some("/v/data"));
        check(Some("$WARREN_VOLUME_OTHER"), None);
        check(Some("WARREN_VOLUME_DATA"), None);
        check(Some("/srv"), None);
        check(None, None);
    }

    #[test]
    fn the_default_root_is_beside_the_data_dir() {
        assert_eq!(
            default_volumes_dir(Path::new("/var/lib/warren")),
            Path::new("/var/lib/warren-volumes")
        );
    }

    #[test]
    fn prepare_makes_each_directory_once_and_keeps_its_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let volumes = Volumes {
            root: tmp.path().join("volumes"),
            host: BTreeMap::new(),
        };
        let mounts = [mount("data", "data")];
        let dirs = volumes.prepare(&replica(), &mounts, None).expect("prepare");
        assert_eq!(dirs, [tmp.path().join("volumes/data")]);
        fs::write(dirs[0].join("kept"), "1").expect("write");
        volumes.prepare(&replica(), &mounts, None).expect("again");
        assert_eq!(fs::read_to_string(dirs[0].join("kept")).expect("read"), "1");
    }

    #[test]
    fn a_host_volume_is_used_as_it_is_and_must_exist() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let media = tmp.path().join("media");
        let volumes = Volumes {
            root: tmp.path().join("volumes"),
            host: BTreeMap::from([("media".to_owned(), media.clone())]),
        };
        let mounts = [mount("media", "media")];
        let err = volumes.prepare(&replica(), &mounts, None).unwrap_err();
        assert!(err.to_string().contains("media"), "{err}");
        fs::create_dir(&media).expect("mkdir");
        let dirs = volumes.prepare(&replica(), &mounts, None).expect("prepare");
        assert_eq!(dirs, [media]);
        assert!(!tmp.path().join("volumes").exists(), "nothing made");
    }

    #[test]
    fn host_volumes_are_checked() {
        let check = |name: &str, path: &str| {
            let list = BTreeMap::from([(name.to_owned(), PathBuf::from(path))]);
            check_host_volumes(&list, Some(Path::new("/var/lib/warren")))
        };
        assert_eq!(check("media", "/srv/media"), Ok(()));
        let refused = |result: Result<(), String>, needle: &str| {
            let err = result.unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        refused(check("Media", "/srv/media"), "host volume \"Media\"");
        refused(check("media", "srv/media"), "not an absolute path");
        refused(check("keys", "/var/lib/warren/x"), "data dir");
        refused(check("root", "/var"), "data dir");
    }

    #[test]
    fn a_name_that_is_a_path_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let volumes = Volumes {
            root: tmp.path().to_owned(),
            host: BTreeMap::new(),
        };
        let err = volumes
            .prepare(&replica(), &[mount("../etc", "data")], None)
            .unwrap_err();
        assert!(err.to_string().contains("not a DNS label"), "{err}");
    }
}
