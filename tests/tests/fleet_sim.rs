//! The fleet simulator (`warren_tests::fleet_sim`, what the fleet bench drives at thousands of
//! agents) against a real control node: simulated agents join with a real token, hold their
//! views over the real agent protocol, see a global service arrive and leave, and only the
//! agent that runs a service gets a delta when that service alone changes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use warren_api::clock::unix_now_ms;
use warren_api::{NodeRole, ServiceMode};
use warren_control::Op;
use warren_tests::fleet_sim::{self, Fleet, Probe};
use warren_transport::MintOptions;
use warren_transport::token::mint;

const AGENTS: usize = 24;
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_follow_the_control_plane() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = warren_tests::start_control(dir.path()).await;
    let options = MintOptions {
        role: NodeRole::Agent,
        ttl: Some(Duration::from_secs(600)),
        single_use: false,
    };
    let (token, record) = mint(fingerprint, options, unix_now_ms());
    warren_tests::propose(&control, Op::AddToken(record)).await;
    let token = token.to_string();
    let mut identities = Vec::new();
    for index in 0..AGENTS {
        let site = format!("site-{}", index % 3);
        let joined = fleet_sim::join(control.quic_addr(), &token, index, &site).await;
        identities.push(joined.expect("simulated agent joins"));
    }
    let fleet = Fleet::start(identities).expect("endpoints bind");
    warren_tests::wait_until("every agent holds a view", LIMIT, || {
        (fleet.current(1) == AGENTS).then_some(())
    })
    .await;
    assert_eq!(
        fleet.total(|a| &a.snapshots),
        AGENTS as u64,
        "one snapshot each"
    );

    fleet.set_probe(Probe::Has("everywhere".into()));
    let mut global = warren_tests::sleep_service(1);
    global.name = warren_api::ServiceName::new("everywhere").unwrap();
    global.mode = ServiceMode::Global;
    warren_tests::propose(&control, Op::PutService(global)).await;
    let all_met = || {
        fleet
            .probe_times()
            .iter()
            .all(Option::is_some)
            .then_some(())
    };
    warren_tests::wait_until("the global service on every agent", LIMIT, all_met).await;

    let one = warren_tests::sleep_service(1);
    fleet.set_probe(Probe::Has("web".into()));
    warren_tests::propose(&control, Op::PutService(one.clone())).await;
    let runs = || fleet.probe_times().iter().filter(|t| t.is_some()).count();
    warren_tests::wait_until("web on its agent", LIMIT, || (runs() == 1).then_some(())).await;
    // The create changed everyone's catalogue; let those deltas land before counting.
    let settled = control.control().applied().0;
    warren_tests::wait_until("every agent current", LIMIT, || {
        (fleet.current(settled) == AGENTS).then_some(())
    })
    .await;
    let deltas = fleet.snapshot_of(|a| &a.deltas);
    let mut changed = one;
    changed.env.insert("LEVEL".into(), "debug".into());
    fleet.set_probe(Probe::AtVersion("web".into(), 2));
    warren_tests::propose(&control, Op::PutService(changed)).await;
    warren_tests::wait_until("web v2 on its agent", LIMIT, || (runs() == 1).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fleet.moved(&deltas, |a| &a.deltas),
        1,
        "only web's agent got a delta"
    );

    fleet.set_probe(Probe::Lacks("everywhere".into()));
    let name = warren_api::ServiceName::new("everywhere").unwrap();
    warren_tests::propose(&control, Op::RemoveService(name)).await;
    warren_tests::wait_until("the global service gone", LIMIT, all_met).await;
    let sessions: u64 = fleet.total(|a| &a.sessions);
    assert_eq!(sessions, AGENTS as u64, "no agent reconnected");
    assert!(
        fleet
            .agents
            .iter()
            .all(|a| a.connected_to.load(Ordering::Relaxed) == 1)
    );
    fleet.stop().await;
    control.shutdown().await;
}
