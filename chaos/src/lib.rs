//! The chaos harness: a fleet of real `warren` processes on one Linux machine, each node in
//! its own network namespace, with network and process faults applied to them from outside.
//!
//! How the work divides:
//! - [`run`]: the run id and the name prefix every object of a run carries, and the registry
//!   of runs (`/run/warren-chaos`) that lets `warren-chaos cleanup` find a crashed run.
//! - [`netns`]: namespaces, veth pairs and the bridge, driven through `ip`.
//! - [`firewall`]: block rules inside a namespace (nftables or iptables); the rule text is
//!   built by pure functions, applying it is a thin shell-out.
//! - [`fleet`]: control nodes and agents grouped into sites, started with the `warren` CLI.
//! - [`fault`]: the faults (isolate a node, cut a site off, loss, delay, kill, pause) with
//!   apply and heal.
//! - [`delay`]: delay and reorder without netem: the NFQUEUE holder (a hidden `delay-holder`
//!   subcommand of the harness's binary, run inside a node's namespace) and its handle.
//! - [`preflight`]: root and tool checks, and locating the `warren` binary.
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
