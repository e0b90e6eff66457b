//! Warren's edge agent: keeps a box's workloads running from its cached desired state, with or
//! without the control plane.
//!
//! - [`agent`]: the agent itself — joining (`agent/join.rs`), `agent.json`
//!   (`agent/identity.rs`), `status.json` (`agent/status_file.rs`), starting and stopping the
//!   parts (`agent/wiring.rs`, [`agent::Agent::serve`]) and the reconcile loop
//!   (`agent/reconcile.rs`: offline boot, re-adoption, carrying out the planner's actions).
//! - [`cache`]: the durable cache (sled): the node's view and the agent's records, versioned
//!   and checksummed; a corrupt, truncated or foreign cache is a clear error.
//! - [`discovery`]: gossip membership and the DNS server, run by the agent from the cached
//!   view (so both work with control out of reach); the DNS catalogue rebuilt on every view or
//!   membership change, the membership handed to the link as a witness.
//! - [`dns`]: the agent's DNS server (hickory-server) — `<service>.warren.` from a catalogue
//!   snapshot, alive replicas first, other names forwarded upstream; started by [`discovery`].
//! - [`health`]: health checks — HTTP, TCP and exec probes run by [`health::HealthMonitor`],
//!   decided by the sans-IO [`health::HealthTracker`] (consecutive failures, start period).
//! - [`link`]: the link to the control plane — one QUIC stream, views persisted and flushed
//!   before they are acked, reconnection with jittered backoff; only removal ends it
//!   (`link/session.rs`: one session on one connection).
//! - [`link_failure`]: when the link gives up on a silent control node — QUIC silence past a
//!   round-trip-scaled margin, corroborated by gossip (sans-IO).
//! - [`listeners`]: the metrics, DNS and gossip listeners — where they listen (kept from the
//!   join), checking them at join, and their state while the agent runs (retried, never
//!   silently given up).
//! - [`logs`]: workload logs read for control, with the times the agent notes beside the
//!   files (they hold none); answers bounded by the request's byte budget.
//! - [`metrics`]: Prometheus metrics (labelled by node and site) and the plain-HTTP
//!   `/metrics`, `/health`, `/ready` listener.
//! - [`offline`]: work on a stopped agent's data dir — stopping every recorded workload, as a
//!   power-off would (`warren dev` on exit).
//! - [`planner`]: the sans-IO reconcile planner — desired view + observed workloads + restart
//!   history → actions. Pure; no clock reads (time is an input). The restart history is
//!   `planner/restart_book.rs`.
//! - [`report`]: status going up — replica states and the bounded, cached event buffer the
//!   link drains into status reports.
//! - [`runtime`]: runtimes behind one trait; the native process runtime (workloads in their own
//!   process group, logs to files, SIGTERM then SIGKILL, adoption by pid + start time).
//! - [`secrets`]: the node secret key (from the join grant) and opening the view's sealed
//!   secrets into a workload's files; values change in place, never by a restart.
//!
//! Must never: stop a workload because the control plane is unreachable; restart a workload
//! whose spec did not change; block the reconcile loop on the network; log or cache a secret's
//! value in the clear. (The test-only `AgentOptions::selfcheck_stop_on_disconnect` breaks the
//! first rule on purpose, for the chaos harness's self-check.)

pub mod agent;
pub mod cache;
pub mod discovery;
pub mod dns;
pub mod health;
pub mod link;
pub mod link_failure;
pub mod listeners;
pub mod logs;
pub mod metrics;
pub mod offline;
pub mod overlay;
pub mod planner;
pub mod report;
pub mod runtime;
pub mod secrets;
