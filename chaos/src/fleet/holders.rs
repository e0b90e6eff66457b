//! The delay holders that `Delay` faults start inside nodes' namespaces, kept by the fleet
//! so a reboot can start them again and teardown can stop them.

use std::fs::File;

use anyhow::{Context, Result, anyhow, bail};

use super::{Fleet, Node};
use crate::delay::{DelaySpec, Holder};

impl Fleet {
    /// Starts a delay holder for `queue` in `name`'s namespace, kept under `tag`, and waits
    /// until it has bound the queue.
    ///
    /// # Errors
    /// When one runs there under `tag` already, or it does not start ([`Holder::start`]).
    pub fn start_holder(
        &mut self,
        name: &str,
        tag: &str,
        queue: u16,
        spec: DelaySpec,
    ) -> Result<()> {
        let key = (name.to_owned(), tag.to_owned());
        if self.holders.contains_key(&key) {
            bail!("node {name} has a delay holder for {tag} already");
        }
        let holder = self.spawn_holder(name, queue, spec)?;
        self.holders.insert(key, (queue, spec, holder));
        Ok(())
    }

    fn spawn_holder(&self, name: &str, queue: u16, spec: DelaySpec) -> Result<Holder> {
        let node = self.node(name)?;
        let path = self.options.run_dir.join(name).join("delay-holder.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        Holder::start(
            &self.options.holder_program,
            &node.host.netns,
            queue,
            spec,
            log.into(),
        )
    }

    /// Stops the delay holder kept under `tag` in `name`'s namespace: it lets what it holds
    /// through and exits.
    ///
    /// # Errors
    /// When there is none, or it had to be killed.
    pub fn stop_holder(&mut self, name: &str, tag: &str) -> Result<()> {
        let (_, _, holder) = self
            .holders
            .remove(&(name.to_owned(), tag.to_owned()))
            .ok_or_else(|| anyhow!("node {name} has no delay holder for {tag}"))?;
        holder.stop()
    }

    /// Starts again every delay holder of `name` that died (a reboot killed every process
    /// in its namespace): a delay is on the link, and a reboot of the host does not heal it.
    ///
    /// # Errors
    /// When one does not start.
    pub fn revive_holders(&mut self, name: &str) -> Result<()> {
        let keys: Vec<(String, String)> = self
            .holders
            .keys()
            .filter(|(node, _)| node == name)
            .cloned()
            .collect();
        for key in keys {
            let Some((queue, spec, mut holder)) = self.holders.remove(&key) else {
                continue;
            };
            if holder.running() {
                self.holders.insert(key, (queue, spec, holder));
                continue;
            }
            // Reaped by `running`; its queue has no reader, so traffic passes until the new
            // one binds it.
            let _ = holder.stop();
            tracing::info!(node = %name, tag = %key.1, "restart the delay holder");
            let holder = self.spawn_holder(name, queue, spec)?;
            self.holders.insert(key, (queue, spec, holder));
        }
        Ok(())
    }

    /// Pids of the harness's own helpers (delay holders, the agent's containerd) in `name`'s
    /// namespace: they are neither `warren` nor workloads.
    pub fn helper_pids(&self, name: &str) -> Vec<u32> {
        let containerd = self.node(name).ok().and_then(Node::containerd_pid);
        self.holders
            .iter()
            .filter(|((node, _), _)| node == name)
            .map(|(_, (_, _, holder))| holder.pid())
            .chain(containerd)
            .collect()
    }
}
