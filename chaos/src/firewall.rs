//! Block rules inside one namespace, with nftables or iptables.
//!
//! A [`Block`] has a tag (one rule set per tag and namespace, so faults can overlap and heal
//! independently) and says what it drops: everything, traffic with some peers (both ways or
//! outgoing only), or a random share of every packet; or it hands every outgoing packet to an
//! NFQUEUE, where the delay holder keeps it for a while ([`Scope::Queue`]). The rule text is built by pure functions
//! ([`nft_script`], [`iptables_apply`], [`iptables_heal`]); [`Firewall::block`] and
//! [`Firewall::unblock`] run it inside the namespace. Loopback always passes: a node cut off
//! from the network still talks to itself (its workloads, its local socket).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::netns::exec_in;
use crate::preflight::on_path;

/// Which tool writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firewall {
    /// `nft`: one `inet` table per block (IPv4 and IPv6).
    Nft,
    /// `iptables`: two chains per block (IPv4 only; the fleet uses IPv4 only).
    Iptables,
}

/// What a block drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything except loopback, both ways.
    All,
    /// Traffic to and from these addresses.
    Peers(Vec<Ipv4Addr>),
    /// Traffic to these addresses only: what they send still arrives (a one-way drop).
    OutgoingTo(Vec<Ipv4Addr>),
    /// `percent` of every packet except loopback, chosen at random, both ways
    /// (1..=100; [`Firewall::block`] refuses anything else).
    RandomLoss { percent: u8 },
    /// Every packet the namespace sends, except loopback, goes to NFQUEUE `num` for a
    /// program there to hold ([`crate::delay`]); output only. With no program bound to the
    /// queue, packets pass (`bypass`) rather than being dropped. The rules run after the
    /// drop rules of other blocks, so a dropped packet is never held first.
    Queue { num: u16 },
}

/// One set of rules in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Lowercase letters, digits and `_` (it becomes part of a table or chain name).
    pub tag: String,
    pub drop: Scope,
}

impl Firewall {
    /// `nft` if installed, else `iptables`, else `None`.
    pub fn detect() -> Option<Firewall> {
        if on_path("nft") {
            Some(Firewall::Nft)
        } else if on_path("iptables") {
            Some(Firewall::Iptables)
        } else {
            None
        }
    }

    /// The program this backend runs.
    pub fn program(self) -> &'static str {
        match self {
            Firewall::Nft => "nft",
            Firewall::Iptables => "iptables",
        }
    }

    /// Installs `block` in `netns`.
    ///
    /// # Errors
    /// When the tag is malformed or already in use there, a loss percentage is outside
    /// 1..=100, or the tool fails.
    pub fn block(self, netns: &str, block: &Block) -> Result<()> {
        check_tag(&block.tag)?;
        check_scope(&block.drop)?;
        match self {
            Firewall::Nft => match run_nft(netns, &nft_script(block)) {
                Err(error) if nft_lacks_queue(block, &error) && on_path("iptables") => {
                    tracing::info!(
                        netns,
                        tag = %block.tag,
                        "this kernel has no nft queue expression; queueing with iptables' NFQUEUE"
                    );
                    run_iptables_all(netns, &iptables_apply(block))
                }
                Err(error) if nft_lacks_queue(block, &error) => Err(error.context(
                    "this kernel has no nft queue expression: install iptables (its NFQUEUE \
                     target) to delay here",
                )),
                other => other,
            },
            Firewall::Iptables => run_iptables_all(netns, &iptables_apply(block)),
        }
        .with_context(|| format!("block {} in {netns}", block.tag))
    }

    /// Removes the block tagged `tag` from `netns`.
    ///
    /// # Errors
    /// When there is no such block or the tool fails.
    pub fn unblock(self, netns: &str, tag: &str) -> Result<()> {
        check_tag(tag)?;
        match self {
            Firewall::Nft => {
                match run_nft(netns, &format!("delete table inet {}\n", nft_table(tag))) {
                    // A queue block may have gone in through iptables ([`Firewall::block`]).
                    Err(error) if on_path("iptables") => {
                        run_iptables_all(netns, &iptables_heal(tag)).map_err(|_| error)
                    }
                    other => other,
                }
            }
            Firewall::Iptables => run_iptables_all(netns, &iptables_heal(tag)),
        }
        .with_context(|| format!("unblock {tag} in {netns}"))
    }
}

/// Whether `error` from installing `block` with nft means the kernel lacks nft's `queue`
/// expression (`CONFIG_NFT_QUEUE` unset, as on our machines, while iptables' `NFQUEUE`
/// target is there): nft then answers "No such file or directory" for the rule.
fn nft_lacks_queue(block: &Block, error: &anyhow::Error) -> bool {
    matches!(block.drop, Scope::Queue { .. })
        && format!("{error:#}").contains("No such file or directory")
}

fn run_iptables_all(netns: &str, commands: &[Vec<String>]) -> Result<()> {
    for args in commands {
        run_iptables(netns, args)?;
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 16
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        bail!("block tag {tag:?}: use 1-16 of a-z, 0-9, _");
    }
    Ok(())
}

fn check_scope(scope: &Scope) -> Result<()> {
    match scope {
        Scope::RandomLoss { percent } if !(1..=100).contains(percent) => {
            bail!("loss of {percent}%: use 1-100")
        }
        _ => Ok(()),
    }
}

fn nft_table(tag: &str) -> String {
    format!("wchaos_{tag}")
}

fn iptables_chains(tag: &str) -> (String, String) {
    let upper = tag.to_ascii_uppercase();
    (format!("WCHAOS-{upper}-IN"), format!("WCHAOS-{upper}-OUT"))
}

fn address_set(addrs: &[Ipv4Addr]) -> String {
    let list: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

/// The nft script that creates `block` (its own table: `nft -f` applies it atomically).
pub fn nft_script(block: &Block) -> String {
    let (input, output) = match &block.drop {
        Scope::All => (
            "iifname \"lo\" accept\n    drop".to_owned(),
            "oifname \"lo\" accept\n    drop".to_owned(),
        ),
        Scope::Peers(addrs) if addrs.is_empty() => (String::new(), String::new()),
        Scope::Peers(addrs) => (
            format!("ip saddr {} drop", address_set(addrs)),
            format!("ip daddr {} drop", address_set(addrs)),
        ),
        Scope::OutgoingTo(addrs) if addrs.is_empty() => (String::new(), String::new()),
        Scope::OutgoingTo(addrs) => (
            String::new(),
            format!("ip daddr {} drop", address_set(addrs)),
        ),
        // `accept` ends this table's chain only: another table's drop still applies.
        Scope::Queue { num } => (
            String::new(),
            format!("oifname \"lo\" accept\n    queue num {num} bypass"),
        ),
        Scope::RandomLoss { percent } => {
            let drop = nft_random_drop(*percent);
            (
                format!("iifname \"lo\" accept\n    {drop}"),
                format!("oifname \"lo\" accept\n    {drop}"),
            )
        }
    };
    // `create` fails when the table exists: a tag is in use once per namespace.
    format!(
        "create table inet {table}\ntable inet {table} {{\n  \
           chain input {{\n    type filter hook input priority {priority}; policy accept;\n    {input}\n  }}\n  \
           chain output {{\n    type filter hook output priority {priority}; policy accept;\n    {output}\n  }}\n\
         }}\n",
        table = nft_table(&block.tag),
        priority = nft_priority(&block.drop),
    )
}

/// Drop rules run at -10; a queue runs at 10, after every drop rule of every other table
/// (and after iptables' filter chains at 0), so a packet that another fault drops is never
/// held first. A packet the holder accepts goes on to the hooks after its table.
fn nft_priority(scope: &Scope) -> i32 {
    match scope {
        Scope::Queue { .. } => 10,
        _ => -10,
    }
}

/// Drops `percent` of packets: nft refuses `mod 100 < 100` (the value must be below 100),
/// so a total loss is a plain drop.
fn nft_random_drop(percent: u8) -> String {
    if percent >= 100 {
        "drop".to_owned()
    } else {
        format!("numgen random mod 100 < {percent} drop")
    }
}

/// The iptables invocations (argument lists) that create `block`.
pub fn iptables_apply(block: &Block) -> Vec<Vec<String>> {
    let (chain_in, chain_out) = iptables_chains(&block.tag);
    let mut commands = vec![args(&["-N", &chain_in]), args(&["-N", &chain_out])];
    match &block.drop {
        Scope::All => {
            commands.push(args(&["-A", &chain_in, "-i", "lo", "-j", "RETURN"]));
            commands.push(args(&["-A", &chain_in, "-j", "DROP"]));
            commands.push(args(&["-A", &chain_out, "-o", "lo", "-j", "RETURN"]));
            commands.push(args(&["-A", &chain_out, "-j", "DROP"]));
        }
        Scope::Peers(addrs) => {
            for addr in addrs {
                let addr = addr.to_string();
                commands.push(args(&["-A", &chain_in, "-s", &addr, "-j", "DROP"]));
                commands.push(args(&["-A", &chain_out, "-d", &addr, "-j", "DROP"]));
            }
        }
        Scope::OutgoingTo(addrs) => {
            for addr in addrs {
                let addr = addr.to_string();
                commands.push(args(&["-A", &chain_out, "-d", &addr, "-j", "DROP"]));
            }
        }
        Scope::Queue { num } => {
            let num = num.to_string();
            commands.push(args(&["-A", &chain_out, "-o", "lo", "-j", "RETURN"]));
            commands.push(args(&[
                "-A",
                &chain_out,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &num,
                "--queue-bypass",
            ]));
        }
        Scope::RandomLoss { percent } => {
            let probability = iptables_probability(*percent);
            let random = ["-m", "statistic", "--mode", "random", "--probability"];
            for (chain, interface) in [(&chain_in, "-i"), (&chain_out, "-o")] {
                commands.push(args(&["-A", chain, interface, "lo", "-j", "RETURN"]));
                let mut drop = args(&["-A", chain]);
                drop.extend(args(&random));
                drop.extend(args(&[&probability, "-j", "DROP"]));
                commands.push(drop);
            }
        }
    }
    // Jumps last: the chains are complete before any packet reaches them.
    commands.push(args(&["-I", "INPUT", "1", "-j", &chain_in]));
    if matches!(block.drop, Scope::Queue { .. }) {
        // Appended, not inserted: a packet the holder accepts leaves the OUTPUT chain there
        // (the rules after the jump never see it), so the queue comes after every drop rule,
        // those of blocks installed later included (they insert at the top).
        commands.push(args(&["-A", "OUTPUT", "-j", &chain_out]));
    } else {
        commands.push(args(&["-I", "OUTPUT", "1", "-j", &chain_out]));
    }
    commands
}

/// `percent` as the probability `statistic` takes, in exact decimal (`30` → `0.30`).
fn iptables_probability(percent: u8) -> String {
    format!("{}.{:02}", percent / 100, percent % 100)
}

/// The iptables invocations that remove the block tagged `tag`.
pub fn iptables_heal(tag: &str) -> Vec<Vec<String>> {
    let (chain_in, chain_out) = iptables_chains(tag);
    vec![
        args(&["-D", "INPUT", "-j", &chain_in]),
        args(&["-D", "OUTPUT", "-j", &chain_out]),
        args(&["-F", &chain_in]),
        args(&["-F", &chain_out]),
        args(&["-X", &chain_in]),
        args(&["-X", &chain_out]),
    ]
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn run_nft(netns: &str, script: &str) -> Result<()> {
    let mut child = exec_in(netns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start nft")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .context("write the nft script")?;
    let output = child.wait_with_output().context("wait for nft")?;
    if !output.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn run_iptables(netns: &str, args: &[String]) -> Result<()> {
    let output = exec_in(netns, "iptables")
        .args(["-w", "5"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run iptables")?;
    if !output.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
