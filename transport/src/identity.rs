//! Who a certificate says its holder is.
//!
//! Every certificate the cluster CA issues carries exactly one URI subject-alternative name of
//! the form `warren://<role>/<subject>`: the subject is the node id in 16 hex digits for control
//! and agent certificates, and the admin's name for admin certificates. Control certificates
//! also carry the DNS name [`CONTROL_SERVER_NAME`], which is what clients verify when they dial a
//! control node, so an agent certificate can never pose as a control server.

use std::fmt;
use std::str::FromStr;

use warren_api::{NodeId, NodeRole};
use x509_parser::extensions::GeneralName;

/// The DNS name every control-node certificate carries and every client dials.
pub const CONTROL_SERVER_NAME: &str = "control.warren";

const URI_PREFIX: &str = "warren://";

/// The role a certificate grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// A control-plane node: may serve Raft, agent streams and joins.
    Control,
    /// An edge agent: may hold the agent stream.
    Agent,
    /// An operator: may use the admin API.
    Admin,
}

impl CertRole {
    /// The role's name as it appears in certificates and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Agent => "agent",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertRole {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "control" => Ok(Self::Control),
            "agent" => Ok(Self::Agent),
            "admin" => Ok(Self::Admin),
            other => Err(IdentityError::UnknownRole(other.to_owned())),
        }
    }
}

impl From<NodeRole> for CertRole {
    fn from(role: NodeRole) -> Self {
        match role {
            NodeRole::Control => Self::Control,
            NodeRole::Agent => Self::Agent,
        }
    }
}

/// The identity proven by a peer's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The role the certificate grants.
    pub role: CertRole,
    /// The node id, for control and agent certificates.
    pub node_id: Option<NodeId>,
    /// The admin's name, for admin certificates.
    pub admin_name: Option<String>,
    /// The certificate serial number in lowercase hex; revocation is by serial.
    pub serial: String,
    /// The start of the certificate's validity as unix seconds.
    pub not_before_unix: i64,
    /// The certificate's expiry as unix seconds.
    pub not_after_unix: i64,
    /// What the serial says about the certificate's key ([`SerialBinding`]).
    pub binding: SerialBinding,
}

/// Whether a certificate's serial commits to its public key.
///
/// The cluster CA makes every serial from 4 random bytes and a SHA-256 over them and the
/// subject's public key ([`key_bound_serial`]). A serial the cluster records therefore names one
/// key: someone holding the CA key (a removed control node's old copy of it) can sign a new
/// certificate that repeats a recorded serial, but not for a key of their own — and a serial the
/// cluster never recorded is refused outright. Certificates issued before serials were bound
/// carry 16 random bytes: they are accepted while the cluster records their serial, and lose that
/// protection until they are re-issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerialBinding {
    /// The serial commits to this certificate's key.
    Bound,
    /// The serial has the bound form but does not match this certificate's key: forged.
    Mismatch,
    /// A serial from before binding (random): says nothing about the key.
    Legacy,
}

/// First two bytes of a key-bound serial ("WR"): 20 bytes in all, a length random serials of
/// earlier builds (16 bytes) never have.
const BOUND_SERIAL_TAG: [u8; 2] = [0x57, 0x52];
const BOUND_SERIAL_LEN: usize = 20;
const BOUND_SERIAL_NONCE: usize = 4;

/// A serial for a certificate of `public_key` (the raw subject public key bits): the tag, 4
/// bytes of `nonce`, and the first 14 bytes of SHA-256(domain ‖ nonce ‖ key). Positive (the tag's
/// top bit is clear) and at most 20 bytes, as X.509 requires.
pub fn key_bound_serial(public_key: &[u8], nonce: [u8; BOUND_SERIAL_NONCE]) -> Vec<u8> {
    let digest = serial_digest(public_key, &nonce);
    let mut serial = Vec::with_capacity(BOUND_SERIAL_LEN);
    serial.extend_from_slice(&BOUND_SERIAL_TAG);
    serial.extend_from_slice(&nonce);
    serial.extend_from_slice(&digest.as_ref()[..BOUND_SERIAL_LEN - 2 - BOUND_SERIAL_NONCE]);
    serial
}

fn serial_digest(public_key: &[u8], nonce: &[u8]) -> ring::digest::Digest {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"warren certificate serial v1\0");
    context.update(nonce);
    context.update(public_key);
    context.finish()
}

/// What `serial` (raw bytes) says about `public_key`.
pub fn serial_binding(serial: &[u8], public_key: &[u8]) -> SerialBinding {
    if serial.len() != BOUND_SERIAL_LEN || serial[..2] != BOUND_SERIAL_TAG {
        return SerialBinding::Legacy;
    }
    let nonce = &serial[2..2 + BOUND_SERIAL_NONCE];
    let digest = serial_digest(public_key, nonce);
    let expected = &digest.as_ref()[..BOUND_SERIAL_LEN - 2 - BOUND_SERIAL_NONCE];
    // A serial is public: no need for a constant-time comparison.
    if &serial[2 + BOUND_SERIAL_NONCE..] == expected {
        SerialBinding::Bound
    } else {
        SerialBinding::Mismatch
    }
}

/// Why a certificate does not carry a usable Warren identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The bytes are not an X.509 certificate.
    #[error("certificate is not valid DER X.509")]
    BadCertificate,
    /// No `warren://` URI subject-alternative name.
    #[error("certificate carries no warren identity (no warren:// URI SAN)")]
    Missing,
    /// More than one `warren://` URI.
    #[error("certificate carries more than one warren identity")]
    Ambiguous,
    /// A role this build does not know.
    #[error("unknown role {0:?} in certificate (expected control, agent or admin)")]
    UnknownRole(String),
    /// The subject part is not a valid node id or name.
    #[error("malformed warren identity {0:?}")]
    Malformed(String),
}

/// The URI SAN for a node certificate.
pub(crate) fn node_uri(role: CertRole, node_id: NodeId) -> String {
    format!("{URI_PREFIX}{}/{:016x}", role.as_str(), node_id.0)
}

/// The URI SAN for an admin certificate.
pub(crate) fn admin_uri(name: &str) -> String {
    format!("{URI_PREFIX}admin/{name}")
}

/// Parses the identity out of a DER certificate.
///
/// # Errors
/// [`IdentityError`] when the certificate does not parse or carries no single valid identity.
pub fn parse_identity(cert_der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| IdentityError::BadCertificate)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::BadCertificate)?;
    let mut found = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix(URI_PREFIX)
        {
            if found.is_some() {
                return Err(IdentityError::Ambiguous);
            }
            found = Some(rest.to_owned());
        }
    }
    let rest = found.ok_or(IdentityError::Missing)?;
    let (role, subject) = rest
        .split_once('/')
        .ok_or_else(|| IdentityError::Malformed(rest.clone()))?;
    let role: CertRole = role.parse()?;
    let (node_id, admin_name) = match role {
        CertRole::Admin => {
            if subject.is_empty() || subject.contains('/') {
                return Err(IdentityError::Malformed(rest.clone()));
            }
            (None, Some(subject.to_owned()))
        }
        CertRole::Control | CertRole::Agent => {
            if subject.len() != 16 {
                return Err(IdentityError::Malformed(rest.clone()));
            }
            let id = u64::from_str_radix(subject, 16)
                .map_err(|_| IdentityError::Malformed(rest.clone()))?;
            (Some(NodeId(id)), None)
        }
    };
    Ok(PeerIdentity {
        role,
        node_id,
        admin_name,
        serial: data_encoding::HEXLOWER.encode(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        binding: serial_binding(
            cert.raw_serial(),
            &cert.public_key().subject_public_key.data,
        ),
    })
}

impl PeerIdentity {
    /// When a certificate should be renewed (unix seconds): once a third of its life is left
    /// (its life counted from its issue, not from the clock-skew allowance before it), so that
    /// a node has a third of it — a month, for 90-day certificates — to reach the control
    /// plane.
    pub fn renew_at_unix(&self) -> i64 {
        let skew = crate::ca::CLOCK_SKEW_ALLOWANCE.as_secs() as i64;
        let issued = self.not_before_unix.saturating_add(skew);
        let life = self.not_after_unix.saturating_sub(issued).max(0);
        self.not_after_unix.saturating_sub(life / 3)
    }
}

/// SHA-256 of a DER certificate: the cluster CA fingerprint pinned in join tokens and used as
/// the cluster id.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    digest
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}
