//! Discovery at the edge: the agent's gossip membership ([`warren_mesh::Mesh`]) and its DNS
//! server ([`crate::dns`]), both fed by the cached view, so they work while control is out of
//! reach (docs/design.md §4: "DNS answers from cache", "gossip continues inside the site").
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
//! warning, shows as down in the listener book, and is retried with backoff while the agent
//! runs on (workloads before discovery).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use prometheus::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_api::wire::{Listener, MeshDeclaration, NodeView};
use warren_api::{NodeId, NodeRole, ReplicaKey};
use warren_mesh::config::DEFAULT_KEY_ROTATION_OVERLAP;
use warren_mesh::keyring::{GossipKey, KeyId, Keyring};
use warren_mesh::{
    Liveness as GossipLiveness, Member, MemberConfig, Mesh, MeshConfig, MeshIdentity, MeshMetrics,
    MeshTimers,
};
use warren_transport::seal::gossip_key_id_of;

use crate::dns::{
    self, Catalogue, DnsConfig, DnsMetrics, EndpointLiveness, PortProtocol, PublishedPort,
    ReplicaEndpoint, ServiceRecords,
};
use crate::listeners::{BindRetry, ListenerBook};

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
    /// How the mesh signs this node's state and checks the others'.
    pub gossip_identity: MeshIdentity,
    /// What the WireGuard overlay declares of this node (gossiped as claims and the `wg`
    /// endpoint, so peers find a box whose address changed while control was out of reach).
    pub overlay: watch::Receiver<Option<MeshDeclaration>>,
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
    /// The id of the gossip key the mesh seals with (the cluster key generation it came from).
    #[serde(default)]
    pub gossip_key: Option<u32>,
}

/// Where discovery reports what it serves: its bound addresses, and its listeners' states.
#[derive(Debug)]
pub(crate) struct Reporting {
    pub status: watch::Sender<DiscoveryStatus>,
    pub listeners: ListenerBook,
    /// The gossip view, for the link's failure detector (empty without a mesh).
    pub gossip: watch::Sender<Vec<Member>>,
}

/// Runs discovery until `cancel`. Never fails and never gives up: a listener that cannot bind
/// (DNS, gossip) is marked down in the listener book, logged, and retried with backoff while
/// the agent runs on.
pub(crate) async fn run(
    local: Local,
    options: DiscoveryOptions,
    mut views: watch::Receiver<Option<Arc<NodeView>>>,
    registry: Registry,
    reporting: Reporting,
    cancel: CancellationToken,
) {
    let first = views.borrow_and_update().clone();
    let catalogue = Arc::new(
        first
            .as_deref()
            .map(|v| build_catalogue(v, &[]))
            .unwrap_or_default(),
    );
    let mut overlay = local.overlay.clone();
    let mut discovery = Discovery::new(local, options, &registry, reporting, catalogue);
    loop {
        discovery.try_dns(&cancel).await;
        let view = views.borrow_and_update().clone();
        discovery.try_mesh(view.as_deref()).await;
        let members = discovery.members();
        if let Some(view) = view.as_deref() {
            discovery.follow_gossip_key(view);
            discovery.publish(view).await;
            discovery.rebuild_catalogue(view, &members);
        }
        let retry_at = discovery.next_retry();
        let members = discovery.members_rx.as_mut();
        let members_changed = async {
            match members {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let overlay_changed = async {
            if overlay.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = views.changed() => if changed.is_err() { break },
            () = members_changed => {}
            () = overlay_changed => {}
            () = sleep_until_some(retry_at) => {}
        }
    }
    discovery.shutdown().await;
}

/// Gossips this node's overlay claims (key, address) and where its WireGuard port is. Peers
/// believe the endpoint only with claims their registry backs.
async fn publish_overlay(
    mesh: &Mesh,
    declaration: &MeshDeclaration,
    address: std::net::Ipv4Addr,
) -> Result<(), warren_mesh::MetaError> {
    let Some(endpoint) = &declaration.endpoint else {
        return Ok(());
    };
    let key = warren_wireguard::PublicKey(declaration.public_key).to_base64();
    mesh.set_wg_public_key(&key).await?;
    mesh.set_overlay_addr(address.into()).await?;
    mesh.set_endpoint(crate::overlay::peers::GOSSIP_ENDPOINT, endpoint)
        .await
}

/// The earliest retry still ahead of `now`. One already due was tried this round unless it
/// waits for something else (the mesh for a view that brings the gossip key): a new view wakes
/// the loop for that, and a timer in the past would spin it.
fn next_due(
    dues: impl IntoIterator<Item = tokio::time::Instant>,
    now: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    dues.into_iter().filter(|due| *due > now).min()
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A listener that is configured but not up: its retry state and, after a failed attempt,
/// when the next one is due (before any, it is tried as soon as it can be).
#[derive(Debug)]
struct Pending {
    retry: BindRetry,
    due: Option<tokio::time::Instant>,
}

impl Pending {
    fn new(listener: Listener) -> Self {
        Pending {
            retry: BindRetry::new(listener),
            due: None,
        }
    }

    fn is_due(&self) -> bool {
        self.due
            .is_none_or(|due| tokio::time::Instant::now() >= due)
    }

    /// Records a failed attempt; the next one is due after the backoff.
    fn failed(&mut self, book: &ListenerBook, addr: SocketAddr, error: &dyn std::fmt::Display) {
        let delay = self.retry.failed(book, addr, error);
        self.due = Some(tokio::time::Instant::now() + delay);
    }
}

/// The running state of discovery: the DNS server and the mesh once started, and the retry
/// state of whichever is not up yet.
struct Discovery {
    local: Local,
    options: DiscoveryOptions,
    reporting: Reporting,
    catalogue_tx: watch::Sender<Arc<Catalogue>>,
    dns_metrics: Option<DnsMetrics>,
    dns_server: Option<dns::DnsServerHandle>,
    /// Set while DNS is configured and not serving.
    dns_pending: Option<Pending>,
    mesh_metrics: Option<MeshMetrics>,
    mesh: Option<Mesh>,
    members_rx: Option<watch::Receiver<Vec<Member>>>,
    /// Set while gossip is configured and not started.
    mesh_pending: Option<Pending>,
    published: BTreeMap<String, Vec<SocketAddr>>,
}

impl Discovery {
    fn new(
        local: Local,
        options: DiscoveryOptions,
        registry: &Registry,
        reporting: Reporting,
        catalogue: Arc<Catalogue>,
    ) -> Self {
        let book = &reporting.listeners;
        let dns_metrics =
            options
                .dns
                .as_ref()
                .and_then(|config| match DnsMetrics::register(registry) {
                    Ok(metrics) => Some(metrics),
                    Err(error) => {
                        warn!(error = %error, "cannot register DNS metrics; running without DNS");
                        book.down(
                            Listener::Dns,
                            config.listen,
                            format!("cannot register DNS metrics: {error}"),
                        );
                        None
                    }
                });
        let mesh_metrics = options.gossip_listen.and_then(|listen| {
            match MeshMetrics::register(registry) {
                Ok(metrics) => Some(metrics),
                Err(error) => {
                    warn!(error = %error, "cannot register gossip metrics; running without gossip");
                    book.down(
                        Listener::Gossip,
                        listen,
                        format!("cannot register gossip metrics: {error}"),
                    );
                    None
                }
            }
        });
        if let (Some(config), Some(_)) = (&options.dns, &dns_metrics) {
            book.expect(Listener::Dns, config.listen);
        }
        if let (Some(listen), Some(_)) = (options.gossip_listen, &mesh_metrics) {
            book.down(
                Listener::Gossip,
                listen,
                "not started yet: gossip starts once a view brings the gossip key".to_owned(),
            );
        }
        Discovery {
            dns_pending: dns_metrics.as_ref().map(|_| Pending::new(Listener::Dns)),
            mesh_pending: mesh_metrics
                .as_ref()
                .map(|_| Pending::new(Listener::Gossip)),
            local,
            options,
            reporting,
            catalogue_tx: watch::channel(catalogue).0,
            dns_metrics,
            dns_server: None,
            mesh_metrics,
            mesh: None,
            members_rx: None,
            published: BTreeMap::new(),
        }
    }

    /// When the next retry of a listener that failed to bind is due (see [`next_due`]).
    fn next_retry(&self) -> Option<tokio::time::Instant> {
        let dns = self.dns_pending.as_ref().and_then(|p| p.due);
        let mesh = self.mesh_pending.as_ref().and_then(|p| p.due);
        next_due(dns.into_iter().chain(mesh), tokio::time::Instant::now())
    }

    /// Starts the DNS server if it is configured, not up and due.
    async fn try_dns(&mut self, cancel: &CancellationToken) {
        let (Some(pending), Some(config), Some(metrics)) = (
            self.dns_pending.as_mut(),
            self.options.dns.clone(),
            self.dns_metrics.clone(),
        ) else {
            return;
        };
        if !pending.is_due() {
            return;
        }
        let addr = config.listen;
        let catalogue = self.catalogue_tx.subscribe();
        let book = &self.reporting.listeners;
        let handle =
            match dns::spawn_dns_server(config, catalogue, metrics, cancel.child_token()).await {
                Ok(handle) => handle,
                Err(error) => return pending.failed(book, addr, &error),
            };
        let bound = handle.local_addr();
        info!(addr = %bound, "DNS served");
        pending.retry.bound(book, bound);
        self.dns_pending = None;
        self.reporting.status.send_modify(|s| s.dns = Some(bound));
        self.point_workloads_at_dns(bound);
        if let Some(mesh) = &self.mesh
            && let Err(error) = mesh.set_endpoint("dns", &bound.to_string()).await
        {
            warn!(error = %error, "cannot publish the DNS endpoint by gossip");
        }
        self.dns_server = Some(handle);
    }

    /// Points the workloads' resolv.conf (if they get one) at this agent's DNS server, in
    /// place (same inode): running workloads have it bind-mounted.
    fn point_workloads_at_dns(&self, server: SocketAddr) {
        let Some(path) = &self.local.resolv_conf else {
            return;
        };
        let zone = self
            .options
            .dns
            .as_ref()
            .map_or("", |c| c.zone.trim_end_matches('.'));
        match std::fs::write(path, resolv_conf_text(server, zone)) {
            Ok(()) => info!(path = %path.display(), "workloads resolve through this agent's DNS"),
            Err(error) => {
                warn!(error = %error, path = %path.display(), "cannot point the workloads' resolv.conf at this agent's DNS")
            }
        }
    }

    /// Starts the mesh once a view brings the gossip key, if gossip is configured, not up and
    /// due.
    async fn try_mesh(&mut self, view: Option<&NodeView>) {
        let (Some(pending), Some(listen), Some(metrics), Some(view)) = (
            self.mesh_pending.as_mut(),
            self.options.gossip_listen,
            self.mesh_metrics.clone(),
            view,
        ) else {
            return;
        };
        let Some(key) = gossip_key_from(view, &self.local) else {
            return;
        };
        if !pending.is_due() {
            return;
        }
        let config = MeshConfig {
            member: MemberConfig {
                node_id: self.local.node_id,
                name: self.local.name.clone(),
                role: NodeRole::Agent,
                site: self.local.site.clone(),
                scope: self.local.site.clone(),
                cluster_id: self.local.cluster_fingerprint.clone(),
                advertise_addr: self.options.gossip_advertise,
                seeds: seeds(view),
                identity: self.local.gossip_identity.clone(),
                timers: self.options.mesh_timers.clone(),
            },
            listen_addr: listen,
            keyring: Keyring::new(key),
            fault: None,
        };
        let book = &self.reporting.listeners;
        let started = match Mesh::start(config, metrics).await {
            Ok(started) => started,
            Err(error) => return pending.failed(book, listen, &error),
        };
        info!(addr = %started.local_addr(), advertise = %started.advertise_addr(), "gossip started");
        pending.retry.bound(book, started.local_addr());
        self.mesh_pending = None;
        let dns = self.reporting.status.borrow().dns;
        if let Some(dns) = dns
            && let Err(error) = started.set_endpoint("dns", &dns.to_string()).await
        {
            warn!(error = %error, "cannot publish the DNS endpoint by gossip");
        }
        let key_id = started.key_rotator().current_id().0;
        self.reporting.status.send_modify(|s| {
            s.gossip = Some(started.local_addr());
            s.gossip_key = Some(key_id);
        });
        self.members_rx = Some(started.watch());
        self.mesh = Some(started);
    }

    /// Moves the mesh to a newer gossip key when the view brings one (the cluster key was
    /// rotated); the old key stays accepted for [`DEFAULT_KEY_ROTATION_OVERLAP`], while the
    /// other nodes receive theirs.
    fn follow_gossip_key(&self, view: &NodeView) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        let newest = view
            .secrets
            .keys()
            .filter_map(|n| gossip_key_id_of(n))
            .max();
        let current = mesh.key_rotator().current_id().0;
        if newest.is_none_or(|id| id <= current) {
            return;
        }
        let Some(key) = gossip_key_from(view, &self.local) else {
            return;
        };
        let key_id = key.id().0;
        match mesh.rotate_key(key, DEFAULT_KEY_ROTATION_OVERLAP) {
            Ok(()) => self
                .reporting
                .status
                .send_modify(|s| s.gossip_key = Some(key_id)),
            Err(error) => warn!(error = %error, "cannot move the gossip mesh to the new key"),
        }
    }

    /// Gossips this node's revision and its running service endpoints (what changed).
    async fn publish(&mut self, view: &NodeView) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        if let Err(error) = mesh.set_agent_revision(view.revision.0).await {
            warn!(error = %error, "cannot publish the revision by gossip");
        }
        let declaration = self.local.overlay.borrow().clone();
        if let (Some(declaration), Some(own)) = (declaration, &view.mesh)
            && let Err(error) = publish_overlay(mesh, &declaration, own.address).await
        {
            warn!(error = %error, "cannot publish the WireGuard endpoint by gossip");
        }
        let now = own_service_endpoints(view);
        for (service, endpoints) in &now {
            if self.published.get(service) != Some(endpoints)
                && let Err(error) = mesh.set_service_endpoints(service, endpoints).await
            {
                warn!(error = %error, service = %service, "cannot publish service endpoints by gossip");
            }
        }
        for gone in self.published.keys().filter(|s| !now.contains_key(*s)) {
            let _ = mesh.set_service_endpoints(gone, &[]).await;
        }
        self.published = now;
    }

    /// Rebuilds the DNS catalogue from the view and the membership; a new snapshot only if it
    /// changed.
    /// The mesh's latest membership (none without a mesh), handed on to the link when it
    /// changed.
    fn members(&mut self) -> Vec<Member> {
        let members = self
            .members_rx
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default();
        self.reporting.gossip.send_if_modified(|current| {
            let changed = *current != members;
            if changed {
                current.clone_from(&members);
            }
            changed
        });
        members
    }

    fn rebuild_catalogue(&mut self, view: &NodeView, members: &[Member]) {
        let next = build_catalogue(view, members);
        self.catalogue_tx.send_if_modified(|current| {
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
    }

    async fn shutdown(self) {
        if let Some(mesh) = self.mesh {
            mesh.shutdown().await;
        }
        if let Some(server) = self.dns_server {
            server.shutdown().await;
        }
    }
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

/// Each node's overlay address, this node's included, when this node is in the overlay; empty
/// otherwise (its workloads could not reach an overlay address).
fn overlay_addresses(view: &NodeView) -> BTreeMap<NodeId, IpAddr> {
    let Some(own) = view.mesh.as_ref().filter(|m| m.public_key.is_some()) else {
        return BTreeMap::new();
    };
    view.peers
        .iter()
        .filter(|p| p.wg_public_key.is_some())
        .filter_map(|p| Some((p.node_id, p.overlay_ip.as_deref()?.parse().ok()?)))
        .chain([(view.node.id, IpAddr::V4(own.address))])
        .collect()
}

/// Gossip addresses of the view's peers in this node's site: an agent gossips in its site's mesh
/// only. The control nodes, in every site's mesh, reach a site's first agent from their side.
fn seeds(view: &NodeView) -> Vec<SocketAddr> {
    view.peers
        .iter()
        .filter(|p| p.site == view.node.site)
        .flat_map(|p| p.endpoints.iter())
        .filter_map(|e| e.parse().ok())
        .collect()
}

/// The DNS catalogue of `view`, each replica marked by what gossip says of its node: alive,
/// dead, or unknown (suspect, not heard of, or no gossip at all). This node's own replicas are
/// alive (the agent runs them). A replica whose address does not parse is left out; a global
/// service's replica is labelled with its node's name (from the view's peers), or the node id
/// when the name is not known. When this node is in the WireGuard overlay (the registry holds
/// its key), a replica on a node that is in it too is answered with that node's overlay
/// address: workloads then reach each other through the tunnel, across sites.
pub fn build_catalogue(view: &NodeView, members: &[Member]) -> Catalogue {
    let overlay = overlay_addresses(view);
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
        let address = overlay.get(&endpoint.node).copied().unwrap_or(address);
        let label = match &endpoint.replica.key {
            ReplicaKey::Slot(slot) => slot.to_string(),
            ReplicaKey::Node(node) => names
                .get(node)
                .map_or_else(|| node.to_string(), |n| (*n).to_owned()),
        };
        let state = if endpoint.node == view.node.id {
            EndpointLiveness::Alive
        } else {
            match liveness.get(&endpoint.node) {
                Some(GossipLiveness::Alive) => EndpointLiveness::Alive,
                Some(GossipLiveness::Dead) => EndpointLiveness::Dead,
                Some(GossipLiveness::Suspect) | None => EndpointLiveness::Unknown,
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

    /// A retry that is already due but could not run (the mesh waits for its key) does not
    /// wake the loop again at once; the next one ahead does.
    #[test]
    fn only_retries_ahead_wake_the_loop() {
        let now = tokio::time::Instant::now();
        let second = std::time::Duration::from_secs(1);
        assert_eq!(next_due([now - second, now], now), None);
        assert_eq!(
            next_due([now - second, now + 2 * second, now + second], now),
            Some(now + second)
        );
    }

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
                wg_next_public_key: None,
                wg_endpoint: None,
            }],
            mesh: None,
            scrape: Default::default(),
        };
        let members = [
            member(2, GossipLiveness::Alive),
            member(3, GossipLiveness::Dead),
            member(4, GossipLiveness::Suspect),
        ];
        let catalogue = build_catalogue(&view, &members);
        assert_eq!(catalogue.serial(), 42);
        let web = catalogue.service("web").expect("web");
        let states: Vec<(&str, EndpointLiveness)> = web
            .replicas
            .iter()
            .map(|r| (r.label.as_str(), r.liveness))
            .collect();
        assert_eq!(
            states,
            [
                ("0", EndpointLiveness::Alive),
                ("1", EndpointLiveness::Alive),
                ("2", EndpointLiveness::Dead),
                ("3", EndpointLiveness::Unknown),
                ("4", EndpointLiveness::Unknown),
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

        // In the overlay, replicas on overlay nodes answer with overlay addresses; node 3
        // declared no key, so its replica keeps its host address.
        let mut meshed = view.clone();
        meshed.mesh = Some(warren_api::OwnMesh {
            range: warren_api::OverlayRange::default(),
            address: "10.42.1.1".parse().unwrap(),
            public_key: Some([1; 32]),
            next_public_key: None,
            rotations_requested: 0,
        });
        meshed.peers[0].overlay_ip = Some("10.42.2.1".into());
        meshed.peers[0].wg_public_key = Some([2; 32]);
        meshed.peers.push(PeerInfo {
            node_id: NodeId(3),
            name: "edge-3".into(),
            site: "porto".into(),
            overlay_ip: Some("10.42.3.1".into()),
            wg_public_key: None,
            endpoints: vec![],
            wg_next_public_key: None,
            wg_endpoint: None,
        });
        let catalogue = build_catalogue(&meshed, &members);
        let addresses: Vec<String> = catalogue
            .service("web")
            .expect("web")
            .replicas
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        assert_eq!(
            addresses[..3],
            ["10.42.1.1", "10.42.2.1", "10.0.0.3"],
            "{addresses:?}"
        );
    }
}
