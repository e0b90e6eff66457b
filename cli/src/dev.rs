//! `warren dev`: a long-running local cluster on loopback for trying Warren by hand.
//!
//! One control node and agents in two sites (`a` and `b`) run in this process
//! ([`LocalCluster`]), with a sample service. The command prints the admin config and commands
//! to paste, then one stable line scripts wait for: `warren dev ready config=<path>`. SIGUSR1
//! cuts site b off (its QUIC datagrams dropped) or heals it again. SIGTERM or Ctrl-C stops the
//! agents, then every workload they run, then the control node: nothing is left running. A
//! data dir given with `--data-dir` is kept, and a later `warren dev --data-dir` on it resumes
//! the same cluster; the default scratch dir is removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use warren_api::rest::ServiceInfo;
use warren_api::routes::Route;
use warren_api::{ProcessSpec, ServiceMode, ServiceName, ServiceSpec, Workload};

use crate::control_cmd::{Signals, say};
use crate::local::{self, LocalCluster, wait_for};

/// The sites of the dev cluster; the second is the one SIGUSR1 cuts off.
const SITES: [&str; 2] = ["a", "b"];
/// Most agents per site (each is a task, a sled cache and a QUIC endpoint).
const MAX_AGENTS_PER_SITE: usize = 5;
/// How long the sample service gets to start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `warren dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Keep the cluster's files here (created if missing; an earlier `warren dev` cluster in it
    /// is resumed). Default: a fresh scratch dir, removed on exit.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Agents in each of the two sites (1 to 5).
    #[arg(long, value_name = "N", default_value_t = 1)]
    agents_per_site: usize,
}

/// The sample service: two replicas (one per site), each printing a greeting to its log and
/// then sleeping.
fn sample_service() -> ServiceSpec {
    let script = "echo \"web started: GREETING=$GREETING\"; exec sleep 1000000";
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").expect("valid name"),
        Workload::Process(ProcessSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            working_dir: None,
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 2 };
    spec.env.insert("GREETING".into(), "hello".into());
    spec
}

/// Runs `warren dev` until a signal.
pub fn run(args: DevArgs) -> Result<()> {
    if !(1..=MAX_AGENTS_PER_SITE).contains(&args.agents_per_site) {
        bail!("--agents-per-site: expected 1 to {MAX_AGENTS_PER_SITE}");
    }
    let runtime = crate::multi_thread_runtime()?;
    runtime.block_on(async move {
        let mut signals = Signals::new()?;
        let (root, scratch) = match &args.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let scratch = tempfile::Builder::new()
                    .prefix("warren-dev-")
                    .tempdir()
                    .context("create a scratch data dir")?;
                (scratch.path().to_owned(), Some(scratch))
            }
        };
        say(&format!(
            "warren dev: a control node and agents in sites {} on 127.0.0.1, in this process",
            SITES.join(" and ")
        ))?;
        say(&match scratch {
            Some(_) => format!(
                "data dir {} (removed on exit; pass --data-dir DIR to keep it)",
                root.display()
            ),
            None => format!("data dir {} (kept on exit)", root.display()),
        })?;
        let cluster = if LocalCluster::exists(&root) {
            say("resuming the cluster kept in it")?;
            LocalCluster::resume(&root).await?
        } else {
            LocalCluster::create(&root, &SITES, args.agents_per_site).await?
        };
        let served = serve(&cluster, &mut signals).await;
        say("warren dev stopping: agents first, then their workloads, then the control node")?;
        let stopped = cluster.stop(true).await;
        for (agent, workload) in stopped.workloads.iter().filter(|(_, w)| w.was_running) {
            say(&format!(
                "stopped {} on {agent} (pid {})",
                workload.replica,
                workload.pid.map_or_else(|| "-".into(), |p| p.to_string())
            ))?;
        }
        if let Some(scratch) = scratch {
            scratch.close().context("remove the scratch data dir")?;
        }
        served?;
        if let Some(problem) = stopped.problems.first() {
            bail!("stopping the dev cluster: {problem}");
        }
        say("warren dev stopped")?;
        Ok(())
    })
}

/// Deploys the sample service if the cluster has none, waits for it, prints what to try, then
/// serves SIGUSR1 (cut or heal site b) until SIGTERM or SIGINT.
async fn serve(cluster: &LocalCluster, signals: &mut Signals) -> Result<()> {
    // Before the commands that mention it are printed: SIGUSR1's default action is to exit.
    let mut toggle = signal(SignalKind::user_defined1()).context("listen for SIGUSR1")?;
    tokio::select! {
        prepared = prepare(cluster) => prepared?,
        which = signals.next() => {
            say(&format!("warren dev received {which} while starting"))?;
            return Ok(());
        }
    }
    say(&format!(
        "warren dev ready config={}",
        cluster.admin_conf.display()
    ))?;
    let site_b = SITES[1];
    loop {
        tokio::select! {
            which = signals.next() => {
                say(&format!("warren dev received {which}"))?;
                return Ok(());
            }
            _ = toggle.recv() => {
                let switch = cluster.switch(site_b)?;
                if switch.is_cut() {
                    cluster.heal(site_b)?;
                    say(&format!("site {site_b} healed: its agents reconnect within seconds and converge"))?;
                } else {
                    cluster.cut(site_b)?;
                    say(&format!(
                        "site {site_b} cut off: its QUIC datagrams are dropped; workloads keep running \
                         (the agents notice within 15 s; `kill -USR1 {}` again heals it)",
                        std::process::id()
                    ))?;
                }
            }
        }
    }
}

/// Prints the cluster, deploys the sample service into an empty cluster, waits until every
/// agent runs what it should, and prints what to try.
async fn prepare(cluster: &LocalCluster) -> Result<()> {
    let control = cluster.control();
    say(&format!(
        "control node c1: api {} quic {}",
        control.api_addr(),
        control.quic_addr()
    ))?;
    for agent in &cluster.agents {
        say(&format!(
            "agent {} (site {}) node {}: {}",
            agent.name,
            agent.site,
            agent.node_id,
            agent.dir.display()
        ))?;
    }
    let client = cluster.client();
    let services: Vec<ServiceInfo> = client.request(Route::ListServices).await?.json()?;
    if services.is_empty() {
        client
            .request_json(Route::CreateService, &sample_service())
            .await
            .context("create the sample service web")?;
        say(
            "sample service web created: 2 replicas of `sh -c 'echo …; exec sleep …'`, spread over the sites",
        )?;
    }
    let mut a_log = None;
    for agent in &cluster.agents {
        let what = format!("{} to run its replicas", agent.name);
        let progress = |waited| {
            let _ = say(&format!("… waiting for {what}: {}", local::seconds(waited)));
        };
        let (status, _) =
            wait_for(&what, READY_TIMEOUT, progress, || cluster.converged(agent)).await?;
        for replica in local::running(&status) {
            a_log.get_or_insert_with(|| {
                warren_edge_agent::runtime::default_workloads_dir(&agent.dir)
                    .join(replica.replica.to_string())
                    .join("stdout.log")
            });
            say(&format!(
                "  {} on {} pid {}",
                replica.replica,
                agent.name,
                replica.pid.unwrap_or_default()
            ))?;
        }
    }
    print_next_steps(cluster, a_log.as_deref())
}

/// Prints commands to paste; `log` is the stdout log of one running workload.
fn print_next_steps(cluster: &LocalCluster, log: Option<&Path>) -> Result<()> {
    let config = cluster.admin_conf.display();
    let b_agent = cluster
        .agents_in(SITES[1])
        .next()
        .context("site b has an agent")?;
    let mut lines = vec![
        String::new(),
        "Try, in another shell:".into(),
        format!("  warren --config {config} service ls"),
        format!("  warren --config {config} service ps web"),
        format!("  warren --config {config} service scale web 4"),
        format!("  warren --config {config} service update web --env GREETING=hi"),
        format!("  warren --config {config} node ls"),
        format!("  warren agent status --data-dir {}", b_agent.dir.display()),
        format!(
            "  kill -USR1 {}   # cut site b off (its QUIC datagrams are dropped); again to heal",
            std::process::id()
        ),
        format!("  export WARREN_CONFIG={config}   # then drop the --config flags"),
    ];
    if let Some(log) = log {
        lines.insert(
            8,
            format!("  cat {}   # a workload's output", log.display()),
        );
    }
    lines.push("Ctrl-C or SIGTERM stops the cluster and every workload it started.".into());
    lines.push(String::new());
    for line in lines {
        say(&line)?;
    }
    Ok(())
}
