//! `converges_after_heal`: every `converge` step converged within its bound.

use super::{InvariantResult, at, secs};
use crate::record::Record;

pub(super) fn converges_after_heal(record: &Record) -> InvariantResult {
    const NAME: &str = "converges_after_heal";
    if record.convergences.is_empty() {
        return InvariantResult::not_exercised(NAME, "no converge step");
    }
    let evidence: Vec<String> = record
        .convergences
        .iter()
        .map(|c| match c.took_ms {
            Some(took) => format!(
                "step {}: converged {:.2}s after {} (bound {:.0}s)",
                c.step,
                secs(took),
                at(c.from_ms),
                secs(c.bound_ms)
            ),
            None => format!(
                "step {}: not converged {:.0}s after {}: {}",
                c.step,
                secs(c.bound_ms),
                at(c.from_ms),
                c.detail
            ),
        })
        .collect();
    let failed = record
        .convergences
        .iter()
        .filter(|c| c.took_ms.is_none())
        .count();
    InvariantResult::fail_or_pass(
        NAME,
        failed > 0,
        format!(
            "{failed} of {} converge steps missed their bound",
            record.convergences.len()
        ),
        format!(
            "{} converge steps within their bound",
            record.convergences.len()
        ),
        evidence,
    )
}
