//! The data the DNS server answers from: a plain, immutable snapshot of services, their
//! replicas' addresses with what gossip says about them, and their published ports.
//!
//! Whoever merges the cached view with gossip builds a new [`Catalogue`] and publishes it as an
//! `Arc<Catalogue>` on a `tokio::sync::watch` channel; the server reads the latest snapshot per
//! query. A snapshot is never mutated after it is built, so an answer always comes from one
//! consistent picture and updates never take a lock the server waits on.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// What gossip says about a replica's endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointLiveness {
    /// Gossip saw the replica's node (and the replica running) recently.
    Alive,
    /// No word either way: gossip has not heard of the node yet, or the agent is alone.
    Unknown,
    /// Gossip says the node or the replica is gone. Never served.
    Dead,
}

/// Transport of a published port, the `_proto` label of its SRV name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortProtocol {
    /// `_tcp`.
    Tcp,
    /// `_udp`.
    Udp,
}

impl PortProtocol {
    /// The SRV label without its underscore: `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

impl From<warren_api::Protocol> for PortProtocol {
    fn from(protocol: warren_api::Protocol) -> Self {
        match protocol {
            warren_api::Protocol::Tcp => PortProtocol::Tcp,
            warren_api::Protocol::Udp => PortProtocol::Udp,
        }
    }
}

/// A port a service publishes, answered as SRV `_<name>._<protocol>.<service>.<zone>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    /// The SRV service label without its underscore (`http`). Ports without a name in the spec
    /// get none here either (the integrator may use the number, `8080`), since SRV needs one.
    pub name: String,
    /// Port number on every replica.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: PortProtocol,
}

/// One replica of a service as DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaEndpoint {
    /// The replica's DNS label, `<label>.<service>.<zone>`: the slot number for a replicated
    /// service (`1` for `web.1`), the node's name for a global service (`edge-3`). Both are
    /// unique within a service, stable while the replica exists, and valid DNS labels (slots
    /// are digits; node names are validated DNS labels).
    pub label: String,
    /// The address workloads reach the replica on (its node's overlay address, usually).
    pub address: IpAddr,
    /// What gossip says about it.
    pub liveness: EndpointLiveness,
}

/// One service's records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRecords {
    /// Replicas in any order; answers sort them by label.
    pub replicas: Vec<ReplicaEndpoint>,
    /// Published ports, for SRV.
    pub ports: Vec<PublishedPort>,
}

/// A snapshot of everything the zone holds. Cheap to share (`Arc<Catalogue>`); built once,
/// never changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalogue {
    serial: u32,
    services: BTreeMap<String, ServiceRecords>,
}

impl Catalogue {
    /// A catalogue of `services` (name → records). `serial` becomes the zone's SOA serial; use
    /// the view's revision (truncated) so that it grows with every change.
    ///
    /// Names and labels are stored lowercased (DNS compares them case-insensitively), replicas
    /// sorted by label so answers come in a stable order. A later duplicate of a service name
    /// replaces an earlier one.
    pub fn new(serial: u32, services: impl IntoIterator<Item = (String, ServiceRecords)>) -> Self {
        let services = services
            .into_iter()
            .map(|(name, mut records)| {
                for replica in &mut records.replicas {
                    replica.label.make_ascii_lowercase();
                }
                for port in &mut records.ports {
                    port.name.make_ascii_lowercase();
                }
                records.replicas.sort_by(|a, b| a.label.cmp(&b.label));
                (name.to_ascii_lowercase(), records)
            })
            .collect();
        Catalogue { serial, services }
    }

    /// The SOA serial.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The records of `service` (lowercase), if the zone has it.
    pub fn service(&self, service: &str) -> Option<&ServiceRecords> {
        self.services.get(service)
    }

    /// Every service name, in order.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_lowercases_and_sorts() {
        let catalogue = Catalogue::new(
            7,
            [(
                "Web".to_owned(),
                ServiceRecords {
                    replicas: vec![
                        ReplicaEndpoint {
                            label: "Edge-B".to_owned(),
                            address: "10.42.1.2".parse().expect("literal"),
                            liveness: EndpointLiveness::Alive,
                        },
                        ReplicaEndpoint {
                            label: "edge-a".to_owned(),
                            address: "10.42.1.1".parse().expect("literal"),
                            liveness: EndpointLiveness::Alive,
                        },
                    ],
                    ports: vec![PublishedPort {
                        name: "HTTP".to_owned(),
                        port: 80,
                        protocol: PortProtocol::Tcp,
                    }],
                },
            )],
        );
        assert_eq!(catalogue.serial(), 7);
        let web = catalogue.service("web").expect("lowercased key");
        let labels: Vec<_> = web.replicas.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["edge-a", "edge-b"]);
        assert_eq!(web.ports[0].name, "http");
        assert!(catalogue.service("Web").is_none(), "lookups take lowercase");
    }
}
