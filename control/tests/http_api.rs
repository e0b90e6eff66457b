//! The HTTP API end to end: TLS with an admin certificate and the Unix socket, status codes
//! for bad input, and refusal of non-admin certificates.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use warren_api::rest::{ErrorBody, ServiceInfo, WriteResult};
use warren_control::node::{ControlConfig, ControlNode, InitOutput, NewNode};
use warren_transport::Credentials;

async fn start() -> (ControlNode, InitOutput, TempDir) {
    warren_transport::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let new = NewNode {
        metrics_listen: Some(any),
        ..NewNode::on_loopback(dir.path().to_owned(), "c1", "central")
    };
    let (node, out) = ControlNode::init(new, ControlConfig::default())
        .await
        .unwrap();
    (node, out, dir)
}

async fn send<IO>(io: IO, method: Method, path: &str, body: Option<String>) -> (StatusCode, Bytes)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(format!("http://warren{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn tls(
    node: &ControlNode,
    creds: &Credentials,
    method: Method,
    path: &str,
    body: Option<String>,
) -> (StatusCode, Bytes) {
    let stream = warren_transport::https::connect(node.api_addr(), creds, Duration::from_secs(5))
        .await
        .unwrap();
    send(TokioIo::new(stream), method, path, body).await
}

fn service_json(name: &str, replicas: u32) -> String {
    format!(
        r#"{{"name":"{name}","workload":{{"process":{{"command":["sleep","1000"],"working_dir":null}}}},"mode":{{"replicated":{{"replicas":{replicas}}}}}}}"#
    )
}

/// An admin creates, reads and lists a service over TLS; bad input gets 400 naming the field,
/// unknown names 404, duplicates 409, oversized bodies 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_services_over_tls_with_clear_errors() {
    let (node, out, _dir) = start().await;
    let admin = &out.admin;
    let (status, body) = tls(
        &node,
        admin,
        Method::POST,
        "/v1/services",
        Some(service_json("web", 2)),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let written: WriteResult = serde_json::from_slice(&body).unwrap();
    assert!(written.created && written.changed);
    assert_eq!(written.version, Some(1));

    let (status, body) = tls(&node, admin, Method::GET, "/v1/services/web", None).await;
    assert_eq!(status, StatusCode::OK);
    let info: ServiceInfo = serde_json::from_slice(&body).unwrap();
    assert_eq!(info.replicas_desired, Some(2));

    let (status, _) = tls(
        &node,
        admin,
        Method::POST,
        "/v1/services",
        Some(service_json("web", 2)),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = tls(
        &node,
        admin,
        Method::PUT,
        "/v1/services/web",
        Some(service_json("web", 2)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !serde_json::from_slice::<WriteResult>(&body)
            .unwrap()
            .changed,
        "same spec is unchanged"
    );
    let applied_before = node.control().applied();
    let (_, body) = tls(
        &node,
        admin,
        Method::PUT,
        "/v1/services/web",
        Some(service_json("web", 2)),
    )
    .await;
    let again: WriteResult = serde_json::from_slice(&body).unwrap();
    assert!(!again.changed);
    assert_eq!(
        node.control().applied(),
        applied_before,
        "an unchanged PUT appends no Raft entry"
    );
    assert_eq!(again.revision, applied_before.0);

    let bad = r#"{"name":"web2","workload":{"process":{"command":[],"working_dir":null}}}"#;
    let (status, body) = tls(&node, admin, Method::POST, "/v1/services", Some(bad.into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert!(error.error.contains("command"), "{}", error.error);

    let (status, _) = tls(&node, admin, Method::GET, "/v1/services/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = tls(
        &node,
        admin,
        Method::POST,
        "/v1/services",
        Some("x".repeat(1024 * 1024 + 1)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = tls(
        &node,
        admin,
        Method::POST,
        "/v1/services",
        Some("{not json".into()),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );

    // The local Unix socket answers too, without TLS.
    let stream = tokio::net::UnixStream::connect(node.data_dir().join("control.sock"))
        .await
        .unwrap();
    let (status, body) = send(TokioIo::new(stream), Method::GET, "/v1/services", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("\"web\""));

    // Metrics count the requests.
    let metrics = node.metrics().render();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("warren_api_requests_total{code=\"201\",route=\"POST /services\",")
            && l.contains("node=\"c1\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    node.shutdown().await;
}

/// A token can be minted over the API; a certificate that is not an admin's is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_minted_and_non_admin_certificates_refused() {
    let (node, out, dir) = start().await;
    let (status, body) = tls(
        &node,
        &out.admin,
        Method::POST,
        "/v1/tokens",
        Some(r#"{"role":"agent","ttl_ms":60000,"single_use":true}"#.into()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(String::from_utf8_lossy(&body).contains("WRN1-a-"));

    // No token without a lifetime, none longer than the maximum.
    for (request, expected) in [
        (
            r#"{"role":"agent","ttl_ms":null,"single_use":false}"#,
            "a token needs a lifetime",
        ),
        (
            r#"{"role":"agent","ttl_ms":0,"single_use":false}"#,
            "must be more than 0",
        ),
        (
            r#"{"role":"agent","ttl_ms":2678400000,"single_use":false}"#,
            "31d is longer than the longest a token may live (30d)",
        ),
    ] {
        let (status, refused) = tls(
            &node,
            &out.admin,
            Method::POST,
            "/v1/tokens",
            Some(request.into()),
        )
        .await;
        let text = String::from_utf8_lossy(&refused);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {text}");
        assert!(text.contains(expected), "{request}: {text}");
    }

    // Build an agent certificate from the same CA (as a joined agent would hold).
    let ca =
        warren_transport::ClusterCa::load(dir.path(), &warren_transport::seal::SealKey::generate());
    assert!(ca.is_err(), "the CA key is not on disk in the clear");
    let agent_dir = tempfile::tempdir().unwrap();
    let token: warren_api::rest::TokenResponse = serde_json::from_slice(&body).unwrap();
    let params = warren_transport::join::JoinParams {
        role: warren_api::NodeRole::Agent,
        name: "edge-1".into(),
        site: "lisbon".into(),
        labels: Default::default(),
        advertise: vec![],
    };
    let joined = warren_transport::join::join(
        node.quic_addr(),
        &token.token,
        params,
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    joined.credentials.save(agent_dir.path()).unwrap();
    let result = async {
        let stream = warren_transport::https::connect(
            node.api_addr(),
            &joined.credentials,
            Duration::from_secs(5),
        )
        .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tokio::spawn(conn);
        let request = Request::builder()
            .uri("http://warren/v1/cluster")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender
            .send_request(request)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(
        result.is_err(),
        "an agent certificate must not reach the API"
    );

    // The joined agent is in the registry.
    let (status, body) = tls(&node, &out.admin, Method::GET, "/v1/nodes/edge-1", None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // The answer about one node says which nodes its view holds as peers (never itself);
    // lists leave that out.
    let info: warren_api::rest::NodeInfo = serde_json::from_slice(&body).unwrap();
    let peers = info.peers.expect("the node's peers");
    assert!(!peers.contains(&info.node.id), "{peers:?}");
    let (_, body) = tls(&node, &out.admin, Method::GET, "/v1/nodes", None).await;
    let list: Vec<warren_api::rest::NodeInfo> = serde_json::from_slice(&body).unwrap();
    assert!(list.iter().all(|n| n.peers.is_none()));
    node.shutdown().await;
}

/// Every answer — a read, an error — names the control members' API addresses, so that clients
/// can keep their address list current; the members module waits for that list to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_the_members_api_addresses() {
    let (node, out, _dir) = start().await;
    let advertised = node.settings().advertise_api.clone();
    assert_eq!(
        warren_control::members::api_addrs(node.control()),
        vec![advertised.clone()]
    );
    for (path, expected_status) in [
        ("/v1/cluster", StatusCode::OK),
        ("/v1/services/nope", StatusCode::NOT_FOUND),
    ] {
        let stream =
            warren_transport::https::connect(node.api_addr(), &out.admin, Duration::from_secs(5))
                .await
                .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::builder()
            .uri(format!("http://warren{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), expected_status, "{path}");
        let members = response
            .headers()
            .get(warren_api::rest::MEMBERS_HEADER)
            .and_then(|v| v.to_str().ok());
        assert_eq!(members, Some(advertised.as_str()), "{path}");
    }
    let changed = tokio::time::timeout(
        Duration::from_secs(5),
        warren_control::members::api_addrs_changed(node.control(), &[]),
    )
    .await
    .expect("an empty list differs at once");
    assert_eq!(changed, Some(vec![advertised]));
}
