//! The container runtime against a real containerd of the test's own (see `testkit`); each
//! test skips with a printed reason where containerd, runc, busybox or root is missing, and
//! fails instead under `CI=true`.

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use warren_api::ids::{ReplicaId, ServiceName};

use super::testkit::{Containerd, Registry, push_busybox_as, skip, write_busybox_layout};
use super::*;
use crate::health::probe::ProbeOutcome;

const IMAGE: &str = "warren.test/busybox:1";

struct Fixture {
    options: ContainerdOptions,
    root: PathBuf,
    runtime: ContainerdRuntime,
    daemon: Containerd,
    // Last: removed after the daemon has stopped.
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A containerd, a runtime on it and the busybox image imported; `None`: skip.
    async fn new(test: &str) -> Option<Fixture> {
        if skip(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let daemon = Containerd::start(&dir.path().join("containerd")).expect("start containerd");
        // No pulls unless a test says so: a test's traffic stays on loopback.
        let options = ContainerdOptions {
            socket: daemon.socket().to_owned(),
            pull: false,
            ..ContainerdOptions::default()
        };
        let root = dir.path().join("workloads");
        let runtime = ContainerdRuntime::new(root.clone(), options.clone()).expect("runtime");
        let tarball = dir.path().join("busybox.tar");
        write_busybox_layout(&tarball, IMAGE).expect("build busybox image");
        let began = Instant::now();
        let imported = runtime.import(&tarball).await.expect("import busybox");
        eprintln!("{test}: import took {:?}", began.elapsed());
        assert_eq!(imported[0].name, IMAGE);
        assert_eq!(imported[0].layers_unpacked, 1);
        Some(Fixture {
            options,
            root,
            runtime,
            daemon,
            _dir: dir,
        })
    }

    fn ctr(&self, args: &[&str]) -> String {
        self.daemon.ctr(DEFAULT_NAMESPACE, args)
    }
}

fn request(service: &str, script: &str) -> WorkloadRequest {
    WorkloadRequest {
        replica: ReplicaId::replicated(ServiceName::new(service).expect("service name"), 0),
        image: Some(IMAGE.to_owned()),
        workload_hash: 42,
        argv: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        env: BTreeMap::new(),
        working_dir: None,
        user: None,
        group: None,
        cap_add: vec![],
        secrets: vec![],
        volumes: vec![],
        memory_bytes: None,
        cpu_millis: None,
        registry_auth: None,
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Import, then a container that prints and sleeps: its output reaches the replica's log
/// file, it observes as running, a SIGTERM stops it, and cleanup leaves no task, container,
/// snapshot or cgroup directory behind.
#[tokio::test]
async fn container_runs_logs_stops_and_is_cleaned_up() {
    let Some(fx) = Fixture::new("container_runs_logs_stops_and_is_cleaned_up").await else {
        return;
    };
    // PID 1 of a container has no default action for SIGTERM: the script must trap it.
    let script = "trap 'exit 0' TERM; echo hello from busybox; while true; do sleep 1; done";
    let request = request("ctr-run", script);
    let began = Instant::now();
    let handle = fx.runtime.start(&request).await.expect("start");
    eprintln!("start → task running took {:?}", began.elapsed());
    let log = handle.record().stdout_log.clone();
    assert!(log.starts_with(&fx.root), "{}", log.display());
    assert!(log.is_absolute(), "{}", log.display());
    let logged = wait_until(Duration::from_secs(5), async || {
        read(&log).contains("hello from busybox")
    })
    .await;
    assert!(logged, "log: {:?}", read(&log));
    let observed = fx.runtime.observe(&handle).await.expect("observe");
    assert_eq!(observed, RuntimeObservation::Running);
    // A second start of the same spec takes the running container over; another spec's
    // start is refused.
    let again = fx.runtime.start(&request).await.expect("second start");
    assert_eq!(again.record().pid(), handle.record().pid());
    let mut other_spec = request.clone();
    other_spec.workload_hash += 1;
    let err = fx
        .runtime
        .start(&other_spec)
        .await
        .expect_err("other spec's start");
    assert!(matches!(err, RuntimeError::AlreadyRunning { .. }), "{err}");
    let err = fx
        .runtime
        .cleanup(&request.replica)
        .await
        .expect_err("cleanup while running");
    assert!(matches!(err, RuntimeError::StillRunning { .. }), "{err}");

    let outcome = fx
        .runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    assert_eq!(outcome, StopOutcome::Terminated);
    let observed = fx.runtime.observe(&handle).await.expect("observe");
    assert!(
        matches!(observed, RuntimeObservation::Exited { .. }),
        "{observed:?}"
    );

    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
    let id = request.replica.to_string();
    assert!(!fx.ctr(&["tasks", "ls"]).contains(&id));
    assert!(!fx.ctr(&["containers", "ls", "-q"]).contains(&id));
    let snapshots = fx.ctr(&["snapshots", "--snapshotter", &fx.options.snapshotter, "ls"]);
    assert!(!snapshots.contains(&format!("{id} ")), "{snapshots}");
    for controller in ["memory", "cpu", "pids", "freezer"] {
        let dir = fx
            .options
            .cgroup_root
            .join(controller)
            .join(CGROUP_PARENT)
            .join(&id);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
    assert_eq!(
        fx.runtime.observe(&handle).await.expect("observe"),
        RuntimeObservation::Gone
    );
    // The image and its layers stay for the next start.
    assert!(fx.ctr(&["images", "ls", "-q"]).contains(IMAGE));
}

/// The spec's environment, secrets (read-only at /run/secrets) and the agent's resolv.conf
/// reach the container.
#[tokio::test]
async fn container_gets_env_secrets_and_dns() {
    let Some(mut fx) = Fixture::new("container_gets_env_secrets_and_dns").await else {
        return;
    };
    let resolv = fx.root.with_file_name("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.53\n").expect("write resolv.conf");
    fx.options.resolv_conf = Some(resolv);
    fx.runtime = ContainerdRuntime::new(fx.root.clone(), fx.options.clone()).expect("runtime");
    let mut request = request(
        "ctr-env",
        "echo mode=$MODE; cat $WARREN_SECRETS_DIR/token; echo; cat /etc/resolv.conf; echo x > /run/secrets/token || echo read-only; trap 'exit 0' TERM; while true; do sleep 1; done",
    );
    request.env.insert("MODE".to_owned(), "edge".to_owned());
    request.secrets = vec![("token".to_owned(), b"s3cret".to_vec())];
    let handle = fx.runtime.start(&request).await.expect("start");
    let log = handle.record().stdout_log.clone();
    let logged = wait_until(Duration::from_secs(5), async || {
        read(&log).contains("read-only")
    })
    .await;
    let text = read(&log);
    assert!(logged, "log: {text:?}");
    assert!(text.contains("mode=edge"), "{text}");
    assert!(text.contains("s3cret"), "{text}");
    assert!(text.contains("nameserver 127.0.0.53"), "{text}");
    fx.runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
    assert!(
        !fx.runtime
            .replica_dir(&request.replica)
            .join("secrets")
            .exists()
    );
}

/// The agent restarts (the runtime is dropped and made again): the running container is
/// adopted with the same task pid and keeps running; a record of another spec is not adopted.
#[tokio::test]
async fn new_runtime_adopts_running_container_without_restart() {
    let Some(mut fx) = Fixture::new("new_runtime_adopts_running_container_without_restart").await
    else {
        return;
    };
    let script = "trap 'exit 0' TERM; echo started; while true; do sleep 1; done";
    let request = request("ctr-adopt", script);
    let handle = fx.runtime.start(&request).await.expect("start");
    let record = handle.record().clone();
    fx.runtime = ContainerdRuntime::new(fx.root.clone(), fx.options.clone()).expect("runtime");
    let mut other_spec = record.clone();
    other_spec.workload_hash += 1;
    assert!(fx.runtime.adopt(&other_spec).await.is_none());
    let adopted = fx.runtime.adopt(&record).await.expect("adopt");
    assert_eq!(adopted.record().pid(), record.pid());
    assert_eq!(
        fx.runtime.observe(&adopted).await.expect("observe"),
        RuntimeObservation::Running
    );
    assert_eq!(
        read(&record.stdout_log).matches("started").count(),
        1,
        "restarted?"
    );
    fx.runtime
        .stop(&adopted, Duration::from_secs(5))
        .await
        .expect("stop");
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
}

/// The task's process is killed behind the runtime's back: observe reports the exit (with
/// the signal), and a new start (what the planner does) runs it again.
#[tokio::test]
async fn killed_task_is_observed_and_restartable() {
    let Some(fx) = Fixture::new("killed_task_is_observed_and_restartable").await else {
        return;
    };
    let request = request("ctr-kill", "sleep 60");
    let handle = fx.runtime.start(&request).await.expect("start");
    let pid = handle.record().pid().expect("pid");
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
    let exited = wait_until(Duration::from_secs(5), async || {
        matches!(
            fx.runtime.observe(&handle).await,
            Ok(RuntimeObservation::Exited { .. })
        )
    })
    .await;
    assert!(exited);
    let observed = fx.runtime.observe(&handle).await.expect("observe");
    assert_eq!(
        observed,
        RuntimeObservation::Exited {
            code: None,
            signal: Some(9)
        }
    );
    let again = fx.runtime.start(&request).await.expect("start again");
    assert_ne!(again.record().pid(), handle.record().pid());
    assert_eq!(
        fx.runtime.observe(&again).await.expect("observe"),
        RuntimeObservation::Running
    );
    // The old handle names a task that is no more.
    assert_eq!(
        fx.runtime.observe(&handle).await.expect("observe"),
        RuntimeObservation::Gone
    );
    fx.runtime
        .stop(&again, Duration::from_secs(5))
        .await
        .expect("stop");
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
}

/// A 16 MiB memory limit: a process that allocates 64 MiB is OOM-killed, and the runtime
/// reports an OOM kill under that limit, not a mere SIGKILL.
#[tokio::test]
async fn memory_limit_oom_kills() {
    let Some(fx) = Fixture::new("memory_limit_oom_kills").await else {
        return;
    };
    // dd allocates its whole 64 MiB block before reading.
    let mut request = request("ctr-oom", "");
    request.argv = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
        .map(str::to_owned)
        .to_vec();
    request.memory_bytes = Some(16 << 20);
    let handle = fx.runtime.start(&request).await.expect("start");
    let exited = wait_until(Duration::from_secs(10), async || {
        fx.runtime
            .observe(&handle)
            .await
            .is_ok_and(RuntimeObservation::has_exited)
    })
    .await;
    assert!(exited);
    let observed = fx.runtime.observe(&handle).await.expect("observe");
    assert_eq!(
        observed,
        RuntimeObservation::OomKilled {
            memory_limit_bytes: Some(16 << 20)
        }
    );
    assert_eq!(
        crate::runtime::describe_oom_kill(Some(16 << 20)),
        "OOM-killed (memory limit 16 MiB)"
    );
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
}

/// A container killed by SIGKILL without memory trouble is not an OOM kill.
#[tokio::test]
async fn sigkill_without_oom_is_not_an_oom_kill() {
    let Some(fx) = Fixture::new("sigkill_without_oom_is_not_an_oom_kill").await else {
        return;
    };
    let mut request = request("ctr-kill9", "while true; do sleep 1; done");
    request.memory_bytes = Some(16 << 20);
    let handle = fx.runtime.start(&request).await.expect("start");
    let id = request.replica.to_string();
    let conn = fx.runtime.connection().await.expect("connect");
    task::kill(conn, &id, SIGKILL).await.expect("kill");
    let exited = wait_until(Duration::from_secs(10), async || {
        fx.runtime
            .observe(&handle)
            .await
            .is_ok_and(RuntimeObservation::has_exited)
    })
    .await;
    assert!(exited);
    let observed = fx.runtime.observe(&handle).await.expect("observe");
    assert_eq!(
        observed,
        RuntimeObservation::Exited {
            code: None,
            signal: Some(9)
        }
    );
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
}

/// An image that is not in the store: start fails with a retryable "image unavailable".
#[tokio::test]
async fn missing_image_is_unavailable_and_retryable() {
    let Some(fx) = Fixture::new("missing_image_is_unavailable_and_retryable").await else {
        return;
    };
    let mut request = request("ctr-missing", "true");
    request.image = Some("warren.test/missing:1".to_owned());
    let err = fx.runtime.start(&request).await.expect_err("start");
    assert!(
        matches!(err, RuntimeError::ImageUnavailable { .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    let message = err.to_string();
    assert!(
        message.starts_with("image unavailable: warren.test/missing:1"),
        "{message}"
    );
    assert!(message.ends_with("; retrying"), "{message}");
    assert!(
        message.contains("load it with `warren image load`"),
        "{message}"
    );
    let mut process = request.clone();
    process.image = None;
    let err = fx
        .runtime
        .start(&process)
        .await
        .expect_err("start a process");
    assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err}");
}

/// Pushes the busybox image to `reference` on a loopback registry, as `docker push` would.
async fn push_busybox(reference: &str) {
    push_busybox_as(reference, None)
        .await
        .expect("push busybox");
}

/// Whether the registry tests may run; prints why not (fails under `CI=true`).
fn registry_available(test: &str) -> bool {
    prerequisite(test, Registry::missing())
}

/// Whether a test may run without the prerequisite `missing` says is missing, if any; prints
/// why not (fails under `CI=true`).
fn prerequisite(test: &str, missing: Option<String>) -> bool {
    let Some(reason) = missing else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {reason} (CI=true: prerequisites must be present)"
    );
    eprintln!("skipping {test}: {reason}");
    false
}

/// An image on a loopback registry and not in the store: the first start says it is being
/// pulled and fails (retryable); once the background pull is done a start runs it.
#[tokio::test]
async fn missing_image_is_pulled_from_a_registry() {
    let test = "missing_image_is_pulled_from_a_registry";
    let Some(mut fx) = Fixture::new(test).await else {
        return;
    };
    if !registry_available(test) {
        return;
    }
    let registry = Registry::start(&fx.root.with_file_name("registry")).expect("registry");
    let reference = format!("{}/warren/busybox:1", registry.addr());
    push_busybox(&reference).await;
    fx.options.pull = true;
    fx.runtime = ContainerdRuntime::new(fx.root.clone(), fx.options.clone()).expect("runtime");
    let mut request = request("ctr-pull", "");
    request.image = Some(reference.clone());
    request.argv = vec![];
    let began = Instant::now();
    let err = fx.runtime.start(&request).await.expect_err("first start");
    let message = err.to_string();
    assert!(message.contains("pulling it; retrying"), "{message}");
    let mut started = None;
    while started.is_none() && began.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match fx.runtime.start(&request).await {
            Ok(handle) => started = Some(handle),
            Err(RuntimeError::ImageUnavailable { reason, .. }) if reason.contains("pulling") => {}
            Err(e) => panic!("start: {e}"),
        }
    }
    let handle = started.expect("started within 30 s");
    eprintln!(
        "{test}: missing → pulled and running in {:?}",
        began.elapsed()
    );
    // The start that found the pull done leaves an event for the node's events, once.
    let events = fx.runtime.take_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, warren_api::EventKind::ImagePulled);
    assert_eq!(events[0].replica.as_ref(), Some(&request.replica));
    let pulled = &events[0].message;
    assert!(
        pulled.starts_with(&format!("pulled {reference}: ")) && pulled.ends_with(" s"),
        "{pulled}"
    );
    assert!(pulled.contains(" MB in "), "{pulled}");
    assert!(fx.runtime.take_events().is_empty());
    let log = handle.record().stdout_log.clone();
    let logged = wait_until(Duration::from_secs(5), async || {
        read(&log).contains("busybox up")
    })
    .await;
    assert!(logged, "log: {:?}", read(&log));
    fx.runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
    let images = fx.ctr(&["images", "ls", "-q"]);
    assert!(images.contains(&reference), "{images}");
}

/// A registry that does not answer: the pull fails and the next start says so, retryably.
#[tokio::test]
async fn unreachable_registry_says_the_pull_failed() {
    let test = "unreachable_registry_says_the_pull_failed";
    let Some(mut fx) = Fixture::new(test).await else {
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    fx.options.pull = true;
    fx.runtime = ContainerdRuntime::new(fx.root.clone(), fx.options.clone()).expect("runtime");
    let mut request = request("ctr-nopull", "");
    request.image = Some(format!("{closed}/warren/missing:1"));
    let mut last = String::new();
    let began = Instant::now();
    while !last.contains("pulling it failed") && began.elapsed() < Duration::from_secs(20) {
        let err = fx.runtime.start(&request).await.expect_err("start");
        assert!(err.is_retryable(), "{err}");
        last = err.to_string();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.contains("pulling it failed"), "{last}");
    assert!(last.ends_with("; retrying"), "{last}");
}

/// containerd itself restarts under a running runtime: the container keeps running (its shim
/// does not depend on containerd), and the runtime's connection comes back by itself.
#[tokio::test]
async fn containerd_restart_keeps_the_container_and_the_connection() {
    let test = "containerd_restart_keeps_the_container_and_the_connection";
    let Some(mut fx) = Fixture::new(test).await else {
        return;
    };
    let script = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let request = request("ctr-restart", script);
    let handle = fx.runtime.start(&request).await.expect("start");
    fx.daemon.restart().expect("restart containerd");
    let running = wait_until(Duration::from_secs(10), async || {
        matches!(
            fx.runtime.observe(&handle).await,
            Ok(RuntimeObservation::Running)
        )
    })
    .await;
    assert!(running, "{:?}", fx.runtime.observe(&handle).await);
    let outcome = fx
        .runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    assert_eq!(outcome, StopOutcome::Terminated);
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
}

/// The starts of `request` until one runs or fails other than "pulling": its error.
async fn start_until_pulled(
    fx: &Fixture,
    request: &WorkloadRequest,
) -> Result<WorkloadHandle, RuntimeError> {
    let began = Instant::now();
    loop {
        match fx.runtime.start(request).await {
            Err(RuntimeError::ImageUnavailable { reason, .. })
                if reason.contains("pulling") && !reason.contains("failed") =>
            {
                assert!(
                    began.elapsed() < Duration::from_secs(30),
                    "still pulling: {reason}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// A registry that wants a password: a pull without credentials says it needs them, one
/// with wrong ones names the secret they came from, a secret that is not `user:password` is
/// refused before any pull, and the right ones pull the image, which runs.
#[tokio::test]
async fn registry_credentials_come_from_a_secret() {
    let test = "registry_credentials_come_from_a_secret";
    let Some(mut fx) = Fixture::new(test).await else {
        return;
    };
    if !prerequisite(test, Registry::missing_htpasswd()) {
        return;
    }
    let dir = fx.root.with_file_name("registry");
    let registry = Registry::start_with_password(&dir, "puller", "pa55").expect("registry");
    let reference = format!("{}/warren/busybox:1", registry.addr());
    push_busybox_as(&reference, Some(("puller", "pa55")))
        .await
        .expect("push busybox");
    fx.options.pull = true;
    fx.runtime = ContainerdRuntime::new(fx.root.clone(), fx.options.clone()).expect("runtime");
    let mut request = request("ctr-auth", "");
    request.image = Some(reference.clone());
    request.argv = vec![];
    let secret = |plaintext: &[u8]| {
        Some(crate::runtime::RegistryAuthSecret {
            secret: "regcred".to_owned(),
            plaintext: plaintext.to_vec(),
        })
    };

    let err = start_until_pulled(&fx, &request)
        .await
        .expect_err("anonymous");
    let message = err.to_string();
    assert!(message.starts_with("image unavailable: "), "{message}");
    assert!(message.contains("needs credentials"), "{message}");
    assert!(err.is_retryable(), "{message}");

    request.registry_auth = secret(b"puller:wrong\n");
    let message = start_until_pulled(&fx, &request)
        .await
        .expect_err("wrong")
        .to_string();
    assert!(
        message.contains("refused the credentials in secret regcred"),
        "{message}"
    );
    assert!(!message.contains("wrong"), "{message}");

    request.registry_auth = secret(b"puller");
    let message = fx
        .runtime
        .start(&request)
        .await
        .expect_err("malformed")
        .to_string();
    assert!(
        message.contains("; registry credentials in secret regcred: expected user:password;"),
        "{message}"
    );
    assert!(message.starts_with("image unavailable: "), "{message}");

    request.registry_auth = secret(b"puller:pa55\n");
    let handle = start_until_pulled(&fx, &request)
        .await
        .expect("pulled with credentials");
    let log = handle.record().stdout_log.clone();
    let logged = wait_until(Duration::from_secs(5), async || {
        read(&log).contains("busybox up")
    })
    .await;
    assert!(logged, "log: {:?}", read(&log));
    fx.runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
}

/// Exec health checks run inside the container: `test -f /tmp/ready` fails until the
/// container's own script has made the file (which the host does not have), then passes; a
/// failing check says its exit code and first line of output; one past its timeout is killed;
/// a command the image lacks says so. No exec process is left behind.
#[tokio::test]
async fn exec_checks_run_inside_the_container() {
    let Some(fx) = Fixture::new("exec_checks_run_inside_the_container").await else {
        return;
    };
    let script = "trap 'exit 0' TERM; sleep 1; touch /tmp/ready; while true; do sleep 1; done";
    let request = request("ctr-exec", script);
    let handle = fx.runtime.start(&request).await.expect("start");
    let exec = crate::health::probe::ExecContext {
        container: fx.runtime.exec_target(handle.record()),
        ..crate::health::probe::ExecContext::default()
    };
    assert!(exec.container.is_some());
    let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    let check = argv(&["test", "-f", "/tmp/ready"]);
    let timeout = Duration::from_secs(5);
    let run =
        async |argv: &[String], timeout| crate::health::probe::run_exec(argv, &exec, timeout).await;
    let began = Instant::now();
    let first = run(&check, timeout).await;
    eprintln!("first exec check took {:?}", began.elapsed());
    assert_eq!(
        first,
        ProbeOutcome::Fail("exec test: exit code 1".to_owned())
    );
    let passed = wait_until(Duration::from_secs(10), async || {
        run(&check, timeout).await == ProbeOutcome::Pass
    })
    .await;
    assert!(passed, "the check never saw /tmp/ready");
    // The image's /etc is empty; the host's has a passwd file.
    assert!(Path::new("/etc/passwd").exists());
    assert_eq!(
        run(&argv(&["test", "!", "-e", "/etc/passwd"]), timeout).await,
        ProbeOutcome::Pass
    );

    let said = run(
        &argv(&["sh", "-c", "echo not ready yet >&2; exit 3"]),
        timeout,
    )
    .await;
    assert_eq!(
        said,
        ProbeOutcome::Fail("exec sh: exit code 3: not ready yet".to_owned())
    );
    let began = Instant::now();
    let slow = run(&argv(&["sleep", "30"]), Duration::from_millis(500)).await;
    assert_eq!(
        slow,
        ProbeOutcome::Fail("exec sleep: killed after its timeout of 500ms".to_owned())
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let missing = run(&argv(&["no-such-command"]), timeout).await;
    let ProbeOutcome::Fail(reason) = missing else {
        panic!("a missing command passed")
    };
    assert!(
        reason.starts_with("exec no-such-command in the container: "),
        "{reason}"
    );
    // The header, the script and (at times) its `sleep 1`: not the killed `sleep 30`.
    let processes = fx.ctr(&["tasks", "ps", &request.replica.to_string()]);
    assert!(
        processes.lines().count() <= 3,
        "exec processes left: {processes}"
    );

    fx.runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    fx.runtime.cleanup(&request.replica).await.expect("cleanup");
}

/// A local volume: a container writes through `$WARREN_VOLUME_DATA` (`/volumes/data`) and the
/// file is in the node's volume directory; after that container is gone, another one with
/// the same volume read-only reads it and cannot write.
#[tokio::test]
async fn container_volume_is_bound_and_read_only_when_asked() {
    let Some(fx) = Fixture::new("container_volume_is_bound_and_read_only_when_asked").await else {
        return;
    };
    let mount = |read_only| warren_api::service::VolumeMount {
        volume: "shared".to_owned(),
        target: "data".to_owned(),
        read_only,
    };
    let mut writer = request(
        "ctr-vol-writer",
        "echo kept > $WARREN_VOLUME_DATA/note && echo wrote $WARREN_VOLUME_DATA",
    );
    writer.volumes = vec![mount(false)];
    let handle = fx.runtime.start(&writer).await.expect("start writer");
    let log = handle.record().stdout_log.clone();
    let wrote = wait_until(Duration::from_secs(5), async || {
        read(&log).contains("wrote /volumes/data")
    })
    .await;
    assert!(wrote, "log: {:?}", read(&log));
    let host_dir = fx.root.with_file_name("workloads-volumes").join("shared");
    assert_eq!(read(&host_dir.join("note")), "kept\n");
    fx.runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop writer");
    fx.runtime
        .cleanup(&writer.replica)
        .await
        .expect("cleanup writer");
    assert_eq!(
        read(&host_dir.join("note")),
        "kept\n",
        "cleanup keeps volumes"
    );

    let mut reader = request(
        "ctr-vol-reader",
        "cat /volumes/data/note; echo x > /volumes/data/other || echo read-only",
    );
    reader.volumes = vec![mount(true)];
    let handle = fx.runtime.start(&reader).await.expect("start reader");
    let log = handle.record().stdout_log.clone();
    let refused = wait_until(Duration::from_secs(5), async || {
        read(&log).contains("read-only")
    })
    .await;
    let text = read(&log);
    assert!(refused, "log: {text:?}");
    // Standard error shares the file, so the shell's complaint may come first.
    assert!(text.contains("kept\n"), "log: {text:?}");
    assert!(!host_dir.join("other").exists());
    fx.runtime
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop reader");
    fx.runtime
        .cleanup(&reader.replica)
        .await
        .expect("cleanup reader");
}
