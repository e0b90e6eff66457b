//! A node's certificate as its gossip identity: signing the node's own gossip state with the
//! certificate's key, and checking that a member's certificate is the cluster's certificate for
//! the node id it gossips as. The mesh crate, which knows nothing of certificates, calls these
//! through the closures it is given.

use std::sync::Arc;
use std::time::Duration;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use warren_api::NodeId;

use crate::current::CurrentCredentials;
use crate::identity::{CertRole, SerialBinding, parse_identity};
use crate::tls::{ClusterClientVerifier, TrustList, provider, roots_with};

/// Signs this node's gossip state with the key of the certificate it presents now.
#[derive(Clone, Debug)]
pub struct GossipSigner {
    current: CurrentCredentials,
    rng: SystemRandom,
}

impl GossipSigner {
    /// Signs with whatever `current` holds at each signature (a renewal takes effect at once).
    pub fn new(current: CurrentCredentials) -> Self {
        Self {
            current,
            rng: SystemRandom::new(),
        }
    }

    /// The certificate peers check the signatures against (DER).
    pub fn credential(&self) -> Vec<u8> {
        self.current.get().cert_der().to_vec()
    }

    /// An ECDSA P-256 SHA-256 signature of `message` in the 64-byte fixed form.
    ///
    /// # Errors
    /// The key is not a P-256 key (the cluster CA issues no other), in words.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let creds = self.current.get();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            creds.key_pkcs8_der(),
            &self.rng,
        )
        .map_err(|e| format!("node key is not a P-256 key: {e}"))?;
        key.sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| "signing failed".to_owned())
    }
}

/// Checks members' certificates: signed by the cluster CA (an expired one within the renewal
/// grace still counts: a node cut off past its expiry is still who it is), not revoked, issued
/// to that node id as a node, its serial bound to its key, and — on control nodes — one the
/// cluster recorded.
#[derive(Clone, Debug)]
pub struct MemberCertificates {
    verifier: Arc<ClusterClientVerifier>,
    trust: TrustList,
}

impl MemberCertificates {
    /// Trusts `ca`, with the process's trust list and the renewal grace.
    ///
    /// # Errors
    /// The CA certificate is not usable as a root.
    pub fn new(
        ca: &CertificateDer<'static>,
        trust: &TrustList,
        expired_grace: Duration,
    ) -> Result<Self, rustls::Error> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots_with(ca)?, provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Self {
            verifier: Arc::new(ClusterClientVerifier {
                inner,
                revocations: trust.clone(),
                expired_grace: Some(expired_grace),
                mandatory: false,
            }),
            trust: trust.clone(),
        })
    }

    /// The public key (the certificate's subject public key bits: for P-256, the uncompressed
    /// point) that `cert_der` proves is `node`'s.
    ///
    /// # Errors
    /// Why the certificate proves nothing about `node`, in words.
    pub fn public_key(&self, node: NodeId, cert_der: &[u8]) -> Result<Vec<u8>, String> {
        let cert = CertificateDer::from(cert_der.to_vec());
        self.verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(|e| format!("certificate refused: {e}"))?;
        let identity = parse_identity(cert_der).map_err(|e| e.to_string())?;
        if !matches!(identity.role, CertRole::Agent | CertRole::Control) {
            return Err(format!("an {} certificate is not a node's", identity.role));
        }
        if identity.node_id != Some(node) {
            return Err(format!(
                "certificate is for node {}, not {node}",
                identity
                    .node_id
                    .map_or_else(String::new, |id| id.to_string())
            ));
        }
        if identity.binding == SerialBinding::Mismatch {
            return Err("certificate serial does not match its key".to_owned());
        }
        self.trust.check_known(&identity)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
        Ok(parsed.public_key().subject_public_key.data.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;
    use crate::ca::{CertSubject, ClusterCa, Validity};
    use warren_api::clock::unix_now;

    fn new_ca() -> ClusterCa {
        ClusterCa::generate(
            "gossip-test",
            Validity::starting_at(unix_now(), Duration::from_secs(3600)),
        )
        .expect("CA")
    }

    #[test]
    fn a_node_signs_as_itself_and_no_one_else() {
        crate::install_crypto_provider();
        let ca = new_ca();
        let validity = Validity::starting_at(unix_now(), Duration::from_secs(600));
        let creds = |id: u64| {
            ca.issue_credentials(
                &CertSubject::Node {
                    node_id: NodeId(id),
                    role: CertRole::Agent,
                },
                validity,
            )
            .expect("issue")
        };
        let (a1, a2) = (creds(1), creds(2));
        let signer = GossipSigner::new(CurrentCredentials::new(&a1).expect("current"));
        let members = MemberCertificates::new(
            ca.cert_der(),
            &TrustList::default(),
            Duration::from_secs(60),
        )
        .expect("members");

        let key = members
            .public_key(NodeId(1), &signer.credential())
            .expect("a1's certificate is a1's");
        let signature = signer.sign(b"state").expect("sign");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key)
            .verify(b"state", &signature)
            .expect("the signature checks against the certificate's key");

        // a1's certificate does not make it a2, a2's does not lend a1 its key.
        let err = members
            .public_key(NodeId(2), &signer.credential())
            .unwrap_err();
        assert!(err.contains("not"), "{err}");
        let key2 = members
            .public_key(NodeId(2), a2.cert_der())
            .expect("a2's certificate");
        assert!(
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key2)
                .verify(b"state", &signature)
                .is_err()
        );

        // Another cluster's certificate for node 1 proves nothing here.
        let other = new_ca()
            .issue_credentials(
                &CertSubject::Node {
                    node_id: NodeId(1),
                    role: CertRole::Agent,
                },
                validity,
            )
            .expect("issue");
        let err = members.public_key(NodeId(1), other.cert_der()).unwrap_err();
        assert!(err.starts_with("certificate refused"), "{err}");

        // A revoked certificate neither.
        let trust = TrustList::default();
        trust.revoke(a1.identity().serial.clone());
        let members =
            MemberCertificates::new(ca.cert_der(), &trust, Duration::from_secs(60)).unwrap();
        assert!(members.public_key(NodeId(1), a1.cert_der()).is_err());
        assert!(members.public_key(NodeId(1), b"junk").is_err());
    }
}
