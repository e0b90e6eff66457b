use super::*;

#[test]
fn targets_parse() {
    assert_eq!(
        Target::parse("unix:/run/w.sock").unwrap(),
        Target::Unix("/run/w.sock".into())
    );
    assert_eq!(
        Target::parse("10.0.0.1:7100").unwrap(),
        Target::Tls("10.0.0.1:7100".into())
    );
    assert_eq!(
        Target::parse("ops.example:7100").unwrap(),
        Target::Tls("ops.example:7100".into())
    );
    assert_eq!(
        Target::parse("[::1]:7100").unwrap(),
        Target::Tls("[::1]:7100".into())
    );
    for bad in ["", "unix:", "10.0.0.1", ":7100", "host:port"] {
        assert!(Target::parse(bad).is_err(), "{bad}");
    }
}

fn error_of(status: u16, body: &str) -> String {
    check_status(
        StatusCode::from_u16(status).unwrap(),
        Bytes::from(body.to_owned()),
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn error_answers_become_one_line() {
    assert_eq!(
        error_of(
            404,
            r#"{"error":"service web not found","code":"not_found"}"#
        ),
        "service web not found"
    );
    let quorum = error_of(
        503,
        r#"{"error":"no quorum: leader unknown","code":"no_quorum"}"#,
    );
    assert!(quorum.starts_with("no quorum: leader unknown"), "{quorum}");
    assert!(quorum.contains("warren cluster status"), "{quorum}");
    assert_eq!(
        error_of(502, "bad gateway\n"),
        "HTTP 502 Bad Gateway from the control plane: bad gateway"
    );
    assert!(!error_of(500, &"x".repeat(10_000)).contains(&"x".repeat(201)));
    let ok = check_status(StatusCode::OK, Bytes::from_static(b"[]")).unwrap();
    assert_eq!(ok.text(), "[]");
}

#[test]
fn segments_are_checked() {
    assert_eq!(segment("service", "web-1").unwrap(), "web-1");
    assert_eq!(
        segment("node", "00000000000000ff").unwrap(),
        "00000000000000ff"
    );
    for bad in ["", "a/b", "a b", "../x", "a?b", "a%2F"] {
        assert!(segment("node", bad).is_err(), "{bad}");
    }
}

/// What a fake control node does with each request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers with this status and body, naming these members (if any).
    Answer(u16, &'static str, Option<&'static str>),
    /// Reads the request and never answers.
    Hang,
}

/// A TLS server with a control node's certificate that counts the requests it reads.
struct FakeControl {
    addr: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeControl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeControl {
    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct Cluster {
    ca: warren_transport::ClusterCa,
    admin: Credentials,
}

fn cluster() -> Cluster {
    use warren_api::clock::unix_now;
    use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
    use warren_transport::{CertSubject, ClusterCa, Validity};
    warren_transport::install_crypto_provider();
    let ca = ClusterCa::generate("t", Validity::starting_at(unix_now(), CA_LIFETIME)).unwrap();
    let admin = ca
        .issue_credentials(
            &CertSubject::Admin {
                name: "admin".into(),
            },
            Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
        )
        .unwrap();
    Cluster { ca, admin }
}

async fn fake_control(cluster: &Cluster, behaviour: Behaviour) -> FakeControl {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warren_api::clock::unix_now;
    use warren_transport::ca::NODE_CERT_LIFETIME;
    use warren_transport::{CertRole, CertSubject, TrustList, Validity};
    let creds = cluster
        .ca
        .issue_credentials(
            &CertSubject::Node {
                node_id: warren_api::NodeId(7),
                role: CertRole::Control,
            },
            Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
        )
        .unwrap();
    let listener = warren_transport::https::ApiListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        &creds,
        &TrustList::default(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().to_string();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    let own = addr.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok(pending) = listener.accept().await else {
                continue;
            };
            let counted = counted.clone();
            let own = own.clone();
            tokio::spawn(async move {
                let Ok((mut stream, _)) = pending.handshake().await else {
                    return;
                };
                // One request: its head, then as much body as it declares.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match behaviour {
                    Behaviour::Hang => std::future::pending::<()>().await,
                    Behaviour::Answer(status, body, members) => {
                        // `SELF` stands for the fake's own address, known only once bound.
                        let members = members
                            .map(|m| format!("{MEMBERS_HEADER}: {}\r\n", m.replace("SELF", &own)))
                            .unwrap_or_default();
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n{members}\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                        let _ = stream.flush().await;
                    }
                }
            });
        }
    });
    FakeControl {
        addr,
        requests,
        task,
    }
}

fn client_of(cluster: &Cluster, targets: &[&str], timeout_ms: u64) -> Client {
    Client {
        targets: targets.iter().map(|t| Target::parse(t).unwrap()).collect(),
        answered_last: Default::default(),
        credentials: Some(cluster.admin.clone()),
        timeout: Duration::from_millis(timeout_ms),
        connect_timeout: Duration::from_millis(timeout_ms),
        sync: None,
    }
}

const NO_QUORUM: &str = r#"{"error":"no quorum: leader unknown","code":"no_quorum"}"#;

/// A read whose answer is lost is asked of the next node; a write that was sent is not sent
/// again (it may have been applied), and says so.
#[tokio::test]
async fn a_lost_read_moves_on_and_a_lost_write_is_not_repeated() {
    let cluster = cluster();
    let hung = fake_control(&cluster, Behaviour::Hang).await;
    let healthy = fake_control(&cluster, Behaviour::Answer(200, "[]", None)).await;
    let client = client_of(&cluster, &[&hung.addr, &healthy.addr], 500);

    let answer = client.get("/services").await.unwrap();
    assert_eq!(answer.text(), "[]");
    assert_eq!((hung.requests(), healthy.requests()), (1, 1));

    let error = client
        .send(Method::POST, "/services", &serde_json::json!({}))
        .await
        .unwrap_err();
    let text = crate::output::one_line(&error);
    assert!(text.contains("was sent but not answered"), "{text}");
    assert!(text.contains(&hung.addr), "{text}");
    assert_eq!((hung.requests(), healthy.requests()), (2, 1));
}

/// After a read moved past a hung node, the next read starts from the node that answered:
/// a follow pays for a dead node once, not at every request.
#[tokio::test]
async fn reads_start_from_the_node_that_answered_last() {
    let cluster = cluster();
    let hung = fake_control(&cluster, Behaviour::Hang).await;
    let healthy = fake_control(&cluster, Behaviour::Answer(200, "[]", None)).await;
    let client = client_of(&cluster, &[&hung.addr, &healthy.addr], 500);
    client.get("/services").await.unwrap();
    client.get("/services").await.unwrap();
    assert_eq!((hung.requests(), healthy.requests()), (1, 2));
}

/// "No quorum" sends a read on to the next node, but not a write; when every node says it, the
/// answer stays a no-quorum error (`cluster status` then reads stale).
#[tokio::test]
async fn no_quorum_moves_a_read_on_but_not_a_write() {
    let cluster = cluster();
    let minority = fake_control(&cluster, Behaviour::Answer(503, NO_QUORUM, None)).await;
    let majority = fake_control(&cluster, Behaviour::Answer(200, "[]", None)).await;
    let client = client_of(&cluster, &[&minority.addr, &majority.addr], 2_000);
    client.get("/services").await.unwrap();
    let error = client
        .empty(Method::DELETE, "/services/web")
        .await
        .unwrap_err();
    assert!(
        error
            .downcast_ref::<ApiError>()
            .is_some_and(ApiError::is_no_quorum)
    );
    assert_eq!((minority.requests(), majority.requests()), (2, 1));

    let alone = client_of(&cluster, &[&minority.addr, "127.0.0.1:1"], 2_000);
    let error = alone.get("/cluster").await.unwrap_err();
    assert!(
        error
            .downcast_ref::<ApiError>()
            .is_some_and(ApiError::is_no_quorum),
        "{error:#}"
    );
}

/// Nothing was sent to a node that never completed the handshake, so even a write moves on —
/// after the connect timeout, not the request timeout.
#[tokio::test]
async fn a_silent_host_costs_one_connect_timeout_even_for_a_write() {
    let cluster = cluster();
    // Accepted by the kernel (the backlog), never by a program: like a hung host.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let healthy = fake_control(&cluster, Behaviour::Answer(201, "{}", None)).await;
    let mut client = client_of(&cluster, &[&silent_addr, &healthy.addr], 60_000);
    client.connect_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    client
        .send(Method::POST, "/services", &serde_json::json!({}))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(healthy.requests(), 1);
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// A caught-up node's member list (a linearizable read) rewrites the admin config's `api`;
/// an answer that may come from a node behind (a stale read) only adds to it.
#[tokio::test]
async fn answers_keep_the_admin_config_current() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(config::ADMIN_CONF);
    let node = fake_control(
        &cluster,
        Behaviour::Answer(200, "{}", Some("SELF,127.0.0.9:7100")),
    )
    .await;
    let gone = "127.0.0.1:1";
    let config = config::AdminConfig::new(
        "ops".into(),
        vec![gone.into(), node.addr.clone()],
        &cluster.admin,
    );
    config.save(&path).unwrap();
    let client = Client::from_args(&ClientArgs {
        config: Some(path.clone()),
        ..ClientArgs::default()
    })
    .unwrap();

    client.get("/cluster?stale=true").await.unwrap();
    let api = config::AdminConfig::load(&path).unwrap().api;
    assert_eq!(api, [gone, &node.addr, "127.0.0.9:7100"]);

    client.get("/cluster").await.unwrap();
    let loaded = config::AdminConfig::load(&path).unwrap();
    assert_eq!(loaded.api, [node.addr.as_str(), "127.0.0.9:7100"]);
    assert_eq!(loaded.key_pem, config.key_pem);
}
