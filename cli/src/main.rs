//! `warren`: the one binary operators and nodes run.
//!
//! This crate (with `chaos`) is the only one that reads argv or the environment and prints to
//! stdout. It parses flags, layers configuration, sets up logging and formats output; the work
//! itself lives in the library crates.
//!
//! - [`control_cmd`]: `warren control init | join | run`, a control node in the foreground.
//! - [`admin_conf_watch`]: the init node keeps its `admin.conf` listing the control members.
//! - [`agent_cmd`]: `warren agent join | run | status`, an edge agent in the foreground and its
//!   local status.
//! - [`agent_up`]: `warren agent up`, a box from one config file ([`agent_config`]): join if
//!   not joined, else run; a refusal exits 78 so systemd does not start it again.
//! - [`hide_token`]: a `--token VALUE` leaves the command line (re-exec with a pipe) before
//!   anything else runs.
//! - [`fd_limit`]: raises the open-file limit to the hard limit at start.
//! - [`config`]: `admin.conf` (cluster name, fingerprint, API addresses, CA and admin
//!   certificate) and where it is looked for.
//! - [`config_sync`]: keeping `admin.conf`'s API addresses current with the control members.
//! - [`client`]: the HTTP/1.1 + JSON client of the control-plane API (`warren_api::rest`), over
//!   TLS with the admin certificate or over the local Unix socket, failing over between nodes.
//! - [`cluster_cmd`]: `warren cluster | token | admin | node`: status, join tokens, admin
//!   certificates, node drain and removal.
//! - [`service_cmd`]: `warren service create | ls | inspect | ps | scale | update | rollback | rm`.
//! - [`secret_cmd`]: `warren secret create | ls | rm`.
//! - [`volume_cmd`]: `warren volume create | ls | inspect | rm`.
//! - [`image_cmd`]: `warren image load`, images into this box's containerd without a registry.
//! - [`prometheus_cmd`]: `warren prometheus config`, a site's or the centre's Prometheus
//!   configuration filled in from the node registry, with the shipped rules.
//! - [`apply`]: `warren apply -f`: YAML documents (Service, Secret, Volume) parsed, validated
//!   and written in order.
//! - [`table`]: aligned text tables for the read commands.
//! - [`output`]: `-o table | yaml | json`, and errors as one line.
//! - [`local`]: a whole cluster in this process on loopback (control node, agents in sites
//!   behind transport fault switches), shared by [`dev`] and [`demo`].
//! - [`dev`]: `warren dev`, a long-running local cluster to try commands against.
//! - [`demo`]: `warren demo`, the scripted partition tour, one function per step.
//! - `prerequisites` (tests only): the gate for tests that need root or a program.
//!
//! It never prints a secret value, and every failure ends as one `error: …` line on stderr
//! with a non-zero exit.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod admin_conf_watch;
mod agent_cmd;
mod agent_config;
mod agent_up;
mod apply;
mod client;
mod cluster_cmd;
mod config;
mod config_sync;
mod control_cmd;
mod demo;
mod dev;
mod fd_limit;
mod gossip_tuning;
mod hide_token;
mod image_cmd;
mod local;
mod logs_cmd;
mod output;
#[cfg(test)]
mod prerequisites;
mod prometheus_cmd;
mod secret_cmd;
mod service_cmd;
mod table;
mod version_cmd;
mod volume_cmd;
mod wireguard_args;

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::client::{Client, ClientArgs, TopClientArgs};
use crate::output::OutputFormat;

/// Warren: an edge-first agent mesh.
///
/// A small Raft control plane at a central site pushes desired state over QUIC (mutual TLS) to
/// agents on edge boxes, which keep their workloads running while cut off and converge when the
/// link returns.
#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version = version_cmd::LONG_VERSION,
    propagate_version = true,
    after_help = "Quick start on one machine:\n  \
        warren control init --data-dir /tmp/w --api 127.0.0.1:7100 --quic 127.0.0.1:7101 --metrics none &\n  \
        export WARREN_CONFIG=/tmp/w/admin.conf\n  \
        warren cluster status\n  \
        warren service create web --command \"sleep 1000\" --replicas 2\n  \
        warren service ls\n  \
        warren apply -f deploy.yaml\n\n\
        Commands that talk to the cluster find it through --config FILE, else $WARREN_CONFIG, else\n\
        ~/.config/warren/admin.conf, else /var/lib/warren/admin.conf; --api ADDR overrides the\n\
        address (unix:<data-dir>/control.sock for the local socket). A command fails over to the\n\
        next control node when one is down, and keeps the admin config's addresses current with\n\
        the control members. Every read command takes -o json.\n\
        `warren demo` is a self-contained partition tour (~20 s); `warren dev` runs a local cluster\n\
        to try these commands against. Docs: docs/ in the source tree."
)]
struct Cli {
    /// Log level filter (e.g. `info`, `debug`, `warren_transport=debug`). Default: `warn`
    /// (`info,openraft=warn` less openraft's per-RPC replication errors for `control`, `info` for `agent`, `warn,openraft=error` for
    /// `dev`, `error` for `demo`, whose partition makes the agents complain on purpose).
    #[arg(
        long,
        global = true,
        env = "WARREN_LOG",
        help_heading = "Global options"
    )]
    log_level: Option<String>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = "Global options")]
    log_format: LogFormat,

    /// Output: human tables, or the JSON the control plane sent (every read command).
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table,
        help_heading = "Global options"
    )]
    output: OutputFormat,

    #[command(flatten)]
    access: client::TopClientArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a control node: init a cluster, join one, or restart from a data dir (foreground).
    Control(control_cmd::ControlArgs),

    /// Run an edge agent: join a cluster, restart from a data dir (foreground), local status.
    #[command(after_help = "Examples:\n  \
        warren agent join --data-dir /var/lib/warren --control ops-1.example:7101 --token \"$TOKEN\"\n  \
        warren agent run --data-dir /var/lib/warren\n  \
        warren agent status --data-dir /var/lib/warren -o json")]
    Agent(agent_cmd::AgentArgs),

    /// The control plane's health: members, leader, term, revision, counts.
    #[command(after_help = "Example:\n  warren cluster status -o json")]
    Cluster(cluster_cmd::ClusterArgs),

    /// Join tokens for new agents and control nodes.
    Token(cluster_cmd::TokenArgs),

    /// Admin certificates: issue one for a named operator, list them, revoke one.
    #[command(after_help = "Examples:\n  \
        warren admin create alice --out alice.conf\n  \
        warren admin ls\n  \
        warren admin revoke alice")]
    Admin(cluster_cmd::AdminArgs),

    /// The nodes of the cluster: list, inspect, drain, activate, remove.
    #[command(after_help = "Examples:\n  \
        warren node ls\n  \
        warren node drain edge-lisbon-1\n  \
        warren node activate edge-lisbon-1\n  \
        warren node rm 00000000000000ff")]
    Node(cluster_cmd::NodeArgs),

    /// Services: create, list, inspect, ps, scale, update, rollback, rm.
    #[command(after_help = "Examples:\n  \
        warren service create web --command \"/usr/bin/web --port 8080\" --replicas 3 --port 8080\n  \
        warren service ls\n  \
        warren service ps web -o json\n  \
        warren service scale web 5\n  \
        warren service update web --env LOG=debug\n  \
        warren service rollback web")]
    // Boxed: its flags make it much larger than the other commands.
    Service(Box<service_cmd::ServiceArgs>),

    /// Print one replica's output (`web.1`, or `edge.<node id>` for a global service).
    ///
    /// The same as `warren service logs SERVICE --replica R`: lines of stdout and stderr,
    /// prefixed with replica and node, read from the replica's agent over its link to control.
    #[command(after_help = "Examples:\n  \
        warren logs web.1\n  \
        warren logs web.1 --tail 50 --follow\n  \
        warren logs node-exporter.00000000000000ff --since 1h --timestamps")]
    Logs(logs_cmd::LogsArgs),

    /// Create or update services, secrets and volumes from a YAML file; idempotent.
    Apply(apply::ApplyArgs),

    /// Secrets: create (from a file or stdin), list, remove. Values are never shown.
    Secret(secret_cmd::SecretArgs),

    /// Volumes: create, list (with the node that holds each), inspect, remove when unused.
    #[command(after_help = "Examples:\n  \
        warren volume create data\n  \
        warren volume ls\n  \
        warren volume inspect data -o json\n  \
        warren volume rm data")]
    Volume(volume_cmd::VolumeArgs),

    /// Prometheus across sites: the configuration of a site's Prometheus or of the central one,
    /// filled in with the cluster's addresses, and the alert rules it loads.
    #[command(after_help = "Examples:\n  \
        warren prometheus config --site lisbon --out /etc/prometheus\n  \
        warren prometheus config --central --federate lisbon=10.1.0.2:9090 --out /etc/prometheus")]
    Prometheus(prometheus_cmd::PrometheusArgs),

    /// Images on this box (containerd nodes): load an OCI image tarball without a registry.
    #[command(after_help = "Example:\n  warren image load busybox.tar")]
    Image(image_cmd::ImageArgs),

    /// Scripted tour: deploy, cut a site off, heal, converge; exits 0 (about 20 s, no root).
    ///
    /// Starts, in this one process on 127.0.0.1, a control node and an agent in each of two
    /// sites (a and b), and walks through the steps below. Site b is cut off by a switch under
    /// its agent's QUIC socket that drops every datagram both ways, so the link really times
    /// out: no root, no firewall, no network namespace.
    ///
    /// Every wait is bounded and reports progress; a step that fails or times out ends the tour
    /// with a non-zero exit and the reason. At the end every workload is stopped and the data
    /// removed. `-o json` prints a report (timings, pids kept and restarted) instead of the
    /// narration.
    #[command(after_help = "Steps:\n  \
        1. deploy `web` (2 replicas, spread over the sites) and `worker` (one per agent) through the HTTP API\n  \
        2. cut site b off\n  \
        3. kill -9 one of site b's workloads: its agent restarts it on its own\n  \
        4. change `worker`'s environment and scale `web` to 4: site a converges, site b keeps the old version\n  \
        5. wait for site b's agent to notice the silence (15 s), then heal site b\n  \
        6. site b converges; workloads whose spec did not change keep their pids\n\n\
        Examples:\n  \
        warren demo\n  \
        warren demo -o json\n  \
        cargo run --release -p warren-cli -- demo")]
    Demo(demo::DemoArgs),

    /// Run a local cluster on loopback to try Warren by hand; Ctrl-C stops it (no root).
    ///
    /// Starts, in this one process on 127.0.0.1, a control node and agents in two sites (a and
    /// b, --agents-per-site each) with the native process runtime, deploys a sample service
    /// `web` (2 replicas) into an empty cluster, and prints the admin config path and commands
    /// to paste into another shell (`warren --config <dir>/admin.conf service ls`, …). When
    /// every agent runs its replicas it prints `warren dev ready config=<path>`.
    ///
    /// `kill -USR1 <pid>` cuts site b off (its agents' QUIC datagrams are dropped, as in
    /// `warren demo`); the same signal heals it.
    ///
    /// Ctrl-C or SIGTERM stops the agents, then stops every workload they started (unlike
    /// `warren agent`, whose workloads outlive it: a dev cluster leaves nothing running), then
    /// the control node. The scratch data dir is removed; one given with --data-dir is kept,
    /// and running `warren dev --data-dir` on it again resumes the same cluster.
    #[command(after_help = "Examples:\n  \
        warren dev\n  \
        warren dev --data-dir /tmp/warren-dev --agents-per-site 2\n  \
        warren --config /tmp/warren-dev/admin.conf service ps web")]
    Dev(dev::DevArgs),

    /// Which build this is: version, commit, target and build date (as in `warren_build_info`).
    #[command(
        after_help = "Examples:\n  warren version\n  warren version -o json\n  warren --version"
    )]
    Version,

    /// Print a shell completion script to stdout.
    ///
    /// Example: `warren completion bash > /etc/bash_completion.d/warren`
    Completion {
        /// The shell to generate for.
        shell: clap_complete::Shell,
    },
}

/// The control node's default log filter: openraft's warnings, except its per-RPC complaints
/// about unreachable peers (replication errors and the failed heartbeats they cause), which the
/// control node reports itself, once per peer going down.
const CONTROL_LOG_FILTER: &str = "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Demo(_) => "error",
        Command::Dev(_) => "warn,openraft=error",
        Command::Control(_) => CONTROL_LOG_FILTER,
        // hickory logs every DNS request at info; chitchat every failed gossip send at warn.
        Command::Agent(_) => "info,hickory_server=warn,chitchat=error",
        _ => "warn",
    };
    let level = cli.log_level.as_deref().unwrap_or(default);
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Runs an admin command: builds the client from its flags (those after the command win
/// over those before it), then runs `body` to completion.
fn admin<F, Fut>(args: &ClientArgs, top: &TopClientArgs, body: F) -> Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    runtime.block_on(async {
        let args = args.or(top);
        let mut client = Client::from_args(&args)?;
        if cluster_cmd::renew_admin_if_due(&client).await {
            // The old certificate is revoked now: talk with the new one.
            client = Client::from_args(&args)?;
        }
        body(client).await
    })
}

/// The runtime of the commands that run until a signal or for minutes (control, agent, dev,
/// demo); a one-shot admin command makes do with a current-thread one.
fn multi_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start async runtime")
}

/// A join's `--token` leaves the command line before anything else happens.
fn hide_join_token(command: &Command) {
    let joins = matches!(
        command,
        Command::Control(control_cmd::ControlArgs {
            command: control_cmd::ControlCommand::Join { .. },
            ..
        }) | Command::Agent(agent_cmd::AgentArgs {
            command: agent_cmd::AgentCommand::Join(_),
            ..
        })
    );
    if joins && let Err(error) = hide_token::move_token_off_the_command_line() {
        tracing::warn!(error = %error, "cannot move the join token off the command line");
    }
}

fn run(cli: Cli) -> Result<()> {
    hide_join_token(&cli.command);
    let format = cli.output;
    let top = cli.access;
    let talks_to_cluster = !matches!(
        cli.command,
        Command::Control(_)
            | Command::Agent(_)
            | Command::Image(_)
            | Command::Demo(_)
            | Command::Dev(_)
            | Command::Completion { .. }
            | Command::Version
    );
    if top.is_given() && !talks_to_cluster {
        anyhow::bail!(
            "--config, --api and --timeout before the command are for commands that talk to the \
             cluster; `warren control init` takes --api ADDR after `init` as its listen address"
        );
    }
    match cli.command {
        Command::Control(args) => control_cmd::run(args),
        Command::Agent(args) => agent_cmd::run(args, format),
        Command::Image(args) => image_cmd::run(args, format),
        Command::Cluster(args) => admin(&args.client, &top, |client| async move {
            cluster_cmd::cluster(&client, format, args.command).await
        }),
        Command::Token(args) => admin(&args.client, &top, |client| async move {
            cluster_cmd::token(&client, format, args.command).await
        }),
        Command::Admin(args) => admin(&args.client, &top, |client| async move {
            cluster_cmd::admin(&client, format, args.command).await
        }),
        Command::Node(args) => admin(&args.client, &top, |client| async move {
            cluster_cmd::node(&client, format, args.command).await
        }),
        Command::Service(args) => {
            let service_cmd::ServiceArgs { client, command } = *args;
            admin(&client, &top, |client| async move {
                service_cmd::run(&client, format, command).await
            })
        }
        Command::Logs(args) => admin(&args.client, &top, |client| async move {
            let service = args.replica.service.to_string();
            logs_cmd::run(&client, format, &service, Some(args.replica), &args.flags).await
        }),
        Command::Secret(args) => admin(&args.client, &top, |client| async move {
            secret_cmd::run(&client, format, args.command).await
        }),
        Command::Volume(args) => admin(&args.client, &top, |client| async move {
            volume_cmd::run(&client, format, args.command).await
        }),
        Command::Prometheus(args) => admin(&args.client, &top, |client| async move {
            prometheus_cmd::run(&client, args.command).await
        }),
        Command::Apply(args) => {
            // Parse and validate everything before contacting anyone.
            let documents = apply::load(&args)?;
            if args.dry_run {
                apply::print_dry_run(&documents);
                return Ok(());
            }
            let client_args = args.client.clone();
            admin(&client_args, &top, |client| async move {
                apply::run(&client, format, &args, documents).await
            })
        }
        Command::Demo(args) => demo::run(args, format),
        Command::Dev(args) => dev::run(args),
        Command::Version => version_cmd::run(format),
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "warren", &mut script);
            output::out(&String::from_utf8_lossy(&script));
            Ok(())
        }
    }
}

/// Runs the containers' log writer when this binary was started by that name (a link the
/// agent makes; see `warren_edge_agent::runtime::containerd::LOGGER_NAME`).
fn container_logger() -> Option<ExitCode> {
    use warren_edge_agent::runtime::containerd::{LOGGER_NAME, run_logger};
    let mut args = std::env::args();
    let program = args.next()?;
    if std::path::Path::new(&program).file_name()? != LOGGER_NAME {
        return None;
    }
    let args: Vec<String> = args.collect();
    Some(match run_logger(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    // Started by containerd's shim as a container's log writer: no flags, no logging setup.
    if let Some(code) = container_logger() {
        return code;
    }
    version_cmd::record();
    let cli = Cli::parse();
    init_logging(&cli);
    match fd_limit::raise_nofile() {
        Ok(raised) => {
            tracing::debug!(before = ?raised.before, after = ?raised.after, "open-file limit raised to the hard limit")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; keeping the current one")
        }
    }
    warren_transport::install_crypto_provider();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the context chain joined, as operators and scripts expect.
            eprintln!("error: {}", output::one_line(&error));
            agent_up::exit_code(&error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
