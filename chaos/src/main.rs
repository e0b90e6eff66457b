//! `warren-chaos`: the partition harness's command line.
//!
//! `run` runs scenario files, each on a fleet of its own; `up` brings a fleet up in network
//! namespaces and keeps it until Ctrl-C or SIGTERM; `cleanup` removes every namespace and
//! process a run left behind. With `cli`, this is the only crate that reads argv or prints to
//! stdout. The hidden `delay-holder` is the packet holder of the `Delay` fault, which the
//! harness starts inside a node's namespace.
//!
//! Modules (the binary's own, not the library's):
//! - [`cmd`]: one file per subcommand, and the signal handling they share.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use warren_chaos::delay::DelaySpec;
use warren_chaos::firewall::Firewall;
use warren_chaos::preflight;

use crate::cmd::run::{RunError, RunOptions};
use crate::cmd::{cleanup, delay_holder, run, up};

/// Like `println!`, but a closed stdout (the reader went away) never aborts the harness: it
/// must still tear the fleet down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod cmd;

/// Exit code when the harness cannot run here at all (not root, tools missing).
const EXIT_CANNOT_RUN: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "warren-chaos",
    version,
    about = "Partition harness for Warren: real warren processes in network namespaces"
)]
struct Cli {
    /// Log filter for the harness's own messages (stderr).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Bring a fleet up, print how to reach it, keep it until Ctrl-C or SIGTERM, then clean up.
    #[command(
        after_help = "Examples:\n  sudo warren-chaos up --control 1 --sites a:1,b:1\n  \
                            sudo warren-chaos up --runtime containerd --image-tar busybox.tar"
    )]
    Up(up::UpArgs),
    /// Run scenario files: for each, bring a fleet up, run its steps while watching every
    /// agent, check the invariants, write a report, tear the fleet down.
    ///
    /// Exit 0 when every scenario passed, 1 when an invariant failed or a step could not
    /// run, 2 when the harness cannot run here. With --self-check the agents are broken on
    /// purpose (they stop their workloads when the link to control is lost): then exit 0
    /// only if every scenario FAILED its `workloads_keep_running` check.
    #[command(
        after_help = "Examples:\n  sudo warren-chaos run chaos/scenarios/site-partition.yaml\n  \
                            sudo warren-chaos run chaos/scenarios/*.yaml --json > reports.json\n  \
                            sudo warren-chaos run --self-check chaos/scenarios/agent-cut-off.yaml"
    )]
    Run {
        /// Scenario files (YAML; see chaos/scenarios/ and docs/chaos.md).
        #[arg(required = true, value_name = "SCENARIO")]
        scenarios: Vec<PathBuf>,
        /// The warren binary. Default: next to warren-chaos, else target/release/warren,
        /// else target/debug/warren.
        #[arg(long, value_name = "PATH")]
        warren: Option<PathBuf>,
        /// Where each run's dir (node data, logs, report.json) goes, one per scenario.
        #[arg(long, value_name = "DIR", default_value = "/tmp/warren-chaos")]
        runs_dir: PathBuf,
        /// Which tool writes partition rules. Default: nft if installed, else iptables.
        #[arg(long, value_enum)]
        firewall: Option<Firewall>,
        /// Print the reports as a JSON array on stdout instead of the human summary.
        #[arg(long)]
        json: bool,
        /// Break the agents on purpose (WARREN_SELFCHECK_STOP_ON_DISCONNECT=1) and expect
        /// every scenario to fail: proof the checks can fail.
        #[arg(long)]
        self_check: bool,
        /// How long each node may take to come up, in seconds.
        #[arg(long, default_value_t = 60)]
        ready_timeout_s: u64,
        /// An OCI image-layout tarball loaded into every agent's containerd in scenarios
        /// whose fleet says `runtime: containerd` (repeat for more).
        #[arg(long = "image-tar", value_name = "FILE")]
        image_tars: Vec<PathBuf>,
    },
    /// Remove every namespace and process of earlier runs (crashed ones too).
    Cleanup {
        /// Only this run (its six-digit id).
        #[arg(long, value_name = "ID")]
        run: Option<String>,
        /// Also clean runs whose harness is still alive.
        #[arg(long)]
        force: bool,
    },
    /// Hold every packet queued to NFQUEUE QUEUE for MS ± JITTER_MS milliseconds (the `Delay`
    /// fault starts it inside a node's namespace; not for use by hand). Prints a ready line
    /// once the queue is bound; on SIGTERM lets everything it holds through and exits 0.
    #[command(hide = true)]
    DelayHolder {
        #[arg(long)]
        queue: u16,
        #[arg(long)]
        ms: u32,
        #[arg(long, default_value_t = 0)]
        jitter_ms: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(cli.log_level.as_str())
        .with_writer(std::io::stderr)
        .try_init();
    if !preflight::is_root() {
        eprintln!("{}", preflight::NEEDS_ROOT);
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let result = match cli.command {
        Command::Up(args) => up::prepare_up(args)
            .map_err(|e| (EXIT_CANNOT_RUN, e))
            .and_then(|(spec, options, run)| up::up(spec, options, run).map_err(|e| (1, e))),
        Command::Run {
            scenarios,
            warren,
            runs_dir,
            firewall,
            json,
            self_check,
            ready_timeout_s,
            image_tars,
        } => {
            let options = RunOptions {
                warren,
                runs_dir,
                firewall,
                json,
                self_check,
                ready_timeout: Duration::from_secs(ready_timeout_s),
                image_tars,
            };
            match run::run_scenarios(&scenarios, options) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(RunError::CannotRun(e)) => Err((EXIT_CANNOT_RUN, e)),
                Err(RunError::Failed(e)) => Err((1, e)),
            }
        }
        Command::Cleanup { run, force } => {
            cleanup::cleanup(run.as_deref(), force).map_err(|e| (1, e))
        }
        Command::DelayHolder {
            queue,
            ms,
            jitter_ms,
        } => delay_holder::delay_holder(queue, DelaySpec { ms, jitter_ms }).map_err(|e| (1, e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
