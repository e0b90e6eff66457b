//! `no_acknowledged_write_lost`: every acknowledged write is still there at the end.

use std::collections::BTreeMap;

use super::{FinalState, InvariantResult, Verdict, at};
use crate::record::Record;
use crate::scenario::Write;

/// What a service may look like after a write: absent, or present with these replicas
/// (`None`: any count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Absent,
    Present(Option<u32>),
}

impl Outcome {
    fn admits(self, actual: Option<Option<u32>>) -> bool {
        match (self, actual) {
            (Outcome::Absent, None) => true,
            (Outcome::Present(None), Some(_)) => true,
            (Outcome::Present(Some(want)), Some(got)) => got == Some(want),
            _ => false,
        }
    }
}

/// Lost writes, each with the line of evidence saying why.
pub(super) fn lost_writes(record: &Record, end: &FinalState) -> Vec<String> {
    let mut lost = Vec::new();
    if let Some(services) = &end.services {
        let mut by_service: BTreeMap<&str, Vec<&crate::record::WriteRecord>> = BTreeMap::new();
        for write in &record.writes {
            if let Some(service) = write.write.service() {
                by_service.entry(service).or_default().push(write);
            }
        }
        for (service, writes) in by_service {
            let Some(last_acked) = writes.iter().rposition(|w| w.acked) else {
                continue;
            };
            // The last acknowledged write's outcome, or one of a later unacknowledged write
            // (its outcome is unknown: it may have applied).
            let mut allowed = Vec::new();
            for (index, write) in writes.iter().enumerate() {
                let outcome = match &write.write {
                    // `None`: global; any count is fine.
                    Write::Create { replicas, .. } => Outcome::Present(*replicas),
                    Write::Scale { replicas, .. } => Outcome::Present(Some(*replicas)),
                    // An update may change the count too (`--replicas`): any count.
                    Write::Update { .. } => Outcome::Present(None),
                    Write::Remove { .. } => Outcome::Absent,
                    Write::RemoveNode { .. } => continue,
                };
                if index >= last_acked {
                    allowed.push(outcome);
                }
            }
            let actual = services.get(service).copied();
            if !allowed.iter().any(|o| o.admits(actual)) {
                let write = writes[last_acked];
                let found = match actual {
                    None => "absent".to_owned(),
                    Some(None) => "present (global)".to_owned(),
                    Some(Some(n)) => format!("present with {n} replicas"),
                };
                lost.push(format!(
                    "step {} `warren {}` acknowledged at {}, but service {service} is {found} at the end",
                    write.step,
                    write.command,
                    at(write.done_ms)
                ));
            }
        }
    }
    if let Some(nodes) = &end.nodes {
        for write in record.writes.iter().filter(|w| w.acked) {
            if let Write::RemoveNode { node } = &write.write
                && nodes.contains(node)
            {
                lost.push(format!(
                    "step {} `warren {}` acknowledged at {}, but node {node} is still registered",
                    write.step,
                    write.command,
                    at(write.done_ms)
                ));
            }
        }
    }
    lost
}

pub(super) fn no_acknowledged_write_lost(
    record: &Record,
    end: &FinalState,
    lost: &[String],
) -> InvariantResult {
    const NAME: &str = "no_acknowledged_write_lost";
    let acked = record.writes.iter().filter(|w| w.acked).count();
    if end.services.is_none() || end.nodes.is_none() {
        return InvariantResult::new(
            NAME,
            Verdict::Fail,
            "the control plane could not be read at the end, so no write can be confirmed".into(),
            Vec::new(),
        );
    }
    if acked == 0 {
        return InvariantResult::not_exercised(NAME, "no write was acknowledged");
    }
    let unacked = record.writes.len() - acked;
    if lost.is_empty() {
        InvariantResult::new(
            NAME,
            Verdict::Pass,
            format!(
                "{acked} acknowledged writes all present at the end ({unacked} unacknowledged)"
            ),
            Vec::new(),
        )
    } else {
        InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!("{} of {acked} acknowledged writes lost", lost.len()),
            lost.to_vec(),
        )
    }
}
