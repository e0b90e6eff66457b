//! The cluster certificate authority and node credentials.
//!
//! The CA is created once, at `control init`; its certificate's SHA-256 is the cluster's
//! fingerprint (pinned in join tokens). Its private key only touches disk sealed with
//! AES-256-GCM under a [`SealKey`] kept in a separate file (the Docker Swarm "unlock key" model:
//! moving the key file off the box locks the CA).
//!
//! Certificates are issued from CSRs: a joining node generates its key pair locally and only its
//! public key travels. The CA never takes names or roles from the CSR; it writes the subject it
//! decided on (see [`crate::identity`]).

use std::fs;
use std::path::Path;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use warren_api::NodeId;

use crate::fsutil::{to_pem, write_atomic};
use crate::identity::{
    CONTROL_SERVER_NAME, CertRole, IdentityError, PeerIdentity, admin_uri, fingerprint,
    key_bound_serial, node_uri, parse_identity,
};
use crate::seal::{SealError, SealKey, open, seal};

/// Default lifetime of the cluster CA certificate.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of node and admin certificates (Docker Swarm's default is 90 days).
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start this long before "now" so that small clock skew between boxes does not
/// make a fresh certificate "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(10 * 60);

const CA_KEY_PURPOSE: &str = "warren ca key v1";
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key.sealed";
const NODE_CERT_FILE: &str = "node.crt";
const NODE_KEY_FILE: &str = "node.key";
/// The files [`Credentials::save`] writes into a data dir.
pub const CREDENTIAL_FILES: [&str; 3] = [NODE_CERT_FILE, NODE_KEY_FILE, CA_CERT_FILE];

/// Why a CA or credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CSR does not parse or its signature is wrong.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    /// The sealed CA key could not be opened.
    #[error("cannot open sealed CA key: {0}")]
    Seal(#[from] SealError),
    /// A PEM or DER file does not hold what it should.
    #[error("invalid {what}: {detail}")]
    BadFile {
        /// Which file or object.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The certificate carries no usable identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// The window in which a certificate is valid, in unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First valid second.
    pub not_before_unix: i64,
    /// Last valid second.
    pub not_after_unix: i64,
}

impl Validity {
    /// Valid from a little before `now_unix` (see [`CLOCK_SKEW_ALLOWANCE`]) for `lifetime`.
    pub fn starting_at(now_unix: i64, lifetime: Duration) -> Self {
        let skew = CLOCK_SKEW_ALLOWANCE.as_secs() as i64;
        Self {
            not_before_unix: now_unix - skew,
            not_after_unix: now_unix.saturating_add(lifetime.as_secs() as i64),
        }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CaError> {
        let bad = |e: time::error::ComponentRange| CaError::BadFile {
            what: "validity",
            detail: e.to_string(),
        };
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(self.not_before_unix).map_err(bad)?;
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(self.not_after_unix).map_err(bad)?;
        Ok(())
    }
}

/// Who a certificate is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSubject {
    /// A control or agent node.
    Node {
        /// The node's id.
        node_id: NodeId,
        /// Control or agent.
        role: CertRole,
    },
    /// An operator with admin rights.
    Admin {
        /// A short name for audit logs.
        name: String,
    },
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the OS random source is available");
    bytes
}

/// A random positive 128-bit serial number (the CA's own certificate; issued certificates get
/// a key-bound one, [`key_bound_serial`]).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = random_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The cluster certificate authority: its certificate and signing key.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field(
                "fingerprint",
                &data_encoding::HEXLOWER.encode(&self.fingerprint),
            )
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA named after the cluster.
    ///
    /// # Errors
    /// [`CaError::Generate`] if key generation or signing fails.
    pub fn generate(cluster_name: &str, validity: Validity) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A random suffix keeps two clusters of the same name apart: a certificate from the
        // other one then fails as "unknown issuer", not as a confusing bad signature.
        let suffix: [u8; 4] = random_serial().to_bytes()[..4]
            .try_into()
            .expect("serial has 16 bytes");
        let suffix = data_encoding::HEXLOWER.encode(&suffix);
        dn.push(
            DnType::CommonName,
            format!("warren cluster CA {cluster_name} {suffix}"),
        );
        dn.push(DnType::OrganizationName, "warren");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity.apply(&mut params)?;
        let cert = params.self_signed(&key)?;
        Ok(Self::from_parts(cert.der().clone(), key))
    }

    fn from_parts(cert_der: CertificateDer<'static>, key: KeyPair) -> Self {
        let fingerprint = fingerprint(&cert_der);
        Self {
            cert_der,
            key,
            fingerprint,
        }
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: pinned in join tokens, and the cluster id.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Issues a certificate for a public key the caller already trusts to belong to `subject`.
    fn issue_for_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        subject: &CertSubject,
        validity: Validity,
    ) -> Result<CertificateDer<'static>, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let (uri, role) = match subject {
            CertSubject::Node { node_id, role } => (node_uri(*role, *node_id), *role),
            CertSubject::Admin { name } => (admin_uri(name), CertRole::Admin),
        };
        dn.push(DnType::CommonName, uri.clone());
        dn.push(DnType::OrganizationName, "warren");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role == CertRole::Control {
            params
                .subject_alt_names
                .push(SanType::DnsName(Ia5String::try_from(CONTROL_SERVER_NAME)?));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.serial_number = Some(SerialNumber::from_slice(&key_bound_serial(
            public_key.der_bytes(),
            random_bytes(),
        )));
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        Ok(params.signed_by(public_key, &issuer)?.der().clone())
    }

    /// Issues a certificate for the public key in `csr_der`. Only the key is taken from the CSR
    /// (after its self-signature is checked); names and roles come from `subject`.
    ///
    /// # Errors
    /// [`CaError::BadCsr`] for a malformed or badly signed CSR.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        subject: &CertSubject,
        validity: Validity,
    ) -> Result<CertificateDer<'static>, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(CaError::BadCsr)?;
        self.issue_for_key(&csr.public_key, subject, validity)
    }

    /// Generates a key pair here and issues a certificate for it (for the CA's own control node,
    /// admin certificates and tests; remote nodes use [`Self::sign_csr`]).
    ///
    /// # Errors
    /// [`CaError::Generate`] if generation or signing fails.
    pub fn issue_credentials(
        &self,
        subject: &CertSubject,
        validity: Validity,
    ) -> Result<Credentials, CaError> {
        let key = KeyPair::generate()?;
        let cert = self.issue_for_key(&key, subject, validity)?;
        Credentials::new(cert, key.serialize_der(), self.cert_der.clone())
    }

    /// The CA key sealed under `seal_key` (AES-256-GCM), e.g. for replicated state.
    pub fn sealed_key(&self, seal_key: &SealKey) -> Vec<u8> {
        seal(seal_key, CA_KEY_PURPOSE, &self.key.serialize_der())
    }

    /// Rebuilds a CA from its certificate and a key sealed by [`Self::sealed_key`].
    ///
    /// # Errors
    /// [`CaError::Seal`] for a wrong key or tampered data, [`CaError::BadFile`] when the key
    /// does not belong to the certificate.
    pub fn from_sealed(
        cert_der: &[u8],
        sealed_key: &[u8],
        seal_key: &SealKey,
    ) -> Result<Self, CaError> {
        let key_der = open(seal_key, CA_KEY_PURPOSE, sealed_key)?;
        let key = key_pair_from_der(&key_der)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|e| CaError::BadFile {
                what: "CA certificate",
                detail: e.to_string(),
            })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::BadFile {
                what: "CA key",
                detail: "the sealed key does not belong to the CA certificate".into(),
            });
        }
        Ok(Self::from_parts(
            CertificateDer::from(cert_der.to_vec()),
            key,
        ))
    }

    /// Writes `ca.crt` (plain) and `ca.key.sealed` (AES-256-GCM under `seal_key`) into `dir`.
    ///
    /// # Errors
    /// [`CaError::Io`] when a file cannot be written.
    pub fn save(&self, dir: &Path, seal_key: &SealKey) -> Result<(), CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        write_atomic(
            &cert_path,
            to_pem("CERTIFICATE", &self.cert_der).as_bytes(),
            0o644,
        )
        .map_err(io_err("write", &cert_path))?;
        let key_path = dir.join(CA_KEY_FILE);
        write_atomic(&key_path, &self.sealed_key(seal_key), 0o600)
            .map_err(io_err("write", &key_path))
    }

    /// Loads a CA saved by [`Self::save`].
    ///
    /// # Errors
    /// [`CaError::Seal`] for a wrong key or a tampered file, [`CaError::BadFile`] when the key
    /// does not belong to the certificate, [`CaError::Io`] when a file is missing.
    pub fn load(dir: &Path, seal_key: &SealKey) -> Result<Self, CaError> {
        let cert_der = read_cert_pem(&dir.join(CA_CERT_FILE))?;
        let key_path = dir.join(CA_KEY_FILE);
        let sealed = fs::read(&key_path).map_err(io_err("read", &key_path))?;
        Self::from_sealed(&cert_der, &sealed, seal_key)
    }
}

fn key_pair_from_der(der: &[u8]) -> Result<KeyPair, CaError> {
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(der.to_vec());
    KeyPair::try_from(&key).map_err(|e| CaError::BadFile {
        what: "private key",
        detail: e.to_string(),
    })
}

/// Suffix of the files a renewal writes before it moves them in ([`Credentials::save_renewed`]).
const NEXT_SUFFIX: &str = ".next";

/// Whether `key` is the key `cert_der` was issued for.
fn key_matches_cert(key: &KeyPair, cert_der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(cert_der).is_ok_and(|(_, cert)| {
        cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    })
}

fn read_cert_pem(path: &Path) -> Result<CertificateDer<'static>, CaError> {
    let pem = fs::read(path).map_err(io_err("read", path))?;
    CertificateDer::from_pem_slice(&pem).map_err(|e| CaError::BadFile {
        what: "certificate",
        detail: format!("{}: {e}", path.display()),
    })
}

/// Generates a key pair and a CSR for it. The private key stays with the caller.
///
/// # Errors
/// [`CaError::Generate`] if generation fails.
pub fn generate_csr() -> Result<(KeyPair, Vec<u8>), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// What a node (or an admin) holds to speak mutual TLS: its certificate, its private key, and
/// the cluster CA certificate it trusts.
#[derive(Clone)]
pub struct Credentials {
    cert_der: CertificateDer<'static>,
    key_pkcs8_der: Vec<u8>,
    ca_cert_der: CertificateDer<'static>,
    identity: PeerIdentity,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// A secret for QUIC stateless resets, derived from the private key: stable across
    /// restarts of the same node, unrelated between nodes, and revealing nothing of the key.
    pub(crate) fn stateless_reset_secret(&self) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"warren quic stateless reset v1\0");
        context.update(&self.key_pkcs8_der);
        let digest = context.finish();
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// Bundles a certificate, its PKCS#8 key and the CA certificate.
    ///
    /// # Errors
    /// [`CaError::Identity`] when the certificate carries no Warren identity.
    pub fn new(
        cert_der: CertificateDer<'static>,
        key_pkcs8_der: Vec<u8>,
        ca_cert_der: CertificateDer<'static>,
    ) -> Result<Self, CaError> {
        let identity = parse_identity(&cert_der)?;
        let key = key_pair_from_der(&key_pkcs8_der)?;
        if !key_matches_cert(&key, &cert_der) {
            return Err(CaError::BadFile {
                what: "private key",
                detail: "it is not the key of the certificate".into(),
            });
        }
        Ok(Self {
            cert_der,
            key_pkcs8_der,
            ca_cert_der,
            identity,
        })
    }

    /// The node's certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key (PKCS#8 DER).
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_pkcs8_der
    }

    /// The cluster CA certificate.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert_der
    }

    /// The identity the certificate proves.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The cluster fingerprint (SHA-256 of the CA certificate).
    pub fn cluster_fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.ca_cert_der)
    }

    /// Writes `node.crt`, `node.key` (mode 0600) and `ca.crt` as PEM into `dir`.
    ///
    /// # Errors
    /// [`CaError::Io`] when a file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        let files: [(&str, String, u32); 3] = [
            (NODE_CERT_FILE, to_pem("CERTIFICATE", &self.cert_der), 0o644),
            (
                NODE_KEY_FILE,
                to_pem("PRIVATE KEY", &self.key_pkcs8_der),
                0o600,
            ),
            (
                CA_CERT_FILE,
                to_pem("CERTIFICATE", &self.ca_cert_der),
                0o644,
            ),
        ];
        for (name, pem, mode) in files {
            let path = dir.join(name);
            write_atomic(&path, pem.as_bytes(), mode).map_err(io_err("write", &path))?;
        }
        Ok(())
    }

    /// Replaces the certificate and key saved in `dir` with these (a renewal): both are
    /// written beside the current ones first, then moved in key first. A crash between the two
    /// moves leaves the new key with the old certificate; [`Self::load`] finds the new
    /// certificate beside it and finishes the move.
    ///
    /// # Errors
    /// [`CaError::Io`] when a file cannot be written or moved.
    pub fn save_renewed(&self, dir: &Path) -> Result<(), CaError> {
        let next = |name: &str| dir.join(format!("{name}{NEXT_SUFFIX}"));
        let key_pem = to_pem("PRIVATE KEY", &self.key_pkcs8_der);
        let cert_pem = to_pem("CERTIFICATE", &self.cert_der);
        write_atomic(&next(NODE_KEY_FILE), key_pem.as_bytes(), 0o600)
            .map_err(io_err("write", &next(NODE_KEY_FILE)))?;
        write_atomic(&next(NODE_CERT_FILE), cert_pem.as_bytes(), 0o644)
            .map_err(io_err("write", &next(NODE_CERT_FILE)))?;
        for name in [NODE_KEY_FILE, NODE_CERT_FILE] {
            fs::rename(next(name), dir.join(name)).map_err(io_err("move", &dir.join(name)))?;
        }
        Ok(())
    }

    /// Loads credentials saved by [`Self::save`] (or [`Self::save_renewed`], finishing a
    /// renewal a crash interrupted).
    ///
    /// # Errors
    /// [`CaError::Io`] for a missing file, [`CaError::BadFile`] for a corrupt one.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let ca_cert_der = read_cert_pem(&dir.join(CA_CERT_FILE))?;
        let key_path = dir.join(NODE_KEY_FILE);
        let key_pem = fs::read(&key_path).map_err(io_err("read", &key_path))?;
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&key_pem).map_err(|e| {
            CaError::BadFile {
                what: "private key",
                detail: format!("{}: {e}", key_path.display()),
            }
        })?;
        let key = key.secret_pkcs8_der().to_vec();
        let cert_path = dir.join(NODE_CERT_FILE);
        let cert_der = read_cert_pem(&cert_path)?;
        match Self::new(cert_der, key.clone(), ca_cert_der.clone()) {
            Err(CaError::BadFile { detail, .. }) if detail.contains("not the key") => {
                let next_path = dir.join(format!("{NODE_CERT_FILE}{NEXT_SUFFIX}"));
                let next = read_cert_pem(&next_path).map_err(|_| CaError::BadFile {
                    what: "private key",
                    detail: format!(
                        "{} is not the key of {}",
                        key_path.display(),
                        cert_path.display()
                    ),
                })?;
                let creds = Self::new(next, key, ca_cert_der)?;
                fs::rename(&next_path, &cert_path).map_err(io_err("move", &cert_path))?;
                Ok(creds)
            }
            other => other,
        }
    }

    /// Encodes the credentials as one PEM bundle (certificate, key, CA), e.g. for an admin
    /// config file.
    pub fn to_pem_bundle(&self) -> (String, String, String) {
        (
            to_pem("CERTIFICATE", &self.cert_der),
            to_pem("PRIVATE KEY", &self.key_pkcs8_der),
            to_pem("CERTIFICATE", &self.ca_cert_der),
        )
    }

    /// Builds credentials from the three PEM strings of [`Self::to_pem_bundle`].
    ///
    /// # Errors
    /// [`CaError::BadFile`] when a PEM block is missing or corrupt.
    pub fn from_pem_bundle(cert: &str, key: &str, ca: &str) -> Result<Self, CaError> {
        let bad = |what: &'static str| {
            move |e: rustls::pki_types::pem::Error| CaError::BadFile {
                what,
                detail: e.to_string(),
            }
        };
        let cert_der =
            CertificateDer::from_pem_slice(cert.as_bytes()).map_err(bad("certificate"))?;
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key.as_bytes())
            .map_err(bad("private key"))?;
        let ca_der =
            CertificateDer::from_pem_slice(ca.as_bytes()).map_err(bad("CA certificate"))?;
        Self::new(cert_der, key.secret_pkcs8_der().to_vec(), ca_der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SerialBinding;
    use warren_api::clock::unix_now;

    fn ca() -> ClusterCa {
        ClusterCa::generate("test", Validity::starting_at(unix_now(), CA_LIFETIME)).unwrap()
    }

    #[test]
    fn csr_signing_takes_only_the_key_and_sets_identity() {
        let ca = ca();
        let (_key, csr) = generate_csr().unwrap();
        let subject = CertSubject::Node {
            node_id: NodeId(0xabc),
            role: CertRole::Agent,
        };
        let cert = ca.sign_csr(
            &csr,
            &subject,
            Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
        );
        let identity = parse_identity(&cert.unwrap()).unwrap();
        assert_eq!(identity.role, CertRole::Agent);
        assert_eq!(identity.node_id, Some(NodeId(0xabc)));
    }

    /// A certificate the CA signs for a new key but with a serial copied from one it issued —
    /// what a holder of a stolen CA key would make to pass as a recorded node — is told apart
    /// from the real one by its serial binding; a random serial of an older build is legacy.
    #[test]
    fn serials_commit_to_the_key_and_a_copied_serial_is_a_mismatch() {
        let ca = ca();
        let subject = CertSubject::Node {
            node_id: NodeId(0xabc),
            role: CertRole::Agent,
        };
        let validity = Validity::starting_at(unix_now(), NODE_CERT_LIFETIME);
        let real = ca.issue_credentials(&subject, validity).unwrap();
        assert_eq!(real.identity().binding, SerialBinding::Bound);
        assert_eq!(real.identity().serial.len(), 40, "20-byte serial");

        let forger_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(node_uri(CertRole::Agent, NodeId(0xabc))).unwrap(),
        )];
        let real_serial = data_encoding::HEXLOWER
            .decode(real.identity().serial.as_bytes())
            .unwrap();
        params.serial_number = Some(SerialNumber::from_slice(&real_serial));
        validity.apply(&mut params).unwrap();
        let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).unwrap();
        let forged = params.signed_by(&forger_key, &issuer).unwrap();
        let forged = parse_identity(forged.der()).unwrap();
        assert_eq!(forged.serial, real.identity().serial);
        assert_eq!(forged.binding, SerialBinding::Mismatch);

        params.serial_number = Some(random_serial());
        let legacy = params.signed_by(&forger_key, &issuer).unwrap();
        assert_eq!(
            parse_identity(legacy.der()).unwrap().binding,
            SerialBinding::Legacy
        );
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = ca();
        let subject = CertSubject::Admin { name: "ops".into() };
        let validity = Validity::starting_at(unix_now(), NODE_CERT_LIFETIME);
        assert!(matches!(
            ca.sign_csr(b"not a csr", &subject, validity),
            Err(CaError::BadCsr(_))
        ));
        let (_key, mut csr) = generate_csr().unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 0x55;
        assert!(matches!(
            ca.sign_csr(&csr, &subject, validity),
            Err(CaError::BadCsr(_))
        ));
    }

    #[test]
    fn ca_save_load_round_trips_and_key_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let key = SealKey::generate();
        ca.save(dir.path(), &key).unwrap();
        let sealed = fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
        let plain = ca.key.serialize_der();
        assert!(!sealed.windows(plain.len()).any(|w| w == plain.as_slice()));
        let loaded = ClusterCa::load(dir.path(), &key).unwrap();
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        let err = ClusterCa::load(dir.path(), &SealKey::generate()).unwrap_err();
        assert!(
            matches!(err, CaError::Seal(SealError::Authentication)),
            "{err}"
        );
    }

    /// A renewal that crashed between moving the new key in and moving the new certificate in
    /// is finished by the next load; one that completed loads as is.
    #[test]
    fn an_interrupted_renewal_is_finished_when_the_credentials_load() {
        let ca = ca();
        let subject = CertSubject::Node {
            node_id: NodeId(7),
            role: CertRole::Agent,
        };
        let validity = Validity::starting_at(unix_now(), NODE_CERT_LIFETIME);
        let dir = tempfile::tempdir().unwrap();
        let old = ca.issue_credentials(&subject, validity).unwrap();
        old.save(dir.path()).unwrap();
        let new = ca.issue_credentials(&subject, validity).unwrap();

        new.save_renewed(dir.path()).unwrap();
        let loaded = Credentials::load(dir.path()).unwrap();
        assert_eq!(loaded.identity().serial, new.identity().serial);

        // The crash: the newest key is in place, its certificate still beside it.
        let newest = ca.issue_credentials(&subject, validity).unwrap();
        let (cert_pem, key_pem, _) = newest.to_pem_bundle();
        fs::write(dir.path().join(NODE_KEY_FILE), key_pem).unwrap();
        fs::write(dir.path().join("node.crt.next"), cert_pem).unwrap();
        let loaded = Credentials::load(dir.path()).unwrap();
        assert_eq!(loaded.identity().serial, newest.identity().serial);
        assert!(!dir.path().join("node.crt.next").exists());
        let again = Credentials::load(dir.path()).unwrap();
        assert_eq!(again.identity().serial, newest.identity().serial);

        // A key that matches nothing is an error naming both files.
        let stray = ca.issue_credentials(&subject, validity).unwrap();
        fs::write(dir.path().join(NODE_KEY_FILE), stray.to_pem_bundle().1).unwrap();
        let error = Credentials::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("is not the key of"), "{error}");
    }

    #[test]
    fn credentials_save_load_and_pem_bundle_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let subject = CertSubject::Node {
            node_id: NodeId(7),
            role: CertRole::Control,
        };
        let creds = ca
            .issue_credentials(
                &subject,
                Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
            )
            .unwrap();
        creds.save(dir.path()).unwrap();
        let loaded = Credentials::load(dir.path()).unwrap();
        assert_eq!(loaded.identity(), creds.identity());
        let (c, k, a) = creds.to_pem_bundle();
        let from_pem = Credentials::from_pem_bundle(&c, &k, &a).unwrap();
        assert_eq!(from_pem.cluster_fingerprint(), ca.fingerprint());
        assert!(Credentials::from_pem_bundle("junk", &k, &a).is_err());
    }
}
