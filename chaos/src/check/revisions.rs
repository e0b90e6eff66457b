//! `agents_never_go_back`: no agent's view revision ever decreased.

use super::{InvariantResult, Verdict, at};
use crate::observe::History;

pub(super) fn agents_never_go_back(history: &History) -> InvariantResult {
    const NAME: &str = "agents_never_go_back";
    if !history.regressions.is_empty() {
        return InvariantResult::new(
            NAME,
            Verdict::Fail,
            format!("{} revision steps back", history.regressions.len()),
            history
                .regressions
                .iter()
                .map(|r| {
                    format!(
                        "{} went from revision {} to {} at {}",
                        r.node,
                        r.from,
                        r.to,
                        at(r.t_ms)
                    )
                })
                .collect(),
        );
    }
    let changes: usize = history.revisions.values().map(Vec::len).sum();
    if changes == 0 {
        return InvariantResult::not_exercised(NAME, "no agent reported a revision");
    }
    InvariantResult::new(
        NAME,
        Verdict::Pass,
        format!(
            "{changes} revision changes on {} agents over {} samples, none backwards",
            history.revisions.len(),
            history.samples
        ),
        history
            .revisions
            .iter()
            .map(|(node, series)| {
                let revs: Vec<String> = series.iter().map(|(_, r)| r.to_string()).collect();
                format!("{node}: {}", revs.join(" → "))
            })
            .collect(),
    )
}
