//! `operator_expectations`: every CLI and DNS step did what the scenario said it must.

use super::InvariantResult;
use crate::record::Record;

pub(super) fn operator_expectations(record: &Record) -> InvariantResult {
    const NAME: &str = "operator_expectations";
    if record.expectations.is_empty() {
        return InvariantResult::not_exercised(NAME, "no CLI step stated an expectation");
    }
    let failed = record.expectations.iter().filter(|e| !e.passed).count();
    let evidence = record
        .expectations
        .iter()
        .map(|e| {
            format!(
                "step {} {}: {} ({})",
                e.step,
                e.text,
                if e.passed { "held" } else { "VIOLATED" },
                e.detail
            )
        })
        .collect();
    InvariantResult::fail_or_pass(
        NAME,
        failed > 0,
        format!(
            "{failed} of {} expectations violated",
            record.expectations.len()
        ),
        format!("{} expectations held", record.expectations.len()),
        evidence,
    )
}
