//! Placement: which nodes a service's replicas may run on.
//!
//! A placement is a site list plus constraints (`site==edge-a`, `label.zone!=b`,
//! `node.name==box-7`), all of which must hold. [`Placement::allows`] is a pure function of a
//! node's name, site and labels so the scheduler can call it from inside the Raft state
//! machine.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::validate::{ValidationError, validate_label_key};

/// Where replicas may run. The default allows every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Placement {
    /// Sites the service may run in; empty means any site.
    pub sites: Vec<String>,
    /// Constraints that must all hold.
    pub constraints: Vec<Constraint>,
}

impl Placement {
    /// Whether a node with this name, site and labels may run the service.
    ///
    /// A `!=` constraint on a label the node does not have holds (the node's value is "not
    /// equal"); an `==` constraint on a missing label does not.
    pub fn allows(
        &self,
        node_name: &str,
        node_site: &str,
        node_labels: &BTreeMap<String, String>,
    ) -> bool {
        let site_ok = self.sites.is_empty() || self.sites.iter().any(|s| s == node_site);
        site_ok
            && self.constraints.iter().all(|c| {
                let actual = match &c.key {
                    ConstraintKey::Site => Some(node_site),
                    ConstraintKey::NodeName => Some(node_name),
                    ConstraintKey::Label(key) => node_labels.get(key).map(String::as_str),
                };
                match c.op {
                    ConstraintOp::Eq => actual == Some(c.value.as_str()),
                    ConstraintOp::NotEq => actual != Some(c.value.as_str()),
                }
            })
    }

    /// [`Placement::allows`] for a registry [`Node`]. Says nothing about the node's
    /// availability or liveness; see [`Node::is_schedulable`].
    pub fn allows_node(&self, node: &Node) -> bool {
        self.allows(&node.name, &node.site, &node.labels)
    }
}

/// The node label an agent registers at join saying how it runs workloads:
/// [`RUNTIME_PROCESS`] or [`RUNTIME_CONTAINERD`]. Control places image services only on
/// containerd nodes and command services only on process nodes; a node without the label
/// (joined before it existed) may take either, and its agent refuses what it cannot run.
pub const RUNTIME_LABEL: &str = "warren.runtime";
/// [`RUNTIME_LABEL`]'s value on a node that runs native processes.
pub const RUNTIME_PROCESS: &str = "process";
/// [`RUNTIME_LABEL`]'s value on a node that runs containers through containerd.
pub const RUNTIME_CONTAINERD: &str = "containerd";

/// The runtime a workload needs: [`RUNTIME_CONTAINERD`] for an image, [`RUNTIME_PROCESS`] for
/// a command.
pub fn runtime_needed(workload: &crate::Workload) -> &'static str {
    match workload {
        crate::Workload::Image(_) => RUNTIME_CONTAINERD,
        crate::Workload::Process(_) => RUNTIME_PROCESS,
    }
}

/// Whether `node`'s runtime (its [`RUNTIME_LABEL`]) can run `workload`.
pub fn runtime_fits(workload: &crate::Workload, node: &Node) -> bool {
    node.labels
        .get(RUNTIME_LABEL)
        .is_none_or(|runtime| runtime == runtime_needed(workload))
}

/// What a constraint compares.
///
/// Text form: `site`, `node.name` or `label.<key>`; serialized as that text, validated when
/// read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConstraintKey {
    /// The node's site.
    Site,
    /// The node's name.
    NodeName,
    /// One of the node's labels.
    Label(String),
}

impl fmt::Display for ConstraintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintKey::Site => f.write_str("site"),
            ConstraintKey::NodeName => f.write_str("node.name"),
            ConstraintKey::Label(key) => write!(f, "label.{key}"),
        }
    }
}

impl FromStr for ConstraintKey {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "site" => Ok(ConstraintKey::Site),
            "node.name" => Ok(ConstraintKey::NodeName),
            _ => match s.strip_prefix("label.") {
                Some(key) => {
                    validate_label_key("key", key)?;
                    Ok(ConstraintKey::Label(key.to_owned()))
                }
                None => Err(ValidationError::new(
                    "key",
                    format!(
                        "unknown constraint key {s:?} (expected site, node.name or label.<key>)"
                    ),
                )),
            },
        }
    }
}

impl TryFrom<String> for ConstraintKey {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<ConstraintKey> for String {
    fn from(key: ConstraintKey) -> String {
        key.to_string()
    }
}

/// How a constraint compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    /// `==`
    Eq,
    /// `!=`
    NotEq,
}

impl ConstraintOp {
    /// `==` or `!=`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOp::Eq => "==",
            ConstraintOp::NotEq => "!=",
        }
    }
}

/// One placement rule, written `KEY==VALUE` or `KEY!=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// What is compared.
    pub key: ConstraintKey,
    /// Equal or not equal.
    pub op: ConstraintOp,
    /// The value compared with; non-empty, no whitespace.
    pub value: String,
}

impl Constraint {
    /// Parses `site==edge-a`, `label.zone!=b`, `node.name==box-7`.
    ///
    /// # Errors
    /// A [`ValidationError`] on field `constraint` when the operator, key or value is wrong.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let err = |why: &str| ValidationError::new("constraint", format!("{text:?}: {why}"));
        let (key, op, value) = if let Some((key, value)) = text.split_once("==") {
            (key, ConstraintOp::Eq, value)
        } else if let Some((key, value)) = text.split_once("!=") {
            (key, ConstraintOp::NotEq, value)
        } else {
            return Err(err("expected KEY==VALUE or KEY!=VALUE"));
        };
        let key = key.parse::<ConstraintKey>().map_err(|e| err(&e.message))?;
        let constraint = Constraint {
            key,
            op,
            value: value.to_owned(),
        };
        constraint.validate_value().map_err(|e| err(&e.message))?;
        Ok(constraint)
    }

    /// Checks the value: non-empty, at most 256 bytes, no whitespace or control characters,
    /// and no `=`/`!` that would make the text form ambiguous.
    ///
    /// # Errors
    /// A [`ValidationError`] on field `value`.
    pub fn validate_value(&self) -> Result<(), ValidationError> {
        let value = &self.value;
        let why = if value.is_empty() {
            "must not be empty"
        } else if value.len() > 256 {
            "must be at most 256 bytes"
        } else if value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '!')
        {
            "must not contain whitespace, control characters, '=' or '!'"
        } else {
            return Ok(());
        };
        Err(ValidationError::new("value", why))
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, self.op.as_str(), self.value)
    }
}

impl FromStr for Constraint {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Constraint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        match (Constraint::parse(input), expected) {
            (Ok(c), Ok(want)) => {
                assert_eq!(format!("{c:?}"), want, "{input}");
                assert_eq!(c.to_string(), input);
            }
            (Err(e), Err(want)) => assert_eq!(e.to_string(), want, "{input}"),
            (got, want) => panic!("{input}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn constraint_parse_table() {
        check(
            "site==edge-a",
            Ok(r#"Constraint { key: Site, op: Eq, value: "edge-a" }"#),
        );
        check(
            "label.zone!=b",
            Ok(r#"Constraint { key: Label("zone"), op: NotEq, value: "b" }"#),
        );
        check(
            "node.name==box-7",
            Ok(r#"Constraint { key: NodeName, op: Eq, value: "box-7" }"#),
        );
        check(
            "label.example.com/gpu==true",
            Ok(r#"Constraint { key: Label("example.com/gpu"), op: Eq, value: "true" }"#),
        );
        check(
            "site=a",
            Err(r#"constraint: "site=a": expected KEY==VALUE or KEY!=VALUE"#),
        );
        check(
            "zone==a",
            Err(
                r#"constraint: "zone==a": unknown constraint key "zone" (expected site, node.name or label.<key>)"#,
            ),
        );
        check("site==", Err(r#"constraint: "site==": must not be empty"#));
        check(
            "site==a b",
            Err(
                r#"constraint: "site==a b": must not contain whitespace, control characters, '=' or '!'"#,
            ),
        );
        check(
            "site===a",
            Err(
                r#"constraint: "site===a": must not contain whitespace, control characters, '=' or '!'"#,
            ),
        );
        check(
            "label.==a",
            Err(r#"constraint: "label.==a": label key must not be empty"#),
        );
    }

    #[test]
    fn allows() {
        let labels: BTreeMap<String, String> = [("zone".to_owned(), "a".to_owned())].into();
        let placement = |sites: &[&str], constraints: &[&str]| Placement {
            sites: sites.iter().map(|s| (*s).to_owned()).collect(),
            constraints: constraints
                .iter()
                .map(|c| Constraint::parse(c).unwrap())
                .collect(),
        };
        let allows = |p: Placement| p.allows("box-1", "edge-a", &labels);
        assert!(allows(placement(&[], &[])));
        assert!(allows(placement(&["edge-b", "edge-a"], &[])));
        assert!(!allows(placement(&["edge-b"], &[])));
        assert!(allows(placement(&[], &["label.zone==a", "site==edge-a"])));
        assert!(!allows(placement(&[], &["label.zone==a", "site!=edge-a"])));
        assert!(!allows(placement(&[], &["label.rack==1"])));
        assert!(allows(placement(&[], &["label.rack!=1"])));
        assert!(allows(placement(&[], &["node.name==box-1"])));
        assert!(!allows(placement(&[], &["node.name!=box-1"])));
    }

    #[test]
    fn key_json_is_text() {
        let c = Constraint::parse("label.zone==a").unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"key":"label.zone","op":"eq","value":"a"}"#);
        assert!(
            serde_json::from_str::<Constraint>(r#"{"key":"zone","op":"eq","value":"a"}"#).is_err()
        );
    }
}
