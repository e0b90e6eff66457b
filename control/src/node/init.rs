//! `init`: a new cluster with this node as its only member.

use std::path::Path;
use std::time::Duration;

use tracing::info;
use warren_api::clock::{unix_now, unix_now_ms};
use warren_api::{Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState, OverlayRange};
use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
use warren_transport::join::random_node_id;
use warren_transport::seal::SealKey;
use warren_transport::{CertRole, CertSubject, ClusterCa, Credentials, Validity};

use super::data_dir::save_cluster_keys;
use super::{
    ControlConfig, ControlNode, NewNode, NodeError, NodeSettings, bind, bind_api, check_fresh,
    member_of, resolve_gossip, save_settings, settings_for,
};
use crate::command::Op;
use crate::keys::ClusterKeys;
use crate::store;

/// What `init` hands back besides the running node: the operator's admin credentials.
#[derive(Debug)]
pub struct InitOutput {
    /// An admin certificate for the CLI (written into admin.conf by the caller).
    pub admin: Credentials,
    /// The cluster CA fingerprint.
    pub fingerprint: [u8; 32],
}

/// openraft refuses to initialise a Raft store that already holds state; its own text prints
/// its types' Debug output, so say what it means.
fn unfinished_init(dir: &Path) -> NodeError {
    NodeError::DataDir(format!(
        "{} holds the Raft state of an earlier, unfinished init; remove it and try again",
        dir.join(store::RAFT_DIR).display()
    ))
}

/// What a new cluster starts from: its CA and cluster key, and the first node's id and
/// credentials and the operator's.
struct Founding {
    ca: ClusterCa,
    cluster_keys: ClusterKeys,
    node_id: NodeId,
    creds: Credentials,
    admin: Credentials,
}

impl Founding {
    /// Generates the CA (named after the first node) and the cluster key, and issues the first
    /// node's and the first admin's certificates.
    fn generate(name: &str, config: &ControlConfig) -> Result<Self, NodeError> {
        let ca = ClusterCa::generate(name, Validity::starting_at(unix_now(), CA_LIFETIME))?;
        let cluster_keys = ClusterKeys::first(SealKey::generate());
        let node_id = NodeId(random_node_id());
        let creds = ca.issue_credentials(
            &CertSubject::Node {
                node_id,
                role: CertRole::Control,
            },
            Validity::starting_at(unix_now(), config.cert_lifetime),
        )?;
        let admin = ca.issue_credentials(
            &CertSubject::Admin {
                name: "admin".into(),
            },
            Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
        )?;
        Ok(Self {
            ca,
            cluster_keys,
            node_id,
            creds,
            admin,
        })
    }
}

impl ControlNode {
    /// Creates a new cluster with this node as its only member.
    ///
    /// # Errors
    /// [`NodeError`]; a data dir that already holds a node is refused.
    pub async fn init(
        new: NewNode,
        config: ControlConfig,
    ) -> Result<(Self, InitOutput), NodeError> {
        config.validate()?;
        warren_api::validate_node_name(&new.name)?;
        warren_api::validate_site(&new.site)?;
        check_fresh(&new.data_dir)?;
        let founding = Founding::generate(&new.name, &config)?;
        // Bind first so that port 0 resolves to a real port before it is recorded.
        let endpoint = bind(&new.quic_listen, &founding.creds, &config)?;
        let api = bind_api(new.api_listen, &endpoint).await?;
        let mut new = new;
        new.quic_listen = endpoint.0.local_addr();
        new.api_listen = api.local_addr();
        resolve_gossip(&mut new).await?;
        let settings = settings_for(&new, founding.node_id);
        founding.creds.save(&new.data_dir)?;
        save_cluster_keys(&new.data_dir, &founding.cluster_keys)?;
        let keys = Some(founding.cluster_keys.clone());
        let mut node =
            Self::start(&new.data_dir, settings.clone(), keys, config, endpoint, api).await?;
        node.elect_self(&settings, &new.data_dir).await?;
        node.record_founding(&founding, &settings, new.overlay_range)
            .await?;
        // Only now is the data dir a complete node: `run` can restart it.
        save_settings(&new.data_dir, &settings)?;
        node.start_mesh().await;
        info!(node_id = %founding.node_id, "cluster initialised");
        Ok((
            node,
            InitOutput {
                fingerprint: founding.ca.fingerprint(),
                admin: founding.admin,
            },
        ))
    }

    /// Makes this node the only member of a new Raft group and waits until it leads.
    async fn elect_self(&self, settings: &NodeSettings, data_dir: &Path) -> Result<(), NodeError> {
        let node_id = settings.node_id;
        let mut members = std::collections::BTreeMap::new();
        members.insert(node_id.0, member_of(settings));
        let initialized = self.control.raft().initialize(members).await;
        initialized.map_err(|_| unfinished_init(data_dir))?;
        self.control
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .current_leader(node_id.0, "init: self elected")
            .await
            .map_err(|e| NodeError::RaftWait(Box::new(e)))?;
        Ok(())
    }

    /// The first entries: the cluster (its CA, the CA key sealed with the cluster key), its
    /// overlay range, the first admin certificate, and this node.
    async fn record_founding(
        &self,
        founding: &Founding,
        settings: &NodeSettings,
        overlay_range: OverlayRange,
    ) -> Result<(), NodeError> {
        let init = Op::InitCluster {
            name: settings.name.clone(),
            ca_cert_der: founding.ca.cert_der().to_vec(),
            ca_key_sealed: founding.ca.sealed_key(founding.cluster_keys.root()),
        };
        self.control.propose(init).await?;
        // Before the first node registers: its slot comes from this range.
        self.control
            .propose(Op::SetOverlayRange(overlay_range))
            .await?;
        // The first admin certificate is recorded like any other, so it can be listed and
        // revoked (`warren admin ls|revoke`).
        self.control
            .propose(Op::AddAdmin(crate::state::AdminCert::issued_now(
                founding.admin.identity(),
                "admin",
                unix_now_ms(),
            )))
            .await?;
        let me = first_node(settings, &founding.creds);
        self.control.propose(Op::RegisterNode(me)).await?;
        Ok(())
    }
}

/// The registry entry of a cluster's first node: a ready, active control node.
fn first_node(settings: &NodeSettings, creds: &Credentials) -> Node {
    Node {
        id: settings.node_id,
        name: settings.name.clone(),
        role: NodeRole::Control,
        site: settings.site.clone(),
        labels: Default::default(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: Some(creds.identity().serial.clone()),
        addresses: NodeAddresses {
            quic: Some(settings.advertise_quic.clone()),
            api: Some(settings.advertise_api.clone()),
            gossip: settings.advertise_gossip.map(|a| a.to_string()),
            metrics: settings.metrics_listen.map(|a| a.to_string()),
            dns: None,
        },
        joined_at_ms: unix_now_ms(),
    }
}
