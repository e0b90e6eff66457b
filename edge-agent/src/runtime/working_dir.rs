//! Where a workload starts: its spec's `working_dir` resolved and checked on the agent.
//!
//! The API already refuses `..`, unnormalized paths and `/`; the agent checks again what only
//! it can see: symlinks followed, a relative directory must stay inside the replica's `work`
//! directory, and an absolute one must not be in, or above, the agent's data dir or the
//! workloads directory (other replicas' files), unless it is inside the replica's own.

use std::io;
use std::path::{Component, Path, PathBuf};

use warren_api::ids::ReplicaId;

use super::RuntimeError;

/// A place no working directory may be in or above, and what to call it in an error.
#[derive(Clone, Debug)]
pub(crate) struct Forbidden {
    pub(crate) path: PathBuf,
    pub(crate) what: &'static str,
}

/// The directory the workload of `replica` starts in: `work` without a `working_dir`, else
/// `working_dir` (relative to `work`) with every symlink resolved, checked.
///
/// # Errors
/// [`RuntimeError::WorkingDirNotFound`] when it does not exist;
/// [`RuntimeError::InvalidRequest`] when it leaves `work` or reaches a forbidden place.
pub(crate) fn resolve(
    replica: &ReplicaId,
    working_dir: Option<&Path>,
    work: &Path,
    forbidden: &[Forbidden],
) -> Result<PathBuf, RuntimeError> {
    let refuse = |reason: String| RuntimeError::InvalidRequest {
        replica: replica.clone(),
        reason,
    };
    let Some(dir) = working_dir else {
        return Ok(work.to_owned());
    };
    let relative = dir.is_relative();
    if relative && dir.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(refuse(format!(
            "working_dir {} leaves the replica's directory",
            dir.display()
        )));
    }
    let joined = work.join(dir);
    let resolved = canonical(&joined)?;
    let own = canonical(work)?;
    if resolved.starts_with(&own) {
        return Ok(resolved);
    }
    if relative {
        return Err(refuse(format!(
            "working_dir {} leaves the replica's directory (a symlink to {})",
            dir.display(),
            resolved.display()
        )));
    }
    check_outside(&resolved, forbidden).map_err(|what| {
        refuse(format!(
            "working_dir {} is in or above {what}",
            dir.display()
        ))
    })?;
    Ok(resolved)
}

/// `path` with symlinks resolved; a missing path is [`RuntimeError::WorkingDirNotFound`].
fn canonical(path: &Path) -> Result<PathBuf, RuntimeError> {
    match path.canonicalize() {
        Ok(resolved) if resolved.is_dir() => Ok(resolved),
        Ok(_) => Err(RuntimeError::WorkingDirNotFound {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RuntimeError::WorkingDirNotFound {
            path: path.to_owned(),
        }),
        Err(e) => Err(RuntimeError::io("resolve working directory", path, e)),
    }
}

/// Whether `path` (resolved) stays clear of every forbidden place: not in it, not above it.
/// Returns what it reaches otherwise.
fn check_outside(path: &Path, forbidden: &[Forbidden]) -> Result<(), &'static str> {
    for place in forbidden {
        let place_path = place
            .path
            .canonicalize()
            .unwrap_or_else(|_| place.path.clone());
        if path.starts_with(&place_path) || place_path.starts_with(path) {
            return Err(place.what);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::ids::ServiceName;

    fn replica() -> ReplicaId {
        ReplicaId::replicated(ServiceName::new("web").unwrap(), 0)
    }

    /// A box: a data dir, a workloads dir with this replica's `work` and another replica's
    /// directory, a `/srv`-like place, and symlinks out of `work`.
    struct Box {
        _dir: tempfile::TempDir,
        data: PathBuf,
        workloads: PathBuf,
        work: PathBuf,
        other: PathBuf,
        srv: PathBuf,
    }

    fn a_box() -> Box {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        let workloads = dir.path().join("agent-workloads");
        let work = workloads.join("web.0").join("work");
        let other = workloads.join("web.1").join("work");
        let srv = dir.path().join("srv").join("web");
        for d in [&data, &work, &other, &srv, &work.join("cache")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::symlink(&data, work.join("to-keys")).unwrap();
        std::os::unix::fs::symlink(work.join("cache"), work.join("to-cache")).unwrap();
        Box {
            _dir: dir,
            data,
            workloads,
            work,
            other,
            srv,
        }
    }

    fn check(b: &Box, dir: Option<&Path>, expected: Result<&Path, &str>) {
        let forbidden = [
            Forbidden {
                path: b.data.clone(),
                what: "the agent's data dir",
            },
            Forbidden {
                path: b.workloads.clone(),
                what: "the workloads directory",
            },
        ];
        let got = resolve(&replica(), dir, &b.work, &forbidden).map_err(|e| e.to_string());
        let expected = expected
            .map(|p| p.canonicalize().unwrap())
            .map_err(str::to_owned);
        assert_eq!(got, expected, "{dir:?}");
    }

    #[test]
    fn working_dirs_stay_in_the_replica_or_out_of_the_agents_way() {
        let b = a_box();
        check(&b, None, Ok(&b.work.clone()));
        check(&b, Some(Path::new("cache")), Ok(&b.work.join("cache")));
        check(&b, Some(Path::new("to-cache")), Ok(&b.work.join("cache")));
        check(&b, Some(&b.srv.clone()), Ok(&b.srv.clone()));
        check(&b, Some(&b.work.join("cache")), Ok(&b.work.join("cache")));
        let invalid = |reason: &str| format!("invalid workload request for web.0: {reason}");
        check(
            &b,
            Some(Path::new("../../..")),
            Err(&invalid(
                "working_dir ../../.. leaves the replica's directory",
            )),
        );
        let keys = b.data.canonicalize().unwrap();
        check(
            &b,
            Some(Path::new("to-keys")),
            Err(&invalid(&format!(
                "working_dir to-keys leaves the replica's directory (a symlink to {})",
                keys.display()
            ))),
        );
        for (dir, what) in [
            (b.data.clone(), "the agent's data dir"),
            (PathBuf::from("/"), "the agent's data dir"),
            (b.other.clone(), "the workloads directory"),
            (b.workloads.clone(), "the workloads directory"),
        ] {
            check(
                &b,
                Some(&dir),
                Err(&invalid(&format!(
                    "working_dir {} is in or above {what}",
                    dir.display()
                ))),
            );
        }
        let missing = b.work.join("missing");
        check(
            &b,
            Some(Path::new("missing")),
            Err(&format!(
                "working directory not found: {}",
                missing.display()
            )),
        );
    }
}
