//! The container runtime end to end: a real control node and a real agent with
//! `--runtime containerd` on a containerd of the test's own (its own config, root, state and
//! socket; CRI off), running a busybox image built from `/bin/busybox` and loaded as
//! `warren image load` does. Needs root, containerd, runc, ctr and busybox-static: skips with
//! the reason otherwise, fails under `CI=true`.

#![allow(clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::info;
use warren_api::clock::unix_now_ms;
use warren_api::rest::{NodeInfo, ReplicaInfo};
use warren_api::service::{HealthCheck, ImageSpec, Probe, RestartCondition, ServiceMode, Workload};
use warren_api::{SecretRef, ServiceName, ServiceSpec, TaskState};
use warren_control::Op;
use warren_edge_agent::agent::{AgentOptions, LocalReplica, RuntimeChoice};
use warren_edge_agent::runtime::containerd::testkit::{
    Containerd, Registry, missing_prerequisite, push_busybox_as, write_busybox_layout,
};
use warren_edge_agent::runtime::containerd::{
    Connection, DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER, import_layout,
};
use warren_edge_agent::runtime::default_workloads_dir;
use warren_tests::{
    agent_options, agent_status, alive, api_get, join_agent, kill9, propose, put_secret, require,
    spawn_agent_with, start_control, wait_until,
};

const IMAGE: &str = "warren.test/busybox:1";

/// A containerd of the test's own under `dir`, with the busybox image loaded under each of
/// `images`, as `warren image load` loads a tarball.
async fn containerd_with(dir: &Path, images: &[&str]) -> Containerd {
    let daemon = Containerd::start(&dir.join("containerd")).expect("start containerd");
    let conn = Connection::connect(daemon.socket(), DEFAULT_NAMESPACE)
        .await
        .expect("connect to containerd");
    for image in images {
        let tarball = dir.join("busybox.tar");
        write_busybox_layout(&tarball, image).expect("build the busybox image");
        import_layout(&conn, DEFAULT_SNAPSHOTTER, &tarball)
            .await
            .expect("load the image");
    }
    daemon
}

/// The test agent's options with the container runtime on `daemon`.
fn containerd_options(daemon: &Containerd) -> AgentOptions {
    let mut options = agent_options();
    options.runtime = Some(RuntimeChoice::Containerd {
        socket: daemon.socket().to_owned(),
    });
    options
}

/// `web`'s replica as a `status.json` written at or after `since_ms` shows it running.
fn running_web(dir: &Path, since_ms: u64) -> Option<(LocalReplica, u32)> {
    let status = agent_status(dir).filter(|s| s.updated_at_ms >= since_ms)?;
    let replica = status
        .replicas
        .into_iter()
        .find(|r| r.replica.service.as_str() == "web" && r.state == TaskState::Running)?;
    let pid = replica.pid?;
    Some((replica, pid))
}

/// `web` (the busybox image, whose cmd says `busybox up` and runs until SIGTERM) is created
/// through control and runs in a container whose output reaches the replica's log; the agent
/// stops and starts again and adopts it (same pid, no restart); the control node goes away and
/// the container's process is killed: the agent, cut off, starts it again; then the box
/// reboots (agent stopped, every task killed and gone, containerd restarted with its state
/// emptied) and the agent, still cut off, starts the container again from its cache and the
/// local image store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_service_runs_is_adopted_and_restarted_while_cut_off() {
    let test = "image_service_runs_is_adopted_and_restarted_while_cut_off";
    if !require(test, [missing_prerequisite()]) {
        return;
    }
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = containerd_with(dir.path(), &[IMAGE]).await;

    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-ctr", "lisbon").await;
    let options = containerd_options(&daemon);
    let (cancel, task) = spawn_agent_with(&agent_dir, options.clone());

    info!("--- create an image service");
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").unwrap(),
        Workload::Image(ImageSpec {
            reference: IMAGE.to_owned(),
            args: vec![],
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    let created = Instant::now();
    propose(&control, Op::PutService(spec)).await;
    let long = Duration::from_secs(60);
    let (replica, pid) = wait_until("web running", long, || running_web(&agent_dir, 0)).await;
    eprintln!(
        "{test}: service created → container running in {:?}",
        created.elapsed()
    );
    let id = replica.replica.to_string();
    let log = default_workloads_dir(&agent_dir)
        .join(&id)
        .join("stdout.log");
    wait_until("web's output in its log", long, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|text| text.contains("busybox up"))
    })
    .await;

    info!("--- the agent stops and starts again: the container is adopted, not restarted");
    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
    assert!(alive(pid), "the container's process must outlive the agent");
    let restarted_at_ms = unix_now_ms();
    let (cancel, task) = spawn_agent_with(&agent_dir, options.clone());
    let (adopted, adopted_pid) = wait_until("web adopted", long, || {
        running_web(&agent_dir, restarted_at_ms)
    })
    .await;
    assert_eq!(adopted_pid, pid);
    assert_eq!(adopted.restarts, 0);

    info!("--- control goes away; the container's process is killed; the agent restarts it");
    control.shutdown().await;
    kill9(pid);
    let (restarted, new_pid) = wait_until("web restarted while cut off", long, || {
        running_web(&agent_dir, 0).filter(|(_, p)| *p != pid)
    })
    .await;
    assert!(restarted.restarts >= 1, "{restarted:?}");
    assert!(alive(new_pid));

    info!("--- the box reboots: agent down, tasks gone, containerd restarted; still no control");
    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
    daemon.reboot(DEFAULT_NAMESPACE).expect("reboot containerd");
    assert!(!alive(new_pid), "a reboot leaves no task running");
    let back_at_ms = unix_now_ms();
    let (cancel, task) = spawn_agent_with(&agent_dir, options);
    let (_, third_pid) = wait_until("web started again from the cache", long, || {
        running_web(&agent_dir, back_at_ms).filter(|(_, p)| *p != new_pid)
    })
    .await;
    assert!(alive(third_pid));

    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
    // The daemon's drop kills and removes the containers, then stops containerd.
    drop(daemon);
}

/// An image service placed on a process node: the replica does not run, and `service ps`
/// says why (not only that it could not start). Needs nothing beyond the test itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_service_on_a_process_node_says_why_in_service_ps() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-proc", "lisbon").await;
    let (cancel, task) = spawn_agent_with(&agent_dir, agent_options());
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").unwrap(),
        Workload::Image(ImageSpec {
            reference: IMAGE.to_owned(),
            args: vec![],
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    propose(&control, Op::PutService(spec)).await;
    let expected = "could not start: unsupported: this node runs processes; image workloads need --runtime containerd";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ps: Vec<ReplicaInfo> = api_get(&control, "/services/web/replicas").await;
        if ps.len() == 1 && ps[0].message.as_deref() == Some(expected) {
            assert_eq!(ps[0].state, "failed");
            assert_eq!(ps[0].pid, None);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service ps: {ps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
}

// Each test names its service apart: runc keeps its state by container id under one root
// for every containerd, so two tests' `web.0` at once would collide.

/// A container over its memory limit: `oom` (16 MiB, no restarts) runs `dd` with a 64 MiB
/// block, the kernel's OOM killer ends it, and `service ps` says so with the limit rather
/// than `exited by a signal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oom_killed_container_says_so_in_service_ps() {
    let test = "oom_killed_container_says_so_in_service_ps";
    if !require(test, [missing_prerequisite()]) {
        return;
    }
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let daemon = containerd_with(dir.path(), &[IMAGE]).await;
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-oom", "lisbon").await;
    let options = containerd_options(&daemon);
    let (cancel, task) = spawn_agent_with(&agent_dir, options);

    info!("--- create a service that allocates more than its memory limit");
    let args = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
    let mut spec = ServiceSpec::new(
        ServiceName::new("oom").unwrap(),
        Workload::Image(ImageSpec {
            reference: IMAGE.to_owned(),
            args: args.map(str::to_owned).to_vec(),
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    spec.resources.memory_bytes = Some(16 << 20);
    spec.restart.condition = RestartCondition::Never;
    propose(&control, Op::PutService(spec)).await;
    let expected = "OOM-killed (memory limit 16 MiB)";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ps: Vec<ReplicaInfo> = api_get(&control, "/services/oom/replicas").await;
        if ps.len() == 1 && ps[0].message.as_deref() == Some(expected) {
            assert_eq!(ps[0].state, "failed");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service ps: {ps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    info!("--- the node's events say so too, not `exited by a signal`");
    let exit_event = format!("{expected}; not restarting");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node: NodeInfo = api_get(&control, "/nodes/edge-oom").await;
        let events = node.agent.map(|a| a.events).unwrap_or_default();
        if events.iter().any(|e| e.message.starts_with(&exit_event)) {
            assert!(
                !events
                    .iter()
                    .any(|e| e.message.contains("exited by a signal")),
                "{events:#?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event starting {exit_event:?}: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
    drop(daemon);
}

/// An exec health check runs inside the container: `ready` makes `/tmp/ready` (inside its own
/// filesystem, never the host's) two seconds after it starts, and its check
/// `test -f /tmp/ready` turns it healthy in `service ps` only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_health_check_runs_inside_the_container() {
    let test = "exec_health_check_runs_inside_the_container";
    if !require(test, [missing_prerequisite()]) {
        return;
    }
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let daemon = containerd_with(dir.path(), &[IMAGE]).await;
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-health", "lisbon").await;
    let options = containerd_options(&daemon);
    let (cancel, task) = spawn_agent_with(&agent_dir, options);

    info!("--- create a service that becomes ready after 2 s");
    let script = "trap 'exit 0' TERM; sleep 2; touch /tmp/ready; while true; do sleep 1; done";
    let mut spec = ServiceSpec::new(
        ServiceName::new("ready").unwrap(),
        Workload::Image(ImageSpec {
            reference: IMAGE.to_owned(),
            args: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    let mut check = HealthCheck::new(Probe::Exec {
        command: ["test", "-f", "/tmp/ready"].map(str::to_owned).to_vec(),
    });
    check.interval_ms = 1_000;
    check.timeout_ms = 500;
    check.retries = 20;
    spec.health = Some(check);
    let created = Instant::now();
    propose(&control, Op::PutService(spec)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ps: Vec<ReplicaInfo> = api_get(&control, "/services/ready/replicas").await;
        if ps.len() == 1 && ps[0].health == "healthy" {
            assert_eq!(ps[0].state, "running");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service ps: {ps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = created.elapsed();
    eprintln!("{test}: created → healthy in {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "healthy before the file existed: {took:?}"
    );
    assert!(
        !Path::new("/tmp/ready").exists(),
        "the container wrote to the host's /tmp"
    );
    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
    drop(daemon);
}

/// Registry credentials from a Warren secret, end to end: `priv`'s image is on a loopback
/// registry that wants a password; without credentials `service ps` says the registry needs
/// them; with `registry_auth` naming a secret of `user:password` the agent pulls it and it
/// runs, and the container has no file of the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_credentials_come_from_a_warren_secret() {
    let test = "registry_credentials_come_from_a_warren_secret";
    if !require(test, [missing_prerequisite(), Registry::missing_htpasswd()]) {
        return;
    }
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Containerd::start(&dir.path().join("containerd")).expect("start containerd");
    let registry = Registry::start_with_password(&dir.path().join("registry"), "puller", "pa55")
        .expect("start the registry");
    let reference = format!("{}/warren/busybox:1", registry.addr());
    push_busybox_as(&reference, Some(("puller", "pa55")))
        .await
        .expect("push busybox");
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-priv", "lisbon").await;
    let options = containerd_options(&daemon);
    let (cancel, task) = spawn_agent_with(&agent_dir, options);

    info!("--- an image on a registry that wants a password, no credentials");
    let mut spec = ServiceSpec::new(
        ServiceName::new("priv").unwrap(),
        Workload::Image(ImageSpec {
            reference: reference.clone(),
            args: vec![],
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    propose(&control, Op::PutService(spec.clone())).await;
    let long = Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + long;
    loop {
        let ps: Vec<ReplicaInfo> = api_get(&control, "/services/priv/replicas").await;
        let message = ps
            .first()
            .and_then(|r| r.message.clone())
            .unwrap_or_default();
        if message.contains("needs credentials") {
            assert!(
                message.starts_with("could not start: image unavailable: "),
                "{message}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service ps: {ps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    info!("--- the credentials in a secret, named by the spec");
    put_secret(&control, "regcred", b"puller:pa55\n").await;
    spec.secrets.push(SecretRef::registry_auth("regcred"));
    propose(&control, Op::PutService(spec)).await;
    let running = |dir: &Path| {
        let status = agent_status(dir)?;
        status
            .replicas
            .into_iter()
            .find(|r| r.replica.service.as_str() == "priv" && r.state == TaskState::Running)
    };
    let replica = wait_until("priv running", long, || running(&agent_dir)).await;
    let secrets_dir = default_workloads_dir(&agent_dir)
        .join(replica.replica.to_string())
        .join("secrets");
    assert!(
        !secrets_dir.join(".registry-auth").exists(),
        "the credentials were written as a file"
    );
    info!("--- the node's events say the image was pulled, how big and how long");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node: NodeInfo = api_get(&control, "/nodes/edge-priv").await;
        let events = node.agent.map(|a| a.events).unwrap_or_default();
        let pulled = events
            .iter()
            .find(|e| e.kind == warren_api::EventKind::ImagePulled);
        if let Some(event) = pulled {
            assert!(
                event.message.starts_with("pulled ") && event.message.contains(" MB in "),
                "{event:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no image_pulled event: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
    drop(daemon);
}

/// A new image rolls out (the container is replaced by one of the new image) and
/// `rollback` goes back to the old one, each run reported with its own workload hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_update_rolls_out_and_rollback_goes_back() {
    let test = "an_image_update_rolls_out_and_rollback_goes_back";
    if !require(test, [missing_prerequisite()]) {
        return;
    }
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = ("warren.test/roll:1", "warren.test/roll:2");
    let daemon = containerd_with(dir.path(), &[v1, v2]).await;
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-roll", "lisbon").await;
    let options = containerd_options(&daemon);
    let (cancel, task) = spawn_agent_with(&agent_dir, options);

    let spec_of = |reference: &str| {
        let mut spec = ServiceSpec::new(
            ServiceName::new("roll").unwrap(),
            Workload::Image(ImageSpec {
                reference: reference.to_owned(),
                args: vec![],
            }),
        );
        spec.mode = ServiceMode::Replicated { replicas: 1 };
        spec
    };
    // The replica running with `spec`'s workload, as status.json shows it: its pid.
    let running = |spec: &ServiceSpec| {
        let hash = format!("{:016x}", spec.workload_hash());
        agent_status(&agent_dir).and_then(|status| {
            status.replicas.into_iter().find_map(|r| {
                (r.replica.service.as_str() == "roll"
                    && r.state == TaskState::Running
                    && r.workload_hash.as_deref() == Some(hash.as_str()))
                .then_some(r.pid)
                .flatten()
            })
        })
    };
    let long = Duration::from_secs(60);
    let (first, second) = (spec_of(v1), spec_of(v2));
    propose(&control, Op::PutService(first.clone())).await;
    let pid_v1 = wait_until("roll runs image 1", long, || running(&first)).await;

    info!("--- update to image 2");
    propose(&control, Op::PutService(second.clone())).await;
    let pid_v2 = wait_until("roll runs image 2", long, || running(&second)).await;
    assert_ne!(pid_v1, pid_v2, "a new container for the new image");
    assert!(!alive(pid_v1), "image 1's container is gone");

    info!("--- roll back");
    propose(
        &control,
        Op::RollbackService(ServiceName::new("roll").unwrap()),
    )
    .await;
    let pid_back = wait_until("roll runs image 1 again", long, || running(&first)).await;
    assert!(!alive(pid_v2), "image 2's container is gone");
    // Control hears it too: service ps shows the rolled-back replica running at version 3.
    let deadline = tokio::time::Instant::now() + long;
    loop {
        let ps: Vec<ReplicaInfo> = api_get(&control, "/services/roll/replicas").await;
        if ps.len() == 1 && ps[0].state == "running" && ps[0].pid == Some(pid_back) {
            assert_eq!(ps[0].service_version, 3, "{ps:#?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service ps: {ps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{test}: image 1 pid {pid_v1}, image 2 pid {pid_v2}, back to image 1 pid {pid_back}");
    cancel.cancel();
    task.await.unwrap().expect("agent stops cleanly");
    drop(daemon);
}
