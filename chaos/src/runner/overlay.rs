//! The `overlay` step: every running agent pings every other running agent's WireGuard
//! overlay address from inside its namespace, from outside the nodes' own processes (the
//! `ping` of the namespace, not anything Warren runs); each pair's last try is recorded for
//! the `overlay_connectivity` invariant.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Result;
use warren_api::rest::NodeInfo;

use super::Runner;
use crate::fleet::Role;
use crate::netns;
use crate::record::OverlayProbe;

/// How often an `overlay` step with `within_s` tries the pairs that did not answer again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

impl Runner<'_> {
    /// Pings every ordered pair of running agents (among `only`, when it names any) across
    /// the overlay, retrying the silent pairs until `within` has passed.
    pub(super) fn overlay(&mut self, only: &[String], within: Duration, at: &str) -> Result<()> {
        self.learn_overlay_addresses();
        let pairs = self.overlay_pairs(only);
        let started = Instant::now();
        let mut results: Vec<(String, String, String, bool)> = Vec::new();
        let mut pending = pairs;
        loop {
            let mut silent = Vec::new();
            for (from, netns, to, address) in pending {
                if ping(&netns, &address) {
                    results.push((from, to, address, true));
                } else {
                    silent.push((from, netns, to, address));
                }
            }
            if silent.is_empty() || started.elapsed() + RETRY_EVERY > within {
                results.extend(silent.into_iter().map(|(f, _, t, a)| (f, t, a, false)));
                break;
            }
            pending = silent;
            self.sleep(RETRY_EVERY)?;
        }
        let t_ms = self.now_ms();
        let answered = results.iter().filter(|r| r.3).count();
        let total = results.len();
        for (from, to, address, ok) in results {
            self.record.overlay_probes.push(OverlayProbe {
                step: at.to_owned(),
                t_ms,
                from,
                to,
                address,
                answered: ok,
            });
        }
        let detail = format!(
            "{answered}/{total} pairs answered after {:.2}s",
            started.elapsed().as_secs_f64()
        );
        let ok = answered == total && total > 0;
        self.event(
            at,
            "overlay",
            "overlay pings between agents",
            ok,
            Some(detail),
        );
        Ok(())
    }

    /// Learns the agents' overlay addresses from `node ls`, if not known yet (the first step
    /// runs while control is up; later ones may not).
    fn learn_overlay_addresses(&mut self) {
        let agents = self
            .fleet
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Agent)
            .count();
        if self.overlay_addresses.len() == agents {
            return;
        }
        let Ok(nodes) = self.read_json::<Vec<NodeInfo>>(&["node", "ls"]) else {
            return;
        };
        for info in nodes {
            if let Some(mesh) = info.mesh.filter(|m| m.public_key.is_some()) {
                self.overlay_addresses
                    .insert(info.node.name.clone(), mesh.overlay_ip);
            }
        }
    }

    /// `(from, its namespace, to, to's address)` for every ordered pair of agents whose
    /// `warren` runs (among `only`, if it names any); an agent with no known address is a
    /// pair that cannot answer.
    fn overlay_pairs(&self, only: &[String]) -> Vec<(String, String, String, String)> {
        let running: Vec<_> = self
            .fleet
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Agent && n.pid().is_some())
            .filter(|n| only.is_empty() || only.contains(&n.name))
            .collect();
        let mut pairs = Vec::new();
        for from in &running {
            for to in running.iter().filter(|t| t.name != from.name) {
                let address = self
                    .overlay_addresses
                    .get(&to.name)
                    .cloned()
                    .unwrap_or_else(|| "(no overlay address)".to_owned());
                pairs.push((
                    from.name.clone(),
                    from.host.netns.clone(),
                    to.name.clone(),
                    address,
                ));
            }
        }
        pairs
    }
}

/// One ping from `netns` to `address`, answered within a second.
fn ping(netns: &str, address: &str) -> bool {
    if address.parse::<std::net::Ipv4Addr>().is_err() {
        return false;
    }
    netns::exec_in(netns, "ping")
        .args(["-c", "1", "-W", "1", address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
