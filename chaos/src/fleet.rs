//! A fleet: control nodes and agents grouped into sites, each a real `warren` process in its
//! own namespace, started through the CLI exactly as an operator would.
//!
//! Control nodes are `c1`, `c2`, … in site [`CONTROL_SITE`]; agents are `<site>-<n>`. The
//! bridge namespace doubles as the operator's seat: it has [`OPERATOR_ADDR`] on `br0`, so CLI
//! commands run there reach every node and are never caught by a node's block rules unless
//! those rules name the operator. Each node's files are `<run dir>/<node>/` (`data/` and
//! `warren.log`). The fleet also keeps the delay holders that `Delay` faults start in nodes'
//! namespaces (their output goes to `<run dir>/<node>/delay-holder.log`).
//!
//! Here: the nodes, bringing them up, stopping and restarting them, and teardown. Beside it:
//! - `spec`: [`FleetSpec`], the shape of a fleet, checked before anything is built;
//! - `operator`: the operator's seat: CLI commands, API addresses, the admin config;
//! - `holders`: the delay holders kept in nodes' namespaces;
//! - `containerd`: each agent's own containerd, in fleets whose agents run containers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::Signal;

use crate::delay::{DelaySpec, Holder};
use crate::firewall::{Block, Firewall};
use crate::netns::{self, Host, Network};
use crate::run::{RunId, RunRecord};

mod containerd;
mod holders;
mod operator;
mod spec;

use containerd::NodeContainerd;
pub use containerd::forget_containers;
pub use operator::admin_conf_api;
pub use spec::{AgentRuntime, FleetSpec, SiteSpec};

/// Site of the control nodes.
pub const CONTROL_SITE: &str = "central";

/// The operator's address on the bridge (outside the hosts' range).
pub const OPERATOR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);

/// Ports every node uses (each node has its own namespace, so they never clash).
const API_PORT: u16 = 7100;
const QUIC_PORT: u16 = 7101;
const CONTROL_METRICS_PORT: u16 = 9090;
const AGENT_METRICS_PORT: u16 = 9091;

/// How long a graceful stop may take before the process is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often start-up waits poll the log.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Lines `warren` prints once a node is up (docs/cli.md promises them).
const CONTROL_READY: &str = " serving api=";
const AGENT_READY: &str = " running";

/// Where things are and how long to wait.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The `warren` binary.
    pub warren: PathBuf,
    /// Node files and logs go under it; created if missing.
    pub run_dir: PathBuf,
    pub firewall: Firewall,
    /// Where the run is recorded for `cleanup` (normally [`crate::run::REGISTRY_DIR`]).
    pub registry: PathBuf,
    /// How long a node may take to print its ready line.
    pub ready_timeout: Duration,
    /// Set from a signal handler: start-up stops waiting and fails.
    pub cancel: Arc<AtomicBool>,
    /// Extra environment for every agent's `warren` (the self-check's broken-agent knob).
    pub agent_env: Vec<(String, String)>,
    /// The `warren-chaos` binary, run as `delay-holder` inside a namespace for `Delay`
    /// faults (the harness itself: `std::env::current_exe()`).
    pub holder_program: PathBuf,
    /// OCI image-layout tarballs loaded (`warren image load`) into every agent's containerd
    /// when the fleet runs containers, as on an air-gapped box.
    pub images: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Control,
    Agent,
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub site: String,
    pub role: Role,
    pub host: Host,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    process: Option<Child>,
    /// The agent's own containerd, in a fleet that runs containers.
    containerd: Option<NodeContainerd>,
}

impl Node {
    /// The pid of its `warren` process, while the harness has one running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// The pid of its containerd, in a fleet that runs containers.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().and_then(NodeContainerd::pid)
    }
}

/// A running fleet. Dropping it tears it down (best effort); [`Fleet::down`] reports errors.
#[derive(Debug)]
pub struct Fleet {
    run: RunId,
    options: FleetOptions,
    network: Network,
    nodes: Vec<Node>,
    runtime: AgentRuntime,
    /// Running delay holders by node name and block tag, with what they were started with
    /// (a reboot starts them again).
    holders: BTreeMap<(String, String), (u16, DelaySpec, Holder)>,
    torn_down: bool,
}

impl Fleet {
    /// Builds the network and starts every node, waiting until each says it is ready.
    ///
    /// # Errors
    /// When a step fails or times out; whatever was built is torn down first.
    pub fn up(run: RunId, spec: &FleetSpec, options: FleetOptions) -> Result<Fleet> {
        spec.validate()?;
        std::fs::create_dir_all(&options.run_dir)
            .with_context(|| format!("create the run dir {}", options.run_dir.display()))?;
        // Recorded before anything exists, so a crash at any later point is findable.
        RunRecord {
            run_id: run.to_string(),
            harness_pid: std::process::id(),
            run_dir: options.run_dir.clone(),
        }
        .save(&options.registry)?;
        let network = match Network::create(&run) {
            Ok(network) => network,
            Err(error) => {
                let _ = netns::remove_namespaces(&run.prefix());
                let _ = RunRecord::forget(&options.registry, &run);
                return Err(error).context("create the bridge namespace");
            }
        };
        let mut fleet = Fleet {
            run,
            options,
            network,
            nodes: Vec::new(),
            runtime: spec.runtime,
            holders: BTreeMap::new(),
            torn_down: false,
        };
        // On error, `fleet` drops here and tears down what exists.
        fleet.build(spec)?;
        Ok(fleet)
    }

    fn build(&mut self, spec: &FleetSpec) -> Result<()> {
        let cidr = format!("{OPERATOR_ADDR}/24");
        let bridge = self.bridge_netns();
        netns::ip(&["-n", &bridge, "addr", "add", &cidr, "dev", "br0"])?;
        for index in 1..=spec.control {
            let name = format!("c{index}");
            tracing::info!(node = %name, "--- start control node");
            let node = self.add_node(&name, CONTROL_SITE, Role::Control)?;
            if index == 1 {
                self.start_control_init(node)?;
            } else {
                let token = self.token("control")?;
                self.start_control_join(node, &token)?;
            }
        }
        self.take_admin_conf()?;
        for site in &spec.sites {
            for index in 1..=site.agents {
                let name = format!("{}-{index}", site.name);
                tracing::info!(node = %name, site = %site.name, "--- start agent");
                let token = self.token("agent")?;
                let node = self.add_node(&name, &site.name, Role::Agent)?;
                if self.runtime == AgentRuntime::Containerd {
                    self.start_containerd(node)?;
                }
                self.start_agent_join(node, &token)?;
            }
        }
        Ok(())
    }

    fn add_node(&mut self, name: &str, site: &str, role: Role) -> Result<usize> {
        let host = self.network.add_host(name)?;
        let dir = self.options.run_dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        self.nodes.push(Node {
            name: name.to_owned(),
            site: site.to_owned(),
            role,
            host,
            data_dir: dir.join("data"),
            log: dir.join("warren.log"),
            process: None,
            containerd: None,
        });
        Ok(self.nodes.len() - 1)
    }

    fn control_args(node: &Node) -> Vec<String> {
        let addr = node.host.addr;
        [
            "--data-dir".to_owned(),
            node.data_dir.display().to_string(),
            "--name".to_owned(),
            node.name.clone(),
            "--site".to_owned(),
            node.site.clone(),
            "--api".to_owned(),
            format!("0.0.0.0:{API_PORT}"),
            "--quic".to_owned(),
            format!("0.0.0.0:{QUIC_PORT}"),
            "--advertise-api".to_owned(),
            format!("{addr}:{API_PORT}"),
            "--advertise-quic".to_owned(),
            format!("{addr}:{QUIC_PORT}"),
            "--metrics".to_owned(),
            format!("{addr}:{CONTROL_METRICS_PORT}"),
        ]
        .into()
    }

    fn start_control_init(&mut self, index: usize) -> Result<()> {
        let mut args = vec!["control".to_owned(), "init".to_owned()];
        args.extend(Self::control_args(&self.nodes[index]));
        self.spawn(index, &args, CONTROL_READY)
    }

    fn start_control_join(&mut self, index: usize, token: &str) -> Result<()> {
        let mut args = vec!["control".to_owned(), "join".to_owned()];
        args.extend(Self::control_args(&self.nodes[index]));
        args.extend(["--join".to_owned(), self.control_quic_addrs()[0].clone()]);
        args.extend(["--token".to_owned(), token.to_owned()]);
        self.spawn(index, &args, CONTROL_READY)
    }

    /// Starts node `index`'s own containerd and loads the fleet's images into it with
    /// `warren image load`, as an operator does on a box without a registry.
    fn start_containerd(&mut self, index: usize) -> Result<()> {
        let node = &self.nodes[index];
        let dir = self.options.run_dir.join(&node.name).join("containerd");
        let daemon = NodeContainerd::start(&node.host.netns, &dir)
            .with_context(|| format!("start {}'s containerd", node.name))?;
        for image in &self.options.images {
            let output = std::process::Command::new(&self.options.warren)
                .args(["image", "load"])
                .arg(image)
                .arg("--containerd-socket")
                .arg(daemon.socket())
                .stdin(Stdio::null())
                .output()
                .context("run warren image load")?;
            if !output.status.success() {
                bail!(
                    "warren image load {} on {}: {}",
                    image.display(),
                    node.name,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            tracing::info!(node = %node.name, "{}", String::from_utf8_lossy(&output.stdout).trim());
        }
        self.nodes[index].containerd = Some(daemon);
        Ok(())
    }

    fn start_agent_join(&mut self, index: usize, token: &str) -> Result<()> {
        let node = &self.nodes[index];
        let mut args = vec![
            "agent".to_owned(),
            "join".to_owned(),
            "--data-dir".to_owned(),
            node.data_dir.display().to_string(),
            "--control".to_owned(),
            self.control_quic_addrs().join(","),
            "--token".to_owned(),
            token.to_owned(),
            "--name".to_owned(),
            node.name.clone(),
            "--site".to_owned(),
            node.site.clone(),
            "--metrics".to_owned(),
            format!("{}:{AGENT_METRICS_PORT}", node.host.addr),
        ];
        if let Some(daemon) = &node.containerd {
            args.extend([
                "--runtime".to_owned(),
                "containerd".to_owned(),
                "--containerd-socket".to_owned(),
                daemon.socket().display().to_string(),
            ]);
        }
        self.spawn(index, &args, AGENT_READY)
    }

    fn control_quic_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Control)
            .map(|n| format!("{}:{QUIC_PORT}", n.host.addr))
            .collect()
    }

    /// Starts `warren args…` in node `index`'s namespace, output appended to its log, in a
    /// process group of its own (a Ctrl-C at the terminal reaches the harness, which then
    /// stops the fleet in order, not every node at once), and waits for `ready` in the log.
    fn spawn(&mut self, index: usize, args: &[String], ready: &str) -> Result<()> {
        let node = &self.nodes[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("open {}", node.log.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command =
            netns::exec_in(&node.host.netns, &self.options.warren.display().to_string());
        if node.role == Role::Agent {
            command.envs(self.options.agent_env.iter().map(|(k, v)| (k, v)));
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start warren on {}", node.name))?;
        let name = node.name.clone();
        let log_path = node.log.clone();
        self.nodes[index].process = Some(child);
        self.wait_ready(index, &log_path, log_start, ready)
            .with_context(|| format!("node {name} did not come up (log: {})", log_path.display()))
    }

    fn wait_ready(&mut self, index: usize, log: &Path, from: u64, ready: &str) -> Result<()> {
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            let text = read_from(log, from)?;
            if text.lines().any(|line| line.contains(ready)) {
                return Ok(());
            }
            let child = self.nodes[index].process.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait().context("poll the node process")? {
                self.nodes[index].process = None;
                bail!("warren exited ({status}): {}", tail(&text));
            }
            if self.options.cancel.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                bail!(
                    "no ready line within {:?}: {}",
                    self.options.ready_timeout,
                    tail(&text)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    pub fn run_dir(&self) -> &Path {
        &self.options.run_dir
    }

    pub fn firewall(&self) -> Firewall {
        self.options.firewall
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name`.
    ///
    /// # Errors
    /// When there is none.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name} in this fleet"))
    }

    fn node_index(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node {name} in this fleet"))
    }

    /// Installs `block` in `name`'s namespace.
    ///
    /// # Errors
    /// As [`Firewall::block`].
    pub fn block(&self, name: &str, block: &Block) -> Result<()> {
        let node = self.node(name)?;
        self.options.firewall.block(&node.host.netns, block)
    }

    /// Removes the block tagged `tag` from `name`'s namespace.
    ///
    /// # Errors
    /// As [`Firewall::unblock`].
    pub fn unblock(&self, name: &str, tag: &str) -> Result<()> {
        let node = self.node(name)?;
        self.options.firewall.unblock(&node.host.netns, tag)
    }

    /// Sends `signal` to `name`'s `warren` process.
    ///
    /// # Errors
    /// When the node has no running process or the signal cannot be sent.
    pub fn signal(&self, name: &str, signal: Signal) -> Result<()> {
        let node = self.node(name)?;
        let pid = node
            .pid()
            .ok_or_else(|| anyhow!("node {name} has no running process"))?;
        netns::signal(pid, signal)
    }

    /// SIGKILLs `name`'s `warren` process and reaps it. Its workloads keep running.
    ///
    /// # Errors
    /// When the node has no running process.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let index = self.node_index(name)?;
        let mut child = self.nodes[index]
            .process
            .take()
            .ok_or_else(|| anyhow!("node {name} has no running process"))?;
        child.kill().with_context(|| format!("kill node {name}"))?;
        child.wait().with_context(|| format!("reap node {name}"))?;
        Ok(())
    }

    /// Starts `name` again from its data dir (`warren control run` / `warren agent run`),
    /// after its containerd if a power cut took that down too.
    ///
    /// # Errors
    /// When it is still running or does not come up.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let index = self.node_index(name)?;
        if self.nodes[index].process.is_some() {
            bail!("node {name} is still running");
        }
        if let Some(daemon) = self.nodes[index].containerd.as_mut() {
            daemon
                .boot()
                .with_context(|| format!("boot {name}'s containerd"))?;
        }
        let node = &self.nodes[index];
        let data_dir = node.data_dir.display().to_string();
        let (args, ready) = match node.role {
            Role::Control => (
                vec!["control", "run", "--data-dir", &data_dir],
                CONTROL_READY,
            ),
            Role::Agent => (vec!["agent", "run", "--data-dir", &data_dir], AGENT_READY),
        };
        let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        if node.role == Role::Agent {
            args.extend([
                "--metrics".to_owned(),
                format!("{}:{AGENT_METRICS_PORT}", node.host.addr),
            ]);
        }
        self.spawn(index, &args, ready)
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period), kills whatever else
    /// runs in the run's namespaces (workloads), deletes them and forgets the run.
    ///
    /// # Errors
    /// When a namespace could not be removed (`warren-chaos cleanup` retries).
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        tracing::info!(run = %self.run, "--- tear the fleet down");
        // Holders first: each lets what it holds through, so the nodes' last words arrive.
        for ((name, tag), (_, _, holder)) in std::mem::take(&mut self.holders) {
            if let Err(error) = holder.stop() {
                tracing::warn!(node = %name, tag = %tag, error = %format!("{error:#}"), "stop a delay holder");
            }
        }
        // Agents first, then control nodes, in reverse order of start.
        for node in self.nodes.iter_mut().rev() {
            if let Some(child) = node.process.as_mut() {
                // A paused node must be resumed to handle SIGTERM.
                let _ = netns::signal(child.id(), Signal::CONT);
                let _ = netns::signal(child.id(), Signal::TERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(POLL_INTERVAL);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for daemon in self.nodes.iter_mut().filter_map(|n| n.containerd.as_mut()) {
            daemon.stop();
        }
        let removed = self.network.destroy()?;
        tracing::info!(namespaces = removed.len(), "namespaces removed");
        RunRecord::forget(&self.options.registry, &self.run)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            tracing::error!(
                run = %self.run,
                error = %format!("{error:#}"),
                "teardown failed; run `warren-chaos cleanup`"
            );
        }
    }
}

fn read_from(path: &Path, offset: u64) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    file.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seek {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last few lines of a log, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    let tail = lines[start..].join(" | ");
    if tail.is_empty() {
        "(log empty)".to_owned()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail(""), "(log empty)");
        assert_eq!(tail("1\n2\n3\n4\n5\n6\n7"), "3 | 4 | 5 | 6 | 7");
    }
}
