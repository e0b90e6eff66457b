//! Warren's transport: everything that crosses the network between Warren nodes.
//!
//! - [`ca`]: the cluster certificate authority (rcgen), node/admin certificates issued from
//!   CSRs, and the credentials a node loads from disk.
//! - [`seal`]: AES-256-GCM sealing of small blobs (the CA key on disk, secret values).
//! - [`identity`]: what a certificate proves (role + node id), and the CA fingerprint.
//! - [`current`]: the credentials a process presents right now, swapped in place on renewal.
//! - [`renew`]: certificate renewal over the `renew` ALPN, client and server sides.
//! - [`token`]: Swarm-style join tokens that pin the CA and carry a 160-bit secret, stored
//!   server-side only as a hash.
//! - [`join`]: the join handshake, client and server sides.
//! - [`tls`]: rustls configurations for mutual TLS and CA-pinned joins; revocation by serial.
//! - [`endpoint`]: QUIC endpoints (quinn) with ALPN per purpose and connection admission; its
//!   submodules split dialling, admission, connections, requests and errors.
//! - [`config`]: the transport's timers and bounds ([`TransportConfig`]), with `validate()`.
//! - [`limits`]: caps on connections per source and in total, refusal rate limits, accept-error
//!   backoff and log throttling: what one client can make a server hold.
//! - [`frame`]: length-prefixed postcard framing with hard size limits and stall timeouts.
//! - [`fault`]: a switch that cuts an endpoint's UDP socket (drops every datagram both ways),
//!   for partitions in in-process tests and `warren demo`.
//! - [`gossip`]: a node's certificate as its gossip identity: signing its gossip state, and
//!   checking a member's certificate for the node id it gossips as.
//! - [`https`]: TLS over TCP for the admin HTTP API (admin client certificates).
//! - [`plain_http`]: the plain-HTTP listener for `/metrics`, `/health` and `/ready`.
//! - [`backoff`]: jittered exponential backoff for every reconnect loop.
//! - [`metrics`]: the transport's Prometheus counters.
//! - [`node_metrics`]: what every Warren process exports about itself: the node's constant
//!   labels, build info, process metrics, certificate expiry.
//! - `fsutil`: durable file writes (temporary file, fsync, rename), private directories, PEM.
//!
//! This is the only crate that names quinn, rustls or rcgen. It never panics on input from the
//! network or disk: every bad frame, token, certificate or handshake becomes a typed error and
//! a metric. It reads no environment and prints nothing; binaries pass finished configs in.

pub mod backoff;
pub mod ca;
pub mod config;
pub mod current;
pub mod endpoint;
pub mod fault;
pub mod frame;
mod fsutil;
pub mod gossip;
pub mod https;
pub mod identity;
pub mod join;
pub mod limits;
pub mod metrics;
pub mod node_metrics;
pub mod plain_http;
pub mod renew;
pub mod seal;
pub mod tls;
pub mod token;

pub use backoff::Backoff;
pub use ca::{CertSubject, ClusterCa, Credentials, Validity};
pub use config::TransportConfig;
pub use endpoint::{
    AcceptError, Alpn, ConnectAnyError, ConnectError, Endpoint, EndpointOptions, Incoming,
    PeerConnection, RpcError, serve_requests,
};
pub use fault::FaultSwitch;
pub use frame::{FrameError, FramedRecv, FramedSend};
pub use fsutil::{private_dir, write_atomic};
pub use gossip::{GossipSigner, MemberCertificates};
pub use identity::{CertRole, PeerIdentity, SerialBinding};
pub use metrics::TransportMetrics;
pub use tls::{KnownCertificates, TrustList, install_crypto_provider};
pub use token::{JoinToken, MintOptions, TokenBook, TokenError, TokenRecord};
