//! rustls configurations: mutual TLS inside the cluster, and CA pinning for joins.
//!
//! - Servers present `[node cert, CA cert]`, and ask for (but do not require) a client
//!   certificate: the join ALPN must admit clients that have none yet. Endpoint admission then
//!   requires a certificate of the right role for every other ALPN.
//! - Cluster clients verify the server against the cluster CA and the name
//!   [`CONTROL_SERVER_NAME`](crate::identity::CONTROL_SERVER_NAME), which only control
//!   certificates carry.
//! - Joining clients have no CA yet: they verify that the server's chain contains the CA whose
//!   SHA-256 the token pins, and then verify the server certificate against that CA.
//! - Revocation is by certificate serial, checked on both sides after the chain verifies, with
//!   the serial's binding to the key ([`SerialBinding`]); control nodes also check, at admission,
//!   that the certificate is one the cluster recorded ([`KnownCertificates`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::ca::Credentials;
use crate::current::CurrentCredentials;
use warren_api::NodeId;

use crate::identity::{CertRole, PeerIdentity, SerialBinding, fingerprint, parse_identity};

/// The crypto provider Warren uses everywhere (ring; see DEPENDENCIES.md on mixing providers).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Call once at start in binaries; harmless
/// if already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a process trusts beyond the CA signature: the serials revoked, and — on control nodes,
/// once the cluster state is known — the certificates the cluster recorded when it issued them
/// ([`KnownCertificates`]). Shared by every verifier and admission check of a process; the
/// control plane feeds it from the replicated state.
#[derive(Clone, Debug, Default)]
pub struct TrustList(Arc<RwLock<Trust>>);

#[derive(Debug, Default)]
struct Trust {
    revoked: HashSet<String>,
    known: Option<KnownCertificates>,
    /// Bumped by every change that takes effect ([`TrustList::version`]).
    version: u64,
}

/// The certificates a cluster recorded when its CA issued them: by serial, the identity each was
/// issued to. A certificate the CA signed but the cluster never recorded — made with a CA key
/// taken from a removed control node's disk — is not among them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownCertificates {
    by_serial: HashMap<String, (CertRole, String)>,
    admins_recorded: bool,
}

impl KnownCertificates {
    /// Records a node certificate (control or agent).
    pub fn add_node(&mut self, serial: impl Into<String>, role: CertRole, node_id: NodeId) {
        self.by_serial
            .insert(serial.into(), (role, format!("{:016x}", node_id.0)));
    }

    /// Notes that this cluster records admin certificates, so an unrecorded one is refused
    /// (even when every recorded one is revoked).
    pub fn note_admins_recorded(&mut self) {
        self.admins_recorded = true;
    }

    /// Records an admin certificate.
    pub fn add_admin(&mut self, serial: impl Into<String>, name: impl Into<String>) {
        self.admins_recorded = true;
        self.by_serial
            .insert(serial.into(), (CertRole::Admin, name.into()));
    }

    /// Whether `identity` is a certificate the cluster recorded for that very identity. Admin
    /// certificates are all accepted while no admin is recorded at all: a cluster made before
    /// admin certificates were recorded would otherwise lock its operators out.
    ///
    /// # Errors
    /// Why not, in words.
    pub fn check(&self, identity: &PeerIdentity) -> Result<(), String> {
        let subject = match identity.role {
            CertRole::Admin => identity.admin_name.clone().unwrap_or_default(),
            CertRole::Control | CertRole::Agent => identity
                .node_id
                .map(|id| format!("{:016x}", id.0))
                .unwrap_or_default(),
        };
        match self.by_serial.get(&identity.serial) {
            Some((role, recorded)) if *role == identity.role && *recorded == subject => Ok(()),
            Some((role, recorded)) => Err(format!(
                "certificate {} was issued to {role} {recorded}, not {} {subject}",
                identity.serial, identity.role
            )),
            None if identity.role == CertRole::Admin && !self.admins_recorded => Ok(()),
            None => Err(format!(
                "certificate {} ({} {subject}) is not one this cluster issued",
                identity.serial, identity.role
            )),
        }
    }
}

impl TrustList {
    /// Revokes a serial (lowercase hex, as in [`crate::PeerIdentity::serial`]).
    pub fn revoke(&self, serial: impl Into<String>) {
        let mut trust = self.write();
        if trust.revoked.insert(serial.into()) {
            trust.version += 1;
        }
    }

    /// Replaces the whole set of revoked serials.
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) {
        let serials: HashSet<String> = serials.into_iter().collect();
        let mut trust = self.write();
        if trust.revoked != serials {
            trust.revoked = serials;
            trust.version += 1;
        }
    }

    /// Replaces the recorded certificates; `None` checks none (a node that does not know the
    /// cluster's state yet, an agent, a test).
    pub fn replace_known(&self, known: Option<KnownCertificates>) {
        let mut trust = self.write();
        if trust.known != known {
            trust.known = known;
            trust.version += 1;
        }
    }

    /// A number that changes whenever what this list accepts does: a check that passed at one
    /// version holds while the version stays (the API re-checks a kept-alive connection's
    /// certificate only then).
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Whether a serial is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.read().revoked.contains(serial)
    }

    /// Whether `identity` is recorded (always, while no recorded set is known).
    ///
    /// # Errors
    /// Why it is not, in words.
    pub fn check_known(&self, identity: &PeerIdentity) -> Result<(), String> {
        match &self.read().known {
            Some(known) => known.check(identity),
            None => Ok(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Trust> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Trust> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The TLS-level check, on both sides: not revoked, and a key-bound serial that matches
    /// the key ([`SerialBinding`]; a mismatch is a certificate forged with a copied serial).
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let identity = parse_identity(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        if self.is_revoked(&identity.serial) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        if identity.binding == SerialBinding::Mismatch {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(())
    }
}

pub(crate) fn roots_with(
    ca: &CertificateDer<'static>,
) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

fn private_key(creds: &Credentials) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(creds.key_pkcs8_der().to_vec()))
}

fn chain(creds: &Credentials) -> Vec<CertificateDer<'static>> {
    vec![creds.cert_der().clone(), creds.ca_cert_der().clone()]
}

/// The signature checks of a verifier that leaves them to the one it wraps (`self.$inner`):
/// the verifiers here differ only in which certificate they accept, never in how a handshake
/// signature is checked.
macro_rules! delegate_signature_checks {
    ($inner:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$inner.supported_verify_schemes()
        }
    };
}

#[derive(Debug)]
pub(crate) struct ClusterClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) revocations: TrustList,
    /// How long past its expiry a client certificate still passes TLS (admission then lets it
    /// only renew itself); `None`: an expired certificate fails.
    pub(crate) expired_grace: Option<std::time::Duration>,
    /// Whether the client must present a certificate: the admin API has no anonymous path,
    /// while the QUIC server's join ALPN admits clients that have none yet.
    pub(crate) mandatory: bool,
}

impl ClusterClientVerifier {
    /// The inner verification, at the certificate's last valid second when it failed only
    /// because the certificate expired within the grace.
    fn verify_maybe_expired(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let error = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(verified) => return Ok(verified),
            Err(error) => error,
        };
        let expired = matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        );
        let (Some(grace), true) = (self.expired_grace, expired) else {
            return Err(error);
        };
        let Ok(identity) = parse_identity(end_entity) else {
            return Err(error);
        };
        let not_after = u64::try_from(identity.not_after_unix).unwrap_or(0);
        if now.as_secs().saturating_sub(not_after) > grace.as_secs() {
            return Err(error);
        }
        let last_valid = UnixTime::since_unix_epoch(std::time::Duration::from_secs(not_after));
        self.inner
            .verify_client_cert(end_entity, intermediates, last_valid)
            .map_err(|_| error)
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.verify_maybe_expired(end_entity, intermediates, now)?;
        self.revocations.check(end_entity)?;
        Ok(verified)
    }

    delegate_signature_checks!(inner);
}

#[derive(Debug)]
struct ClusterServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revocations: TrustList,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        self.revocations.check(end_entity)?;
        Ok(verified)
    }

    delegate_signature_checks!(inner);
}

/// Verifies a server for a node that has only a CA fingerprint (from its join token).
#[derive(Debug)]
struct PinnedCaVerifier {
    pinned: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| fingerprint(cert) == self.pinned)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let roots = roots_with(&ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server side of a cluster endpoint. A client certificate expired for less than
/// `expired_grace` passes TLS; admission lets such a client only renew it.
pub(crate) fn server_config(
    current: &CurrentCredentials,
    revocations: &TrustList,
    alpns: Vec<Vec<u8>>,
    expired_grace: std::time::Duration,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(
        roots_with(current.get().ca_cert_der())?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = ClusterClientVerifier {
        inner,
        revocations: revocations.clone(),
        expired_grace: Some(expired_grace),
        mandatory: false,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(current.clone()));
    config.alpn_protocols = alpns;
    // No session resumption: a resumed TLS 1.3 session skips certificate verification, so a
    // certificate revoked after the first connection would get back in. A full handshake costs
    // about a millisecond on our hardware; it runs once per connection.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A cluster client (mutual TLS) speaking one ALPN, presenting the current credentials.
pub(crate) fn client_config(
    current: &CurrentCredentials,
    revocations: &TrustList,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(
        roots_with(current.get().ca_cert_der())?,
        provider.clone(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = ClusterServerVerifier {
        inner,
        revocations: revocations.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(current.clone()));
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A joining client: no certificate yet, server verified by the pinned CA fingerprint.
pub(crate) fn join_client_config(
    pinned: [u8; 32],
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        pinned,
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The admin API's server side: TLS 1.2/1.3, a client certificate from the cluster CA required
/// (and not expired), the node's current certificate presented.
pub(crate) fn api_server_config(
    current: &CurrentCredentials,
    revocations: &TrustList,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(
        roots_with(current.get().ca_cert_der())?,
        provider.clone(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = ClusterClientVerifier {
        inner,
        revocations: revocations.clone(),
        expired_grace: None,
        mandatory: true,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(current.clone()));
    // The API speaks HTTP/1.1 only: offering h2 made clients that prefer it (plain `curl`)
    // negotiate a protocol the server then does not speak.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The admin API's client side (the CLI): presents the admin certificate, verifies the server
/// as a control node of the cluster.
pub(crate) fn api_client_config(
    creds: &Credentials,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(
        roots_with(creds.ca_cert_der())?,
        provider.clone(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = ClusterServerVerifier {
        inner,
        revocations: TrustList::default(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain(creds), private_key(creds))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
