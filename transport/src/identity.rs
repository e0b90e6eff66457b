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
    /// The certificate's expiry as unix seconds.
    pub not_after_unix: i64,
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
        not_after_unix: cert.validity().not_after.timestamp(),
    })
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
