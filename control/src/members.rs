//! The control members as clients see them: each member's advertised API address, read from the
//! Raft membership, and a wait for the next change of that list.
//!
//! The API sends the list with every answer (`warren_api::rest::MEMBERS_HEADER`), and the init
//! node keeps the admin config in its data dir current with it; both read it here.

use crate::control::Control;

/// The advertised API addresses (`HOST:PORT`) of the control members, voters and learners, in
/// node-id order, as this node's membership says (the latest it has seen, which on a node that
/// lags behind the leader can be an older one).
pub fn api_addrs(control: &Control) -> Vec<String> {
    let metrics = control.raft().metrics();
    let metrics = metrics.borrow();
    metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(_, member)| member.api_addr.clone())
        .filter(|addr| !addr.is_empty())
        .collect()
}

/// Waits until [`api_addrs`] differs from `known` and returns the new list; at once if it
/// already differs. `None` once the Raft node has shut down.
///
/// # Cancel safety
/// Cancel safe: it only watches.
pub async fn api_addrs_changed(control: &Control, known: &[String]) -> Option<Vec<String>> {
    let mut metrics = control.raft().metrics();
    loop {
        metrics.borrow_and_update();
        let current = api_addrs(control);
        if current != known {
            return Some(current);
        }
        metrics.changed().await.ok()?;
    }
}
