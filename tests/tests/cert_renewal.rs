//! Certificates renew themselves, on real parts (QUIC with mutual TLS, Raft on sled, a real
//! agent running a real process), with certificates that last 12 s instead of 90 days. TLS
//! checks expiry against the real clock, so the clock moves by waiting: a control node and an
//! agent each renew before their certificate expires and keep talking on the new one; an agent
//! cut off until its certificate has expired keeps its workload and renews as soon as it can
//! reach control again.

use std::path::Path;
use std::time::Duration;

use tracing::info;
use warren_api::ServiceName;
use warren_api::clock::unix_now;
use warren_control::Op;
use warren_control::node::ControlConfig;
use warren_tests::{
    agent_options_behind, agent_status, alive, join_agent, kill9, propose, running_pids,
    sleep_service, spawn_agent_with, start_control_with, wait_until,
};
use warren_transport::{Credentials, FaultSwitch, PeerIdentity};

const LIFETIME: Duration = Duration::from_secs(12);
const STEP: Duration = Duration::from_secs(60);

fn certificate(dir: &Path) -> PeerIdentity {
    Credentials::load(dir)
        .expect("credentials on disk")
        .identity()
        .clone()
}

/// The agent runs `replicas` replicas and is connected.
fn running(dir: &Path, replicas: usize) -> Option<Vec<u32>> {
    let status = agent_status(dir)?;
    let pids = running_pids(&status);
    (status.link.connected && pids.len() == replicas).then_some(pids)
}

async fn scale(control: &warren_control::node::ControlNode, replicas: u32) {
    let name = ServiceName::new("web").expect("valid name");
    propose(control, Op::ScaleService { name, replicas }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_renew_before_they_expire_and_after_a_cut_past_expiry() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let config = ControlConfig {
        cert_lifetime: LIFETIME,
        ..ControlConfig::default()
    };
    let (control, fingerprint) = start_control_with(dir.path(), config).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    propose(&control, Op::PutService(sleep_service(1))).await;
    let switch = FaultSwitch::new();
    let (cancel, task) = spawn_agent_with(&agent_dir, agent_options_behind(&switch));
    let first_pid = wait_until("the replica running", STEP, || running(&agent_dir, 1)).await[0];

    info!("--- the agent and the control node renew before their certificates expire");
    let agent_first = certificate(&agent_dir);
    let control_first = certificate(control.data_dir());
    assert!(
        agent_first.not_after_unix - unix_now() <= 12,
        "{agent_first:?}"
    );
    wait_until("the agent's certificate renewed", STEP, || {
        (certificate(&agent_dir).serial != agent_first.serial).then_some(())
    })
    .await;
    wait_until("the control node's certificate renewed", STEP, || {
        (certificate(control.data_dir()).serial != control_first.serial).then_some(())
    })
    .await;
    wait_until("both first certificates expired", STEP, || {
        (unix_now() > agent_first.not_after_unix.max(control_first.not_after_unix) + 1)
            .then_some(())
    })
    .await;
    scale(&control, 2).await;
    wait_until(
        "two replicas, after the first certificates expired",
        STEP,
        || running(&agent_dir, 2),
    )
    .await;

    info!("--- cut off until its certificate expires: the workloads run on");
    switch.cut();
    let before_cut = certificate(&agent_dir);
    wait_until(
        "the agent's certificate expired while cut off",
        STEP,
        || (unix_now() > before_cut.not_after_unix + 1).then_some(()),
    )
    .await;
    assert_eq!(
        certificate(&agent_dir).serial,
        before_cut.serial,
        "no renewal while cut"
    );
    assert!(alive(first_pid), "the workload outlives the certificate");

    info!("--- the link returns: the agent renews, reconnects and takes new work");
    switch.heal();
    wait_until("the agent renewed after the cut", STEP, || {
        (certificate(&agent_dir).serial != before_cut.serial).then_some(())
    })
    .await;
    scale(&control, 3).await;
    let pids = wait_until("three replicas after the renewal", STEP, || {
        running(&agent_dir, 3)
    })
    .await;
    assert!(
        pids.contains(&first_pid),
        "the first replica was never restarted"
    );

    cancel.cancel();
    task.await.unwrap().unwrap();
    control.shutdown().await;
    for pid in pids {
        kill9(pid);
    }
}
