//! The HTTP API (JSON, hyper): routes of `warren_api::routes`, served over TLS with admin
//! client certificates and over the Unix socket `<data-dir>/control.sock`.
//!
//! Any control node answers: writes are forwarded to the leader, reads are linearizable
//! unless `?stale=true`. Errors map to HTTP status in exactly one place ([`ApiError::status`]).
//! Every answer carries the control members' API addresses (`MEMBERS_HEADER`).
//!
//! - `server`: listeners, connection caps, TLS client checks, hyper connections ([`ApiLimits`]).
//! - `dispatch`: one request: its [`warren_api::routes::Route`], the handler, the metrics.
//! - `body`: reading a JSON request body within `MAX_BODY_BYTES`.
//! - `respond`: JSON answers, and what a write answers ([`warren_api::rest::WriteResult`]).
//! - `error`: [`ApiError`] and its HTTP status.
//! - Handlers by resource: `cluster`, `access` (join tokens and admin certificates),
//!   `nodes`, `services`, `logs` (relayed from the agents), `secrets`, `volumes`.

use std::sync::Arc;
use std::time::Duration;

use warren_transport::TrustList;

use crate::control::Control;
use crate::metrics::ControlMetrics;

mod access;
mod body;
mod cluster;
mod dispatch;
mod error;
mod logs;
mod nodes;
mod respond;
mod secrets;
mod server;
mod services;
mod volumes;

pub use crate::secrets::SECRET_PURPOSE;
pub use error::ApiError;
pub use server::ApiLimits;

/// The HTTP server of one control node.
#[derive(Clone, Debug)]
pub struct Api {
    control: Arc<Control>,
    metrics: ControlMetrics,
    header_read_timeout: Duration,
    trust: TrustList,
}

impl Api {
    /// An API over `control`, counting into `metrics`. Every request on a TLS connection is
    /// checked against `trust` (fed from the replicated state): a certificate revoked while its
    /// connection is open, or one the cluster never recorded, gets 403.
    pub fn new(control: Arc<Control>, metrics: ControlMetrics, trust: TrustList) -> Self {
        Self {
            control,
            metrics,
            header_read_timeout: ApiLimits::default().header_read_timeout,
            trust,
        }
    }
}
