//! Helpers shared by the CLI's subprocess tests: a `warren` command with a clean environment,
//! success assertions, and foreground children whose stdout lines can be awaited.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a foreground command may take to print the line a test waits for.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `warren` with no cluster access leaking in from the machine running the tests.
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    command
        .env_remove("WARREN_CONFIG")
        .env_remove("WARREN_LOG")
        .env_remove("WARREN_TOKEN")
        .env("HOME", "/nonexistent-warren-test-home");
    command
}

#[track_caller]
/// Asserts success and returns stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A `warren` child in the foreground whose stdout lines are collected; killed when dropped.
pub struct Foreground {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr_log: PathBuf,
}

impl Foreground {
    pub fn spawn(args: &[&str], stderr_log: PathBuf) -> Self {
        let log = std::fs::File::create(&stderr_log).expect("create stderr log");
        let mut child = command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn warren");
        let (sender, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Foreground {
            child,
            lines,
            stderr_log,
        }
    }

    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {needle:?} within {READY_TIMEOUT:?}; stderr: {}",
                    std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
                ),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for warren") {
                return status;
            }
            assert!(Instant::now() < deadline, "warren did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
