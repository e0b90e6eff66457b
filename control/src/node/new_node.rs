//! [`NewNode`]: what `init` and `join` create a node with, the settings recorded from it, and
//! the gossip address it settles before they are recorded.

use std::net::SocketAddr;
use std::path::PathBuf;

use tracing::warn;
use warren_api::{NodeId, OverlayRange};

use super::{NodeError, NodeSettings, io};

/// What to create a node with (`init` and `join`).
#[derive(Clone, Debug)]
pub struct NewNode {
    /// Where its files go.
    pub data_dir: PathBuf,
    /// Node name.
    pub name: String,
    /// Site.
    pub site: String,
    /// QUIC listen address.
    pub quic_listen: SocketAddr,
    /// API listen address.
    pub api_listen: SocketAddr,
    /// Address others dial for QUIC; defaults to the bound QUIC address.
    pub advertise_quic: Option<String>,
    /// Address clients use for the API; defaults to the bound API address.
    pub advertise_api: Option<String>,
    /// Metrics listen address (`/metrics`, `/health`, `/ready`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the gossip mesh listens (UDP), if anywhere. Port 0 picks a free port.
    pub gossip_listen: Option<SocketAddr>,
    /// The gossip address peers use; defaults per [`crate::gossip::advertise_addr`].
    pub advertise_gossip: Option<SocketAddr>,
    /// The WireGuard overlay range a new cluster allocates node addresses from (`init` only;
    /// a joining node takes the cluster's).
    pub overlay_range: OverlayRange,
}

impl NewNode {
    /// A node on 127.0.0.1 with kernel-picked QUIC and API ports, advertising what it binds,
    /// with no metrics listener and no gossip: the control node of `warren dev` and
    /// `warren demo`, and of in-process tests. Set the other fields on the result for more.
    pub fn on_loopback(data_dir: impl Into<PathBuf>, name: &str, site: &str) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: data_dir.into(),
            name: name.to_owned(),
            site: site.to_owned(),
            quic_listen: any,
            api_listen: any,
            advertise_quic: None,
            advertise_api: None,
            metrics_listen: None,
            gossip_listen: None,
            advertise_gossip: None,
            overlay_range: OverlayRange::default(),
        }
    }
}

pub(super) fn settings_for(new: &NewNode, node_id: NodeId) -> NodeSettings {
    NodeSettings {
        node_id,
        name: new.name.clone(),
        site: new.site.clone(),
        quic_listen: new.quic_listen,
        api_listen: new.api_listen,
        advertise_quic: new
            .advertise_quic
            .clone()
            .unwrap_or_else(|| new.quic_listen.to_string()),
        advertise_api: new
            .advertise_api
            .clone()
            .unwrap_or_else(|| new.api_listen.to_string()),
        metrics_listen: new.metrics_listen,
        gossip_listen: new.gossip_listen,
        advertise_gossip: new.advertise_gossip,
    }
}

/// Fills in the gossip port (for port 0, by binding and letting go: the mesh binds it again
/// once the node has the cluster key) and the gossip address to advertise.
pub(super) async fn resolve_gossip(new: &mut NewNode) -> Result<(), NodeError> {
    let Some(mut listen) = new.gossip_listen else {
        new.advertise_gossip = None;
        return Ok(());
    };
    if listen.port() == 0 {
        listen = std::net::UdpSocket::bind(listen)
            .and_then(|socket| socket.local_addr())
            .map_err(io("bind gossip port", &new.data_dir))?;
        new.gossip_listen = Some(listen);
    }
    let advertise_quic = new
        .advertise_quic
        .clone()
        .unwrap_or_else(|| new.quic_listen.to_string());
    let mut advertise =
        crate::gossip::advertise_addr(listen, new.advertise_gossip, &advertise_quic);
    if advertise.is_none() {
        // The QUIC address is a host name: gossip on the address it resolves to.
        advertise = tokio::net::lookup_host(&advertise_quic)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|quic| SocketAddr::new(quic.ip(), listen.port()));
    }
    if advertise.is_none() {
        warn!(gossip = %listen, "no gossip address to advertise: other nodes will not find this node by gossip");
    }
    new.advertise_gossip = advertise;
    Ok(())
}
