//! Finding 5 of issue 12, replayed against a real control node, a real agent (as root) and
//! real `sh` workloads: a workload tries to read the agent's keys and another replica's
//! secret, to write outside its own directory, to use capabilities it was not given, and to
//! start in the agent's data dir — and gets nowhere; a workload given `user` and `cap_add`
//! gets exactly those.
//!
//! Needs root (the agent switches users) and `perl` (to open sockets from `sh`); prints why it
//! skips otherwise, and fails under `CI=true`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use tracing::info;
use warren_api::rest::NodeInfo;
use warren_api::{EventKind, ProcessSpec, SecretRef, ServiceName, ServiceSpec, Workload};
use warren_control::Op;
use warren_control::node::ControlNode;
use warren_edge_agent::agent::RunEnd;
use warren_edge_agent::runtime::default_workloads_dir;
use warren_tests::{
    api_get, join_agent, passable, program, propose, put_secret, require, root, spawn_agent,
    start_control, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// The secret the victim holds.
const SECRET: &[u8] = b"warren-isolation-secret-77c2";

/// `sh -c` function: runs a command and prints `WHAT: got in` or `WHAT: denied`.
const TRY: &str = "try() { what=$1; shift; \
    if \"$@\" >/dev/null 2>&1; then echo \"$what: got in\"; else echo \"$what: denied\"; fi; }";

/// Prints `bind port 80: got in`, `denied` (EACCES: no NET_BIND_SERVICE) or `unavailable`
/// (the port is in use on this box, which proves nothing).
const BIND_80: &str = "perl -MSocket -e 'socket(my $s, PF_INET, SOCK_STREAM, 0) or exit 2; \
    bind($s, pack_sockaddr_in(80, inet_aton(\"127.0.0.1\"))) or exit($!{EACCES} ? 1 : 3)'; \
    case $? in 0) echo 'bind port 80: got in';; 1) echo 'bind port 80: denied';; \
    *) echo 'bind port 80: unavailable';; esac";

/// Opening a raw socket needs CAP_NET_RAW whatever the box's sysctls say.
const RAW_SOCKET: &str = "try 'open a raw socket' \
    perl -MSocket -e 'socket(my $s, PF_INET, SOCK_RAW, 1) or exit 1'";

fn service(name: &str, script: String) -> ServiceSpec {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sh".into(), "-c".into(), script],
        working_dir: None,
    });
    ServiceSpec::new(ServiceName::new(name).expect("valid name"), workload)
}

/// What the attacker tries, from its own `work` directory: everything the finding did, and
/// more. Leaves a symlink to the agent's data dir behind for the next step.
fn attack(agent: &Path, workloads: &Path, tmp: &Path) -> String {
    let (a, w, t) = (agent.display(), workloads.display(), tmp.display());
    format!(
        "{TRY}
        echo \"uid: $(id -u)\"
        try 'read secret.key' cat {a}/secret.key
        try 'read node.key' cat {a}/node.key
        try 'read secret.key by a relative path' cat ../../../agent/secret.key
        try 'read the cache' ls {a}/cache
        try \"read another replica's secret\" cat {w}/vault.1/secrets/db.txt
        try \"read another replica's secret by a relative path\" cat ../../vault.1/secrets/db.txt
        try \"list another replica's directory\" ls {w}/vault.1/work
        try 'list the workloads dir' ls {w}
        try \"write in the agent's data dir\" sh -c 'echo x > {a}/pwned'
        try 'write beside the data dir' sh -c 'echo x > {t}/pwned'
        try 'write in its replica dir' sh -c 'echo x > ../pwned'
        try 'replace its log' sh -c 'rm -f ../stdout.log'
        try 'write in its own dir' sh -c 'echo x > mine'
        {RAW_SOCKET}
        {BIND_80}
        ln -s {a} keys
        echo done
        exec sleep 100000"
    )
}

/// What a workload given `user` and `cap_add` can do.
fn granted() -> String {
    format!(
        "{TRY}
        echo \"uid: $(id -u)\"
        {RAW_SOCKET}
        {BIND_80}
        echo done
        exec sleep 100000"
    )
}

/// The lines `replica` printed, once it printed `done`.
async fn report_of(workloads: &Path, replica: &str) -> String {
    let log = workloads.join(replica).join("stdout.log");
    wait_until(&format!("{replica} to report"), LONG, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|text| text.contains("\ndone\n"))
    })
    .await
}

fn says(report: &str, line: &str) -> bool {
    report.lines().any(|l| l == line)
}

/// Whether binding port 80 needs NET_BIND_SERVICE on this box (containers often lower
/// `net.ipv4.ip_unprivileged_port_start` to 0).
fn port_80_is_privileged() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .is_none_or(|start| start > 80)
}

/// Waits for the agent's start-failed event of `replica` and returns its message.
async fn start_failure(control: &ControlNode, node: &str, replica: &str) -> String {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let found: NodeInfo = api_get(control, &format!("/nodes/{node}")).await;
        let event = found.agent.iter().flat_map(|a| &a.events).find(|e| {
            e.kind == EventKind::StartFailed
                && e.replica.as_ref().is_some_and(|r| r.to_string() == replica)
        });
        if let Some(event) = event {
            return event.message.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {replica} to fail to start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A workload without `user` runs as a user of its own: it cannot read the agent's keys or
/// cache (by absolute or relative path), another replica's secret or directory, cannot write
/// outside its own directory or touch its logs, and holds no capability. A service that names
/// `user` and `cap_add` runs as that user with those capabilities. `working_dir` cannot take a
/// workload into the agent's data dir: not with `..` or `/` (refused by the state machine), not
/// by naming it (refused by the agent), not through a symlink the workload made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_cannot_reach_the_agents_keys_or_other_replicas() {
    warren_tests::init();
    let test = "a_workload_cannot_reach_the_agents_keys_or_other_replicas";
    if !require(test, [root(), program("perl")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    passable(dir.path());
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    let identity = join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let node = identity.node_id.to_string();
    let workloads = default_workloads_dir(&agent_dir);

    info!("--- a victim with a secret, an attacker, and a service given a user and capabilities");
    put_secret(&control, "db", SECRET).await;
    let mut vault = service("vault", "exec sleep 100000".into());
    vault.secrets = vec![SecretRef {
        name: "db".into(),
        target: "db.txt".into(),
    }];
    propose(&control, Op::PutService(vault)).await;
    let attacker = service("attacker", attack(&agent_dir, &workloads, dir.path()));
    propose(&control, Op::PutService(attacker.clone())).await;
    let mut binder = service("binder", granted());
    binder.user = Some("65534".into());
    binder.cap_add = vec!["NET_BIND_SERVICE".into(), "NET_RAW".into()];
    propose(&control, Op::PutService(binder)).await;
    let (_cancel, agent) = spawn_agent(&agent_dir);

    let report = report_of(&workloads, "attacker.1").await;
    info!("attacker:\n{report}");
    let uid: u32 = report
        .lines()
        .find_map(|l| l.strip_prefix("uid: "))
        .and_then(|uid| uid.parse().ok())
        .expect("the attacker says its uid");
    assert_ne!(uid, 0, "a workload without `user` does not run as root");
    let vault_uid = std::fs::metadata(workloads.join("vault.1/work"))
        .unwrap()
        .uid();
    assert_ne!(uid, vault_uid, "each replica has a user of its own");
    for denied in [
        "read secret.key",
        "read node.key",
        "read secret.key by a relative path",
        "read the cache",
        "read another replica's secret",
        "read another replica's secret by a relative path",
        "list another replica's directory",
        "list the workloads dir",
        "write in the agent's data dir",
        "write beside the data dir",
        "write in its replica dir",
        "replace its log",
        "open a raw socket",
    ] {
        assert!(
            says(&report, &format!("{denied}: denied")),
            "{denied}:\n{report}"
        );
    }
    assert!(says(&report, "write in its own dir: got in"), "{report}");
    assert!(!agent_dir.join("pwned").exists() && !dir.path().join("pwned").exists());
    if port_80_is_privileged() {
        assert!(!says(&report, "bind port 80: got in"), "{report}");
    }

    let granted = report_of(&workloads, "binder.1").await;
    info!("binder:\n{granted}");
    assert!(says(&granted, "uid: 65534"), "{granted}");
    assert!(says(&granted, "open a raw socket: got in"), "{granted}");
    if port_80_is_privileged() && !says(&granted, "bind port 80: unavailable") {
        assert!(says(&granted, "bind port 80: got in"), "{granted}");
    }

    info!("--- working_dir: refused at the state machine, on the agent, and through a symlink");
    for escape in ["../../..", "/"] {
        let mut spec = service("escape", "exec sleep 100000".into());
        spec.workload = Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "100000".into()],
            working_dir: Some(escape.into()),
        });
        let outcome = control
            .control()
            .propose(Op::PutService(spec))
            .await
            .expect("committed");
        let rejection = outcome
            .result
            .expect_err("an escaping working_dir is refused");
        assert!(
            rejection.message.contains("workload.process.working_dir"),
            "{escape}: {rejection}"
        );
    }
    let mut camper = service("camper", "exec sleep 100000".into());
    camper.workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "100000".into()],
        working_dir: Some(agent_dir.display().to_string()),
    });
    propose(&control, Op::PutService(camper)).await;
    let message = start_failure(&control, &node, "camper.1").await;
    assert!(
        message.contains("is in or above the agent's data dir"),
        "{message}"
    );
    let mut through_link = attacker;
    through_link.workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "100000".into()],
        working_dir: Some("keys".into()),
    });
    propose(&control, Op::PutService(through_link)).await;
    let message = start_failure(&control, &node, "attacker.1").await;
    assert!(
        message.contains("working_dir keys leaves the replica's directory"),
        "{message}"
    );

    info!("--- remove the node: its workloads stop, nothing is left running");
    propose(&control, Op::RemoveNode(identity.node_id)).await;
    let end = tokio::time::timeout(LONG, agent).await.unwrap().unwrap();
    assert!(matches!(end, Ok(RunEnd::Removed(_))), "{end:?}");
    control.shutdown().await;
}
