//! Identifiers: node ids, revisions, service names and replica ids.
//!
//! Ids are newtypes so that a node id cannot be passed where a revision is expected. Ids that
//! people read ([`NodeId`], [`ReplicaId`]) serialize as strings in human-readable formats
//! (JSON) and as compact numbers/tuples in binary ones (postcard); both forms validate on the
//! way in.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate::{ValidationError, validate_dns_label};

/// A node's identity, assigned by the control plane when the node joins.
///
/// Shown and parsed as exactly 16 lowercase hex digits (`00000000000000ff`). This crate never
/// invents ids (that would need randomness, which is I/O); the caller supplies the number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = ValidationError;

    /// Parses exactly 16 hex digits. Upper-case digits are accepted so that ids pasted from
    /// other tools work; [`Display`](fmt::Display) always prints lower case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ValidationError::new(
                "node_id",
                format!("expected 16 hex digits, got {s:?}"),
            ));
        }
        u64::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|e| ValidationError::new("node_id", format!("{s:?}: {e}")))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            // JSON numbers above 2^53 lose precision in many tools (jq, JavaScript), so JSON
            // carries the same hex string people see in tables.
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(FromStrVisitor::<NodeId>::new("a 16-hex-digit node id"))
        } else {
            u64::deserialize(deserializer).map(NodeId)
        }
    }
}

/// The revision of the desired state: the Raft log index of the write that produced it.
///
/// Revisions only grow. An agent acknowledges the revision it has durably cached, and resumes
/// from it after a reconnect.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision before any write; an agent with an empty cache says this in its hello.
    pub const ZERO: Revision = Revision(0);
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A service's name: a DNS label (1..=63 characters of `[a-z0-9-]`, not starting or ending
/// with `-`), because it becomes `<name>.warren.` in DNS.
///
/// Every way in validates: [`ServiceName::new`], [`FromStr`], `TryFrom<String>` and serde.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// Checks `name` and wraps it.
    ///
    /// # Errors
    /// A [`ValidationError`] on field `name` saying which DNS-label rule `name` breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        validate_dns_label("name", &name)?;
        Ok(ServiceName(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ServiceName {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceName::new(s)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ServiceName::new(value)
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> String {
        name.0
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets `BTreeMap<ServiceName, _>` be looked up with a `&str`. Sound because the derived
/// `Ord` of the wrapper is the `Ord` of the inner `String`.
impl Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// What distinguishes one replica of a service from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaKey {
    /// A replicated service's slot, `0..replicas`. Slots are stable: scaling 3 → 2 removes
    /// slot 2, and a rescheduled replica keeps its slot.
    Slot(u32),
    /// A global service runs one replica per eligible node, keyed by that node.
    Node(NodeId),
}

impl fmt::Display for ReplicaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaKey::Slot(slot) => write!(f, "{slot}"),
            ReplicaKey::Node(node) => write!(f, "{node}"),
        }
    }
}

/// One replica (task) of a service: `web.1` for slot 1 of a replicated service,
/// `web.00000000000000ab` for a global service's replica on node `00000000000000ab`.
///
/// JSON carries the display string; postcard carries `(service, key)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId {
    /// The service this replica belongs to.
    pub service: ServiceName,
    /// Slot or node, depending on the service's mode.
    pub key: ReplicaKey,
}

impl ReplicaId {
    /// Slot `slot` of a replicated service.
    pub fn replicated(service: ServiceName, slot: u32) -> Self {
        ReplicaId {
            service,
            key: ReplicaKey::Slot(slot),
        }
    }

    /// A global service's replica on `node`.
    pub fn global(service: ServiceName, node: NodeId) -> Self {
        ReplicaId {
            service,
            key: ReplicaKey::Node(node),
        }
    }

    /// The slot, if this is a replicated service's replica.
    pub fn slot(&self) -> Option<u32> {
        match self.key {
            ReplicaKey::Slot(slot) => Some(slot),
            ReplicaKey::Node(_) => None,
        }
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.key)
    }
}

impl FromStr for ReplicaId {
    type Err = ValidationError;

    /// Parses `SERVICE.SLOT` (decimal) or `SERVICE.NODE_ID` (16 hex digits). A slot never has
    /// 16 digits (it is a `u32`), so the two forms cannot be confused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| {
            ValidationError::new(
                "replica_id",
                format!("expected SERVICE.SLOT or SERVICE.NODE_ID, got {s:?}: {why}"),
            )
        };
        let (service, key) = s.split_once('.').ok_or_else(|| err("missing '.'"))?;
        let service = ServiceName::new(service).map_err(|e| err(&e.message))?;
        let key = if key.len() == 16 {
            ReplicaKey::Node(key.parse().map_err(|e: ValidationError| err(&e.message))?)
        } else if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            ReplicaKey::Slot(key.parse().map_err(|_| err("slot out of range"))?)
        } else {
            return Err(err(
                "slot must be a decimal number or a 16-hex-digit node id",
            ));
        };
        Ok(ReplicaId { service, key })
    }
}

/// The binary form of [`ReplicaId`].
#[derive(Serialize, Deserialize)]
struct ReplicaIdRepr {
    service: ServiceName,
    key: ReplicaKey,
}

impl Serialize for ReplicaId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            ReplicaIdRepr {
                service: self.service.clone(),
                key: self.key,
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(FromStrVisitor::<ReplicaId>::new(
                "a replica id like web.1 or web.00000000000000ab",
            ))
        } else {
            let repr = ReplicaIdRepr::deserialize(deserializer)?;
            Ok(ReplicaId {
                service: repr.service,
                key: repr.key,
            })
        }
    }
}

/// A serde visitor that parses a string with `T::from_str`.
struct FromStrVisitor<T> {
    expecting: &'static str,
    _marker: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        FromStrVisitor {
            expecting,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServiceName {
        ServiceName::new(s).unwrap()
    }

    #[test]
    fn node_id_display_and_parse() {
        let id = NodeId(0xab);
        assert_eq!(id.to_string(), "00000000000000ab");
        assert_eq!("00000000000000AB".parse::<NodeId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), "NodeId(00000000000000ab)");
        for bad in [
            "",
            "ab",
            "00000000000000abc",
            "0000000000000g00",
            "+000000000000001",
        ] {
            let err = bad.parse::<NodeId>().unwrap_err();
            assert_eq!(err.field, "node_id", "{bad}");
        }
    }

    #[test]
    fn node_id_json_is_hex_string() {
        let json = serde_json::to_string(&NodeId(u64::MAX)).unwrap();
        assert_eq!(json, "\"ffffffffffffffff\"");
        let err = serde_json::from_str::<NodeId>("\"xyz\"").unwrap_err();
        assert!(err.to_string().contains("16 hex digits"), "{err}");
    }

    #[test]
    fn service_name_validates_on_deserialize() {
        assert!(serde_json::from_str::<ServiceName>("\"web-1\"").is_ok());
        let err = serde_json::from_str::<ServiceName>("\"Web\"").unwrap_err();
        assert!(err.to_string().contains("name:"), "{err}");
        let bytes = postcard::to_allocvec("-web").unwrap();
        assert!(postcard::from_bytes::<ServiceName>(&bytes).is_err());
    }

    #[test]
    fn service_name_map_lookup_by_str() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(name("web"), 1);
        assert_eq!(map.get("web"), Some(&1));
    }

    #[test]
    fn replica_id_display_and_parse() {
        fn check(input: &str, expected: Option<ReplicaId>) {
            let got = input.parse::<ReplicaId>().ok();
            assert_eq!(got, expected, "{input}");
            if let Some(id) = got {
                assert_eq!(id.to_string(), input);
            }
        }
        check("web.1", Some(ReplicaId::replicated(name("web"), 1)));
        check("web.0", Some(ReplicaId::replicated(name("web"), 0)));
        check(
            "dns.00000000000000ab",
            Some(ReplicaId::global(name("dns"), NodeId(0xab))),
        );
        check("web", None);
        check("web.", None);
        check("web.x", None);
        check("web.-1", None);
        check("web.4294967296", None);
        check("Web.1", None);
        check(".1", None);
    }

    #[test]
    fn replica_id_json_is_string() {
        let id = ReplicaId::replicated(name("web"), 3);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"web.3\"");
        let back: ReplicaId = serde_json::from_str("\"web.3\"").unwrap();
        assert_eq!(back, id);
    }
}
