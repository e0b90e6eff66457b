//! The agent's DNS server on 127.0.0.1, queried by real resolver clients: hickory's client
//! (UDP and TCP) always, `dig` when it is on PATH (its test prints why it skips otherwise, and
//! fails under `CI=true`). Upstreams are hickory servers of our own on 127.0.0.1; no traffic
//! leaves loopback.

use std::net::SocketAddr;
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use prometheus::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;
mod prerequisites;

use warren_edge_agent::dns::{
    Catalogue, DnsConfig, DnsMetrics, DnsServerHandle, EndpointLiveness, PortProtocol,
    PublishedPort, QueryResult, ReplicaEndpoint, ServiceRecords, Upstreams, spawn_dns_server,
};

/// How long a test client waits for one answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,warren_edge_agent=debug,dns=info")
        .with_test_writer()
        .try_init();
}

fn replica(label: &str, address: &str, liveness: EndpointLiveness) -> ReplicaEndpoint {
    ReplicaEndpoint {
        label: label.to_owned(),
        address: address.parse().expect("test address"),
        liveness,
    }
}

/// `web`: slots 0, 1, 2 on 10.42.0.1-3 with `_http._tcp` on 8080.
fn web(replicas: Vec<ReplicaEndpoint>, serial: u32) -> Arc<Catalogue> {
    let records = ServiceRecords {
        replicas,
        ports: vec![PublishedPort {
            name: "http".to_owned(),
            port: 8080,
            protocol: PortProtocol::Tcp,
        }],
    };
    Arc::new(Catalogue::new(serial, [("web".to_owned(), records)]))
}

fn three_alive() -> Arc<Catalogue> {
    web(
        vec![
            replica("0", "10.42.0.1", EndpointLiveness::Alive),
            replica("1", "10.42.0.2", EndpointLiveness::Alive),
            replica("2", "10.42.0.3", EndpointLiveness::Alive),
        ],
        1,
    )
}

struct Fixture {
    server: DnsServerHandle,
    catalogue: watch::Sender<Arc<Catalogue>>,
    metrics: DnsMetrics,
}

impl Fixture {
    async fn start(upstreams: Vec<SocketAddr>, forward_timeout: Duration) -> Fixture {
        init_logging();
        let (catalogue, receiver) = watch::channel(three_alive());
        let metrics = DnsMetrics::register(&Registry::new()).expect("fresh registry");
        let config = DnsConfig {
            listen: "127.0.0.1:0".parse().expect("literal"),
            upstreams: Upstreams::List(upstreams),
            forward_timeout,
            ..DnsConfig::default()
        };
        let server = spawn_dns_server(config, receiver, metrics.clone(), CancellationToken::new())
            .await
            .expect("dns server starts");
        Fixture {
            server,
            catalogue,
            metrics,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// What a client saw: the response code and each answer's data as text.
#[derive(Debug, PartialEq)]
struct Seen {
    code: ResponseCode,
    answers: Vec<String>,
}

fn seen(code: ResponseCode, answers: &[&str]) -> Seen {
    Seen {
        code,
        answers: answers.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// One query with hickory's client.
async fn hickory_query(
    addr: SocketAddr,
    transport: Transport,
    name: &str,
    qtype: RecordType,
) -> Seen {
    let provider = TokioRuntimeProvider::default();
    let mut client = match transport {
        Transport::Udp => {
            let stream = UdpClientStream::builder(addr, provider)
                .with_timeout(Some(CLIENT_TIMEOUT))
                .build();
            let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(background);
            client
        }
        Transport::Tcp => {
            let (stream, sender) = TcpClientStream::new(addr, None, Some(CLIENT_TIMEOUT), provider);
            let stream = stream.await.expect("tcp connect");
            let (client, background) = Client::<TokioRuntimeProvider>::new(stream, sender);
            tokio::spawn(background);
            client
        }
    };
    let name = Name::from_str(name).expect("test name");
    let response = client
        .query(name, DNSClass::IN, qtype)
        .await
        .expect("a response");
    let mut answers: Vec<String> = response
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    answers.sort();
    Seen {
        code: response.metadata.response_code,
        answers,
    }
}

/// Both transports agree with `expected`.
async fn check(addr: SocketAddr, name: &str, qtype: RecordType, expected: &Seen) {
    for transport in [Transport::Udp, Transport::Tcp] {
        let got = hickory_query(addr, transport, name, qtype).await;
        assert_eq!(&got, expected, "{name} {qtype} over {transport:?}");
    }
}

/// One query with `dig`.
fn dig(addr: SocketAddr, name: &str, qtype: &str, tcp: bool) -> Seen {
    let mut command = Command::new("dig");
    command.args([
        "+time=3",
        "+tries=1",
        &format!("@{}", addr.ip()),
        "-p",
        &addr.port().to_string(),
        name,
        qtype,
    ]);
    if tcp {
        command.arg("+tcp");
    }
    let output = command.output().expect("run dig");
    let text = String::from_utf8_lossy(&output.stdout);
    let status = text
        .lines()
        .find_map(|line| line.split("status: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("dig printed no status:\n{text}"));
    let code = match status {
        "NOERROR" => ResponseCode::NoError,
        "NXDOMAIN" => ResponseCode::NXDomain,
        "SERVFAIL" => ResponseCode::ServFail,
        other => panic!("unexpected dig status {other}:\n{text}"),
    };
    let mut answers: Vec<String> = text
        .lines()
        .skip_while(|line| !line.starts_with(";; ANSWER SECTION:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .skip(4)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    answers.sort();
    Seen { code, answers }
}

fn dig_check(addr: SocketAddr, name: &str, qtype: &str, expected: &Seen) {
    for tcp in [false, true] {
        let got = dig(addr, name, qtype, tcp);
        assert_eq!(&got, expected, "dig {name} {qtype} tcp={tcp}");
    }
}

/// Services, replicas, SRV, NXDOMAIN and NODATA over UDP and TCP with hickory's client; then a
/// replica dies and another is removed, and both leave the answers.
#[tokio::test]
async fn zone_answers_follow_the_catalogue() {
    let fixture = Fixture::start(Vec::new(), Duration::from_secs(1)).await;
    let addr = fixture.addr();
    info!("--- three alive replicas");
    let three = seen(
        ResponseCode::NoError,
        &["10.42.0.1", "10.42.0.2", "10.42.0.3"],
    );
    check(addr, "web.warren.", RecordType::A, &three).await;
    check(addr, "WEB.Warren.", RecordType::A, &three).await;
    check(
        addr,
        "1.web.warren.",
        RecordType::A,
        &seen(ResponseCode::NoError, &["10.42.0.2"]),
    )
    .await;
    let srv = seen(
        ResponseCode::NoError,
        &[
            "0 1 8080 0.web.warren.",
            "0 1 8080 1.web.warren.",
            "0 1 8080 2.web.warren.",
        ],
    );
    check(addr, "_http._tcp.web.warren.", RecordType::SRV, &srv).await;
    check(
        addr,
        "nosuch.warren.",
        RecordType::A,
        &seen(ResponseCode::NXDomain, &[]),
    )
    .await;
    check(
        addr,
        "web.warren.",
        RecordType::AAAA,
        &seen(ResponseCode::NoError, &[]),
    )
    .await;

    info!("--- slot 2 dies, slot 1 is removed");
    fixture.catalogue.send_replace(web(
        vec![
            replica("0", "10.42.0.1", EndpointLiveness::Alive),
            replica("2", "10.42.0.3", EndpointLiveness::Dead),
        ],
        2,
    ));
    check(
        addr,
        "web.warren.",
        RecordType::A,
        &seen(ResponseCode::NoError, &["10.42.0.1"]),
    )
    .await;
    check(
        addr,
        "2.web.warren.",
        RecordType::A,
        &seen(ResponseCode::NoError, &[]),
    )
    .await;
    check(
        addr,
        "1.web.warren.",
        RecordType::A,
        &seen(ResponseCode::NXDomain, &[]),
    )
    .await;
    check(
        addr,
        "_http._tcp.web.warren.",
        RecordType::SRV,
        &seen(ResponseCode::NoError, &["0 1 8080 0.web.warren."]),
    )
    .await;

    info!("--- gossip silent: unknown replicas are served when none is alive");
    fixture.catalogue.send_replace(web(
        vec![
            replica("0", "10.42.0.1", EndpointLiveness::Unknown),
            replica("2", "10.42.0.3", EndpointLiveness::Dead),
        ],
        3,
    ));
    check(
        addr,
        "web.warren.",
        RecordType::A,
        &seen(ResponseCode::NoError, &["10.42.0.1"]),
    )
    .await;

    // 6 + 4 + 1 queries per transport above, all in the zone.
    assert_eq!(fixture.metrics.get(QueryResult::Answered), 2 * 7);
    assert_eq!(fixture.metrics.get(QueryResult::NoData), 2 * 2);
    assert_eq!(fixture.metrics.get(QueryResult::NxDomain), 2 * 2);
    fixture.server.shutdown().await;
}

/// The same questions from `dig` (bind9-dnsutils), UDP and `+tcp`.
#[tokio::test]
async fn dig_gets_the_same_answers() {
    if !prerequisites::require(
        "dig_gets_the_same_answers",
        [prerequisites::program("dig", "bind9-dnsutils")],
    ) {
        return;
    }
    let fixture = Fixture::start(Vec::new(), Duration::from_secs(1)).await;
    let addr = fixture.addr();
    let three = seen(
        ResponseCode::NoError,
        &["10.42.0.1", "10.42.0.2", "10.42.0.3"],
    );
    let dig_checks = move || {
        dig_check(addr, "web.warren", "A", &three);
        dig_check(
            addr,
            "1.web.warren",
            "A",
            &seen(ResponseCode::NoError, &["10.42.0.2"]),
        );
        dig_check(
            addr,
            "_http._tcp.web.warren",
            "SRV",
            &seen(
                ResponseCode::NoError,
                &[
                    "0 1 8080 0.web.warren.",
                    "0 1 8080 1.web.warren.",
                    "0 1 8080 2.web.warren.",
                ],
            ),
        );
        dig_check(
            addr,
            "nosuch.warren",
            "A",
            &seen(ResponseCode::NXDomain, &[]),
        );
        dig_check(
            addr,
            "web.warren",
            "AAAA",
            &seen(ResponseCode::NoError, &[]),
        );
    };
    // dig is a blocking process; keep it off the runtime's worker.
    tokio::task::spawn_blocking(dig_checks)
        .await
        .expect("dig checks");
    fixture.catalogue.send_replace(web(
        vec![
            replica("0", "10.42.0.1", EndpointLiveness::Alive),
            replica("1", "10.42.0.2", EndpointLiveness::Dead),
            replica("2", "10.42.0.3", EndpointLiveness::Alive),
        ],
        2,
    ));
    let two = seen(ResponseCode::NoError, &["10.42.0.1", "10.42.0.3"]);
    tokio::task::spawn_blocking(move || dig_check(addr, "web.warren", "A", &two))
        .await
        .expect("dig checks");
    fixture.server.shutdown().await;
}

/// An upstream of our own: hickory's `Catalog` with an in-memory `example.test.` zone holding
/// `www.example.test. A 192.0.2.10`, on 127.0.0.1 (UDP + TCP).
async fn start_upstream() -> (SocketAddr, CancellationToken) {
    let origin = Name::from_str("example.test.").expect("literal");
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        origin.clone(),
        Name::from_str("hostmaster.example.test.").expect("literal"),
        1,
        3600,
        600,
        86_400,
        60,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    let www = Name::from_str("www.example.test.").expect("literal");
    let a = A("192.0.2.10".parse().expect("literal"));
    zone.upsert_mut(Record::from_rdata(www, 60, RData::A(a)), 1);
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let udp = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind upstream udp");
    let addr = udp.local_addr().expect("upstream addr");
    let tcp = TcpListener::bind(addr).await.expect("bind upstream tcp");
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        let _ = server.shutdown_gracefully().await;
    });
    (addr, cancel)
}

/// Names outside the zone are forwarded to the upstream and its answers come back (positive
/// and NXDOMAIN), over UDP and TCP, to hickory's client and to dig.
#[tokio::test]
async fn forwards_other_names_upstream() {
    let (upstream, upstream_stop) = start_upstream().await;
    let fixture = Fixture::start(vec![upstream], Duration::from_secs(2)).await;
    let addr = fixture.addr();
    assert_eq!(fixture.server.upstreams(), [upstream]);
    let www = seen(ResponseCode::NoError, &["192.0.2.10"]);
    check(addr, "www.example.test.", RecordType::A, &www).await;
    check(
        addr,
        "nosuch.example.test.",
        RecordType::A,
        &seen(ResponseCode::NXDomain, &[]),
    )
    .await;
    assert_eq!(fixture.metrics.get(QueryResult::Forwarded), 4);
    // The zone is still ours while forwarding is on.
    check(
        addr,
        "web.warren.",
        RecordType::A,
        &seen(
            ResponseCode::NoError,
            &["10.42.0.1", "10.42.0.2", "10.42.0.3"],
        ),
    )
    .await;
    if prerequisites::require(
        "forwards_other_names_upstream (its dig part)",
        [prerequisites::program("dig", "bind9-dnsutils")],
    ) {
        tokio::task::spawn_blocking(move || dig_check(addr, "www.example.test", "A", &www))
            .await
            .expect("dig checks");
    }
    fixture.server.shutdown().await;
    upstream_stop.cancel();
}

/// SERVFAIL, within the forward timeout, when the upstream refuses (closed port), never
/// answers (a socket nobody reads), or there is none.
#[tokio::test]
async fn unreachable_upstreams_give_servfail_in_time() {
    let forward_timeout = Duration::from_millis(500);
    let closed = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    };
    let silent_socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let silent = silent_socket.local_addr().expect("addr");
    for (what, upstreams) in [
        ("closed port", vec![closed]),
        ("silent upstream", vec![silent]),
        ("closed then silent", vec![closed, silent]),
        ("no upstream", Vec::new()),
    ] {
        info!("--- {what}");
        let fixture = Fixture::start(upstreams, forward_timeout).await;
        let started = Instant::now();
        let got = hickory_query(
            fixture.addr(),
            Transport::Udp,
            "www.example.test.",
            RecordType::A,
        )
        .await;
        let elapsed = started.elapsed();
        assert_eq!(got, seen(ResponseCode::ServFail, &[]), "{what}");
        assert!(
            elapsed < forward_timeout + Duration::from_millis(500),
            "{what}: SERVFAIL after {elapsed:?}"
        );
        let counted = if what == "no upstream" {
            QueryResult::NoUpstream
        } else {
            QueryResult::UpstreamError
        };
        assert_eq!(fixture.metrics.get(counted), 1, "{what}");
        fixture.server.shutdown().await;
    }
    drop(silent_socket);
}

/// Garbage, a header that promises more than it holds, two questions in one query, and an
/// opcode we do not serve: no panic, FORMERR / NOTIMP or silence, and the server still
/// answers afterwards.
#[tokio::test]
async fn malformed_queries_are_survived_and_counted() {
    let fixture = Fixture::start(Vec::new(), Duration::from_secs(1)).await;
    let addr = fixture.addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(addr).await.expect("connect");
    let mut buffer = vec![0; 4096];
    let mut exchange = async |bytes: &[u8]| -> Option<Message> {
        socket.send(bytes).await.expect("send");
        let received = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buffer));
        match received.await {
            Ok(Ok(n_read)) => Some(Message::from_vec(&buffer[..n_read]).expect("decodable reply")),
            Ok(Err(error)) => panic!("recv: {error}"),
            Err(_) => None,
        }
    };

    info!("--- shorter than a header: dropped");
    assert_eq!(exchange(&[1, 2, 3]).await, None);

    info!("--- a header promising five questions and nothing after: FORMERR from hickory");
    let header = [0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0];
    let reply = exchange(&header).await.expect("a FORMERR reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.id, 0x1234);

    info!("--- two questions: FORMERR from our handler");
    let mut two = Message::query();
    two.metadata.recursion_desired = true;
    two.add_query(Query::query(
        Name::from_str("web.warren.").expect("literal"),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_str("web.warren.").expect("literal"),
        RecordType::AAAA,
    ));
    let reply = exchange(&two.to_vec().expect("encode"))
        .await
        .expect("a reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.message_type, MessageType::Response);

    info!("--- NOTIFY: NOTIMP");
    let mut notify = Message::query();
    notify.metadata.op_code = OpCode::Notify;
    notify.add_query(Query::query(
        Name::from_str("warren.").expect("literal"),
        RecordType::SOA,
    ));
    let reply = exchange(&notify.to_vec().expect("encode"))
        .await
        .expect("a reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(fixture.metrics.get(QueryResult::FormErr), 1);
    assert_eq!(fixture.metrics.get(QueryResult::NotImp), 1);

    info!("--- random bytes, many times");
    let mut rng = fastrand::Rng::with_seed(6);
    for _ in 0..200 {
        let length = rng.usize(0..600);
        let bytes: Vec<u8> = (0..length).map(|_| rng.u8(..)).collect();
        socket.send(&bytes).await.expect("send");
    }

    info!("--- still answering");
    check(
        addr,
        "1.web.warren.",
        RecordType::A,
        &seen(ResponseCode::NoError, &["10.42.0.2"]),
    )
    .await;
    fixture.server.shutdown().await;
}
