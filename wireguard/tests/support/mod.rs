//! Fixtures for the namespace tests: prerequisites and skipping, network namespaces on a
//! bridge (cleaned up on drop, also when a test fails), and `wg-node` child processes.
#![allow(dead_code)] // Each test binary uses its own part of the fixtures.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use warren_wireguard::{PrivateKey, PublicKey};

/// The UDP port every node listens on (each is alone in its namespace).
pub const PORT: u16 = 51820;

/// Namespace tests share two busy cores; one at a time keeps their timings meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the lock that runs namespace tests one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the test can run: root, a usable TUN, `ip`, and `tools` (the pseudo-tool
/// "wg-node" is the example binary `cargo test` builds). Prints `skipped: why` and returns false when a prerequisite is
/// missing; under `CI=true` a missing prerequisite fails the test instead.
pub fn ready(tools: &[&str]) -> bool {
    let Err(reason) = check_prerequisites(tools) else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI: {reason}");
    }
    #[allow(clippy::print_stderr)] // Saying why a test skipped is this helper's job.
    {
        eprintln!("skipped: {reason}");
    }
    false
}

fn check_prerequisites(tools: &[&str]) -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        return Err("not running as root (network namespaces need it)".to_string());
    }
    warren_wireguard::tun_available()?;
    for tool in ["ip"].iter().chain(tools) {
        if *tool == "wg-node" {
            let node = wg_node_path();
            if !node.exists() {
                let shown = node.display();
                return Err(format!("{shown} is not built (cargo test builds it)"));
            }
        } else if which(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// The `wg-node` example beside this test binary: target/<profile>/examples/wg-node.
pub fn wg_node_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    profile_dir.join("examples").join("wg-node")
}

/// Runs a command and fails with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} {args:?}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Runs `body` on a thread that has entered `netns`; the thread's sockets and TUN devices,
/// and those of threads it starts, live there.
pub fn in_netns<T: Send + 'static>(
    netns: &Netns,
    body: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{}", netns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).context("open netns")?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        body()
    })
    .join()
    .expect("netns thread")
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> anyhow::Result<Netns> {
        // A namespace left by an earlier crashed run of this pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name])?;
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// `ip -n NAME args…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Pings `target` from here; returns (transmitted, received).
    pub fn ping(&self, target: Ipv4Addr, args: &[&str]) -> anyhow::Result<(u32, u32)> {
        let output = self
            .command("ping")
            .args(args)
            .arg(target.to_string())
            .output()
            .context("run ping")?;
        parse_ping(&String::from_utf8_lossy(&output.stdout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Reads "N packets transmitted, M received" from ping's summary.
pub fn parse_ping(stdout: &str) -> anyhow::Result<(u32, u32)> {
    let line = stdout
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in {stdout:?}"))?;
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|word| !word.is_empty())
        .take(2)
        .map(|word| word.parse().expect("digits"))
        .collect();
    ensure!(numbers.len() == 2, "odd ping summary {line:?}");
    Ok((numbers[0], numbers[1]))
}

/// Hosts on one Ethernet segment: a bridge in its own namespace and one namespace per host,
/// each with `eth0` at 192.168.50.(i+1)/24.
#[derive(Debug)]
pub struct Lan {
    pub hosts: Vec<Netns>,
    switch: Netns,
}

impl Lan {
    pub fn new(tag: &str, n_hosts: usize) -> anyhow::Result<Lan> {
        let pid = std::process::id();
        let switch = Netns::new(format!("wg{tag}-sw-{pid}"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            switch,
        };
        for host_idx in 0..n_hosts {
            let host = Netns::new(format!("wg{tag}-{host_idx}-{pid}"))?;
            let port = format!("p{host_idx}");
            lan.switch.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
            ])?;
            lan.switch
                .ip(&["link", "set", &port, "master", "br0", "up"])?;
            let address = format!("{}/24", Lan::underlay(host_idx));
            host.ip(&["addr", "add", &address, "dev", "eth0"])?;
            host.ip(&["link", "set", "eth0", "up"])?;
            lan.hosts.push(host);
        }
        Ok(lan)
    }

    /// Host `host_idx`'s address on the segment.
    pub fn underlay(host_idx: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 50, host_idx as u8 + 1)
    }
}

/// Node `node_idx`'s overlay address: 10.42.(i+1).1 in 10.42.0.0/16.
pub fn overlay(node_idx: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, node_idx as u8 + 1, 1)
}

/// One peer line of a wg-node config.
#[derive(Debug, Clone)]
pub struct PeerLine {
    pub label: String,
    pub keys: Vec<PublicKey>,
    pub allowed: (Ipv4Addr, u8),
    pub endpoint: Option<SocketAddr>,
}

impl PeerLine {
    /// Node `node_idx` of a [`Lan`] as a peer: its /24 and its underlay endpoint.
    pub fn lan_node(node_idx: usize, keys: Vec<PublicKey>) -> PeerLine {
        let net = overlay(node_idx).octets();
        PeerLine {
            label: format!("n{node_idx}"),
            keys,
            allowed: (Ipv4Addr::new(net[0], net[1], net[2], 0), 24),
            endpoint: Some(SocketAddr::from((Lan::underlay(node_idx), PORT))),
        }
    }

    fn render(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(PublicKey::to_base64).collect();
        let endpoint = self.endpoint.map_or("-".to_string(), |e| e.to_string());
        let (net, len) = self.allowed;
        format!(
            "peer {} {} {net}/{len} {endpoint} -\n",
            self.label,
            keys.join(",")
        )
    }
}

/// A `wg-node run` child in a namespace, killed on drop.
#[derive(Debug)]
pub struct Node {
    pub netns_name: String,
    pub overlay: Ipv4Addr,
    config_path: PathBuf,
    interface: String,
    child: Option<Child>,
    /// The tag (first line) of the config last written.
    written: std::sync::Mutex<String>,
}

impl Node {
    pub fn new(netns: &Netns, dir: &Path, label: &str, overlay: Ipv4Addr) -> Node {
        Node {
            netns_name: netns.name.clone(),
            overlay,
            config_path: dir.join(format!("{label}.conf")),
            interface: "warren0".to_string(),
            child: None,
            written: std::sync::Mutex::new(String::new()),
        }
    }

    /// Writes the node's config (the running node picks it up within 100 ms).
    pub fn write_config(&self, keys: &[&PrivateKey], peers: &[PeerLine]) -> anyhow::Result<()> {
        self.write_config_with_comment(keys, peers, "")
    }

    /// Like [`Node::write_config`], with a comment line so the file differs from one with the
    /// same settings (the node re-applies a file whenever its text changes).
    pub fn write_config_with_comment(
        &self,
        keys: &[&PrivateKey],
        peers: &[PeerLine],
        comment: &str,
    ) -> anyhow::Result<()> {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("# config {generation} {comment}");
        let mut text = format!("{tag}\n");
        *self.written.lock().unwrap() = tag;
        text.push_str(&format!(
            "name {}\naddress {}/16\nlisten_port {PORT}\n",
            self.interface, self.overlay
        ));
        for key in keys {
            text.push_str(&format!("private_key {}\n", key.to_base64()));
        }
        for peer in peers {
            text.push_str(&peer.render());
        }
        // Write then rename, so the node never reads half a file.
        let temp = self.config_path.with_extension("tmp");
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &self.config_path)?;
        Ok(())
    }

    fn stats_path(&self) -> PathBuf {
        let mut path = self.config_path.clone().into_os_string();
        path.push(".stats");
        path.into()
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.stats_path());
        let log = std::fs::File::create(self.config_path.with_extension("log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns_name])
            .arg(wg_node_path())
            .arg("run")
            .arg(&self.config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn wg-node")?;
        self.child = Some(child);
        if !wait_until(Duration::from_secs(5), || self.stats_path().exists()) {
            bail!("wg-node did not come up: {}", self.log());
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config_path.with_extension("log")).unwrap_or_default()
    }

    /// The node's last stats file.
    /// Waits until the running node applied the config last written (its stats name it).
    pub fn wait_applied(&self) -> anyhow::Result<()> {
        let tag = self.written.lock().unwrap().clone();
        let wanted = format!("applied {tag}");
        let applied = wait_until(Duration::from_secs(5), || {
            self.stats().lines().next() == Some(wanted.as_str())
        });
        anyhow::ensure!(
            applied,
            "{} did not apply {tag:?}: {}",
            self.interface,
            self.stats()
        );
        Ok(())
    }

    pub fn stats(&self) -> String {
        std::fs::read_to_string(self.stats_path()).unwrap_or_default()
    }

    /// `field` (e.g. "handshakes") of peer `label` in the stats, if listed.
    pub fn peer_stat(&self, label: &str, field: &str) -> Option<String> {
        let stats = self.stats();
        let line = stats
            .lines()
            .find(|line| line.starts_with(&format!("peer {label} ")))?;
        if field == "key" {
            return line.split_whitespace().nth(2).map(str::to_string);
        }
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{field}=")))
            .map(str::to_string)
    }

    /// The device's invalid packet count.
    pub fn invalid_packets(&self) -> u64 {
        self.stats()
            .lines()
            .find_map(|line| line.strip_prefix("invalid "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a TCP echo server in `netns` on `address`; killed on drop.
pub struct EchoServer(Child);

impl EchoServer {
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<EchoServer> {
        let child = netns
            .command(wg_node_path().to_str().expect("utf-8 path"))
            .args(["echo-server", &address.to_string()])
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(EchoServer(child))
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `n_bytes` through a TCP echo at `address` from `netns` and checks they come back.
pub fn tcp_echo(netns: &Netns, address: SocketAddr, n_bytes: usize) -> anyhow::Result<()> {
    let output = netns
        .command(wg_node_path().to_str().expect("utf-8 path"))
        .args(["echo-client", &address.to_string(), &n_bytes.to_string()])
        .output()?;
    ensure!(
        output.status.success(),
        "tcp echo to {address} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
