//! DNS figures on loopback: queries per second and latency (p50, p99, max) of the agent's DNS
//! server under N concurrent UDP clients, for zone answers (A, SRV, NXDOMAIN) and for names
//! forwarded to an upstream on 127.0.0.1.
//!
//! This prints figures for people to read and compare between commits; it asserts nothing
//! about speed. Run it with `cargo bench -p warren-edge-agent --bench dns`. Clients and server
//! share one process and its cores, so the figures include the clients' own cost: they are a
//! floor for the server, not a ceiling.
// The point of this binary is to print a table.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_net::runtime::TokioRuntimeProvider;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use prometheus::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warren_edge_agent::dns::{
    Catalogue, DnsConfig, DnsMetrics, EndpointLiveness, PortProtocol, PublishedPort, QueryResult,
    ReplicaEndpoint, ServiceRecords, Upstreams, spawn_dns_server,
};

/// How long each row measures.
const RUN: Duration = Duration::from_secs(3);
/// Queries sent and not measured before each row, per client.
const WARMUP_QUERIES: usize = 200;
/// A query with no answer in this long counts as lost (and is not in the latency figures).
const LOST_AFTER: Duration = Duration::from_secs(1);
/// Services in the catalogue besides `web` (so lookups are not in a one-entry map).
const N_OTHER_SERVICES: usize = 200;

/// One row of the table.
struct Row {
    what: &'static str,
    name: &'static str,
    qtype: RecordType,
    n_clients: usize,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let upstream = start_upstream().await;
    let (_catalogue_tx, catalogue_rx) = watch::channel(catalogue());
    let metrics = DnsMetrics::register(&Registry::new()).expect("fresh registry");
    let config = DnsConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        upstreams: Upstreams::List(vec![upstream]),
        ..DnsConfig::default()
    };
    let server = spawn_dns_server(
        config,
        catalogue_rx,
        metrics.clone(),
        CancellationToken::new(),
    )
    .await
    .expect("dns server starts");
    let addr = server.local_addr();
    println!(
        "dns server on {addr} (UDP), {} services, {} s per row, {} cores",
        N_OTHER_SERVICES + 1,
        RUN.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:<28} {:>7} {:>10} {:>9} {:>9} {:>9} {:>6}",
        "query", "clients", "queries/s", "p50 µs", "p99 µs", "max µs", "lost"
    );
    let rows = [
        Row {
            what: "A web.warren (3 addresses)",
            name: "web.warren.",
            qtype: RecordType::A,
            n_clients: 1,
        },
        Row {
            what: "A web.warren (3 addresses)",
            name: "web.warren.",
            qtype: RecordType::A,
            n_clients: 4,
        },
        Row {
            what: "A web.warren (3 addresses)",
            name: "web.warren.",
            qtype: RecordType::A,
            n_clients: 16,
        },
        Row {
            what: "A web.warren (3 addresses)",
            name: "web.warren.",
            qtype: RecordType::A,
            n_clients: 64,
        },
        Row {
            what: "SRV _http._tcp.web.warren",
            name: "_http._tcp.web.warren.",
            qtype: RecordType::SRV,
            n_clients: 16,
        },
        Row {
            what: "A nosuch.warren (NXDOMAIN)",
            name: "nosuch.warren.",
            qtype: RecordType::A,
            n_clients: 16,
        },
        Row {
            what: "A www.example.test (fwd)",
            name: "www.example.test.",
            qtype: RecordType::A,
            n_clients: 1,
        },
        Row {
            what: "A www.example.test (fwd)",
            name: "www.example.test.",
            qtype: RecordType::A,
            n_clients: 16,
        },
    ];
    for row in rows {
        measure(addr, &row).await;
    }
    let counted: Vec<String> = QueryResult::ALL
        .iter()
        .filter(|result| metrics.get(**result) > 0)
        .map(|result| format!("{}={}", result.as_str(), metrics.get(*result)))
        .collect();
    println!("warren_dns_queries_total: {}", counted.join(" "));
    server.shutdown().await;
}

/// Runs `row.n_clients` closed-loop clients for [`RUN`] and prints one line.
async fn measure(addr: SocketAddr, row: &Row) {
    let name = Name::from_str(row.name).expect("bench name");
    let mut clients = Vec::new();
    for _ in 0..row.n_clients {
        clients.push(tokio::spawn(client(addr, name.clone(), row.qtype)));
    }
    let mut latencies = Vec::new();
    let mut n_lost = 0;
    for client in clients {
        let (client_latencies, client_lost) = client.await.expect("client task");
        latencies.extend(client_latencies);
        n_lost += client_lost;
    }
    latencies.sort_unstable();
    let percentile = |p: f64| -> u128 {
        if latencies.is_empty() {
            return 0;
        }
        let idx = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[idx].as_micros()
    };
    println!(
        "{:<28} {:>7} {:>10.0} {:>9} {:>9} {:>9} {:>6}",
        row.what,
        row.n_clients,
        latencies.len() as f64 / RUN.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        latencies.last().map_or(0, Duration::as_micros),
        n_lost,
    );
}

/// One client: its own socket, one query outstanding at a time. Returns the latencies of the
/// answered queries after the warm-up, and how many were lost.
async fn client(addr: SocketAddr, name: Name, qtype: RecordType) -> (Vec<Duration>, usize) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    socket.connect(addr).await.expect("connect client");
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, qtype));
    let mut bytes = query.to_vec().expect("encode query");
    let mut buffer = vec![0; 4096];
    let mut latencies = Vec::new();
    let mut n_lost = 0;
    let mut n_sent = 0usize;
    let mut measure_from = None;
    loop {
        if n_sent == WARMUP_QUERIES {
            measure_from = Some(Instant::now());
        }
        if measure_from.is_some_and(|start| start.elapsed() >= RUN) {
            break;
        }
        let id = (n_sent % usize::from(u16::MAX)) as u16;
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        n_sent += 1;
        let sent_at = Instant::now();
        socket.send(&bytes).await.expect("send query");
        let answered = tokio::time::timeout(LOST_AFTER, async {
            loop {
                let n_read = socket.recv(&mut buffer).await.expect("recv answer");
                // A late answer to an earlier, lost query is skipped.
                if n_read >= 2 && buffer[..2] == id.to_be_bytes() {
                    return;
                }
            }
        })
        .await;
        match (answered, measure_from) {
            (Ok(()), Some(_)) => latencies.push(sent_at.elapsed()),
            (Err(_), Some(_)) => n_lost += 1,
            _ => {}
        }
    }
    (latencies, n_lost)
}

/// `web` with three alive replicas and an SRV port; `svc-N` with one replica each.
fn catalogue() -> Arc<Catalogue> {
    let replica = |label: &str, address: String| ReplicaEndpoint {
        label: label.to_owned(),
        address: address.parse().expect("bench address"),
        liveness: EndpointLiveness::Alive,
    };
    let web = ServiceRecords {
        replicas: (0..3)
            .map(|slot| replica(&slot.to_string(), format!("10.42.0.{}", slot + 1)))
            .collect(),
        ports: vec![PublishedPort {
            name: "http".to_owned(),
            port: 8080,
            protocol: PortProtocol::Tcp,
        }],
    };
    let others = (0..N_OTHER_SERVICES).map(|idx| {
        let records = ServiceRecords {
            replicas: vec![replica(
                "0",
                format!("10.42.{}.{}", 1 + idx / 250, 1 + idx % 250),
            )],
            ports: Vec::new(),
        };
        (format!("svc-{idx}"), records)
    });
    Arc::new(Catalogue::new(
        1,
        std::iter::once(("web".to_owned(), web)).chain(others),
    ))
}

/// An upstream on 127.0.0.1: hickory's Catalog with `www.example.test. A 192.0.2.10`.
async fn start_upstream() -> SocketAddr {
    let origin = Name::from_str("example.test.").expect("literal");
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let hostmaster = Name::from_str("hostmaster.example.test.").expect("literal");
    let soa = SOA::new(origin.clone(), hostmaster, 1, 3600, 600, 86_400, 60);
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    let www = Name::from_str("www.example.test.").expect("literal");
    let a = A("192.0.2.10".parse().expect("literal"));
    zone.upsert_mut(Record::from_rdata(www, 60, RData::A(a)), 1);
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = udp.local_addr().expect("upstream addr");
    let tcp = TcpListener::bind(addr).await.expect("bind upstream tcp");
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    tokio::spawn(async move { server.block_until_done().await });
    addr
}
