//! Workload log files and their size-based rotation.
//!
//! The workload itself holds its log files open with `O_APPEND` (they are its stdout and
//! stderr), so it keeps logging while the agent is down and the agent never sits in the data
//! path. That rules out rename-based rotation: rotation copies the live file to `.1` (after
//! shifting `.1` → `.2` …) and truncates it, and the workload's next append lands at the new
//! end. Lines written between the copy and the truncation are lost; that is the price of
//! copy-truncate, as with logrotate's `copytruncate`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::RuntimeError;

/// File name of the standard output log inside a replica's directory.
pub(crate) const STDOUT_LOG: &str = "stdout.log";
/// File name of the standard error log inside a replica's directory.
pub(crate) const STDERR_LOG: &str = "stderr.log";

/// Opens (creating it, mode 0640) a log file for appending.
pub(crate) fn open_append(path: &Path) -> Result<File, RuntimeError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| RuntimeError::io("open log file", path, e))
}

/// `stdout.log` → `stdout.log.1`.
fn rotated_path(live: &Path, index: u32) -> PathBuf {
    let mut name = live.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// Rotates `live` if it is larger than `max_bytes`, keeping at most `files_max` files in all
/// (the live one plus `files_max - 1` rotated ones). Returns whether it rotated.
pub(crate) fn rotate_if_larger(live: &Path, max_bytes: u64, files_max: u32) -> io::Result<bool> {
    let size = match std::fs::metadata(live) {
        Ok(metadata) => metadata.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_bytes {
        return Ok(false);
    }
    let kept_max = files_max.saturating_sub(1);
    // Drop the oldest, shift the others up by one; leftovers from a larger earlier setting
    // are dropped too, so the bound holds after a configuration change.
    let mut index = kept_max.max(1);
    loop {
        let path = rotated_path(live, index);
        if !path.exists() {
            break;
        }
        std::fs::remove_file(&path)?;
        index += 1;
    }
    for index in (1..kept_max).rev() {
        let from = rotated_path(live, index);
        if from.exists() {
            std::fs::rename(&from, rotated_path(live, index + 1))?;
        }
    }
    if kept_max >= 1 {
        std::fs::copy(live, rotated_path(live, 1))?;
    }
    // Truncate without O_TRUNC on open so that an open by the workload is never raced.
    OpenOptions::new().write(true).open(live)?.set_len(0)?;
    Ok(true)
}

/// Rotates the logs of every replica directory under `root`. Returns the first error met,
/// after trying every file.
pub(crate) fn rotate_all(root: &Path, max_bytes: u64, files_max: u32) -> Result<(), RuntimeError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RuntimeError::io("list workload directories", root, e)),
    };
    let mut first_error = None;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                first_error.get_or_insert(RuntimeError::io("list workload directories", root, e));
                continue;
            }
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for name in [STDOUT_LOG, STDERR_LOG] {
            let live = entry.path().join(name);
            match rotate_if_larger(&live, max_bytes, files_max) {
                Ok(true) => tracing::debug!(path = %live.display(), "rotated workload log"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %live.display(), error = %e, "cannot rotate workload log");
                    first_error.get_or_insert(RuntimeError::io("rotate log file", live, e));
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotation_keeps_at_most_files_max() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(STDOUT_LOG);
        for round in 0..6u8 {
            std::fs::write(&live, vec![b'a' + round; 20]).unwrap();
            assert!(rotate_if_larger(&live, 10, 3).unwrap());
        }
        assert_eq!(
            names(dir.path()),
            ["stdout.log", "stdout.log.1", "stdout.log.2"]
        );
        assert_eq!(std::fs::metadata(&live).unwrap().len(), 0);
        // The newest copy is .1.
        assert_eq!(
            std::fs::read(rotated_path(&live, 1)).unwrap(),
            vec![b'f'; 20]
        );
        assert_eq!(
            std::fs::read(rotated_path(&live, 2)).unwrap(),
            vec![b'e'; 20]
        );

        // Small files are left alone.
        std::fs::write(&live, b"short").unwrap();
        assert!(!rotate_if_larger(&live, 10, 3).unwrap());

        // Lowering the bound drops the surplus.
        std::fs::write(&live, [b'z'; 20]).unwrap();
        assert!(rotate_if_larger(&live, 10, 2).unwrap());
        assert_eq!(names(dir.path()), ["stdout.log", "stdout.log.1"]);
        std::fs::write(&live, [b'z'; 20]).unwrap();
        assert!(rotate_if_larger(&live, 10, 1).unwrap());
        assert_eq!(names(dir.path()), ["stdout.log"]);
    }

    #[test]
    fn appends_after_truncation_start_at_zero() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(STDERR_LOG);
        let mut writer = open_append(&live).unwrap();
        writer.write_all(&[b'x'; 100]).unwrap();
        assert!(rotate_if_larger(&live, 10, 3).unwrap());
        writer.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"after\n");
    }
}
