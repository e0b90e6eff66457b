//! Gossip figures, printed (no asserts): how long a membership change takes to reach every
//! node of 20 and 100, how many bytes per second each node of 100 sends, and how much memory
//! a member costs each node that knows it.
//!
//! Run with `cargo bench -p warren-mesh --bench gossip`. Every node runs in this one process on
//! 127.0.0.1, so on a small machine the CPU is shared by all of them; times are upper bounds
//! of what separate machines would see. Views are read from each node's member watch, which
//! changes as soon as a verdict does (checked four times per gossip interval) and at least
//! once per interval for metadata. Before the kill the cluster runs steady for 30 s (the
//! failure detectors' windows fill, as in a fleet that has been up a while), and the false
//! death verdicts seen meanwhile are counted.

#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Cluster, wait_until};
use warren_mesh::{Liveness, MeshTimers};

/// Production timers (500 ms rounds of one peer, phi 5): the figures are what a fleet would
/// see. (At 100 nodes in one process on 2 cores, 200 ms rounds overload the machine and the
/// failure detector flaps, so shorter test timers would measure the machine, not gossip.)
fn convergence_timers() -> MeshTimers {
    MeshTimers::default()
}

/// Publishes what a real agent publishes, so that state sizes are realistic.
async fn publish_typical_metadata(cluster: &Cluster) {
    for idx in cluster.running() {
        let mesh = cluster.mesh(idx);
        let n = idx as u8;
        mesh.set_overlay_addr(format!("10.42.{n}.1").parse().expect("ip"))
            .await
            .expect("meta");
        mesh.set_wg_public_key("q3Jm0nNd8bq7l3yX0yQk8k1T6m0Zy3Pq9cA2b4V6x8E=")
            .await
            .expect("meta");
        for (purpose, port) in [("quic", 7101), ("metrics", 9091), ("dns", 53)] {
            mesh.set_endpoint(purpose, &format!("192.0.2.{n}:{port}"))
                .await
                .expect("meta");
        }
        mesh.set_agent_revision(1234).await.expect("meta");
        for service in ["web", "cache"] {
            let endpoints: Vec<SocketAddr> = (0..3)
                .map(|i| SocketAddr::from(([10, 42, n, 10 + i], 8080)))
                .collect();
            mesh.set_service_endpoints(service, &endpoints)
                .await
                .expect("meta");
        }
    }
}

fn rounds(took: Duration, timers: &MeshTimers) -> f64 {
    took.as_secs_f64() / timers.gossip_interval.as_secs_f64()
}

async fn convergence(n: usize) {
    let timers = convergence_timers();
    let start = Instant::now();
    let mut cluster = Cluster::start(n, timers.clone()).await;
    publish_typical_metadata(&cluster).await;
    let all: Vec<usize> = (0..n).collect();
    let Some(_) = wait_until(Duration::from_secs(60), || {
        cluster.all_know_none_dead(&all, &all)
    })
    .await
    else {
        println!(
            "{n} nodes: did not converge within 60 s: {}",
            cluster.census()
        );
        cluster.shutdown().await;
        return;
    };
    let initial = start.elapsed();
    println!(
        "{n} nodes, gossip every {:?}: initial convergence (start to all know all, none dead) {:.2} s",
        timers.gossip_interval,
        initial.as_secs_f64()
    );

    let joiner = cluster.add().await;
    let observers: Vec<usize> = (0..=n).collect();
    match wait_until(Duration::from_secs(60), || {
        cluster.all_see(&observers, &[joiner], Liveness::Alive)
    })
    .await
    {
        Some(took) => println!(
            "{n} nodes: a join reaches all (all see it alive) in {:.2} s = {:.1} rounds",
            took.as_secs_f64(),
            rounds(took, &timers)
        ),
        None => println!("{n} nodes: a join did not reach everyone within 60 s"),
    }

    cluster
        .mesh(0)
        .set_meta("bench", "changed")
        .await
        .expect("meta");
    match wait_until(Duration::from_secs(60), || {
        observers.iter().all(|&o| {
            cluster
                .view(o)
                .iter()
                .any(|m| m.node_id == cluster.nodes[0].node_id && m.meta.contains_key("bench"))
        })
    })
    .await
    {
        Some(took) => println!(
            "{n} nodes: a metadata change reaches all in {:.2} s = {:.1} rounds",
            took.as_secs_f64(),
            rounds(took, &timers)
        ),
        None => println!("{n} nodes: a metadata change did not reach everyone within 60 s"),
    }

    // A fleet's failure detectors have seen many heartbeats by the time a node dies: let the
    // sampling windows fill, and count false verdicts meanwhile.
    let false_deaths = false_deaths(&cluster, STEADY_BEFORE_KILL).await;
    println!(
        "{n} nodes: {false_deaths} false death verdicts (observer, member) over a {:.0} s \
         steady state",
        STEADY_BEFORE_KILL.as_secs_f64()
    );
    let victim = n / 2;
    let killed = Instant::now();
    cluster.kill(victim).await;
    let survivors = cluster.running();
    let first = wait_until(Duration::from_secs(60), || {
        survivors
            .iter()
            .any(|&o| cluster.sees(o, victim, Liveness::Dead))
    })
    .await;
    match wait_until(Duration::from_secs(60), || {
        cluster.all_see(&survivors, &[victim], Liveness::Dead)
    })
    .await
    {
        Some(_) => {
            let took = killed.elapsed();
            println!(
                "{n} nodes: a death is seen by the first survivor in {:.2} s and by all {} in \
                 {:.2} s = {:.1} rounds (failure detection, phi {}, included)",
                first.map_or(f64::NAN, |d| d.as_secs_f64()),
                survivors.len(),
                took.as_secs_f64(),
                rounds(took, &timers),
                timers.phi_threshold
            );
        }
        None => println!("{n} nodes: a death was not seen by everyone within 60 s"),
    }
    cluster.shutdown().await;
}

/// How long the cluster runs steady before the bench kills a node.
const STEADY_BEFORE_KILL: Duration = Duration::from_secs(30);

/// Counts, over `period`, the times some node's view turned a running member dead (each
/// (observer, member) pair counted once per turn), sampling every 100 ms.
async fn false_deaths(cluster: &Cluster, period: Duration) -> usize {
    let running = cluster.running();
    let mut dead_now = std::collections::BTreeSet::new();
    let mut turns = 0;
    let start = Instant::now();
    while start.elapsed() < period {
        for &observer in &running {
            let view = cluster.mesh(observer).watch();
            let view = view.borrow();
            for member in view.iter() {
                let pair = (observer, member.node_id);
                if member.liveness == Liveness::Dead {
                    turns += usize::from(dead_now.insert(pair));
                } else {
                    dead_now.remove(&pair);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    turns
}

async fn bandwidth(n: usize, measure: Duration) {
    let timers = MeshTimers::default();
    let cluster = Cluster::start(n, timers.clone()).await;
    publish_typical_metadata(&cluster).await;
    let all: Vec<usize> = (0..n).collect();
    if wait_until(Duration::from_secs(120), || {
        cluster.all_know_none_dead(&all, &all)
    })
    .await
    .is_none()
    {
        println!(
            "{n} nodes: did not converge within 120 s: {}",
            cluster.census()
        );
        cluster.shutdown().await;
        return;
    }
    // Let the initial state transfer finish before measuring the steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bytes_before = cluster.bytes_sent();
    let datagrams_before: u64 = cluster
        .nodes
        .iter()
        .map(|node| {
            node.metrics
                .datagrams_total
                .with_label_values(&["tx"])
                .get()
        })
        .sum();
    let start = Instant::now();
    tokio::time::sleep(measure).await;
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = cluster.bytes_sent() - bytes_before;
    let datagrams: u64 = cluster
        .nodes
        .iter()
        .map(|node| {
            node.metrics
                .datagrams_total
                .with_label_values(&["tx"])
                .get()
        })
        .sum::<u64>()
        - datagrams_before;
    let per_node = bytes as f64 / n as f64 / elapsed;
    println!(
        "{n} nodes, gossip every {:?}, steady state over {elapsed:.1} s: {per_node:.0} bytes/s sent \
         per node ({:.1} KiB/s; received is the same on average), {:.1} datagrams/s per node, \
         {:.0} bytes per datagram",
        timers.gossip_interval,
        per_node / 1024.0,
        datagrams as f64 / n as f64 / elapsed,
        bytes as f64 / datagrams.max(1) as f64
    );
    cluster.shutdown().await;
}

/// This process's resident memory in KiB: (VmRSS, RssAnon).
fn resident_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// What a member costs the memory of each node that knows it. `n` nodes in this one process
/// each hold all `n` members, so the process's anonymous memory grows as a + b·n + c·n²: c is
/// one member's cost to one node, b a node's own (sockets, buffers, tasks). Sizes increase, so
/// memory the allocator kept from the previous cluster is reused, not added.
async fn memory(sizes: [usize; 3]) {
    let mut points = Vec::new();
    for n in sizes {
        let cluster = Cluster::start(n, MeshTimers::default()).await;
        publish_typical_metadata(&cluster).await;
        let all: Vec<usize> = (0..n).collect();
        if wait_until(Duration::from_secs(120), || {
            cluster.all_know_none_dead(&all, &all)
        })
        .await
        .is_none()
        {
            println!(
                "{n} nodes: did not converge within 120 s: {}",
                cluster.census()
            );
        }
        // Signatures renewed twice, certificates checked: the steady state.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let (rss, anon) = resident_kib();
        println!(
            "{n} nodes in one process, each knowing all {n}: VmRSS {rss} KiB, RssAnon {anon} KiB"
        );
        points.push((n as f64, anon as f64));
        cluster.shutdown().await;
    }
    // The quadratic through the three points (Newton's divided differences): its n² term.
    let [(n0, y0), (n1, y1), (n2, y2)] = [points[0], points[1], points[2]];
    let c = ((y2 - y1) / (n2 - n1) - (y1 - y0) / (n1 - n0)) / (n2 - n0);
    println!("one member costs each node that knows it about {c:.1} KiB of anonymous memory");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // `cargo bench -p warren-mesh --bench gossip -- convergence100` runs only the matching parts.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    runtime.block_on(async {
        if wanted("convergence20") {
            convergence(20).await;
        }
        if wanted("convergence100") {
            convergence(100).await;
        }
        if wanted("bandwidth100") {
            bandwidth(100, Duration::from_secs(20)).await;
        }
        if wanted("memory") {
            memory([25, 50, 100]).await;
        }
    });
}
