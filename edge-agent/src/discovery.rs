//! Discovery at the edge: the agent's gossip membership ([`warren_mesh::Mesh`]) and its DNS
//! server ([`crate::dns`]), both fed by the cached view, so they work while control is out of
//! reach (design §4: "DNS answers from cache", "gossip continues inside the site").
//!
//! - DNS starts at once, from the cached view if there is one (an offline boot answers too).
//! - The mesh starts as soon as a view carries the gossip key (control seals it into every
//!   view, like a secret, for this node only); its seeds are the view's peers.
//! - The DNS catalogue is rebuilt whenever the view or the membership changes:
//!   [`build_catalogue`] (pure) marks each replica by what gossip says of its node.
//! - The membership also goes to the link, whose failure detector takes gossip as a witness
//!   ([`crate::link_failure`]).
//!
//! Both are optional and neither may stop the agent: an address that cannot be bound gives a
//! warning, and the agent runs on without it (workloads before discovery).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use prometheus::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_api::wire::NodeView;
use warren_api::{NodeId, NodeRole, ReplicaKey};
use warren_mesh::keyring::{GossipKey, KeyId, Keyring};
use warren_mesh::{Liveness as GossipLiveness, Member, Mesh, MeshConfig, MeshMetrics, MeshTimers};
use warren_transport::seal::gossip_key_id_of;

use crate::dns::{
    self, Catalogue, DnsConfig, DnsMetrics, Liveness, PortProtocol, PublishedPort, ReplicaEndpoint,
    ServiceRecords,
};

/// What the agent needs to run discovery.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryOptions {
    /// Gossip listen address; `None`: no mesh.
    pub gossip_listen: Option<SocketAddr>,
    /// The gossip address peers dial (registered at join); `None`: the listen address.
    pub gossip_advertise: Option<SocketAddr>,
    /// DNS server settings; `None`: no DNS server.
    pub dns: Option<DnsConfig>,
    /// The mesh's timers.
    pub mesh_timers: MeshTimers,
}

/// Who this node is, for the mesh.
#[derive(Clone, Debug)]
pub(crate) struct Local {
    pub node_id: NodeId,
    pub name: String,
    pub site: String,
    pub cluster_fingerprint: String,
    pub data_dir: PathBuf,
    /// The file workloads see as `/etc/resolv.conf`, if they get the agent's DNS.
    pub resolv_conf: Option<PathBuf>,
}

/// Name of that file in the data dir.
pub const RESOLV_CONF_FILE: &str = "resolv.conf";

/// Where discovery serves, once started (for `status.json` and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiscoveryStatus {
    /// The DNS server's bound address.
    pub dns: Option<SocketAddr>,
    /// The mesh's bound gossip address.
    pub gossip: Option<SocketAddr>,
}

/// Runs discovery until `cancel`. Never fails: what cannot start is logged and left out.
pub(crate) async fn run(
    local: Local,
    options: DiscoveryOptions,
    mut views: watch::Receiver<Option<Arc<NodeView>>>,
    registry: Registry,
    status: watch::Sender<DiscoveryStatus>,
    gossip_out: watch::Sender<Vec<Member>>,
    cancel: CancellationToken,
) {
    let first = views.borrow_and_update().clone();
    let (catalogue_tx, catalogue_rx) = watch::channel(Arc::new(
        first
            .as_deref()
            .map(|v| build_catalogue(v, &[]))
            .unwrap_or_default(),
    ));
    let mut dns_server = None;
    if let Some(config) = options.dns.clone() {
        let zone = config.zone.trim_end_matches('.').to_owned();
        let metrics = match DnsMetrics::register(&registry) {
            Ok(metrics) => Some(metrics),
            Err(error) => {
                warn!(error = %error, "cannot register DNS metrics; running without DNS");
                None
            }
        };
        if let Some(metrics) = metrics {
            let addr = config.listen;
            match dns::spawn_dns_server(config, catalogue_rx, metrics, cancel.child_token()).await {
                Ok(handle) => {
                    info!(addr = %handle.local_addr(), "DNS served");
                    status.send_modify(|s| s.dns = Some(handle.local_addr()));
                    if let Some(path) = &local.resolv_conf {
                        // In place (same inode): running workloads have it bind-mounted.
                        let text = resolv_conf_text(handle.local_addr(), &zone);
                        match std::fs::write(path, text) {
                            Ok(()) => {
                                info!(path = %path.display(), "workloads resolve through this agent's DNS")
                            }
                            Err(error) => {
                                warn!(error = %error, path = %path.display(), "cannot point the workloads' resolv.conf at this agent's DNS")
                            }
                        }
                    }
                    dns_server = Some(handle);
                }
                Err(error) => {
                    warn!(addr = %addr, error = %error, "cannot serve DNS; running without")
                }
            }
        }
    }
    let mesh_metrics = match options.gossip_listen {
        Some(_) => match MeshMetrics::register(&registry) {
            Ok(metrics) => Some(metrics),
            Err(error) => {
                warn!(error = %error, "cannot register gossip metrics; running without gossip");
                None
            }
        },
        None => None,
    };
    let mut mesh: Option<Mesh> = None;
    let mut members_rx: Option<watch::Receiver<Vec<Member>>> = None;
    let mut mesh_failed = false;
    let mut published: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    loop {
        let view = views.borrow_and_update().clone();
        if mesh.is_none()
            && !mesh_failed
            && let (Some(listen), Some(metrics), Some(view)) =
                (options.gossip_listen, mesh_metrics.clone(), view.as_deref())
            && let Some(key) = gossip_key_from(view, &local)
        {
            let config = MeshConfig {
                node_id: local.node_id,
                name: local.name.clone(),
                role: NodeRole::Agent,
                site: local.site.clone(),
                cluster_id: local.cluster_fingerprint.clone(),
                listen_addr: listen,
                advertise_addr: options.gossip_advertise,
                seeds: seeds(view),
                keyring: Keyring::new(key),
                timers: options.mesh_timers.clone(),
                fault: None,
            };
            match Mesh::start(config, metrics).await {
                Ok(started) => {
                    info!(addr = %started.local_addr(), advertise = %started.advertise_addr(), "gossip started");
                    let dns = status.borrow().dns;
                    if let Some(dns) = dns
                        && let Err(error) = started.set_endpoint("dns", &dns.to_string()).await
                    {
                        warn!(error = %error, "cannot publish the DNS endpoint by gossip");
                    }
                    status.send_modify(|s| s.gossip = Some(started.local_addr()));
                    members_rx = Some(started.watch());
                    mesh = Some(started);
                }
                Err(error) => {
                    mesh_failed = true;
                    warn!(addr = %listen, error = %error, "cannot start gossip; running without");
                }
            }
        }
        if let (Some(mesh), Some(view)) = (&mesh, view.as_deref()) {
            if let Err(error) = mesh.set_agent_revision(view.revision.0).await {
                warn!(error = %error, "cannot publish the revision by gossip");
            }
            let now = own_service_endpoints(view);
            for (service, endpoints) in &now {
                if published.get(service) != Some(endpoints)
                    && let Err(error) = mesh.set_service_endpoints(service, endpoints).await
                {
                    warn!(error = %error, service = %service, "cannot publish service endpoints by gossip");
                }
            }
            for gone in published.keys().filter(|s| !now.contains_key(*s)) {
                let _ = mesh.set_service_endpoints(gone, &[]).await;
            }
            published = now;
        }
        let members = members_rx
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default();
        publish_members(&gossip_out, &members);
        if let Some(view) = view.as_deref() {
            let next = build_catalogue(view, &members);
            catalogue_tx.send_if_modified(|current| {
                if **current == next {
                    false
                } else {
                    *current = Arc::new(next);
                    true
                }
            });
        }
        let members_changed = async {
            match members_rx.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = views.changed() => if changed.is_err() { break },
            () = members_changed => {}
        }
    }
    if let Some(mesh) = mesh {
        mesh.shutdown().await;
    }
    if let Some(server) = dns_server {
        server.shutdown().await;
    }
}

/// Hands the gossip view to the link (its failure detector's witness) when it changed.
fn publish_members(out: &watch::Sender<Vec<Member>>, members: &[Member]) {
    out.send_if_modified(|current| {
        let changed = current.as_slice() != members;
        if changed {
            *current = members.to_vec();
        }
        changed
    });
}

/// What workloads get as `/etc/resolv.conf`: this agent's server, and the zone as search
/// domain (so `web` finds `web.warren.`).
fn resolv_conf_text(server: SocketAddr, zone: &str) -> String {
    format!(
        "# written by warren: this agent's DNS server\nnameserver {}\nsearch {zone}\n",
        server.ip()
    )
}

/// The gossip key the view carries for this node, opened with the node's secret key.
fn gossip_key_from(view: &NodeView, local: &Local) -> Option<GossipKey> {
    let (name, blob) = view
        .secrets
        .iter()
        .filter_map(|(name, blob)| gossip_key_id_of(name).map(|id| (id, name, blob)))
        .max_by_key(|(id, _, _)| *id)
        .map(|(_, name, blob)| (name, blob))?;
    let id = gossip_key_id_of(name)?;
    let node_key = match crate::secrets::load_key(&local.data_dir) {
        Ok(Some(key)) => key,
        Ok(None) => {
            warn!("no node secret key in the data dir: cannot open the gossip key");
            return None;
        }
        Err(error) => {
            warn!(error = %error, "cannot read the node secret key: no gossip");
            return None;
        }
    };
    match crate::secrets::open_blob(&node_key, name, blob) {
        Ok(bytes) => {
            let bytes: [u8; 32] = bytes.try_into().ok()?;
            Some(GossipKey::from_bytes(KeyId(id), bytes))
        }
        Err(error) => {
            warn!(error = %error, "the gossip key in the view does not open with this node's key");
            None
        }
    }
}

/// This node's replicas' endpoints by service (address and each published port), as the view's
/// catalogue lists them: what the node gossips as its running service endpoints.
fn own_service_endpoints(view: &NodeView) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut out: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    for endpoint in view.catalogue.iter().filter(|e| e.node == view.node.id) {
        let Ok(ip) = endpoint.address.parse::<IpAddr>() else {
            continue;
        };
        let list = out.entry(endpoint.service.to_string()).or_default();
        list.extend(endpoint.ports.iter().map(|p| SocketAddr::new(ip, p.port)));
        list.sort();
        list.dedup();
    }
    out.retain(|_, list| !list.is_empty());
    out
}

/// Gossip addresses of the view's peers.
fn seeds(view: &NodeView) -> Vec<SocketAddr> {
    view.peers
        .iter()
        .flat_map(|p| p.endpoints.iter())
        .filter_map(|e| e.parse().ok())
        .collect()
}

/// The DNS catalogue of `view`, each replica marked by what gossip says of its node: alive,
/// dead, or unknown (suspect, not heard of, or no gossip at all). This node's own replicas are
/// alive (the agent runs them). A replica whose address does not parse is left out; a global
/// service's replica is labelled with its node's name (from the view's peers), or the node id
/// when the name is not known.
pub fn build_catalogue(view: &NodeView, members: &[Member]) -> Catalogue {
    let mut names: BTreeMap<NodeId, &str> = view
        .peers
        .iter()
        .map(|p| (p.node_id, p.name.as_str()))
        .collect();
    names.insert(view.node.id, view.node.name.as_str());
    let liveness: BTreeMap<NodeId, GossipLiveness> =
        members.iter().map(|m| (m.node_id, m.liveness)).collect();
    let mut services: BTreeMap<String, ServiceRecords> = BTreeMap::new();
    for endpoint in &view.catalogue {
        let Ok(address) = endpoint.address.parse::<IpAddr>() else {
            continue;
        };
        let label = match &endpoint.replica.key {
            ReplicaKey::Slot(slot) => slot.to_string(),
            ReplicaKey::Node(node) => names
                .get(node)
                .map_or_else(|| node.to_string(), |n| (*n).to_owned()),
        };
        let state = if endpoint.node == view.node.id {
            Liveness::Alive
        } else {
            match liveness.get(&endpoint.node) {
                Some(GossipLiveness::Alive) => Liveness::Alive,
                Some(GossipLiveness::Dead) => Liveness::Dead,
                Some(GossipLiveness::Suspect) | None => Liveness::Unknown,
            }
        };
        let records = services.entry(endpoint.service.to_string()).or_default();
        records.replicas.push(ReplicaEndpoint {
            label,
            address,
            liveness: state,
        });
        if records.ports.is_empty() {
            records.ports = endpoint
                .ports
                .iter()
                .filter_map(|p| {
                    Some(PublishedPort {
                        name: p.name.clone()?,
                        port: p.port,
                        protocol: PortProtocol::from(p.protocol),
                    })
                })
                .collect();
        }
    }
    // The SOA serial: the low 32 bits of the revision (it only has to grow between changes
    // a resolver could cache, and a view's revision does).
    let serial = (view.revision.0 & u64::from(u32::MAX)) as u32;
    Catalogue::new(serial, services)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warren_api::wire::{PeerInfo, ServiceEndpoint};
    use warren_api::{
        Availability, Node, NodeAddresses, NodeState, PortSpec, Protocol, ReplicaId, Revision,
        ServiceName,
    };

    use super::*;

    fn endpoint(service: &str, key: ReplicaKey, node: u64, address: &str) -> ServiceEndpoint {
        let service = ServiceName::new(service).expect("valid name");
        ServiceEndpoint {
            replica: ReplicaId {
                service: service.clone(),
                key,
            },
            service,
            node: NodeId(node),
            address: address.into(),
            ports: vec![
                PortSpec {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                PortSpec {
                    name: None,
                    port: 9000,
                    protocol: Protocol::Udp,
                },
            ],
        }
    }

    fn member(node: u64, liveness: GossipLiveness) -> Member {
        Member::from_meta(
            NodeId(node),
            1,
            "127.0.0.1:7946".parse().expect("literal"),
            liveness,
            BTreeMap::new(),
        )
    }

    /// Node 1 (this one), 2 (alive by gossip), 3 (dead), 4 (suspect), 5 (never heard of):
    /// each replica carries what gossip says of its node, this node's own is alive; a global
    /// service's replicas are labelled by node name; unnamed ports get no SRV; an address that
    /// does not parse leaves the replica out.
    #[test]
    fn replicas_carry_their_nodes_gossip_liveness() {
        let view = NodeView {
            revision: Revision(42),
            cluster_id: [0; 32],
            node: Node {
                id: NodeId(1),
                name: "edge-1".into(),
                role: NodeRole::Agent,
                site: "lisbon".into(),
                labels: BTreeMap::new(),
                availability: Availability::Active,
                state: NodeState::Ready,
                cert_serial: None,
                addresses: NodeAddresses::default(),
                joined_at_ms: 0,
            },
            services: BTreeMap::new(),
            replicas: vec![],
            secrets: BTreeMap::new(),
            catalogue: vec![
                endpoint("web", ReplicaKey::Slot(0), 1, "10.0.0.1"),
                endpoint("web", ReplicaKey::Slot(1), 2, "10.0.0.2"),
                endpoint("web", ReplicaKey::Slot(2), 3, "10.0.0.3"),
                endpoint("web", ReplicaKey::Slot(3), 4, "10.0.0.4"),
                endpoint("web", ReplicaKey::Slot(4), 5, "10.0.0.5"),
                endpoint("web", ReplicaKey::Slot(5), 2, "not an address"),
                endpoint("agent", ReplicaKey::Node(NodeId(2)), 2, "10.0.0.2"),
            ],
            control_addrs: vec![],
            peers: vec![PeerInfo {
                node_id: NodeId(2),
                name: "edge-2".into(),
                site: "lisbon".into(),
                overlay_ip: None,
                wg_public_key: None,
                endpoints: vec!["10.0.0.2:7946".into()],
            }],
        };
        let members = [
            member(2, GossipLiveness::Alive),
            member(3, GossipLiveness::Dead),
            member(4, GossipLiveness::Suspect),
        ];
        let catalogue = build_catalogue(&view, &members);
        assert_eq!(catalogue.serial(), 42);
        let web = catalogue.service("web").expect("web");
        let states: Vec<(&str, Liveness)> = web
            .replicas
            .iter()
            .map(|r| (r.label.as_str(), r.liveness))
            .collect();
        assert_eq!(
            states,
            [
                ("0", Liveness::Alive),
                ("1", Liveness::Alive),
                ("2", Liveness::Dead),
                ("3", Liveness::Unknown),
                ("4", Liveness::Unknown),
            ]
        );
        assert_eq!(web.ports.len(), 1, "only named ports: {:?}", web.ports);
        let global = catalogue.service("agent").expect("agent");
        assert_eq!(global.replicas[0].label, "edge-2");
        assert_eq!(seeds(&view), ["10.0.0.2:7946".parse().unwrap()]);
        let own = own_service_endpoints(&view);
        let web: Vec<String> = own["web"].iter().map(ToString::to_string).collect();
        assert_eq!(web, ["10.0.0.1:8080", "10.0.0.1:9000"], "{own:?}");
        assert!(!own.contains_key("agent"), "node 2's replica is not ours");
    }
}
