//! The error of each endpoint operation — bind, connect, a round of connects, accept, a
//! stream, a request — and how a quinn connection error maps onto them (metric reason, and
//! which side refused).

use std::net::SocketAddr;
use std::time::Duration;

#[cfg(doc)]
use crate::endpoint::{Alpn, Endpoint};
use crate::frame::FrameError;

use super::{CLOSE_EXPIRED, CLOSE_UNKNOWN_CERTIFICATE};

/// Why dialling a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No admitted connection within the connect timeout.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address dialled.
        addr: SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
    /// We refused the server: its certificate does not verify against our CA, is expired,
    /// revoked, or is not a control certificate.
    #[error("server {addr} is not trusted ({reason}): {detail}")]
    ServerUntrusted {
        /// The address dialled.
        addr: SocketAddr,
        /// Metric label of the reason.
        reason: &'static str,
        /// The TLS error.
        detail: String,
    },
    /// The server refused us: our certificate, or our role for this purpose.
    #[error("server {addr} refused the connection ({reason}): {detail}")]
    Refused {
        /// The address dialled.
        addr: SocketAddr,
        /// Metric label of the reason.
        reason: &'static str,
        /// What the server said.
        detail: String,
    },
    /// The link failed during setup (unreachable, reset).
    #[error("connection to {addr} failed: {detail}")]
    Link {
        /// The address dialled.
        addr: SocketAddr,
        /// The underlying error.
        detail: String,
    },
    /// A local problem building the connection.
    #[error("cannot dial {addr}: {source}")]
    Setup {
        /// The address dialled.
        addr: SocketAddr,
        /// What is wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ConnectError {
    /// Whether retrying later (with backoff) may succeed. Trust and refusal failures are fatal:
    /// retrying the same credentials cannot fix them.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Link { .. })
    }

    /// Whether the server refused us because our certificate is revoked: the node was
    /// removed from the cluster. The refusal comes from a server whose certificate we have
    /// already verified (TLS 1.3 sends the client's certificate after checking the server's),
    /// so it is the cluster's word, not a stranger's.
    pub fn is_revoked(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                reason: "revoked",
                ..
            }
        )
    }

    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::ServerUntrusted { reason, .. } | Self::Refused { reason, .. } => reason,
            Self::Link { .. } => "link",
            Self::Setup { .. } => "setup",
        }
    }
}

/// Why an incoming connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The handshake or admission did not complete in time (a stalled or slow peer).
    #[error("handshake from {addr} did not complete within {timeout:?}")]
    Timeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
    /// TLS refused the client (unknown CA, expired, revoked, malformed) or the client refused us.
    #[error("handshake with {addr} failed ({reason}): {detail}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// Metric label of the reason.
        reason: &'static str,
        /// The TLS error.
        detail: String,
    },
    /// The certificate is valid but does not grant what the ALPN needs, or was revoked.
    #[error("refused {addr} for {alpn}: {detail}")]
    Refused {
        /// Metric label of the reason (`wrong_role`, `revoked`, `no_alpn`).
        reason: &'static str,
        /// The peer's address.
        addr: SocketAddr,
        /// The purpose asked for.
        alpn: &'static str,
        /// Why.
        detail: String,
    },
}

impl AcceptError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Handshake { reason, .. } => reason,
            Self::Refused { reason, .. } => reason,
        }
    }
}

/// Why opening or accepting a stream failed.
#[derive(Debug, thiserror::Error)]
#[error("stream on connection to {addr} failed: {detail}")]
pub struct StreamError {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The underlying error.
    pub detail: String,
}

/// Why a request/response exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The stream could not be opened.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Sending or receiving a frame failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No response within the request timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The UDP socket could not be bound.
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Io {
        /// The address the socket was to bind.
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// TLS configuration failed (bad credentials), as the caller put it.
    #[error("cannot configure TLS: {0}")]
    Tls(String),
    /// TLS configuration failed (bad credentials): rustls or quinn refused them.
    #[error("cannot configure TLS: {0}")]
    TlsSetup(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The transport config is inconsistent.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Why [`Endpoint::connect_any`] returned without a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectAnyError {
    /// The cancellation token fired.
    #[error("cancelled")]
    Cancelled,
    /// There was no address to dial.
    #[error("no address to dial")]
    NoAddress,
    /// Every address failed in a way that may pass (no answer, network unreachable).
    #[error("no answer from {tried} address(es); last: {last}")]
    Unreachable {
        /// How many addresses were dialled.
        tried: usize,
        /// The last failure.
        last: ConnectError,
    },
    /// A revoked certificate, or every address refused in a way retrying the same
    /// credentials cannot fix (trust, refusal).
    #[error(transparent)]
    Fatal(ConnectError),
}

impl ConnectAnyError {
    /// Whether trying again soon (with backoff) may succeed: no answer, or no address yet.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::NoAddress)
    }
}

/// Maps a TLS alert carried in a QUIC CRYPTO_ERROR code to a metric reason.
fn tls_alert_reason(code: u64) -> &'static str {
    if !(0x100..0x200).contains(&code) {
        return "protocol";
    }
    match code - 0x100 {
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "revoked",
        45 => "expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "tls",
    }
}

/// QUIC's CONNECTION_REFUSED transport error code (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;

/// Classifies a quinn connection error: (metric reason, whether the local side refused).
pub(super) fn classify(error: &quinn::ConnectionError) -> (&'static str, Side) {
    use quinn::ConnectionError as E;
    match error {
        E::TransportError(e) => (tls_alert_reason(u64::from(e.code)), Side::Local),
        // CONNECTION_REFUSED: the server's endpoint is not taking connections right now (it
        // is shutting down, or a restarted one is not serving yet) — try again shortly, as
        // for a timeout; it says nothing about our credentials.
        E::ConnectionClosed(close) if u64::from(close.error_code) == CONNECTION_REFUSED => {
            ("server_busy", Side::Link)
        }
        E::ConnectionClosed(close) => (tls_alert_reason(u64::from(close.error_code)), Side::Peer),
        E::ApplicationClosed(close) if close.error_code == CLOSE_UNKNOWN_CERTIFICATE.into() => {
            ("unknown_certificate", Side::Link)
        }
        E::ApplicationClosed(close) if close.error_code == CLOSE_EXPIRED.into() => {
            ("certificate_expired", Side::Link)
        }
        E::ApplicationClosed(_) => ("refused", Side::Peer),
        E::TimedOut => ("timeout", Side::Link),
        E::Reset => ("reset", Side::Link),
        E::VersionMismatch => ("version", Side::Peer),
        E::LocallyClosed | E::CidsExhausted => ("closed", Side::Local),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Local,
    Peer,
    Link,
}

/// The [`ConnectError`] for a connection that failed during setup.
pub(super) fn connect_error(addr: SocketAddr, error: &quinn::ConnectionError) -> ConnectError {
    let (reason, side) = classify(error);
    let detail = match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => other.to_string(),
    };
    match side {
        Side::Local => ConnectError::ServerUntrusted {
            addr,
            reason,
            detail,
        },
        Side::Peer => ConnectError::Refused {
            addr,
            reason,
            detail,
        },
        Side::Link => ConnectError::Link { addr, detail },
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    /// A server endpoint that refuses new connections (shutting down, or not serving yet)
    /// is a passing state, retried like a timeout; a TLS refusal of our certificate is not.
    #[test]
    fn connection_refused_by_a_busy_endpoint_is_retryable() {
        let addr: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let closed = |code: quinn::TransportErrorCode| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: code,
                frame_type: None,
                reason: bytes::Bytes::new(),
            })
        };
        let busy = connect_error(addr, &closed(quinn::TransportErrorCode::CONNECTION_REFUSED));
        assert!(busy.is_retryable(), "{busy}");
        let revoked = connect_error(addr, &closed(quinn::TransportErrorCode::crypto(44)));
        assert!(!revoked.is_retryable(), "{revoked}");
    }
}
