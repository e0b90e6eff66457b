//! The probes themselves: one HTTP GET, one TCP connect, one command run. Each takes its
//! timeout and always returns within it (plus a short bound to reap a killed command); every
//! failure carries a one-line reason for events and `warren agent status`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use warren_api::format_duration_ms;
use warren_api::service::Probe;

use crate::runtime::Credentials;
use crate::runtime::containerd::{ContainerExec, ExecError, exec_in_container};
use crate::runtime::privileges::{self, ChildSetup};
use crate::runtime::process::DEFAULT_PATH;

/// The most of an exec probe's stdout and of its stderr kept (the rest is read and dropped,
/// so that a chatty command cannot block on a full pipe).
pub const MAX_EXEC_OUTPUT_BYTES: usize = 4096;
/// The longest failure reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// How long a killed exec probe gets to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The workload answered as required.
    Pass,
    /// It did not; one line saying why.
    Fail(String),
}

impl ProbeOutcome {
    fn fail(reason: impl AsRef<str>) -> Self {
        ProbeOutcome::Fail(one_line(reason.as_ref()))
    }
}

/// What an exec probe runs with besides its argv: what the workload runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecContext {
    /// The workload's environment (the agent's own is not inherited); `PATH` defaults to the
    /// process runtime's.
    pub env: BTreeMap<String, String>,
    /// Where to run it; `None` leaves the agent's working directory.
    pub working_dir: Option<std::path::PathBuf>,
    /// Who to run it as: the workload's user and capabilities, so that a probe (which may run
    /// a file the workload can write) never runs with more than the workload has. `None`: as
    /// the agent, for a workload an older agent started as itself.
    pub credentials: Option<Credentials>,
    /// The container to run it in, as the container's process runs (its user, environment
    /// and working directory; the fields above are then unused). `None`: on the host.
    pub container: Option<ContainerExec>,
}

/// Runs `probe` once, bounded by `timeout`.
///
/// # Cancel safety
/// Safe: a dropped exec probe kills its command (`kill_on_drop`; its process group when the
/// timeout fires).
pub async fn run(probe: &Probe, timeout: Duration, exec: &ExecContext) -> ProbeOutcome {
    match probe {
        Probe::Http { url } => http(url, timeout).await,
        Probe::Tcp { port } => tcp(*port, timeout).await,
        Probe::Exec { command } => run_exec(command, exec, timeout).await,
    }
}

/// `GET url` over HTTP/1.1 on a fresh connection; a 2xx or 3xx status passes. The body is not
/// read.
pub async fn http(url: &str, timeout: Duration) -> ProbeOutcome {
    match tokio::time::timeout(timeout, http_get(url)).await {
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => ProbeOutcome::Pass,
        Ok(Ok(status)) => ProbeOutcome::fail(format!("GET {url}: status {status}")),
        Ok(Err(reason)) => ProbeOutcome::fail(format!("GET {url}: {reason}")),
        Err(_) => ProbeOutcome::fail(format!(
            "GET {url}: no response within {}",
            format_duration_ms(millis(timeout))
        )),
    }
}

async fn http_get(url: &str) -> Result<hyper::StatusCode, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https health checks are not supported yet".to_owned()),
        _ => return Err("only http:// urls can be probed".to_owned()),
    }
    let host = uri.host().ok_or("the url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    // `host` keeps the brackets of an IPv6 literal, which is what lookup_host wants too.
    let authority = format!("{host}:{port}");
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(
            hyper::header::HOST,
            uri.authority().map_or(host, |a| a.as_str()),
        )
        .header(hyper::header::USER_AGENT, "warren-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("build request: {e}"))?;
    // The connection is driven here, not in a spawned task, so that nothing of the probe
    // outlives it.
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        response = sender.send_request(request) => response
            .map(|r| r.status())
            .map_err(|e| format!("request: {e}")),
        end = &mut connection => Err(match end {
            Ok(()) => "connection closed before a response".to_owned(),
            Err(e) => format!("connection: {e}"),
        }),
    }
}

/// A TCP connect to `127.0.0.1:port`.
pub async fn tcp(port: u16, timeout: Duration) -> ProbeOutcome {
    let addr = format!("127.0.0.1:{port}");
    match tokio::time::timeout(timeout, TcpStream::connect(addr.as_str())).await {
        Ok(Ok(_stream)) => ProbeOutcome::Pass,
        Ok(Err(e)) => ProbeOutcome::fail(format!("tcp connect {addr}: {e}")),
        Err(_) => ProbeOutcome::fail(format!(
            "tcp connect {addr}: no answer within {}",
            format_duration_ms(millis(timeout))
        )),
    }
}

/// Runs `argv` (no shell) in its own process group with the context's environment (plus a
/// default `PATH`), working directory and credentials, and stdin from `/dev/null`; exit code 0
/// passes. At the timeout the whole process group is killed, so that a probe's children do not
/// linger either.
pub async fn run_exec(argv: &[String], exec: &ExecContext, timeout: Duration) -> ProbeOutcome {
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return ProbeOutcome::fail("exec: empty command");
    };
    if let Some(container) = &exec.container {
        return run_in_container(program, argv, container, timeout).await;
    }
    let mut command = tokio::process::Command::new(program);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(&exec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &exec.working_dir {
        command.current_dir(dir);
    }
    if let Some(credentials) = &exec.credentials {
        match ChildSetup::new(credentials, None, &[]) {
            Ok(setup) => privileges::install(command.as_std_mut(), setup),
            Err(e) => return ProbeOutcome::fail(format!("exec {program}: {e}")),
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return ProbeOutcome::fail(format!("exec {program}: {e}")),
    };
    // A dropped probe (the monitor cancelled) kills the whole group too.
    let mut group = GroupKill(child.id());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = tokio::time::timeout(timeout, async {
        tokio::join!(child.wait(), read_capped(stdout), read_capped(stderr))
    })
    .await;
    match finished {
        Ok((status, stdout, stderr)) => {
            // Everything ended and the pipes are closed: the group may be empty and its id
            // free for reuse, so it must not be signalled any more.
            group.disarm();
            match status {
                Ok(status) => exit_outcome(program, status, &stdout, &stderr),
                Err(e) => ProbeOutcome::fail(format!("exec {program}: wait: {e}")),
            }
        }
        Err(_) => {
            // The child or something holding its pipes still runs, so the group id is in use.
            drop(group);
            let _ = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
            ProbeOutcome::fail(format!(
                "exec {program}: killed after its timeout of {}",
                format_duration_ms(millis(timeout))
            ))
        }
    }
}

/// Runs `argv` inside `container` (containerd's task exec); exit status 0 passes. At the
/// timeout the exec process is killed; the whole call is bounded by the timeout plus
/// [`REAP_TIMEOUT`].
async fn run_in_container(
    program: &str,
    argv: &[String],
    container: &ContainerExec,
    timeout: Duration,
) -> ProbeOutcome {
    // The command's own timeout bounds only its run; a containerd that does not answer is
    // bounded here, with the time a killed command gets to go.
    let bounded = tokio::time::timeout(
        timeout + REAP_TIMEOUT,
        exec_in_container(container, argv, timeout),
    );
    let Ok(ran) = bounded.await else {
        return ProbeOutcome::fail(format!(
            "exec {program} in the container: containerd did not answer within {}",
            format_duration_ms(millis(timeout + REAP_TIMEOUT))
        ));
    };
    match ran {
        Ok(exit) if exit.status == 0 => ProbeOutcome::Pass,
        Ok(exit) => {
            let how = format!("exit code {}", exit.status);
            match first_line(&exit.output) {
                Some(line) => ProbeOutcome::fail(format!("exec {program}: {how}: {line}")),
                None => ProbeOutcome::fail(format!("exec {program}: {how}")),
            }
        }
        Err(ExecError::TimedOut) => ProbeOutcome::fail(format!(
            "exec {program}: killed after its timeout of {}",
            format_duration_ms(millis(timeout))
        )),
        Err(e) => ProbeOutcome::fail(format!("exec {program} in the container: {e}")),
    }
}

/// Exit code 0 passes; otherwise the code (or signal) and the first line of output say why.
fn exit_outcome(
    program: &str,
    status: std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> ProbeOutcome {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return ProbeOutcome::Pass;
    }
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended abnormally".to_owned(),
    };
    match first_line(stderr).or_else(|| first_line(stdout)) {
        Some(line) => ProbeOutcome::fail(format!("exec {program}: {how}: {line}")),
        None => ProbeOutcome::fail(format!("exec {program}: {how}")),
    }
}

/// Sends SIGKILL to a probe's process group when dropped.
#[derive(Debug)]
struct GroupKill(Option<u32>);

impl GroupKill {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        let pid = self
            .0
            .and_then(|pgid| i32::try_from(pgid).ok())
            .and_then(Pid::from_raw);
        if let Some(pid) = pid {
            // ESRCH (already gone) is the common case after a timeout race; nothing to do.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }
}

/// Reads `reader` to its end, keeping the first [`MAX_EXEC_OUTPUT_BYTES`].
async fn read_capped(reader: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else {
        return kept;
    };
    let mut buffer = [0_u8; 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_EXEC_OUTPUT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

/// The first non-blank line of `output`, if any.
fn first_line(output: &[u8]) -> Option<String> {
    String::from_utf8_lossy(output)
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
}

/// `text` on one line of at most [`MAX_REASON_CHARS`] characters.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    if text.chars().count() > MAX_REASON_CHARS {
        line.push('…');
    }
    line
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(one_line("a\nb\tc"), "a b c");
        let long = "x".repeat(MAX_REASON_CHARS + 5);
        let line = one_line(&long);
        assert_eq!(line.chars().count(), MAX_REASON_CHARS + 1);
        assert!(line.ends_with('…'));
        assert_eq!(
            first_line(b"\n  \n  first \nsecond"),
            Some("first".to_owned())
        );
        assert_eq!(first_line(b" \n"), None);
    }

    #[tokio::test]
    async fn urls_that_cannot_be_probed_say_why() {
        let timeout = Duration::from_secs(1);
        let cases = [
            (
                "https://127.0.0.1:1/health",
                "GET https://127.0.0.1:1/health: https health checks are not supported yet",
            ),
            (
                "ftp://127.0.0.1/x",
                "GET ftp://127.0.0.1/x: only http:// urls can be probed",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(
                http(url, timeout).await,
                ProbeOutcome::Fail(expected.to_owned())
            );
        }
    }
}
