//! Helpers shared by the CLI's subprocess tests: a `warren` command with a clean environment,
//! success assertions, and foreground children whose stdout lines can be awaited.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a foreground command may take to print the line a test waits for.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `warren` with no cluster access leaking in from the machine running the tests.
pub fn command() -> Command {
    command_of(Path::new(env!("CARGO_BIN_EXE_warren")))
}

/// [`command`] for the `warren` binary at `program` (a copy standing for an upgrade, say).
pub fn command_of(program: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_remove("WARREN_CONFIG")
        .env_remove("WARREN_LOG")
        .env_remove("WARREN_TOKEN")
        .env_remove("WARREN_SELFCHECK_STOP_ON_DISCONNECT")
        .env("HOME", "/nonexistent-warren-test-home");
    command
}

/// Runs an admin command against the cluster of `config` (an `admin.conf`); returns stdout.
#[track_caller]
pub fn admin(config: &Path, args: &[&str]) -> String {
    ok(command()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run warren"))
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

    /// Where the child's stderr goes.
    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
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

    /// Sends `signal` (`-TERM`, `-INT`, `-HUP`, `-USR1`, `-KILL`, `-STOP`, `-CONT`) by the
    /// system call, so that no `kill` program is needed.
    pub fn signal(&self, signal: &str) {
        use rustix::process::{Pid, Signal, kill_process};
        let which = match signal {
            "-TERM" => Signal::TERM,
            "-INT" => Signal::INT,
            "-HUP" => Signal::HUP,
            "-USR1" => Signal::USR1,
            "-KILL" => Signal::KILL,
            "-STOP" => Signal::STOP,
            "-CONT" => Signal::CONT,
            other => panic!("no such signal in these tests: {other}"),
        };
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child has a process id");
        kill_process(pid, which).unwrap_or_else(|e| panic!("kill {signal} {pid:?}: {e}"));
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

/// Polls `cond` every 100 ms until it gives a value or `timeout` passes.
#[track_caller]
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = cond() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `warren agent status -o json` for `data_dir`, if it answers.
pub fn agent_status(data_dir: &Path) -> Option<serde_json::Value> {
    let output = command()
        .args(["agent", "status", "-o", "json", "--data-dir"])
        .arg(data_dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// Pids of the running replicas in an agent status.
pub fn running_pids(status: &serde_json::Value) -> Vec<u64> {
    status["replicas"]
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .filter(|r| r["state"] == "running")
                .filter_map(|r| r["pid"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A `warren control init` child on loopback ports in `dir/control`; returns it, its QUIC
/// address and the admin.conf path.
pub fn control_init(dir: &Path) -> (Foreground, String, PathBuf) {
    control_init_with(dir, &["--metrics", "none"])
}

/// [`control_init`] with `extra` flags after the defaults (a metrics address, say, instead of
/// none).
pub fn control_init_with(dir: &Path, extra: &[&str]) -> (Foreground, String, PathBuf) {
    let control_dir = dir.join("control");
    let mut args = vec![
        "control",
        "init",
        "--name",
        "ops-1",
        "--site",
        "central",
        "--api",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
        "--data-dir",
        control_dir.to_str().expect("utf-8 path"),
    ];
    args.extend(extra);
    let mut control = Foreground::spawn(&args, dir.join("control.stderr.log"));
    let ready = control.wait_for_line(" serving ");
    let quic = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("quic="))
        .expect("quic address in the ready line")
        .to_owned();
    (control, quic, control_dir.join("admin.conf"))
}

/// Kills every process left under a directory when dropped (workloads outlive their agent by
/// design).
pub struct KillUnder(pub PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        for pid in processes_under(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// `warren agent join` as node `name` in site lisbon, in `dir/agent`, against the control node
/// at `quic` (a token made with the admin `config`), with no metrics, DNS or fixed gossip
/// port (the control node's gossip holds the default), `extra` flags after; waits for its
/// ready line. Returns it and its data dir.
pub fn join_agent(
    dir: &Path,
    quic: &str,
    config: &Path,
    name: &str,
    extra: &[&str],
) -> (Foreground, PathBuf) {
    let token = ok(command()
        .arg("--config")
        .arg(config)
        .args(["token", "create", "--role", "agent"])
        .output()
        .expect("run warren"));
    let agent_dir = dir.join("agent");
    let agent_dir_text = agent_dir.to_str().expect("utf-8 path").to_owned();
    let mut args = vec![
        "agent",
        "join",
        "--data-dir",
        &agent_dir_text,
        "--control",
        quic,
        "--token",
        token.trim(),
        "--name",
        name,
        "--site",
        "lisbon",
        "--metrics",
        "none",
        "--gossip",
        "127.0.0.1:0",
        "--dns",
        "none",
    ];
    args.extend(extra);
    let mut agent = Foreground::spawn(&args, dir.join("agent.stderr.log"));
    agent.wait_for_line(" running");
    (agent, agent_dir)
}

/// Pids of live processes whose working directory is under `dir` (the process runtime runs
/// each workload in its replica directory).
pub fn processes_under(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Live (not zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            // Fields after the command (which may hold spaces): state, ppid, pgrp, …
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().collect())
                    .unwrap_or_default();
                fields.len() > 2
                    && fields[0] != "Z"
                    && fields[0] != "X"
                    && fields[2] == pgid.to_string()
            })
        })
        .collect()
}

/// A child spawned as the leader of its own process group (`process_group(0)`), together with
/// every process it leaves in that group (a shell script's background jobs). The whole group
/// is killed when dropped.
pub struct ProcessGroup {
    leader: Child,
    pgid: u32,
}

impl ProcessGroup {
    pub fn new(leader: Child) -> Self {
        let pgid = leader.id();
        ProcessGroup { leader, pgid }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
    }

    /// Waits for the leader (not the rest of the group) to exit.
    #[track_caller]
    pub fn wait_leader(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.leader.try_wait().expect("wait for the group leader") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the group leader did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the whole group, then waits until none of it is left.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) {
        self.signal("-TERM");
        wait_until("the process group to stop", timeout, || {
            group_members(self.pgid).is_empty().then_some(())
        });
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.leader.kill();
        let _ = self.leader.wait();
    }
}

/// `GET path` on the plain-HTTP listener at `addr`: the whole response, head and body.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}
