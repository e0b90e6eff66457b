//! A control node joining a cluster: admission with a token (certificate and node id), then
//! asking the leader to make it a voter until it does, telling the operator what the join
//! waits for, and — if the join fails — removing what it wrote into the data dir.
//!
//! The leader makes one membership change at a time; a joiner that finds another change in
//! progress is told so ([`ProposeError::MembershipBusy`]) and asks again, within
//! [`JOIN_MEMBER_TIMEOUT`]. The leader undoes a join that cannot succeed; a joiner that gives up
//! or dies is undone by the leader once it has been silent a while.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;
use warren_api::{NodeId, NodeRole};
use warren_transport::ca::CREDENTIAL_FILES;
use warren_transport::join::JoinParams;
use warren_transport::{Alpn, RpcError, TransportMetrics};

use super::{
    CLUSTER_KEY_FILE, ControlConfig, ControlNode, NewNode, NodeError, NodeSettings, SETTINGS_FILE,
    SOCKET_FILE, bind, bind_api, check_fresh, member_of, resolve_gossip, save_settings,
    settings_for,
};
use crate::keys::ClusterKeys;
use crate::rpc::{ClusterSecrets, ControlRpc, ControlRpcReply, ProposeError};
use crate::store::RAFT_DIR;

/// How long a joining control node keeps asking the leader to make it a voter (through
/// leader changes, lost quorum and other joins in progress) before it gives up.
pub const JOIN_MEMBER_TIMEOUT: Duration = Duration::from_secs(120);

/// Pause before asking again after an answer that says "not now" (no leader, no quorum) or
/// no answer at all.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// Where a join stands, for the operator's terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinProgress {
    /// The token was accepted: the node is registered under this id and asks the leader to
    /// make it a voter.
    Admitted {
        /// The id the cluster gave this node.
        node_id: NodeId,
    },
    /// Another membership change is in progress on the leader (the text says which); the join
    /// waits for it.
    Waiting(String),
    /// The leader could not be asked, or could not act yet (the text says why); the join asks
    /// again.
    Retrying(String),
}

impl std::fmt::Display for JoinProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Admitted { node_id } => write!(
                f,
                "token accepted: this is node {node_id}; asking the leader to make it a voter"
            ),
            Self::Waiting(what) => {
                write!(
                    f,
                    "waiting for another membership change to finish ({what})"
                )
            }
            Self::Retrying(why) => write!(f, "not a member yet, asking again: {why}"),
        }
    }
}

/// Told where a join stands.
pub type ProgressFn = Box<dyn Fn(&JoinProgress) + Send + Sync>;

/// How a join reports and stops.
#[derive(Default)]
pub struct JoinHooks {
    /// Told where the join stands (the CLI prints it).
    pub progress: Option<ProgressFn>,
    /// Cancelling stops the join: it removes what it wrote and fails with
    /// [`NodeError::Cancelled`].
    pub cancel: CancellationToken,
}

impl std::fmt::Debug for JoinHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHooks")
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}

impl JoinHooks {
    fn report(&self, step: &JoinProgress, last: &mut Option<JoinProgress>) {
        if last.as_ref() == Some(step) {
            return;
        }
        info!(progress = %step, "joining");
        if let Some(progress) = &self.progress {
            progress(step);
        }
        *last = Some(step.clone());
    }
}

/// What a join writes into a data dir, less what was there before: removed when the join
/// fails, so that a second try starts clean.
struct JoinFiles {
    dir: PathBuf,
    dir_existed: bool,
    files: Vec<PathBuf>,
    raft_dir: Option<PathBuf>,
}

impl JoinFiles {
    fn absent_in(dir: &Path) -> Self {
        let names = CREDENTIAL_FILES
            .iter()
            .chain(&[CLUSTER_KEY_FILE, SETTINGS_FILE, SOCKET_FILE]);
        let raft_dir = dir.join(RAFT_DIR);
        Self {
            dir: dir.to_owned(),
            dir_existed: dir.exists(),
            files: names
                .map(|name| dir.join(name))
                .filter(|path| !path.exists())
                .collect(),
            raft_dir: (!raft_dir.exists()).then_some(raft_dir),
        }
    }

    fn remove(self) {
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        if let Some(raft_dir) = &self.raft_dir {
            let _ = std::fs::remove_dir_all(raft_dir);
        }
        if !self.dir_existed {
            // Only if empty: anything else in it is not ours.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// What to do after one request to become a member.
#[derive(Debug)]
enum Next {
    Member(ClusterSecrets),
    AskAt(String),
    Wait(String),
    Retry(String),
    Fail(NodeError),
}

/// How one request to become a member went.
#[derive(Debug)]
enum Asked {
    Answer(Result<ClusterSecrets, ProposeError>),
    /// No answer from that address (down, unreachable, timed out).
    NoAnswer(String),
    /// The cluster refused this node's certificate: its join was undone.
    Revoked(String),
}

/// The next step after `asked` (a pure decision).
fn next_step(asked: Asked) -> Next {
    match asked {
        Asked::Answer(Ok(secrets)) => Next::Member(secrets),
        Asked::Answer(Err(ProposeError::NotLeader {
            leader: Some((_, leader)),
        })) => Next::AskAt(leader.quic_addr),
        Asked::Answer(Err(ProposeError::MembershipBusy(what))) => Next::Wait(what),
        Asked::Answer(Err(error)) if error.is_retryable() => Next::Retry(error.to_string()),
        Asked::Answer(Err(error)) => Next::Fail(error.into()),
        Asked::NoAnswer(why) => Next::Retry(why),
        Asked::Revoked(why) => Next::Fail(NodeError::NotMember(format!(
            "the cluster undid this join ({why}); join again with a token"
        ))),
    }
}

impl ControlNode {
    /// Joins an existing cluster as a voting control node, with a control token.
    ///
    /// # Errors
    /// [`NodeError`]; the token is refused with a clear reason.
    pub async fn join(
        new: NewNode,
        join_addr: SocketAddr,
        token: &str,
        config: ControlConfig,
    ) -> Result<Self, NodeError> {
        Self::join_with(new, join_addr, token, config, JoinHooks::default()).await
    }

    /// As [`Self::join`], reporting progress and stopping through `hooks`. A join that fails
    /// removes what it wrote into the data dir; the leader undoes the cluster's side.
    ///
    /// # Errors
    /// [`NodeError`]; [`NodeError::Cancelled`] when `hooks.cancel` fired first.
    pub async fn join_with(
        new: NewNode,
        join_addr: SocketAddr,
        token: &str,
        config: ControlConfig,
        hooks: JoinHooks,
    ) -> Result<Self, NodeError> {
        config.validate()?;
        let written = JoinFiles::absent_in(&new.data_dir);
        check_fresh(&new.data_dir)?;
        let joined = Self::join_steps(new, join_addr, token, config, &hooks).await;
        if joined.is_err() {
            written.remove();
        }
        joined
    }

    async fn join_steps(
        mut new: NewNode,
        join_addr: SocketAddr,
        token: &str,
        config: ControlConfig,
        hooks: &JoinHooks,
    ) -> Result<Self, NodeError> {
        // Learn the real port (for port 0) before advertising it; the endpoint proper is bound
        // once the certificate exists.
        let probe = std::net::UdpSocket::bind(new.quic_listen)
            .map_err(super::io("bind QUIC port", &new.data_dir))?;
        new.quic_listen = probe
            .local_addr()
            .map_err(super::io("bind QUIC port", &new.data_dir))?;
        drop(probe);
        resolve_gossip(&mut new).await?;
        let params = join_params(&new);
        let metrics = TransportMetrics::unregistered();
        let admit =
            warren_transport::join::join(join_addr, token, params, &config.transport, &metrics);
        let joined = tokio::select! {
            joined = admit => joined?,
            () = hooks.cancel.cancelled() => return Err(NodeError::Cancelled),
        };
        let mut last = None;
        hooks.report(
            &JoinProgress::Admitted {
                node_id: joined.node_id,
            },
            &mut last,
        );
        joined.credentials.save(&new.data_dir)?;
        let settings = settings_for(&new, joined.node_id);
        let endpoint = bind(&new.quic_listen, &joined.credentials, &config)?;
        let api = bind_api(new.api_listen, &endpoint).await?;
        let mut node =
            Self::start(&new.data_dir, settings.clone(), None, config, endpoint, api).await?;
        let mut addrs = vec![join_addr.to_string()];
        addrs.extend(joined.control_addrs.iter().cloned());
        let secrets = match node.become_member(&addrs, &settings, hooks, last).await {
            Ok(secrets) => secrets,
            Err(error) => {
                node.shutdown().await;
                return Err(error);
            }
        };
        let keys =
            ClusterKeys::from_text(&secrets.cluster_keys_text).map_err(NodeError::LeaderKeys)?;
        node.control
            .update_cluster_keys(|_| Ok(Some(keys)))
            .map_err(NodeError::DataDir)?;
        save_settings(&new.data_dir, &settings)?;
        node.start_mesh().await;
        info!(node_id = %joined.node_id, "joined the cluster as a control node");
        Ok(node)
    }

    /// Asks the leader (found through `addrs`, then its redirections) to make this node a
    /// voter, until it does, refuses for good, [`JOIN_MEMBER_TIMEOUT`] passes, or the join is
    /// cancelled.
    async fn become_member(
        &self,
        addrs: &[String],
        settings: &NodeSettings,
        hooks: &JoinHooks,
        mut last: Option<JoinProgress>,
    ) -> Result<ClusterSecrets, NodeError> {
        let rpc = ControlRpc::AddMember {
            node_id: settings.node_id.0,
            member: member_of(settings),
        };
        let deadline = Instant::now() + JOIN_MEMBER_TIMEOUT;
        let mut target = addrs[0].clone();
        let mut next_addr = 1;
        let mut last_reason = String::from("no answer yet");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(NodeError::NotMember(format!(
                    "not a voter after {}s of asking the leader (last: {last_reason}); the leader undoes this join once it hears nothing more",
                    JOIN_MEMBER_TIMEOUT.as_secs()
                )));
            }
            let asked = tokio::select! {
                asked = self.ask_once(&target, &rpc, remaining) => asked,
                () = hooks.cancel.cancelled() => return Err(NodeError::Cancelled),
            };
            let pause = match next_step(asked) {
                Next::Member(secrets) => return Ok(secrets),
                Next::Fail(error) => return Err(error),
                Next::AskAt(leader) => {
                    target = leader;
                    Duration::ZERO
                }
                // The leader already waited for the change in progress.
                Next::Wait(what) => {
                    hooks.report(&JoinProgress::Waiting(what.clone()), &mut last);
                    last_reason = format!("waiting for another membership change ({what})");
                    Duration::ZERO
                }
                Next::Retry(why) => {
                    hooks.report(&JoinProgress::Retrying(why.clone()), &mut last);
                    last_reason = why;
                    target = addrs[next_addr % addrs.len()].clone();
                    next_addr += 1;
                    ASK_AGAIN_AFTER
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = hooks.cancel.cancelled() => return Err(NodeError::Cancelled),
            }
        }
    }

    /// One request to become a member, to the control node at `target`.
    async fn ask_once(&self, target: &str, rpc: &ControlRpc, timeout: Duration) -> Asked {
        let Some(socket) = tokio::net::lookup_host(target)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
        else {
            return Asked::NoAnswer(format!("cannot resolve {target}"));
        };
        let conn = match self.endpoint.connect(socket, Alpn::Raft).await {
            Ok(conn) => conn,
            Err(error) if error.is_revoked() => return Asked::Revoked(error.to_string()),
            Err(error) => return Asked::NoAnswer(error.to_string()),
        };
        // Adding a member takes as long as the new node needs to receive the log: longer than
        // an ordinary request may take, so the exchange is bounded by the join's own deadline.
        let exchange = async {
            let (mut send, mut recv) = conn.open_stream().await?;
            send.send(rpc).await?;
            send.finish();
            Ok::<ControlRpcReply, RpcError>(recv.recv().await?)
        };
        let reply = tokio::time::timeout(timeout, exchange).await;
        conn.close("done");
        match reply {
            Ok(Ok(ControlRpcReply::MemberAdded(answer))) => Asked::Answer(answer),
            Ok(Ok(_)) => Asked::NoAnswer(format!("{target} answered with something else")),
            Ok(Err(error)) => Asked::NoAnswer(format!("{target}: {error}")),
            Err(_) => Asked::NoAnswer(format!("no answer from {target} in time")),
        }
    }
}

/// What the joiner tells the cluster about itself.
fn join_params(new: &NewNode) -> JoinParams {
    let settings = settings_for(new, NodeId(0));
    JoinParams {
        role: NodeRole::Control,
        name: new.name.clone(),
        site: new.site.clone(),
        labels: Default::default(),
        advertise: [
            Some(format!("quic={}", settings.advertise_quic)),
            Some(format!("api={}", settings.advertise_api)),
            settings.advertise_gossip.map(|a| format!("gossip={a}")),
            settings.metrics_listen.map(|a| format!("metrics={a}")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RaftMember;

    fn leader() -> RaftMember {
        RaftMember {
            quic_addr: "10.0.0.1:7101".into(),
            api_addr: "10.0.0.1:7100".into(),
            name: "c1".into(),
        }
    }

    #[test]
    fn each_answer_leads_to_one_next_step() {
        let secrets = ClusterSecrets {
            cluster_keys_text: "00".into(),
        };
        assert!(matches!(
            next_step(Asked::Answer(Ok(secrets))),
            Next::Member(_)
        ));
        let redirect = ProposeError::NotLeader {
            leader: Some((1, leader())),
        };
        assert!(matches!(
            next_step(Asked::Answer(Err(redirect))),
            Next::AskAt(addr) if addr == "10.0.0.1:7101"
        ));
        let busy = ProposeError::MembershipBusy("adding c3 as a voter".into());
        assert!(matches!(
            next_step(Asked::Answer(Err(busy))),
            Next::Wait(what) if what == "adding c3 as a voter"
        ));
        let unknown_leader = ProposeError::NotLeader { leader: None };
        assert!(matches!(
            next_step(Asked::Answer(Err(unknown_leader))),
            Next::Retry(_)
        ));
        let no_quorum = ProposeError::NoQuorum("cut off".into());
        assert!(matches!(
            next_step(Asked::Answer(Err(no_quorum))),
            Next::Retry(_)
        ));
        assert!(matches!(
            next_step(Asked::NoAnswer("down".into())),
            Next::Retry(_)
        ));
        let refused = ProposeError::Membership("the join was undone".into());
        assert!(matches!(
            next_step(Asked::Answer(Err(refused))),
            Next::Fail(NodeError::Propose(ProposeError::Membership(_)))
        ));
        assert!(matches!(
            next_step(Asked::Revoked("revoked".into())),
            Next::Fail(NodeError::NotMember(_))
        ));
    }

    #[test]
    fn progress_reads_as_a_sentence() {
        let waiting = JoinProgress::Waiting("adding c3 as a voter".into());
        assert_eq!(
            waiting.to_string(),
            "waiting for another membership change to finish (adding c3 as a voter)"
        );
    }
}
