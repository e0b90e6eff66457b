//! Network namespaces, veth pairs and the bridge, driven through `ip`.
//!
//! Layout of one run (`P` = `wchaos-<run id>-`):
//! - namespace `Pbridge` holds the bridge `br0` and the bridge-side veth ends `wc<id>v<n>`;
//! - namespace `P<host>` per host holds `lo` and `eth0`, with `10.77.0.<n+1>/24`.
//!
//! Nothing is created in the root namespace, so deleting a run's namespaces removes every
//! link of the run with them, and the subnet cannot clash with the host's networks.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};

use crate::run::{PREFIX, RunId};

/// Hosts get `10.77.0.1`, `10.77.0.2`, … in order of creation.
pub const SUBNET_BASE: [u8; 3] = [10, 77, 0];

/// Addresses available in the /24 (1..=250; the rest stay free for later use).
pub const MAX_HOSTS: usize = 250;

/// How many times cleanup sweeps a namespace's processes (they may fork while we kill).
const MAX_KILL_ROUNDS: usize = 20;

/// Runs `ip args…` and returns its stdout.
///
/// # Errors
/// When `ip` cannot be started or exits non-zero (the error carries its stderr).
pub fn ip(args: &[&str]) -> Result<String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A command that runs `program` inside namespace `netns`.
pub fn exec_in(netns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, program]);
    command
}

/// Names of every network namespace (`ip netns list`).
///
/// # Errors
/// When `ip netns list` fails.
pub fn list_namespaces() -> Result<Vec<String>> {
    let text = ip(&["netns", "list"])?;
    Ok(parse_netns_list(&text))
}

/// `ip netns list` prints `name` or `name (id: N)` per line.
fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Pids of every process in `netns`.
///
/// # Errors
/// When `ip netns pids` fails (e.g. the namespace is gone).
pub fn pids_in(netns: &str) -> Result<Vec<u32>> {
    let text = ip(&["netns", "pids", netns])?;
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
///
/// # Errors
/// When the kernel refuses for another reason (permissions).
pub fn signal(pid: u32, signal: Signal) -> Result<()> {
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        bail!("pid {pid} is not a process id");
    };
    match rustix::process::kill_process(raw, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("send {signal:?} to pid {pid}")),
    }
}

/// SIGKILLs every process in `netns` (workloads included) until none is left.
///
/// # Errors
/// When a sweep fails, or processes are still there after `MAX_KILL_ROUNDS` sweeps.
pub fn kill_all_in(netns: &str) -> Result<()> {
    for _ in 0..MAX_KILL_ROUNDS {
        let pids = pids_in(netns)?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            signal(pid, Signal::KILL)?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("processes in namespace {netns} survive SIGKILL")
}

/// Kills the processes of and deletes every namespace whose name starts with `prefix`.
/// Returns the names it removed. Keeps going after a failure and reports the first one.
///
/// # Errors
/// When a namespace could not be emptied or deleted.
pub fn remove_namespaces(prefix: &str) -> Result<Vec<String>> {
    assert!(
        prefix.starts_with(PREFIX),
        "only this harness's namespaces are ever removed"
    );
    let mut removed = Vec::new();
    let mut first_error = None;
    for name in list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
    {
        let result = kill_all_in(&name).and_then(|()| ip(&["netns", "delete", &name]).map(drop));
        match result {
            Ok(()) => removed.push(name),
            Err(error) => {
                tracing::warn!(netns = %name, error = %format!("{error:#}"), "cleanup failed");
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(removed),
    }
}

/// One host on the run's bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name inside the run (`c1`, `a-1`).
    pub name: String,
    /// Its namespace (`wchaos-<id>-<name>`).
    pub netns: String,
    pub addr: Ipv4Addr,
}

/// The bridge namespace and the hosts on it. Created piece by piece; [`Network::destroy`]
/// (or `cleanup`) removes whatever exists.
#[derive(Debug)]
pub struct Network {
    run: RunId,
    bridge_netns: String,
    hosts: Vec<Host>,
}

impl Network {
    /// Creates the bridge namespace with `br0` up.
    ///
    /// # Errors
    /// When `ip` fails (the namespace may then exist: destroy the network).
    pub fn create(run: &RunId) -> Result<Network> {
        let bridge_netns = format!("{}bridge", run.prefix());
        ip(&["netns", "add", &bridge_netns])?;
        let network = Network {
            run: run.clone(),
            bridge_netns,
            hosts: Vec::new(),
        };
        let ns = network.bridge_netns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// Adds a host: its namespace, a veth from its `eth0` to the bridge, the next address.
    ///
    /// # Errors
    /// When the name is taken, the subnet is full, or `ip` fails.
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        if self.hosts.iter().any(|h| h.name == name) {
            bail!("host {name} exists already");
        }
        let index = self.hosts.len();
        if index >= MAX_HOSTS {
            bail!("at most {MAX_HOSTS} hosts fit the subnet");
        }
        let last = u8::try_from(index + 1).expect("MAX_HOSTS < 255");
        let [a, b, c] = SUBNET_BASE;
        let host = Host {
            name: name.to_owned(),
            netns: format!("{}{name}", self.run.prefix()),
            addr: Ipv4Addr::new(a, b, c, last),
        };
        // Interface names have 15 bytes at most: `wc` + 6 + `v` + index fits.
        let bridge_end = format!("wc{}v{index}", self.run);
        let ns = host.netns.as_str();
        let cidr = format!("{}/24", host.addr);
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &bridge_end,
            "netns",
            &self.bridge_netns,
        ])?;
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        let br = self.bridge_netns.as_str();
        ip(&["-n", br, "link", "set", &bridge_end, "master", "br0"])?;
        ip(&["-n", br, "link", "set", &bridge_end, "up"])?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// The hosts, in order of creation.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The run this network belongs to.
    pub fn run(&self) -> &RunId {
        &self.run
    }

    /// Kills every process in the run's namespaces and deletes them.
    ///
    /// # Errors
    /// As [`remove_namespaces`].
    pub fn destroy(&self) -> Result<Vec<String>> {
        remove_namespaces(&self.run.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_list_with_and_without_ids() {
        let text = "wchaos-0a1b2c-a-1 (id: 2)\nwchaos-0a1b2c-bridge (id: 0)\nplain\n\n";
        assert_eq!(
            parse_netns_list(text),
            ["wchaos-0a1b2c-a-1", "wchaos-0a1b2c-bridge", "plain"]
        );
    }
}
