//! Faults the harness can inflict on a fleet, each with its heal.
//!
//! | fault | apply | heal |
//! |---|---|---|
//! | `Isolate` | the node's namespace drops everything but loopback | rules removed |
//! | `CutSite` | every node of the site drops traffic to and from every node outside it | rules removed |
//! | `Kill` | SIGKILL of the node's `warren` (its workloads keep running) | `warren … run` from its data dir |
//! | `Pause` | SIGSTOP | SIGCONT |
//!
//! The operator's seat (the bridge) is never named in a `CutSite` rule: the operator still
//! reaches a cut-off site, as a real operator with out-of-band access would.

use std::fmt;

use anyhow::{Context, Result, bail};
use rustix::process::Signal;

use crate::firewall::{Block, Scope};
use crate::fleet::Fleet;

/// Firewall tags (one rule set per tag and namespace).
const ISOLATE_TAG: &str = "isolate";
const CUT_TAG: &str = "cut";

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    Isolate { node: String },
    CutSite { site: String },
    Kill { node: String },
    Pause { node: String },
}

impl Fault {
    /// Inflicts the fault.
    ///
    /// # Errors
    /// When the node or site is unknown, the fault is already in place, or a tool fails.
    pub fn apply(&self, fleet: &mut Fleet) -> Result<()> {
        tracing::info!(fault = %self, "--- apply");
        match self {
            Fault::Isolate { node } => fleet.block(
                node,
                &Block {
                    tag: ISOLATE_TAG.into(),
                    drop: Scope::All,
                },
            ),
            Fault::CutSite { site } => {
                let (inside, outside) = split_by_site(fleet, site)?;
                let block = Block {
                    tag: CUT_TAG.into(),
                    drop: Scope::Peers(outside),
                };
                for name in &inside {
                    fleet.block(name, &block)?;
                }
                Ok(())
            }
            Fault::Kill { node } => fleet.kill(node),
            Fault::Pause { node } => fleet.signal(node, Signal::STOP),
        }
        .with_context(|| format!("apply {self}"))
    }

    /// Undoes the fault.
    ///
    /// # Errors
    /// When it is not in place or a tool fails.
    pub fn heal(&self, fleet: &mut Fleet) -> Result<()> {
        tracing::info!(fault = %self, "--- heal");
        match self {
            Fault::Isolate { node } => fleet.unblock(node, ISOLATE_TAG),
            Fault::CutSite { site } => {
                let (inside, _) = split_by_site(fleet, site)?;
                for name in &inside {
                    fleet.unblock(name, CUT_TAG)?;
                }
                Ok(())
            }
            Fault::Kill { node } => fleet.restart(node),
            Fault::Pause { node } => fleet.signal(node, Signal::CONT),
        }
        .with_context(|| format!("heal {self}"))
    }
}

/// Names of the site's nodes, and addresses of every other node.
fn split_by_site(fleet: &Fleet, site: &str) -> Result<(Vec<String>, Vec<std::net::Ipv4Addr>)> {
    let inside: Vec<String> = fleet
        .nodes()
        .iter()
        .filter(|n| n.site == site)
        .map(|n| n.name.clone())
        .collect();
    if inside.is_empty() {
        bail!("no node in site {site}");
    }
    let outside = fleet
        .nodes()
        .iter()
        .filter(|n| n.site != site)
        .map(|n| n.host.addr)
        .collect();
    Ok((inside, outside))
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Isolate { node } => write!(f, "isolate node {node}"),
            Fault::CutSite { site } => write!(f, "cut site {site} off"),
            Fault::Kill { node } => write!(f, "kill node {node}"),
            Fault::Pause { node } => write!(f, "pause node {node}"),
        }
    }
}
