//! Warren's mesh: who is in the fleet and alive, spread by gossip.
//!
//! Every agent runs one [`Mesh`], its site's; control nodes run one per site on the same
//! socket, and the unnamed one among themselves. A mesh is [chitchat] membership (scuttlebutt
//! anti-entropy plus a phi-accrual failure detector) over a UDP transport on which every
//! datagram is sealed with AES-256-GCM under the cluster's gossip key. Nodes publish soft
//! metadata — name, role, site, overlay address, WireGuard public key, advertised endpoints,
//! the revision they run, their running services' endpoints — and read everyone else's as
//! [`Member`]s with a [`Liveness`].
//!
//! Modules, from the bottom:
//! - [`keyring`]: sealing and opening datagrams, key rotation, replay protection (sans-IO).
//! - [`fragment`]: splitting chitchat messages into sealed-datagram-sized pieces (sans-IO).
//! - [`identity`]: each node signs its own state with its certificate's key; members' states
//!   are accepted only as signed, and a member is only as alive as its latest signature.
//! - [`fault`]: [`GossipFaultSwitch`], a test switch that drops datagrams to and from chosen
//!   peers.
//! - `syn_budget`: how many live peers a round's SYNs reach (sans-IO).
//! - `socket`: [`GossipSocket`], one UDP socket carrying one mesh or several (a control node
//!   is in every site's mesh): it opens each datagram and hands it to its scope's mesh.
//! - `transport`: the chitchat transport that relays chitchat's own encoding through loopback
//!   and seals it on the real socket.
//! - [`member`]: metadata keys, [`Member`], checking authorising claims against the registry,
//!   liveness changes (pure).
//! - [`config`]: [`MeshConfig`] and the named timers with their defaults.
//! - `verdict`: this node's verdict on each member — chitchat's phi-accrual detector, applied
//!   between its rounds too.
//! - `mesh`: [`Mesh`], the running node.
//! - [`metrics`]: `warren_mesh_*` Prometheus metrics.
//!
//! What this crate must never do: treat gossip as authority. The gossip key is shared by the
//! cluster, so anything relayed is a claim until the member's own signature backs it
//! ([`identity`]); even signed, WireGuard keys and overlay addresses are
//! checked against the node registry ([`Member::verify_claims`]) before use. It never sends a
//! datagram that is not sealed, never opens one larger than
//! [`MAX_DATAGRAM_BYTES`](keyring::MAX_DATAGRAM_BYTES), reads no environment and prints
//! nothing. It depends on `api` only among Warren's crates.

pub mod config;
pub mod fault;
pub mod fragment;
pub mod identity;
pub mod keyring;
pub mod member;
mod mesh;
pub mod metrics;
mod socket;
mod syn_budget;
mod transport;
mod verdict;

pub use config::{ConfigError, MemberConfig, MeshConfig, MeshTimers};
pub use fault::GossipFaultSwitch;
pub use identity::{MeshIdentity, Unverified};
pub use keyring::{DropReason, GossipKey, KeyId, Keyring, RotateError};
pub use member::{
    ClaimError, ClaimedIdentity, Liveness, LivenessChange, Member, RegisteredIdentity,
    VerifiedIdentity, liveness_changes,
};
pub use mesh::{
    KeyRotator, MAX_META_KEY_BYTES, MAX_META_KEYS, MAX_META_VALUE_BYTES, Mesh, MeshStartError,
    MetaError,
};
pub use metrics::MeshMetrics;
pub use socket::{GossipSocket, INBOX_DATAGRAMS, MAX_PEER_KEYS, ScopeError};
pub use transport::RELAY_TIMEOUT;
