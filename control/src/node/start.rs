//! Starting a control node: `run` from its data dir, and the start `init`, `join` and `run`
//! share: storage and Raft, the API, metrics, and the background tasks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use warren_transport::https::ApiListener;
use warren_transport::node_metrics::{CertExpiry, NodeLabels};
use warren_transport::{
    Credentials, Endpoint, EndpointOptions, MemberCertificates, TransportMetrics, TrustList,
};

use super::data_dir::{
    CLUSTER_KEY_FILE, SOCKET_FILE, keep_private, load_cluster_keys, load_settings,
};
use super::{ControlConfig, ControlNode, NodeError, NodeSettings, io};
use crate::control::{Control, ControlParts};
use crate::http::Api;
use crate::keys::ClusterKeys;
use crate::metrics::ControlMetrics;
use crate::network::Peers;
use crate::store;
use crate::types::Raft;

/// The longest wait between two attempts to renew a certificate that is due.
const MAX_RENEW_RETRY: Duration = Duration::from_secs(30);

impl ControlNode {
    /// Restarts a control node from its data dir.
    ///
    /// # Errors
    /// [`NodeError`] when the data dir is incomplete or corrupt.
    pub async fn run(data_dir: &Path, config: ControlConfig) -> Result<Self, NodeError> {
        config.validate()?;
        let settings = load_settings(data_dir)?;
        keep_private(data_dir)?;
        let creds = Credentials::load(data_dir)?;
        let cluster_keys = load_cluster_keys(data_dir)?;
        let endpoint = bind(&settings.quic_listen, &creds, &config)?;
        let api = bind_api(settings.api_listen, &endpoint).await?;
        let mut node = Self::start(data_dir, settings, cluster_keys, config, endpoint, api).await?;
        node.start_mesh().await;
        Ok(node)
    }

    /// Starts a node on its bound listeners: storage and Raft, the API and metrics listeners,
    /// then the background tasks.
    pub(super) async fn start(
        data_dir: &Path,
        settings: NodeSettings,
        cluster_keys: Option<ClusterKeys>,
        config: ControlConfig,
        (endpoint, revocations): (Arc<Endpoint>, TrustList),
        api_listener: ApiListener,
    ) -> Result<Self, NodeError> {
        let tasks = TaskTracker::new();
        let control_metrics = control_metrics(&settings, &endpoint);
        let opened = open_control(
            data_dir,
            &settings,
            cluster_keys,
            &config,
            &endpoint,
            &tasks,
            &control_metrics,
        )
        .await?;
        let OpenedControl {
            control,
            state,
            applied,
        } = opened;
        let member_certs = MemberCertificates::new(
            endpoint.credentials().get().ca_cert_der(),
            &revocations,
            config.transport.renew_grace,
        )
        .map_err(|e| NodeError::CaCertificate(Box::new(e)))?;
        let cancel = CancellationToken::new();
        control_metrics.spawn_leader_change_count(&control, cancel.clone(), &tasks);
        crate::timers::spawn(
            control.clone(),
            config.raft_timers(),
            cancel.clone(),
            &tasks,
        );
        crate::quorum::spawn(control.clone(), cancel.clone(), &tasks);
        let api_addr = api_listener.local_addr();
        let api = Api::new(
            control.clone(),
            control_metrics.clone(),
            revocations.clone(),
        );
        let socket = data_dir.join(SOCKET_FILE);
        serve_api(
            api,
            api_listener,
            config.api_limits.clone(),
            &socket,
            &cancel,
            &tasks,
        )
        .await?;
        let metrics_addr = match settings.metrics_listen {
            Some(addr) => Some(
                serve_metrics(addr, data_dir, &control_metrics, &control, &cancel, &tasks).await?,
            ),
            None => None,
        };
        let advertised =
            super::addresses::advertised_metrics(metrics_addr, &settings.advertise_quic);
        tasks.spawn(super::addresses::keep_metrics_registered(
            control.clone(),
            advertised,
            cancel.clone(),
        ));
        let node = Self {
            control,
            metrics: endpoint.metrics().clone(),
            endpoint,
            settings,
            data_dir: data_dir.to_owned(),
            cancel,
            tasks,
            control_metrics,
            api_addr,
            metrics_addr,
            mesh_timers: config.mesh_timers.clone(),
            member_certs,
            gossip: None,
        };
        node.spawn_tasks(state, applied, revocations, config.unreachable_after);
        Ok(node)
    }

    /// The tasks a running node keeps: its trust list fed from the state, the cluster keys
    /// followed, connections accepted, the leader's duties, and its certificate renewed.
    fn spawn_tasks(
        &self,
        state: Arc<tokio::sync::RwLock<crate::state::ClusterState>>,
        applied: tokio::sync::watch::Receiver<warren_api::Revision>,
        revocations: TrustList,
        unreachable_after: Duration,
    ) {
        self.spawn_revocation_feed(state, applied.clone(), revocations);
        self.tasks.spawn(crate::keys::follow(
            self.control.clone(),
            applied,
            self.cancel.clone(),
        ));
        crate::accept::spawn(
            self.endpoint.clone(),
            self.control.clone(),
            self.metrics.clone(),
            self.cancel.clone(),
            self.tasks.clone(),
        );
        self.spawn_leader_duties(unreachable_after);
        self.spawn_renewal();
    }

    /// Keeps the endpoint's and the API's trust list (revoked serials, recorded certificates)
    /// equal to the replicated state, and notices this node's own removal in the state it
    /// applies.
    fn spawn_revocation_feed(
        &self,
        state: Arc<tokio::sync::RwLock<crate::state::ClusterState>>,
        mut applied: tokio::sync::watch::Receiver<warren_api::Revision>,
        revocations: TrustList,
    ) {
        let cancel = self.cancel.clone();
        let control = self.control.clone();
        let me = self.settings.node_id;
        self.tasks.spawn(async move {
            let mut seen_epoch = None;
            loop {
                let (trust, removed) = {
                    let state = state.read().await;
                    let removed = state
                        .nodes
                        .get(&me)
                        .is_some_and(|node| node.state == warren_api::NodeState::Removed);
                    // Rebuilt only when an entry touched certificates: not at every write.
                    let trust = (seen_epoch != Some(state.certs_epoch.0)).then(|| {
                        seen_epoch = Some(state.certs_epoch.0);
                        (state.revoked_serials.clone(), state.known_certificates())
                    });
                    (trust, removed)
                };
                if let Some((serials, known)) = trust {
                    revocations.replace(serials);
                    revocations.replace_known(known);
                }
                if removed {
                    control.note_removed("its removal reached this node's log".into());
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = applied.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// Keeps this node's certificate renewed ([`warren_transport::renew::keep_renewed`]):
    /// asked of the other control members first (a node whose certificate expired while it was
    /// cut off cannot write through its own Raft link), then of itself.
    fn spawn_renewal(&self) {
        let control = self.control.clone();
        let me = self.settings.node_id.0;
        let own = self.settings.advertise_quic.clone();
        let addrs = move || {
            let metrics = control.raft().metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let mut addrs: Vec<SocketAddr> = membership
                .nodes()
                .filter(|(id, _)| **id != me)
                .filter_map(|(_, member)| member.quic_addr.parse().ok())
                .collect();
            addrs.extend(own.parse::<SocketAddr>().ok());
            std::future::ready(addrs)
        };
        self.tasks.spawn(warren_transport::renew::keep_renewed(
            self.endpoint.clone(),
            self.data_dir.clone(),
            addrs,
            MAX_RENEW_RETRY,
            self.cancel.clone(),
        ));
    }
}

/// The node's metrics, labelled with its name, id and site, with the endpoint's (transport,
/// certificate expiry) in the same registry.
fn control_metrics(settings: &NodeSettings, endpoint: &Endpoint) -> ControlMetrics {
    let metrics = ControlMetrics::new(&NodeLabels {
        name: settings.name.clone(),
        node_id: settings.node_id,
        site: settings.site.clone(),
    });
    // The endpoint counts from its start; its metrics are served with the control node's.
    if let Err(e) = endpoint.metrics().register_into(metrics.registry()) {
        warn!(error = %e, "transport metrics not registered");
    }
    // Read at each scrape, so a renewal shows at once.
    if let Err(e) =
        CertExpiry::new(endpoint.credentials().clone(), true).register_into(metrics.registry())
    {
        warn!(error = %e, "certificate expiry metrics not registered");
    }
    metrics
}

/// Binds the API's TLS listener.
/// Binds the API listener, presenting the QUIC endpoint's credentials (a renewal covers both)
/// and checking clients against its trust list.
pub(super) async fn bind_api(
    addr: SocketAddr,
    (endpoint, trust): &(Arc<Endpoint>, TrustList),
) -> Result<ApiListener, NodeError> {
    ApiListener::bind_current(addr, endpoint.credentials(), trust)
        .await
        .map_err(NodeError::from)
}

/// Binds the QUIC endpoint with a fresh revocation list.
pub(super) fn bind(
    addr: &SocketAddr,
    creds: &Credentials,
    config: &ControlConfig,
) -> Result<(Arc<Endpoint>, TrustList), NodeError> {
    let revocations = TrustList::default();
    let options = EndpointOptions {
        config: config.transport.clone(),
        metrics: TransportMetrics::unregistered(),
        revocations: revocations.clone(),
        fault: None,
    };
    Ok((
        Arc::new(Endpoint::bind(*addr, creds, options)?),
        revocations,
    ))
}

/// The shared handle of a started node, with the state and applied-revision watch its store
/// hands out.
struct OpenedControl {
    control: Arc<Control>,
    state: Arc<tokio::sync::RwLock<crate::state::ClusterState>>,
    applied: tokio::sync::watch::Receiver<warren_api::Revision>,
}

/// Opens the Raft store in `data_dir`, starts Raft over the peer layer, and wraps both in the
/// shared [`Control`] handle.
async fn open_control(
    data_dir: &Path,
    settings: &NodeSettings,
    cluster_keys: Option<ClusterKeys>,
    config: &ControlConfig,
    endpoint: &Arc<Endpoint>,
    tasks: &TaskTracker,
    metrics: &ControlMetrics,
) -> Result<OpenedControl, NodeError> {
    let (log_store, mut sm_store) = store::open(data_dir, config.store)?;
    sm_store.time_applies(metrics.raft_apply_duration_seconds().clone());
    let state = sm_store.state();
    let applied = sm_store.watch_applied();
    let peers = Peers::new(endpoint.clone(), tasks.clone(), config.peer_timers());
    let raft_config = config.raft_config()?;
    let raft = Raft::new(
        settings.node_id.0,
        Arc::new(raft_config),
        peers.clone(),
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| NodeError::RaftStart(Box::new(e)))?;
    let control = Arc::new(Control::new(ControlParts {
        id: settings.node_id.0,
        raft,
        state: state.clone(),
        applied: applied.clone(),
        peers,
        cluster_keys,
        keys_file: data_dir.join(CLUSTER_KEY_FILE),
        timeouts: config.timeouts(),
        metrics: metrics.clone(),
        fingerprint: endpoint.cluster_fingerprint(),
    }));
    Ok(OpenedControl {
        control,
        state,
        applied,
    })
}

/// Serves the API on its TLS listener and on the Unix socket at `socket`.
async fn serve_api(
    api: Api,
    listener: ApiListener,
    limits: crate::http::ApiLimits,
    socket: &Path,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), NodeError> {
    tasks.spawn(
        api.clone()
            .serve_tls(listener, limits, cancel.clone(), tasks.clone()),
    );
    api.serve_unix(socket, cancel.clone(), tasks.clone())
        .await
        .map_err(io("bind unix socket", socket))
}

/// Serves `/metrics`, `/health` and `/ready` on `addr`; returns the bound address.
async fn serve_metrics(
    addr: SocketAddr,
    data_dir: &Path,
    metrics: &ControlMetrics,
    control: &Arc<Control>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<SocketAddr, NodeError> {
    crate::metrics::serve(
        addr,
        metrics.clone(),
        control.clone(),
        cancel.clone(),
        tasks.clone(),
    )
    .await
    .map_err(io("bind metrics listener", data_dir))
}
