//! [`Agent::serve`]: builds the parts of a running agent — the link to control (and its
//! certificate renewal), the metrics listener, discovery (gossip and DNS) and the reconciler —
//! starts their tasks, runs the reconcile loop, and stops them in order when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warren_api::NodeView;
use warren_api::wire::{Listener, MeshDeclaration};
use warren_mesh::MeshIdentity;
use warren_transport::endpoint::BindError;
use warren_transport::node_metrics::{CertExpiry, NodeLabels};
use warren_transport::{Endpoint, GossipSigner, MemberCertificates};

use super::reconcile::{Ended, Reconciler, Watches};
use super::{Agent, AgentError, RunEnd, VIEW_KEY};
use crate::cache::CacheError;
use crate::link::{Link, LinkEnd, LinkStatus};
use crate::listeners::{BindRetry, ListenerBook};
use crate::metrics::{AgentMetrics, MetricsSources};
use crate::report::Reporter;

/// How long the link gets to wind down when the agent stops.
const LINK_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Agent {
    /// Runs the link and the reconcile loop until `cancel` (workloads keep running) or the
    /// node's removal (workloads stopped, records and secrets wiped).
    ///
    /// # Errors
    /// [`AgentError::Bind`] when the QUIC endpoint cannot be created.
    ///
    /// # Cancel safety
    /// Cancel through `cancel`, not by dropping the future: a dropped future may leave a
    /// started workload unrecorded.
    pub async fn serve(self, cancel: CancellationToken) -> Result<RunEnd, AgentError> {
        let metrics = AgentMetrics::new(&NodeLabels {
            name: self.identity.name.clone(),
            node_id: self.identity.node_id,
            site: self.identity.site.clone(),
        });
        let reporter = Arc::new(Reporter::open(self.identity.node_id, self.cache.clone()));
        let link = self.start_link(&reporter, &metrics, &cancel)?;
        let tasks = TaskTracker::new();
        // The overlay (and its interface) ends with the agent, whichever way it returns.
        let _overlay_guard = self.start_overlay(&tasks, &link, &metrics, &cancel);
        let book = ListenerBook::new(metrics.listener_up.clone(), reporter.clone());
        self.start_metrics_listener(&tasks, &book, &link, (&reporter, &metrics), &cancel);
        self.warn_of_selfcheck();
        // Discovery ends with the agent, whichever way it returns.
        let discovery_cancel = cancel.child_token();
        let _discovery_guard = discovery_cancel.clone().drop_guard();
        let discovery = self.start_discovery(
            &tasks,
            (
                link.views.clone(),
                link.gossip_identity,
                link.mesh.subscribe(),
            ),
            &metrics,
            &book,
            link.gossip,
            discovery_cancel,
        );
        let mut reconciler = Reconciler::new(
            &self,
            cancel.child_token(),
            reporter,
            metrics,
            book.clone(),
            discovery.clone(),
        );
        reconciler.adopt_recorded().await;
        info!(node_id = %self.identity.node_id, "agent running");
        let watches = Watches {
            views: link.views,
            link_status: link.status,
            discovery,
            listeners: book.subscribe(),
        };
        let end = reconciler
            .reconcile_until_end(watches, link.task, &cancel)
            .await;
        link.cancel.cancel();
        let (sampler_cancel, sampler) = link.log_sampler;
        sampler_cancel.cancel();
        let _ = sampler.await;
        tasks.close();
        reconciler.stop_health_checks().await;
        Ok(self.shut_down(reconciler, end).await)
    }

    /// Opens the link to control from the cached view and starts it, with the renewal of its
    /// certificate, in tasks of their own.
    fn start_link(
        &self,
        reporter: &Arc<Reporter>,
        metrics: &AgentMetrics,
        cancel: &CancellationToken,
    ) -> Result<RunningLink, AgentError> {
        let cached = self.cached_view(metrics)?;
        let revision = cached.as_ref().map_or(0, |v| v.revision.0);
        let (views_tx, views) = watch::channel(cached);
        let (status_tx, status) = watch::channel(LinkStatus {
            revision,
            ..LinkStatus::default()
        });
        // Discovery publishes its gossip view here; the link reads it as a witness.
        let (gossip_tx, gossip_rx) = watch::channel(Vec::new());
        // The overlay declares its WireGuard identity here; the link carries it to control.
        let (mesh_tx, mesh_rx) = watch::channel(None);
        let (overlay_tx, overlay_rx) = watch::channel(Default::default());
        let link = self.link(
            (views_tx, status_tx, gossip_rx),
            (mesh_rx, overlay_rx),
            reporter,
            metrics,
        )?;
        let gossip_identity = self.gossip_identity(link.endpoint.credentials().clone())?;
        // Read at each scrape, so a renewal shows at once.
        CertExpiry::new(link.endpoint.credentials().clone(), false)
            .register_into(metrics.registry())
            .expect("the certificate expiry is registered once per registry");
        // The log files' sampling holds the cache open: `serve` stops it and waits for it
        // before returning, whichever way (a removed node's agent returns uncancelled, and the
        // next start must find the cache free).
        let sampler_cancel = cancel.child_token();
        let sampler = tokio::spawn(crate::logs::sample_until_cancelled(
            link.logs.clone(),
            self.cache.clone(),
            sampler_cancel.clone(),
        ));
        // Renewal ends with the agent, whichever way it returns.
        let renewal_cancel = cancel.child_token();
        let renewal_guard = renewal_cancel.clone().drop_guard();
        tokio::spawn(link.keep_renewed(self.data_dir.clone(), renewal_cancel));
        let link_cancel = cancel.child_token();
        let task = tokio::spawn(link.run(link_cancel.clone()));
        Ok(RunningLink {
            views,
            status,
            overlay: overlay_tx,
            mesh: mesh_tx,
            gossip: gossip_tx,
            gossip_identity,
            task,
            cancel: link_cancel,
            log_sampler: (sampler_cancel, sampler),
            _renewal_guard: renewal_guard,
        })
    }

    /// Runs the WireGuard overlay in a task of `tasks`, if configured; it ends with the agent.
    fn start_overlay(
        &self,
        tasks: &TaskTracker,
        link: &RunningLink,
        metrics: &AgentMetrics,
        cancel: &CancellationToken,
    ) -> Option<DropGuard> {
        let Some(settings) = self.options.overlay.clone() else {
            info!("WireGuard overlay off: not configured");
            return None;
        };
        let advertise_ip = self
            .options
            .discovery
            .gossip_advertise
            .or_else(|| self.identity.gossip.as_deref().and_then(|a| a.parse().ok()))
            .map(|addr: SocketAddr| addr.ip());
        let overlay = crate::overlay::Overlay {
            settings,
            dir: self.data_dir.join("wireguard"),
            advertise_ip,
            views: link.views.clone(),
            gossip: link.gossip.subscribe(),
            declaration: link.mesh.clone(),
            status: link.overlay.clone(),
            metrics: crate::overlay::OverlayMetrics::new(metrics.registry()),
        };
        let overlay_cancel = cancel.child_token();
        tasks.spawn(overlay.run(overlay_cancel.clone()));
        Some(overlay_cancel.drop_guard())
    }

    /// Serves `/metrics`, `/health` and `/ready` in a task of `tasks`, if configured.
    fn start_metrics_listener(
        &self,
        tasks: &TaskTracker,
        book: &ListenerBook,
        link: &RunningLink,
        (reporter, metrics): (&Arc<Reporter>, &AgentMetrics),
        cancel: &CancellationToken,
    ) {
        let Some(addr) = self.options.metrics_listen else {
            return;
        };
        let sources = MetricsSources {
            metrics: metrics.clone(),
            link: link.status.clone(),
            reporter: reporter.clone(),
            cache: self.cache.clone(),
            views: link.views.clone(),
        };
        book.expect(Listener::Metrics, addr);
        let cancel = cancel.child_token();
        tasks.spawn(serve_metrics(
            addr,
            sources,
            book.clone(),
            cancel,
            tasks.clone(),
        ));
    }

    /// After the reconcile loop: a removed node is done; otherwise the link gets
    /// [`LINK_SHUTDOWN_TIMEOUT`] to wind down and the last `status.json` is written, with the
    /// workloads left running.
    async fn shut_down(&self, mut reconciler: Reconciler, end: Ended) -> RunEnd {
        let end = match end {
            Ended::Removed(message) => return RunEnd::Removed(message),
            Ended::Stopped(link_task) => link_task,
        };
        if let Some(link_task) = end
            && !link_task.is_finished()
        {
            let _ = tokio::time::timeout(LINK_SHUTDOWN_TIMEOUT, link_task).await;
        }
        reconciler.record_stop().await;
        info!(node_id = %self.identity.node_id, "agent stopped; workloads keep running");
        RunEnd::Stopped
    }

    fn warn_of_selfcheck(&self) {
        if self.options.selfcheck_stop_on_disconnect {
            warn!(
                "self-check knob WARREN_SELFCHECK_STOP_ON_DISCONNECT is set: this agent stops its workloads when the link to control is lost — never use this in production"
            );
        }
    }

    /// The cached view to start from. A corrupt one is dropped (and counted): it can be fetched
    /// again, and the workload records (kept apart) still let the running workloads be
    /// adopted, so nothing restarts meanwhile.
    fn cached_view(&self, metrics: &AgentMetrics) -> Result<Option<Arc<NodeView>>, AgentError> {
        match self.cache.view() {
            Ok(view) => Ok(view.map(Arc::new)),
            Err(error @ CacheError::Corrupt { .. }) => {
                warn!(error = %error, "cached view dropped; fetching it again from control, running workloads are kept");
                metrics.cache_corrupt_total.inc();
                self.cache.remove(VIEW_KEY)?;
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The link to control, on a client endpoint of its own.
    fn link(
        &self,
        (views, status, gossip): LinkWatches,
        (mesh, overlay): (
            watch::Receiver<Option<MeshDeclaration>>,
            watch::Receiver<crate::overlay::OverlayStatus>,
        ),
        reporter: &Arc<Reporter>,
        metrics: &AgentMetrics,
    ) -> Result<Link, AgentError> {
        // No name lookups here: an offline box must reach the reconcile loop without waiting
        // on DNS. The link resolves the seeds itself, in its own task.
        let bind: SocketAddr = if self.first_seed_is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let mut endpoint_options = self.options.endpoint.clone();
        // The link pings control this often when idle, so that silence on the connection means
        // something to its failure detector (`link_failure`).
        endpoint_options.config.keep_alive_interval = endpoint_options
            .config
            .keep_alive_interval
            .min(crate::link_failure::LINK_KEEP_ALIVE);
        let endpoint = Endpoint::client(bind, &self.credentials, endpoint_options)?;
        Ok(Link {
            endpoint: Arc::new(endpoint),
            node_id: self.identity.node_id,
            cache: self.cache.clone(),
            seeds: self.identity.control_addrs.clone(),
            views,
            status,
            reporter: reporter.clone(),
            failures_total: metrics.link_failures_total.clone(),
            gossip,
            mesh,
            overlay,
            logs: Arc::default(),
        })
    }

    /// How the mesh signs this agent's gossip state (with the certificate the link presents,
    /// renewed in place) and checks other members' (against the cluster CA).
    fn gossip_identity(
        &self,
        current: warren_transport::current::CurrentCredentials,
    ) -> Result<MeshIdentity, AgentError> {
        let members = MemberCertificates::new(
            self.credentials.ca_cert_der(),
            &self.options.endpoint.revocations,
            self.options.endpoint.config.renew_grace,
        )
        .map_err(|e| AgentError::Bind(BindError::Tls(format!("cluster CA certificate: {e}"))))?;
        let signer = GossipSigner::new(current);
        let sign = signer.clone();
        Ok(MeshIdentity::new(
            move || signer.credential(),
            move |message| sign.sign(message),
            move |node, credential| members.public_key(node, credential),
        ))
    }

    /// Starts gossip and DNS (each only if configured) in a task of `tasks`; returns where
    /// they serve.
    fn start_discovery(
        &self,
        tasks: &TaskTracker,
        (views, gossip_identity, overlay): DiscoveryFeeds,
        metrics: &AgentMetrics,
        book: &ListenerBook,
        gossip: watch::Sender<Vec<warren_mesh::Member>>,
        cancel: CancellationToken,
    ) -> watch::Receiver<crate::discovery::DiscoveryStatus> {
        let options = crate::discovery::DiscoveryOptions {
            // Peers dial what was registered at join, unless told otherwise.
            gossip_advertise: self
                .options
                .discovery
                .gossip_advertise
                .or_else(|| self.identity.gossip.as_deref().and_then(|a| a.parse().ok())),
            ..self.options.discovery.clone()
        };
        let local = crate::discovery::Local {
            node_id: self.identity.node_id,
            name: self.identity.name.clone(),
            site: self.identity.site.clone(),
            cluster_fingerprint: self.identity.cluster_fingerprint.clone(),
            data_dir: self.data_dir.clone(),
            resolv_conf: self.options.process.resolv_conf.clone(),
            gossip_identity,
            overlay,
        };
        let (status_tx, status) = watch::channel(Default::default());
        tasks.spawn(crate::discovery::run(
            local,
            options,
            views,
            metrics.registry().clone(),
            crate::discovery::Reporting {
                status: status_tx,
                listeners: book.clone(),
                gossip,
            },
            cancel,
        ));
        status
    }

    /// Whether the first control seed is a literal IPv6 address (host names count as IPv4).
    fn first_seed_is_ipv6(&self) -> bool {
        self.identity
            .control_addrs
            .first()
            .and_then(|seed| seed.parse::<SocketAddr>().ok())
            .is_some_and(|addr| addr.is_ipv6())
    }
}

/// What discovery follows: the views, how gossip is signed, and the overlay's declarations.
type DiscoveryFeeds = (
    watch::Receiver<Option<Arc<NodeView>>>,
    MeshIdentity,
    watch::Receiver<Option<MeshDeclaration>>,
);

/// What the link publishes (views, its status) and reads (the gossip view).
type LinkWatches = (
    watch::Sender<Option<Arc<NodeView>>>,
    watch::Sender<LinkStatus>,
    watch::Receiver<Vec<warren_mesh::Member>>,
);

/// The running link, as the rest of the agent sees it.
struct RunningLink {
    /// The desired state, as the link receives it (the cached view until then).
    views: watch::Receiver<Option<Arc<NodeView>>>,
    /// Whether the link is up, and the revision it acked.
    status: watch::Receiver<LinkStatus>,
    /// What the overlay is doing.
    overlay: watch::Sender<crate::overlay::OverlayStatus>,
    /// Where the overlay declares this node's WireGuard identity for the link to send.
    mesh: watch::Sender<Option<MeshDeclaration>>,
    /// Where discovery publishes its gossip view (the link's witness of a silent control node).
    gossip: watch::Sender<Vec<warren_mesh::Member>>,
    /// How the mesh signs and checks gossip state, with the link's credentials.
    gossip_identity: MeshIdentity,
    task: JoinHandle<LinkEnd>,
    cancel: CancellationToken,
    /// The log files' sampling (it holds the cache), stopped and awaited when `serve` ends.
    log_sampler: (CancellationToken, JoinHandle<()>),
    /// Cancels the certificate renewal when the agent returns, whichever way.
    _renewal_guard: DropGuard,
}

/// Serves metrics at `addr` once it can be bound, retrying with backoff meanwhile (workloads
/// come before observability: the agent runs on, and the listener shows as down). The
/// listener's connections go in `tasks`.
async fn serve_metrics(
    addr: SocketAddr,
    sources: MetricsSources,
    book: ListenerBook,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let mut retry = BindRetry::new(Listener::Metrics);
    loop {
        let served = crate::metrics::serve(addr, sources.clone(), cancel.clone(), tasks.clone());
        let delay = match served.await {
            Ok(bound) => {
                info!(addr = %bound, "metrics served");
                retry.bound(&book, bound);
                return;
            }
            Err(error) => retry.failed(&book, addr, &error),
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
