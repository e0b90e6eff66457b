//! The health probes against real parts: an HTTP server on loopback that answers 200, then
//! 500, then not at all; a TCP listener that goes away; commands that pass, fail, and hang
//! past their timeout (killed with their children). No root needed, except to run a probe as
//! its workload's user (it says why it skips otherwise).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warren_edge_agent::health::ProbeOutcome;
use warren_edge_agent::health::probe::{ExecContext, http, run_exec, tcp};
use warren_edge_agent::runtime::Credentials;

mod prerequisites;

const TIMEOUT: Duration = Duration::from_secs(2);

/// An HTTP/1 server on 127.0.0.1 answering every request with the status in `status`.
async fn serve_status(status: Arc<AtomicU16>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let status = status.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: Request<_>| {
                    let code = status.load(Ordering::SeqCst);
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from_static(b"body")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn fail_reason(outcome: ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Fail(reason) => reason,
        ProbeOutcome::Pass => panic!("expected a failure, got a pass"),
    }
}

/// 200 and 302 pass, 500 fails with the status in the reason; a server that accepts but
/// never answers fails at the timeout; a closed port fails on connect.
#[tokio::test]
async fn http_probe_follows_the_server() {
    let status = Arc::new(AtomicU16::new(200));
    let (addr, server) = serve_status(status.clone()).await;
    let url = format!("http://{addr}/health?verbose=1");
    assert_eq!(http(&url, TIMEOUT).await, ProbeOutcome::Pass);
    status.store(302, Ordering::SeqCst);
    assert_eq!(http(&url, TIMEOUT).await, ProbeOutcome::Pass);
    status.store(500, Ordering::SeqCst);
    assert_eq!(
        fail_reason(http(&url, TIMEOUT).await),
        format!("GET {url}: status 500 Internal Server Error")
    );
    server.abort();

    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", silent.local_addr().unwrap());
    let began = Instant::now();
    let reason = fail_reason(http(&url, Duration::from_millis(300)).await);
    assert_eq!(reason, format!("GET {url}: no response within 300ms"));
    assert!(began.elapsed() < TIMEOUT, "took {:?}", began.elapsed());
    drop(silent);
    let reason = fail_reason(http(&url, TIMEOUT).await);
    assert!(reason.contains("connect 127.0.0.1:"), "{reason}");
}

/// A listening port passes; once the listener is closed the probe fails on connect.
#[tokio::test]
async fn tcp_probe_sees_a_listener_go_away() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(tcp(port, TIMEOUT).await, ProbeOutcome::Pass);
    drop(listener);
    let reason = fail_reason(tcp(port, TIMEOUT).await);
    assert!(
        reason.starts_with(&format!("tcp connect 127.0.0.1:{port}: ")),
        "{reason}"
    );
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

async fn exec(args: &[&str], env: &BTreeMap<String, String>, dir: Option<&Path>) -> ProbeOutcome {
    let context = ExecContext {
        env: env.clone(),
        working_dir: dir.map(Path::to_path_buf),
        credentials: None,
        container: None,
    };
    run_exec(&argv(args), &context, TIMEOUT).await
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Exit 0 passes, anything else fails with the code and the first line of output; the
/// workload's environment and directory are used; a missing program is a failure, not a
/// panic.
#[tokio::test]
async fn exec_probe_passes_on_exit_zero() {
    let none = BTreeMap::new();
    assert_eq!(exec(&["true"], &none, None).await, ProbeOutcome::Pass);
    assert_eq!(
        fail_reason(exec(&["false"], &none, None).await),
        "exec false: exit code 1"
    );
    assert_eq!(
        fail_reason(
            exec(
                &["sh", "-c", "echo; echo 'not ready' >&2; exit 3"],
                &none,
                None
            )
            .await
        ),
        "exec sh: exit code 3: not ready"
    );
    let reason = fail_reason(exec(&["/nonexistent/check"], &none, None).await);
    assert!(reason.starts_with("exec /nonexistent/check: "), "{reason}");

    let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
    let greets = ["sh", "-c", "test \"$GREETING\" = hi"];
    assert_eq!(exec(&greets, &env, None).await, ProbeOutcome::Pass);
    assert!(matches!(
        exec(&greets, &none, None).await,
        ProbeOutcome::Fail(_)
    ));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ready"), b"").unwrap();
    let ready = ["test", "-f", "ready"];
    assert_eq!(
        exec(&ready, &none, Some(dir.path())).await,
        ProbeOutcome::Pass
    );

    // Output beyond the cap is read and dropped, never blocks the command.
    let chatty = ["sh", "-c", "head -c 1000000 /dev/zero; exit 0"];
    assert_eq!(exec(&chatty, &none, None).await, ProbeOutcome::Pass);
}

/// A command that outlives its timeout is a failure, returned at the timeout, and is killed
/// together with the children it started.
#[tokio::test]
async fn exec_probe_past_its_timeout_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let began = Instant::now();
    let outcome = run_exec(
        &argv(&["sh", "-c", &script]),
        &ExecContext::default(),
        Duration::from_millis(500),
    )
    .await;
    let took = began.elapsed();
    assert_eq!(
        fail_reason(outcome),
        "exec sh: killed after its timeout of 500ms"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(child) {
        assert!(
            Instant::now() < deadline,
            "the probe's child {child} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An exec probe runs as its workload does: its user, its (lack of) capabilities and
/// `no_new_privs`, so that a probe running a file the workload can write gives it nothing
/// more. Needs root (switching users); prints why it skips otherwise.
#[tokio::test]
async fn exec_probes_run_as_the_workloads_user() {
    if !prerequisites::require(
        "exec_probes_run_as_the_workloads_user",
        [prerequisites::root()],
    ) {
        return;
    }
    let as_nobody = ExecContext {
        credentials: Some(Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
            capabilities: 0,
            switched: true,
        }),
        ..ExecContext::default()
    };
    let check = "test \"$(id -u):$(id -g)\" = 65534:65534 && \
        grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/self/status && \
        grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status";
    let argv = argv(&["sh", "-c", check]);
    assert_eq!(
        run_exec(&argv, &as_nobody, TIMEOUT).await,
        ProbeOutcome::Pass
    );
    // The same check as the agent (root) fails: the context is what made the difference.
    let as_agent = ExecContext::default();
    assert!(matches!(
        run_exec(&argv, &as_agent, TIMEOUT).await,
        ProbeOutcome::Fail(_)
    ));
}
