//! The control node's place in the gossip meshes, started once it holds the cluster key.
//!
//! Agents gossip only with their own site (and the control nodes), so that what each agent
//! sends and holds follows its site's size, not the fleet's. A control node therefore runs one
//! mesh per site that has agents, all on its one gossip port, plus the unnamed mesh it shares
//! with the other control nodes (and agents of releases before site meshes). What the API and
//! the leader read is the union of them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_api::NodeRole;
use warren_mesh::{GossipSocket, Member, MemberConfig, Mesh, MeshConfig, MeshMetrics};
use warren_transport::GossipSigner;

use super::ControlNode;
use crate::control::Control;

/// How often the sites with agents are compared with the site meshes this node runs, at most.
const SITES_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// This node's meshes: the unnamed one, and the task that runs the site meshes on its socket.
#[derive(Debug)]
pub(super) struct Gossip {
    pub(super) mesh: Mesh,
    cancel: CancellationToken,
    sites: JoinHandle<()>,
}

impl Gossip {
    /// Leaves every site mesh, then the unnamed one, and waits until the port is free.
    pub(super) async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.sites.await;
        self.mesh.shutdown().await;
    }
}

impl ControlNode {
    /// Joins the gossip meshes, if this node has a gossip address and the cluster key. A mesh
    /// that cannot start (the port is taken, say) is logged and the node runs on without one,
    /// as it does without a metrics listener: gossip is soft state, the control plane does not
    /// depend on it.
    pub(super) async fn start_mesh(&mut self) {
        let Some(listen_addr) = self.settings.gossip_listen else {
            return;
        };
        let Some(keys) = self.control.cluster_keys() else {
            warn!("no cluster key yet: running without the gossip mesh");
            return;
        };
        // The generation in force if held yet, else the newest held: the key follower rotates
        // the mesh once the one in force arrives.
        let in_force = self.control.read_stale().await.key_generation();
        let Some(keyring) = crate::gossip::keyring(&keys, in_force)
            .or_else(|| crate::gossip::keyring(&keys, keys.newest()))
        else {
            warn!("no gossip key: running without the gossip mesh");
            return;
        };
        let member = self.member_config();
        let seeds =
            crate::gossip::control_seeds(&*self.control.read_stale().await, self.settings.node_id);
        let config = MeshConfig {
            member: MemberConfig {
                seeds,
                ..member.clone()
            },
            listen_addr,
            keyring,
            fault: None,
        };
        let metrics = MeshMetrics::register(self.control_metrics.registry()).unwrap_or_else(|e| {
            warn!(error = %e, "mesh metrics not registered");
            MeshMetrics::unregistered()
        });
        let mesh = match Mesh::start(config, metrics).await {
            Ok(mesh) => mesh,
            Err(e) => {
                warn!(gossip = %listen_addr, error = %e, "gossip mesh not started: running without it");
                return;
            }
        };
        publish(&mesh, &self.endpoints()).await;
        mesh.leave_member_gauge();
        let (union_tx, union_rx) = watch::channel(Vec::new());
        let cancel = self.cancel.child_token();
        let sites = tokio::spawn(run_site_meshes(
            SiteMeshTask {
                control: self.control.clone(),
                socket: mesh.socket().clone(),
                template: member,
                endpoints: self.endpoints(),
                primary: mesh.watch(),
                union: union_tx,
            },
            cancel.clone(),
        ));
        self.control.set_gossip(union_rx, mesh.key_rotator());
        self.gossip = Some(Gossip {
            mesh,
            cancel,
            sites,
        });
    }

    /// What this node is in every mesh, but the scope and seeds (the unnamed mesh, none).
    fn member_config(&self) -> MemberConfig {
        let listen_addr = self.settings.gossip_listen;
        MemberConfig {
            node_id: self.settings.node_id,
            name: self.settings.name.clone(),
            role: NodeRole::Control,
            site: self.settings.site.clone(),
            scope: String::new(),
            cluster_id: crate::gossip::cluster_id(&self.control.fingerprint()),
            // A node.json from before the mesh landed records no advertised address.
            advertise_addr: self.settings.advertise_gossip.or_else(|| {
                crate::gossip::advertise_addr(listen_addr?, None, &self.settings.advertise_quic)
            }),
            seeds: Vec::new(),
            identity: crate::gossip::identity(
                GossipSigner::new(self.endpoint.credentials().clone()),
                self.member_certs.clone(),
            ),
            timers: self.mesh_timers.clone(),
        }
    }

    /// The endpoints this node publishes in every mesh: hints for peers (the registry stays
    /// the authority).
    fn endpoints(&self) -> Vec<(&'static str, String)> {
        vec![
            ("quic", self.settings.advertise_quic.clone()),
            ("api", self.settings.advertise_api.clone()),
        ]
    }
}

async fn publish(mesh: &Mesh, endpoints: &[(&'static str, String)]) {
    for (purpose, addr) in endpoints {
        if let Err(e) = mesh.set_endpoint(purpose, addr).await {
            warn!(error = %e, purpose, "cannot publish an endpoint by gossip");
        }
    }
}

/// What the site-mesh task works with.
struct SiteMeshTask {
    control: Arc<Control>,
    socket: GossipSocket,
    /// This node's member config; each site mesh gets its scope and seeds.
    template: MemberConfig,
    endpoints: Vec<(&'static str, String)>,
    /// The unnamed mesh's members.
    primary: watch::Receiver<Vec<Member>>,
    /// The union of every mesh's members, as the API and the leader read them.
    union: watch::Sender<Vec<Member>>,
}

/// Keeps one mesh per site with agents (joining a site's mesh when its first agent registers,
/// leaving it when its last is removed) and the union of their members current, until
/// cancelled; then leaves them all.
async fn run_site_meshes(mut task: SiteMeshTask, cancel: CancellationToken) {
    let mut meshes: BTreeMap<String, Mesh> = BTreeMap::new();
    let mut watches: BTreeMap<String, watch::Receiver<Vec<Member>>> = BTreeMap::new();
    let mut applied = task.control.watch_applied();
    let mut tick = tokio::time::interval(task.template.timers.gossip_interval / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sites_due = true;
    let mut last_check: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = applied.changed() => {
                if changed.is_err() { break }
                sites_due = true;
                continue;
            }
            _ = tick.tick() => {}
        }
        let mut changed = false;
        if sites_due && last_check.is_none_or(|at| at.elapsed() >= SITES_CHECK_INTERVAL) {
            sites_due = false;
            last_check = Some(Instant::now());
            changed = task.follow_sites(&mut meshes, &mut watches).await;
        }
        changed |= task.primary.has_changed().unwrap_or(false);
        changed |= watches
            .values()
            .any(|watch| watch.has_changed().unwrap_or(false));
        if changed {
            task.publish_union(&mut watches);
        }
    }
    for (_, mesh) in meshes {
        mesh.shutdown().await;
    }
}

impl SiteMeshTask {
    /// Joins the meshes of sites that gained their first agent and leaves those of sites that
    /// lost their last; whether the set changed.
    async fn follow_sites(
        &self,
        meshes: &mut BTreeMap<String, Mesh>,
        watches: &mut BTreeMap<String, watch::Receiver<Vec<Member>>>,
    ) -> bool {
        let (sites, seeds) = {
            let state = self.control.read_stale().await;
            let sites = crate::gossip::agent_sites(&state);
            let seeds: BTreeMap<String, _> = sites
                .iter()
                .filter(|site| !meshes.contains_key(*site))
                .map(|site| {
                    let seeds = crate::gossip::site_seeds(&state, site, self.template.node_id);
                    (site.clone(), seeds)
                })
                .collect();
            (sites, seeds)
        };
        let gone: Vec<String> = meshes
            .keys()
            .filter(|site| !sites.contains(*site))
            .cloned()
            .collect();
        let changed = !gone.is_empty() || !seeds.is_empty();
        for site in gone {
            watches.remove(&site);
            if let Some(mesh) = meshes.remove(&site) {
                info!(site = %site, "left the site's gossip mesh: it has no agents left");
                mesh.shutdown().await;
            }
        }
        for (site, seeds) in seeds {
            let config = MemberConfig {
                scope: site.clone(),
                seeds,
                ..self.template.clone()
            };
            match Mesh::start_on(&self.socket, config).await {
                Ok(mesh) => {
                    mesh.leave_member_gauge();
                    publish(&mesh, &self.endpoints).await;
                    watches.insert(site.clone(), mesh.watch());
                    meshes.insert(site, mesh);
                }
                Err(e) => warn!(site = %site, error = %e, "cannot join the site's gossip mesh"),
            }
        }
        changed
    }

    /// Sends the union of every mesh's members, and counts it in the member gauge.
    fn publish_union(&mut self, watches: &mut BTreeMap<String, watch::Receiver<Vec<Member>>>) {
        // Read every list in place (each member is cloned once, into the union).
        let union = {
            let primary = self.primary.borrow_and_update();
            let sites: Vec<_> = watches
                .values_mut()
                .map(|watch| watch.borrow_and_update())
                .collect();
            crate::gossip::union(
                std::iter::once(primary.as_slice()).chain(sites.iter().map(|s| s.as_slice())),
            )
        };
        self.socket.metrics().set_members(&union);
        self.union.send_if_modified(|current| {
            if *current == union {
                return false;
            }
            *current = union;
            true
        });
    }
}
