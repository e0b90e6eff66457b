//! TLS over TCP for the admin HTTP API: the server side (a control node) requires a client
//! certificate from the cluster CA with the admin or control role; the client side (the CLI)
//! presents its admin certificate and verifies the server as a control node.
//!
//! The HTTP layer itself lives with the callers; this module hands them authenticated streams,
//! so that rustls stays inside `transport`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::ca::Credentials;
use crate::current::CurrentCredentials;
use crate::identity::{CONTROL_SERVER_NAME, CertRole, PeerIdentity, parse_identity};
use crate::tls::{self, TrustList};

/// How long an API client has to complete its TLS handshake unless the caller sets another
/// limit ([`ApiListener::set_handshake_timeout`]).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS stream accepted by [`ApiListener`].
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A TLS stream opened by [`connect`].
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Why an API connection failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// TCP failed.
    #[error("{action} {addr}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup failed (bad credentials).
    #[error("cannot configure TLS: {0}")]
    Config(#[source] rustls::Error),
    /// The handshake failed: untrusted, expired or revoked certificate on either side.
    #[error("TLS handshake with {addr} failed: {detail}")]
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// The client's certificate does not grant API access.
    #[error("{addr} presented a {role} certificate; the API needs an admin certificate")]
    Forbidden {
        /// The peer.
        addr: SocketAddr,
        /// The role it has.
        role: CertRole,
    },
    /// Nothing within the timeout.
    #[error("no TLS handshake with {0} within the timeout")]
    Timeout(SocketAddr),
}

/// A TCP listener that completes TLS with a client certificate before handing out a stream.
pub struct ApiListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for ApiListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiListener")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl std::fmt::Debug for PendingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTls")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ApiListener {
    /// Binds `addr` for the API with this node's credentials.
    ///
    /// # Errors
    /// [`HttpsError`] when the port is taken or the credentials are unusable.
    pub async fn bind(
        addr: SocketAddr,
        creds: &Credentials,
        revocations: &TrustList,
    ) -> Result<Self, HttpsError> {
        let current = CurrentCredentials::new(creds).map_err(HttpsError::Config)?;
        Self::bind_current(addr, &current, revocations).await
    }

    /// Binds `addr` for the API presenting `current` (shared with the node's QUIC endpoint, so
    /// that a renewed certificate serves both).
    ///
    /// # Errors
    /// [`HttpsError`] when the port is taken or the credentials are unusable.
    pub async fn bind_current(
        addr: SocketAddr,
        current: &CurrentCredentials,
        revocations: &TrustList,
    ) -> Result<Self, HttpsError> {
        let config = tls::api_server_config(current, revocations).map_err(HttpsError::Config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpsError::Io {
                action: "bind",
                addr,
                source,
            })?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// How long a client has to complete its TLS handshake after connecting (default 10 s);
    /// one that sends nothing, or trickles, is disconnected then.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts the next TCP connection. Complete it with [`PendingTls::handshake`] in a task of
    /// its own, so one slow client does not hold up the others.
    ///
    /// # Errors
    /// I/O errors from `accept`.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn accept(&self) -> Result<PendingTls, HttpsError> {
        let local = self.local_addr();
        let (tcp, addr) = self
            .listener
            .accept()
            .await
            .map_err(|source| HttpsError::Io {
                action: "accept on",
                addr: local,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(PendingTls {
            tcp,
            addr,
            acceptor: self.acceptor.clone(),
            timeout: self.handshake_timeout,
        })
    }
}

/// An accepted TCP connection whose TLS handshake has not run yet.
pub struct PendingTls {
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    timeout: Duration,
}

impl PendingTls {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs the handshake and checks the client's role (admin or control).
    ///
    /// # Errors
    /// [`HttpsError`] naming why the client was refused.
    pub async fn handshake(self) -> Result<(ServerStream, PeerIdentity), HttpsError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(self.timeout, self.acceptor.accept(self.tcp))
            .await
            .map_err(|_| HttpsError::Timeout(addr))?
            .map_err(|e| HttpsError::Handshake {
                addr,
                detail: e.to_string(),
            })?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| parse_identity(cert).ok())
            .ok_or_else(|| HttpsError::Handshake {
                addr,
                detail: "no usable client certificate".into(),
            })?;
        if !matches!(identity.role, CertRole::Admin | CertRole::Control) {
            return Err(HttpsError::Forbidden {
                addr,
                role: identity.role,
            });
        }
        Ok((stream, identity))
    }
}

/// Opens a TLS connection to a control node's API with admin credentials.
///
/// # Errors
/// [`HttpsError`]: unreachable, untrusted server, or refused certificate.
pub async fn connect(
    addr: SocketAddr,
    creds: &Credentials,
    timeout: Duration,
) -> Result<ClientStream, HttpsError> {
    let config = tls::api_client_config(creds).map_err(HttpsError::Config)?;
    let connector = TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpsError::Io {
                action: "connect to",
                addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(CONTROL_SERVER_NAME).expect("constant server name is valid");
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| HttpsError::Handshake {
                addr,
                detail: e.to_string(),
            })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| HttpsError::Timeout(addr))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
    use crate::{CertSubject, ClusterCa, Validity};
    use warren_api::clock::unix_now;

    /// A client that prefers HTTP/2 (as `curl` does) is answered with what the API speaks,
    /// HTTP/1.1, instead of agreeing to h2 and then getting HTTP/1.1 bytes.
    #[tokio::test]
    async fn a_client_offering_h2_is_given_http_1_1() {
        crate::install_crypto_provider();
        let validity = || Validity::starting_at(unix_now(), NODE_CERT_LIFETIME);
        let ca = ClusterCa::generate("t", Validity::starting_at(unix_now(), CA_LIFETIME)).unwrap();
        let server = ca
            .issue_credentials(
                &CertSubject::Node {
                    node_id: warren_api::NodeId(7),
                    role: CertRole::Control,
                },
                validity(),
            )
            .unwrap();
        let admin = ca
            .issue_credentials(&CertSubject::Admin { name: "a".into() }, validity())
            .unwrap();
        let listener = ApiListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            &server,
            &TrustList::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr();
        let accepted = tokio::spawn(async move { listener.accept().await?.handshake().await });
        let mut config = tls::api_client_config(&admin).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(CONTROL_SERVER_NAME).unwrap();
        let client = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("handshake");
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        accepted
            .await
            .unwrap()
            .expect("server side of the handshake");
    }
}
