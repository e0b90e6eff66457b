//! The harness's own tests, against the real kernel: namespaces, block rules and real `warren`
//! processes. They need root, working `ip netns`, `nft` or `iptables`, and `python3` for the
//! probes; tests that start `warren` also need it built (`cargo build -p warren-cli`) next to
//! `warren-chaos` in the target dir. Each states its needs to [`host`], which prints why a test
//! skips where something is missing, and fails it instead under `CI=true`.

#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use warren_chaos::delay::{DelaySpec, Holder};
use warren_chaos::fault::Fault;
use warren_chaos::firewall::{Block, Firewall, Scope};
use warren_chaos::fleet::{AgentRuntime, Fleet, FleetOptions, FleetSpec, SiteSpec};
use warren_chaos::netns::{self, Network};
use warren_chaos::preflight;
use warren_chaos::run::RunId;
use warren_edge_agent::runtime::containerd::testkit;

/// What a test needs of this host beyond the build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Root, `ip` (iproute2) and a working `ip netns`.
    Netns,
    /// `nft` or `iptables`; tests of block rules run once per installed backend.
    Firewall,
    /// `python3`, for the listeners and probes inside namespaces.
    Python,
    /// The `warren` binary next to `warren-chaos` in the target dir.
    Warren,
    /// `wireguard-go` and `wg` (a WireGuard implementation we did not write), and
    /// `/dev/net/tun`.
    WireguardGo,
    /// containerd, runc, ctr, nsenter and Debian's static busybox (the test image).
    Containerd,
}

/// What the host offers a test that may run.
struct Host {
    /// Installed firewall backends, `nft` first (empty unless [`Need::Firewall`] was asked).
    firewalls: Vec<Firewall>,
    /// The `warren` binary (`None` unless [`Need::Warren`] was asked).
    warren: Option<PathBuf>,
}

/// The one gate of every test here. Checks `needs` in order; at the first one missing it
/// prints `skipping TEST: WHY` and returns `None` — or, under `CI=true` (where `.ci/run` has
/// installed everything), fails the test, so that CI proves these tests ran.
///
/// The line goes straight to stderr, past the test harness's capture, so that `cargo test`
/// shows it for a test that passed by skipping.
fn host(test: &str, needs: &[Need]) -> Option<Host> {
    let mut host = Host {
        firewalls: Vec::new(),
        warren: None,
    };
    for need in needs {
        let missing = match need {
            Need::Netns => netns_missing(),
            Need::Firewall => {
                host.firewalls = [Firewall::Nft, Firewall::Iptables]
                    .into_iter()
                    .filter(|f| preflight::on_path(f.program()))
                    .collect();
                host.firewalls.is_empty().then(|| {
                    "neither `nft` nor `iptables` is on PATH (nftables or iptables)".to_owned()
                })
            }
            Need::Python => (!preflight::on_path("python3"))
                .then(|| "`python3` is not on PATH (python3-minimal)".to_owned()),
            Need::Warren => {
                let chaos = Path::new(env!("CARGO_BIN_EXE_warren-chaos"));
                let warren = chaos.parent().expect("binary has a dir").join("warren");
                let missing = (!warren.is_file()).then(|| {
                    format!(
                        "{} missing; build it with `cargo build -p warren-cli`",
                        warren.display()
                    )
                });
                host.warren = Some(warren);
                missing
            }
            Need::WireguardGo => ["wireguard-go", "wg"]
                .into_iter()
                .find(|tool| !preflight::on_path(tool))
                .map(|tool| format!("`{tool}` is not on PATH (wireguard-go, wireguard-tools)"))
                .or_else(|| {
                    (!Path::new("/dev/net/tun").exists()).then(|| "no /dev/net/tun".to_owned())
                }),
            Need::Containerd => testkit::missing_prerequisite().or_else(|| {
                (!preflight::on_path("nsenter"))
                    .then(|| "`nsenter` is not on PATH (util-linux)".to_owned())
            }),
        };
        if let Some(reason) = missing {
            let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !under_ci,
                "{test} needs what this host lacks: {reason} (CI=true: a missing prerequisite \
                 is a failure, not a skip)"
            );
            let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
            return None;
        }
    }
    Some(host)
}

/// Why namespace tests cannot run here, if they cannot.
fn netns_missing() -> Option<String> {
    if !preflight::is_root() {
        return Some("needs root (network namespaces)".to_owned());
    }
    if !preflight::on_path("ip") {
        return Some("`ip` is not on PATH (iproute2)".to_owned());
    }
    let probe = format!("{}probe", RunId::random().prefix());
    if let Err(error) = netns::ip(&["netns", "add", &probe]) {
        return Some(format!("ip netns does not work here: {error:#}"));
    }
    netns::ip(&["netns", "delete", &probe]).expect("delete the probe namespace");
    None
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Namespaces of `run` that still exist.
fn namespaces_of(run: &RunId) -> Vec<String> {
    netns::list_namespaces()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(&run.prefix()))
        .collect()
}

/// Links in the root namespace that carry the run's id (there should never be any).
fn root_links_of(run: &RunId) -> Vec<String> {
    let text = netns::ip(&["-o", "link"]).expect("ip link");
    text.lines()
        .filter(|l| l.contains(&format!("wc{run}")))
        .map(str::to_owned)
        .collect()
}

/// Whether `pid` runs; a zombie counts as gone (PID 1 here may not reap orphans).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z")
}

/// Every pid in every namespace of `run`.
fn pids_of(run: &RunId) -> Vec<u32> {
    namespaces_of(run)
        .iter()
        .flat_map(|ns| netns::pids_in(ns).expect("ip netns pids"))
        .collect()
}

fn assert_gone(run: &RunId, pids: &[u32]) {
    assert_eq!(namespaces_of(run), Vec::<String>::new(), "namespaces left");
    assert_eq!(root_links_of(run), Vec::<String>::new(), "links left");
    wait_until(
        "every process of the run exits",
        Duration::from_secs(5),
        || pids.iter().all(|p| !alive(*p)),
    );
}

fn options(host: Host, dir: &Path) -> FleetOptions {
    FleetOptions {
        warren: host.warren.expect("the test asked for Need::Warren"),
        run_dir: dir.join("run"),
        firewall: host.firewalls[0],
        registry: dir.join("registry"),
        ready_timeout: Duration::from_secs(60),
        cancel: Arc::new(AtomicBool::new(false)),
        agent_env: Vec::new(),
        holder_program: PathBuf::from(env!("CARGO_BIN_EXE_warren-chaos")),
        images: Vec::new(),
    }
}

fn one_agent_spec() -> FleetSpec {
    FleetSpec {
        control: 1,
        sites: vec![SiteSpec {
            name: "a".into(),
            agents: 1,
        }],
        runtime: AgentRuntime::Process,
    }
}

/// Tears a bare network down even when the test panics.
struct NetworkGuard(Network);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = self.0.destroy();
    }
}

/// A TCP and a UDP server on port 9000 in `netns`: each answers `ok`.
fn start_listener(netns: &str) -> std::process::Child {
    const SERVER: &str = r#"
import socket, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 9000)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9000))
    while True:
        _, peer = s.recvfrom(64)
        try:
            s.sendto(b"ok", peer)
        except OSError:
            pass  # a local drop rule answers EPERM; the reply is lost, as it should be
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;
    netns::exec_in(netns, "python3")
        .args(["-c", SERVER])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the python listener")
}

/// Whether `from` gets `ok` back from `to`:9000 over TCP and over UDP (each within 1 s).
fn reachable(from: &str, to: Ipv4Addr) -> (bool, bool) {
    const CLIENT: &str = r#"
import socket, sys
proto, host = sys.argv[1], sys.argv[2]
try:
    if proto == "tcp":
        s = socket.create_connection((host, 9000), timeout=1); ok = s.recv(2) == b"ok"
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
        s.sendto(b"hi", (host, 9000)); ok = s.recvfrom(64)[0] == b"ok"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"#;
    let probe = |proto: &str| {
        netns::exec_in(from, "python3")
            .args(["-c", CLIENT, proto, &to.to_string()])
            .stdin(Stdio::null())
            .status()
            .expect("run the python client")
            .success()
    };
    (probe("tcp"), probe("udp"))
}

/// Whether a UDP datagram sent from `from` arrives in `to` (at `to_addr`:9001), whatever
/// happens to replies: the receiver itself reports it, so a one-way drop can be seen.
fn udp_delivered(from: &str, to: &str, to_addr: Ipv4Addr) -> bool {
    const RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9001)); s.settimeout(2)
print("ready", flush=True)
try:
    s.recvfrom(64); sys.exit(0)
except OSError:
    sys.exit(1)
"#;
    const SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(20):
    try:
        s.sendto(b"hi", (sys.argv[1], 9001))
    except OSError:
        pass  # a local drop rule answers EPERM
    time.sleep(0.05)
"#;
    let mut receiver = netns::exec_in(to, "python3")
        .args(["-c", RECEIVER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the python receiver");
    let mut ready = String::new();
    BufReader::new(receiver.stdout.take().expect("stdout piped"))
        .read_line(&mut ready)
        .expect("read the receiver's ready line");
    assert_eq!(ready.trim(), "ready", "the receiver binds port 9001");
    let sent = netns::exec_in(from, "python3")
        .args(["-c", SENDER, &to_addr.to_string()])
        .stdin(Stdio::null())
        .status()
        .expect("run the python sender");
    assert!(sent.success(), "the sender runs");
    receiver.wait().expect("wait for the receiver").success()
}

/// How many of `count` UDP datagrams sent from `from` to `to`:9000 (a listener that answers
/// each) come back: both directions must survive.
fn udp_round_trips(from: &str, to: Ipv4Addr, count: usize) -> usize {
    const CLIENT: &str = r#"
import socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
received = 0
def drain():
    global received
    while True:
        try:
            s.recvfrom(64); received += 1
        except OSError:
            return
for _ in range(count):
    try:
        s.sendto(b"hi", (host, 9000))
    except OSError:
        pass  # a local drop rule answers EPERM
    time.sleep(0.005); drain()
deadline = time.time() + 1
while time.time() < deadline:
    time.sleep(0.05); drain()
print(received)
"#;
    let output = netns::exec_in(from, "python3")
        .args(["-c", CLIENT, &to.to_string(), &count.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run the python client");
    assert!(output.status.success(), "the client runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the client prints a count")
}

/// Three hosts on a bridge; h1 runs a listener. Isolating h1 cuts TCP and UDP both ways but
/// keeps its loopback; a peer block on h1 naming h2 cuts h2 only; healing restores each.
/// Runs once per installed firewall backend.
#[test]
fn partition_rules_block_traffic_and_healing_restores_it() {
    let Some(host) = host(
        "partition_rules_block_traffic_and_healing_restores_it",
        &[Need::Netns, Need::Firewall, Need::Python],
    ) else {
        return;
    };
    let backends = host.firewalls;
    for firewall in backends {
        eprintln!("--- backend {firewall:?}");
        let run = RunId::random();
        let mut guard = NetworkGuard(Network::create(&run).expect("create the bridge"));
        let h1 = guard.0.add_host("h1").expect("add h1");
        let h2 = guard.0.add_host("h2").expect("add h2");
        let h3 = guard.0.add_host("h3").expect("add h3");
        let mut listener = start_listener(&h1.netns);
        wait_until("h2 reaches h1", Duration::from_secs(10), || {
            reachable(&h2.netns, h1.addr) == (true, true)
        });

        eprintln!("--- isolate h1");
        let isolate = Block {
            tag: "isolate".into(),
            drop: Scope::All,
        };
        firewall.block(&h1.netns, &isolate).expect("isolate h1");
        assert!(
            firewall.block(&h1.netns, &isolate).is_err(),
            "a tag is used once"
        );
        assert_eq!(reachable(&h2.netns, h1.addr), (false, false), "h2 → h1 cut");
        assert_eq!(reachable(&h3.netns, h1.addr), (false, false), "h3 → h1 cut");
        let localhost = Ipv4Addr::LOCALHOST;
        assert_eq!(
            reachable(&h1.netns, localhost),
            (true, true),
            "loopback stays"
        );

        eprintln!("--- heal h1");
        firewall.unblock(&h1.netns, "isolate").expect("heal h1");
        assert_eq!(
            reachable(&h2.netns, h1.addr),
            (true, true),
            "h2 → h1 healed"
        );

        eprintln!("--- cut h1 from h2 only");
        let cut = Block {
            tag: "cut".into(),
            drop: Scope::Peers(vec![h2.addr]),
        };
        firewall.block(&h1.netns, &cut).expect("cut h1 from h2");
        assert_eq!(reachable(&h2.netns, h1.addr), (false, false), "h2 → h1 cut");
        assert_eq!(reachable(&h3.netns, h1.addr), (true, true), "h3 → h1 open");
        firewall.unblock(&h1.netns, "cut").expect("heal the cut");
        assert_eq!(
            reachable(&h2.netns, h1.addr),
            (true, true),
            "h2 → h1 healed"
        );

        let pids = pids_of(&run);
        assert!(!pids.is_empty(), "the listener runs");
        drop(guard);
        listener.wait().expect("reap the listener");
        assert_gone(&run, &pids);
    }
}

/// Three hosts; h1 and h2 run listeners. A one-way block on h1 towards h2: h1's datagrams
/// and connections no longer reach h2, h2's datagrams still arrive at h1 (a round trip from
/// h2 fails, since h1's replies are dropped), h3 and h1 still talk both ways; healing
/// restores h1 → h2. Runs once per installed firewall backend.
#[test]
fn one_way_rules_drop_one_direction_only() {
    let Some(host) = host(
        "one_way_rules_drop_one_direction_only",
        &[Need::Netns, Need::Firewall, Need::Python],
    ) else {
        return;
    };
    let backends = host.firewalls;
    for firewall in backends {
        eprintln!("--- backend {firewall:?}");
        let run = RunId::random();
        let mut guard = NetworkGuard(Network::create(&run).expect("create the bridge"));
        let h1 = guard.0.add_host("h1").expect("add h1");
        let h2 = guard.0.add_host("h2").expect("add h2");
        let h3 = guard.0.add_host("h3").expect("add h3");
        let mut listeners = [start_listener(&h1.netns), start_listener(&h2.netns)];
        wait_until(
            "h1 and h2 reach each other",
            Duration::from_secs(10),
            || {
                reachable(&h1.netns, h2.addr) == (true, true)
                    && reachable(&h2.netns, h1.addr) == (true, true)
            },
        );

        eprintln!("--- drop h1 -> h2 one way");
        let one_way = Block {
            tag: "oneway".into(),
            drop: Scope::OutgoingTo(vec![h2.addr]),
        };
        firewall
            .block(&h1.netns, &one_way)
            .expect("one way h1 -> h2");
        assert!(
            firewall.block(&h1.netns, &one_way).is_err(),
            "a tag is used once"
        );
        assert!(
            !udp_delivered(&h1.netns, &h2.netns, h2.addr),
            "h1 → h2 dropped"
        );
        assert_eq!(
            reachable(&h1.netns, h2.addr),
            (false, false),
            "h1 cannot reach h2's listener"
        );
        assert!(
            udp_delivered(&h2.netns, &h1.netns, h1.addr),
            "h2 → h1 passes"
        );
        assert_eq!(
            reachable(&h3.netns, h1.addr),
            (true, true),
            "h3 ↔ h1 untouched"
        );

        eprintln!("--- heal");
        firewall
            .unblock(&h1.netns, "oneway")
            .expect("heal the one-way drop");
        assert!(
            udp_delivered(&h1.netns, &h2.netns, h2.addr),
            "h1 → h2 healed"
        );
        assert_eq!(
            reachable(&h1.netns, h2.addr),
            (true, true),
            "h1 → h2 listener healed"
        );

        let pids = pids_of(&run);
        drop(guard);
        for listener in &mut listeners {
            listener.wait().expect("reap a listener");
        }
        assert_gone(&run, &pids);
    }
}

/// Two hosts; h1 runs a listener and h2 sends it 200 UDP datagrams. With 100 % loss on h1
/// none comes back (h1's loopback still works); with 50 % loss each way some but not all do
/// (about a quarter; the bounds 10-90 % make a spurious failure practically impossible);
/// after healing they all do. Runs once per installed firewall backend.
#[test]
fn loss_rules_drop_a_share_of_packets_and_healing_restores_them() {
    let Some(host) = host(
        "loss_rules_drop_a_share_of_packets_and_healing_restores_them",
        &[Need::Netns, Need::Firewall, Need::Python],
    ) else {
        return;
    };
    const SENT: usize = 200;
    let backends = host.firewalls;
    for firewall in backends {
        eprintln!("--- backend {firewall:?}");
        let run = RunId::random();
        let mut guard = NetworkGuard(Network::create(&run).expect("create the bridge"));
        let h1 = guard.0.add_host("h1").expect("add h1");
        let h2 = guard.0.add_host("h2").expect("add h2");
        let mut listener = start_listener(&h1.netns);
        wait_until("h2 reaches h1", Duration::from_secs(10), || {
            reachable(&h2.netns, h1.addr) == (true, true)
        });
        assert_eq!(udp_round_trips(&h2.netns, h1.addr, SENT), SENT, "no loss");

        eprintln!("--- 100% loss on h1");
        let loss = |percent| Block {
            tag: "loss".into(),
            drop: Scope::RandomLoss { percent },
        };
        firewall.block(&h1.netns, &loss(100)).expect("100% loss");
        assert!(
            firewall.block(&h1.netns, &loss(100)).is_err(),
            "a tag is used once"
        );
        assert_eq!(udp_round_trips(&h2.netns, h1.addr, SENT), 0, "all lost");
        assert_eq!(
            reachable(&h1.netns, Ipv4Addr::LOCALHOST),
            (true, true),
            "loopback stays"
        );
        firewall.unblock(&h1.netns, "loss").expect("heal");

        eprintln!("--- 50% loss on h1");
        firewall.block(&h1.netns, &loss(50)).expect("50% loss");
        let arrived = udp_round_trips(&h2.netns, h1.addr, SENT);
        eprintln!("{arrived} of {SENT} round trips at 50% loss each way");
        assert!(
            (SENT / 10..=SENT * 9 / 10).contains(&arrived),
            "some but not all arrive: {arrived} of {SENT}"
        );

        eprintln!("--- heal");
        firewall.unblock(&h1.netns, "loss").expect("heal");
        assert_eq!(udp_round_trips(&h2.netns, h1.addr, SENT), SENT, "healed");
        assert!(
            firewall.block(&h1.netns, &loss(0)).is_err(),
            "0% is refused"
        );

        let pids = pids_of(&run);
        drop(guard);
        listener.wait().expect("reap the listener");
        assert_gone(&run, &pids);
    }
}

/// A UDP echo on port 9002 in `netns`: sends every datagram back as it came.
fn start_echo(netns: &str) -> std::process::Child {
    const ECHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9002))
while True:
    data, peer = s.recvfrom(64)
    s.sendto(data, peer)
"#;
    netns::exec_in(netns, "python3")
        .args(["-c", ECHO])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the python echo")
}

/// Round trips to an echo: what came back and in which order.
#[derive(Debug)]
struct Trips {
    received: usize,
    median_ms: f64,
    /// Replies that arrived after a reply to a later datagram.
    overtaken: usize,
}

/// Sends `count` numbered datagrams from `from` to `to`:9002, `spacing_ms` apart, and
/// measures each one's round trip (replies are awaited up to 2 s after the last send).
fn echo_trips(from: &str, to: Ipv4Addr, count: usize, spacing_ms: u64) -> Trips {
    const CLIENT: &str = r#"
import socket, sys, time, statistics
host, count, spacing = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
sent, trips, order = {}, [], []
def drain():
    while True:
        try:
            data, _ = s.recvfrom(64)
        except OSError:
            return
        seq = int(data); trips.append((time.monotonic() - sent[seq]) * 1000); order.append(seq)
for seq in range(count):
    sent[seq] = time.monotonic(); s.sendto(str(seq).encode(), (host, 9002))
    end = time.monotonic() + spacing
    while time.monotonic() < end:
        time.sleep(0.0005); drain()
deadline = time.monotonic() + 2
while len(order) < count and time.monotonic() < deadline:
    time.sleep(0.001); drain()
overtaken = sum(1 for i, seq in enumerate(order) if any(o > seq for o in order[:i]))
print(len(order), statistics.median(trips) if trips else -1, overtaken)
"#;
    let output = netns::exec_in(from, "python3")
        .args([
            "-c",
            CLIENT,
            &to.to_string(),
            &count.to_string(),
            &spacing_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the python client");
    assert!(
        output.status.success(),
        "the client runs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "the client prints three numbers: {text}");
    let trips = Trips {
        received: fields[0].parse().expect("a count"),
        median_ms: fields[1].parse().expect("a median"),
        overtaken: fields[2].parse().expect("a count"),
    };
    eprintln!("{count} sent {spacing_ms} ms apart: {trips:?}");
    trips
}

/// Two hosts; h1 runs a UDP echo and h2 measures round trips to it. A 100 ms delay on h1
/// (its holder started first, then the queue rule) puts the median round trip between 90 and
/// 300 ms (h1's replies are held once) while h1's loopback stays fast; healing (rule out,
/// holder stopped with SIGTERM, exiting 0) brings it back under 20 ms and leaves no holder
/// in h1's namespace. A jitter of ±50 ms makes replies overtake each other. A holder killed
/// with SIGKILL leaves the queue bypassed: traffic passes undelayed, not dropped. Runs once
/// per installed firewall backend (with nft on a kernel without nft's queue expression the
/// queue rule goes in through iptables).
#[test]
fn delay_holds_packets_reorders_with_jitter_and_healing_restores_them() {
    let Some(host) = host(
        "delay_holds_packets_reorders_with_jitter_and_healing_restores_them",
        &[Need::Netns, Need::Firewall, Need::Python],
    ) else {
        return;
    };
    let program = Path::new(env!("CARGO_BIN_EXE_warren-chaos"));
    let backends = host.firewalls;
    for firewall in backends {
        eprintln!("--- backend {firewall:?}");
        let run = RunId::random();
        let mut guard = NetworkGuard(Network::create(&run).expect("create the bridge"));
        let h1 = guard.0.add_host("h1").expect("add h1");
        let h2 = guard.0.add_host("h2").expect("add h2");
        let mut echo = start_echo(&h1.netns);
        wait_until("h2 reaches h1's echo", Duration::from_secs(10), || {
            echo_trips(&h2.netns, h1.addr, 1, 0).received == 1
        });
        let baseline = echo_trips(&h2.netns, h1.addr, 20, 20);
        assert_eq!(baseline.received, 20);
        assert!(baseline.median_ms < 20.0, "baseline {baseline:?}");

        let queue = Block {
            tag: "delay".into(),
            drop: Scope::Queue { num: 7 },
        };
        let start = |ms, jitter_ms| {
            let holder = Holder::start(
                program,
                &h1.netns,
                7,
                DelaySpec { ms, jitter_ms },
                Stdio::inherit(),
            )
            .expect("start the holder");
            firewall
                .block(&h1.netns, &queue)
                .expect("queue h1's output");
            holder
        };

        eprintln!("--- 100 ms delay on h1");
        let holder = start(100, 0);
        let holder_pid = holder.pid();
        assert!(
            netns::pids_in(&h1.netns)
                .expect("pids")
                .contains(&holder_pid)
        );
        let delayed = echo_trips(&h2.netns, h1.addr, 20, 20);
        assert_eq!(delayed.received, 20, "nothing is lost: {delayed:?}");
        assert!(
            (90.0..=300.0).contains(&delayed.median_ms),
            "delayed {delayed:?}"
        );
        assert_eq!(
            delayed.overtaken, 0,
            "no jitter, no reordering: {delayed:?}"
        );
        let local = echo_trips(&h1.netns, Ipv4Addr::LOCALHOST, 10, 10);
        assert!(local.median_ms < 20.0, "loopback is not delayed: {local:?}");

        eprintln!("--- heal");
        firewall
            .unblock(&h1.netns, "delay")
            .expect("remove the queue rule");
        holder.stop().expect("the holder exits cleanly on SIGTERM");
        let healed = echo_trips(&h2.netns, h1.addr, 20, 20);
        assert_eq!(healed.received, 20);
        assert!(healed.median_ms < 20.0, "healed {healed:?}");
        assert!(!alive(holder_pid), "the holder is gone");
        assert!(
            !netns::pids_in(&h1.netns)
                .expect("pids")
                .contains(&holder_pid)
        );

        eprintln!("--- 100±50 ms delay on h1");
        let holder = start(100, 50);
        let jittered = echo_trips(&h2.netns, h1.addr, 100, 2);
        assert_eq!(jittered.received, 100, "nothing is lost: {jittered:?}");
        assert!(
            (60.0..=300.0).contains(&jittered.median_ms),
            "jittered {jittered:?}"
        );
        // 100 datagrams 2 ms apart, each held 50-150 ms: many overtake (expected: dozens).
        assert!(jittered.overtaken > 0, "jitter reorders: {jittered:?}");
        firewall
            .unblock(&h1.netns, "delay")
            .expect("remove the queue rule");
        holder.stop().expect("the holder exits cleanly on SIGTERM");

        eprintln!("--- holder killed: the queue is bypassed");
        let holder = start(100, 0);
        netns::signal(holder.pid(), rustix::process::Signal::KILL).expect("kill the holder");
        assert!(
            holder.stop().is_err(),
            "a killed holder did not exit cleanly"
        );
        let bypassed = echo_trips(&h2.netns, h1.addr, 20, 20);
        assert_eq!(bypassed.received, 20, "bypassed, not dropped: {bypassed:?}");
        assert!(bypassed.median_ms < 20.0, "bypassed {bypassed:?}");
        firewall
            .unblock(&h1.netns, "delay")
            .expect("remove the queue rule");
        assert!(
            firewall.unblock(&h1.netns, "delay").is_err(),
            "healing twice is refused"
        );

        let pids = pids_of(&run);
        drop(guard);
        echo.wait().expect("reap the echo");
        assert_gone(&run, &pids);
    }
}

/// A fleet (one control node, one agent) with a running workload: `down` stops every process
/// (the workload too), deletes every namespace and link, and forgets the run.
#[test]
fn fleet_up_and_down_leaves_nothing_behind() {
    let test = "fleet_up_and_down_leaves_nothing_behind";
    let Some(host) = host(test, &[Need::Netns, Need::Firewall, Need::Warren]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let run = RunId::random();
    let options = options(host, dir.path());
    let registry = options.registry.clone();
    let fleet = Fleet::up(run.clone(), &one_agent_spec(), options).expect("fleet up");
    assert_eq!(namespaces_of(&run).len(), 3, "bridge, c1, a-1");
    assert!(
        registry.join(format!("{run}.json")).is_file(),
        "run recorded"
    );
    fleet
        .cli(&["service", "create", "web", "--command", "sleep 1000"])
        .expect("create a service");
    let agent_ns = fleet.node("a-1").expect("a-1").host.netns.clone();
    wait_until("the workload runs in a-1", Duration::from_secs(30), || {
        netns::pids_in(&agent_ns).expect("pids").len() >= 2
    });
    let pids = pids_of(&run);
    fleet.down().expect("fleet down");
    assert_gone(&run, &pids);
    assert!(
        !registry.join(format!("{run}.json")).exists(),
        "run forgotten"
    );
}

/// Reads `warren-chaos up`'s stdout until its ready line; returns the run id.
fn wait_for_ready(child: &mut std::process::Child) -> RunId {
    let stdout = child.stdout.take().expect("stdout piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read stdout");
        if let Some(rest) = line.strip_prefix("warren-chaos ready run=") {
            let id = rest.split_whitespace().next().expect("run id");
            return RunId::parse(id).expect("valid run id");
        }
    }
    panic!("warren-chaos up exited before its ready line")
}

fn spawn_up(warren: &Path, dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_warren-chaos"))
        .args(["up", "--control", "1", "--sites", "a:1", "--warren"])
        .arg(warren)
        .arg("--run-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start warren-chaos up")
}

/// `warren-chaos up` cleans up after itself on SIGTERM; after a SIGKILL of the harness,
/// `warren-chaos cleanup --run ID` removes what the crashed run left.
#[test]
fn up_cleans_up_on_sigterm_and_cleanup_removes_a_crashed_run() {
    let test = "up_cleans_up_on_sigterm_and_cleanup_removes_a_crashed_run";
    let Some(host) = host(test, &[Need::Netns, Need::Firewall, Need::Warren]) else {
        return;
    };
    let warren = host.warren.expect("asked for");
    let dir = tempfile::tempdir().expect("temp dir");

    eprintln!("--- SIGTERM");
    let mut child = spawn_up(&warren, &dir.path().join("graceful"));
    let run = wait_for_ready(&mut child);
    let pids = pids_of(&run);
    assert!(pids.len() >= 2, "c1 and a-1 run: {pids:?}");
    netns::signal(child.id(), rustix::process::Signal::TERM).expect("SIGTERM");
    let status = child.wait().expect("wait for warren-chaos");
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert_gone(&run, &pids);

    eprintln!("--- SIGKILL, then cleanup");
    let mut child = spawn_up(&warren, &dir.path().join("crashed"));
    let run = wait_for_ready(&mut child);
    let pids = pids_of(&run);
    child.kill().expect("SIGKILL the harness");
    child.wait().expect("reap the harness");
    assert_eq!(
        namespaces_of(&run).len(),
        3,
        "a crash leaves the run behind"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_warren-chaos"))
        .args(["cleanup", "--run", run.as_str()])
        .output()
        .expect("run warren-chaos cleanup");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cleanup: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("run {run}: removed 3 namespaces")),
        "{stdout}"
    );
    assert_gone(&run, &pids);
}

/// docs/design.md §4, agent cut off alone: one control node and one agent running `sleep`; isolating
/// the agent's namespace takes its link down but the workload keeps running with the same pid;
/// after healing the link comes back and the same pid is reported running.
#[test]
fn an_isolated_agent_keeps_its_workload_and_reconnects_after_heal() {
    let test = "an_isolated_agent_keeps_its_workload_and_reconnects_after_heal";
    let Some(host) = host(test, &[Need::Netns, Need::Firewall, Need::Warren]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fleet = Fleet::up(
        RunId::random(),
        &one_agent_spec(),
        options(host, dir.path()),
    )
    .expect("fleet up");
    fleet
        .cli(&["service", "create", "web", "--command", "sleep 1000"])
        .expect("create a service");
    let replica = |fleet: &Fleet| -> Option<(String, u64, bool)> {
        let text = fleet.cli(&["-o", "json", "service", "ps", "web"]).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let first = json.as_array()?.first()?.clone();
        Some((
            first["state"].as_str()?.to_owned(),
            first["pid"].as_u64()?,
            first["stale"].as_bool().unwrap_or(false),
        ))
    };
    let link_connected = |fleet: &Fleet| -> Option<bool> {
        let text = fleet.cli(&["-o", "json", "node", "ls"]).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let node = json
            .as_array()?
            .iter()
            .find(|n| n["node"]["name"] == "a-1")?
            .clone();
        node["agent"]["connected"].as_bool()
    };
    wait_until("web runs on a-1", Duration::from_secs(30), || {
        replica(&fleet).is_some_and(|(state, _, _)| state == "running")
    });
    let (_, pid, _) = replica(&fleet).expect("replica");
    let pid = u32::try_from(pid).expect("pid fits u32");

    eprintln!("--- isolate a-1");
    let fault = Fault::Isolate { node: "a-1".into() };
    fault.apply(&mut fleet).expect("isolate a-1");
    wait_until(
        "control sees a-1's link down",
        Duration::from_secs(60),
        || link_connected(&fleet) == Some(false),
    );
    assert!(alive(pid), "the workload survives the partition");
    // `service ls` still counts it, from a-1's last report, and says that report is stale.
    let listed = fleet.cli(&["service", "ls"]).expect("service ls");
    let web = listed
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    assert!(web.contains("1/1 (stale)"), "{listed}");

    eprintln!("--- heal");
    fault.heal(&mut fleet).expect("heal a-1");
    wait_until("a-1 reconnects", Duration::from_secs(60), || {
        link_connected(&fleet) == Some(true)
    });
    wait_until(
        "the same pid is reported running",
        Duration::from_secs(30),
        || replica(&fleet) == Some(("running".to_owned(), u64::from(pid), false)),
    );
    fleet.down().expect("fleet down");
}

/// `warren-chaos run --json ARGS… SCENARIO` with its runs under `dir`: exit code and reports.
fn run_scenario(dir: &Path, args: &[&str], scenario: &str) -> (i32, Vec<serde_json::Value>) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(scenario);
    let output = Command::new(env!("CARGO_BIN_EXE_warren-chaos"))
        .args(["--log-level", "warn", "run", "--json", "--runs-dir"])
        .arg(dir)
        .args(args)
        .arg(&file)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run warren-chaos");
    let reports: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("the JSON reports");
    (output.status.code().unwrap_or(-1), reports)
}

/// The run exited 0, its result is `pass` and each of `invariants` passed.
fn assert_passed(code: i32, report: &serde_json::Value, invariants: &[&str]) {
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["result"], "pass");
    for invariant in invariants {
        assert_eq!(
            verdict(report, invariant),
            "pass",
            "{invariant}: {report:#}"
        );
    }
}

/// The pids of every workload a report watched.
fn workload_pids(report: &serde_json::Value) -> Vec<u32> {
    report["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .filter_map(|w| w["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
        .collect()
}

fn verdict<'a>(report: &'a serde_json::Value, invariant: &str) -> &'a str {
    report["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .find(|i| i["name"] == invariant)
        .and_then(|i| i["verdict"].as_str())
        .unwrap_or_else(|| panic!("no {invariant} in {report}"))
}

/// The issue's done-when: the site-partition scenario passes as root and leaves no namespace,
/// link or process behind; its report holds the figures.
#[test]
fn the_site_partition_scenario_passes_and_leaves_nothing_behind() {
    const TEST: &str = "the_site_partition_scenario_passes_and_leaves_nothing_behind";
    if host(TEST, &[Need::Netns, Need::Firewall, Need::Warren]).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, reports) = run_scenario(dir.path(), &[], "site-partition.yaml");
    let report = &reports[0];
    assert_passed(
        code,
        report,
        &[
            "no_acknowledged_write_lost",
            "workloads_keep_running",
            "no_restart_on_reconnect",
            "agents_never_go_back",
            "converges_after_heal",
            "killed_workloads_restarted",
        ],
    );
    let figures = &report["figures"];
    assert_eq!(figures["writes_lost"], 0);
    assert_eq!(figures["interruptions"], 0);
    assert!(figures["workloads_watched"].as_u64().expect("count") >= 6);
    let run = RunId::parse(report["run_id"].as_str().expect("run id")).expect("valid id");
    assert_gone(&run, &workload_pids(report));
    assert!(dir.path().join(run.as_str()).join("report.json").is_file());
}

/// Issue 15's chaos scenario: the cut-off and offline-reboot rehearsals with containers, each
/// agent on a containerd of its own loaded with a busybox image through `warren image load`.
/// The reboot kills containerd, the shims and the containers with the agent; the agent, still
/// cut off, starts them again from its cache and the local image store.
#[test]
fn the_containers_cut_off_scenario_passes() {
    const TEST: &str = "the_containers_cut_off_scenario_passes";
    let needs = [Need::Netns, Need::Firewall, Need::Warren, Need::Containerd];
    if host(TEST, &needs).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("busybox.tar");
    testkit::write_busybox_layout(&image, "warren.test/busybox:1").expect("build the image");
    let image_arg = image.display().to_string();
    let (code, reports) = run_scenario(
        dir.path(),
        &["--image-tar", &image_arg],
        "containers-cut-off.yaml",
    );
    let report = &reports[0];
    assert_passed(
        code,
        report,
        &[
            "workloads_keep_running",
            "no_restart_on_reconnect",
            "converges_after_heal",
            "killed_workloads_restarted",
        ],
    );
    let run = RunId::parse(report["run_id"].as_str().expect("run id")).expect("valid id");
    let pids = workload_pids(report);
    assert!(pids.len() >= 6, "{report:#}");
    assert_gone(&run, &pids);
}

/// The self-check: with agents broken on purpose (they stop their workloads when the link is
/// lost), the autonomy scenario must fail on `workloads_keep_running`, with the stopped
/// workloads as evidence. Proof that the checks can fail.
#[test]
fn the_self_check_catches_an_agent_that_stops_workloads_when_cut_off() {
    const TEST: &str = "the_self_check_catches_an_agent_that_stops_workloads_when_cut_off";
    if host(TEST, &[Need::Netns, Need::Firewall, Need::Warren]).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, reports) = run_scenario(dir.path(), &["--self-check"], "agent-cut-off.yaml");
    let report = &reports[0];
    assert_eq!(
        code, 0,
        "the self-check passes when the run fails: {report:#}"
    );
    assert_eq!(report["result"], "fail");
    assert_eq!(report["self_check"], true);
    assert_eq!(verdict(report, "workloads_keep_running"), "fail");
    let evidence = report["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .find(|i| i["name"] == "workloads_keep_running")
        .map(|i| i["evidence"].to_string())
        .unwrap_or_default();
    assert!(evidence.contains("on a-1"), "{evidence}");
    assert!(report["figures"]["interruptions"].as_u64().expect("count") > 0);
}

/// Whether `from`'s namespace reaches `to` with one ping within a second.
fn pings(from: &str, to: &str) -> bool {
    netns::exec_in(from, "ping")
        .args(["-c", "1", "-W", "1", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The A records `name` has at the agent DNS server of `netns` (127.0.0.11:53).
fn dig(netns: &str, name: &str) -> Vec<String> {
    let Ok(output) = netns::exec_in(netns, "dig")
        .args(["+short", "+time=1", "+tries=1", "@127.0.0.11", name, "A"])
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether an HTTP GET of `url` from `netns` answers 200 within 2 s.
fn http_get(netns: &str, url: &str) -> bool {
    let script =
        format!("import urllib.request; urllib.request.urlopen({url:?}, timeout=2).read()");
    netns::exec_in(netns, "python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `(transmitted, received)` from ping's summary (`N packets transmitted, M received`).
fn ping_counts(summary: &str) -> Option<(u64, u64)> {
    let line = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}

/// `name`'s public key and next key as the registry holds them.
fn mesh_keys(fleet: &Fleet, name: &str) -> Option<(String, Option<String>)> {
    let text = fleet.cli(&["-o", "json", "node", "inspect", name]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mesh = &json["mesh"];
    Some((
        mesh["public_key"].as_str()?.to_owned(),
        mesh["next_public_key"].as_str().map(str::to_owned),
    ))
}

/// Each agent's overlay address, once every agent declared its WireGuard key to control.
fn overlay_addresses(fleet: &Fleet, agents: &[&str]) -> Option<Vec<String>> {
    let text = fleet.cli(&["-o", "json", "node", "ls"]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    agents
        .iter()
        .map(|name| {
            let node = json
                .as_array()?
                .iter()
                .find(|n| n["node"]["name"] == *name)?;
            node["mesh"]["public_key"].as_str()?;
            Some(node["mesh"]["overlay_ip"].as_str()?.to_owned())
        })
        .collect()
}

/// Two agents in two sites form the WireGuard overlay from the registry (`--wireguard auto`
/// as root): each pings the other's overlay address through the tunnel, and so does the control
/// node (it joins the overlay too); DNS answers a service with overlay addresses; with the control node
/// killed the tunnel keeps carrying traffic, and an agent restarted with no control plane
/// brings the overlay up again from its cached view.
#[test]
fn the_overlay_joins_two_sites_and_outlives_the_control_plane() {
    let test = "the_overlay_joins_two_sites_and_outlives_the_control_plane";
    let needs = [Need::Netns, Need::Firewall, Need::Warren, Need::Python];
    let Some(host) = host(test, &needs) else {
        return;
    };
    if !Path::new("/dev/net/tun").exists() {
        let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!under_ci, "{test} needs /dev/net/tun");
        let _ = writeln!(std::io::stderr(), "skipping {test}: no /dev/net/tun");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = FleetSpec {
        control: 1,
        sites: vec![
            SiteSpec {
                name: "a".into(),
                agents: 1,
            },
            SiteSpec {
                name: "b".into(),
                agents: 1,
            },
        ],
        runtime: AgentRuntime::Process,
    };
    let mut fleet = Fleet::up(RunId::random(), &spec, options(host, dir.path())).expect("fleet up");
    let mut addresses = Vec::new();
    wait_until(
        "both agents declared their keys",
        Duration::from_secs(30),
        || {
            overlay_addresses(&fleet, &["a-1", "b-1"]).is_some_and(|found| {
                addresses = found;
                true
            })
        },
    );
    let (a_ns, b_ns) = (
        fleet.node("a-1").expect("a-1").host.netns.clone(),
        fleet.node("b-1").expect("b-1").host.netns.clone(),
    );
    eprintln!(
        "--- overlay addresses: a-1 {} b-1 {}",
        addresses[0], addresses[1]
    );
    wait_until(
        "a-1 pings b-1 over the overlay",
        Duration::from_secs(30),
        || pings(&a_ns, &addresses[1]),
    );
    assert!(
        pings(&b_ns, &addresses[0]),
        "b-1 pings a-1 over the overlay"
    );
    // The control node is in the overlay too: the centre reaches every box's address.
    let mut central = Vec::new();
    wait_until("c1 declared its key", Duration::from_secs(30), || {
        overlay_addresses(&fleet, &["c1"]).is_some_and(|found| {
            central = found;
            true
        })
    });
    let c_ns = fleet.node("c1").expect("c1").host.netns.clone();
    wait_until(
        "c1 pings both agents over the overlay",
        Duration::from_secs(30),
        || pings(&c_ns, &addresses[0]) && pings(&c_ns, &addresses[1]),
    );
    let web = "python3 -m http.server --bind 0.0.0.0 8080";
    fleet
        .cli(&[
            "service",
            "create",
            "web",
            "--global",
            "--port",
            "http:8080",
            "--command",
            web,
        ])
        .expect("create web");
    // Agents gossip within their site: a-1's DNS answers the service name with its own
    // site's live replica, and b-1's replica by its name, both with overlay addresses.
    wait_until(
        "a-1's DNS answers web.warren with a-1's overlay address and b-1.web.warren with b-1's",
        Duration::from_secs(30),
        || {
            dig(&a_ns, "web.warren") == [addresses[0].clone()]
                && dig(&a_ns, "b-1.web.warren") == [addresses[1].clone()]
        },
    );

    eprintln!("--- b-1 rolls its WireGuard key");
    let before = mesh_keys(&fleet, "b-1").expect("b-1's keys");
    // A ping every 50 ms from a-1 to b-1 for as long as the rotation takes.
    let flood = netns::exec_in(&a_ns, "ping")
        .args(["-q", "-i", "0.05", "-w", "20", &addresses[1]])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a ping flood");
    fleet
        .cli(&["node", "rotate-key", "b-1"])
        .expect("ask b-1 to roll its key");
    wait_until(
        "the registry holds b-1's new key alone",
        Duration::from_secs(60),
        || mesh_keys(&fleet, "b-1").is_some_and(|(key, next)| key != before.0 && next.is_none()),
    );
    let summary = flood.wait_with_output().expect("ping flood ends");
    let summary = String::from_utf8_lossy(&summary.stdout);
    let (sent, received) = ping_counts(&summary).expect("ping's summary line");
    eprintln!("--- ping flood across the rotation: {received}/{sent} received");
    assert!(
        sent - received <= 5,
        "no more than a handshake's worth lost while the key rolls: {summary}"
    );

    wait_until(
        "node inspect a-1 shows its peers with handshakes and bytes",
        Duration::from_secs(90),
        || {
            let Ok(text) = fleet.cli(&["-o", "json", "node", "inspect", "a-1"]) else {
                return false;
            };
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let peers = json["agent"]["mesh_peers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            peers.iter().any(|p| {
                p["name"] == "b-1"
                    && p["last_handshake_ms"].as_u64().is_some()
                    && p["rx_bytes"].as_u64().is_some_and(|b| b > 0)
            })
        },
    );
    // `node ls` (its WG column) counts a-1's peers with a fresh handshake: b-1 at least.
    let listed = fleet.cli(&["-o", "json", "node", "ls"]).expect("node ls");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("node ls JSON");
    let a1 = listed
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"]["name"] == "a-1"))
        .expect("a-1 listed");
    let up = a1["agent"]["mesh_peers_up"][0].as_u64().unwrap_or(0);
    assert!(up >= 1, "a-1's peers up in node ls: {}", a1["agent"]);

    eprintln!("--- kill the control plane");
    fleet.kill("c1").expect("kill c1");
    assert!(
        pings(&a_ns, &addresses[1]),
        "the tunnel outlives the control plane"
    );
    // With no control plane, b-1's replica still resolves (from a-1's cached view) to b-1's
    // overlay address, and b-1's page comes through the tunnel.
    let resolved = dig(&a_ns, "b-1.web.warren");
    assert!(
        resolved.contains(&addresses[1]),
        "b-1.web.warren on a-1 without control: {resolved:?}"
    );
    wait_until(
        "a-1 fetches b-1's web by the address web.warren gave",
        Duration::from_secs(30),
        || http_get(&a_ns, &format!("http://{}:8080/", addresses[1])),
    );

    eprintln!("--- restart a-1 with no control plane");
    fleet.kill("a-1").expect("kill a-1");
    fleet.restart("a-1").expect("restart a-1 offline");
    wait_until(
        "a-1 pings b-1 again, from its cached view",
        Duration::from_secs(30),
        || pings(&a_ns, &addresses[1]),
    );
    fleet.down().expect("fleet down");
}

/// `warren node wg-config` prints a standard WireGuard configuration: a `wireguard-go` device
/// (an implementation we did not write) set up from it with `wg`, and the node's own key file,
/// takes a-1's place in the overlay and carries traffic both ways with b-1's Warren tunnel.
#[test]
fn a_wireguard_go_peer_set_up_from_node_wg_config_takes_a_nodes_place() {
    let test = "a_wireguard_go_peer_set_up_from_node_wg_config_takes_a_nodes_place";
    let needs = [Need::Netns, Need::Firewall, Need::Warren, Need::WireguardGo];
    let Some(host) = host(test, &needs) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = FleetSpec {
        control: 1,
        sites: ["a", "b"]
            .map(|name| SiteSpec {
                name: name.into(),
                agents: 1,
            })
            .into(),
        runtime: AgentRuntime::Process,
    };
    let mut fleet = Fleet::up(RunId::random(), &spec, options(host, dir.path())).expect("fleet up");
    let mut addresses = Vec::new();
    wait_until(
        "both agents declared their keys",
        Duration::from_secs(30),
        || {
            overlay_addresses(&fleet, &["a-1", "b-1"]).is_some_and(|found| {
                addresses = found;
                true
            })
        },
    );
    let a = fleet.node("a-1").expect("a-1");
    let (a_ns, a_key) = (
        a.host.netns.clone(),
        a.data_dir.join("wireguard/private.key"),
    );
    let b_ns = fleet.node("b-1").expect("b-1").host.netns.clone();
    wait_until(
        "a-1 pings b-1 over the overlay",
        Duration::from_secs(30),
        || pings(&a_ns, &addresses[1]),
    );
    let config = fleet
        .cli(&["node", "wg-config", "a-1"])
        .expect("node wg-config a-1");
    eprintln!("--- warren node wg-config a-1:\n{config}");
    assert!(
        config.contains(&format!("Address = {}/24", addresses[0])),
        "{config}"
    );

    eprintln!("--- a-1's agent stops; wireguard-go takes its place from that config");
    fleet.kill("a-1").expect("kill a-1");
    let setconf: String = config
        .lines()
        .filter(|line| !line.starts_with("Address"))
        .map(|line| format!("{line}\n"))
        .collect();
    let conf = dir.path().join("wgo.conf");
    std::fs::write(&conf, setconf).expect("write the wg config");
    // The control socket's path is the host's, whatever the namespace: a name of this run's.
    let interface = format!("wgo{}", std::process::id() % 100_000);
    let go = WireguardGo::start(&a_ns, &interface).expect("wireguard-go starts");
    let address = format!("{}/16", addresses[0]);
    let conf = conf.display().to_string();
    let key = a_key.display().to_string();
    for args in [
        &["wg", "setconf", &interface, &conf][..],
        &["wg", "set", &interface, "private-key", &key],
        &["ip", "addr", "add", &address, "dev", &interface],
        &["ip", "link", "set", &interface, "mtu", "1420", "up"],
    ] {
        let status = netns::exec_in(&a_ns, args[0]).args(&args[1..]).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "{args:?} in a-1's namespace"
        );
    }
    // boringtun stamps its handshakes 27 s later than wireguard-go and kernel WireGuard do
    // (TAI64N base 2^62 + 37 against + 10): b-1 takes wireguard-go's first initiations with
    // a-1's key for replays until the clock passes a-1's last handshake. Up to a minute, then.
    let reached = (0..60).any(|_| pings(&a_ns, &addresses[1]));
    if !reached {
        let shown = netns::exec_in(&a_ns, "wg")
            .args(["show", &interface])
            .output();
        let shown = shown.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let b_log = std::fs::read_to_string(&fleet.node("b-1").expect("b-1").log);
        let b_log = b_log.unwrap_or_default();
        let tail: Vec<&str> = b_log.lines().rev().take(30).collect();
        panic!(
            "wireguard-go in a-1's place never reached b-1: wg show: {shown:?}\nb-1's log, last lines first:\n{}",
            tail.join("\n")
        );
    }
    assert!(
        pings(&b_ns, &addresses[0]),
        "b-1 pings wireguard-go in a-1's place"
    );
    let shown = netns::exec_in(&a_ns, "wg")
        .args(["show", &interface, "latest-handshakes"])
        .output()
        .expect("wg show");
    let shown = String::from_utf8_lossy(&shown.stdout);
    eprintln!("--- wg show {interface} latest-handshakes:\n{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().nth(1).is_some_and(|t| t != "0")),
        "wireguard-go completed a handshake: {shown}"
    );
    drop(go);
    fleet.down().expect("fleet down");
}

/// A `wireguard-go` device in a namespace, stopped (and its interface gone) on drop.
struct WireguardGo {
    child: std::process::Child,
}

impl WireguardGo {
    fn start(netns: &str, interface: &str) -> std::io::Result<WireguardGo> {
        let child = netns::exec_in(netns, "wireguard-go")
            .args(["-f", interface])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let go = WireguardGo { child };
        wait_until(
            "wireguard-go's control socket",
            Duration::from_secs(10),
            || Path::new(&format!("/var/run/wireguard/{interface}.sock")).exists(),
        );
        Ok(go)
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
