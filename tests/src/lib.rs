//! Cross-crate integration tests for Warren. The tests live in `tests/`; this library holds the
//! fixtures they share: a control node on loopback, agent tokens, a sample service.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use warren_api::{NodeRole, ProcessSpec, ServiceMode, ServiceName, ServiceSpec, Workload};
use warren_control::Op;
use warren_control::node::{ControlConfig, ControlNode, NewNode};
use warren_transport::MintOptions;
use warren_transport::ca::unix_now_ms;
use warren_transport::token::mint;

/// Installs the crypto provider and a `warn` log filter for the test's output.
pub fn init() {
    warren_transport::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

/// Service `web` running `sleep 1000` with `replicas` replicas.
pub fn sleep_service(replicas: u32) -> ServiceSpec {
    let workload = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "1000".into()],
        working_dir: None,
    });
    let mut spec = ServiceSpec::new(ServiceName::new("web").expect("valid name"), workload);
    spec.mode = ServiceMode::Replicated { replicas };
    spec
}

/// A fresh single-node cluster (`c1`) on 127.0.0.1 with kernel-picked ports, its data under
/// `dir/c1`. Returns the node and the cluster fingerprint.
pub async fn start_control(dir: &Path) -> (ControlNode, [u8; 32]) {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let new = NewNode {
        data_dir: dir.join("c1"),
        name: "c1".into(),
        site: "central".into(),
        quic_listen: any,
        api_listen: any,
        advertise_quic: None,
        advertise_api: None,
        metrics_listen: None,
        gossip_listen: None,
    };
    let (control, out) = ControlNode::init(new, ControlConfig::default())
        .await
        .expect("control init");
    (control, out.fingerprint)
}

/// Proposes `op` and asserts it was applied.
pub async fn propose(control: &ControlNode, op: Op) {
    control
        .control()
        .propose(op)
        .await
        .expect("committed")
        .result
        .expect("applied");
}

/// Mints a single-use agent token, records it in the cluster, and returns its text.
pub async fn agent_token(control: &ControlNode, fingerprint: [u8; 32]) -> String {
    let options = MintOptions {
        role: NodeRole::Agent,
        ttl: Some(Duration::from_secs(600)),
        single_use: true,
    };
    let (token, record) = mint(fingerprint, options, unix_now_ms());
    propose(control, Op::AddToken(record)).await;
    token.to_string()
}
