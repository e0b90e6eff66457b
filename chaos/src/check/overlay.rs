//! `overlay_connectivity`: at every `overlay` step, every running agent reached every other
//! running agent's WireGuard overlay address (pinged from inside its namespace).

use super::{InvariantResult, at};
use crate::record::Record;

pub(super) fn overlay_connectivity(record: &Record) -> InvariantResult {
    const NAME: &str = "overlay_connectivity";
    let probes = &record.overlay_probes;
    if probes.is_empty() {
        return InvariantResult::not_exercised(NAME, "no overlay step ran");
    }
    let silent: Vec<String> = probes
        .iter()
        .filter(|p| !p.answered)
        .map(|p| {
            format!(
                "step {}: {} could not reach {} at {} ({})",
                p.step,
                p.from,
                p.to,
                p.address,
                at(p.t_ms)
            )
        })
        .collect();
    let steps: std::collections::BTreeSet<&str> = probes.iter().map(|p| p.step.as_str()).collect();
    InvariantResult::fail_or_pass(
        NAME,
        !silent.is_empty(),
        format!(
            "{} of {} overlay pings unanswered",
            silent.len(),
            probes.len()
        ),
        format!(
            "{} overlay pings over {} steps, every one answered",
            probes.len(),
            steps.len()
        ),
        silent,
    )
}
