//! `warren agent join | run | up | status`: an edge agent in the foreground until SIGTERM or SIGINT
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
use warren_api::wire::Listener;
use warren_edge_agent::agent::{self, Agent, AgentOptions, AgentStatus, RunEnd};
use warren_edge_agent::listeners::ListenSettings;

use crate::control_cmd::{DEFAULT_DATA_DIR, Signals, TokenArgs, say};
use crate::output::OutputFormat;
use crate::table::{Table, fields};
use crate::wireguard_args::WireguardArgs;

/// `warren agent …`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// Which runtime runs the workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Native processes, each in its own process group.
    Process,
    /// Containers of OCI images, through containerd (`--containerd-socket`).
    Containerd,
}

/// Runtime flags of `agent join` and `agent run`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Workload runtime")]
pub struct RuntimeArgs {
    /// Workload runtime: native processes, or containers of OCI images through containerd.
    /// One per node; kept in the data dir. [default: process; at run: what join was given]
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// containerd's socket, for `--runtime containerd`. [default: /run/containerd/containerd.sock;
    /// at run: what join was given]
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
}

impl RuntimeArgs {
    /// The runtime the flags ask for; `None`: what the data dir keeps (only at run).
    fn choice(&self, at_join: bool) -> Result<Option<agent::RuntimeChoice>> {
        let kind = match self.runtime {
            Some(kind) => kind,
            None if self.containerd_socket.is_some() => RuntimeKind::Containerd,
            None if at_join => RuntimeKind::Process,
            None => return Ok(None),
        };
        Ok(Some(match kind {
            RuntimeKind::Process if self.containerd_socket.is_some() => {
                bail!("--containerd-socket needs --runtime containerd")
            }
            RuntimeKind::Process => agent::RuntimeChoice::Process,
            RuntimeKind::Containerd => match &self.containerd_socket {
                Some(socket) => agent::RuntimeChoice::Containerd {
                    socket: socket.clone(),
                },
                None => agent::RuntimeChoice::containerd_default(),
            },
        }))
    }
}

/// Listen flags of `agent join` and `agent run`. At join a flag not given takes its default,
/// and what join listens on is kept in the data dir; at run a flag not given takes what join
/// kept (else the default), so a reboot listens where the join said.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Listeners (metrics, gossip, DNS)")]
pub struct ListenArgs {
    /// Plain-HTTP /metrics, /health and /ready listen address, or `none`. Registered at join
    /// (for Prometheus service discovery). Unauthenticated, so loopback by default: give the
    /// address your site's Prometheus scrapes to expose it. [default: 127.0.0.1:9091; at run:
    /// what join was given]
    #[arg(long, value_name = "ADDR|none")]
    pub metrics: Option<String>,
    /// Gossip (UDP) listen address, or `none`. Gossip keeps membership and liveness flowing
    /// between nodes, also while the centre is out of reach. [default: 0.0.0.0:7946; at run:
    /// what join was given]
    #[arg(long, value_name = "ADDR|none")]
    pub gossip: Option<String>,
    /// The gossip address other nodes dial, registered at join; its IP is also the address DNS
    /// gives for this node's replicas. Default: the listen address if its IP is set, else the
    /// IP this machine uses to reach the control plane, with the listen port.
    #[arg(long, value_name = "IP:PORT")]
    pub advertise_gossip: Option<SocketAddr>,
    /// DNS listen address (UDP and TCP), or `none`. Serves `<service>.warren.` from the cached
    /// view, preferring replicas gossip says are alive, and forwards other names to the hosts'
    /// resolvers. Port 53 needs root or CAP_NET_BIND_SERVICE. [default: 127.0.0.11:53; at
    /// run: what join was given]
    #[arg(long, value_name = "ADDR|none")]
    pub dns: Option<String>,
    /// Resolvers for names outside `warren.` (comma-separated IP:PORT). Default: what join was
    /// given, else the `nameserver` lines of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT[,IP:PORT...]", value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,
}

/// Default metrics address (docs/design.md §6).
const DEFAULT_AGENT_METRICS: &str = "127.0.0.1:9091";
/// Default gossip address (docs/design.md §6).
const DEFAULT_GOSSIP: &str = "0.0.0.0:7946";
/// Default DNS address (docs/design.md §6).
const DEFAULT_DNS: &str = "127.0.0.11:53";

fn parse_addr_or_none(flag: &str, text: &str) -> Result<Option<SocketAddr>> {
    if matches!(text, "none" | "off" | "") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| anyhow!("{flag}: expected IP:PORT or none, got {text:?}"))
}

/// The flag that sets `listener`'s address.
fn flag_of(listener: Listener) -> &'static str {
    match listener {
        Listener::Metrics => "--metrics",
        Listener::Dns => "--dns",
        Listener::Gossip => "--gossip",
    }
}

impl ListenArgs {
    /// Where to listen: each flag given, else `kept` (what join was given), else the default.
    fn settings(&self, kept: Option<&ListenSettings>) -> Result<ListenSettings> {
        let defaults = || -> Result<ListenSettings> {
            Ok(ListenSettings {
                metrics: parse_addr_or_none("--metrics", DEFAULT_AGENT_METRICS)?,
                dns: parse_addr_or_none("--dns", DEFAULT_DNS)?,
                dns_upstreams: Vec::new(),
                gossip: parse_addr_or_none("--gossip", DEFAULT_GOSSIP)?,
            })
        };
        let base = match kept {
            Some(kept) => kept.clone(),
            None => defaults()?,
        };
        let flag = |name: &str, given: &Option<String>, base: Option<SocketAddr>| match given {
            Some(text) => parse_addr_or_none(name, text),
            None => Ok(base),
        };
        Ok(ListenSettings {
            metrics: flag("--metrics", &self.metrics, base.metrics)?,
            dns: flag("--dns", &self.dns, base.dns)?,
            dns_upstreams: if self.dns_upstream.is_empty() {
                base.dns_upstreams
            } else {
                self.dns_upstream.clone()
            },
            gossip: flag("--gossip", &self.gossip, base.gossip)?,
        })
    }
}

/// Binds each listener once before joining (and resolves port 0), so that a taken port fails
/// the join with its reason before control is contacted.
fn check_listeners(settings: &ListenSettings) -> Result<ListenSettings> {
    warren_edge_agent::listeners::check(settings).map_err(|error| {
        anyhow!(
            "{} {}: cannot listen: {}; pass another address, or none",
            flag_of(error.listener),
            error.addr,
            error.reason()
        )
    })
}

/// What to register at join: the gossip address peers dial, the DNS address, and the metrics
/// address Prometheus scrapes. A listen address on 0.0.0.0 is advertised with the IP this
/// machine uses to reach the control plane.
fn advertise(
    settings: &ListenSettings,
    advertise_gossip: Option<SocketAddr>,
    control: &[String],
) -> Result<agent::JoinAdvertise> {
    let towards_control = || control.iter().find_map(|c| local_ip_towards(c));
    let gossip = match settings.gossip {
        None => None,
        Some(listen) => Some(match advertise_gossip {
            Some(explicit) => explicit,
            None if !listen.ip().is_unspecified() => listen,
            None => {
                let ip = towards_control().ok_or_else(|| {
                    anyhow!(
                        "--gossip {listen}: cannot tell which IP to advertise; pass --advertise-gossip IP:PORT"
                    )
                })?;
                SocketAddr::new(ip, listen.port())
            }
        }),
    };
    let metrics = settings.metrics.map(|listen| {
        if listen.ip().is_unspecified()
            && let Some(ip) = towards_control()
        {
            SocketAddr::new(ip, listen.port())
        } else {
            listen
        }
    });
    Ok(agent::JoinAdvertise {
        gossip,
        dns: settings.dns,
        metrics,
    })
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
    /// Join the cluster as an agent with a join token, then run (foreground). Once joined,
    /// the process carries on as `warren agent run` (same pid), so the token is not left on
    /// its command line.
    #[command(after_help = "Example:\n  \
        warren token create --role agent --single-use > /root/token && chmod 600 /root/token\n  \
        warren agent join --data-dir /var/lib/warren --control ops-1.example:7101 \\\n      \
            --token-file /root/token --name edge-lisbon-1 --site lisbon --label tier=edge")]
    Join(JoinFlags),
    /// Run a joined agent from its data dir (foreground); works with no control plane.
    Run(RunFlags),
    /// Bring a box up from one config file: join the cluster if the data dir holds no agent
    /// yet, else run from it (foreground). What systemd's warren-agent.service starts on
    /// every boot.
    ///
    /// Not joined: the token is read from `token_file` (or `token`), never from the command
    /// line or the environment; unreachable control is retried with jittered backoff (1 s
    /// doubling to 60 s) until it answers, and a refused token (invalid, used, expired,
    /// revoked) exits with status 78 (EX_CONFIG), which the unit does not restart. Joined:
    /// runs as `agent run` would with the file's settings; the token is not read again, so
    /// single-use tokens are fine across reboots. `--check` only reads and checks the file.
    #[command(after_help = concat!(
        "Example config (deploy/systemd/agent.yaml; docs/install.md explains each field):\n\n",
        include_str!("../../deploy/systemd/agent.yaml"),
        "\nExamples:\n  warren agent up --config /etc/warren/agent.yaml --check\n  \
        warren agent up --config /etc/warren/agent.yaml"
    ))]
    Up(crate::agent_up::UpFlags),
    /// The agent's local view: revision, link state, workloads. Works offline and while the
    /// agent runs.
    #[command(after_help = "Example:\n  warren agent status --data-dir /var/lib/warren -o json")]
    Status {
        /// Where the agent's files are.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// `agent join`'s flags; `agent up` makes them from its config file.
#[derive(Debug, clap::Args)]
pub struct JoinFlags {
    /// Where the agent keeps its files.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// QUIC addresses of control nodes, comma-separated; the first reachable one is used.
    #[arg(
        long,
        value_name = "QUIC_ADDR[,QUIC_ADDR...]",
        value_delimiter = ',',
        required = true
    )]
    pub control: Vec<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Node name (a DNS label). Default: this machine's host name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Site the node is in (a DNS label).
    #[arg(long, value_name = "SITE", default_value = "default")]
    pub site: String,
    /// A node label for placement constraints; repeatable.
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Where each replica's directory (logs, secrets, its own `work` directory) goes; kept
    /// for `agent run`. Outside the data dir, under directories other users may pass
    /// through (workloads run as their own users). [default: DATA_DIR-workloads, beside
    /// the data dir]
    #[arg(long, value_name = "DIR")]
    pub workloads_dir: Option<PathBuf>,
    /// Serve volume NAME from the host directory PATH instead of DATA_DIR-volumes/NAME
    /// (repeatable): the allow-list of host paths services may mount, by volume name.
    /// PATH must exist; its owner and mode are kept. Give it to every `agent run`.
    #[arg(long = "host-volume", value_name = "NAME=PATH")]
    pub host_volumes: Vec<String>,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub wireguard: WireguardArgs,
}

/// `agent run`'s flags; `agent up` makes them from its config file for a joined box.
#[derive(Debug, clap::Args)]
pub struct RunFlags {
    /// Where the agent's files are.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Where each replica's directory goes. [default: what join was given, else
    /// DATA_DIR-workloads]
    #[arg(long, value_name = "DIR")]
    pub workloads_dir: Option<PathBuf>,
    /// Serve volume NAME from the host directory PATH instead of DATA_DIR-volumes/NAME
    /// (repeatable): the allow-list of host paths services may mount, by volume name.
    /// PATH must exist; its owner and mode are kept. Give it to every `agent run`.
    #[arg(long = "host-volume", value_name = "NAME=PATH")]
    pub host_volumes: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub wireguard: WireguardArgs,
}

/// `--host-volume NAME=PATH`s as the runtimes' allow-list, checked (names, absolute paths).
fn parse_host_volumes(flags: &[String]) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut host_volumes = std::collections::BTreeMap::new();
    for flag in flags {
        let Some((name, path)) = flag.split_once('=') else {
            bail!("--host-volume: expected NAME=PATH, got {flag:?}");
        };
        if host_volumes
            .insert(name.to_owned(), PathBuf::from(path))
            .is_some()
        {
            bail!("--host-volume: volume {name} is given twice");
        }
    }
    warren_edge_agent::runtime::volumes::check_host_volumes(&host_volumes, None)
        .map_err(|e| anyhow!("--host-volume: {e}"))?;
    Ok(host_volumes)
}

/// Runs `warren agent …`.
pub fn run(args: AgentArgs, format: OutputFormat) -> Result<()> {
    match args.command {
        AgentCommand::Status { data_dir } => status(&data_dir, format),
        AgentCommand::Run(flags) => {
            run_joined(run_options(&flags, selfcheck_knob()?)?, flags.data_dir)
        }
        AgentCommand::Join(flags) => {
            let plan = join_plan(flags, selfcheck_knob()?)?;
            foreground(plan.options, || async move {
                join(plan.data_dir, plan.request, plan.runtime, &plan.overlay).await
            })
        }
        AgentCommand::Up(flags) => crate::agent_up::run(&flags),
    }
}

/// The joined agent of `data_dir` in the foreground until a signal.
pub(crate) fn run_joined(options: AgentOptions, data_dir: PathBuf) -> Result<()> {
    foreground(options, || async move { Ok(data_dir) })
}

/// The agent's options for `agent run` on a joined data dir: each flag given, else what join
/// kept there, else the default.
pub(crate) fn run_options(flags: &RunFlags, selfcheck: bool) -> Result<AgentOptions> {
    let runtime = flags.runtime.choice(false)?;
    let identity = agent::load_identity(&flags.data_dir)
        .with_context(|| format!("start the agent in {}", flags.data_dir.display()))?;
    let settings = flags.listen.settings(identity.listen.as_ref())?;
    let mut options = options(&settings, flags.listen.advertise_gossip, selfcheck);
    options.discovery.mesh_timers = crate::gossip_tuning::mesh_timers()?;
    options.overlay = Some(flags.wireguard.settings_at_run(&flags.data_dir)?);
    // Not given: what join kept in agent.json, else the default (Agent::open).
    options.process.workloads_dir = flags.workloads_dir.clone();
    options.process.host_volumes = parse_host_volumes(&flags.host_volumes)?;
    options.runtime = runtime;
    Ok(options)
}

/// Everything `agent join` needs, checked before control is contacted: the join request (with
/// the token), the runtime and overlay to keep, and the options of the agent it becomes.
pub(crate) struct JoinPlan {
    pub data_dir: PathBuf,
    pub request: agent::JoinRequest,
    pub runtime: agent::RuntimeChoice,
    pub overlay: warren_edge_agent::overlay::OverlaySettings,
    pub options: AgentOptions,
}

/// `agent join`'s flags checked without touching anything (no listener bound, no token read,
/// nothing asked of control): what `agent up --check` reports on.
pub(crate) struct CheckedJoin {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub runtime: agent::RuntimeChoice,
    pub overlay: warren_edge_agent::overlay::OverlaySettings,
    pub host_volumes: BTreeMap<String, PathBuf>,
    pub listen: ListenSettings,
}

/// Checks `agent join`'s flags, each error naming its flag.
pub(crate) fn check_join_flags(flags: &JoinFlags) -> Result<CheckedJoin> {
    let overlay = flags.wireguard.settings(None)?;
    let runtime = flags
        .runtime
        .choice(true)?
        .expect("join always chooses a runtime");
    let name = match &flags.name {
        Some(name) => name.clone(),
        None => default_name(),
    };
    warren_api::validate_node_name(&name).map_err(|e| anyhow!("--name: {}", e.message))?;
    warren_api::validate_site(&flags.site).map_err(|e| anyhow!("--site: {}", e.message))?;
    Ok(CheckedJoin {
        name,
        labels: join_labels(&flags.labels, &runtime)?,
        runtime,
        overlay,
        host_volumes: parse_host_volumes(&flags.host_volumes)?,
        listen: flags.listen.settings(None)?,
    })
}

/// Checks `agent join`'s flags (listeners bound once, the token read) into a [`JoinPlan`].
pub(crate) fn join_plan(flags: JoinFlags, selfcheck: bool) -> Result<JoinPlan> {
    let checked = check_join_flags(&flags)?;
    let settings = check_listeners(&checked.listen)?;
    let request = agent::JoinRequest {
        advertise: advertise(&settings, flags.listen.advertise_gossip, &flags.control)?,
        control_addrs: flags.control,
        token: flags.token.read()?,
        name: checked.name,
        site: flags.site,
        labels: checked.labels,
        listen: Some(settings.clone()),
        workloads_dir: flags.workloads_dir.clone(),
    };
    let mut options = options(&settings, flags.listen.advertise_gossip, selfcheck);
    options.discovery.mesh_timers = crate::gossip_tuning::mesh_timers()?;
    options.process.workloads_dir = flags.workloads_dir;
    options.process.host_volumes = checked.host_volumes;
    options.overlay = Some(checked.overlay.clone());
    options.runtime = Some(checked.runtime.clone());
    Ok(JoinPlan {
        data_dir: flags.data_dir,
        request,
        runtime: checked.runtime,
        overlay: checked.overlay,
        options,
    })
}

/// `agent join`'s part before the agent runs: join, say so, then carry on as `agent run`
/// (see [`become_run`]); if that cannot be done, run in this process.
async fn join(
    data_dir: PathBuf,
    request: agent::JoinRequest,
    runtime: agent::RuntimeChoice,
    overlay: &warren_edge_agent::overlay::OverlaySettings,
) -> Result<PathBuf> {
    let control = request.control_addrs.join(",");
    let identity = agent::join(&data_dir, request)
        .await
        .with_context(|| format!("join the cluster at {control}"))?;
    keep_after_join(&data_dir, &identity, &runtime, overlay)?;
    let error = become_run(&data_dir);
    tracing::warn!(error = %error, "cannot carry on as `warren agent run`; running in this process (its command line keeps the join flags)");
    Ok(data_dir)
}

/// What a join keeps besides what [`agent::join`] writes (the runtime, the overlay settings),
/// then the `joined the cluster` line.
pub(crate) fn keep_after_join(
    data_dir: &Path,
    identity: &agent::AgentIdentity,
    runtime: &agent::RuntimeChoice,
    overlay: &warren_edge_agent::overlay::OverlaySettings,
) -> Result<()> {
    // Kept before carrying on as `agent run`, which reads them from the data dir (it used to
    // get the WireGuard settings only after, so a joined agent ran with --wireguard auto
    // whatever join was told).
    agent::save_runtime_choice(data_dir, runtime).context("keep the runtime choice")?;
    overlay
        .save(data_dir)
        .with_context(|| format!("keep the WireGuard settings in {}", data_dir.display()))?;
    say(&format!(
        "joined the cluster as agent node {} ({})",
        identity.node_id,
        data_dir.display()
    ))
}

/// Global options that a joined agent keeps when it carries on as `agent run`, each with a
/// value (given before or after `agent join`).
const KEPT_GLOBAL_FLAGS: [&str; 2] = ["--log-level", "--log-format"];

/// Replaces this process (same pid) with `warren agent run --data-dir DIR` and the same log
/// options: a token given on the command line would otherwise stay readable in `ps` for the
/// agent's whole life. `run` listens where join kept in the data dir (with the ports join
/// resolved). Returns only on failure.
fn become_run(data_dir: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(run_argv(&argv, data_dir))
            .env_remove("WARREN_TOKEN")
            .exec(),
        Err(error) => error,
    }
}

/// `agent run`'s arguments (without the program name) for a joined agent: the
/// [`KEPT_GLOBAL_FLAGS`] found in `argv` (`--flag VALUE` or `--flag=VALUE`), then
/// `agent run --data-dir DIR`.
fn run_argv(argv: &[std::ffi::OsString], data_dir: &Path) -> Vec<std::ffi::OsString> {
    let mut run = Vec::new();
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if KEPT_GLOBAL_FLAGS.contains(&text.as_ref()) {
            run.push(arg.clone());
            run.extend(args.next().cloned());
        } else if KEPT_GLOBAL_FLAGS
            .iter()
            .any(|flag| text.starts_with(&format!("{flag}=")))
        {
            run.push(arg.clone());
        }
    }
    run.extend(["agent".into(), "run".into(), "--data-dir".into()]);
    run.push(data_dir.as_os_str().to_owned());
    run
}

/// The test-only knob that makes agents break their promise on purpose (the chaos harness's
/// self-check): see `AgentOptions::selfcheck_stop_on_disconnect`.
const SELFCHECK_STOP_ON_DISCONNECT: &str = "WARREN_SELFCHECK_STOP_ON_DISCONNECT";

/// Reads the self-check knob (first of all: a garbled value must stop the command before it
/// does anything).
pub(crate) fn selfcheck_knob() -> Result<bool> {
    parse_selfcheck(std::env::var_os(SELFCHECK_STOP_ON_DISCONNECT).as_deref())
}

/// The agent's options from its listen settings.
fn options(
    settings: &ListenSettings,
    advertise_gossip: Option<SocketAddr>,
    selfcheck: bool,
) -> AgentOptions {
    let dns = settings
        .dns
        .map(|listen| warren_edge_agent::dns::DnsConfig {
            listen,
            upstreams: if settings.dns_upstreams.is_empty() {
                warren_edge_agent::dns::Upstreams::System
            } else {
                warren_edge_agent::dns::Upstreams::List(settings.dns_upstreams.clone())
            },
            ..Default::default()
        });
    AgentOptions {
        metrics_listen: settings.metrics,
        selfcheck_stop_on_disconnect: selfcheck,
        discovery: warren_edge_agent::discovery::DiscoveryOptions {
            gossip_listen: settings.gossip,
            gossip_advertise: advertise_gossip,
            dns,
            ..Default::default()
        },
        // This very binary is the containers' log writer (`warren-container-logger`).
        container_logger: std::env::current_exe().ok(),
        ..AgentOptions::default()
    }
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
pub(crate) fn foreground<F, Fut>(options: AgentOptions, prepare: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<PathBuf>>,
{
    let runtime = crate::multi_thread_runtime()?;
    runtime.block_on(async move {
        let mut signals = Signals::new()?;
        let data_dir = prepare().await?;
        let agent = match Agent::open(&data_dir, options) {
            Ok(agent) => agent,
            // Removed for good: starting again cannot help (exit status 78, see agent_up).
            Err(error @ agent::AgentError::Removed) => {
                return Err(crate::agent_up::permanent(anyhow!(error)))
            }
            Err(error) => {
                return Err(error).with_context(|| format!("start the agent in {}", data_dir.display()))
            }
        };
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
            RunEnd::Removed(message) => Err(crate::agent_up::permanent(anyhow!(
                "node {id} was removed from the cluster ({message}); its workloads were stopped"
            ))),
        }
    })
}

/// The labels `agent join` registers: the operator's `--label`s and the node's runtime
/// ([`warren_api::RUNTIME_LABEL`]), by which control places image services on containerd
/// nodes only and commands on process nodes only.
fn join_labels(
    labels: &[String],
    runtime: &agent::RuntimeChoice,
) -> Result<BTreeMap<String, String>> {
    let mut labels = parse_labels(labels)?;
    if labels.contains_key(warren_api::RUNTIME_LABEL) {
        bail!(
            "--label {}: set by --runtime (the node registers how it runs workloads)",
            warren_api::RUNTIME_LABEL
        );
    }
    let runtime = match runtime {
        agent::RuntimeChoice::Process => warren_api::RUNTIME_PROCESS,
        agent::RuntimeChoice::Containerd { .. } => warren_api::RUNTIME_CONTAINERD,
    };
    labels.insert(warren_api::RUNTIME_LABEL.to_owned(), runtime.to_owned());
    Ok(labels)
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
    let control = if status.link.control_addrs.is_empty() {
        "-".to_owned()
    } else {
        status.link.control_addrs.join(", ")
    };
    let mut rows = vec![
        ("node", format!("{} ({})", status.name, status.node_id)),
        ("site", status.site.clone()),
        ("revision", status.revision.to_string()),
        ("link", link),
        ("control", control),
        ("agent pid", status.agent_pid.to_string()),
    ];
    if status.listeners.is_empty() {
        rows.push(("listeners", "none".to_owned()));
    }
    rows.extend(
        status
            .listeners
            .iter()
            .map(|l| (l.listener.as_str(), listener_text(l))),
    );
    let mut out = fields(&rows);
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

/// One listener's line: where it serves, or that it is down and why.
fn listener_text(listener: &warren_api::wire::ListenerStatus) -> String {
    match (listener.up, &listener.error) {
        (true, _) if listener.listener == Listener::Metrics => {
            format!("http://{}/metrics", listener.addr)
        }
        (true, _) => format!("{} (up)", listener.addr),
        (false, Some(error)) => format!("{} DOWN: {error}", listener.addr),
        (false, None) => format!("{} DOWN", listener.addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_volumes_parse_and_bad_ones_say_why() {
        let parsed = parse_host_volumes(&["media=/srv/media".into()]).unwrap();
        assert_eq!(parsed["media"], Path::new("/srv/media"));
        for (flag, needle) in [
            ("media", "expected NAME=PATH"),
            ("media=srv", "not an absolute path"),
            ("Media=/srv", "host volume \"Media\""),
        ] {
            let error = parse_host_volumes(&[flag.into()]).unwrap_err().to_string();
            assert!(error.starts_with("--host-volume: "), "{error}");
            assert!(error.contains(needle), "{flag}: {error}");
        }
        let twice = ["a=/x".to_owned(), "a=/y".to_owned()];
        let error = parse_host_volumes(&twice).unwrap_err().to_string();
        assert!(error.contains("given twice"), "{error}");
    }

    #[test]
    fn join_registers_the_runtime_and_refuses_an_operator_runtime_label() {
        let labels = join_labels(&["tier=edge".into()], &agent::RuntimeChoice::Process).unwrap();
        assert_eq!(labels["warren.runtime"], "process");
        assert_eq!(labels["tier"], "edge");
        let containerd = agent::RuntimeChoice::Containerd {
            socket: "/run/containerd/containerd.sock".into(),
        };
        assert_eq!(
            join_labels(&[], &containerd).unwrap()["warren.runtime"],
            "containerd"
        );
        let refused = join_labels(&["warren.runtime=containerd".into()], &containerd);
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("set by --runtime")
        );
    }

    #[test]
    fn labels_parse() {
        let parsed = parse_labels(&["tier=edge".into(), "empty=".into()]).unwrap();
        assert_eq!(parsed.get("tier").map(String::as_str), Some("edge"));
        assert_eq!(parsed.get("empty").map(String::as_str), Some(""));
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
    }

    /// At join a flag not given takes its default; at run it takes what join kept; a flag
    /// given always wins, `none` included.
    /// A joined agent carries on as `agent run` on its data dir with its log options, and
    /// without the token or any other join flag.
    #[test]
    fn run_argv_keeps_the_data_dir_and_the_log_options() {
        let argv = |text: &str| -> Vec<std::ffi::OsString> {
            text.split_whitespace().map(Into::into).collect()
        };
        assert_eq!(
            run_argv(
                &argv(
                    "--log-level debug agent join --data-dir /d --control a:1 --token WRN1-x \
                     --name e1 --metrics 127.0.0.1:0 --log-format=json -o json"
                ),
                Path::new("/d")
            ),
            argv("--log-level debug --log-format=json agent run --data-dir /d")
        );
    }

    #[test]
    fn listen_flags_layer_over_what_join_kept_over_defaults() {
        fn args(metrics: Option<&str>, dns: Option<&str>, upstream: &[&str]) -> ListenArgs {
            ListenArgs {
                metrics: metrics.map(str::to_owned),
                gossip: None,
                advertise_gossip: None,
                dns: dns.map(str::to_owned),
                dns_upstream: upstream.iter().map(|a| a.parse().unwrap()).collect(),
            }
        }
        fn check(args: ListenArgs, kept: Option<&ListenSettings>, expected: ListenSettings) {
            assert_eq!(
                args.settings(kept).unwrap(),
                expected,
                "{args:?} over {kept:?}"
            );
        }
        let addr = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
        let defaults = ListenSettings {
            metrics: addr(DEFAULT_AGENT_METRICS),
            dns: addr(DEFAULT_DNS),
            dns_upstreams: vec![],
            gossip: addr(DEFAULT_GOSSIP),
        };
        let kept = ListenSettings {
            metrics: addr("127.0.0.1:19091"),
            dns: None,
            dns_upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            gossip: addr("127.0.0.2:17946"),
        };
        check(args(None, None, &[]), None, defaults.clone());
        // Unauthenticated: loopback unless the operator says otherwise.
        assert!(defaults.metrics.is_some_and(|a| a.ip().is_loopback()));
        check(args(None, None, &[]), Some(&kept), kept.clone());
        check(
            args(Some("none"), Some("127.0.0.1:5353"), &["127.0.0.1:53"]),
            Some(&kept),
            ListenSettings {
                metrics: None,
                dns: addr("127.0.0.1:5353"),
                dns_upstreams: vec!["127.0.0.1:53".parse().unwrap()],
                ..kept.clone()
            },
        );
        assert!(args(Some("9091"), None, &[]).settings(None).is_err());
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
