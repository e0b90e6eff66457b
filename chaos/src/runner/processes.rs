//! Process steps: `kill_workload`, `reboot`, `restart` and `kill_leader`.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use rustix::process::Signal;
use warren_api::rest::ClusterStatus;

use super::Runner;
use crate::fault::Fault;
use crate::netns;
use crate::record::{Failover, Kill, Reboot};

impl Runner<'_> {
    pub(super) fn kill_workload(&mut self, node: &str, service: &str, at: &str) -> Result<()> {
        self.observer.sample_now(&self.watched, self.epoch);
        let victim = self.observer.with(|h| {
            h.alive_on(node)
                .into_iter()
                .find(|w| w.service == service)
                .map(|w| (w.replica.clone(), w.pid))
        });
        let (replica, pid) =
            victim.ok_or_else(|| anyhow!("no running workload of {service} on {node}"))?;
        netns::signal(pid, Signal::KILL)?;
        let t_ms = self.now_ms();
        self.record.kills.push(Kill {
            node: node.to_owned(),
            replica: replica.clone(),
            pid,
            t_ms,
        });
        self.event(
            at,
            "kill_workload",
            &format!("kill -9 {replica} on {node} (pid {pid})"),
            true,
            None,
        );
        Ok(())
    }

    pub(super) fn reboot(&mut self, node: &str, at: &str) -> Result<()> {
        let netns_name = self.fleet.node(node)?.host.netns.clone();
        // What was alive right before: only that is explained by the power-off.
        self.observer.sample_now(&self.watched, self.epoch);
        let t_ms = self.observer.with(|h| h.last_sample_ms);
        self.record.reboots.push(Reboot {
            node: node.to_owned(),
            t_ms,
        });
        if self.fleet.node(node)?.pid().is_some() {
            self.fleet.kill(node)?;
        }
        netns::kill_all_in(&netns_name)?;
        self.event(
            at,
            "reboot",
            &format!("power off {node}: agent and every workload killed"),
            true,
            None,
        );
        // A delay in place stays in place: its holder died with the rest.
        self.fleet.revive_holders(node)?;
        self.fleet.restart(node)?;
        self.event(at, "reboot", &format!("{node} booted again"), true, None);
        Ok(())
    }

    pub(super) fn kill_leader(&mut self, at: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            let status: Result<ClusterStatus> = self.read_json(&["cluster", "status"]);
            if let Ok(status) = status
                && let Some(leader) = status.members.iter().find(|m| m.leader)
            {
                break leader.name.clone();
            }
            if Instant::now() >= deadline {
                bail!("no leader known within 30s");
            }
            self.sleep(Duration::from_millis(250))?;
        };
        let fault = Fault::Kill {
            node: leader.clone(),
        };
        self.apply(&fault, at)?;
        let t_ms = self.now_ms();
        self.record.failovers.push(Failover {
            killed: leader,
            t_ms,
            first_write_ms: None,
        });
        self.pending_failover = Some(self.record.failovers.len() - 1);
        Ok(())
    }

    /// SIGKILL of a node's `warren`, started again right away.
    pub(super) fn restart(&mut self, node: &str, at: &str) -> Result<()> {
        self.fleet.kill(node)?;
        self.fleet.restart(node)?;
        self.event(at, "restart", &format!("restart node {node}"), true, None);
        Ok(())
    }
}
