//! Transport figures on loopback, with real certificates: request round trips, server-push
//! throughput, mutual-TLS handshakes with admission, and joins.
//!
//! This prints figures for people to read and compare between commits; it asserts nothing
//! about speed. Run it with `cargo bench -p warren-transport --bench transport`. Everything
//! runs in one process on 127.0.0.1, so the figures measure the transport's own costs (TLS,
//! QUIC, framing, postcard), not a network.
// The point of this binary is to print a table.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use warren_api::clock::{unix_now, unix_now_ms};
use warren_api::{NodeId, NodeRole};
use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
use warren_transport::join::{JoinParams, LocalJoinAuthority, join, serve_join};
use warren_transport::token::mint;
use warren_transport::{
    Alpn, CertRole, CertSubject, ClusterCa, Credentials, Endpoint, EndpointOptions, MintOptions,
    PeerConnection, TokenBook, TransportConfig, TransportMetrics, Validity,
};

/// Sequential request/response round trips measured.
const RTT_SAMPLES: usize = 5_000;
/// Round trips run first and not measured, so the connection's congestion state settles.
const RTT_WARMUP: usize = 500;
/// Bytes of data in the round-trip message; with postcard's tag and length it is a 64-byte
/// frame payload.
const RTT_DATA_BYTES: usize = 62;
/// Server-push runs: (messages, data bytes per message).
const PUSH_RUNS: [(u32, u32); 2] = [(1_000_000, 100), (40_000, 16 * 1024)];
/// Sequential connects measured per handshake mode.
const HANDSHAKE_SAMPLES: usize = 200;
/// Sequential joins measured.
const JOIN_SAMPLES: usize = 50;

/// What the bench client and server say to each other.
#[derive(Debug, Serialize, Deserialize)]
enum BenchMsg {
    /// Answered with itself.
    Echo(Vec<u8>),
    /// Asks the server to push `count` blobs of `data_bytes` on a new push stream.
    Push { count: u32, data_bytes: u32 },
    /// The push has started.
    PushStarted,
    /// One pushed message.
    Blob(Vec<u8>),
}

/// A cluster of one control node on loopback, with an agent's credentials to dial it.
struct Bench {
    server: Arc<Endpoint>,
    server_addr: SocketAddr,
    ca_fingerprint: [u8; 32],
    authority: Arc<LocalJoinAuthority>,
    agent_creds: Credentials,
    config: TransportConfig,
    metrics: TransportMetrics,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    warren_transport::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .try_init();
    let bench = Bench::start()?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "optimized"
    };
    println!("warren-transport on loopback: {profile} build, {cpus} CPUs, default TransportConfig");
    println!();

    let started = Instant::now();
    let conn = bench
        .agent_endpoint()?
        .connect(bench.server_addr, Alpn::Agent)
        .await
        .context("connect the agent for round trips and push")?;
    let rtt = round_trips(&conn).await?;
    let mut pushes = Vec::new();
    for (count, data_bytes) in PUSH_RUNS {
        pushes.push(push_throughput(&conn, count, data_bytes).await?);
    }
    conn.close("bench done");
    let handshakes_shared = handshakes(&bench, EndpointReuse::Shared).await?;
    let handshakes_fresh = handshakes(&bench, EndpointReuse::FreshPerConnect).await?;
    let joins = joins(&bench).await?;

    print_latencies(&[
        Latency {
            what: format!("request/response, {}-byte payload", RTT_DATA_BYTES + 2),
            samples: RTT_SAMPLES,
            summary: rtt,
            unit: Unit::Micros,
        },
        Latency {
            what: "connect + mTLS + admission, reused endpoint (*)".into(),
            samples: HANDSHAKE_SAMPLES,
            summary: handshakes_shared,
            unit: Unit::Millis,
        },
        Latency {
            what: "connect + mTLS + admission, new endpoint".into(),
            samples: HANDSHAKE_SAMPLES,
            summary: handshakes_fresh,
            unit: Unit::Millis,
        },
        Latency {
            what: "join: token + CSR -> certificate".into(),
            samples: JOIN_SAMPLES,
            summary: joins,
            unit: Unit::Millis,
        },
    ]);
    println!();
    print_throughputs(&pushes);
    println!();
    println!(
        "(*) all connects from one client endpoint: when the server issues session tickets, \
         rustls resumes the TLS 1.3 session and no certificates are exchanged or verified; \
         a new endpoint always does the full handshake."
    );
    println!("MB = 10^6 bytes of message data; frame prefixes and postcard overhead not counted.");
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    bench.server.close();
    Ok(())
}

impl Bench {
    fn start() -> anyhow::Result<Self> {
        let ca = ClusterCa::generate("bench", Validity::starting_at(unix_now(), CA_LIFETIME))
            .context("generate the cluster CA")?;
        let server_creds = issue(&ca, 1, CertRole::Control)?;
        let agent_creds = issue(&ca, 2, CertRole::Agent)?;
        let config = TransportConfig::default();
        let metrics = TransportMetrics::unregistered();
        let options = EndpointOptions {
            config: config.clone(),
            metrics: metrics.clone(),
            ..EndpointOptions::default()
        };
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let server =
            Arc::new(Endpoint::bind(loopback, &server_creds, options).context("bind the server")?);
        let server_addr = server.local_addr();
        let ca_fingerprint = ca.fingerprint();
        let authority = Arc::new(LocalJoinAuthority::new(
            ca,
            TokenBook::default(),
            vec![server_addr.to_string()],
        ));
        tokio::spawn(serve(server.clone(), authority.clone(), metrics.clone()));
        Ok(Self {
            server,
            server_addr,
            ca_fingerprint,
            authority,
            agent_creds,
            config,
            metrics,
        })
    }

    /// A dial-only endpoint with the agent's certificate.
    fn agent_endpoint(&self) -> anyhow::Result<Endpoint> {
        let options = EndpointOptions {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            ..EndpointOptions::default()
        };
        Endpoint::client(([127, 0, 0, 1], 0).into(), &self.agent_creds, options)
            .context("bind an agent endpoint")
    }

    /// Mints a single-use agent token and registers it with the authority.
    fn agent_token(&self) -> String {
        let options = MintOptions {
            role: NodeRole::Agent,
            ttl: Some(Duration::from_secs(600)),
            single_use: true,
        };
        let (token, record) = mint(self.ca_fingerprint, options, unix_now_ms());
        self.authority.add_token(record);
        token.to_string()
    }
}

fn issue(ca: &ClusterCa, node_id: u64, role: CertRole) -> anyhow::Result<Credentials> {
    let subject = CertSubject::Node {
        node_id: NodeId(node_id),
        role,
    };
    ca.issue_credentials(
        &subject,
        Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
    )
    .with_context(|| format!("issue the {role} certificate"))
}

/// The server: admits every connection; joins get the join handshake, everything else the
/// bench protocol.
async fn serve(
    server: Arc<Endpoint>,
    authority: Arc<LocalJoinAuthority>,
    metrics: TransportMetrics,
) {
    while let Some(incoming) = server.accept().await {
        let authority = authority.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let conn = match incoming.admit().await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(error = %error, "bench server refused a connection");
                    return;
                }
            };
            match conn.alpn() {
                Alpn::Join => serve_join(conn, authority.as_ref(), &metrics).await,
                Alpn::Agent | Alpn::Raft | Alpn::Renew => {
                    warren_transport::serve_requests(conn, answer).await
                }
            }
        });
    }
}

async fn answer(message: BenchMsg, conn: PeerConnection) -> BenchMsg {
    match message {
        BenchMsg::Push { count, data_bytes } => {
            tokio::spawn(async move {
                if let Err(error) = push(&conn, count, data_bytes).await {
                    tracing::warn!(error = %error, "bench push failed");
                }
            });
            BenchMsg::PushStarted
        }
        other => other,
    }
}

async fn push(conn: &PeerConnection, count: u32, data_bytes: u32) -> anyhow::Result<()> {
    let mut send = conn.open_push().await.context("open the push stream")?;
    let blob = BenchMsg::Blob(vec![0xa5; data_bytes as usize]);
    for _ in 0..count {
        send.send(&blob).await.context("push a blob")?;
    }
    send.finish();
    Ok(())
}

async fn round_trips(conn: &PeerConnection) -> anyhow::Result<Summary> {
    let message = BenchMsg::Echo(vec![0x5a; RTT_DATA_BYTES]);
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for round in 0..RTT_WARMUP + RTT_SAMPLES {
        let sent = Instant::now();
        let reply: BenchMsg = conn.request(&message).await.context("echo request")?;
        let took = sent.elapsed();
        let BenchMsg::Echo(data) = reply else {
            bail!("echo answered with {reply:?}");
        };
        if data.len() != RTT_DATA_BYTES {
            bail!("echo returned {} bytes", data.len());
        }
        if round >= RTT_WARMUP {
            samples.push(took);
        }
    }
    Ok(Summary::of(samples))
}

/// One server-push run: the clock runs from asking for the push until the last message is in.
struct Throughput {
    count: u32,
    data_bytes: u32,
    elapsed: Duration,
}

async fn push_throughput(
    conn: &PeerConnection,
    count: u32,
    data_bytes: u32,
) -> anyhow::Result<Throughput> {
    let started = Instant::now();
    let reply: BenchMsg = conn
        .request(&BenchMsg::Push { count, data_bytes })
        .await
        .context("ask for a push")?;
    if !matches!(reply, BenchMsg::PushStarted) {
        bail!("push request answered with {reply:?}");
    }
    let mut recv = conn.accept_push().await.context("accept the push stream")?;
    for received in 0..count {
        let message: BenchMsg = recv
            .recv()
            .await
            .with_context(|| format!("receive pushed message {received} of {count}"))?;
        let BenchMsg::Blob(data) = message else {
            bail!("push stream carried {message:?}");
        };
        if data.len() != data_bytes as usize {
            bail!("pushed blob has {} bytes, not {data_bytes}", data.len());
        }
    }
    Ok(Throughput {
        count,
        data_bytes,
        elapsed: started.elapsed(),
    })
}

/// Whether each connect dials from the same client endpoint (as a reconnecting agent does; TLS
/// session resumption may apply) or from one bound just for it (always a full handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointReuse {
    Shared,
    FreshPerConnect,
}

async fn handshakes(bench: &Bench, reuse: EndpointReuse) -> anyhow::Result<Summary> {
    let shared = bench.agent_endpoint()?;
    let mut samples = Vec::with_capacity(HANDSHAKE_SAMPLES);
    for _ in 0..HANDSHAKE_SAMPLES {
        let fresh = match reuse {
            EndpointReuse::Shared => None,
            EndpointReuse::FreshPerConnect => Some(bench.agent_endpoint()?),
        };
        let endpoint = fresh.as_ref().unwrap_or(&shared);
        let started = Instant::now();
        let conn = endpoint
            .connect(bench.server_addr, Alpn::Agent)
            .await
            .context("connect for the handshake bench")?;
        samples.push(started.elapsed());
        conn.close("handshake measured");
        if let Some(fresh) = fresh {
            fresh.close();
        }
    }
    shared.close();
    Ok(Summary::of(samples))
}

async fn joins(bench: &Bench) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(JOIN_SAMPLES);
    for join_idx in 0..JOIN_SAMPLES {
        let token = bench.agent_token();
        let params = JoinParams {
            role: NodeRole::Agent,
            name: format!("bench-{join_idx}"),
            site: "bench".into(),
            labels: Default::default(),
            advertise: Vec::new(),
        };
        let started = Instant::now();
        let joined = join(
            bench.server_addr,
            &token,
            params,
            &bench.config,
            &bench.metrics,
        )
        .await
        .with_context(|| format!("join {join_idx}"))?;
        samples.push(started.elapsed());
        if joined.credentials.identity().role != CertRole::Agent {
            bail!(
                "join {join_idx} was granted {:?}",
                joined.credentials.identity()
            );
        }
    }
    Ok(Summary::of(samples))
}

/// Nearest-rank percentiles of a set of durations.
struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "every bench takes samples");
        samples.sort_unstable();
        let rank = |quantile: f64| {
            let rank = (quantile * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Micros,
    Millis,
}

impl Unit {
    fn show(self, duration: Duration) -> String {
        match self {
            Self::Micros => format!("{} µs", duration.as_micros()),
            Self::Millis => format!("{:.2} ms", duration.as_secs_f64() * 1e3),
        }
    }
}

struct Latency {
    what: String,
    samples: usize,
    summary: Summary,
    unit: Unit,
}

fn print_latencies(rows: &[Latency]) {
    println!(
        "{:<50} {:>7} {:>10} {:>10} {:>10}",
        "latency (sequential)", "samples", "p50", "p99", "max"
    );
    for row in rows {
        println!(
            "{:<50} {:>7} {:>10} {:>10} {:>10}",
            row.what,
            row.samples,
            row.unit.show(row.summary.p50),
            row.unit.show(row.summary.p99),
            row.unit.show(row.summary.max),
        );
    }
}

fn print_throughputs(rows: &[Throughput]) {
    println!(
        "{:<50} {:>9} {:>10} {:>10} {:>9}",
        "server push, one open_push stream", "messages", "seconds", "msgs/s", "MB/s"
    );
    for row in rows {
        let seconds = row.elapsed.as_secs_f64();
        let bytes = f64::from(row.count) * f64::from(row.data_bytes);
        println!(
            "{:<50} {:>9} {:>10.2} {:>10.0} {:>9.1}",
            format!("{} B messages", row.data_bytes),
            row.count,
            seconds,
            f64::from(row.count) / seconds,
            bytes / seconds / 1e6,
        );
    }
}
