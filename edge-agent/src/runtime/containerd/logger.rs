//! The containers' log writer: what containerd's shim starts next to each task (its `binary://`
//! stdio) to put the task's standard output and standard error in the replica's `stdout.log`
//! and `stderr.log`, the files the process runtime writes. (The shim's own `file://` stdio
//! takes one path and sends both streams to it.)
//!
//! It is the `warren` binary itself, started through a link named [`LOGGER_NAME`] (the CLI
//! runs [`run`] when called by that name). The shim starts it with the task's output pipes as
//! descriptors 3 (stdout) and 4 (stderr) and a pipe on descriptor 5 it reads until the logger
//! is ready; the URI's query arrives as arguments, `dir <replica dir>`, in any order. It is the
//! shim's child, not the agent's: the logs keep flowing while the agent is down or upgraded,
//! and it ends when the task's pipes close.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::super::logs::{STDERR_LOG, STDOUT_LOG, open_append};

/// The name the `warren` binary answers to as the log writer.
pub const LOGGER_NAME: &str = "warren-container-logger";

/// The shim's stdio URI for a task whose logs go to `dir` through the writer at `logger`.
pub fn uri(logger: &Path, dir: &Path) -> String {
    format!(
        "binary://{}?dir={}",
        logger.display(),
        query_escape(&dir.to_string_lossy())
    )
}

/// Escapes a query value the way Go's `url.ParseQuery` (the shim's parser) reads it back:
/// everything but unreserved characters and `/` as `%XX`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The replica dir from the shim's arguments (`key value` pairs in any order).
fn dir_argument(args: &[String]) -> Result<PathBuf, String> {
    args.chunks(2)
        .find(|pair| pair.first().map(String::as_str) == Some("dir"))
        .and_then(|pair| pair.get(1))
        .map(PathBuf::from)
        .ok_or_else(|| format!("{LOGGER_NAME}: no `dir` argument (got {args:?})"))
}

/// Runs the log writer: copies descriptor 3 into `stdout.log` and 4 into `stderr.log` under
/// the `dir` argument until both pipes close. `args` are the arguments after the program name.
///
/// # Errors
/// A missing `dir`, a log file that cannot be opened, or descriptors the shim did not give.
pub fn run(args: &[String]) -> Result<(), String> {
    let dir = dir_argument(args)?;
    let open = |name: &str| open_append(&dir.join(name)).map_err(|e| format!("{LOGGER_NAME}: {e}"));
    let (stdout_log, stderr_log) = (open(STDOUT_LOG)?, open(STDERR_LOG)?);
    // The pipes are reopened through /proc rather than taken over by number: the same pipes,
    // without unsafe code.
    let pipe = |fd: u8| {
        std::fs::File::open(format!("/proc/self/fd/{fd}"))
            .map_err(|e| format!("{LOGGER_NAME}: descriptor {fd}: {e}"))
    };
    let (stdout_pipe, stderr_pipe) = (pipe(3)?, pipe(4)?);
    // Ready: the shim starts the task once it reads a byte (or the end) on descriptor 5.
    OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/5")
        .and_then(|mut wait| wait.write_all(b"r"))
        .map_err(|e| format!("{LOGGER_NAME}: descriptor 5: {e}"))?;
    let stderr = std::thread::spawn(move || copy(stderr_pipe, stderr_log));
    let out = copy(stdout_pipe, stdout_log);
    let err = stderr
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the stderr copy panicked")));
    out.and(err).map_err(|e| format!("{LOGGER_NAME}: {e}"))
}

/// Copies `from` to `to` until the end; every chunk is appended as it comes.
fn copy(mut from: std::fs::File, mut to: std::fs::File) -> io::Result<()> {
    io::copy(&mut from, &mut to).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_carries_the_dir_as_the_shim_reads_it_back() {
        assert_eq!(
            uri(
                Path::new("/var/lib/warren/warren-container-logger"),
                Path::new("/var/lib/warren/workloads/web.1")
            ),
            "binary:///var/lib/warren/warren-container-logger?dir=/var/lib/warren/workloads/web.1"
        );
        assert_eq!(query_escape("/a b/c&d+e%"), "/a%20b/c%26d%2Be%25");
    }

    #[test]
    fn the_dir_comes_from_the_arguments_in_any_order() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            dir_argument(&args(&["dir", "/x/web.1"])),
            Ok(PathBuf::from("/x/web.1"))
        );
        assert_eq!(
            dir_argument(&args(&["other", "1", "dir", "/x/web.1"])),
            Ok(PathBuf::from("/x/web.1"))
        );
        assert!(dir_argument(&args(&[])).is_err());
        assert!(dir_argument(&args(&["dir"])).is_err());
    }
}
