//! Warren's control plane: the single source of truth for a fleet's desired state.
//!
//! # Modules
//!
//! The replicated state and its pure deciding cores:
//! - [`command`]: what a Raft log entry says ([`Command`]) and what applying it returns.
//! - [`state`]: [`ClusterState`], the replicated desired state, and its pure `apply`.
//! - [`scheduler`]: placement of replicas, a pure function called inside `apply`.
//! - [`rekey`]: the entry that re-seals what the cluster key protects under a new generation.
//! - [`older`]: the state and log layouts older builds wrote, and their upgrades.
//! - [`catalogue`]: what each node's view carries about the others (service catalogue, peers).
//! - [`liveness`]: the leader's pure judge of which agents turned unreachable or came back.
//!
//! Raft between control nodes:
//! - [`types`]: openraft type configuration and [`RaftMember`], a member's addresses.
//! - [`store`]: openraft log and state-machine storage on sled.
//! - [`network`] + [`rpc`]: Raft and control RPCs between control nodes over QUIC.
//! - [`contact`]: the pure book of which control peers answer.
//! - [`election`] (pure) and [`timers`]: the leader's heartbeat and the election timer, run
//!   here rather than by openraft's tick.
//! - [`control`]: the shared handle: writes (forwarded to the leader), reads, peer RPCs, joins.
//!
//! Serving nodes and operators:
//! - [`node`]: a control node's life (init, join, run, shutdown), its data dir and config, and
//!   the leader's periodic duties.
//! - [`accept`]: incoming QUIC connections, each handed by its ALPN to the module serving it.
//! - [`push`]: the desired-state stream to each agent (views, deltas, heartbeats, acks).
//! - [`quorum`]: whether this node is in touch with a majority; agents of a node that is not
//!   are sent to the other control nodes.
//! - [`status`]: what agents report: their links, status reports and events.
//! - [`agent_logs`]: workload logs asked of agents over their own connections, relayed
//!   between members.
//! - [`http`]: the HTTP API (routes of `warren_api::routes`) over TLS and the Unix socket.
//! - [`members`]: the control members' API addresses, as clients are told them.
//! - [`metrics`]: Prometheus metrics and the plain-HTTP `/metrics`, `/health`, `/ready`.
//!
//! Keys and gossip:
//! - [`keys`]: the cluster keys this node holds, one per generation, and following rotations.
//! - [`secrets`]: secret values sealed at rest, and re-sealed per node for agents' views.
//! - [`gossip`]: the control node's side of the mesh (cluster id, keyring, seeds, members).
//!
//! The only crate that names openraft. Decisions are pure functions of the log: `apply` reads
//! no clock, no randomness and no I/O; facts from the world enter as entries the leader
//! proposes.

pub mod accept;
pub mod agent_logs;
pub mod catalogue;
pub mod command;
pub mod contact;
pub mod control;
pub mod declarations;
pub mod election;
pub mod gossip;
pub mod http;
pub mod keys;
pub mod liveness;
pub mod members;
pub mod metrics;
pub mod network;
pub mod node;
pub mod older;
pub mod peer_scope;
pub mod push;
pub mod quorum;
pub mod rekey;
pub mod rollout;
pub mod rpc;
pub mod scheduler;
pub mod secrets;
pub mod state;
pub mod status;
pub mod store;
pub mod timers;
pub mod types;

pub use command::{
    Command, Effect, MintedToken, Op, Outcome, PutIfVersion, Rejection, RejectionCode,
};
pub use state::ClusterState;
pub use types::{Raft, RaftMember, TypeConfig};
