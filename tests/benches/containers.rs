//! Container runtime figures with the real `warren` binary, next to the process runtime's in
//! the same run: service create → replica running (the image already in the box's store),
//! an offline boot with 10 cached replicas (the box restarted: no container, no process, no
//! control plane), and the agent's memory while it holds 50 replicas. Also the time
//! `warren image load` takes for the test image, and (with Debian's `docker-registry`) a
//! service create → running that pulls a ~50 MB image from a loopback registry.
//!
//! It prints figures and asserts nothing about speed. Run it as root on a box with containerd,
//! runc and busybox-static, with
//! `cargo build --release -p warren-cli && cargo bench -p warren-tests --bench containers`.
//! The control node runs in this process; two agents run as `warren agent run` subprocesses,
//! one with `--runtime containerd` on a containerd of the bench's own (own config, root, state
//! and socket), one with the process runtime; the image is a busybox built from the host's
//! `/bin/busybox` (one 2 MB layer). `WARREN_BIN` names the binary when it is not next to the
//! bench's executable. Without root or containerd it says why and exits 0.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod fixtures;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use warren_api::{
    Constraint, ImageSpec, ProcessSpec, ServiceMode, ServiceName, ServiceSpec, TaskState, Workload,
};
use warren_control::Op;
use warren_edge_agent::runtime::containerd::testkit::{
    Containerd, Registry, missing_prerequisite, push_busybox_with_payload, write_busybox_layout,
};
use warren_edge_agent::runtime::containerd::{
    Connection, DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER, PullProgress, pull,
};

use fixtures::*;

const IMAGE: &str = "warren.bench/busybox:1";
/// Service creates measured per runtime.
const CREATES: usize = 20;
/// Replicas cached for the offline boot.
const BOOT_REPLICAS: u32 = 10;
/// Replicas held for the memory reading.
const HELD_REPLICAS: u32 = 50;
/// The pulled image's second layer.
const PULL_PAYLOAD_BYTES: usize = 50 * 1000 * 1000;

fn main() -> anyhow::Result<()> {
    if let Some(why) = missing_prerequisite() {
        println!("containers bench skipped: {why}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(run())
}

/// The two agents: which node name and data dir each has, and how it is started.
struct Side {
    name: &'static str,
    dir: std::path::PathBuf,
    flags: Vec<String>,
}

impl Side {
    /// `ctr` or `proc`.
    fn short(&self) -> &'static str {
        if self.flags.len() > 2 { "ctr" } else { "proc" }
    }

    /// This side's name for a service called `name`.
    fn service(&self, name: &str) -> String {
        format!("{name}-{}", self.short())
    }

    fn spawn(&self, bin: &Path) -> anyhow::Result<AgentProcess> {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        AgentProcess::spawn_with(bin, &self.dir, &flags)
    }

    /// A service of `replicas` on this side's node: the test image on the containerd node,
    /// `sleep` on the process node.
    fn spec(&self, name: &str, replicas: u32) -> anyhow::Result<ServiceSpec> {
        let workload = if self.short() == "proc" {
            Workload::Process(ProcessSpec {
                command: vec!["sleep".into(), "100000".into()],
                working_dir: None,
            })
        } else {
            Workload::Image(ImageSpec {
                reference: IMAGE.into(),
                args: Vec::new(),
            })
        };
        // Each side's services have names of their own: one spec per name in the cluster.
        let name = format!("{name}-{}", self.short());
        let mut spec = ServiceSpec::new(ServiceName::new(&name)?, workload);
        spec.mode = ServiceMode::Replicated { replicas };
        spec.update.parallelism = replicas.max(1);
        spec.placement.constraints = vec![Constraint::parse(&format!("node.name=={}", self.name))?];
        Ok(spec)
    }
}

/// How many of `service`'s replicas the agent's status shows running.
fn running_of(agent: &AgentProcess, service: &str) -> usize {
    agent.status().map_or(0, |status| {
        status
            .replicas
            .iter()
            .filter(|r| r.replica.service.as_str() == service && r.state == TaskState::Running)
            .count()
    })
}

/// Waits until `count` of `service`'s replicas run; a timeout carries the agent's log tail.
async fn wait_running(agent: &mut AgentProcess, service: &str, count: usize) -> anyhow::Result<()> {
    agent
        .wait_status(&format!("{count} of {service} running"), |status| {
            let running = status
                .replicas
                .iter()
                .filter(|r| r.replica.service.as_str() == service && r.state == TaskState::Running)
                .count();
            (running == count).then_some(())
        })
        .await
}

async fn run() -> anyhow::Result<()> {
    warren_transport::install_crypto_provider();
    let started = *STARTED.get_or_init(Instant::now);
    let bin = warren_binary()?;
    let root = tempfile::tempdir().context("create the bench's temp dir")?;
    let root = root.path();
    let mut daemon = Containerd::start(&root.join("containerd")).context("start containerd")?;
    let socket = daemon.socket().to_owned();

    progress("build and load the test image");
    let tarball = root.join("busybox.tar");
    write_busybox_layout(&tarball, IMAGE).context("build the busybox image")?;
    let load_started = Instant::now();
    let loaded = std::process::Command::new(&bin)
        .args(["image", "load", "--containerd-socket"])
        .arg(&socket)
        .arg(&tarball)
        .output()
        .context("warren image load")?;
    let load = load_started.elapsed();
    ensure!(loaded.status.success(), "image load: {loaded:?}");

    let cluster = Cluster::start(root, "cluster").await?;
    let (ctr_dir, _) = cluster.join("edge-ctr").await;
    let (proc_dir, _) = cluster.join("edge-proc").await;
    let sides = [
        Side {
            name: "edge-ctr",
            dir: ctr_dir,
            flags: vec![
                "--wireguard".into(),
                "off".into(),
                "--runtime".into(),
                "containerd".into(),
                "--containerd-socket".into(),
                socket.display().to_string(),
            ],
        },
        Side {
            name: "edge-proc",
            dir: proc_dir,
            flags: vec!["--wireguard".into(), "off".into()],
        },
    ];
    let mut agents = Vec::new();
    for side in &sides {
        agents.push(side.spawn(&bin)?);
    }

    // 1. Create → running, one service at a time.
    let mut creates: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    for (side, (agent, samples)) in sides.iter().zip(agents.iter_mut().zip(&mut creates)) {
        progress(&format!("{CREATES} creates on {}", side.name));
        for i in 0..CREATES {
            let name = format!("c{i}");
            let service = side.service(&name);
            let began = Instant::now();
            cluster
                .propose(Op::PutService(side.spec(&name, 1)?))
                .await?;
            wait_running(agent, &service, 1).await?;
            samples.push(began.elapsed());
            cluster
                .propose(Op::RemoveService(ServiceName::new(&service)?))
                .await?;
            poll_until("the replica gone", || {
                (running_of(agent, &service) == 0).then_some(())
            })
            .await?;
        }
    }

    // 2. Memory with 50 replicas held.
    let mut memory = Vec::new();
    for (side, agent) in sides.iter().zip(&mut agents) {
        progress(&format!("{HELD_REPLICAS} replicas on {}", side.name));
        let idle = proc_status_kib(agent.pid(), "VmRSS");
        cluster
            .propose(Op::PutService(side.spec("held", HELD_REPLICAS)?))
            .await?;
        let held = side.service("held");
        wait_running(agent, &held, HELD_REPLICAS as usize).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        memory.push((idle, proc_status_kib(agent.pid(), "VmRSS")));
        cluster
            .propose(Op::RemoveService(ServiceName::new(&held)?))
            .await?;
        poll_until("held gone", || {
            (running_of(agent, &held) == 0).then_some(())
        })
        .await?;
    }

    let pull = measure_pull(root, &socket, &cluster, &mut agents[0]).await?;

    // 3. Offline boot: 10 replicas cached, the box restarted with no control plane.
    for (side, agent) in sides.iter().zip(&mut agents) {
        cluster
            .propose(Op::PutService(side.spec("boot", BOOT_REPLICAS)?))
            .await?;
        wait_running(agent, &side.service("boot"), BOOT_REPLICAS as usize).await?;
    }
    progress("power cut: agents, workloads, containerd and control go down");
    let process_pids = agents[1]
        .status()
        .map(|s| held_pids(&s))
        .unwrap_or_default();
    for agent in agents.drain(..) {
        agent.stop().await?;
    }
    signal("KILL", &process_pids)?;
    wait_gone("the process workloads", &process_pids).await?;
    // A reboot leaves no task behind (containerd's state is on tmpfs).
    daemon
        .reboot(DEFAULT_NAMESPACE)
        .context("reboot containerd")?;
    cluster.control.shutdown().await;
    let mut boots = Vec::new();
    for side in &sides {
        progress(&format!("offline boot of {}", side.name));
        let began = Instant::now();
        let mut agent = side.spawn(&bin)?;
        wait_running(&mut agent, &side.service("boot"), BOOT_REPLICAS as usize).await?;
        boots.push(began.elapsed());
        agent.stop().await?;
    }
    daemon.remove_everything(DEFAULT_NAMESPACE);
    let _ = signal("KILL", &workloads_under(root));

    print(load, &creates, &memory, &boots);
    match pull {
        Some(pull) => {
            println!(
                "pull of a {:.1} MB image (2 layers) from a loopback registry into containerd, \
                 unpacked (the agent's pull, alone): {}",
                pull.bytes as f64 / 1e6,
                ms(pull.alone)
            );
            println!(
                "service create -> running with that image not on the box (pull, unpack, and \
                 the restart policy's next attempt): {}",
                ms(pull.service)
            );
        }
        None => println!("pull: skipped (docker-registry is not installed)"),
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The pull figures.
struct Pull {
    /// The image's layers.
    bytes: u64,
    /// The agent's pull function alone, into a namespace of the bench's own.
    alone: Duration,
    /// A service create → running on the containerd node, the image not there.
    service: Duration,
}

/// An image only in a loopback registry (busybox and a 50 MB layer): pulled alone with the
/// agent's pull into a namespace of the bench's, then by a service created on the containerd
/// node. `None` without `docker-registry`.
async fn measure_pull(
    root: &Path,
    socket: &Path,
    cluster: &Cluster,
    agent: &mut AgentProcess,
) -> anyhow::Result<Option<Pull>> {
    if Registry::missing().is_some() {
        return Ok(None);
    }
    progress("push two ~50 MB images to a loopback registry");
    let registry = Registry::start(&root.join("registry")).context("start docker-registry")?;
    // Two images whose big layers differ: containerd's content store is shared by every
    // namespace, so a second pull of the same layers would fetch nothing.
    let alone_ref = format!("{}/bench/alone:1", registry.addr());
    let reference = format!("{}/bench/big:1", registry.addr());
    let bytes = push_busybox_with_payload(&reference, PULL_PAYLOAD_BYTES, 1)
        .await
        .context("push the image")?;
    push_busybox_with_payload(&alone_ref, PULL_PAYLOAD_BYTES, 2)
        .await
        .context("push the image")?;
    progress("pull one alone");
    let conn = Connection::connect(socket, "warren-bench-pull").await?;
    let began = Instant::now();
    pull(
        &conn,
        DEFAULT_SNAPSHOTTER,
        &alone_ref,
        None,
        &PullProgress::default(),
    )
    .await?;
    let alone = began.elapsed();
    progress("create a service that pulls the other");
    let mut spec = ServiceSpec::new(
        ServiceName::new("pulled")?,
        Workload::Image(ImageSpec {
            reference,
            args: vec![],
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas: 1 };
    spec.placement.constraints = vec![Constraint::parse("node.name==edge-ctr")?];
    let began = Instant::now();
    cluster.propose(Op::PutService(spec)).await?;
    wait_running(agent, "pulled", 1).await?;
    let service = began.elapsed();
    cluster
        .propose(Op::RemoveService(ServiceName::new("pulled")?))
        .await?;
    poll_until("pulled gone", || {
        (running_of(agent, "pulled") == 0).then_some(())
    })
    .await?;
    Ok(Some(Pull {
        bytes,
        alone,
        service,
    }))
}

fn print(
    load: Duration,
    creates: &[Vec<Duration>],
    memory: &[(Option<u64>, Option<u64>)],
    boots: &[Duration],
) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("containers bench: {cpus} cores, one control node in-process, agents as subprocesses");
    println!(
        "warren image load of the test image (one 2 MB layer): {}",
        ms(load)
    );
    println!(
        "service create -> replica running (image in the store; one replica, nothing else held):"
    );
    table_head();
    row("containerd runtime", &creates[0]);
    row("process runtime", &creates[1]);
    println!("agent RSS, idle -> holding {HELD_REPLICAS} replicas:");
    for (runtime, (idle, held)) in ["containerd", "process"].iter().zip(memory) {
        println!("  {runtime:<12} {} -> {}", mib(*idle), mib(*held));
    }
    println!(
        "offline boot, {BOOT_REPLICAS} cached replicas, box restarted (no task, no process, \
         containerd restarted, control down): agent start -> all running"
    );
    for (runtime, boot) in ["containerd", "process"].iter().zip(boots) {
        println!("  {runtime:<12} {}", ms(*boot));
    }
}
