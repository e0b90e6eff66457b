//! The client side of a connection: dial one address and wait for the server's admission
//! frame ([`Endpoint::connect`]), one round over several addresses
//! ([`Endpoint::connect_any`]), and a joiner's dial, which pins the CA instead of presenting
//! a certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::debug;

use crate::config::TransportConfig;
use crate::frame::{FrameError, FramedRecv};
use crate::identity::{CONTROL_SERVER_NAME, parse_identity};
use crate::metrics::TransportMetrics;
use crate::tls::{self, TrustList};

use super::admission::{Admission, MAX_ADMISSION_BYTES};
use super::error::{BindError, ConnectAnyError, ConnectError, connect_error};
use super::{Alpn, Endpoint, PeerConnection, Shared};

impl Endpoint {
    /// Dials a control node for `alpn` and waits for admission.
    ///
    /// # Errors
    /// [`ConnectError`]; see [`ConnectError::is_retryable`].
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: Alpn,
    ) -> Result<PeerConnection, ConnectError> {
        let client = self.clients[alpn.index()].clone();
        dial(&self.quinn, client, addr, alpn, &self.shared).await
    }

    /// Dials `addrs` in turn, once each, until one admits us: one round. The caller decides
    /// whether and when to try again (and may look the addresses up afresh meanwhile: a name
    /// can move, or start resolving again). A refusal because our certificate is revoked ends
    /// the round at once; other fatal errors (trust, refusal) are kept while the remaining
    /// addresses are tried, so that one misconfigured node does not hide the healthy ones.
    ///
    /// # Errors
    /// [`ConnectAnyError::NoAddress`] for an empty list, [`ConnectAnyError::Cancelled`] when
    /// `cancel` fires first, [`ConnectAnyError::Fatal`] for a revoked certificate or when
    /// every address refused for good, else [`ConnectAnyError::Unreachable`] with the last
    /// retryable error (some address may answer if tried again soon).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call leaves no connection behind.
    pub async fn connect_any(
        &self,
        addrs: &[SocketAddr],
        alpn: Alpn,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<PeerConnection, ConnectAnyError> {
        let mut fatal: Option<ConnectError> = None;
        let mut last: Option<ConnectError> = None;
        for addr in addrs {
            let attempt = tokio::select! {
                () = cancel.cancelled() => return Err(ConnectAnyError::Cancelled),
                attempt = self.connect(*addr, alpn) => attempt,
            };
            match attempt {
                Ok(conn) => return Ok(conn),
                Err(error) if error.is_revoked() => return Err(ConnectAnyError::Fatal(error)),
                Err(error) if error.is_retryable() => {
                    debug!(peer = %addr, error = %error, "dial failed");
                    last = Some(error);
                }
                Err(error) => {
                    debug!(peer = %addr, error = %error, "dial refused");
                    fatal.get_or_insert(error);
                }
            }
        }
        match (last, fatal) {
            (Some(last), _) => Err(ConnectAnyError::Unreachable {
                tried: addrs.len(),
                last,
            }),
            (None, Some(error)) => Err(ConnectAnyError::Fatal(error)),
            (None, None) => Err(ConnectAnyError::NoAddress),
        }
    }
}

/// Dials, handshakes and waits for admission (shared by cluster clients and joiners).
async fn dial(
    quinn: &quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    alpn: Alpn,
    shared: &Arc<Shared>,
) -> Result<PeerConnection, ConnectError> {
    let timeout = shared.config.connect_timeout;
    let result = tokio::time::timeout(timeout, async {
        let connecting = quinn
            .connect_with(client, addr, CONTROL_SERVER_NAME)
            .map_err(|e| ConnectError::Setup {
                addr,
                source: e.into(),
            })?;
        let conn = connecting.await.map_err(|e| connect_error(addr, &e))?;
        let recv = conn
            .accept_uni()
            .await
            .map_err(|e| connect_error(addr, &e))?;
        let mut framed =
            FramedRecv::new(recv, MAX_ADMISSION_BYTES, timeout, shared.metrics.clone());
        let Admission::Admitted { server } = framed.recv().await.map_err(|e| match e {
            FrameError::Stream(source) => ConnectError::Link {
                addr,
                detail: source.to_string(),
            },
            other => ConnectError::Refused {
                addr,
                reason: "protocol",
                detail: other.to_string(),
            },
        })?;
        debug!(peer = %addr, server = %server, alpn = alpn.as_str(), "connection admitted");
        let peer = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| certs.first().and_then(|c| parse_identity(c).ok()));
        Ok(PeerConnection::new(
            conn,
            alpn,
            peer,
            shared.clone(),
            "client",
        ))
    })
    .await;
    let result = result.unwrap_or(Err(ConnectError::Timeout { addr, timeout }));
    if let Err(error) = &result {
        shared
            .metrics
            .handshake_failures_total
            .with_label_values(&["client", error.kind()])
            .inc();
    }
    result
}

/// A dial-only endpoint with no certificate, for joining (see [`crate::join`]).
pub(crate) async fn dial_pinned(
    addr: SocketAddr,
    pinned: [u8; 32],
    config: &TransportConfig,
    metrics: &TransportMetrics,
) -> Result<(quinn::Endpoint, PeerConnection), ConnectError> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    dial_pinned_from(local, addr, pinned, config, metrics).await
}

/// [`dial_pinned`] from a chosen local address.
pub(crate) async fn dial_pinned_from(
    local: SocketAddr,
    addr: SocketAddr,
    pinned: [u8; 32],
    config: &TransportConfig,
    metrics: &TransportMetrics,
) -> Result<(quinn::Endpoint, PeerConnection), ConnectError> {
    let setup =
        |source: Box<dyn std::error::Error + Send + Sync>| ConnectError::Setup { addr, source };
    config.validate().map_err(|e| setup(e.into()))?;
    let rustls_client =
        tls::join_client_config(pinned, Alpn::Join.protocol()).map_err(|e| setup(e.into()))?;
    let client = quic_client_config(rustls_client, config).map_err(|e| setup(e.into()))?;
    let quinn = quinn::Endpoint::client(local).map_err(|e| setup(e.into()))?;
    let shared = Arc::new(Shared::new(
        config.clone(),
        metrics.clone(),
        TrustList::default(),
    ));
    let conn = dial(&quinn, client, addr, Alpn::Join, &shared).await?;
    Ok((quinn, conn))
}

/// The QUIC client configuration around a rustls one, with the transport's timers.
pub(super) fn quic_client_config(
    rustls_config: rustls::ClientConfig,
    config: &TransportConfig,
) -> Result<quinn::ClientConfig, BindError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| BindError::TlsSetup(e.into()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(config.quinn_transport()));
    Ok(client)
}
