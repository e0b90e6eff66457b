//! The server side of admission: an [`Incoming`] connection's handshake, the checks of the
//! client's certificate against what its ALPN needs (role, revocation, expiry, known to the
//! cluster), the join caps, and the admission frame that tells the client it is in.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::debug;

#[cfg(doc)]
use crate::config::TransportConfig;
use crate::frame::FramedSend;
use crate::identity::{CONTROL_SERVER_NAME, CertRole, PeerIdentity, parse_identity};
use crate::limits::{ConnectionPermit, LimitExceeded};

use super::error::{AcceptError, Side, classify};
use super::{
    Alpn, CLOSE_EXPIRED, CLOSE_REFUSED, CLOSE_UNKNOWN_CERTIFICATE, PeerConnection, Shared,
};

/// Largest admission frame.
pub(super) const MAX_ADMISSION_BYTES: usize = 4 * 1024;

/// The server's word that a connection is admitted.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Admission {
    Admitted { server: String },
}

/// A connection attempt that has not been admitted yet.
pub struct Incoming {
    pub(super) inner: quinn::Incoming,
    pub(super) shared: Arc<Shared>,
    /// When the endpoint handed it out: a join's deadline counts from here.
    pub(super) arrived: tokio::time::Instant,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.inner.remote_address())
            .finish()
    }
}

impl Incoming {
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Completes the handshake, checks the client's role against the ALPN, and admits the
    /// connection. Failures are counted in `warren_transport_handshake_failures_total`.
    ///
    /// # Errors
    /// [`AcceptError`] describing the refusal.
    pub async fn admit(self) -> Result<PeerConnection, AcceptError> {
        let shared = self.shared.clone();
        let addr = self.inner.remote_address();
        let timeout = shared.config.connect_timeout;
        let result = tokio::time::timeout(timeout, admit_inner(self.inner, self.arrived, &shared))
            .await
            .unwrap_or(Err(AcceptError::Timeout { addr, timeout }));
        if let Err(error) = &result {
            shared
                .metrics
                .handshake_failures_total
                .with_label_values(&["server", error.kind()])
                .inc();
            debug!(peer = %addr, error = %error, "connection not admitted");
        }
        result
    }
}

/// The steps of [`Incoming::admit`], without its timeout and failure count.
async fn admit_inner(
    incoming: quinn::Incoming,
    arrived: tokio::time::Instant,
    shared: &Arc<Shared>,
) -> Result<PeerConnection, AcceptError> {
    let addr = incoming.remote_address();
    let conn = incoming
        .accept()
        .map_err(|e| handshake_error(addr, e))?
        .await
        .map_err(|e| handshake_error(addr, e))?;
    let alpn = negotiated_alpn(&conn)?;
    let peer = identity_for(&conn, alpn)?;
    if let Some(identity) = &peer {
        check_standing(&conn, alpn, identity, shared)?;
    }
    let join = if alpn == Alpn::Join {
        // A joiner has no certificate yet: one request stream, nothing else, for a bounded
        // time, and only so many at once.
        conn.set_max_concurrent_bi_streams(1u32.into());
        conn.set_max_concurrent_uni_streams(0u32.into());
        Some(Arc::new(join_slot(&conn, arrived, shared)?))
    } else {
        None
    };
    send_admission(&conn, shared).await?;
    let mut admitted = PeerConnection::new(conn, alpn, peer, shared.clone(), "server");
    admitted.join = join;
    Ok(admitted)
}

fn handshake_error(addr: SocketAddr, e: quinn::ConnectionError) -> AcceptError {
    let (reason, side) = classify(&e);
    // The peer refusing *our* certificate is a different story from us refusing theirs.
    let reason = if side == Side::Peer {
        "peer_rejected"
    } else {
        reason
    };
    AcceptError::Handshake {
        addr,
        reason,
        detail: e.to_string(),
    }
}

/// Closes `conn` with `code` and the detail the client sees, and returns the refusal.
fn refuse(
    conn: &quinn::Connection,
    code: u32,
    reason: &'static str,
    alpn: &'static str,
    detail: String,
) -> AcceptError {
    conn.close(code.into(), detail.as_bytes());
    AcceptError::Refused {
        reason,
        addr: conn.remote_address(),
        alpn,
        detail,
    }
}

/// The purpose the handshake settled on; a connection without one of ours is refused.
fn negotiated_alpn(conn: &quinn::Connection) -> Result<Alpn, AcceptError> {
    conn.handshake_data()
        .and_then(|any| any.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol.and_then(|p| Alpn::from_protocol(&p)))
        .ok_or_else(|| {
            refuse(
                conn,
                CLOSE_REFUSED,
                "no_alpn",
                "none",
                "no supported ALPN".into(),
            )
        })
}

/// The client's identity, if it presented a certificate, once its role may use `alpn`.
fn identity_for(conn: &quinn::Connection, alpn: Alpn) -> Result<Option<PeerIdentity>, AcceptError> {
    let peer = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().map(|c| parse_identity(c)));
    let wrong_role =
        |detail: String| refuse(conn, CLOSE_REFUSED, "wrong_role", alpn.as_str(), detail);
    match (alpn.required_role(), peer) {
        (None, Some(Ok(identity))) if alpn == Alpn::Renew && identity.role != CertRole::Admin => {
            Ok(Some(identity))
        }
        (None, _) if alpn == Alpn::Renew => {
            Err(wrong_role("renew requires a node certificate".to_owned()))
        }
        (None, None) => Ok(None),
        (None, Some(Ok(identity))) => Ok(Some(identity)),
        (Some(role), Some(Ok(identity))) if identity.role == role => Ok(Some(identity)),
        (required, peer) => {
            let detail = match (required, peer) {
                (_, Some(Err(e))) => format!("certificate has no usable identity: {e}"),
                (Some(role), None) => format!("{} requires a {role} certificate", alpn.as_str()),
                (Some(role), Some(Ok(identity))) => {
                    format!(
                        "{} requires a {role} certificate, not {}",
                        alpn.as_str(),
                        identity.role
                    )
                }
                (None, _) => "refused".to_owned(),
            };
            Err(wrong_role(detail))
        }
    }
}

/// Refuses a certificate that is revoked, expired (except to renew it), or unknown to this
/// node.
fn check_standing(
    conn: &quinn::Connection,
    alpn: Alpn,
    identity: &PeerIdentity,
    shared: &Shared,
) -> Result<(), AcceptError> {
    // Checked again here (not only in the TLS verifier) so a certificate revoked while the
    // process runs is refused on every path into the server.
    if shared.revocations.is_revoked(&identity.serial) {
        let detail = format!("certificate {} has been revoked", identity.serial);
        return Err(refuse(
            conn,
            CLOSE_REFUSED,
            "revoked",
            alpn.as_str(),
            detail,
        ));
    }
    if alpn != Alpn::Renew && identity.not_after_unix < warren_api::clock::unix_now() {
        let detail = format!(
            "certificate {} expired; the node renews it over {}",
            identity.serial,
            Alpn::Renew.as_str()
        );
        return Err(refuse(
            conn,
            CLOSE_EXPIRED,
            "expired",
            alpn.as_str(),
            detail,
        ));
    }
    if let Err(detail) = shared.revocations.check_known(identity) {
        return Err(refuse(
            conn,
            CLOSE_UNKNOWN_CERTIFICATE,
            "unknown_certificate",
            alpn.as_str(),
            detail,
        ));
    }
    Ok(())
}

/// Tells the client it is admitted: the frame its [`super::Endpoint::connect`] waits for.
async fn send_admission(conn: &quinn::Connection, shared: &Shared) -> Result<(), AcceptError> {
    let addr = conn.remote_address();
    let send = conn
        .open_uni()
        .await
        .map_err(|e| handshake_error(addr, e))?;
    let mut framed = FramedSend::new(
        send,
        MAX_ADMISSION_BYTES,
        shared.config.frame_timeout,
        shared.metrics.clone(),
    );
    let admitted = Admission::Admitted {
        server: CONTROL_SERVER_NAME.to_owned(),
    };
    framed
        .send(&admitted)
        .await
        .map_err(|e| AcceptError::Handshake {
            addr,
            reason: "admission",
            detail: e.to_string(),
        })?;
    framed.finish();
    Ok(())
}

/// Takes a join slot for `conn`, or closes it at once when the join caps are reached.
fn join_slot(
    conn: &quinn::Connection,
    arrived: tokio::time::Instant,
    shared: &Shared,
) -> Result<JoinSlot, AcceptError> {
    let addr = conn.remote_address();
    match shared.join_slots.try_acquire(addr.ip()) {
        Ok(permit) => Ok(JoinSlot {
            _permit: permit,
            deadline: arrived + shared.config.join_deadline,
        }),
        Err(exceeded) => {
            let (reason, detail) = match exceeded {
                LimitExceeded::Total => ("join_busy", "too many join connections; retry later"),
                LimitExceeded::PerSource => (
                    "join_busy_source",
                    "too many join connections from this address; retry later",
                ),
            };
            Err(refuse(
                conn,
                CLOSE_REFUSED,
                reason,
                Alpn::Join.as_str(),
                detail.to_owned(),
            ))
        }
    }
}

/// A join connection's slot: freed when the connection's last handle drops.
#[derive(Debug)]
pub(crate) struct JoinSlot {
    _permit: ConnectionPermit,
    /// When the join exchange must be over ([`TransportConfig::join_deadline`] after arrival).
    pub(crate) deadline: tokio::time::Instant,
}
