//! Certificate renewal: a node asks a control node for a new certificate over the `renew` ALPN
//! ([`crate::Alpn::Renew`]), authenticated by the certificate it has — which may have expired
//! while the node was cut off ([`crate::TransportConfig::renew_grace`]). The node makes a new
//! key and sends only a CSR; the control plane records the new certificate before it answers.
//!
//! [`keep_renewed`] runs on every node: it renews once a third of the certificate's life is
//! left ([`crate::PeerIdentity::renew_at_unix`]), keeps the result on disk
//! ([`Credentials::save_renewed`]) and presents it from the next handshake on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ca::{CaError, Credentials, generate_csr};
use crate::endpoint::{Alpn, ConnectAnyError, Endpoint, PeerConnection, RpcError};
use crate::identity::PeerIdentity;
use warren_api::clock::unix_now;

/// A renewal request: the CSR of the node's new key.
#[derive(Debug, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The CSR (DER); only its key is used, names come from the node's record.
    pub csr_der: Vec<u8>,
}

/// The answer to a [`RenewRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RenewReply {
    /// The new certificate (DER), already recorded by the cluster.
    Renewed {
        /// The certificate.
        cert_der: Vec<u8>,
    },
    /// Why not, in words.
    Refused {
        /// The reason.
        message: String,
    },
}

/// What the control plane does with a renewal request.
pub trait RenewAuthority: Send + Sync + 'static {
    /// Issues and records a certificate for `peer`'s node and the key in `csr_der`, or says
    /// why not.
    fn renew(
        &self,
        peer: PeerIdentity,
        csr_der: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send;
}

/// Serves renewal requests on an admitted `renew` connection until it closes.
pub async fn serve_renewals<A: RenewAuthority>(conn: PeerConnection, authority: Arc<A>) {
    let handler = move |request: RenewRequest, conn: PeerConnection| {
        let authority = authority.clone();
        async move {
            let Some(peer) = conn.peer().cloned() else {
                return RenewReply::Refused {
                    message: "no certificate".into(),
                };
            };
            match authority.renew(peer, request.csr_der).await {
                Ok(cert_der) => RenewReply::Renewed { cert_der },
                Err(message) => RenewReply::Refused { message },
            }
        }
    };
    crate::endpoint::serve_requests(conn, handler).await;
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// No control node could be dialled (or one refused the connection).
    #[error("cannot reach a control node to renew: {0}")]
    Connect(#[from] ConnectAnyError),
    /// The request or its answer failed on the wire.
    #[error("renewal request failed: {0}")]
    Rpc(#[from] RpcError),
    /// The control plane refused.
    #[error("the control plane refused to renew: {0}")]
    Refused(String),
    /// Making the key or the CSR, or the answer's certificate, failed.
    #[error("renewal: {0}")]
    Credentials(#[from] CaError),
    /// The renewed certificate was saved but cannot be presented (rustls refused the key
    /// or chain); the node keeps presenting the old one and tries again.
    #[error("the renewed certificate cannot be presented: {0}")]
    Install(#[source] rustls::Error),
    /// The certificate that came back is not for this node.
    #[error("the renewed certificate names {got}, not this node ({expected})")]
    WrongIdentity {
        /// Who this node is.
        expected: String,
        /// Who the certificate names.
        got: String,
    },
}

/// Renews `endpoint`'s certificate with one of `addrs`: a new key, a CSR, the certificate the
/// control plane recorded. Does not save or present it.
///
/// # Errors
/// [`RenewError`].
pub async fn renew(
    endpoint: &Endpoint,
    addrs: &[SocketAddr],
    cancel: &CancellationToken,
) -> Result<Credentials, RenewError> {
    let current = endpoint.credentials().get();
    let (key, csr_der) = generate_csr()?;
    let conn = endpoint.connect_any(addrs, Alpn::Renew, cancel).await?;
    let reply: RenewReply = conn.request(&RenewRequest { csr_der }).await?;
    conn.close("renewed");
    let cert_der = match reply {
        RenewReply::Renewed { cert_der } => cert_der,
        RenewReply::Refused { message } => return Err(RenewError::Refused(message)),
    };
    let renewed = Credentials::new(
        cert_der.into(),
        key.serialize_der(),
        current.ca_cert_der().clone(),
    )?;
    let (was, now) = (current.identity(), renewed.identity());
    if (was.role, was.node_id) != (now.role, now.node_id) {
        return Err(RenewError::WrongIdentity {
            expected: format!("{} {:?}", was.role, was.node_id),
            got: format!("{} {:?}", now.role, now.node_id),
        });
    }
    Ok(renewed)
}

/// Keeps `endpoint`'s certificate renewed until `cancel`: sleeps until it is due
/// ([`PeerIdentity::renew_at_unix`]), renews with the control nodes `addrs()` gives at that
/// moment (an async call: an agent looks names up), saves the result in `data_dir` and presents it. A failed attempt is retried with
/// backoff (1 s to `retry_max`), so a node that was cut off past its certificate's expiry
/// renews as soon as it can reach a control node again.
pub async fn keep_renewed<F, Fut>(
    endpoint: Arc<Endpoint>,
    data_dir: PathBuf,
    addrs: F,
    retry_max: Duration,
    cancel: CancellationToken,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<SocketAddr>> + Send,
{
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), retry_max);
    loop {
        let due = endpoint.identity().renew_at_unix();
        let wait = Duration::from_secs(u64::try_from(due - unix_now()).unwrap_or(0));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let targets = addrs().await;
        let outcome = match renew(&endpoint, &targets, &cancel).await {
            Ok(renewed) => renewed
                .save_renewed(&data_dir)
                .map_err(RenewError::from)
                .and_then(|()| {
                    endpoint
                        .credentials()
                        .replace(&renewed)
                        .map_err(RenewError::Install)
                        .map(|()| renewed)
                }),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(renewed) => {
                backoff.reset();
                let identity = renewed.identity();
                info!(serial = %identity.serial, not_after = identity.not_after_unix, "certificate renewed");
            }
            Err(RenewError::Connect(ConnectAnyError::Cancelled)) => return,
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(error = %error, retry_in = ?delay, "certificate renewal failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
