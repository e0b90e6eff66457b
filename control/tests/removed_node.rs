//! What a removed control node's data dir is still worth to an attacker, on real parts (Raft on
//! sled, QUIC with mutual TLS, the HTTPS API): its `cluster.key` opens the CA key in its own copy
//! of the state, so it can sign certificates — but no control node accepts a certificate the
//! cluster did not record, nor a recorded serial on another key.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tracing::info;
use warren_api::NodeRole;
use warren_api::clock::{unix_now, unix_now_ms};
use warren_control::keys::ClusterKeys;
use warren_control::node::{ControlConfig, ControlNode, InitOutput, NewNode};
use warren_control::store::{self, StoreTuning};
use warren_control::{Op, Outcome};
use warren_transport::ca::NODE_CERT_LIFETIME;
use warren_transport::token::mint;
use warren_transport::{
    Alpn, CertRole, CertSubject, ClusterCa, Credentials, Endpoint, EndpointOptions, MintOptions,
    Validity,
};

fn init_logs() {
    warren_transport::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,removed_node=info")
        .with_test_writer()
        .try_init();
}

fn new_node(dir: &TempDir, name: &str) -> NewNode {
    NewNode::on_loopback(dir.path().join("node"), name, "central")
}

fn config() -> ControlConfig {
    ControlConfig {
        write_timeout: Duration::from_secs(5),
        ..ControlConfig::default()
    }
}

/// One API request over TLS with `creds`: the status and body, or the transport error in words
/// (a certificate TLS refuses never gets an answer).
async fn api(
    node: &ControlNode,
    creds: &Credentials,
    method: Method,
    path: &str,
    body: &str,
) -> Result<(StatusCode, String), String> {
    let stream = warren_transport::https::connect(node.api_addr(), creds, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(format!("http://warren/v1{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What an attacker does with a removed control node's data dir: reads its cluster key and the
/// cluster's first entry in its copy of the log, and unseals the CA key with them.
async fn steal_ca(data_dir: &Path) -> (ClusterCa, ClusterKeys) {
    use openraft::storage::RaftLogReader;
    let text = std::fs::read_to_string(data_dir.join("cluster.key")).unwrap();
    let keys = ClusterKeys::from_text(&text).unwrap();
    let key = keys.get(1).unwrap();
    let (mut log, _state_machine) = store::open(data_dir, StoreTuning::default()).unwrap();
    let entries = log.try_get_log_entries(0..64).await.unwrap();
    let (ca_cert_der, ca_key_sealed) = entries
        .into_iter()
        .find_map(|entry| match entry.payload {
            openraft::EntryPayload::Normal(command) => match command.op {
                Op::InitCluster {
                    ca_cert_der,
                    ca_key_sealed,
                    ..
                } => Some((ca_cert_der, ca_key_sealed)),
                _ => None,
            },
            _ => None,
        })
        .expect("the copy of the log holds the cluster's first entry");
    let ca = ClusterCa::from_sealed(&ca_cert_der, &ca_key_sealed, key)
        .expect("the removed node's key opens the CA key in its own copy of the log");
    (ca, keys)
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_pair(dirs: &[TempDir]) -> (ControlNode, InitOutput, ControlNode) {
    let (first, out) = ControlNode::init(new_node(&dirs[0], "c1"), config())
        .await
        .unwrap();
    let options = MintOptions {
        role: NodeRole::Control,
        ttl: Some(Duration::from_secs(600)),
        single_use: true,
    };
    let (token, record) = mint(first.control().fingerprint(), options, unix_now_ms());
    let added = first.control().propose(Op::AddToken(record)).await;
    assert!(
        matches!(added, Ok(Outcome { result: Ok(_), .. })),
        "{added:?}"
    );
    let second = ControlNode::join(
        new_node(&dirs[1], "c2"),
        first.quic_addr(),
        &token.to_string(),
        config(),
    )
    .await
    .unwrap();
    (first, out, second)
}

/// c2 is removed with `node rm` (the API's DELETE). Its data dir still opens the CA key of its
/// copy of the state, and with it the attacker signs an admin certificate of its own and a
/// control certificate to speak Raft to c1. c1 refuses both; the real admin keeps working. (A
/// recorded serial repeated on the attacker's key is refused by TLS itself:
/// `transport/tests/mtls.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_control_nodes_keys_sign_nothing_the_cluster_accepts() {
    init_logs();
    let dirs: Vec<TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (c1, out, c2) = start_pair(&dirs).await;
    let c2_dir = c2.data_dir().to_owned();
    let c2_name = c2.settings().name.clone();
    wait_until(
        "c2 to hold the cluster state",
        Duration::from_secs(10),
        || async { c2.control().read_stale().await.cluster.is_some() },
    )
    .await;

    info!("--- node rm c2");
    let removed = api(
        &c1,
        &out.admin,
        Method::DELETE,
        &format!("/nodes/{c2_name}"),
        "",
    )
    .await;
    assert!(matches!(removed, Ok((StatusCode::OK, _))), "{removed:?}");
    c2.shutdown().await;

    info!("--- the attacker opens c2's data dir");
    let (ca, stolen_keys) = steal_ca(&c2_dir).await;
    let validity = Validity::starting_at(unix_now(), NODE_CERT_LIFETIME);

    let minted = ca
        .issue_credentials(
            &CertSubject::Admin {
                name: "admin".into(),
            },
            validity,
        )
        .unwrap();
    let refused = api(
        &c1,
        &minted,
        Method::POST,
        "/tokens",
        r#"{"role":"control","ttl_ms":60000,"single_use":false}"#,
    )
    .await;
    match refused {
        Ok((status, body)) => {
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert!(body.contains("not one this cluster issued"), "{body}");
        }
        Err(error) => panic!("expected a 403, got {error}"),
    }

    let endpoint = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &ca.issue_credentials(
            &CertSubject::Node {
                node_id: warren_api::NodeId(0x5eed),
                role: CertRole::Control,
            },
            validity,
        )
        .unwrap(),
        EndpointOptions::default(),
    )
    .unwrap();
    let raft = endpoint.connect(c1.quic_addr(), Alpn::Raft).await;
    let error = raft.expect_err("a minted control certificate speaks no Raft");
    assert!(
        error.to_string().contains("not one this cluster issued"),
        "{error}"
    );

    let (status, body) = api(&c1, &out.admin, Method::GET, "/cluster", "")
        .await
        .expect("the real admin still gets in");
    assert_eq!(status, StatusCode::OK, "{body}");

    info!("--- the removal rotated the cluster key: the stolen keys open nothing sealed now");
    let created = api(
        &c1,
        &out.admin,
        Method::POST,
        "/secrets",
        r#"{"name":"db","value_base64":"aHVudGVyMg=="}"#,
    )
    .await;
    assert!(
        matches!(created, Ok((StatusCode::OK | StatusCode::CREATED, _))),
        "{created:?}"
    );
    let state = c1.control().read_stale().await;
    assert_eq!(state.key_generation(), 2);
    let info = state.cluster.as_ref().unwrap();
    assert!(
        ClusterCa::from_sealed(
            &info.ca_cert_der,
            &info.ca_key_sealed,
            stolen_keys.get(1).unwrap()
        )
        .is_err()
    );
    let keys = c1.control().cluster_keys().unwrap();
    assert!(
        ClusterCa::from_sealed(&info.ca_cert_der, &info.ca_key_sealed, keys.get(2).unwrap())
            .is_ok()
    );
    let at_rest = &state.secrets["db"].sealed;
    assert_eq!(at_rest.key_id, 2);
    assert!(warren_control::secrets::open_at_rest(&stolen_keys, at_rest).is_err());
    assert_eq!(
        warren_control::secrets::open_at_rest(&keys, at_rest).unwrap(),
        b"hunter2"
    );
    drop(state);
    c1.shutdown().await;
}

/// A rotation while one of three control nodes is down: the other two keep the new key, so the
/// rotation commits; the third, restarted, finds its state on a generation it does not hold and
/// fetches it from the others — and can then open the CA key again (it could not sign a joining
/// node's certificate otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_node_down_during_a_rotation_fetches_the_key_when_it_returns() {
    init_logs();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (c1, _out, c2) = start_pair(&dirs).await;
    let options = MintOptions {
        role: NodeRole::Control,
        ttl: Some(Duration::from_secs(600)),
        single_use: true,
    };
    let (token, record) = mint(c1.control().fingerprint(), options, unix_now_ms());
    c1.control().propose(Op::AddToken(record)).await.unwrap();
    let c3 = ControlNode::join(
        new_node(&dirs[2], "c3"),
        c1.quic_addr(),
        &token.to_string(),
        config(),
    )
    .await
    .unwrap();
    let c3_dir = c3.data_dir().to_owned();

    info!("--- c3 stops; the cluster key rotates without it");
    c3.shutdown().await;
    let generation = c1
        .control()
        .rotate_cluster_key("the test asks")
        .await
        .unwrap();
    assert_eq!(generation, 2);
    let new_key = c1.control().cluster_keys().unwrap().get(2).unwrap().clone();
    assert_eq!(c2.control().cluster_keys().unwrap().get(2), Some(&new_key));
    let on_disk = std::fs::read_to_string(c3_dir.join("cluster.key")).unwrap();
    assert_eq!(ClusterKeys::from_text(&on_disk).unwrap().newest(), 1);

    info!("--- c3 comes back and fetches generation 2");
    let c3 = ControlNode::run(&c3_dir, config()).await.unwrap();
    wait_until("c3 holds generation 2", Duration::from_secs(20), || async {
        c3.control().read_stale().await.key_generation() == 2
            && c3.control().cluster_keys().unwrap().get(2) == Some(&new_key)
    })
    .await;
    let on_disk = std::fs::read_to_string(c3_dir.join("cluster.key")).unwrap();
    assert_eq!(
        ClusterKeys::from_text(&on_disk).unwrap().get(2),
        Some(&new_key)
    );
    for node in [c3, c2, c1] {
        node.shutdown().await;
    }
}
