//! A join token given as `--token VALUE` leaves the command line before anything else runs:
//! other local users read command lines (`ps`, `/proc/PID/cmdline`). The process writes the
//! token into a pipe and replaces itself (exec, same pid) with the same command, `--token VALUE`
//! swapped for `--token-file /dev/fd/N`, N the pipe's read end — which only this process holds.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

/// `argv` (without the program name) with `--token VALUE` / `--token=VALUE` replaced, where it
/// stood, by `--token-file /dev/fd/FD`, and the token; `None` when no `--token` is there (or it
/// has no value, which clap reports). When `--token-file` is given too (it wins), `--token` is
/// only dropped, and the token is not returned.
pub fn without_token(argv: &[OsString], fd: i32) -> Option<(Vec<OsString>, Option<String>)> {
    let has_file = argv.iter().any(|a| {
        let text = a.to_string_lossy();
        text == "--token-file" || text.starts_with("--token-file=")
    });
    let mut out = Vec::with_capacity(argv.len() + 1);
    let mut token = None;
    let mut found = false;
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let value = if text == "--" {
            out.push(arg.clone());
            out.extend(args.by_ref().cloned());
            break;
        } else if text == "--token" {
            args.next()?.to_string_lossy().into_owned()
        } else if let Some(value) = text.strip_prefix("--token=") {
            value.to_owned()
        } else {
            out.push(arg.clone());
            continue;
        };
        found = true;
        if !has_file {
            out.push("--token-file".into());
            out.push(format!("/dev/fd/{fd}").into());
            token = Some(value);
        }
    }
    found.then_some((out, token))
}

/// If the command line holds `--token`, replaces this process with the same command reading
/// the token from a pipe instead. Returns only when there is nothing to do or the exec failed
/// (then the caller carries on with the token where it was, and says so).
///
/// # Errors
/// Why the token could not be moved.
pub fn move_token_off_the_command_line() -> std::io::Result<()> {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if !argv.iter().any(|a| {
        let text = a.to_string_lossy();
        text == "--token" || text.starts_with("--token=")
    }) {
        return Ok(());
    }
    // Without O_CLOEXEC: the read end must survive the exec.
    let (read, write) = rustix::pipe::pipe()?;
    let Some((args, token)) = without_token(&argv, read.as_raw_fd()) else {
        return Ok(());
    };
    if let Some(token) = token {
        send(write, &token)?;
    }
    let exe = std::env::current_exe()?;
    let error = std::process::Command::new(exe).args(args).exec();
    drop(read);
    Err(error)
}

/// Writes the token and closes the write end (the reader then sees its end).
fn send(write: OwnedFd, token: &str) -> std::io::Result<()> {
    let mut file = std::fs::File::from(write);
    file.write_all(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<OsString> {
        text.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn the_token_flag_becomes_a_file_descriptor() {
        let (args, token) = without_token(
            &argv("control join --join 10.0.0.1:7101 --token WRN1-secret --name c2"),
            3,
        )
        .unwrap();
        assert_eq!(token.as_deref(), Some("WRN1-secret"));
        assert_eq!(
            args,
            argv("control join --join 10.0.0.1:7101 --token-file /dev/fd/3 --name c2")
        );
        let (args, token) =
            without_token(&argv("agent join --token=WRN1-x --data-dir /d"), 7).unwrap();
        assert_eq!(token.as_deref(), Some("WRN1-x"));
        assert_eq!(
            args,
            argv("agent join --token-file /dev/fd/7 --data-dir /d")
        );
        let (args, token) =
            without_token(&argv("agent join --token WRN1-x --token-file /t"), 7).unwrap();
        assert_eq!(token, None, "--token-file wins");
        assert_eq!(args, argv("agent join --token-file /t"));
        assert!(without_token(&argv("agent join --token-file /t"), 3).is_none());
        assert!(without_token(&argv("agent join --token"), 3).is_none());
    }
}
