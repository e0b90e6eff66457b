//! `warren agent join | run | status`: an edge agent in the foreground until SIGTERM or SIGINT
//! (which leave its workloads running for the next start to adopt), and its local status.
//!
//! Once running, an agent prints one stable line on stdout that scripts wait for:
//! `warren agent node <id> running`.
//!
//! `WARREN_SELFCHECK_STOP_ON_DISCONNECT=1` (test only, for the chaos harness's self-check) makes
//! `join` and `run` start an agent that stops its workloads when its link to control is lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tokio_util::sync::CancellationToken;
use warren_edge_agent::agent::{self, Agent, AgentOptions, AgentStatus, RunEnd};

use crate::control_cmd::{DEFAULT_DATA_DIR, Signals, say};
use crate::output::OutputFormat;
use crate::table::{Table, fields};

/// `warren agent …`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// Which runtime runs the workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Native processes, each in its own process group.
    Process,
    /// containerd (not supported yet).
    Containerd,
}

/// Gossip and DNS flags of `agent join` and `agent run`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Discovery (gossip membership and DNS)")]
pub struct DiscoveryArgs {
    /// Gossip (UDP) listen address, or `none`. Gossip keeps membership and liveness flowing
    /// between nodes, also while the centre is out of reach. A taken port gives a warning and
    /// the agent runs without gossip.
    #[arg(long, value_name = "ADDR|none", default_value = DEFAULT_GOSSIP)]
    pub gossip: String,
    /// The gossip address other nodes dial, registered at join; its IP is also the address DNS
    /// gives for this node's replicas. Default: the listen address if its IP is set, else the
    /// IP this machine uses to reach the control plane, with the listen port.
    #[arg(long, value_name = "IP:PORT")]
    pub advertise_gossip: Option<SocketAddr>,
    /// DNS listen address (UDP and TCP), or `none`. Serves `<service>.warren.` from the cached
    /// view, preferring replicas gossip says are alive, and forwards other names to the hosts'
    /// resolvers. Port 53 needs root or CAP_NET_BIND_SERVICE; a failed bind gives a warning
    /// and the agent runs without DNS.
    #[arg(long, value_name = "ADDR|none", default_value = DEFAULT_DNS)]
    pub dns: String,
    /// Resolvers for names outside `warren.` (comma-separated IP:PORT). Default: the
    /// `nameserver` lines of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT[,IP:PORT...]", value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,
}

/// Default gossip address (DESIGN.md §6).
const DEFAULT_GOSSIP: &str = "0.0.0.0:7946";
/// Default DNS address (DESIGN.md §6).
const DEFAULT_DNS: &str = "127.0.0.11:53";

fn parse_addr_or_none(flag: &str, text: &str) -> Result<Option<SocketAddr>> {
    if matches!(text, "none" | "off" | "") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| anyhow!("{flag}: expected IP:PORT or none, got {text:?}"))
}

impl DiscoveryArgs {
    /// The agent's discovery options.
    fn options(&self) -> Result<warren_edge_agent::discovery::DiscoveryOptions> {
        let dns = parse_addr_or_none("--dns", &self.dns)?.map(|listen| {
            warren_edge_agent::dns::DnsConfig {
                listen,
                upstreams: if self.dns_upstream.is_empty() {
                    warren_edge_agent::dns::Upstreams::System
                } else {
                    warren_edge_agent::dns::Upstreams::List(self.dns_upstream.clone())
                },
                ..Default::default()
            }
        });
        Ok(warren_edge_agent::discovery::DiscoveryOptions {
            gossip_listen: parse_addr_or_none("--gossip", &self.gossip)?,
            gossip_advertise: self.advertise_gossip,
            dns,
            ..Default::default()
        })
    }

    /// What to register at join: the gossip address peers dial and the DNS address.
    fn advertise(&self, control: &[String]) -> Result<agent::JoinAdvertise> {
        let gossip = match parse_addr_or_none("--gossip", &self.gossip)? {
            None => None,
            Some(listen) => Some(match self.advertise_gossip {
                Some(explicit) => explicit,
                None if !listen.ip().is_unspecified() => listen,
                None => {
                    let ip = control
                        .iter()
                        .find_map(|c| local_ip_towards(c))
                        .ok_or_else(|| {
                            anyhow!(
                                "--gossip {listen}: cannot tell which IP to advertise; pass --advertise-gossip IP:PORT"
                            )
                        })?;
                    SocketAddr::new(ip, listen.port())
                }
            }),
        };
        Ok(agent::JoinAdvertise {
            gossip,
            dns: parse_addr_or_none("--dns", &self.dns)?,
            metrics: None,
        })
    }
}

/// The local IP the kernel would use to reach `addr` (a route lookup: a UDP socket is
/// connected, nothing is sent).
fn local_ip_towards(addr: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let target = addr.to_socket_addrs().ok()?.next()?;
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().ok()?
    } else {
        "0.0.0.0:0".parse().ok()?
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Subcommands of `warren agent`.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Join the cluster as an agent with a join token, then run (foreground).
    #[command(after_help = "Example:\n  \
        TOKEN=$(warren token create --role agent --single-use)\n  \
        warren agent join --data-dir /var/lib/warren --control ops-1.example:7101 --token \"$TOKEN\" \\\n      \
            --name edge-lisbon-1 --site lisbon --label tier=edge")]
    Join {
        /// Where the agent keeps its files.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// QUIC addresses of control nodes, comma-separated; the first reachable one is used.
        #[arg(
            long,
            value_name = "QUIC_ADDR[,QUIC_ADDR...]",
            value_delimiter = ',',
            required = true
        )]
        control: Vec<String>,
        /// An agent join token from `warren token create --role agent`.
        #[arg(
            long,
            env = "WARREN_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        token: String,
        /// Node name (a DNS label). Default: this machine's host name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Site the node is in (a DNS label).
        #[arg(long, value_name = "SITE", default_value = "default")]
        site: String,
        /// A node label for placement constraints; repeatable.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Workload runtime.
        #[arg(long, value_enum, default_value_t = RuntimeKind::Process)]
        runtime: RuntimeKind,
        /// Plain-HTTP /metrics, /health and /ready listen address, or `none`.
        #[arg(long, value_name = "ADDR|none", default_value = DEFAULT_AGENT_METRICS)]
        metrics: String,
        #[command(flatten)]
        discovery: DiscoveryArgs,
    },
    /// Run a joined agent from its data dir (foreground); works with no control plane.
    Run {
        /// Where the agent's files are.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Plain-HTTP /metrics, /health and /ready listen address, or `none`.
        #[arg(long, value_name = "ADDR|none", default_value = DEFAULT_AGENT_METRICS)]
        metrics: String,
        #[command(flatten)]
        discovery: DiscoveryArgs,
    },
    /// The agent's local view: revision, link state, workloads. Works offline and while the
    /// agent runs.
    #[command(after_help = "Example:\n  warren agent status --data-dir /var/lib/warren -o json")]
    Status {
        /// Where the agent's files are.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Runs `warren agent …`.
pub fn run(args: AgentArgs, format: OutputFormat) -> Result<()> {
    match args.command {
        AgentCommand::Status { data_dir } => status(&data_dir, format),
        AgentCommand::Run {
            data_dir,
            metrics,
            discovery,
        } => {
            let mut options = options(&metrics)?;
            options.discovery = discovery.options()?;
            foreground(options, || async move { Ok(data_dir) })
        }
        AgentCommand::Join {
            data_dir,
            control,
            token,
            name,
            site,
            labels,
            runtime,
            metrics,
            discovery,
        } => {
            if runtime == RuntimeKind::Containerd {
                bail!("--runtime containerd: not supported yet; use --runtime process");
            }
            let mut options = options(&metrics)?;
            options.discovery = discovery.options()?;
            let advertise = discovery.advertise(&control)?;
            let name = match name {
                Some(name) => name,
                None => default_name(),
            };
            warren_api::validate_node_name(&name).map_err(|e| anyhow!("--name: {}", e.message))?;
            warren_api::validate_site(&site).map_err(|e| anyhow!("--site: {}", e.message))?;
            let labels = parse_labels(&labels)?;
            foreground(options, || async move {
                let identity = agent::join(
                    &data_dir,
                    control.clone(),
                    token.trim(),
                    name,
                    site,
                    labels,
                    advertise,
                )
                .await
                .with_context(|| format!("join the cluster at {}", control.join(",")))?;
                say(&format!(
                    "joined the cluster as agent node {} ({})",
                    identity.node_id,
                    data_dir.display()
                ))?;
                Ok(data_dir)
            })
        }
    }
}

/// Default agent metrics address (DESIGN.md §6).
const DEFAULT_AGENT_METRICS: &str = "0.0.0.0:9091";

/// The test-only knob that makes agents break their promise on purpose (the chaos harness's
/// self-check): see `AgentOptions::selfcheck_stop_on_disconnect`.
const SELFCHECK_STOP_ON_DISCONNECT: &str = "WARREN_SELFCHECK_STOP_ON_DISCONNECT";

fn options(metrics: &str) -> Result<AgentOptions> {
    let selfcheck = std::env::var_os(SELFCHECK_STOP_ON_DISCONNECT);
    Ok(AgentOptions {
        metrics_listen: crate::control_cmd::parse_metrics(metrics)?,
        selfcheck_stop_on_disconnect: parse_selfcheck(selfcheck.as_deref())?,
        ..AgentOptions::default()
    })
}

/// Reads the self-check knob's value: unset, empty or `0` is off, `1` is on. Anything else is
/// an error rather than a guess, so that a typo cannot silently leave a self-check run
/// proving nothing.
fn parse_selfcheck(value: Option<&std::ffi::OsStr>) -> Result<bool> {
    match value.map(|v| v.to_str()) {
        None | Some(Some("" | "0")) => Ok(false),
        Some(Some("1")) => Ok(true),
        Some(Some(text)) => bail!("{SELFCHECK_STOP_ON_DISCONNECT}: expected 1 or 0, got {text:?}"),
        Some(None) => bail!("{SELFCHECK_STOP_ON_DISCONNECT}: expected 1 or 0, got non-UTF-8 bytes"),
    }
}

/// Runs `prepare` (which yields the data dir), then the agent until a signal.
fn foreground<F, Fut>(options: AgentOptions, prepare: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<PathBuf>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    runtime.block_on(async move {
        let mut signals = Signals::new()?;
        let data_dir = prepare().await?;
        let agent = Agent::open(&data_dir, options)
            .with_context(|| format!("start the agent in {}", data_dir.display()))?;
        let id = agent.identity().node_id;
        let cancel = CancellationToken::new();
        let mut serving = tokio::spawn(agent.serve(cancel.clone()));
        say(&format!("warren agent node {id} running"))?;
        let end = tokio::select! {
            end = &mut serving => end,
            which = signals.next() => {
                say(&format!("warren agent node {id} stopping ({which}); workloads keep running"))?;
                cancel.cancel();
                tokio::select! {
                    end = &mut serving => end,
                    which = signals.next() => bail!("{which} during shutdown: stopped without a clean shutdown"),
                }
            }
        };
        match end.context("agent task")?.context("run the agent")? {
            RunEnd::Stopped => {
                say(&format!("warren agent node {id} stopped"))?;
                Ok(())
            }
            RunEnd::Removed(message) => {
                bail!("node {id} was removed from the cluster ({message}); its workloads were stopped")
            }
        }
    })
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|label| match label.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(anyhow!("--label: expected K=V, got {label:?}")),
        })
        .collect()
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    crate::control_cmd::sanitise_label(&host).unwrap_or_else(|| "agent".to_owned())
}

fn status(data_dir: &Path, format: OutputFormat) -> Result<()> {
    let status = agent::load_status(data_dir).with_context(|| {
        format!(
            "read the agent status in {} (has `warren agent join` or `warren agent run` been started there?)",
            data_dir.display()
        )
    })?;
    match format {
        OutputFormat::Json => {
            let json = serde_json::to_string_pretty(&status).context("encode status")?;
            crate::output::out(&format!("{json}\n"));
        }
        OutputFormat::Table => crate::output::out(&render(&status)),
    }
    Ok(())
}

fn render(status: &AgentStatus) -> String {
    let link = match (&status.link.connected, &status.link.control) {
        (true, Some(control)) => format!("connected to {control}"),
        (true, None) => "connected".to_owned(),
        (false, _) => match &status.link.down_reason {
            Some(reason) => format!("disconnected: {reason}"),
            None => "disconnected".to_owned(),
        },
    };
    let mut out = fields(&[
        ("node", format!("{} ({})", status.name, status.node_id)),
        ("site", status.site.clone()),
        ("revision", status.revision.to_string()),
        ("link", link),
        (
            "control",
            if status.link.control_addrs.is_empty() {
                "-".to_owned()
            } else {
                status.link.control_addrs.join(", ")
            },
        ),
        ("agent pid", status.agent_pid.to_string()),
        (
            "metrics",
            status.metrics_addr.map_or_else(
                || "not served".to_owned(),
                |a| format!("http://{a}/metrics"),
            ),
        ),
    ]);
    out.push('\n');
    let mut table = Table::new(&["REPLICA", "STATE", "HEALTH", "PID", "RESTARTS", "WORKLOAD"]);
    for replica in &status.replicas {
        table.row(vec![
            replica.replica.to_string(),
            replica.state.as_str().to_owned(),
            replica.health.as_str().to_owned(),
            replica
                .pid
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            replica.restarts.to_string(),
            replica
                .workload_hash
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.push_str(&table.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        let parsed = parse_labels(&["tier=edge".into(), "empty=".into()]).unwrap();
        assert_eq!(parsed.get("tier").map(String::as_str), Some("edge"));
        assert_eq!(parsed.get("empty").map(String::as_str), Some(""));
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
    }

    #[test]
    fn selfcheck_knob_parses() {
        fn check(value: Option<&str>, expected: Option<bool>) {
            let parsed = parse_selfcheck(value.map(std::ffi::OsStr::new));
            assert_eq!(parsed.ok(), expected, "{value:?}");
        }
        check(None, Some(false));
        check(Some(""), Some(false));
        check(Some("0"), Some(false));
        check(Some("1"), Some(true));
        check(Some("true"), None);
        check(Some("yes"), None);
    }
}
