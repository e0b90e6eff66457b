//! The zone's answers as pure functions: query name + type + catalogue → records, NODATA or
//! NXDOMAIN. No sockets, no clock; the server only encodes what these return.
//!
//! Names served under the zone (default `warren.`):
//!
//! | name | records |
//! |---|---|
//! | `<zone>` | SOA |
//! | `<service>.<zone>` | A/AAAA of the service's serving replicas |
//! | `<replica>.<service>.<zone>` | A/AAAA of that replica unless gossip says it is dead |
//! | `_<port>._<proto>.<service>.<zone>` | SRV per serving replica, target `<replica>.<service>.<zone>`, addresses in the additional section |
//!
//! **Serving replicas** of a service: if gossip says any replica is alive, exactly the alive
//! ones; otherwise the ones gossip knows nothing about (an agent cut off from gossip still
//! answers from its cached view); dead ones never. A replica asked for by its own name is
//! answered when alive or unknown: the caller chose it, and "unknown" is not "gone".
//!
//! A name that exists with no record of the asked type (AAAA of an IPv4-only service, a service
//! whose replicas are all dead, `_tcp.<service>` above an SRV name) is NOERROR/NODATA; a name
//! that does not exist is NXDOMAIN. Both carry the zone's SOA, whose minimum is the TTL, so
//! resolvers cache the negative answer no longer than a positive one.

use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::catalogue::{Catalogue, EndpointLiveness, ReplicaEndpoint, ServiceRecords};

/// TTL of every record the zone serves, seconds. Short: replicas move and die, and a stale
/// address costs a client a failed connection for this long.
pub const RECORD_TTL_SECS: u32 = 5;

/// SRV priority of every target (all serving replicas are equal).
const SRV_PRIORITY: u16 = 0;
/// SRV weight of every target: equal weights spread load evenly (RFC 2782).
const SRV_WEIGHT: u16 = 1;
/// SOA timers. No secondary ever transfers this zone; the values only need to be plausible.
const SOA_REFRESH_SECS: i32 = 3600;
const SOA_RETRY_SECS: i32 = 600;
const SOA_EXPIRE_SECS: i32 = 86_400;

/// The zone this server is authoritative for.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: Name,
    hostmaster: Name,
}

impl Zone {
    /// A zone rooted at `origin` (`warren.`; a missing trailing dot is added).
    ///
    /// # Errors
    /// `origin` is not a valid domain name.
    pub fn new(origin: &str) -> Result<Self, ProtoError> {
        let mut origin = Name::from_ascii(origin)?.to_lowercase();
        origin.set_fqdn(true);
        let hostmaster = origin.prepend_label("hostmaster")?;
        Ok(Zone { origin, hostmaster })
    }

    /// The zone's apex, lowercase and fully qualified.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// Whether `name` is the apex or below it (case-insensitive).
    pub fn contains(&self, name: &Name) -> bool {
        self.origin.zone_of(name)
    }

    /// The zone's SOA record; `serial` comes from the catalogue.
    pub fn soa(&self, serial: u32) -> Record {
        let soa = SOA::new(
            self.origin.clone(),
            self.hostmaster.clone(),
            serial,
            SOA_REFRESH_SECS,
            SOA_RETRY_SECS,
            SOA_EXPIRE_SECS,
            RECORD_TTL_SECS,
        );
        Record::from_rdata(self.origin.clone(), RECORD_TTL_SECS, RData::SOA(soa))
    }
}

/// What the zone says to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name is not in the zone: forward it.
    OutOfZone,
    /// NOERROR with records.
    Records {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section (SRV targets' addresses).
        additionals: Vec<Record>,
    },
    /// NOERROR, no record of that type at an existing name; the SOA goes in authority.
    NoData {
        /// The zone's SOA.
        soa: Record,
    },
    /// NXDOMAIN; the SOA goes in authority.
    NxDomain {
        /// The zone's SOA.
        soa: Record,
    },
}

/// Answers `qname`/`qtype` from `catalogue`. Names compare case-insensitively; owner names in
/// the answer are the question's own spelling (so resolvers using 0x20 case randomisation
/// match them).
pub fn answer(zone: &Zone, catalogue: &Catalogue, qname: &Name, qtype: RecordType) -> Answer {
    if !zone.contains(qname) {
        return Answer::OutOfZone;
    }
    let n_relative = qname.iter().count() - zone.origin.iter().count();
    let labels: Vec<String> = qname
        .iter()
        .take(n_relative)
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect();
    let soa = || zone.soa(catalogue.serial());
    let found = match labels.as_slice() {
        [] => {
            let answers = match qtype {
                RecordType::SOA | RecordType::ANY => vec![soa()],
                _ => Vec::new(),
            };
            Found::Exists(answers, Vec::new())
        }
        [service] => match catalogue.service(service) {
            Some(records) => {
                let answers = address_records(qname, serving_replicas(records), qtype);
                Found::Exists(answers, Vec::new())
            }
            None => Found::Nothing,
        },
        [first, service] => match catalogue.service(service) {
            Some(records) => replica_or_protocol(qname, records, first, qtype),
            None => Found::Nothing,
        },
        [port, protocol, service] => match catalogue.service(service) {
            Some(records) => srv(zone, qname, service, records, port, protocol, qtype),
            None => Found::Nothing,
        },
        _ => Found::Nothing,
    };
    match found {
        Found::Nothing => Answer::NxDomain { soa: soa() },
        Found::Exists(answers, _) if answers.is_empty() => Answer::NoData { soa: soa() },
        Found::Exists(answers, additionals) => Answer::Records {
            answers,
            additionals,
        },
    }
}

/// A name's lookup before it becomes an [`Answer`].
enum Found {
    /// No such name.
    Nothing,
    /// The name exists; these are its records of the asked type (maybe none), then the
    /// additional section's.
    Exists(Vec<Record>, Vec<Record>),
}

/// The replicas a service name answers with: the alive ones if any, else the unknown ones,
/// never the dead ones. In label order.
pub fn serving_replicas(records: &ServiceRecords) -> impl Iterator<Item = &ReplicaEndpoint> {
    let any_alive = records
        .replicas
        .iter()
        .any(|replica| replica.liveness == EndpointLiveness::Alive);
    let wanted = if any_alive {
        EndpointLiveness::Alive
    } else {
        EndpointLiveness::Unknown
    };
    records
        .replicas
        .iter()
        .filter(move |replica| replica.liveness == wanted)
}

/// `<replica>.<service>`: that replica's address; or `_<proto>.<service>`, an empty
/// non-terminal above SRV names.
fn replica_or_protocol(
    qname: &Name,
    records: &ServiceRecords,
    first: &str,
    qtype: RecordType,
) -> Found {
    if let Some(replica) = records.replicas.iter().find(|r| r.label == first) {
        let serving = (replica.liveness != EndpointLiveness::Dead).then_some(replica);
        let answers = address_records(qname, serving.into_iter(), qtype);
        return Found::Exists(answers, Vec::new());
    }
    let is_protocol_node = first.strip_prefix('_').is_some_and(|protocol| {
        records
            .ports
            .iter()
            .any(|port| port.protocol.as_str() == protocol)
    });
    if is_protocol_node {
        Found::Exists(Vec::new(), Vec::new())
    } else {
        Found::Nothing
    }
}

/// `_<port>._<proto>.<service>`: one SRV per serving replica, their addresses as additionals.
fn srv(
    zone: &Zone,
    qname: &Name,
    service: &str,
    records: &ServiceRecords,
    port_label: &str,
    protocol_label: &str,
    qtype: RecordType,
) -> Found {
    let (Some(port_name), Some(protocol)) = (
        port_label.strip_prefix('_'),
        protocol_label.strip_prefix('_'),
    ) else {
        return Found::Nothing;
    };
    let Some(port) = records
        .ports
        .iter()
        .find(|port| port.name == port_name && port.protocol.as_str() == protocol)
    else {
        return Found::Nothing;
    };
    if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
        return Found::Exists(Vec::new(), Vec::new());
    }
    let Ok(service_name) = zone.origin.prepend_label(service) else {
        return Found::Nothing;
    };
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for replica in serving_replicas(records) {
        // Labels come from the catalogue; one that is not a valid DNS label is skipped, not
        // served half-formed.
        let Ok(target) = service_name.prepend_label(replica.label.as_str()) else {
            continue;
        };
        let rdata = SRV::new(SRV_PRIORITY, SRV_WEIGHT, port.port, target.clone());
        answers.push(Record::from_rdata(
            qname.clone(),
            RECORD_TTL_SECS,
            RData::SRV(rdata),
        ));
        additionals.push(address_record(target, replica.address));
    }
    Found::Exists(answers, additionals)
}

/// A/AAAA records (as `qtype` asks) for `replicas`, owned by `qname`.
fn address_records<'a>(
    qname: &Name,
    replicas: impl Iterator<Item = &'a ReplicaEndpoint>,
    qtype: RecordType,
) -> Vec<Record> {
    replicas
        .filter(|replica| match qtype {
            RecordType::A => replica.address.is_ipv4(),
            RecordType::AAAA => replica.address.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        })
        .map(|replica| address_record(qname.clone(), replica.address))
        .collect()
}

fn address_record(owner: Name, address: IpAddr) -> Record {
    let rdata = match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner, RECORD_TTL_SECS, rdata)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::dns::catalogue::{PortProtocol, PublishedPort};

    fn replica(label: &str, address: &str, liveness: EndpointLiveness) -> ReplicaEndpoint {
        ReplicaEndpoint {
            label: label.to_owned(),
            address: address.parse().expect("test address"),
            liveness,
        }
    }

    /// `web`: three replicated slots (0 alive, 1 alive, 2 dead) with `_http._tcp` and
    /// `_dns._udp`; `gw`: a global service on two nodes gossip knows nothing about, IPv4 and
    /// IPv6; `down`: every replica dead; `empty`: no replicas.
    fn catalogue() -> Catalogue {
        let web = ServiceRecords {
            replicas: vec![
                replica("2", "10.42.0.3", EndpointLiveness::Dead),
                replica("0", "10.42.0.1", EndpointLiveness::Alive),
                replica("1", "10.42.0.2", EndpointLiveness::Alive),
            ],
            ports: vec![
                PublishedPort {
                    name: "http".to_owned(),
                    port: 8080,
                    protocol: PortProtocol::Tcp,
                },
                PublishedPort {
                    name: "dns".to_owned(),
                    port: 53,
                    protocol: PortProtocol::Udp,
                },
            ],
        };
        let gw = ServiceRecords {
            replicas: vec![
                replica("edge-a", "10.42.1.1", EndpointLiveness::Unknown),
                replica("edge-b", "fd42::2", EndpointLiveness::Unknown),
            ],
            ports: Vec::new(),
        };
        let down = ServiceRecords {
            replicas: vec![replica("0", "10.42.2.1", EndpointLiveness::Dead)],
            ports: Vec::new(),
        };
        Catalogue::new(
            42,
            [
                ("web".to_owned(), web),
                ("gw".to_owned(), gw),
                ("down".to_owned(), down),
                ("empty".to_owned(), ServiceRecords::default()),
            ],
        )
    }

    /// What an answer looks like in a test: `"NXDOMAIN"`, `"NODATA"`, `"OUT"`, or the answer
    /// records' data joined by spaces (then ` | ` and the additionals).
    fn render(answer: &Answer) -> String {
        fn data(records: &[Record]) -> String {
            let items: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
            items.join(" ")
        }
        match answer {
            Answer::OutOfZone => "OUT".to_owned(),
            Answer::NxDomain { .. } => "NXDOMAIN".to_owned(),
            Answer::NoData { .. } => "NODATA".to_owned(),
            Answer::Records {
                answers,
                additionals,
            } if additionals.is_empty() => data(answers),
            Answer::Records {
                answers,
                additionals,
            } => format!("{} | {}", data(answers), data(additionals)),
        }
    }

    fn check(qname: &str, qtype: RecordType, expected: &str) {
        let zone = Zone::new("warren.").expect("valid zone");
        let qname = Name::from_str(qname).expect("test name");
        let got = answer(&zone, &catalogue(), &qname, qtype);
        assert_eq!(render(&got), expected, "{qname} {qtype}");
    }

    #[test]
    fn service_names_answer_alive_replicas_only() {
        check("web.warren.", RecordType::A, "10.42.0.1 10.42.0.2");
        check("WEB.Warren.", RecordType::A, "10.42.0.1 10.42.0.2");
        check("web.warren", RecordType::A, "10.42.0.1 10.42.0.2");
        check("web.warren.", RecordType::AAAA, "NODATA");
        check("web.warren.", RecordType::TXT, "NODATA");
    }

    #[test]
    fn unknown_replicas_serve_when_none_is_alive() {
        check("gw.warren.", RecordType::A, "10.42.1.1");
        check("gw.warren.", RecordType::AAAA, "fd42::2");
        check("gw.warren.", RecordType::ANY, "10.42.1.1 fd42::2");
        check("down.warren.", RecordType::A, "NODATA");
        check("empty.warren.", RecordType::A, "NODATA");
    }

    #[test]
    fn replica_names() {
        check("1.web.warren.", RecordType::A, "10.42.0.2");
        check("2.web.warren.", RecordType::A, "NODATA");
        check("3.web.warren.", RecordType::A, "NXDOMAIN");
        check("EDGE-A.gw.warren.", RecordType::A, "10.42.1.1");
        check("edge-b.gw.warren.", RecordType::A, "NODATA");
        check("edge-b.gw.warren.", RecordType::AAAA, "fd42::2");
    }

    #[test]
    fn srv_names() {
        check(
            "_http._tcp.web.warren.",
            RecordType::SRV,
            "0 1 8080 0.web.warren. 0 1 8080 1.web.warren. | 10.42.0.1 10.42.0.2",
        );
        check(
            "_DNS._UDP.web.warren.",
            RecordType::SRV,
            "0 1 53 0.web.warren. 0 1 53 1.web.warren. | 10.42.0.1 10.42.0.2",
        );
        check("_http._tcp.web.warren.", RecordType::A, "NODATA");
        check("_http._udp.web.warren.", RecordType::SRV, "NXDOMAIN");
        check("http.tcp.web.warren.", RecordType::SRV, "NXDOMAIN");
        check("_tcp.web.warren.", RecordType::SRV, "NODATA");
        check("_sctp.web.warren.", RecordType::SRV, "NXDOMAIN");
        check("_http._tcp.gw.warren.", RecordType::SRV, "NXDOMAIN");
    }

    #[test]
    fn absent_names_and_apex() {
        check("nosuch.warren.", RecordType::A, "NXDOMAIN");
        check("a.b.c.d.web.warren.", RecordType::A, "NXDOMAIN");
        check("*.warren.", RecordType::A, "NXDOMAIN");
        check("warren.", RecordType::A, "NODATA");
        check(
            "warren.",
            RecordType::SOA,
            "warren. hostmaster.warren. 42 3600 600 86400 5",
        );
        check("example.com.", RecordType::A, "OUT");
        check("warren.example.", RecordType::A, "OUT");
        check(".", RecordType::NS, "OUT");
    }

    #[test]
    fn negative_answers_carry_the_zone_soa_and_short_ttls() {
        let zone = Zone::new("Warren").expect("valid zone");
        assert_eq!(zone.origin().to_string(), "warren.");
        let nosuch = Name::from_str("nosuch.warren.").expect("test name");
        let Answer::NxDomain { soa } = answer(&zone, &catalogue(), &nosuch, RecordType::A) else {
            panic!("nosuch is NXDOMAIN");
        };
        assert_eq!(soa.name, *zone.origin());
        assert_eq!(soa.ttl, RECORD_TTL_SECS);
        let web = Name::from_str("web.warren.").expect("test name");
        let Answer::Records { answers, .. } = answer(&zone, &catalogue(), &web, RecordType::A)
        else {
            panic!("web has addresses");
        };
        assert!(answers.iter().all(|record| record.ttl == RECORD_TTL_SECS));
        assert!(answers.iter().all(|record| record.name == web));
    }

    #[test]
    fn other_zones() {
        let zone = Zone::new("svc.example.").expect("valid zone");
        let qname = Name::from_str("web.svc.example.").expect("test name");
        let got = answer(&zone, &catalogue(), &qname, RecordType::A);
        assert_eq!(render(&got), "10.42.0.1 10.42.0.2");
        let qname = Name::from_str("web.warren.").expect("test name");
        assert_eq!(
            render(&answer(&zone, &catalogue(), &qname, RecordType::A)),
            "OUT"
        );
    }
}
