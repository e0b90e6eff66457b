//! Faults the harness can inflict on a fleet, each with its heal.
//!
//! | fault | apply | heal |
//! |---|---|---|
//! | `Isolate` | the node's namespace drops everything but loopback | rules removed |
//! | `CutSite` | every node of the site drops traffic to and from every node outside it | rules removed |
//! | `Partition` | every named node drops traffic to and from every named node it shares no group with | rules removed |
//! | `OneWay` | `from`'s nodes drop what they send to `to`'s nodes; the reverse passes | rules removed |
//! | `Loss` | the target's nodes drop a share of their non-loopback packets at random, both ways | rules removed |
//! | `Delay` | the target's nodes hold every non-loopback packet they send for `ms` ± `jitter_ms` (a [`crate::delay`] holder per node) | rules removed, then holders stopped |
//! | `Kill` | SIGKILL of the node's `warren` (its workloads keep running) | `warren … run` from its data dir |
//! | `Pause` | SIGSTOP | SIGCONT |
//!
//! Network faults are planned by pure functions over [`NodeAddress`]s (name, site, address) into
//! one [`Block`] per node ([`Fault::blocks`]); applying installs them, healing removes them.
//! Where a fault takes "a node or a site", [`resolve`] says which nodes that is.
//!
//! The operator's seat (the bridge) is never named in a rule: the operator still reaches a
//! cut-off site, as a real operator with out-of-band access would.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::delay::DelaySpec;
use crate::firewall::{Block, Scope};
use crate::fleet::{Fleet, Node};

/// Firewall tags (one rule set per tag and namespace, so one fault of each kind per node).
const ISOLATE_TAG: &str = "isolate";
const CUT_TAG: &str = "cut";
const PARTITION_TAG: &str = "partition";
const ONE_WAY_TAG: &str = "oneway";
const LOSS_TAG: &str = "loss";
const DELAY_TAG: &str = "delay";

/// The NFQUEUE number a delay uses. Queues are per network namespace and one delay fits a
/// node (its tag), so one number serves every node.
pub const DELAY_QUEUE: u16 = 7;

/// One fault. In a scenario file it is written externally tagged, e.g.
/// `fault: {cut_site: {site: b}}`, `fault: {partition: {groups: [[c1, c2], [c3]]}}`,
/// `fault: {one_way: {from: a-1, to: central}}`, `fault: {loss: {target: b, percent: 30}}`,
/// `fault: {delay: {target: b, ms: 100, jitter_ms: 30}}`.
///
/// `serde_norway` reads enums from YAML tags (`!cut_site`) unless told otherwise: the field
/// that holds a `Fault` needs `#[serde(with = "serde_norway::with::singleton_map")]` for the
/// map form above (JSON needs nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    Isolate {
        node: String,
    },
    CutSite {
        site: String,
    },
    Kill {
        node: String,
    },
    Pause {
        node: String,
    },
    /// Each entry of a group is a node or a site. A node named in two groups is a bridge: it
    /// sees both sides. Nodes named in no group are untouched.
    Partition {
        groups: Vec<Vec<String>>,
    },
    /// `from` and `to` are nodes or sites.
    OneWay {
        from: String,
        to: String,
    },
    /// `target` is a node or a site; `percent` is 1..=100.
    Loss {
        target: String,
        percent: u8,
    },
    /// `target` is a node or a site. Every packet its nodes send, except loopback, is held for
    /// `ms` ± uniform random `jitter_ms` (1 ≤ `ms` ≤ 10000, `jitter_ms` ≤ `ms`); with jitter,
    /// packets overtake each other. Only what the target sends is held: a round trip between
    /// a delayed node and an undelayed one takes `ms` longer, one between two delayed nodes
    /// `2·ms`.
    Delay {
        target: String,
        ms: u32,
        #[serde(default)]
        jitter_ms: u32,
    },
}

/// A node as fault planning sees it: its name, its site and its address on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddress<'a> {
    pub name: &'a str,
    pub site: &'a str,
    pub addr: Ipv4Addr,
}

impl<'a> NodeAddress<'a> {
    pub fn of(node: &'a Node) -> NodeAddress<'a> {
        NodeAddress {
            name: &node.name,
            site: &node.site,
            addr: node.host.addr,
        }
    }
}

/// A block to install in one node's namespace.
pub type NodeBlock = (String, Block);

impl Fault {
    /// Checks what can be checked without a fleet: a partition has two or more groups and no
    /// empty one, a loss is 1-100 %, a delay is 1-10000 ms with a jitter no larger.
    ///
    /// # Errors
    /// Says what is wrong.
    pub fn validate(&self) -> Result<()> {
        match self {
            Fault::Partition { groups } => check_groups(groups),
            Fault::Loss { percent, .. } if !(1..=100).contains(percent) => {
                bail!("loss of {percent}%: use 1-100")
            }
            Fault::Delay { ms, jitter_ms, .. } => DelaySpec {
                ms: *ms,
                jitter_ms: *jitter_ms,
            }
            .validate(),
            _ => Ok(()),
        }
    }

    /// The block rules this fault installs, per node name, for a fleet of `members`; empty
    /// for process faults (`Kill`, `Pause`).
    ///
    /// # Errors
    /// When the fault is malformed ([`Fault::validate`]) or names an unknown node or site.
    pub fn blocks(&self, members: &[NodeAddress<'_>]) -> Result<Vec<NodeBlock>> {
        self.validate()?;
        match self {
            Fault::Isolate { node } => {
                let index = node_index(members, node)?;
                Ok(vec![(
                    members[index].name.to_owned(),
                    Block {
                        tag: ISOLATE_TAG.into(),
                        drop: Scope::All,
                    },
                )])
            }
            Fault::CutSite { site } => cut_site_blocks(members, site),
            Fault::Partition { groups } => partition_blocks(members, groups),
            Fault::OneWay { from, to } => one_way_blocks(members, from, to),
            Fault::Loss { target, percent } => {
                let block = Block {
                    tag: LOSS_TAG.into(),
                    drop: Scope::RandomLoss { percent: *percent },
                };
                target_blocks(members, target, &block)
            }
            Fault::Delay { target, .. } => {
                let block = Block {
                    tag: DELAY_TAG.into(),
                    drop: Scope::Queue { num: DELAY_QUEUE },
                };
                target_blocks(members, target, &block)
            }
            Fault::Kill { .. } | Fault::Pause { .. } => Ok(Vec::new()),
        }
    }

    /// The delay this fault holds packets for, if it is a `Delay`.
    pub fn delay(&self) -> Option<DelaySpec> {
        match self {
            Fault::Delay { ms, jitter_ms, .. } => Some(DelaySpec {
                ms: *ms,
                jitter_ms: *jitter_ms,
            }),
            _ => None,
        }
    }

    /// Inflicts the fault. A network fault refused on one node (the same kind already in
    /// place there) is undone on the nodes it reached first. A delay starts each node's
    /// holder and waits until it has bound its queue before the queue rule goes in, so no
    /// packet passes undelayed meanwhile.
    ///
    /// # Errors
    /// When the fault is malformed, the node or site is unknown, the fault is already in
    /// place, or a tool fails.
    pub fn apply(&self, fleet: &mut Fleet) -> Result<()> {
        tracing::info!(fault = %self, "--- apply");
        match self {
            Fault::Kill { node } => fleet.kill(node),
            Fault::Pause { node } => fleet.signal(node, Signal::STOP),
            _ => self
                .blocks(&members(fleet))
                .and_then(|plan| block_each(fleet, &plan, self.delay())),
        }
        .with_context(|| format!("apply {self}"))
    }

    /// Undoes the fault. A network fault is removed from every node it names, even when one
    /// of them fails. A delay's rule goes first, then its holder stops, letting what it
    /// still holds through at once.
    ///
    /// # Errors
    /// When it is not in place or a tool fails (the first such error).
    pub fn heal(&self, fleet: &mut Fleet) -> Result<()> {
        tracing::info!(fault = %self, "--- heal");
        match self {
            Fault::Kill { node } => fleet.restart(node),
            Fault::Pause { node } => fleet.signal(node, Signal::CONT),
            _ => self
                .blocks(&members(fleet))
                .and_then(|plan| unblock_each(fleet, &plan, self.delay().is_some())),
        }
        .with_context(|| format!("heal {self}"))
    }
}

/// The nodes `name` stands for: the node of that name, else every node of that site.
///
/// # Errors
/// When it is neither.
pub fn resolve<'f>(fleet: &'f Fleet, name: &str) -> Result<Vec<&'f Node>> {
    let indices = resolve_indices(&members(fleet), name)?;
    Ok(indices.into_iter().map(|i| &fleet.nodes()[i]).collect())
}

fn members(fleet: &Fleet) -> Vec<NodeAddress<'_>> {
    fleet.nodes().iter().map(NodeAddress::of).collect()
}

/// Indices into `members` of the node called `name`, else of the site's nodes.
fn resolve_indices(members: &[NodeAddress<'_>], name: &str) -> Result<Vec<usize>> {
    if let Some(index) = members.iter().position(|m| m.name == name) {
        return Ok(vec![index]);
    }
    let site: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].site == name)
        .collect();
    if site.is_empty() {
        let nodes: Vec<&str> = members.iter().map(|m| m.name).collect();
        let sites: BTreeSet<&str> = members.iter().map(|m| m.site).collect();
        let sites: Vec<&str> = sites.into_iter().collect();
        bail!(
            "no node or site {name:?} in this fleet (nodes: {}; sites: {})",
            nodes.join(" "),
            sites.join(" ")
        );
    }
    Ok(site)
}

fn node_index(members: &[NodeAddress<'_>], name: &str) -> Result<usize> {
    members
        .iter()
        .position(|m| m.name == name)
        .with_context(|| format!("no node {name} in this fleet"))
}

/// Every node of the site drops traffic with every node outside it.
fn cut_site_blocks(members: &[NodeAddress<'_>], site: &str) -> Result<Vec<NodeBlock>> {
    let (inside, outside): (Vec<&NodeAddress<'_>>, Vec<&NodeAddress<'_>>) =
        members.iter().partition(|m| m.site == site);
    if inside.is_empty() {
        bail!("no node in site {site}");
    }
    let block = Block {
        tag: CUT_TAG.into(),
        drop: Scope::Peers(outside.iter().map(|m| m.addr).collect()),
    };
    Ok(inside
        .iter()
        .map(|m| (m.name.to_owned(), block.clone()))
        .collect())
}

/// For every node named in some group (directly or through its site), a block of every other
/// named node it shares no group with. Nodes that share a group with every named node (a
/// bridge between all groups) get no block; nodes named nowhere get none and are named in
/// none.
///
/// # Errors
/// When a name is unknown, a group is empty, there are fewer than two groups, or the groups
/// separate no two nodes (nothing to apply, so nothing a heal could check).
pub fn partition_blocks(
    members: &[NodeAddress<'_>],
    groups: &[Vec<String>],
) -> Result<Vec<NodeBlock>> {
    check_groups(groups)?;
    let mut group_sets: Vec<BTreeSet<usize>> = Vec::with_capacity(groups.len());
    for group in groups {
        let mut set = BTreeSet::new();
        for name in group {
            set.extend(resolve_indices(members, name)?);
        }
        group_sets.push(set);
    }
    let named: BTreeSet<usize> = group_sets.iter().flatten().copied().collect();
    let share_a_group =
        |a: usize, b: usize| group_sets.iter().any(|g| g.contains(&a) && g.contains(&b));
    let mut plan = Vec::new();
    for &node in &named {
        let blocked: Vec<Ipv4Addr> = named
            .iter()
            .filter(|&&other| other != node && !share_a_group(node, other))
            .map(|&other| members[other].addr)
            .collect();
        if !blocked.is_empty() {
            let block = Block {
                tag: PARTITION_TAG.into(),
                drop: Scope::Peers(blocked),
            };
            plan.push((members[node].name.to_owned(), block));
        }
    }
    if plan.is_empty() {
        bail!("partition: every named node shares a group with every other; nothing to cut");
    }
    Ok(plan)
}

fn check_groups(groups: &[Vec<String>]) -> Result<()> {
    if groups.len() < 2 {
        bail!("partition: name two or more groups, not {}", groups.len());
    }
    if let Some(index) = groups.iter().position(Vec::is_empty) {
        bail!("partition: group {} is empty", index + 1);
    }
    Ok(())
}

/// `block` on every node `target` stands for.
fn target_blocks(
    members: &[NodeAddress<'_>],
    target: &str,
    block: &Block,
) -> Result<Vec<NodeBlock>> {
    Ok(resolve_indices(members, target)?
        .into_iter()
        .map(|index| (members[index].name.to_owned(), block.clone()))
        .collect())
}

/// Each of `from`'s nodes drops its output to `to`'s nodes.
fn one_way_blocks(members: &[NodeAddress<'_>], from: &str, to: &str) -> Result<Vec<NodeBlock>> {
    let senders = resolve_indices(members, from)?;
    let receivers = resolve_indices(members, to)?;
    if let Some(&shared) = senders.iter().find(|i| receivers.contains(i)) {
        bail!(
            "one way {from} -> {to}: node {} is on both ends",
            members[shared].name
        );
    }
    let block = Block {
        tag: ONE_WAY_TAG.into(),
        drop: Scope::OutgoingTo(receivers.iter().map(|&i| members[i].addr).collect()),
    };
    Ok(senders
        .iter()
        .map(|&i| (members[i].name.to_owned(), block.clone()))
        .collect())
}

/// Installs each block, each after its node's delay holder when `delay` is given; on the
/// first failure removes what was already installed, so a refused fault leaves nothing
/// behind.
fn block_each(fleet: &mut Fleet, plan: &[NodeBlock], delay: Option<DelaySpec>) -> Result<()> {
    for (done, (name, block)) in plan.iter().enumerate() {
        if let Err(error) = block_one(fleet, name, block, delay) {
            let undo = unblock_each(fleet, &plan[..done], delay.is_some());
            if let Err(undo) = undo {
                tracing::warn!(error = %format!("{undo:#}"), "undo a block");
            }
            return Err(error);
        }
    }
    Ok(())
}

fn block_one(fleet: &mut Fleet, name: &str, block: &Block, delay: Option<DelaySpec>) -> Result<()> {
    let Some(spec) = delay else {
        return fleet.block(name, block);
    };
    let Scope::Queue { num } = block.drop else {
        bail!("a delay needs a queue block, not {:?}", block.drop);
    };
    fleet.start_holder(name, &block.tag, num, spec)?;
    if let Err(error) = fleet.block(name, block) {
        if let Err(stop) = fleet.stop_holder(name, &block.tag) {
            tracing::warn!(node = %name, error = %format!("{stop:#}"), "stop a delay holder");
        }
        return Err(error);
    }
    Ok(())
}

/// Removes each block (and then its holder, with `holders`), going on past failures;
/// returns the first.
fn unblock_each(fleet: &mut Fleet, plan: &[NodeBlock], holders: bool) -> Result<()> {
    let mut first_error = None;
    for (name, block) in plan {
        if let Err(error) = fleet.unblock(name, &block.tag) {
            first_error.get_or_insert(error);
        }
        if holders && let Err(error) = fleet.stop_holder(name, &block.tag) {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Isolate { node } => write!(f, "isolate node {node}"),
            Fault::CutSite { site } => write!(f, "cut site {site} off"),
            Fault::Kill { node } => write!(f, "kill node {node}"),
            Fault::Pause { node } => write!(f, "pause node {node}"),
            Fault::Partition { groups } => {
                let groups: Vec<String> = groups
                    .iter()
                    .map(|g| format!("[{}]", g.join(" ")))
                    .collect();
                write!(f, "partition {}", groups.join(" | "))
            }
            Fault::OneWay { from, to } => write!(f, "drop {from} -> {to} one way"),
            Fault::Loss { target, percent } => write!(f, "{percent}% loss on {target}"),
            Fault::Delay {
                target,
                ms,
                jitter_ms: 0,
            } => write!(f, "{ms} ms delay on {target}"),
            Fault::Delay {
                target,
                ms,
                jitter_ms,
            } => write!(f, "{ms}±{jitter_ms} ms delay on {target}"),
        }
    }
}

#[cfg(test)]
mod tests;
