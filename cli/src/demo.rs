//! `warren demo`: a scripted tour on loopback of what works today.
//!
//! Every step is real: a real CA and certificates, real QUIC on 127.0.0.1, a real join over
//! the network, real refusals. The tour grows as Warren does; today it covers the transport
//! layer (cluster CA, join tokens, mutual TLS, framing).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use warren_api::{NodeId, NodeRole};
use warren_transport::ca::{CA_LIFETIME, unix_now, unix_now_ms};
use warren_transport::join::{JoinError, JoinParams, LocalJoinAuthority, join, serve_join};
use warren_transport::seal::SealKey;
use warren_transport::token::mint;
use warren_transport::{
    Alpn, CertRole, CertSubject, ClusterCa, ConnectError, Endpoint, EndpointOptions, MintOptions,
    PeerConnection, TokenBook, TransportConfig, TransportMetrics, Validity,
};

use crate::output::OutputFormat;

/// Flags of `warren demo` (its output format is the global `-o`: `-o json` prints a JSON
/// report instead of the narrated tour).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// The demo's own tiny protocol on the agent stream.
#[derive(Debug, Serialize, Deserialize)]
enum Probe {
    Ping { sent_at_us: u64 },
    Pong { sent_at_us: u64, seen_as: String },
}

/// What the tour measured and saw, for `-o json`.
#[derive(Debug, Default, Serialize)]
struct Report {
    cluster_fingerprint: String,
    control_addr: String,
    joined_node_id: String,
    join_ms: f64,
    mtls_connect_ms: f64,
    ping_rtt_us_p50: u64,
    refusals: BTreeMap<String, String>,
    server_metrics: BTreeMap<String, u64>,
}

struct Narrator {
    enabled: bool,
    step: u32,
}

impl Narrator {
    fn step(&mut self, text: &str) {
        self.step += 1;
        if self.enabled {
            println!("\n[{}] {text}", self.step);
        }
    }

    fn say(&self, text: impl AsRef<str>) {
        if self.enabled {
            println!("    {}", text.as_ref());
        }
    }
}

/// Runs the tour.
pub fn run(_args: DemoArgs, output: OutputFormat) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    let report = runtime.block_on(tour(output == OutputFormat::Table))?;
    if output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encode report")?
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

async fn tour(narrate: bool) -> Result<Report> {
    let mut n = Narrator {
        enabled: narrate,
        step: 0,
    };
    let mut report = Report::default();
    let data_dir = tempfile::tempdir().context("create a scratch data dir")?;
    let config = TransportConfig {
        connect_timeout: Duration::from_secs(5),
        ..TransportConfig::default()
    };

    n.step("create the cluster CA (what `warren control init` will do)");
    let ca = ClusterCa::generate("demo", Validity::starting_at(unix_now(), CA_LIFETIME))
        .context("generate cluster CA")?;
    let seal_key = SealKey::generate();
    ca.save(data_dir.path(), &seal_key)
        .context("save cluster CA")?;
    let fingerprint = data_encoding::HEXLOWER.encode(&ca.fingerprint());
    n.say(format!("fingerprint sha256:{fingerprint}"));
    n.say(
        "CA key written sealed with AES-256-GCM (ca.key.sealed); its key lives in a separate file",
    );
    report.cluster_fingerprint = fingerprint;

    n.step("start a control endpoint: QUIC on 127.0.0.1, ALPN raft/agent/join, mutual TLS");
    let control_id = NodeId(1);
    let control_creds = ca
        .issue_credentials(
            &CertSubject::Node {
                node_id: control_id,
                role: CertRole::Control,
            },
            Validity::starting_at(unix_now(), warren_transport::ca::NODE_CERT_LIFETIME),
        )
        .context("issue control certificate")?;
    let metrics = TransportMetrics::unregistered();
    let options = EndpointOptions {
        config: config.clone(),
        metrics: metrics.clone(),
        ..Default::default()
    };
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let control = Arc::new(
        Endpoint::bind(loopback, &control_creds, options).context("bind control endpoint")?,
    );
    let control_addr = control.local_addr();
    n.say(format!(
        "control node {control_id} listening on {control_addr}/udp"
    ));
    report.control_addr = control_addr.to_string();
    let fingerprint_bytes = ca.fingerprint();
    let authority = Arc::new(LocalJoinAuthority::new(
        ca,
        TokenBook::default(),
        vec![control_addr.to_string()],
    ));
    let server = tokio::spawn(serve(control.clone(), authority.clone(), metrics.clone()));

    n.step("mint a single-use agent join token (what `warren token create --role agent --single-use` will do)");
    let (token, record) = mint(
        fingerprint_bytes,
        MintOptions {
            role: NodeRole::Agent,
            ttl: Some(Duration::from_secs(600)),
            single_use: true,
        },
        unix_now_ms(),
    );
    authority.add_token(record);
    let token = token.to_string();
    let shown = token
        .rsplit_once('-')
        .map(|(head, _)| head)
        .unwrap_or(&token);
    n.say(format!(
        "token {shown}-<secret> (the control plane keeps only a SHA-256 of the secret)"
    ));

    n.step(
        "join an agent: verify the server by the pinned CA, send token + CSR, get a certificate",
    );
    let params = JoinParams {
        role: NodeRole::Agent,
        name: "edge-lisbon-1".into(),
        site: "lisbon".into(),
        labels: BTreeMap::from([("rack".into(), "r1".into())]),
        advertise: vec![],
    };
    let started = Instant::now();
    let joined = join(
        control_addr,
        &token,
        params.clone(),
        &config,
        &TransportMetrics::unregistered(),
    )
    .await
    .context("join the demo cluster")?;
    report.join_ms = ms(started.elapsed());
    report.joined_node_id = joined.node_id.to_string();
    n.say(format!(
        "joined as node {} in {:.1} ms; its private key never left it",
        joined.node_id, report.join_ms
    ));
    joined
        .credentials
        .save(data_dir.path())
        .context("save agent credentials")?;

    n.step("the agent dials the control node over mutual TLS on the agent stream");
    let agent = Endpoint::client(
        loopback,
        &joined.credentials,
        EndpointOptions {
            config: config.clone(),
            ..Default::default()
        },
    )
    .context("bind agent endpoint")?;
    let started = Instant::now();
    let conn = agent
        .connect(control_addr, Alpn::Agent)
        .await
        .context("agent connects to control")?;
    report.mtls_connect_ms = ms(started.elapsed());
    let rtts = ping(&conn, 50).await?;
    report.ping_rtt_us_p50 = rtts[rtts.len() / 2];
    n.say(format!(
        "connected in {:.1} ms; 50 framed pings, median round trip {} µs",
        report.mtls_connect_ms, report.ping_rtt_us_p50
    ));

    n.step("try the things that must fail");
    let refusals = [
        (
            "reused single-use token",
            join(
                control_addr,
                &token,
                params.clone(),
                &config,
                &TransportMetrics::unregistered(),
            )
            .await,
        ),
        (
            "forged token",
            join(
                control_addr,
                &forge(&token),
                params.clone(),
                &config,
                &TransportMetrics::unregistered(),
            )
            .await,
        ),
    ];
    for (what, result) in refusals {
        match result {
            Err(JoinError::Refused(refusal)) => {
                n.say(format!("{what}: refused ({refusal})"));
                report.refusals.insert(what.into(), refusal.to_string());
            }
            Ok(_) => bail!("{what} was accepted; the demo expected a refusal"),
            Err(other) => bail!("{what} failed unexpectedly: {other}"),
        }
    }
    let rogue_ca = ClusterCa::generate("rogue", Validity::starting_at(unix_now(), CA_LIFETIME))?;
    let rogue_creds = rogue_ca.issue_credentials(
        &CertSubject::Node {
            node_id: NodeId(66),
            role: CertRole::Agent,
        },
        Validity::starting_at(unix_now(), warren_transport::ca::NODE_CERT_LIFETIME),
    )?;
    let rogue = Endpoint::client(
        loopback,
        &rogue_creds,
        EndpointOptions {
            config,
            ..Default::default()
        },
    )?;
    match rogue.connect(control_addr, Alpn::Agent).await {
        Err(error @ ConnectError::ServerUntrusted { .. })
        | Err(error @ ConnectError::Refused { .. }) => {
            n.say(format!(
                "certificate from another cluster: refused ({})",
                error.kind()
            ));
            report
                .refusals
                .insert("certificate from another cluster".into(), error.to_string());
        }
        Ok(_) => bail!("an endpoint from another cluster was admitted"),
        Err(other) => bail!("rogue connection failed unexpectedly: {other}"),
    }

    n.step("what the control node counted (Prometheus metrics)");
    for (name, value) in [
        (
            "warren_transport_join_requests_total{result=\"granted\"}",
            metrics
                .join_requests_total
                .with_label_values(&["granted"])
                .get(),
        ),
        (
            "warren_transport_join_requests_total{result=\"already_used\"}",
            metrics
                .join_requests_total
                .with_label_values(&["already_used"])
                .get(),
        ),
        (
            "warren_transport_join_requests_total{result=\"bad_secret\"}",
            metrics
                .join_requests_total
                .with_label_values(&["bad_secret"])
                .get(),
        ),
        (
            "warren_transport_connections_total{side=\"server\",alpn=\"agent\"}",
            metrics
                .connections_total
                .with_label_values(&["server", "agent"])
                .get(),
        ),
    ] {
        n.say(format!("{name} {value}"));
        report.server_metrics.insert(name.into(), value);
    }

    conn.close("demo done");
    control.close();
    server.abort();
    n.step("done: this tour covers the transport; the README quick start runs a control plane and agents");
    Ok(report)
}

/// Flips one character of the secret: a token that looks right but is not.
fn forge(token: &str) -> String {
    let (head, secret) = token.rsplit_once('-').unwrap_or((token, ""));
    let mut chars: Vec<char> = secret.chars().collect();
    if let Some(first) = chars.first_mut() {
        *first = if *first == '0' { '1' } else { '0' };
    }
    format!("{head}-{}", chars.into_iter().collect::<String>())
}

async fn ping(conn: &PeerConnection, count: usize) -> Result<Vec<u64>> {
    let epoch = Instant::now();
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let sent_at_us = epoch.elapsed().as_micros() as u64;
        match conn
            .request::<Probe, Probe>(&Probe::Ping { sent_at_us })
            .await
            .context("ping")?
        {
            Probe::Pong { sent_at_us, .. } => {
                rtts.push(epoch.elapsed().as_micros() as u64 - sent_at_us)
            }
            Probe::Ping { .. } => bail!("control answered a ping with a ping"),
        }
    }
    rtts.sort_unstable();
    Ok(rtts)
}

async fn serve(
    endpoint: Arc<Endpoint>,
    authority: Arc<LocalJoinAuthority>,
    metrics: TransportMetrics,
) {
    while let Some(incoming) = endpoint.accept().await {
        let authority = authority.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.admit().await else {
                return;
            };
            match conn.alpn() {
                Alpn::Join => serve_join(conn, authority.as_ref(), &metrics).await,
                _ => warren_transport::serve_requests(conn, answer).await,
            }
        });
    }
}

async fn answer(probe: Probe, conn: PeerConnection) -> Probe {
    let seen_as = conn
        .peer()
        .map(|p| {
            format!(
                "{} {}",
                p.role,
                p.node_id.map(|id| id.to_string()).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    match probe {
        Probe::Ping { sent_at_us } => Probe::Pong {
            sent_at_us,
            seen_as,
        },
        other => other,
    }
}
