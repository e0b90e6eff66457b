//! An agent's footprint on a box with flash storage, with real `warren` processes: the bytes an
//! idle agent with 10 workloads writes (and the control node next to it, for information), and
//! the agent's resident memory idle and with 50 workloads.
//!
//! This prints figures for people to read; it asserts nothing. Run it with
//! `cargo build --release -p warren-cli && cargo bench -p warren-tests --bench footprint`.
//! One `warren control init` and one `warren agent join --token-file` run as subprocesses on
//! 127.0.0.1, every port 0, in a temp dir, with gossip on and the WireGuard overlay off (it
//! would make TUN devices on the machine running the bench); the workloads are `sleep`
//! processes of one process-runtime service, 10 replicas for the wear window, then scaled to
//! 50 for the memory reading. Knobs (flag, or environment variable):
//! - `--warren PATH` / `WARREN_BIN`: the binary for control and the CLI (default: `warren` in
//!   the profile dir of this bench, `target/release/warren`);
//! - `--agent-warren PATH` / `WARREN_AGENT_BIN`: the agent's binary, when it differs (an
//!   aarch64 build);
//! - `--agent-wrapper CMD` / `WARREN_AGENT_WRAPPER`: what runs the agent's binary
//!   (`qemu-aarch64`; `QEMU_LD_PREFIX` defaults to `/usr/aarch64-linux-gnu` then), so that
//!   the agent runs emulated while control stays native;
//! - `--window-s N` / `WARREN_FOOTPRINT_WINDOW_S`: the idle window wear is measured over
//!   (default 600 s; shorter for a quick run — the table says which was used);
//! - `WARREN_BENCH_KEEP=1` keeps the temp dir (data dirs, the processes' stderr logs).
//!
//! Wear is `/proc/<pid>/io` over the window: `write_bytes` (what the process sent towards the
//! block device: pages it dirtied, counted once per writeback, which is what reaches flash
//! before the filesystem's own journal and the flash translation layer) and `wchar` (bytes
//! passed to write calls, cached or not). The window starts once every workload runs and the
//! agent has had [`WARM_UP`] to settle (start-up writes are not idle wear).
// The point of this binary is to print a table, and its progress on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod fixtures;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};

use fixtures::{STARTED, Sweeper, mib, proc_status_kib, progress, running, stale_sources};

/// Workloads the agent holds while its wear is measured.
const WEAR_WORKLOADS: u32 = 10;
/// Workloads the agent holds for the loaded memory reading.
const RSS_WORKLOADS: u32 = 50;
/// The default idle window wear is measured over.
const WINDOW_DEFAULT: Duration = Duration::from_secs(600);
/// Left out of the window once every workload runs: the start-up writes (the view, one record
/// per workload, the restart book, the status file) are not what an idle agent wears.
const WARM_UP: Duration = Duration::from_secs(30);
/// How long the agent is left alone before a memory reading.
const MEMORY_SETTLE: Duration = Duration::from_secs(10);
/// Bound on anything the bench waits for (an emulated agent starts slowly).
const WAIT_LIMIT: Duration = Duration::from_secs(180);
/// The wear target: bytes written per hour by an idle agent with [`WEAR_WORKLOADS`].
const WEAR_TARGET_BYTES_PER_HOUR: f64 = 1e6;
/// The memory targets (VmRSS), idle and with [`RSS_WORKLOADS`].
const RSS_IDLE_TARGET_KIB: u64 = 15 * 1024;
const RSS_LOADED_TARGET_KIB: u64 = 25 * 1024;

/// What to run and for how long.
struct Options {
    /// Control node and CLI.
    warren: PathBuf,
    /// The agent's binary.
    agent_warren: PathBuf,
    /// What runs the agent's binary, if anything (`qemu-aarch64`).
    agent_wrapper: Option<String>,
    /// The wear window.
    window: Duration,
}

fn main() -> anyhow::Result<()> {
    let started = *STARTED.get_or_init(Instant::now);
    let options = parse_options()?;
    let root = tempfile::tempdir().context("create the bench's temp dir")?;
    let root_path = root.path().to_owned();
    let _root = if std::env::var_os("WARREN_BENCH_KEEP").is_some() {
        progress(&format!("keeping {}", root.keep().display()));
        None
    } else {
        Some(root)
    };
    // Dropped before `_root`: the workloads left running under it are killed.
    let _sweeper = Sweeper {
        root: root_path.clone(),
    };
    print_header(&options);
    let figures = measure(&options, &root_path)?;
    print_figures(&figures, &options);
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Flags first, then the environment, then the defaults. `cargo bench` passes `--bench`,
/// which is ignored.
fn parse_options() -> anyhow::Result<Options> {
    let mut flags = std::collections::BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--warren" | "--agent-warren" | "--agent-wrapper" | "--window-s" => {
                let value = args
                    .next()
                    .with_context(|| format!("{arg} needs a value"))?;
                flags.insert(arg, value);
            }
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; this bench takes --warren PATH, --agent-warren \
                 PATH, --agent-wrapper CMD, --window-s SECONDS"
            ),
        }
    }
    let knob = |flag: &str, env: &str| {
        flags
            .get(flag)
            .cloned()
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    };
    let warren = match knob("--warren", "WARREN_BIN") {
        Some(path) => PathBuf::from(path),
        None => fixtures::warren_binary()?,
    };
    let agent_warren =
        knob("--agent-warren", "WARREN_AGENT_BIN").map_or(warren.clone(), PathBuf::from);
    ensure!(
        agent_warren.is_file(),
        "{} is missing",
        agent_warren.display()
    );
    let window = match knob("--window-s", "WARREN_FOOTPRINT_WINDOW_S") {
        Some(seconds) => Duration::from_secs(
            seconds
                .parse()
                .with_context(|| format!("window {seconds:?} is not whole seconds"))?,
        ),
        None => WINDOW_DEFAULT,
    };
    ensure!(!window.is_zero(), "the wear window must be at least 1 s");
    Ok(Options {
        warren,
        agent_warren,
        agent_wrapper: knob("--agent-wrapper", "WARREN_AGENT_WRAPPER"),
        window,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `warren` subprocess whose stdout lines are collected and whose stderr goes to a file;
/// killed when dropped (its workloads are the [`Sweeper`]'s).
struct Warren {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr_log: PathBuf,
}

impl Warren {
    /// `program args…`, stderr into `stderr_log`.
    fn spawn(mut command: Command, stderr_log: PathBuf) -> anyhow::Result<Self> {
        let log = std::fs::File::create(&stderr_log)
            .with_context(|| format!("create {}", stderr_log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {command:?}"))?;
        let (sender, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            stderr_log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stdout line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no line with {needle:?}{}", self.log_tail()),
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n  ");
        format!("; last lines of {}:\n  {tail}", self.stderr_log.display())
    }

    /// SIGTERM, then up to 15 s to exit.
    fn stop(mut self) -> anyhow::Result<()> {
        fixtures::signal("TERM", &[self.pid()])?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().context("wait for warren")?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "still running 15 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `program` with no cluster settings leaking in from the machine running the bench.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command
        .env_remove("WARREN_CONFIG")
        .env_remove("WARREN_TOKEN")
        .env_remove("WARREN_SELFCHECK_STOP_ON_DISCONNECT")
        .env("HOME", "/nonexistent-warren-bench-home");
    command
}

/// The cluster: one control node and one joined agent.
struct Cluster {
    control: Warren,
    agent: Warren,
    agent_dir: PathBuf,
    control_dir: PathBuf,
    warren: PathBuf,
    admin_conf: PathBuf,
}

impl Cluster {
    fn start(options: &Options, root: &Path) -> anyhow::Result<Self> {
        progress("start control");
        let control_dir = root.join("control");
        let mut command = clean_command(&options.warren);
        command
            .args(["control", "init", "--name", "ops-1", "--site", "central"])
            .args(["--api", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .args([
                "--metrics",
                "none",
                "--gossip",
                "127.0.0.1:0",
                "--wireguard",
                "off",
            ])
            .arg("--data-dir")
            .arg(&control_dir);
        let mut control = Warren::spawn(command, root.join("control.stderr.log"))?;
        let ready = control.wait_for_line(" serving ")?;
        let quic = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("quic="))
            .ok_or_else(|| anyhow!("no quic address in {ready:?}"))?
            .to_owned();
        let admin_conf = control_dir.join("admin.conf");
        let token = cli(
            &options.warren,
            &admin_conf,
            &["token", "create", "--role", "agent"],
        )?;
        let token_file = root.join("agent.token");
        std::fs::write(&token_file, token.trim()).context("write the token file")?;
        progress("join the agent");
        let agent_dir = root.join("agent");
        let agent = start_agent(options, root, &agent_dir, &quic, &token_file)?;
        Ok(Self {
            control,
            agent,
            agent_dir,
            control_dir,
            warren: options.warren.clone(),
            admin_conf,
        })
    }

    /// A CLI command against this cluster; its stdout.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        cli(&self.warren, &self.admin_conf, args)
    }

    /// Waits until the agent's `status.json` shows it connected with `workloads` running.
    fn wait_running(&self, workloads: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let status = warren_tests::agent_status(&self.agent_dir)
                .filter(|s| s.agent_pid == self.agent.pid());
            if status.is_some_and(|s| s.link.connected && running(&s).len() == workloads as usize) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "timed out waiting for {workloads} running workloads{}",
                self.agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `warren agent join`, running once it prints so. Under a wrapper, join's own carrying on as
/// `agent run` (an exec of its binary) would run the foreign binary natively and fail, so the
/// bench lets that join end and starts `agent run` under the wrapper itself.
fn start_agent(
    options: &Options,
    root: &Path,
    dir: &Path,
    quic: &str,
    token_file: &Path,
) -> anyhow::Result<Warren> {
    let mut join = agent_command(options);
    join.args(["agent", "join", "--data-dir"])
        .arg(dir)
        .args(["--control", quic, "--token-file"])
        .arg(token_file)
        .args(["--name", "edge-1", "--site", "lisbon", "--metrics", "none"])
        .args([
            "--gossip",
            "127.0.0.1:0",
            "--dns",
            "none",
            "--wireguard",
            "off",
        ]);
    let mut agent = Warren::spawn(join, root.join("agent.stderr.log"))?;
    if options.agent_wrapper.is_none() {
        agent.wait_for_line(" running")?;
        return Ok(agent);
    }
    agent.wait_for_line("joined the cluster")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent
        .child
        .try_wait()
        .context("wait for agent join")?
        .is_none()
    {
        ensure!(Instant::now() < deadline, "agent join did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut run = agent_command(options);
    run.args(["agent", "run", "--data-dir"]).arg(dir);
    let mut agent = Warren::spawn(run, root.join("agent-run.stderr.log"))?;
    agent.wait_for_line(" running")?;
    Ok(agent)
}

/// The agent's binary, under the wrapper if there is one.
fn agent_command(options: &Options) -> Command {
    match &options.agent_wrapper {
        Some(wrapper) => {
            let mut command = clean_command(wrapper);
            if std::env::var_os("QEMU_LD_PREFIX").is_none() {
                command.env("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu");
            }
            command.arg(&options.agent_warren);
            command
        }
        None => clean_command(&options.agent_warren),
    }
}

/// `warren --config ADMIN args…`; its stdout, or an error with its stderr.
fn cli(warren: &Path, admin_conf: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = clean_command(warren)
        .arg("--config")
        .arg(admin_conf)
        .args(args)
        .output()
        .with_context(|| format!("run warren {args:?}"))?;
    ensure!(
        output.status.success(),
        "warren {args:?}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// `/proc/<pid>/io`, the fields the table shows.
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    wchar: u64,
    write_bytes: u64,
    cancelled_write_bytes: u64,
}

impl Io {
    fn read(pid: u32) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .with_context(|| format!("read /proc/{pid}/io"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("{name} in /proc/{pid}/io"))
        };
        Ok(Self {
            wchar: field("wchar")?,
            write_bytes: field("write_bytes")?,
            cancelled_write_bytes: field("cancelled_write_bytes")?,
        })
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            wchar: self.wchar.saturating_sub(earlier.wchar),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
            cancelled_write_bytes: self
                .cancelled_write_bytes
                .saturating_sub(earlier.cancelled_write_bytes),
        }
    }
}

/// Everything read at one end of the wear window.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    agent: Io,
    control: Io,
    /// Bytes of the files under the agent's `cache/` (sled).
    cache_bytes: u64,
    /// Bytes of the agent's data dir (the workloads' files, their logs included, are in
    /// `<data dir>-workloads` beside it: their writes, not the agent's).
    agent_dir_bytes: u64,
    /// Bytes of the agent's stderr log (on a box: journald's).
    agent_log_bytes: u64,
    control_dir_bytes: u64,
}

impl Snapshot {
    fn take(cluster: &Cluster) -> anyhow::Result<Self> {
        let agent_log = std::fs::metadata(&cluster.agent.stderr_log).map_or(0, |m| m.len());
        Ok(Self {
            agent: Io::read(cluster.agent.pid())?,
            control: Io::read(cluster.control.pid())?,
            cache_bytes: tree_bytes(&cluster.agent_dir.join("cache")),
            agent_dir_bytes: tree_bytes(&cluster.agent_dir),
            agent_log_bytes: agent_log,
            control_dir_bytes: tree_bytes(&cluster.control_dir),
        })
    }
}

/// Total length of the files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => tree_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// (VmRSS, VmHWM, RssAnon, RssFile) in KiB. RssFile is mostly the binary's code, pages the
/// kernel can drop and read again; RssAnon is the heap and stacks.
type Memory = [Option<u64>; 4];

fn memory_of(pid: u32) -> Memory {
    ["VmRSS", "VmHWM", "RssAnon", "RssFile"].map(|field| proc_status_kib(pid, field))
}

struct Figures {
    idle: Memory,
    loaded: Memory,
    before: Snapshot,
    after: Snapshot,
    /// The window as it was measured (the sleep may overrun).
    window: Duration,
}

/// Starts the cluster; memory idle; 10 workloads, warm-up, the wear window; 50 workloads,
/// memory again.
fn measure(options: &Options, root: &Path) -> anyhow::Result<Figures> {
    let cluster = Cluster::start(options, root)?;
    cluster.wait_running(0)?;
    progress(&format!(
        "connected; idle for {} s",
        MEMORY_SETTLE.as_secs()
    ));
    std::thread::sleep(MEMORY_SETTLE);
    let idle = memory_of(cluster.agent.pid());

    progress(&format!("create {WEAR_WORKLOADS} sleep workloads"));
    let replicas = WEAR_WORKLOADS.to_string();
    let create = [
        "service",
        "create",
        "wear",
        "--command",
        "sleep 100000",
        "--replicas",
    ];
    cluster.cli(&[&create[..], &[replicas.as_str()]].concat())?;
    cluster.wait_running(WEAR_WORKLOADS)?;
    progress(&format!("all running; warm-up {} s", WARM_UP.as_secs()));
    std::thread::sleep(WARM_UP);
    let (before, after, window) = wear_window(&cluster, options.window)?;

    progress(&format!("scale to {RSS_WORKLOADS} workloads"));
    let replicas = RSS_WORKLOADS.to_string();
    cluster.cli(&["service", "scale", "wear", &replicas, "--detach"])?;
    cluster.wait_running(RSS_WORKLOADS)?;
    std::thread::sleep(MEMORY_SETTLE);
    let loaded = memory_of(cluster.agent.pid());

    progress("stop the agent and control");
    let Cluster { control, agent, .. } = cluster;
    agent.stop().context("stop the agent")?;
    control.stop().context("stop control")?;
    Ok(Figures {
        idle,
        loaded,
        before,
        after,
        window,
    })
}

/// Snapshots at both ends of `window`, a progress line a minute in between.
fn wear_window(
    cluster: &Cluster,
    window: Duration,
) -> anyhow::Result<(Snapshot, Snapshot, Duration)> {
    progress(&format!("wear window: {} s idle", window.as_secs()));
    let before = Snapshot::take(cluster)?;
    let started = Instant::now();
    while started.elapsed() < window {
        let left = window.saturating_sub(started.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(60)));
        let now = Snapshot::take(cluster)?.agent.since(before.agent);
        progress(&format!(
            "  {:.0} s: agent write_bytes {} wchar {}",
            started.elapsed().as_secs_f64(),
            now.write_bytes,
            now.wchar
        ));
    }
    let after = Snapshot::take(cluster)?;
    Ok((before, after, started.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn print_header(options: &Options) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "footprint: one control node and one agent, real `warren` processes (gossip on, \
         WireGuard off)"
    );
    println!(
        "  host {} ({cpus} CPUs), control and CLI {}",
        std::env::consts::ARCH,
        options.warren.display()
    );
    match &options.agent_wrapper {
        Some(wrapper) => println!(
            "  agent {} under {wrapper} (its memory includes the emulator's)",
            options.agent_warren.display()
        ),
        None => println!("  agent {}", options.agent_warren.display()),
    }
    if let Some(newer) = stale_sources(&options.warren) {
        println!(
            "  WARNING: {} is newer than the binary; rebuild it",
            newer.display()
        );
    }
    println!(
        "  wear window {} s idle with {WEAR_WORKLOADS} workloads, after every workload ran \
         and {} s of warm-up (excluded)",
        options.window.as_secs(),
        WARM_UP.as_secs()
    );
    println!();
}

fn print_figures(figures: &Figures, options: &Options) {
    let window_s = figures.window.as_secs_f64();
    let per_hour = |bytes: u64| bytes as f64 * 3600.0 / window_s;
    let agent = figures.after.agent.since(figures.before.agent);
    let control = figures.after.control.since(figures.before.control);
    let grew = |f: fn(&Snapshot) -> u64| f(&figures.after) as i64 - f(&figures.before) as i64;
    println!("  {:<52} {:>16} {:>12}", "what", "figure", "target");
    let wear = per_hour(agent.write_bytes);
    row(
        "agent write_bytes per hour (10 workloads, idle)",
        &per_hour_text(wear),
        "≤ 1 MB/h",
        Some(wear <= WEAR_TARGET_BYTES_PER_HOUR),
    );
    let info = |what: &str, figure: String| row(what, &figure, "info", None);
    info("  over the window", bytes_text(agent.write_bytes as f64));
    info(
        "  cancelled_write_bytes",
        bytes_text(agent.cancelled_write_bytes as f64),
    );
    info("agent wchar per hour", per_hour_text(per_hour(agent.wchar)));
    info(
        "agent cache/ growth over the window",
        signed_text(grew(|s| s.cache_bytes)),
    );
    info(
        "agent data dir growth",
        signed_text(grew(|s| s.agent_dir_bytes)),
    );
    info(
        "agent stderr log growth",
        signed_text(grew(|s| s.agent_log_bytes)),
    );
    info(
        "control write_bytes per hour",
        per_hour_text(per_hour(control.write_bytes)),
    );
    info(
        "control wchar per hour",
        per_hour_text(per_hour(control.wchar)),
    );
    info(
        "control data dir growth",
        signed_text(grew(|s| s.control_dir_bytes)),
    );
    memory_rows(
        "agent VmRSS, 0 workloads",
        figures.idle,
        RSS_IDLE_TARGET_KIB,
    );
    let loaded = format!("agent VmRSS, {RSS_WORKLOADS} workloads");
    memory_rows(&loaded, figures.loaded, RSS_LOADED_TARGET_KIB);
    println!(
        "  (window measured: {window_s:.0} s of {} s asked; MB = 10^6 bytes)",
        options.window.as_secs()
    );
    println!();
}

fn memory_rows(what: &str, [rss, hwm, anon, file]: Memory, target_kib: u64) {
    let target = format!("≤ {} MiB", target_kib / 1024);
    row(what, &mib(rss), &target, rss.map(|kib| kib <= target_kib));
    row("  VmHWM (peak)", &mib(hwm), "info", None);
    row("  RssAnon (heap, stacks)", &mib(anon), "info", None);
    row(
        "  RssFile (mostly the binary's code)",
        &mib(file),
        "info",
        None,
    );
}

fn row(what: &str, figure: &str, target: &str, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    };
    println!("  {what:<52} {figure:>16} {target:>12}  {verdict}");
}

fn bytes_text(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.2} MB", bytes / 1e6)
    } else {
        format!("{:.1} kB", bytes / 1e3)
    }
}

fn per_hour_text(bytes: f64) -> String {
    format!("{}/h", bytes_text(bytes))
}

fn signed_text(bytes: i64) -> String {
    let sign = if bytes < 0 { "-" } else { "+" };
    format!("{sign}{}", bytes_text(bytes.unsigned_abs() as f64))
}
