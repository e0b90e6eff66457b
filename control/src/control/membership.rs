//! Membership changes on the leader, one at a time: a joined control node becomes a learner,
//! receives the log and becomes a voter; a control node is removed; an unfinished join is
//! undone.
//!
//! openraft 0.9 refuses a membership change while the previous one is uncommitted, so every
//! change here holds the leader's [`Gate`]. A request that finds the gate taken waits up to
//! [`MEMBERSHIP_BUSY_WAIT`], then answers [`ProposeError::MembershipBusy`] naming the change in
//! progress; a joiner says so on its terminal and asks again. openraft's own refusal of that
//! kind (a change an earlier leader left uncommitted) is retried within the write timeout.
//!
//! A join that fails leaves nothing behind. The leader undoes it at once when adding the node
//! failed for good (the learner never received the log); a joiner that goes silent before it
//! is a voter is undone by the leader's sweep after [`super::Timeouts::join_abandoned_after`].
//! Undoing takes the learner out of the Raft membership and proposes [`Op::AbandonJoin`], which
//! drops the node entry, revokes its certificate and gives a single-use token its use back.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::raft::ClientWriteResponse;
use tracing::{debug, info, warn};
use warren_api::NodeId;
use warren_api::clock::unix_now_ms;

use super::{Control, write_error};
use crate::command::{Op, Outcome};
use crate::rpc::{ClusterSecrets, ProposeError};
use crate::state::PendingJoin;
use crate::types::{RaftMember, TypeConfig};

/// How long a membership request waits for the change in progress before it answers
/// [`ProposeError::MembershipBusy`] (a joiner then asks again).
pub const MEMBERSHIP_BUSY_WAIT: Duration = Duration::from_millis(500);

/// Pause before asking openraft again when it refuses a change because the previous one is not
/// committed yet.
const IN_PROGRESS_RETRY: Duration = Duration::from_millis(100);

type MembershipWrite =
    Result<ClientWriteResponse<TypeConfig>, RaftError<u64, ClientWriteError<u64, RaftMember>>>;

/// The leader's membership lock, what its holder is doing, and which joiners it has heard.
#[derive(Debug, Default)]
pub(super) struct Gate {
    lock: tokio::sync::Mutex<()>,
    doing: std::sync::Mutex<String>,
    heard: std::sync::Mutex<BTreeMap<NodeId, Heard>>,
}

/// What this node, as leader, knows of a joiner's requests to become a member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Heard {
    /// Requests being answered now (waiting for the gate, or being carried out).
    pub in_flight: u32,
    /// When a request last arrived or was answered (unix ms).
    pub last_ms: u64,
}

/// The gate, held; names what for until dropped.
pub(super) struct Held<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    gate: &'a Gate,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        lock(&self.gate.doing).clear();
    }
}

/// A joiner's request being answered: counted in flight until dropped.
struct Hearing<'a> {
    gate: &'a Gate,
    node: NodeId,
}

impl Drop for Hearing<'_> {
    fn drop(&mut self) {
        let mut heard = lock(&self.gate.heard);
        let entry = heard.entry(self.node).or_default();
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.last_ms = unix_now_ms();
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    /// Takes the gate for `doing`, waiting up to `wait` for the change in progress.
    pub(super) async fn enter(
        &self,
        doing: String,
        wait: Duration,
    ) -> Result<Held<'_>, ProposeError> {
        match tokio::time::timeout(wait, self.lock.lock()).await {
            Ok(guard) => Ok(self.held(guard, doing)),
            Err(_) => Err(self.busy()),
        }
    }

    /// Takes the gate only if it is free.
    fn try_enter(&self, doing: String) -> Option<Held<'_>> {
        let guard = self.lock.try_lock().ok()?;
        Some(self.held(guard, doing))
    }

    fn held<'a>(&'a self, guard: tokio::sync::MutexGuard<'a, ()>, doing: String) -> Held<'a> {
        *lock(&self.doing) = doing;
        Held {
            _guard: guard,
            gate: self,
        }
    }

    fn busy(&self) -> ProposeError {
        let doing = lock(&self.doing).clone();
        ProposeError::MembershipBusy(if doing.is_empty() {
            "a membership change".into()
        } else {
            doing
        })
    }

    fn hear(&self, node: NodeId) -> Hearing<'_> {
        let mut heard = lock(&self.heard);
        let entry = heard.entry(node).or_default();
        entry.in_flight += 1;
        entry.last_ms = unix_now_ms();
        Hearing { gate: self, node }
    }

    /// What is known of joiners, keeping only those `keep` names (the unfinished joins).
    fn heard(&self, keep: impl Fn(&NodeId) -> bool) -> BTreeMap<NodeId, Heard> {
        let mut heard = lock(&self.heard);
        heard.retain(|node, h| h.in_flight > 0 || keep(node));
        heard.clone()
    }
}

/// The unfinished joins to undo at `now_ms`: those with no request being answered, unheard of
/// for `after` — counted from the latest of the join itself, this node's leadership (a new
/// leader has heard no requests yet) and the joiner's last request.
pub(crate) fn abandoned_joins(
    pending: &BTreeMap<NodeId, PendingJoin>,
    heard: &BTreeMap<NodeId, Heard>,
    leader_since_ms: u64,
    now_ms: u64,
    after: Duration,
) -> Vec<NodeId> {
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    pending
        .iter()
        .filter(|(node, join)| {
            let heard = heard.get(node).copied().unwrap_or_default();
            let quiet_since = join.since_ms.max(leader_since_ms).max(heard.last_ms);
            heard.in_flight == 0 && now_ms.saturating_sub(quiet_since) >= after_ms
        })
        .map(|(node, _)| *node)
        .collect()
}

/// Where a joining control node stands, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JoinStage {
    /// Registered by its join, not a voter yet.
    Pending,
    /// A voter, but the configuration change that made it one is not finished.
    JointVoter,
    /// A voter.
    Voter,
    /// Neither: its join was undone (or never happened).
    Gone,
}

/// A duration as people write it (`30s`, `1.5s`).
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

impl Control {
    /// Adds a joined control node as a voter (leader only): a learner first, which must receive
    /// the log within the catch-up timeout, then a voter. Returns what the new node must hold.
    /// Asking again for a node that is already a voter answers the same (the joiner may have
    /// lost the first answer).
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`]; [`ProposeError::MembershipBusy`] when another change holds
    /// the gate past [`MEMBERSHIP_BUSY_WAIT`]; [`ProposeError::Membership`] when the join has
    /// been undone (asking again cannot help); the other errors are worth retrying.
    pub async fn add_member(
        &self,
        node_id: u64,
        member: RaftMember,
    ) -> Result<ClusterSecrets, ProposeError> {
        let _hearing = self.membership.hear(NodeId(node_id));
        self.check_leading()?;
        let result = self.add_member_gated(node_id, &member).await;
        self.count_change("add", &result);
        result
    }

    async fn add_member_gated(
        &self,
        node_id: u64,
        member: &RaftMember,
    ) -> Result<ClusterSecrets, ProposeError> {
        let doing = format!("adding {} as a voter", member.name);
        let _held = self.membership.enter(doing, MEMBERSHIP_BUSY_WAIT).await?;
        let stage = self.join_stage(node_id).await?;
        match stage {
            JoinStage::Voter => return self.cluster_secrets(),
            JoinStage::Gone => {
                return Err(ProposeError::Membership(format!(
                    "the join of {} was undone (adding it failed, or its joiner was silent too long); join again with a token",
                    member.name
                )));
            }
            JoinStage::Pending => {
                self.add_learner_caught_up(node_id, member).await?;
                self.check_join_still_pending(node_id, member).await?;
            }
            JoinStage::JointVoter => {}
        }
        let promote = ChangeMembers::AddVoterIds([node_id].into());
        let promoted = self
            .membership_write("making the new node a voter", || {
                self.raft.change_membership(promote.clone(), false)
            })
            .await;
        match promoted {
            Ok(_) => {}
            // It may still commit: the joiner asks again and learns which.
            Err(error) if error.is_retryable() => return Err(error),
            Err(error) => {
                self.undo_join(NodeId(node_id)).await;
                return Err(error);
            }
        }
        info!(peer = %format_args!("{node_id:016x}"), addr = %member.quic_addr, "control node added as voter");
        self.cluster_secrets()
    }

    /// Adds `node_id` as a learner and waits until it holds the log up to that change. A
    /// learner that does not get there within the catch-up timeout is unreachable from here:
    /// its join is undone.
    async fn add_learner_caught_up(
        &self,
        node_id: u64,
        member: &RaftMember,
    ) -> Result<(), ProposeError> {
        let added = self
            .membership_write("adding the new node as a learner", || {
                self.raft.add_learner(node_id, member.clone(), false)
            })
            .await?;
        let target = added.log_id.index;
        let me = self.id;
        let caught_up = self
            .raft
            .wait(Some(self.timeouts.learner_catch_up))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&node_id).copied());
                    m.current_leader != Some(me)
                        || matched
                            .flatten()
                            .is_some_and(|log_id| log_id.index >= target)
                },
                "the new learner holds the log",
            )
            .await;
        match caught_up {
            Ok(metrics) if metrics.current_leader == Some(me) => Ok(()),
            Ok(_) => Err(ProposeError::NotLeader {
                leader: self.leader(),
            }),
            Err(WaitError::ShuttingDown) => Err(ProposeError::ShuttingDown),
            Err(WaitError::Timeout(..)) => {
                self.undo_join(NodeId(node_id)).await;
                Err(ProposeError::Membership(format!(
                    "the leader could not copy the log to {} at {} within {}; check that this address (--advertise-quic) is reachable from the other control nodes",
                    member.name,
                    member.quic_addr,
                    seconds(self.timeouts.learner_catch_up)
                )))
            }
        }
    }

    /// Checks, once the node is a learner, that its join was not undone before the learner
    /// was added (by an earlier leader's [`Op::AbandonJoin`], committed under this leader).
    /// An undo committed after the learner was added is refused by the state machine, so a
    /// join still pending now cannot be undone before the node is a voter. A join undone
    /// meanwhile has its learner taken out again and is refused.
    async fn check_join_still_pending(
        &self,
        node_id: u64,
        member: &RaftMember,
    ) -> Result<(), ProposeError> {
        if self.join_stage(node_id).await? != JoinStage::Gone {
            return Ok(());
        }
        if let Err(error) = self.remove_learner(node_id).await {
            warn!(peer = %format_args!("{node_id:016x}"), error = %error, "learner of an undone join not taken out yet; the sweep tries again");
        }
        Err(ProposeError::Membership(format!(
            "the join of {} was undone while it was being added (an earlier leader gave up on it); join again with a token",
            member.name
        )))
    }

    async fn join_stage(&self, node_id: u64) -> Result<JoinStage, ProposeError> {
        let pending = self
            .read_linearizable()
            .await?
            .pending_joins
            .contains_key(&NodeId(node_id));
        let membership = self.current_membership();
        let voter = membership.voter_ids().any(|id| id == node_id);
        let joint = membership.get_joint_config().len() > 1;
        Ok(match (voter, joint, pending) {
            (true, false, _) => JoinStage::Voter,
            (true, true, _) => JoinStage::JointVoter,
            (false, _, true) => JoinStage::Pending,
            (false, _, false) => JoinStage::Gone,
        })
    }

    /// Removes a control node from the voting membership, forwarding to the leader if needed.
    ///
    /// # Errors
    /// [`ProposeError`]; [`ProposeError::MembershipBusy`] when another change holds the gate
    /// for longer than the write timeout.
    pub async fn remove_member(&self, node_id: u64) -> Result<(), ProposeError> {
        match self.remove_member_local(node_id).await {
            Err(ProposeError::NotLeader { leader }) => {
                let deadline = Instant::now() + self.timeouts.write;
                let rpc = crate::rpc::ControlRpc::RemoveMember { node_id };
                match self.to_leader(&rpc, leader, deadline).await? {
                    crate::rpc::ControlRpcReply::MemberRemoved(reply) => reply,
                    _ => Err(ProposeError::NoQuorum(
                        "leader answered with something else".into(),
                    )),
                }
            }
            other => other,
        }
    }

    pub(super) async fn remove_member_local(&self, node_id: u64) -> Result<(), ProposeError> {
        self.check_leading()?;
        let doing = format!("removing node {node_id:016x}");
        let _held = self.membership.enter(doing, self.timeouts.write).await?;
        let membership = self.current_membership();
        let Some(member) = membership.get_node(&node_id).cloned() else {
            return Ok(());
        };
        let voters: Vec<u64> = membership.voter_ids().collect();
        if voters == [node_id] {
            return Err(ProposeError::Membership(
                "cannot remove the last control node".into(),
            ));
        }
        let result = self.remove_from_membership(node_id).await;
        self.count_change("remove", &result);
        result?;
        info!(peer = %format_args!("{node_id:016x}"), "control node removed from the membership");
        self.tell_removed(node_id, &member).await;
        Ok(())
    }

    /// Tells a node just taken out of the membership, so that it stops before it calls an
    /// election (best effort: a node that is down learns it from the revocation of its
    /// certificate when it comes back).
    async fn tell_removed(&self, node_id: u64, member: &RaftMember) {
        if node_id == self.id {
            self.note_removed("it took itself out of the membership as leader".into());
            return;
        }
        let rpc = crate::rpc::ControlRpc::Removed;
        let wait = self.timeouts.election_max;
        if let Err(error) = self
            .peers
            .call(node_id, &member.quic_addr, &rpc, wait)
            .await
        {
            debug!(peer = %format_args!("{node_id:016x}"), error = %error, "removed node not told");
        }
    }

    /// Takes `node_id` out of the Raft membership, voter or learner (holding the gate).
    async fn remove_from_membership(&self, node_id: u64) -> Result<(), ProposeError> {
        if self
            .current_membership()
            .voter_ids()
            .any(|id| id == node_id)
        {
            let change = ChangeMembers::RemoveVoters([node_id].into());
            self.membership_write("removing a voter", || {
                self.raft.change_membership(change.clone(), false)
            })
            .await?;
        }
        self.remove_learner(node_id).await
    }

    /// Takes a learner (never a voter) out of the Raft membership (holding the gate).
    async fn remove_learner(&self, node_id: u64) -> Result<(), ProposeError> {
        let membership = self.current_membership();
        let learner = membership.get_node(&node_id).is_some()
            && !membership.voter_ids().any(|id| id == node_id);
        if learner {
            let change = ChangeMembers::RemoveNodes([node_id].into());
            self.membership_write("removing a learner", || {
                self.raft.change_membership(change.clone(), false)
            })
            .await?;
        }
        Ok(())
    }

    /// Undoes an unfinished join (holding the gate): the learner leaves the Raft membership,
    /// then [`Op::AbandonJoin`] drops the node entry, revokes its certificate and gives a
    /// single-use token its use back. A node that is a voter by now is left alone. Failures
    /// are logged; the sweep tries again.
    ///
    /// The undo is proposed here, never forwarded: only the leader holding the gate may undo,
    /// or an undo begun under one leader could land while the next one is adding the node.
    /// (An undo this node proposed just before losing leadership may still commit; the state
    /// machine refuses it if the node is a member by then, and the next leader re-checks the
    /// join after adding the learner — see [`Self::check_join_still_pending`].)
    async fn undo_join(&self, node: NodeId) {
        if self.current_membership().voter_ids().any(|id| id == node.0) {
            return;
        }
        let result = match self.remove_learner(node.0).await {
            Ok(()) => {
                let command = crate::command::Command {
                    at_ms: unix_now_ms(),
                    op: Op::AbandonJoin { node },
                };
                self.propose_local(command).await
            }
            Err(error) => Err(error),
        };
        self.count_change("undo_join", &result);
        match result {
            Ok(Outcome { result: Ok(_), .. }) => {
                info!(node_id = %node, "unfinished join undone: entry dropped, certificate revoked, token given back");
            }
            Ok(Outcome {
                result: Err(rejection),
                ..
            }) => debug!(node_id = %node, reason = %rejection, "no join to undo"),
            Err(error) => {
                warn!(node_id = %node, error = %error, "unfinished join not undone yet; the leader tries again");
            }
        }
    }

    /// On the leader: undoes the unfinished joins whose joiners went silent (see
    /// [`abandoned_joins`]) and takes out learners that belong to no unfinished join (a leader
    /// that died while adding one leaves it behind). Skips the round when the gate is taken.
    pub(crate) async fn sweep_unfinished_joins(&self, leader_since_ms: u64) {
        if self.unfinished_work(leader_since_ms).await == (vec![], vec![]) {
            return;
        }
        let Some(_held) = self.membership.try_enter("undoing unfinished joins".into()) else {
            return;
        };
        // Decided again under the gate: nothing can have become a voter meanwhile.
        let (strays, abandoned) = self.unfinished_work(leader_since_ms).await;
        for node_id in strays {
            match self.remove_learner(node_id).await {
                Ok(()) => {
                    info!(peer = %format_args!("{node_id:016x}"), "learner that belongs to no join taken out of the membership");
                }
                Err(error) => {
                    warn!(peer = %format_args!("{node_id:016x}"), error = %error, "stray learner not taken out yet");
                }
            }
        }
        for node in abandoned {
            self.undo_join(node).await;
        }
    }

    /// (learners of no unfinished join, unfinished joins to undo now).
    async fn unfinished_work(&self, leader_since_ms: u64) -> (Vec<u64>, Vec<NodeId>) {
        let pending = self.read_stale().await.pending_joins.clone();
        let strays = self
            .current_membership()
            .learner_ids()
            .filter(|id| !pending.contains_key(&NodeId(*id)))
            .collect();
        let heard = self.membership.heard(|node| pending.contains_key(node));
        let after = self.timeouts.join_abandoned_after;
        let abandoned = abandoned_joins(&pending, &heard, leader_since_ms, unix_now_ms(), after);
        (strays, abandoned)
    }

    /// A membership change through openraft, bounded by the write timeout; openraft's refusal
    /// while the previous change is uncommitted is retried until then.
    async fn membership_write<F, Fut>(
        &self,
        what: &str,
        mut change: F,
    ) -> Result<ClientWriteResponse<TypeConfig>, ProposeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = MembershipWrite>,
    {
        let deadline = Instant::now() + self.timeouts.write;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(remaining, change()).await {
                Err(_) => return Err(self.no_quorum_timeout(what)),
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(error)) => error,
            };
            let in_progress = matches!(
                &error,
                RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_)
                ))
            );
            if !in_progress || Instant::now() + IN_PROGRESS_RETRY >= deadline {
                return Err(write_error(error));
            }
            tokio::time::sleep(IN_PROGRESS_RETRY).await;
        }
    }

    /// The membership as this node knows it (the latest, committed or not).
    pub(super) fn current_membership(&self) -> openraft::Membership<u64, RaftMember> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    pub(super) fn check_leading(&self) -> Result<(), ProposeError> {
        match self.leader() {
            Some((id, _)) if id == self.id => Ok(()),
            leader => Err(ProposeError::NotLeader { leader }),
        }
    }

    pub(super) fn cluster_secrets(&self) -> Result<ClusterSecrets, ProposeError> {
        let keys = self
            .cluster_keys()
            .ok_or_else(|| ProposeError::Membership("this node has no cluster key".into()))?;
        Ok(ClusterSecrets {
            cluster_keys_text: keys.to_text(),
        })
    }

    fn count_change<T>(&self, change: &str, result: &Result<T, ProposeError>) {
        let label = match result {
            Ok(_) => "ok",
            Err(ProposeError::MembershipBusy(_)) => "busy",
            Err(_) => "failed",
        };
        self.metrics
            .membership_changes_total
            .with_label_values(&[change, label])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use warren_transport::token::TokenId;

    use super::*;

    const MINUTE_MS: u64 = 60_000;

    fn pending(ids: &[(u64, u64)]) -> BTreeMap<NodeId, PendingJoin> {
        ids.iter()
            .map(|&(id, since_ms)| {
                let join = PendingJoin {
                    token_id: TokenId([1; 8]),
                    since_ms,
                };
                (NodeId(id), join)
            })
            .collect()
    }

    /// (heard of node 1, leader since, now) → whether node 1's join (applied at 0) is undone
    /// when joins are undone after a minute.
    fn check(heard: Option<Heard>, leader_since_ms: u64, now_ms: u64, undone: bool) {
        let heard: BTreeMap<NodeId, Heard> = heard.map(|h| (NodeId(1), h)).into_iter().collect();
        let got = abandoned_joins(
            &pending(&[(1, 0)]),
            &heard,
            leader_since_ms,
            now_ms,
            Duration::from_secs(60),
        );
        assert_eq!(
            got == [NodeId(1)],
            undone,
            "{heard:?} {leader_since_ms} {now_ms}"
        );
    }

    #[test]
    fn a_join_is_undone_only_after_a_quiet_minute_with_nothing_in_flight() {
        // Never heard of: a minute after the join.
        check(None, 0, MINUTE_MS - 1, false);
        check(None, 0, MINUTE_MS, true);
        // A new leader gives it a minute of its own.
        check(None, 5 * MINUTE_MS, 5 * MINUTE_MS + 1_000, false);
        check(None, 5 * MINUTE_MS, 6 * MINUTE_MS, true);
        // A request a while ago restarts the minute.
        let asked = Heard {
            in_flight: 0,
            last_ms: 2 * MINUTE_MS,
        };
        check(Some(asked), 0, 2 * MINUTE_MS + 30_000, false);
        check(Some(asked), 0, 3 * MINUTE_MS, true);
        // A request being answered (waiting for the gate) is never undone under it.
        let waiting = Heard {
            in_flight: 1,
            last_ms: 0,
        };
        check(Some(waiting), 0, 10 * MINUTE_MS, false);
    }

    #[test]
    fn only_the_quiet_joins_are_undone() {
        let joins = pending(&[(1, 0), (2, 50_000), (3, 0)]);
        let heard = [(
            NodeId(3),
            Heard {
                in_flight: 0,
                last_ms: 55_000,
            },
        )]
        .into_iter()
        .collect();
        let got = abandoned_joins(&joins, &heard, 0, 61_000, Duration::from_secs(60));
        assert_eq!(got, vec![NodeId(1)]);
    }
}
