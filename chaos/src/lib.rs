//! The chaos harness: a fleet of real `warren` processes on one Linux machine, each node in
//! its own network namespace, with network and process faults applied to them from outside.
//!
//! How the work divides, in the order a scenario meets it:
//! - [`scenario`]: scenario files (YAML) parsed and checked before any fleet starts.
//! - [`preflight`]: root and tool checks, and locating the `warren` binary.
//! - [`run`]: the run id and the name prefix every object of a run carries, and the registry
//!   of runs (`/run/warren-chaos`) that lets `warren-chaos cleanup` find a crashed run.
//! - [`netns`]: namespaces, veth pairs and the bridge, driven through `ip`.
//! - [`fleet`]: control nodes and agents grouped into sites, started with the `warren` CLI.
//! - [`runner`]: a scenario's steps carried out on a live fleet, one file per kind of step.
//! - [`fault`]: the faults (isolate a node, cut a site off, loss, delay, kill, pause) with
//!   apply and heal.
//! - [`firewall`]: block rules inside a namespace (nftables or iptables); the rule text is
//!   built by pure functions, applying it is a thin shell-out.
//! - [`delay`]: delay and reorder without netem: the NFQUEUE holder (a hidden `delay-holder`
//!   subcommand of the harness's binary, run inside a node's namespace) and its handle.
//! - [`observe`]: the observer thread that watches every agent's status file and workload
//!   processes from outside while the steps run.
//! - [`record`]: what the runner recorded: the timeline, fault windows, writes, kills,
//!   convergences, failovers.
//! - [`check`]: the invariants, pure functions over the record and the observer's history,
//!   each verdict with its evidence.
//! - [`report`]: a run's report, as `report.json` and as the human summary.
//!
//! The `warren-chaos` binary (`main.rs`, one file per subcommand under `cmd/`) is a thin
//! layer over these: it reads argv, handles signals and prints.
//!
//! The harness drives binaries, never Warren's libraries (only `warren-api`, for names): what
//! it tests is what an operator runs. It never touches the root network namespace: the bridge
//! lives in a namespace of its own, so a run cannot disturb the host's network and two runs
//! cannot see each other.

pub mod check;
pub mod delay;
pub mod fault;
pub mod firewall;
pub mod fleet;
pub mod netns;
pub mod observe;
pub mod preflight;
pub mod record;
pub mod report;
pub mod run;
pub mod runner;
pub mod scenario;
