//! `warren agent --runtime containerd` as a subprocess on a containerd of the test's own: a
//! container's standard output and standard error reach the replica's `stdout.log` and
//! `stderr.log`, written by the `warren` binary itself as the log writer containerd's shim
//! starts beside the task. Needs root, containerd, runc, ctr and busybox-static: skips with
//! the reason otherwise, fails under `CI=true`.

use std::time::Duration;

use warren_edge_agent::runtime::containerd::testkit::{
    Containerd, missing_prerequisite, write_busybox_layout,
};
use warren_edge_agent::runtime::default_workloads_dir;

mod common;
use common::{READY_TIMEOUT, command, control_init, join_agent, ok};

#[test]
fn a_containers_output_and_errors_reach_their_own_files() {
    let test = "a_containers_output_and_errors_reach_their_own_files";
    if let Some(why) = missing_prerequisite() {
        let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!under_ci, "{test} needs what this host lacks: {why}");
        eprintln!("skipping {test}: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Containerd::start(&dir.path().join("containerd")).expect("start containerd");
    let socket = daemon.socket().to_str().unwrap().to_owned();
    let image = dir.path().join("busybox.tar");
    write_busybox_layout(&image, "warren.test/busybox:1").expect("build the image");
    ok(command()
        .args(["image", "load", "--containerd-socket", &socket])
        .arg(&image)
        .output()
        .unwrap());

    let (_control, quic, config) = control_init(dir.path());
    let admin = |args: &[&str]| command().arg("--config").arg(&config).args(args).output();
    let (mut agent, agent_dir) = join_agent(
        dir.path(),
        &quic,
        &config,
        "edge-ctr",
        &[
            "--wireguard",
            "off",
            "--runtime",
            "containerd",
            "--containerd-socket",
            &socket,
        ],
    );
    // Join kept its flags for the `agent run` it became: the overlay is off, as asked (it
    // used to be saved only after, so the agent ran with the default, auto).
    let kept = std::fs::read_to_string(agent_dir.join("wireguard/settings.json")).unwrap();
    assert!(kept.contains(r#""mode": "off""#), "{kept}");
    let log = std::fs::read_to_string(agent.stderr_log()).unwrap_or_default();
    assert!(!log.contains("tun interface"), "{log}");

    // The image's command, after `--`: one line to each stream, then it waits for SIGTERM.
    ok(admin(&[
        "service",
        "create",
        "talk",
        "--image",
        "warren.test/busybox:1",
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; trap 'exit 0' TERM; while true; do sleep 1; done",
    ])
    .unwrap());
    let replica_dir = default_workloads_dir(&agent_dir).join("talk.1");
    let read = |name: &str| std::fs::read_to_string(replica_dir.join(name)).unwrap_or_default();
    let began = std::time::Instant::now();
    let (out, err) = loop {
        let (out, err) = (read("stdout.log"), read("stderr.log"));
        if out.contains("to-stdout") && err.contains("to-stderr") {
            break (out, err);
        }
        if began.elapsed() > READY_TIMEOUT {
            let listing: Vec<_> = std::fs::read_dir(&replica_dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            let agent_log = std::fs::read_to_string(agent.stderr_log()).unwrap_or_default();
            let containerd_log =
                std::fs::read_to_string(dir.path().join("containerd/containerd.log"))
                    .unwrap_or_default();
            let tail = |text: &str| text.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            panic!(
                "no output in both files: stdout.log {out:?}, stderr.log {err:?}, dir \
                 {listing:?}\nagent: {}\ncontainerd: {}",
                tail(&agent_log),
                tail(&containerd_log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!out.contains("to-stderr"), "stdout.log: {out}");
    assert!(!err.contains("to-stdout"), "stderr.log: {err}");
    // The writer is this binary, through the link the agent made in its data dir.
    let link = std::fs::read_link(agent_dir.join("warren-container-logger")).unwrap();
    assert_eq!(link, std::path::Path::new(env!("CARGO_BIN_EXE_warren")));
    agent.signal("-TERM");
    assert!(agent.wait(Duration::from_secs(30)).success());
    drop(daemon);
}
