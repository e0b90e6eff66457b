//! Warren's resource model, its validation, and the versioned wire messages built from it.
//!
//! Every other Warren crate speaks in these types: the control plane stores them in Raft, the
//! agent caches them on disk, `transport` frames them, the CLI prints them as tables and JSON.
//! They are plain data with serde derives, encoded with postcard on the wire and on disk and
//! with serde_json at the HTTP API.
//!
//! # Modules
//! - [`build_info`]: this build's version, commit and target.
//! - [`clock`]: the wall clock every crate reads (`unix_now`, `unix_now_ms`); nothing in `api`
//!   itself calls it.
//! - [`ids`]: [`NodeId`], [`Revision`], [`ServiceName`], [`ReplicaId`] / [`ReplicaKey`].
//! - [`node`]: [`Node`] and its role, availability, liveness state and addresses.
//! - [`service`]: [`ServiceSpec`] (workload, mode, ports, health, restart, …), [`Service`]
//!   (a spec with its version), and the workload hash that decides adopt-or-restart.
//! - [`run_as`]: a spec's `user`, `group` and `cap_add`: their rules, the capability names.
//! - [`older`]: the layouts older builds wrote ([`older::ServiceSpecV1`], …) and their
//!   upgrades, so that stored bytes outlive a change of the types.
//! - [`placement`]: [`Placement`] and [`Constraint`]s, and the pure `allows` check.
//! - [`secret`], [`volume`]: secret metadata and sealed blobs; named volumes.
//! - [`replica`], [`event`]: scheduler assignments, agent-reported status, events.
//! - [`validate`]: [`ValidationError`] and the rules for names, labels, env and specs.
//! - [`duration`]: `30s` / `5m` text to and from `u64` milliseconds.
//! - [`logs`]: workload logs read from the centre: the CLI's query, control's and the
//!   agent's answers, their bounds.
//! - [`scrape`]: what Prometheus scrapes (nodes' and workloads' metrics endpoints) and the
//!   `http_sd` document that lists them.
//! - [`rest`]: the HTTP API's JSON bodies, limits and headers, shared by server and CLI.
//! - [`routes`]: every HTTP route once ([`routes::Route`]): dispatch, metric labels, paths.
//! - [`wire`]: agent ↔ control messages, [`NodeView`] and its deltas, the postcard codec.
//!
//! # What this crate must never do
//! - No I/O of any kind: no files, sockets or randomness, and no clock reads outside [`clock`].
//!   Times arrive as `u64` unix milliseconds and ids as numbers chosen by the caller. No tokio,
//!   no async.
//! - No serde feature that postcard cannot encode: no `skip_serializing_if`, no `flatten`, no
//!   internally, adjacently tagged or untagged enums, no `deserialize_any` (except behind
//!   `is_human_readable()`, for JSON and YAML only: `run_as::name_or_number`). Maps are
//!   `BTreeMap` so encodings are deterministic.
//! - No panics on input: decoding and validation return errors for any bytes or values.
//! - No secret values in the clear: only metadata and sealed blobs.

#![warn(missing_docs)]

pub mod build_info;
pub mod clock;
pub mod duration;
pub mod event;
pub mod ids;
pub mod logs;
pub mod node;
pub mod older;
pub mod overlay;
pub mod placement;
pub mod replica;
pub mod rest;
pub mod routes;
pub mod run_as;
pub mod scrape;
pub mod secret;
pub mod service;
pub mod validate;
pub mod volume;
pub mod wire;

#[cfg(test)]
mod strategies;

pub use duration::{format_duration_ms, parse_duration_ms};
pub use event::{Event, EventKind};
pub use ids::{NodeId, ReplicaId, ReplicaKey, Revision, ServiceName};
pub use node::{Availability, Node, NodeAddresses, NodeRole, NodeState};
pub use overlay::{MeshEntry, OverlayRange, OwnMesh};
pub use placement::{
    Constraint, ConstraintKey, ConstraintOp, Placement, RUNTIME_CONTAINERD, RUNTIME_LABEL,
    RUNTIME_PROCESS, runtime_fits, runtime_needed,
};
pub use replica::{DesiredState, HealthState, Replica, ReplicaStatus, TaskState};
pub use secret::{SealedBlob, Secret};
pub use service::{
    FailureAction, FailureRatio, HealthCheck, ImageSpec, MetricsEndpoint, OnDisconnect, PortSpec,
    Probe, ProcessSpec, Protocol, Resources, RestartCondition, RestartPolicy, SecretRef, Service,
    ServiceMode, ServiceSpec, UpdateConfig, VolumeMount, Workload,
};
pub use validate::{ValidationError, validate_node_name, validate_site};
pub use volume::{Volume, VolumeDriver};
pub use wire::{
    AgentHello, AgentToControl, ApplyError, ControlToAgent, DecodeError, EncodeError, NodeView,
    PeerInfo, Refusal, RefusalReason, ServiceEndpoint, StatusReport, ViewChange, ViewDelta,
    ViewDigest,
};
