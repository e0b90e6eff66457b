//! Fault steps: `fault`, `heal`, `heal_all` and `flap`, each recorded as a window of the
//! run's timeline.

use std::time::Duration;

use anyhow::{Result, anyhow};

use super::Runner;
use crate::fault::Fault;
use crate::record::Window;

impl Runner<'_> {
    pub(super) fn apply(&mut self, fault: &Fault, at: &str) -> Result<()> {
        fault.apply(self.fleet)?;
        let from_ms = self.now_ms();
        self.record.windows.push(Window {
            fault: fault.to_string(),
            from_ms,
            to_ms: None,
            network: is_network(fault),
        });
        self.active
            .push((fault.clone(), self.record.windows.len() - 1));
        self.event(at, "fault", &fault.to_string(), true, None);
        Ok(())
    }

    pub(super) fn heal(&mut self, fault: &Fault, at: &str) -> Result<()> {
        let index = self
            .active
            .iter()
            .position(|(f, _)| f == fault)
            .ok_or_else(|| anyhow!("heal `{fault}`: not in place"))?;
        let (fault, window) = self.active.remove(index);
        fault.heal(self.fleet)?;
        let to_ms = self.now_ms();
        self.record.windows[window].to_ms = Some(to_ms);
        self.event(at, "heal", &format!("heal: {fault}"), true, None);
        Ok(())
    }

    /// Heals every fault in place, latest first, going on past a failure (the first is
    /// returned): one fault that cannot be healed must not leave the others in place.
    pub(super) fn heal_all(&mut self, at: &str) -> Result<()> {
        let mut first_error = None;
        while let Some((fault, _)) = self.active.last().cloned() {
            if let Err(error) = self.heal(&fault, at) {
                // Forget it either way, or the loop would never end; teardown removes it.
                self.active.retain(|(f, _)| *f != fault);
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Applies and heals `fault` `times` times: `down_s` applied, `up_s` healed.
    pub(super) fn flap(
        &mut self,
        fault: &Fault,
        times: u32,
        down_s: f64,
        up_s: f64,
        at: &str,
    ) -> Result<()> {
        for round in 1..=times {
            let at = format!("{at}.{round}");
            self.apply(fault, &at)?;
            self.sleep(Duration::from_secs_f64(down_s))?;
            self.heal(fault, &at)?;
            self.sleep(Duration::from_secs_f64(up_s))?;
        }
        Ok(())
    }
}

/// Whether a fault cuts the network (the others stop processes).
fn is_network(fault: &Fault) -> bool {
    !matches!(fault, Fault::Kill { .. } | Fault::Pause { .. })
}
