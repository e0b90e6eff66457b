//! Wire messages between agents and the control plane, and the postcard codec for them.
//!
//! One QUIC stream per agent carries [`AgentToControl`] up and [`ControlToAgent`] down
//! (docs/design.md §3, Push and Status). `transport` frames each message with a length prefix; this
//! module turns a message into the frame's bytes and back with [`encode`] and [`decode`].
//!
//! # Compatibility
//! Postcard is not self-describing: fields are encoded by position and enum variants by index.
//! So within one [`WIRE_VERSION`], types may only gain enum variants *at the end*; any other
//! change (a field added, removed or reordered, a variant reordered) bumps the version. The
//! agent says its version in [`AgentHello`]; control refuses versions it cannot speak with
//! [`RefusalReason::WireVersion`]. The agent's on-disk cache stores these types too; it keeps
//! a format byte per value and reads older formats through their old layouts
//! ([`crate::older`]).

mod view;

pub use view::{
    ApplyError, NodeView, PeerInfo, ServiceEndpoint, ViewChange, ViewDelta, ViewDigest,
};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::Event;
use crate::ids::{NodeId, Revision};
use crate::replica::ReplicaStatus;

/// Version of the messages in this module. Bumped on any incompatible change.
/// 3: specs with `user`, `group` and `cap_add` (an older agent would run them as root).
/// 4: views carry the WireGuard overlay (`NodeView::mesh`, peers' keys and endpoints).
/// 5: specs with health-gated rollouts (`UpdateConfig::monitor_ms`, …); replica statuses say
/// which workload they describe (`ReplicaStatus::workload_hash`).
/// 6: specs with a metrics endpoint (`ServiceSpec::metrics`); views carry their site's
/// metrics endpoints (`NodeView::scrape`).
/// 7: deltas change the peers and the catalogue an entry at a time (`ViewChange::UpsertPeer`,
/// `RemovePeer`, `UpsertEndpoint`, `RemoveEndpoint`) instead of replacing the whole list.
pub const WIRE_VERSION: u16 = 7;

/// Oldest agent wire version control still serves: version 6 differs from 7 only in the
/// delta changes it understands, and control sends a version-6 agent whole lists instead.
pub const MIN_WIRE_VERSION: u16 = 6;

/// Largest encoded message, in bytes. Both [`encode`] and [`decode`] enforce it; `transport`
/// enforces it on frame lengths before reading a frame.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How often an agent's link pings its control node at the QUIC level when it has nothing else
/// to send. Both ends rely on it: the agent's failure detector counts a silence longer than this
/// (plus a round-trip margin) as suspicious, and control counts an agent it has not heard from
/// for a few of these as gone from its link, even before the stream is closed.
pub const AGENT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// How often each end of an agent's stream speaks when it has nothing else to say: control
/// sends a heartbeat, the agent repeats its last ack.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How long either end of an agent's stream hears nothing before it gives the stream up:
/// three missed heartbeats. Control then counts the agent as disconnected (towards
/// `unreachable_after`) without waiting for QUIC's idle timeout; the agent moves to another
/// control node even when gossip cannot corroborate the silence.
pub const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Most events an agent puts in one [`StatusReport`]; a larger backlog goes in several
/// reports, and what the agent had to drop is counted in `events_dropped`.
pub const MAX_EVENTS_PER_REPORT: usize = 1024;

/// Largest message an agent sends to control. An agent's messages are its hello, acks, its
/// listeners and status reports; the largest legitimate one, a report of
/// [`MAX_EVENTS_PER_REPORT`] events of [`MAX_EVENT_TEXT_BYTES`] plus a few hundred replicas,
/// is about 1.5 MiB. Control to agent keeps [`MAX_MESSAGE_BYTES`]: a node's view (secrets,
/// catalogue) can be larger.
pub const MAX_AGENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of an event's or a replica status's message that control keeps; the rest is cut
/// (at a character boundary, marked with `…`).
pub const MAX_EVENT_TEXT_BYTES: usize = 1024;

/// Encodes a message with postcard.
///
/// # Errors
/// [`EncodeError::TooLarge`] when the encoding exceeds [`MAX_MESSAGE_BYTES`];
/// [`EncodeError::Serialize`] if serde refuses the value (not expected for this crate's
/// types).
pub fn encode<T: Serialize + ?Sized>(message: &T) -> Result<Vec<u8>, EncodeError> {
    let bytes = postcard::to_allocvec(message).map_err(EncodeError::Serialize)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes one whole message. Never panics, whatever the bytes.
///
/// # Errors
/// [`DecodeError::TooLarge`] for input over [`MAX_MESSAGE_BYTES`] (checked before decoding),
/// [`DecodeError::Truncated`] when the input ends mid-message, [`DecodeError::TrailingBytes`]
/// when bytes follow a complete message, and [`DecodeError::Invalid`] for anything else that
/// is not a valid `T` (bad enum tag, bad UTF-8, a name that fails validation, …).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let (message, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        other => DecodeError::Invalid(other.to_string()),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(message)
}

/// Encodes `ControlToAgent::Delta(ViewDelta { from, to, changes })` from changes encoded
/// beforehand (each the [`encode`]d bytes of one [`ViewChange`], `count` of them, in order):
/// the same bytes as encoding the whole message, without encoding again for every agent what
/// many agents share (a catalogue endpoint, a peer).
///
/// # Errors
/// [`EncodeError::TooLarge`] over [`MAX_MESSAGE_BYTES`].
pub fn encode_delta_from_parts<'a>(
    from: Revision,
    to: Revision,
    count: usize,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, EncodeError> {
    let empty = ControlToAgent::Delta(ViewDelta {
        from,
        to,
        changes: Vec::new(),
    });
    splice_list(encode(&empty)?, count, parts)
}

/// Encodes a [`ViewChange`] that carries a whole list (`SetPeers`, `SetCatalogue`: pass it
/// with an empty list) from its items encoded one by one (`count` of them).
///
/// # Errors
/// [`EncodeError::TooLarge`] over [`MAX_MESSAGE_BYTES`].
pub fn encode_list_change_from_parts<'a>(
    empty: &ViewChange,
    count: usize,
    items: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, EncodeError> {
    splice_list(encode(empty)?, count, items)
}

/// `encoded` ends with an empty list (its length, a zero varint): puts `count` there and the
/// items after it.
fn splice_list<'a>(
    mut out: Vec<u8>,
    count: usize,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, EncodeError> {
    debug_assert_eq!(out.last(), Some(&0), "ends with an empty list");
    out.pop();
    push_varint(&mut out, count as u64);
    for part in parts {
        out.extend_from_slice(part);
        if out.len() > MAX_MESSAGE_BYTES {
            return Err(EncodeError::TooLarge {
                size: out.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
    }
    Ok(out)
}

/// Appends `n` as postcard writes lengths and integers (LEB128).
pub(crate) fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoding is over the size limit; the sender must split or shrink it.
    #[error("message too large: {size} bytes, limit {max}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit, [`MAX_MESSAGE_BYTES`].
        max: usize,
    },
    /// Serde refused the value.
    #[error("cannot encode message: {0}")]
    Serialize(#[source] postcard::Error),
}

/// Why bytes could not be decoded into a message. The peer sent garbage, or speaks another
/// version: log it once, count it by [`kind`](DecodeError::kind), drop the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Input over the size limit; not decoded at all.
    #[error("message too large: {size} bytes, limit {max}")]
    TooLarge {
        /// Input size.
        size: usize,
        /// The limit, [`MAX_MESSAGE_BYTES`].
        max: usize,
    },
    /// The input ended before the message did.
    #[error("message truncated")]
    Truncated,
    /// Bytes remained after a complete message.
    #[error("{count} trailing bytes after message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The bytes are not a valid message of the expected type.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// A fixed label for metrics: `too_large`, `truncated`, `trailing_bytes` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Truncated => "truncated",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

/// Messages from an agent to the control node it is connected to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentToControl {
    /// First message on every connection.
    Hello(AgentHello),
    /// The agent has durably cached the view at `revision`.
    Ack {
        /// The revision now on the agent's disk.
        revision: Revision,
    },
    /// Actual state of the agent's replicas, and events since the last report.
    Status(StatusReport),
    /// The state of each of the agent's listeners (at most [`MAX_LISTENERS`]), sent when a
    /// session starts and whenever one changes. Added within wire version 2: a control node
    /// too old to know it drops the stream, so control nodes are upgraded before agents.
    Listeners(Vec<ListenerStatus>),
    /// The agent's WireGuard identity as it holds it now, sent when a session starts and
    /// whenever it changes (a key rotation, a new listen port). Control records it in the
    /// registry; peers learn it from their views, never from gossip.
    Mesh(MeshDeclaration),
    /// The agent's WireGuard peers as its device sees them (at most [`MAX_MESH_PEERS`]), sent
    /// when a session starts, when a peer comes or goes, and at most once a minute for the
    /// counters.
    MeshPeers(Vec<MeshPeerReport>),
}

/// Most entries an agent sends in [`AgentToControl::MeshPeers`]; control ignores the rest.
pub const MAX_MESH_PEERS: usize = 4096;

/// One WireGuard peer of an agent, as its device sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MeshPeerReport {
    /// The peer node's name.
    pub name: String,
    /// Where packets to it go now (`ip:port`), once known.
    pub endpoint: Option<String>,
    /// When the last handshake with it completed (unix ms, the agent's clock).
    pub last_handshake_ms: Option<u64>,
    /// Bytes received from it through the tunnel.
    pub rx_bytes: u64,
    /// Bytes sent to it through the tunnel.
    pub tx_bytes: u64,
    /// Whether the last handshake is less than 3 minutes old (judged on the agent's clock).
    pub up: bool,
}

/// What an agent declares of its WireGuard identity ([`AgentToControl::Mesh`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MeshDeclaration {
    /// The key its interface answers with now.
    pub public_key: [u8; 32],
    /// The key it is rolling to, while a rotation is under way: peers must accept both.
    pub next_public_key: Option<[u8; 32]>,
    /// The UDP endpoint (`host:port`) its interface listens on.
    pub endpoint: Option<String>,
}

/// Most entries an agent sends in [`AgentToControl::Listeners`]; control ignores the rest.
pub const MAX_LISTENERS: usize = 8;

/// Bytes of a [`ListenerStatus`]'s address and error that control keeps; the rest is cut.
pub const MAX_LISTENER_TEXT: usize = 256;

/// Which of an agent's listeners. New kinds are added at the end only.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    /// Plain-HTTP `/metrics`, `/health` and `/ready` (TCP).
    Metrics,
    /// The DNS server (UDP and TCP).
    Dns,
    /// Gossip membership (UDP).
    Gossip,
}

impl Listener {
    /// Every listener, for zero-filled metrics.
    pub const ALL: [Listener; 3] = [Listener::Metrics, Listener::Dns, Listener::Gossip];

    /// A fixed label for metrics, logs and tables: `metrics`, `dns` or `gossip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Metrics => "metrics",
            Listener::Dns => "dns",
            Listener::Gossip => "gossip",
        }
    }
}

/// One listener of an agent: where it should listen and whether it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ListenerStatus {
    /// Which listener.
    pub listener: Listener,
    /// The address it listens on once up (the bound one), or should listen on while down.
    pub addr: String,
    /// Whether it is listening.
    pub up: bool,
    /// Why not, while it is down (`cannot bind 127.0.0.1:9091: Address in use (os error 98);
    /// retrying`).
    pub error: Option<String>,
}

/// An agent introducing itself on a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AgentHello {
    /// The agent's [`WIRE_VERSION`].
    pub wire_version: u16,
    /// Must match the node id in the agent's certificate.
    pub node_id: NodeId,
    /// The revision of the agent's cached view ([`Revision::ZERO`] when it has none); control
    /// answers with the delta since then, or a snapshot.
    pub last_revision: Revision,
    /// Cluster id of the cached view, if any. A cache from another cluster must not be
    /// resumed from: control then sends a snapshot.
    pub cache_cluster_id: Option<[u8; 32]>,
    /// The agent's software version, for `warren node ls` and upgrade planning.
    pub agent_version: String,
    /// What the cached view holds, item by item; control answers with a delta from it.
    /// `None` without a cached view (or to ask for a snapshot).
    pub have: Option<ViewDigest>,
}

/// An agent's report of actual state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// The reporting node.
    pub node_id: NodeId,
    /// The view revision the agent was reconciling towards when it made the report.
    pub revision: Revision,
    /// Every replica the agent knows about, including ones it found running and adopted.
    pub replicas: Vec<ReplicaStatus>,
    /// Events since the previous report, oldest first, at most [`MAX_EVENTS_PER_REPORT`].
    pub events: Vec<Event>,
    /// Events the agent dropped from its bounded buffer since the previous report.
    pub events_dropped: u64,
}

/// Messages from control to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlToAgent {
    /// The node's whole view; replaces whatever the agent had. Boxed because it is much
    /// larger than the other variants.
    Snapshot(Box<NodeView>),
    /// Changes from the agent's revision to a later one; see [`NodeView::apply`].
    Delta(ViewDelta),
    /// The connection is refused; control closes it after this message.
    Refused(Refusal),
    /// Nothing changed; the view is still at `revision`. Keeps the stream and the link-state
    /// detector alive.
    Heartbeat {
        /// Control's latest revision for this node's view.
        revision: Revision,
    },
}

/// Why control refused an agent, and a line for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Refusal {
    /// What the agent should do depends on this.
    pub reason: RefusalReason,
    /// One line for the agent's log.
    pub message: String,
}

/// Why control refused an agent. New reasons are added at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The node was removed (`warren node rm`). The agent stops its workloads, wipes its
    /// secrets and exits; it does not retry.
    NodeRemoved,
    /// Control cannot speak the agent's wire version. The agent keeps its workloads and
    /// retries slowly; an upgrade fixes it.
    WireVersion {
        /// The version control speaks.
        supported: u16,
    },
    /// The node id is not in the registry (for example a cache restored onto a new cluster).
    /// The agent keeps its workloads and retries slowly.
    NotRegistered,
    /// The hello's node id differs from the certificate's. A bug or an attack; the agent
    /// retries slowly.
    NodeIdMismatch,
    /// This control node sheds load; the agent tries another control node (or this one after
    /// `retry_after_ms`).
    Overloaded {
        /// Suggested wait before retrying this node.
        retry_after_ms: u64,
    },
}

impl RefusalReason {
    /// A fixed label for logs and metrics: `node_removed`, `wire_version`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NodeRemoved => "node_removed",
            RefusalReason::WireVersion { .. } => "wire_version",
            RefusalReason::NotRegistered => "not_registered",
            RefusalReason::NodeIdMismatch => "node_id_mismatch",
            RefusalReason::Overloaded { .. } => "overloaded",
        }
    }

    /// Whether the agent must stop for good: stop workloads, wipe secrets, never retry.
    /// Only removal is permanent; every other refusal leaves workloads running.
    pub fn is_permanent(self) -> bool {
        matches!(self, RefusalReason::NodeRemoved)
    }
}

#[cfg(test)]
mod tests;
