//! Warren's control plane: the single source of truth for a fleet's desired state.
//!
//! - [`command`]: what a Raft log entry says ([`Command`]) and what applying it returns.
//! - [`state`]: [`ClusterState`], the replicated desired state, and its pure `apply`.
//! - [`scheduler`]: placement of replicas, a pure function called inside `apply`.
//! - [`gossip`]: the control node's side of the mesh (cluster id, keyring, seeds, members).
//! - [`members`]: the control members' API addresses, as clients are told them.
//! - [`secrets`]: secret values sealed at rest, and re-sealed per node for agents' views.
//! - [`store`]: openraft log and state-machine storage on sled.
//! - [`network`] + [`rpc`]: Raft and control RPCs between control nodes; [`contact`] is the
//!   pure book of which peers answer.
//! - [`election`] (pure) and [`timers`]: the leader's heartbeat and the election timer, run
//!   here rather than by openraft's tick.
//! - [`types`]: openraft type configuration.
//!
//! The only crate that names openraft. Decisions are pure functions of the log: `apply` reads
//! no clock, no randomness and no I/O; facts from the world enter as entries the leader
//! proposes.

pub mod accept;
pub mod catalogue;
pub mod command;
pub mod contact;
pub mod control;
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
pub mod push;
pub mod rekey;
pub mod rpc;
pub mod scheduler;
pub mod secrets;
pub mod state;
pub mod status;
pub mod store;
pub mod timers;
pub mod types;

pub use command::{Command, Effect, Op, Outcome, Rejection, RejectionCode};
pub use state::ClusterState;
pub use types::{Raft, RaftMember, TypeConfig};
