//! The `dns` step: `dig` against an agent's DNS server inside its namespace, checked as an
//! operator expectation.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Runner;
use crate::netns;

impl Runner<'_> {
    /// `dig @127.0.0.11 NAME A` inside the agent's namespace, checked as an expectation;
    /// asked again every [`DNS_RETRY_EVERY`] until it holds, within `bounds.within`.
    pub(super) fn dns(
        &mut self,
        node: &str,
        name: &str,
        bounds: DnsBounds,
        at: &str,
    ) -> Result<()> {
        let netns_name = self.fleet.node(node)?.host.netns.clone();
        let started = Instant::now();
        let (addresses, problems) = loop {
            let (addresses, problems) = dig(&netns_name, name, bounds)?;
            let out_of_time = bounds
                .within
                .is_none_or(|within| started.elapsed() + DNS_RETRY_EVERY > within);
            if problems.is_empty() || out_of_time {
                break (addresses, problems);
            }
            self.sleep(DNS_RETRY_EVERY)?;
        };
        let mut detail = format!("answer [{}]", addresses.join(" "));
        if bounds.within.is_some() {
            detail.push_str(&format!(" after {:.2}s", started.elapsed().as_secs_f64()));
        }
        let DnsBounds { min, max, .. } = bounds;
        let bounds = match (min, max) {
            (Some(a), Some(b)) if a == b => format!("exactly {a}"),
            (Some(a), Some(b)) => format!("{a} to {b}"),
            (Some(a), None) => format!("at least {a}"),
            (None, Some(b)) => format!("at most {b}"),
            (None, None) => "any number of".to_owned(),
        };
        let text = format!("DNS on {node}: {name} gives {bounds} addresses");
        let passed = self.expectation(at, text, &problems, &detail);
        self.event(
            at,
            "dns",
            &format!("dig {name} on {node}"),
            passed,
            Some(detail),
        );
        Ok(())
    }
}

/// How often a `dns` step with `within_s` asks again.
const DNS_RETRY_EVERY: Duration = Duration::from_millis(250);

/// What a `dns` step expects of the answer.
#[derive(Clone, Copy, Debug)]
pub(super) struct DnsBounds {
    pub(super) min: Option<usize>,
    pub(super) max: Option<usize>,
    pub(super) within: Option<Duration>,
}

/// One `dig +short NAME A` against the agent's DNS inside `netns_name`: the addresses, and
/// what about the answer breaks `bounds` (empty when it holds).
fn dig(netns_name: &str, name: &str, bounds: DnsBounds) -> Result<(Vec<String>, Vec<String>)> {
    let output = netns::exec_in(netns_name, "dig")
        .args(["+short", "+time=2", "+tries=1", "@127.0.0.11", name, "A"])
        .stdin(Stdio::null())
        .output()
        .context("run dig (install bind9-dnsutils)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let addresses: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
        .collect();
    let count = addresses.len();
    let mut problems = Vec::new();
    if !output.status.success() {
        problems.push(format!(
            "dig failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    if let Some(min) = bounds.min
        && count < min
    {
        problems.push(format!("{count} addresses, fewer than {min}"));
    }
    if let Some(max) = bounds.max
        && count > max
    {
        problems.push(format!("{count} addresses, more than {max}"));
    }
    Ok((addresses, problems))
}
