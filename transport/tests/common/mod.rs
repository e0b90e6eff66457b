//! Fixtures shared by the transport's integration tests: a CA, credentials per role, endpoints
//! on 127.0.0.1 port 0, and a server loop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use warren_api::NodeId;
use warren_api::clock::unix_now;
use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
use warren_transport::{
    CertRole, CertSubject, ClusterCa, Credentials, Endpoint, EndpointOptions, PeerConnection,
    TransportConfig, TransportMetrics, Validity,
};

pub const LOOPBACK: &str = "127.0.0.1:0";

pub fn init() {
    warren_transport::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

pub fn ca() -> ClusterCa {
    ClusterCa::generate("test", Validity::starting_at(unix_now(), CA_LIFETIME)).unwrap()
}

pub fn node_creds(ca: &ClusterCa, id: u64, role: CertRole) -> Credentials {
    let subject = CertSubject::Node {
        node_id: NodeId(id),
        role,
    };
    ca.issue_credentials(
        &subject,
        Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
    )
    .unwrap()
}

/// Test-tuned timers: short, so failure cases finish quickly.
pub fn fast_config() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_secs(5),
        frame_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ..TransportConfig::default()
    }
}

pub fn options(metrics: &TransportMetrics) -> EndpointOptions {
    EndpointOptions {
        config: fast_config(),
        metrics: metrics.clone(),
        ..EndpointOptions::default()
    }
}

pub fn endpoint(creds: &Credentials, metrics: &TransportMetrics) -> Endpoint {
    Endpoint::bind(LOOPBACK.parse().unwrap(), creds, options(metrics)).unwrap()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    Ping(u64),
    Pong(u64, String),
    Blob(Vec<u8>),
}

/// Runs an accept loop that admits connections and answers `Ping(n)` with `Pong(n, peer role)`
/// and `Blob(b)` with `Blob(b)`. Admission errors are sent to the returned channel.
pub fn serve_echo(
    endpoint: Arc<Endpoint>,
) -> (
    JoinHandle<()>,
    tokio::sync::mpsc::Receiver<warren_transport::AcceptError>,
) {
    let (errors_tx, errors_rx) = tokio::sync::mpsc::channel(16);
    let handle = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let errors_tx = errors_tx.clone();
            tokio::spawn(async move {
                match incoming.admit().await {
                    Ok(conn) => warren_transport::serve_requests(conn, echo).await,
                    Err(error) => {
                        let _ = errors_tx.send(error).await;
                    }
                }
            });
        }
    });
    (handle, errors_rx)
}

async fn echo(msg: Msg, conn: PeerConnection) -> Msg {
    match msg {
        Msg::Ping(n) => {
            let role = conn.peer().map(|p| p.role.as_str()).unwrap_or("none");
            Msg::Pong(n, role.to_owned())
        }
        other => other,
    }
}

pub fn addr(endpoint: &Endpoint) -> SocketAddr {
    endpoint.local_addr()
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// What an attacker holding a copy of the CA key (from a removed control node's disk) can
/// make: a certificate for `id`/`role`, for a key of its own, with any serial it likes.
pub fn forge(ca: &ClusterCa, id: u64, role: CertRole, serial: &[u8]) -> Credentials {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let seal_key = warren_transport::seal::SealKey::generate();
    let sealed = ca.sealed_key(&seal_key);
    let ca_key_der = warren_transport::seal::open(&seal_key, "warren ca key v1", &sealed).unwrap();
    let ca_key = KeyPair::try_from(ca_key_der.as_slice()).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca.cert_der(), ca_key).unwrap();
    let uri = format!("warren://{}/{id:016x}", role.as_str());
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Credentials::new(
        cert.der().clone(),
        key.serialize_der(),
        ca.cert_der().clone(),
    )
    .unwrap()
}
