//! `init`: a new cluster with this node as its only member.

use std::path::Path;
use std::time::Duration;

use tracing::info;
use warren_api::{Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState};
use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME, unix_now, unix_now_ms};
use warren_transport::join::random_node_id;
use warren_transport::seal::SealKey;
use warren_transport::{CertRole, CertSubject, ClusterCa, Credentials, Validity};

use super::data_dir::save_cluster_keys;
use super::{
    ControlConfig, ControlNode, NewNode, NodeError, bind, bind_api, check_fresh, member_of,
    resolve_gossip, save_settings, settings_for,
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
        warren_api::validate_node_name(&new.name).map_err(|e| NodeError::Config(e.to_string()))?;
        warren_api::validate_site(&new.site).map_err(|e| NodeError::Config(e.to_string()))?;
        check_fresh(&new.data_dir)?;
        let ca = ClusterCa::generate(&new.name, Validity::starting_at(unix_now(), CA_LIFETIME))?;
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
        // Bind first so that port 0 resolves to a real port before it is recorded.
        let endpoint = bind(&new.quic_listen, &creds, &config)?;
        let api = bind_api(new.api_listen, &endpoint).await?;
        let mut new = new;
        new.quic_listen = endpoint.0.local_addr();
        new.api_listen = api.local_addr();
        resolve_gossip(&mut new).await?;
        let settings = settings_for(&new, node_id);
        creds.save(&new.data_dir)?;
        save_cluster_keys(&new.data_dir, &cluster_keys)?;
        let mut node = Self::start(
            &new.data_dir,
            settings.clone(),
            Some(cluster_keys.clone()),
            config,
            endpoint,
            api,
        )
        .await?;
        let mut members = std::collections::BTreeMap::new();
        members.insert(node_id.0, member_of(&settings));
        let initialized = node.control.raft().initialize(members).await;
        initialized.map_err(|_| unfinished_init(&new.data_dir))?;
        node.control
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .current_leader(node_id.0, "init: self elected")
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let init = Op::InitCluster {
            name: new.name.clone(),
            ca_cert_der: ca.cert_der().to_vec(),
            ca_key_sealed: ca.sealed_key(cluster_keys.root()),
        };
        node.control.propose(init).await?;
        // The first admin certificate is recorded like any other, so it can be listed and
        // revoked (`warren admin ls|revoke`).
        node.control
            .propose(Op::AddAdmin(crate::state::AdminCert::issued_now(
                admin.identity(),
                "admin",
                unix_now_ms(),
            )))
            .await?;
        let me = Node {
            id: node_id,
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
        };
        node.control.propose(Op::RegisterNode(me)).await?;
        // Only now is the data dir a complete node: `run` can restart it.
        save_settings(&new.data_dir, &settings)?;
        node.start_mesh().await;
        info!(node_id = %node_id, "cluster initialised");
        Ok((
            node,
            InitOutput {
                admin,
                fingerprint: ca.fingerprint(),
            },
        ))
    }
}
