//! The agent's DNS server: workloads' resolver for service discovery, `<service>.warren.`.
//!
//! - [`catalogue`]: the data interface, a plain immutable [`Catalogue`] snapshot (services →
//!   replicas with address and gossip [`EndpointLiveness`], published ports) read from a
//!   `watch::Receiver<Arc<Catalogue>>`: updates are atomic and never block a query.
//! - [`answer`](mod@answer): the zone as pure functions (name + type + catalogue → records, NODATA or
//!   NXDOMAIN), which is where the naming and liveness rules live and are tested.
//! - [`forward`]: names outside the zone go to the host's resolvers (UDP, TCP on truncation,
//!   one deadline), SERVFAIL when none answers.
//! - [`metrics`]: the query counter, `warren_dns_queries_total{result}`.
//! - [`server`]: the driver around hickory-server's `Server` (UDP + TCP).
//!
//! Must never: answer a replica gossip says is dead; block on anything but the upstream
//! deadline; panic on a malformed query.
//!
//! Operator-facing behaviour: docs/dns.md.

pub mod answer;
pub mod catalogue;
pub mod forward;
pub mod metrics;
pub mod server;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use answer::{Answer, RECORD_TTL_SECS, Zone, answer};
pub use catalogue::{
    Catalogue, EndpointLiveness, PortProtocol, PublishedPort, ReplicaEndpoint, ServiceRecords,
};
pub use forward::{ForwardError, Forwarder};
pub use metrics::{DnsMetrics, QueryResult};
pub use server::{DnsServerHandle, spawn_dns_server};

/// Where the server listens unless told otherwise: an address of its own on loopback (the
/// resolver address workloads get), port 53.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53));
/// The zone served unless told otherwise.
pub const DEFAULT_ZONE: &str = "warren.";
/// How long a forwarded query may take, all upstreams together, before SERVFAIL.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries outstanding at once; beyond it, SERVFAIL at once (counted `busy`).
pub const DEFAULT_FORWARDS_IN_FLIGHT_MAX: usize = 256;
/// A TCP connection with no request for this long is closed.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where names outside the zone are forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Upstreams {
    /// The `nameserver` lines of `/etc/resolv.conf` (port 53), read when the server starts,
    /// without the server's own address.
    #[default]
    System,
    /// Exactly these, in order. Empty: no forwarding (SERVFAIL outside the zone).
    List(Vec<SocketAddr>),
}

/// The DNS server's settings.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP address (default [`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// The zone (default [`DEFAULT_ZONE`]).
    pub zone: String,
    /// Where other names go (default: resolv.conf).
    pub upstreams: Upstreams,
    /// Deadline of one forwarded query (default [`DEFAULT_FORWARD_TIMEOUT`]).
    pub forward_timeout: Duration,
    /// Forwarded queries outstanding at once (default [`DEFAULT_FORWARDS_IN_FLIGHT_MAX`]).
    pub forwards_in_flight_max: usize,
    /// Idle TCP connections are closed after this (default [`DEFAULT_TCP_IDLE_TIMEOUT`]).
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: DEFAULT_LISTEN,
            zone: DEFAULT_ZONE.to_owned(),
            upstreams: Upstreams::System,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            forwards_in_flight_max: DEFAULT_FORWARDS_IN_FLIGHT_MAX,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        }
    }
}

impl DnsConfig {
    /// Checks the zone name and that timeouts and limits are not zero.
    ///
    /// # Errors
    /// [`DnsError::Config`] naming the field, [`DnsError::Zone`] for a zone that is not a name.
    pub fn validate(&self) -> Result<(), DnsError> {
        self.parsed_zone()?;
        if self.forward_timeout.is_zero() {
            return Err(DnsError::Config("forward_timeout must not be zero".into()));
        }
        if self.tcp_idle_timeout.is_zero() {
            return Err(DnsError::Config("tcp_idle_timeout must not be zero".into()));
        }
        if self.forwards_in_flight_max == 0 {
            return Err(DnsError::Config(
                "forwards_in_flight_max must not be zero".into(),
            ));
        }
        Ok(())
    }

    /// The zone as the server answers for it.
    ///
    /// # Errors
    /// [`DnsError::Zone`] when it is not a DNS name.
    pub(crate) fn parsed_zone(&self) -> Result<Zone, DnsError> {
        Zone::new(&self.zone).map_err(|source| DnsError::Zone {
            zone: self.zone.clone(),
            source,
        })
    }
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A setting is invalid.
    #[error("dns config: {0}")]
    Config(String),
    /// The zone is not a DNS name.
    #[error("dns config: zone {zone:?}: {source}")]
    Zone {
        /// The configured zone.
        zone: String,
        /// Why it is not a name.
        source: hickory_proto::ProtoError,
    },
    /// The listen address could not be bound.
    #[error("bind dns {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let config = DnsConfig::default();
        config.validate().expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.11:53");
        assert_eq!(config.zone, "warren.");
        assert_eq!(config.upstreams, Upstreams::System);
    }

    #[test]
    fn validate_names_the_field() {
        let bad_zone = DnsConfig {
            zone: "a..b".into(),
            ..DnsConfig::default()
        };
        assert!(
            bad_zone
                .validate()
                .unwrap_err()
                .to_string()
                .contains("zone")
        );
        let zero = DnsConfig {
            forward_timeout: Duration::ZERO,
            ..DnsConfig::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("forward_timeout")
        );
    }
}
