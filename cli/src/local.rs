//! A whole Warren cluster in this process, on 127.0.0.1, for `warren dev` and `warren demo`:
//! one control node and agents in named sites, with the native process runtime and no root.
//!
//! Every part is the real library: `ControlNode` serves its HTTP API and QUIC on loopback
//! ports picked by the kernel, agents join with single-use tokens from the API and run
//! `Agent::serve`, workloads are real processes. Each site's agents share one [`FaultSwitch`]
//! in their QUIC endpoint options, so [`LocalCluster::cut`] drops every datagram between that
//! site and the control plane, both ways — a real partition as QUIC sees it.
//!
//! Layout under the root dir: `control/` (the control node), `admin.conf`, and
//! `agents/<name>/` (one agent each). A root that already holds a cluster is resumed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_api::rest::{ReplicaInfo, ServiceInfo, TokenRequest, TokenResponse};
use warren_api::routes::Route;
use warren_api::{NodeId, NodeRole, TaskState};
use warren_control::node::{ControlConfig, ControlNode, NewNode};
use warren_edge_agent::agent::{self, Agent, AgentError, AgentOptions, AgentStatus, RunEnd};
use warren_edge_agent::offline::{self, StoppedWorkload};
use warren_edge_agent::runtime::ProcessRuntimeOptions;
use warren_transport::{EndpointOptions, FaultSwitch, TransportConfig};

use crate::client::{Client, ClientArgs};
use crate::config::{ADMIN_CONF, AdminConfig};

/// Name of the control node.
const CONTROL_NAME: &str = "c1";
/// Site of the control node.
const CONTROL_SITE: &str = "central";
/// Lifetime of the single-use tokens agents join with.
const JOIN_TOKEN_TTL_MS: u64 = 10 * 60 * 1000;
/// How long starting the control node may take.
const CONTROL_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent gets to stop once cancelled.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the control node gets to shut down.
const CONTROL_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for a stopped agent to let go of its cache lock.
const CACHE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often waits poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One agent of the local cluster.
#[derive(Debug)]
pub struct LocalAgent {
    /// Node name (`edge-a1`).
    pub name: String,
    /// Site (`a`).
    pub site: String,
    /// Node id control assigned.
    pub node_id: NodeId,
    /// Its data dir.
    pub dir: PathBuf,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<RunEnd, AgentError>>>,
}

impl LocalAgent {
    /// The agent's `status.json`, if written yet.
    pub fn status(&self) -> Option<AgentStatus> {
        agent::load_status(&self.dir).ok()
    }
}

/// What stopping the cluster did.
#[derive(Debug, Default)]
pub struct Stopped {
    /// Workloads stopped (or found gone), per agent name.
    pub workloads: Vec<(String, StoppedWorkload)>,
    /// Problems met on the way; stopping went on.
    pub problems: Vec<String>,
}

/// The cluster.
#[derive(Debug)]
pub struct LocalCluster {
    /// Root of every data dir.
    pub root: PathBuf,
    /// The admin config for `--config`.
    pub admin_conf: PathBuf,
    /// The agents, in site then name order.
    pub agents: Vec<LocalAgent>,
    control: ControlNode,
    client: Client,
    switches: BTreeMap<String, FaultSwitch>,
}

/// Options of the in-process agents: secrets on disk (no tmpfs mount, no root), and an
/// endpoint behind the site's fault switch. Dials give up after 2 s instead of the WAN-sized
/// 10 s, so that a healed site reconnects within seconds.
pub fn agent_options(fault: FaultSwitch) -> AgentOptions {
    AgentOptions {
        process: ProcessRuntimeOptions {
            secrets_tmpfs: false,
            ..ProcessRuntimeOptions::default()
        },
        endpoint: EndpointOptions {
            config: TransportConfig {
                connect_timeout: Duration::from_secs(2),
                ..TransportConfig::default()
            },
            fault: Some(fault),
            ..EndpointOptions::default()
        },
        ..AgentOptions::default()
    }
}

/// `edge-<site><n>`, the name of the n-th agent (from 1) of a site.
pub fn agent_name(site: &str, n: usize) -> String {
    format!("edge-{site}{n}")
}

impl LocalCluster {
    /// Whether `root` already holds a local cluster to resume.
    pub fn exists(root: &Path) -> bool {
        root.join(ADMIN_CONF).exists()
    }

    /// Creates a cluster under `root` (which must not hold one): a control node, then
    /// `agents_per_site` agents in each of `sites`, joined with single-use tokens.
    ///
    /// # Errors
    /// Anything that fails to start; what was started is stopped again.
    pub async fn create(root: &Path, sites: &[&str], agents_per_site: usize) -> Result<Self> {
        let new = NewNode::on_loopback(root.join("control"), CONTROL_NAME, CONTROL_SITE);
        let (control, output) = bounded(
            "start the control node",
            CONTROL_START_TIMEOUT,
            Box::pin(ControlNode::init(new, ControlConfig::default())),
        )
        .await?
        .context("start the control node")?;
        let api = vec![control.api_addr().to_string()];
        AdminConfig::new(CONTROL_NAME.into(), api, &output.admin).save(&root.join(ADMIN_CONF))?;
        let mut cluster = Self::around(root, control)?;
        if let Err(error) = cluster.join_agents(sites, agents_per_site).await {
            cluster.stop(true).await;
            return Err(error);
        }
        Ok(cluster)
    }

    /// A cluster of `control` alone, with an API client from the admin config under `root`.
    fn around(root: &Path, control: ControlNode) -> Result<Self> {
        let admin_conf = root.join(ADMIN_CONF);
        let client = client_for(&admin_conf)?;
        Ok(LocalCluster {
            root: root.to_owned(),
            admin_conf,
            agents: Vec::new(),
            control,
            client,
            switches: BTreeMap::new(),
        })
    }

    async fn join_agents(&mut self, sites: &[&str], agents_per_site: usize) -> Result<()> {
        for site in sites {
            for n in 1..=agents_per_site {
                let name = agent_name(site, n);
                let dir = self.root.join("agents").join(&name);
                let request = TokenRequest {
                    role: NodeRole::Agent,
                    ttl_ms: Some(JOIN_TOKEN_TTL_MS),
                    single_use: true,
                };
                let token: TokenResponse = self
                    .client
                    .request_json(Route::CreateToken, &request)
                    .await
                    .context("create an agent join token")?
                    .json()?;
                let request = agent::JoinRequest {
                    control_addrs: vec![self.control.quic_addr().to_string()],
                    token: token.token,
                    name: name.clone(),
                    site: site.to_string(),
                    ..agent::JoinRequest::default()
                };
                agent::join(&dir, request)
                    .await
                    .with_context(|| format!("join agent {name}"))?;
                self.start_agent(&dir)?;
            }
        }
        Ok(())
    }

    /// Restarts the cluster kept under `root`: the control node from its data dir, every
    /// agent from its cache (their workloads start again from the cached view).
    ///
    /// # Errors
    /// A missing or broken data dir, or ports that are taken now.
    pub async fn resume(root: &Path) -> Result<Self> {
        let data_dir = root.join("control");
        let control = bounded(
            "restart the control node",
            CONTROL_START_TIMEOUT,
            Box::pin(ControlNode::run(&data_dir, ControlConfig::default())),
        )
        .await?
        .with_context(|| format!("restart the control node in {}", data_dir.display()))?;
        let mut cluster = Self::around(root, control)?;
        let agents_dir = root.join("agents");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&agents_dir)
            .with_context(|| format!("read {}", agents_dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.join(agent::AGENT_FILE).exists())
            .collect();
        dirs.sort();
        for dir in dirs {
            if let Err(error) = cluster.start_agent(&dir) {
                cluster.stop(false).await;
                return Err(error);
            }
        }
        Ok(cluster)
    }

    fn start_agent(&mut self, dir: &Path) -> Result<()> {
        let identity = agent::load_identity(dir)?;
        let switch = self.switches.entry(identity.site.clone()).or_default();
        let opened = Agent::open(dir, agent_options(switch.clone()))
            .with_context(|| format!("start agent {}", identity.name))?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(opened.serve(cancel.clone()));
        self.agents.push(LocalAgent {
            name: identity.name,
            site: identity.site,
            node_id: identity.node_id,
            dir: dir.to_owned(),
            cancel,
            task: Some(task),
        });
        self.agents
            .sort_by(|a, b| (&a.site, &a.name).cmp(&(&b.site, &b.name)));
        Ok(())
    }

    /// The HTTP API client (admin certificate).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The control node.
    pub fn control(&self) -> &ControlNode {
        &self.control
    }

    /// The agents of `site`.
    pub fn agents_in<'a>(&'a self, site: &'a str) -> impl Iterator<Item = &'a LocalAgent> + 'a {
        self.agents.iter().filter(move |a| a.site == site)
    }

    /// The fault switch of `site`.
    ///
    /// # Errors
    /// No such site.
    pub fn switch(&self, site: &str) -> Result<&FaultSwitch> {
        self.switches
            .get(site)
            .ok_or_else(|| anyhow!("no site {site} in the local cluster"))
    }

    /// Cuts `site` off: its agents' QUIC datagrams are dropped both ways.
    ///
    /// # Errors
    /// No such site.
    pub fn cut(&self, site: &str) -> Result<()> {
        self.switch(site)?.cut();
        Ok(())
    }

    /// Lets `site`'s datagrams through again.
    ///
    /// # Errors
    /// No such site.
    pub fn heal(&self, site: &str) -> Result<()> {
        self.switch(site)?.heal();
        Ok(())
    }

    /// Whether `agent` runs exactly what control assigns to it: every replica placed on its
    /// node is running with its service's current workload hash, nothing else runs, and no
    /// rolling update is still under way. Returns the agent's status when so.
    ///
    /// # Errors
    /// The API could not be asked.
    pub async fn converged(&self, agent: &LocalAgent) -> Result<Option<AgentStatus>> {
        let services: Vec<ServiceInfo> = self.client.request(Route::ListServices).await?.json()?;
        if services.iter().any(|s| s.rolling_out.is_some()) {
            return Ok(None);
        }
        let mut wanted = BTreeMap::new();
        for service in &services {
            let route = Route::ServiceReplicas {
                service: service.spec.name.as_str(),
            };
            let replicas: Vec<ReplicaInfo> = self.client.request(route).await?.json()?;
            let hash = format!("{:016x}", service.spec.workload_hash());
            for replica in replicas.into_iter().filter(|r| r.node == agent.node_id) {
                wanted.insert(replica.id, hash.clone());
            }
        }
        let Some(status) = agent.status() else {
            return Ok(None);
        };
        let running: BTreeMap<String, String> = running(&status)
            .map(|r| {
                (
                    r.replica.to_string(),
                    r.workload_hash.clone().unwrap_or_default(),
                )
            })
            .collect();
        Ok((running == wanted).then_some(status))
    }

    /// Stops the agents, then (with `stop_workloads`) every workload they recorded, then the
    /// control node. Goes on past failures and reports them.
    pub async fn stop(mut self, stop_workloads: bool) -> Stopped {
        let mut stopped = Stopped::default();
        for switch in self.switches.values() {
            switch.heal();
        }
        for agent in &mut self.agents {
            agent.cancel.cancel();
        }
        for agent in &mut self.agents {
            let Some(task) = agent.task.take() else {
                continue;
            };
            match tokio::time::timeout(AGENT_STOP_TIMEOUT, task).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(error))) => stopped
                    .problems
                    .push(format!("agent {}: {error}", agent.name)),
                Ok(Err(error)) => stopped
                    .problems
                    .push(format!("agent {}: task failed: {error}", agent.name)),
                Err(_) => stopped.problems.push(format!(
                    "agent {} did not stop within {AGENT_STOP_TIMEOUT:?}",
                    agent.name
                )),
            }
        }
        if stop_workloads {
            for agent in &self.agents {
                match stop_agent_workloads(agent).await {
                    Ok(workloads) => stopped
                        .workloads
                        .extend(workloads.into_iter().map(|w| (agent.name.clone(), w))),
                    Err(error) => stopped.problems.push(format!(
                        "agent {}: cannot stop its workloads: {error:#}",
                        agent.name
                    )),
                }
            }
        }
        if tokio::time::timeout(CONTROL_STOP_TIMEOUT, self.control.shutdown())
            .await
            .is_err()
        {
            stopped.problems.push(format!(
                "the control node did not shut down within {CONTROL_STOP_TIMEOUT:?}"
            ));
        }
        stopped
    }
}

/// Replicas the agent reports running, with a pid.
pub fn running(status: &AgentStatus) -> impl Iterator<Item = &agent::LocalReplica> {
    status
        .replicas
        .iter()
        .filter(|r| r.state == TaskState::Running && r.pid.is_some())
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

async fn stop_agent_workloads(agent: &LocalAgent) -> Result<Vec<StoppedWorkload>> {
    // The agent's cache is released when the last handle of its task goes; give it a moment.
    let deadline = Instant::now() + CACHE_RELEASE_TIMEOUT;
    let options = agent_options(FaultSwitch::new());
    loop {
        match offline::stop_workloads(&agent.dir, &options).await {
            Err(AgentError::Cache(warren_edge_agent::cache::CacheError::Locked { .. }))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            other => return Ok(other?),
        }
    }
}

fn client_for(admin_conf: &Path) -> Result<Client> {
    Client::from_args(&ClientArgs {
        config: Some(admin_conf.to_owned()),
        api: Vec::new(),
        timeout: None,
        connect_timeout: None,
    })
}

/// Runs `future` for at most `timeout`.
///
/// # Errors
/// The timeout, naming `what`.
pub async fn bounded<T>(
    what: &str,
    timeout: Duration,
    future: impl Future<Output = T>,
) -> Result<T> {
    match tokio::time::timeout(timeout, future).await {
        Ok(value) => Ok(value),
        Err(_) => bail!("{what}: no result within {}", seconds(timeout)),
    }
}

/// `12.3 s`.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// How often a long wait reports progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Polls `check` every [`POLL_INTERVAL`] until it yields `Some`, calling `progress` with the
/// time waited every [`PROGRESS_INTERVAL`]. Returns the value and the time it took. An error
/// from `check` counts as "not yet" (the API may be briefly busy) and is named on timeout.
///
/// # Errors
/// `timeout` passed, naming `what` and the last error seen.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut progress: impl FnMut(Duration),
    mut check: F,
) -> Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let mut next_report = PROGRESS_INTERVAL;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(found)) => return Ok((found, started.elapsed())),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        let waited = started.elapsed();
        if waited >= timeout {
            let detail = last_error
                .map(|e| format!(" (last error: {})", crate::output::one_line(&e)))
                .unwrap_or_default();
            bail!(
                "timed out after {} waiting for {what}{detail}",
                seconds(timeout)
            );
        }
        if waited >= next_report {
            progress(waited);
            next_report += PROGRESS_INTERVAL;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
