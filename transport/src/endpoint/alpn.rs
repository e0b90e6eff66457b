//! What a connection is for: each purpose has its own ALPN protocol id and needs its own
//! certificate role.

#[cfg(doc)]
use crate::config::TransportConfig;
use crate::identity::CertRole;

/// What a connection is for; each purpose has its own ALPN protocol id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Raft RPC between control nodes.
    Raft,
    /// The agent's desired-state and status stream.
    Agent,
    /// A node joining with a token (no client certificate yet).
    Join,
    /// A node renewing its certificate (which may have expired, within
    /// [`TransportConfig::renew_grace`]).
    Renew,
}

impl Alpn {
    /// Every purpose, in a fixed order.
    pub const ALL: [Alpn; 4] = [Alpn::Raft, Alpn::Agent, Alpn::Join, Alpn::Renew];

    /// The ALPN protocol id on the wire. A purpose's version goes up when its messages change
    /// in a way an older build would misread: two builds that cannot understand each other
    /// then fail the TLS handshake ("no application protocol"), never exchange garbage.
    pub fn protocol(self) -> &'static [u8] {
        match self {
            // 2: log entries and snapshots carry specs with `user`, `group` and `cap_add`.
            // 3: the WireGuard registry (`SetOverlayRange`, `SetMesh`, snapshot format 5).
            Self::Raft => b"warren-raft/5",
            Self::Agent => b"warren-agent/1",
            Self::Join => b"warren-join/1",
            Self::Renew => b"warren-renew/1",
        }
    }

    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raft => "raft",
            Self::Agent => "agent",
            Self::Join => "join",
            Self::Renew => "renew",
        }
    }

    pub(super) fn from_protocol(protocol: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|alpn| alpn.protocol() == protocol)
    }

    /// The certificate role a client needs for this purpose (`None`: no certificate needed,
    /// or — for renewal — a node certificate of either role).
    pub fn required_role(self) -> Option<CertRole> {
        match self {
            Self::Raft => Some(CertRole::Control),
            Self::Agent => Some(CertRole::Agent),
            Self::Join | Self::Renew => None,
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Self::Raft => 0,
            Self::Agent => 1,
            Self::Join => 2,
            Self::Renew => 3,
        }
    }
}
