//! `warren-chaos up`: a fleet brought up for a person to use, kept until a signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use warren_chaos::firewall::Firewall;
use warren_chaos::fleet::{AgentRuntime, Fleet, FleetOptions, FleetSpec, Role};
use warren_chaos::preflight;
use warren_chaos::run::{REGISTRY_DIR, RunId};

use super::signals::Signals;

/// `up`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Number of control nodes (c1, c2, …, in site `central`).
    #[arg(long, default_value_t = 1)]
    control: usize,
    /// Sites and their agent counts: SITE:AGENTS,… (agents are named SITE-1, SITE-2, …).
    #[arg(long, default_value = "a:1,b:1")]
    sites: String,
    /// What runs the agents' workloads; with containerd each agent gets a containerd of its
    /// own (needs containerd, runc, ctr and nsenter).
    #[arg(long, value_enum, default_value = "process")]
    runtime: AgentRuntime,
    /// An OCI image-layout tarball loaded into every agent's containerd (repeat for more).
    #[arg(long = "image-tar", value_name = "FILE")]
    image_tars: Vec<PathBuf>,
    /// The warren binary. Default: next to warren-chaos, else target/release/warren,
    /// else target/debug/warren.
    #[arg(long, value_name = "PATH")]
    warren: Option<PathBuf>,
    /// Where node data and logs go (kept after the run). Default: /tmp/warren-chaos/<run id>.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Which tool writes partition rules. Default: nft if installed, else iptables.
    #[arg(long, value_enum)]
    firewall: Option<Firewall>,
    /// How long each node may take to come up, in seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_s: u64,
}

pub(crate) fn prepare_up(args: UpArgs) -> Result<(FleetSpec, FleetOptions, RunId)> {
    let firewall = preflight::check_tools(args.firewall)?;
    let warren = preflight::locate_warren(args.warren.as_deref())?;
    let spec = FleetSpec {
        control: args.control,
        sites: FleetSpec::parse_sites(&args.sites)?,
        runtime: args.runtime,
    };
    if spec.runtime == AgentRuntime::Containerd {
        preflight::check_container_tools()?;
    }
    spec.validate()?;
    let run = RunId::random();
    let run_dir = args
        .run_dir
        .unwrap_or_else(|| PathBuf::from("/tmp/warren-chaos").join(run.as_str()));
    let options = FleetOptions {
        warren,
        run_dir: std::path::absolute(&run_dir).context("resolve --run-dir")?,
        firewall,
        registry: PathBuf::from(REGISTRY_DIR),
        ready_timeout: Duration::from_secs(args.ready_timeout_s),
        cancel: Arc::new(AtomicBool::new(false)),
        agent_env: Vec::new(),
        holder_program: std::env::current_exe().context("locate warren-chaos itself")?,
        images: preflight::image_tars(&args.image_tars)?,
    };
    Ok((spec, options, run))
}

pub(crate) fn up(spec: FleetSpec, options: FleetOptions, run: RunId) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    runtime.block_on(async move {
        // Before anything exists: from here on a signal means "tear down", never "die".
        let mut signals = Signals::new()?;
        let cancel = options.cancel.clone();
        tracing::info!(run = %run, run_dir = %options.run_dir.display(), firewall = ?options.firewall, "--- bring the fleet up");
        let mut starting = tokio::task::spawn_blocking(move || Fleet::up(run, &spec, options));
        let fleet = tokio::select! {
            fleet = &mut starting => fleet.context("start-up task")??,
            which = signals.next() => {
                tracing::warn!("{which} during start-up: stopping");
                cancel.store(true, Ordering::SeqCst);
                // Start-up fails at its next check and tears down what it built.
                match starting.await.context("start-up task")? {
                    Ok(fleet) => tokio::task::spawn_blocking(move || fleet.down()).await.context("teardown task")??,
                    Err(error) => tracing::info!(error = %format!("{error:#}"), "start-up stopped"),
                }
                return Ok(());
            }
        };
        print_guide(&fleet);
        let which = signals.next().await;
        tracing::info!("{which}: stopping the fleet");
        tokio::task::spawn_blocking(move || fleet.down())
            .await
            .context("teardown task")??;
        say!("warren-chaos done: namespaces and processes removed");
        Ok(())
    })
}

/// What an operator needs to use the fleet.
fn print_guide(fleet: &Fleet) {
    let warren = fleet.cli_command(&[]);
    let words: Vec<String> = std::iter::once(warren.get_program())
        .chain(warren.get_args())
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let prefix = words.join(" ");
    say!(
        "fleet {} is up; files and logs in {}",
        fleet.run_id(),
        fleet.run_dir().display()
    );
    for node in fleet.nodes() {
        let role = match node.role {
            Role::Control => "control",
            Role::Agent => "agent",
        };
        say!(
            "  {:<10} {:<8} site {:<8} {:<12} netns {}  log {}",
            node.name,
            role,
            node.site,
            node.host.addr.to_string(),
            node.host.netns,
            node.log.display()
        );
    }
    say!("admin config: {}", fleet.admin_conf().display());
    say!("run CLI commands from the operator's seat (the bridge namespace):");
    say!("  {prefix} cluster status");
    say!("  {prefix} service create web --command 'sleep 1000' --replicas 2");
    say!("or a shell inside a node: ip netns exec <netns> bash");
    say!("Ctrl-C (or SIGTERM) stops the fleet and removes its namespaces");
    say!(
        "warren-chaos ready run={} config={}",
        fleet.run_id(),
        fleet.admin_conf().display()
    );
}
