//! `warren control init | join | run`: a control node in the foreground until SIGTERM or
//! SIGINT, then a graceful stop.
//!
//! Once serving, a node prints one stable line on stdout that scripts wait for:
//! `warren control node <id> serving api=<addr> quic=<addr>`. A joining node first prints
//! where its join stands (`warren control join: …`). A node removed with `warren node rm`
//! stops with one line on stderr and a non-zero exit.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::{CancellationToken, DropGuard};
use warren_control::node::{ControlConfig, ControlNode, JoinHooks, NewNode};
use warren_edge_agent::overlay::{Overlay, OverlayMetrics, OverlaySettings};

use crate::admin_conf_watch::AdminConfWatch;
use crate::config::{ADMIN_CONF, AdminConfig};
use crate::wireguard_args::WireguardArgs;

/// The default data dir (docs/design.md §6).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/warren";

/// `warren control …`.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    #[command(subcommand)]
    pub command: ControlCommand,
}

/// Subcommands of `warren control`.
#[derive(Debug, clap::Subcommand)]
pub enum ControlCommand {
    /// Create a new cluster with this machine as its first control node, then serve.
    ///
    /// Creates the cluster CA, writes <data-dir>/admin.conf (API address, CA and an admin
    /// client certificate, mode 0600) for the other commands, and stays in the foreground
    /// until SIGTERM or Ctrl-C.
    #[command(after_help = "Examples:\n  \
        warren control init --data-dir /var/lib/warren --name ops-1 --site central \\\n      \
            --advertise-api ops-1.example:7100 --advertise-quic ops-1.example:7101\n  \
        warren control init --data-dir /tmp/w --api 127.0.0.1:0 --quic 127.0.0.1:0 --metrics none \\\n      \
            --gossip 127.0.0.1:0\n\n\
        Then, in another shell:\n  \
        warren --help\n  \
        warren cluster status --config /tmp/w/admin.conf")]
    Init {
        #[command(flatten)]
        node: NodeFlags,
        /// The WireGuard overlay's address range: every node gets a /24 of it (its own
        /// address is the first host), so a /16 holds 255 nodes and a /12 4095. Fixed once
        /// the first node joins; pick one that no site's own network uses.
        #[arg(long, value_name = "CIDR", default_value = "10.42.0.0/16")]
        overlay_range: warren_api::OverlayRange,
        #[command(flatten)]
        wireguard: WireguardArgs,
    },
    /// Join an existing cluster as another control node (a voter), then serve.
    #[command(after_help = "Example:\n  \
        TOKEN=$(warren token create --role control --single-use)\n  \
        warren control join --data-dir /var/lib/warren --join ops-1.example:7101 --token \"$TOKEN\" \\\n      \
            --name ops-2 --advertise-api ops-2.example:7100 --advertise-quic ops-2.example:7101")]
    Join {
        #[command(flatten)]
        node: NodeFlags,
        /// QUIC address of any control node of the cluster.
        #[arg(long = "join", value_name = "QUIC_ADDR")]
        join: String,
        #[command(flatten)]
        token: TokenArgs,
        #[command(flatten)]
        wireguard: WireguardArgs,
    },
    /// Restart a control node from its data dir, then serve.
    ///
    /// It listens where `init` or `join` said (API, QUIC, metrics, gossip: recorded in
    /// <data-dir>/node.json). --metrics moves the metrics listener, or turns it on or off, and
    /// the node keeps the new setting for later runs; to change the others, create the node
    /// again.
    #[command(after_help = "Examples:\n  \
        warren control run --data-dir /var/lib/warren\n  \
        # Let the site's Prometheus scrape this node from now on (kept for later runs):\n  \
        warren control run --data-dir /var/lib/warren --metrics 10.0.0.5:9090\n  \
        # Stop serving metrics, /health and /ready (kept too):\n  \
        warren control run --data-dir /var/lib/warren --metrics none")]
    Run {
        /// Where the node's files are.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Plain-HTTP /metrics, /health and /ready listen address, or `none` for no listener.
        /// Unauthenticated: give an address only your Prometheus reaches. Kept in
        /// <data-dir>/node.json for later runs. [default: what init, join or the last run with
        /// --metrics said]
        #[arg(long, value_name = "ADDR|none")]
        metrics: Option<String>,
        #[command(flatten)]
        wireguard: WireguardArgs,
    },
}

/// Where `control join` and `agent join` take their join token from. A token given with
/// `--token` is moved off the command line at once ([`crate::hide_token`]); a file or
/// `$WARREN_TOKEN` is never on it.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The join token, from `warren token create`. Other local users can read a command
    /// line (`ps`): warren moves it off its own at once, but prefer --token-file or
    /// $WARREN_TOKEN (your shell history keeps it too).
    #[arg(
        long,
        env = "WARREN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    pub token: Option<String>,
    /// A file that holds the join token (mode 0600 is wise); read once, at the join. Wins
    /// over --token and $WARREN_TOKEN.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token, trimmed.
    ///
    /// # Errors
    /// The file cannot be read or holds no token.
    pub fn read(&self) -> Result<String> {
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, Some(token)) => token.trim().to_owned(),
            (None, None) => bail!("give a join token: --token-file PATH, $WARREN_TOKEN or --token"),
        };
        if token.is_empty() {
            bail!("the join token is empty");
        }
        Ok(token)
    }
}

/// What a new control node is and where it listens.
#[derive(Debug, clap::Args)]
pub struct NodeFlags {
    /// Where the node keeps its files.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Node name (a DNS label). Default: this machine's host name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Site the node is in (a DNS label).
    #[arg(long, value_name = "SITE", default_value = "default")]
    pub site: String,
    /// HTTP API listen address (TLS, admin certificates). Port 0 picks a free port.
    #[arg(long = "api", value_name = "ADDR", default_value = "0.0.0.0:7100")]
    pub api: SocketAddr,
    /// QUIC listen address (Raft, agents, joins). Port 0 picks a free port.
    #[arg(long = "quic", value_name = "ADDR", default_value = "0.0.0.0:7101")]
    pub quic: SocketAddr,
    /// API address other machines use (HOST:PORT). Default: the listen address, or
    /// 127.0.0.1:PORT when listening on 0.0.0.0.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_api: Option<String>,
    /// QUIC address other nodes dial (HOST:PORT). Default: as for --advertise-api.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_quic: Option<String>,
    /// Plain-HTTP /metrics, /health and /ready listen address, or `none`. Unauthenticated,
    /// so loopback by default: give the address your site's Prometheus scrapes
    /// (`--metrics 10.0.0.5:9090`) to expose it.
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:9090")]
    pub metrics: String,
    /// Gossip (UDP) listen address, or `none` for no gossip. Every node gossips membership
    /// and liveness (sealed with the cluster's gossip key); the leader uses it to notice a
    /// dead agent sooner, and `warren node ls` shows it (GOSSIP). If the port is taken the
    /// node warns and runs without gossip. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR|none", default_value = "0.0.0.0:7946")]
    pub gossip: String,
    /// Gossip address other nodes send to (IP:PORT), recorded in the node registry. Default:
    /// the --gossip address if its IP is specific, else the IP of --advertise-quic with the
    /// gossip port.
    #[arg(long, value_name = "IP:PORT")]
    pub advertise_gossip: Option<SocketAddr>,
}

/// Runs the WireGuard overlay beside the control node (as agents do), fed from the node's own
/// view, its declarations recorded in the registry; it stops when the guard drops. The
/// settings are kept in the data dir for `control run`.
fn start_overlay(node: &ControlNode, settings: OverlaySettings) -> Result<DropGuard> {
    settings.save(node.data_dir()).with_context(|| {
        format!(
            "keep the WireGuard settings in {}",
            node.data_dir().display()
        )
    })?;
    let (declaration, declarations) = tokio::sync::watch::channel(None);
    node.follow_mesh_declarations(declarations);
    let node_settings = node.settings();
    let advertise_ip = node_settings.advertise_gossip.map(|a| a.ip()).or_else(|| {
        node_settings
            .advertise_quic
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip())
    });
    let overlay = Overlay {
        settings,
        dir: node.data_dir().join("wireguard"),
        advertise_ip,
        views: node.own_views(),
        gossip: node.gossip_members_watch(),
        declaration,
        status: tokio::sync::watch::channel(Default::default()).0,
        metrics: OverlayMetrics::new(node.metrics().registry()),
    };
    let cancel = CancellationToken::new();
    tokio::spawn(overlay.run(cancel.clone()));
    Ok(cancel.drop_guard())
}

/// Runs `warren control …` to the end (a signal).
pub fn run(args: ControlArgs) -> Result<()> {
    let runtime = crate::multi_thread_runtime()?;
    runtime.block_on(async move {
        // Before anything slow: a signal during start-up then stops the node once it is up
        // instead of killing the process half-way through writing its data dir.
        let mut signals = Signals::new()?;
        let (node, overlay) = match args.command {
            ControlCommand::Init {
                node,
                overlay_range,
                wireguard,
            } => {
                let overlay = wireguard.settings(None)?;
                let node = init(node, overlay_range).await?;
                (node, overlay)
            }
            ControlCommand::Join {
                node,
                join,
                token,
                wireguard,
            } => {
                if std::env::args().any(|a| a == "--token" || a.starts_with("--token=")) {
                    tracing::warn!("the join token is still on this command line (moving it to a pipe failed), which other local users can read (ps) while the node runs; prefer --token-file or $WARREN_TOKEN");
                }
                let overlay = wireguard.settings(None)?;
                let node = join_cluster(node, &join, &token.read()?, &mut signals).await?;
                (node, overlay)
            }
            ControlCommand::Run {
                data_dir,
                metrics,
                wireguard,
            } => {
                let overlay = wireguard.settings_at_run(&data_dir)?;
                if let Some(metrics) = metrics {
                    keep_metrics_listen(&data_dir, &metrics)?;
                }
                let node = ControlNode::run(&data_dir, control_config()?)
                    .await
                    .with_context(|| format!("start the control node in {}", data_dir.display()))?;
                (node, overlay)
            }
        };
        let _overlay = start_overlay(&node, overlay)?;
        // The init node keeps the admin.conf in its data dir listing the members.
        let watch = AdminConfWatch::start(&node);
        let served = serve(node, &mut signals).await;
        watch.stop().await;
        served
    })
}

/// The control node's configuration: the defaults, with the mesh timers of
/// `WARREN_GOSSIP_TUNING` ([`crate::gossip_tuning`]).
fn control_config() -> Result<ControlConfig> {
    Ok(ControlConfig {
        mesh_timers: crate::gossip_tuning::mesh_timers()?,
        ..ControlConfig::default()
    })
}

async fn init(flags: NodeFlags, overlay_range: warren_api::OverlayRange) -> Result<ControlNode> {
    let mut new = new_node(&flags)?;
    new.overlay_range = overlay_range;
    let data_dir = new.data_dir.clone();
    let name = new.name.clone();
    let (node, output) = ControlNode::init(new, control_config()?)
        .await
        .with_context(|| format!("initialise a cluster in {}", data_dir.display()))?;
    let api = vec![node.settings().advertise_api.clone()];
    let path = data_dir.join(ADMIN_CONF);
    AdminConfig::new(name.clone(), api, &output.admin).save(&path)?;
    let fingerprint = data_encoding::HEXLOWER.encode(&output.fingerprint);
    say(&format!(
        "cluster {name} initialised, CA fingerprint sha256:{fingerprint}"
    ))?;
    say(&format!(
        "admin config written to {} (pass --config, set WARREN_CONFIG, or copy it to ~/.config/warren/admin.conf)",
        path.display()
    ))?;
    Ok(node)
}

async fn join_cluster(
    flags: NodeFlags,
    join: &str,
    token: &str,
    signals: &mut Signals,
) -> Result<ControlNode> {
    let join_addr = tokio::net::lookup_host(join)
        .await
        .with_context(|| format!("--join {join}"))?
        .next()
        .ok_or_else(|| anyhow!("--join {join}: resolves to no address"))?;
    let mut new = new_node(&flags)?;
    // `ControlNode::join` advertises its API address before binding it, so port 0 would be
    // advertised as 0: pick the port here.
    if new.api_listen.port() == 0 && new.advertise_api.is_none() {
        new.api_listen = free_port(new.api_listen, Probe::Tcp)?;
    }
    let data_dir = new.data_dir.clone();
    let cancel = CancellationToken::new();
    let hooks = JoinHooks {
        progress: Some(Box::new(|step| {
            let _ = say(&format!("warren control join: {step}"));
        })),
        cancel: cancel.clone(),
    };
    let joining = ControlNode::join_with(new, join_addr, token.trim(), control_config()?, hooks);
    tokio::pin!(joining);
    let joined = tokio::select! {
        joined = &mut joining => joined,
        which = signals.next() => {
            // The join removes what it wrote; the leader undoes its side.
            cancel.cancel();
            let _ = joining.await;
            bail!("{which} during the join: stopped before this node became a member, and kept nothing");
        }
    };
    let node = joined.with_context(|| format!("join the cluster at {join}"))?;
    say(&format!(
        "joined the cluster at {join} as control node {} ({})",
        node.settings().name,
        data_dir.display()
    ))?;
    Ok(node)
}

/// Prints the ready line, waits for a signal, stops gracefully.
async fn serve(node: ControlNode, signals: &mut Signals) -> Result<()> {
    let id = node.settings().node_id;
    if let Some(metrics) = node.metrics_addr() {
        say(&format!("metrics on http://{metrics}/metrics"))?;
    }
    say(&format!(
        "warren control node {id} serving api={} quic={}",
        node.api_addr(),
        node.quic_addr()
    ))?;
    let removed = tokio::select! {
        which = signals.next() => {
            say(&format!("warren control node {id} stopping ({which})"))?;
            None
        }
        why = node.removed() => Some(why),
    };
    tokio::select! {
        () = node.shutdown() => {}
        which = signals.next() => bail!("{which} during shutdown: stopped without a clean shutdown"),
    }
    if let Some(why) = removed {
        bail!(
            "control node {id} was removed from the cluster ({why}); it has stopped, and its data dir can be deleted"
        );
    }
    say(&format!("warren control node {id} stopped"))?;
    Ok(())
}

/// One line on stdout, flushed at once (scripts wait for these lines through a pipe).
pub(crate) fn say(line: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("write to stdout")
}

/// SIGTERM and SIGINT.
pub(crate) struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("listen for SIGINT")?,
        })
    }

    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// The new node's settings from flags, with the defaults filled in.
fn new_node(flags: &NodeFlags) -> Result<NewNode> {
    let name = match &flags.name {
        Some(name) => name.clone(),
        None => default_name(),
    };
    warren_api::validate_node_name(&name).map_err(|e| anyhow!("--name: {}", e.message))?;
    warren_api::validate_site(&flags.site).map_err(|e| anyhow!("--site: {}", e.message))?;
    let (api_listen, advertise_api) =
        listen_and_advertise("api", flags.api, flags.advertise_api.as_deref(), Probe::Tcp)?;
    let (quic_listen, advertise_quic) = listen_and_advertise(
        "quic",
        flags.quic,
        flags.advertise_quic.as_deref(),
        Probe::Udp,
    )?;
    Ok(NewNode {
        data_dir: flags.data_dir.clone(),
        name,
        site: flags.site.clone(),
        quic_listen,
        api_listen,
        advertise_quic,
        advertise_api,
        metrics_listen: parse_metrics(&flags.metrics)?,
        gossip_listen: parse_gossip(&flags.gossip)?,
        advertise_gossip: flags.advertise_gossip,
        overlay_range: warren_api::OverlayRange::default(),
    })
}

fn parse_gossip(text: &str) -> Result<Option<SocketAddr>> {
    if matches!(text, "none" | "off" | "") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| anyhow!("--gossip: expected IP:PORT or none, got {text:?}"))
}

/// Records `--metrics` (an address or `none`) in the node's data dir before it starts, for
/// this run and the later ones.
fn keep_metrics_listen(data_dir: &std::path::Path, metrics: &str) -> Result<()> {
    let listen = parse_metrics(metrics)?;
    let before = ControlNode::keep_metrics_listen(data_dir, listen)
        .with_context(|| format!("keep --metrics {metrics} in {}", data_dir.display()))?;
    if before != listen {
        let shown = |addr: Option<SocketAddr>| addr.map_or("none".to_owned(), |a| a.to_string());
        tracing::info!(
            before = %shown(before),
            now = %shown(listen),
            "metrics listener moved; kept for later runs"
        );
    }
    Ok(())
}

pub(crate) fn parse_metrics(text: &str) -> Result<Option<SocketAddr>> {
    if matches!(text, "none" | "off" | "") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| anyhow!("--metrics: expected IP:PORT or none, got {text:?}"))
}

#[derive(Clone, Copy, Debug)]
enum Probe {
    Tcp,
    Udp,
}

/// The listen address and the address to advertise for it.
///
/// An explicit `--advertise-*` wins. A specific listen IP is advertised as it is (the node
/// fills in the real port when it is 0). A listen address on 0.0.0.0 or [::] cannot be
/// advertised: 127.0.0.1 with the same port stands in, with a warning, and port 0 is first
/// resolved to a free port so that the advertised port is real.
fn listen_and_advertise(
    what: &str,
    listen: SocketAddr,
    advertise: Option<&str>,
    probe: Probe,
) -> Result<(SocketAddr, Option<String>)> {
    if let Some(advertise) = advertise {
        check_host_port(&format!("--advertise-{what}"), advertise)?;
        return Ok((listen, Some(advertise.to_owned())));
    }
    if !listen.ip().is_unspecified() {
        return Ok((listen, None));
    }
    let listen = if listen.port() == 0 {
        free_port(listen, probe)?
    } else {
        listen
    };
    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port());
    eprintln!(
        "warning: --{what} listens on {listen}; advertising {loopback}, which only this machine \
         can reach: pass --advertise-{what} HOST:{} for other machines",
        listen.port()
    );
    Ok((listen, Some(loopback.to_string())))
}

/// Picks a free port by binding port 0 and letting go. Another process could take it in
/// between; this only happens for an unspecified IP with port 0, which tests avoid.
fn free_port(listen: SocketAddr, probe: Probe) -> Result<SocketAddr> {
    let bound = match probe {
        Probe::Tcp => std::net::TcpListener::bind(listen).and_then(|l| l.local_addr()),
        Probe::Udp => std::net::UdpSocket::bind(listen).and_then(|s| s.local_addr()),
    };
    bound.with_context(|| format!("find a free port on {listen}"))
}

fn check_host_port(flag: &str, text: &str) -> Result<()> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => bail!("{flag}: expected HOST:PORT, got {text:?}"),
    }
}

/// The host name from the kernel, made into a DNS label; `control` if there is none.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitise_label(&host).unwrap_or_else(|| "control".to_owned())
}

/// Lowercases, keeps the first dot-separated label, turns other characters into `-`, trims
/// `-` from the ends and cuts to 63 characters. `None` if nothing is left.
pub(crate) fn sanitise_label(text: &str) -> Option<String> {
    let first = text.trim().split('.').next().unwrap_or("");
    let mapped: String = first
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_labels() {
        for (input, expected) in [
            ("edge-box-1\n", Some("edge-box-1")),
            ("Ops_Server.example.com", Some("ops-server")),
            ("--weird--", Some("weird")),
            ("", None),
            ("...", None),
            ("ÄÖ", None),
        ] {
            assert_eq!(sanitise_label(input).as_deref(), expected, "{input:?}");
        }
        let long = sanitise_label(&"a".repeat(100)).unwrap();
        assert_eq!(long.len(), 63);
        assert!(warren_api::validate_node_name(&default_name()).is_ok());
    }

    #[test]
    fn advertise_defaults() {
        let specific: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            listen_and_advertise("api", specific, None, Probe::Tcp).unwrap(),
            (specific, None)
        );
        let any: SocketAddr = "0.0.0.0:7100".parse().unwrap();
        assert_eq!(
            listen_and_advertise("api", any, None, Probe::Tcp).unwrap(),
            (any, Some("127.0.0.1:7100".to_owned()))
        );
        let (listen, advertised) =
            listen_and_advertise("quic", "0.0.0.0:0".parse().unwrap(), None, Probe::Udp).unwrap();
        assert_ne!(listen.port(), 0);
        assert_eq!(advertised, Some(format!("127.0.0.1:{}", listen.port())));
        assert_eq!(
            listen_and_advertise("api", any, Some("ops.example:7100"), Probe::Tcp).unwrap(),
            (any, Some("ops.example:7100".to_owned()))
        );
        assert!(listen_and_advertise("api", any, Some("ops.example"), Probe::Tcp).is_err());
    }

    /// The metrics listener is unauthenticated: nobody off the box reaches it unless the
    /// operator says so.
    #[test]
    fn metrics_listen_on_loopback_by_default() {
        #[derive(clap::Parser)]
        struct Harness {
            #[command(subcommand)]
            command: ControlCommand,
        }
        use clap::Parser;
        let parsed = Harness::try_parse_from(["control", "init"]).unwrap();
        let ControlCommand::Init { node, .. } = parsed.command else {
            panic!("init parses as init");
        };
        let metrics = parse_metrics(&node.metrics).unwrap().unwrap();
        assert!(metrics.ip().is_loopback(), "{metrics}");
    }

    #[test]
    fn metrics_flag() {
        assert_eq!(parse_metrics("none").unwrap(), None);
        assert_eq!(
            parse_metrics("127.0.0.1:9090").unwrap(),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert!(parse_metrics("localhost").is_err());
    }

    #[test]
    fn gossip_flag() {
        assert_eq!(parse_gossip("none").unwrap(), None);
        assert_eq!(
            parse_gossip("0.0.0.0:7946").unwrap(),
            Some("0.0.0.0:7946".parse().unwrap())
        );
        assert!(parse_gossip("7946").is_err());
    }
}
