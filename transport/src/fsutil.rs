//! Durable file writes: write to a temporary file, fsync, rename, fsync the directory. A crash
//! leaves either the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically with the given Unix permission bits.
///
/// # Errors
/// Any I/O error from creating, writing, syncing or renaming.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Makes `dir` a directory only its owner can enter: created (with its parents) mode 0700 if
/// missing, and tightened to 0700 if it exists with group or other bits (a data dir made by an
/// older build, or by hand with the default umask). A node's data dir holds its keys, its
/// cache and, on control nodes, the replicated state: no other local user may read it.
/// Returns whether an existing directory was tightened.
///
/// # Errors
/// `dir` exists and is not a directory, or creating or changing it failed.
pub fn private_dir(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        )),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            // The builder's mode is filtered by the umask; say exactly what we mean.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// Encodes DER bytes as PEM with the given label.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let body = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn a_data_dir_is_created_and_kept_private() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("a/b");
        assert!(!private_dir(&dir).expect("create"));
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(
            private_dir(&dir).expect("tighten"),
            "a wide dir is tightened"
        );
        assert_eq!(mode(&dir), 0o700);
        assert!(!private_dir(&dir).expect("again"));
        let file = root.path().join("file");
        fs::write(&file, b"").expect("write");
        let error = private_dir(&file).expect_err("a file is no data dir");
        assert!(error.to_string().contains("not a directory"), "{error}");
    }
}
