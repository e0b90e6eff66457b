//! Renewing node certificates: a node (agent or control) sends the CSR of a new key over the
//! `renew` ALPN, authenticated by the certificate it has — possibly expired, within the
//! transport's grace. The certificate is issued for the identity the node's record holds, and
//! recorded ([`Op::RenewCert`]) before it is handed out; the one it replaces stays accepted
//! until it expires.

use tracing::info;
use warren_api::NodeState;
use warren_api::clock::unix_now;
use warren_transport::identity::parse_identity;
use warren_transport::renew::RenewAuthority;
use warren_transport::{CertRole, CertSubject, PeerIdentity, Validity};

use super::Control;
use crate::command::{Op, Outcome};

impl RenewAuthority for Control {
    async fn renew(&self, peer: PeerIdentity, csr_der: Vec<u8>) -> Result<Vec<u8>, String> {
        let node_id = peer
            .node_id
            .ok_or("an admin certificate is not renewed here")?;
        {
            let state = self.read_stale().await;
            let node = state
                .nodes
                .get(&node_id)
                .ok_or_else(|| format!("node {node_id} is not registered"))?;
            if node.state == NodeState::Removed {
                return Err(format!("node {node_id} was removed from the cluster"));
            }
            if CertRole::from(node.role) != peer.role {
                return Err(format!("node {node_id} is not a {} node", peer.role));
            }
            let previous = state.previous_cert_serials.get(&node_id);
            let held = node.cert_serial.iter().chain(previous);
            if !held.into_iter().any(|serial| *serial == peer.serial) {
                return Err(format!(
                    "certificate {} is not node {node_id}'s",
                    peer.serial
                ));
            }
        }
        let ca = self.ca().await.map_err(|refused| refused.refusal.message)?;
        let subject = CertSubject::Node {
            node_id,
            role: peer.role,
        };
        let validity = Validity::starting_at(unix_now(), self.timeouts.cert_lifetime);
        let cert = ca
            .sign_csr(&csr_der, &subject, validity)
            .map_err(|e| format!("csr: {e}"))?;
        let serial = parse_identity(&cert).map_err(|e| e.to_string())?.serial;
        let op = Op::RenewCert {
            node: node_id,
            serial: serial.clone(),
        };
        match self.propose(op).await.map_err(|e| e.to_string())? {
            Outcome { result: Ok(_), .. } => {
                info!(node_id = %node_id, serial = %serial, "node certificate renewed");
                Ok(cert.to_vec())
            }
            Outcome {
                result: Err(rejection),
                ..
            } => Err(rejection.message),
        }
    }
}
