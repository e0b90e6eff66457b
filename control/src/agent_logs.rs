//! Workload logs relayed from agents. An agent's logs stay on its box; control asks for them
//! over the agent's own connection (the one that carries its view, `push`), on a new stream per
//! request, so the box opens no port. The API may be served by another control node than the
//! one holding the agent's connection: it then asks that member ([`ControlRpc::AgentLogs`]).
//!
//! Every request has a deadline ([`AGENT_LOGS_TIMEOUT`]) and a byte budget (the agent holds to
//! it), so a cut-off or slow agent costs the caller a bounded wait and never a growing buffer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warren_api::NodeId;
use warren_api::logs::{AgentLogReply, AgentLogRequest};
use warren_transport::PeerConnection;

use crate::control::Control;
use crate::rpc::{ControlRpc, ControlRpcReply};

/// How long control waits for an agent's answer to a log request, relay included.
pub const AGENT_LOGS_TIMEOUT: Duration = Duration::from_secs(5);

/// The agents' connections this control node holds, by node: where a log request goes.
#[derive(Default)]
pub struct AgentConnections {
    by_node: Mutex<HashMap<NodeId, (u64, PeerConnection)>>,
    sessions: AtomicU64,
}

impl std::fmt::Debug for AgentConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by_node = self
            .by_node
            .lock()
            .expect("no panic while holding the lock");
        f.debug_struct("AgentConnections")
            .field("nodes", &by_node.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AgentConnections {
    /// Records `conn` as `node`'s; returns the session number [`detach`](Self::detach) wants.
    pub fn attach(&self, node: NodeId, conn: PeerConnection) -> u64 {
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        let mut by_node = self
            .by_node
            .lock()
            .expect("no panic while holding the lock");
        by_node.insert(node, (session, conn));
        session
    }

    /// Forgets `node`'s connection, unless a newer session replaced it meanwhile.
    pub fn detach(&self, node: NodeId, session: u64) {
        let mut by_node = self
            .by_node
            .lock()
            .expect("no panic while holding the lock");
        if by_node.get(&node).is_some_and(|(held, _)| *held == session) {
            by_node.remove(&node);
        }
    }

    fn get(&self, node: NodeId) -> Option<PeerConnection> {
        let by_node = self
            .by_node
            .lock()
            .expect("no panic while holding the lock");
        by_node.get(&node).map(|(_, conn)| conn.clone())
    }
}

/// Why an agent's logs could not be had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AgentLogsError {
    /// The control node asked holds no connection of that agent.
    #[error("the agent is not connected to this control node")]
    NotHere,
    /// No answer within [`AGENT_LOGS_TIMEOUT`].
    #[error("the agent did not answer within {}", warren_api::format_duration_ms(.0.as_millis() as u64))]
    Timeout(Duration),
    /// The request failed on the way (a closed stream, a member that could not be reached).
    #[error("{0}")]
    Failed(String),
}

/// Largest answer frame control reads from an agent: as on the agent's own stream, far above
/// a legitimate answer (at most [`warren_api::logs::LOG_REPLY_BYTES_MAX`] of text).
pub const AGENT_LOG_REPLY_FRAME_MAX: usize = warren_api::wire::MAX_AGENT_MESSAGE_BYTES;

/// One request on a new stream of the agent's connection, its answer read within
/// [`AGENT_LOG_REPLY_FRAME_MAX`].
async fn ask(conn: &PeerConnection, request: &AgentLogRequest) -> Result<AgentLogReply, String> {
    let (mut send, mut recv) = conn.open_stream().await.map_err(|e| e.to_string())?;
    recv.limit_frames_to(AGENT_LOG_REPLY_FRAME_MAX);
    send.send(request).await.map_err(|e| e.to_string())?;
    send.finish();
    recv.recv().await.map_err(|e| e.to_string())
}

impl Control {
    /// Asks `node`'s agent for logs: over this node's connection to it when `holder` is this
    /// node, else through the member `holder` (the one the agent reports to).
    ///
    /// # Errors
    /// [`AgentLogsError`]; never waits past [`AGENT_LOGS_TIMEOUT`].
    pub async fn agent_logs(
        &self,
        node: NodeId,
        holder: u64,
        request: AgentLogRequest,
    ) -> Result<AgentLogReply, AgentLogsError> {
        if holder == self.id() {
            return self.agent_logs_here(node, &request).await;
        }
        let Some(addr) = self.member_quic_addr(holder) else {
            return Err(AgentLogsError::Failed(format!(
                "control node {holder:016x}, which holds the agent's link, is not a member"
            )));
        };
        let rpc = ControlRpc::AgentLogs { node, request };
        match self
            .peers()
            .call(holder, &addr, &rpc, AGENT_LOGS_TIMEOUT)
            .await
        {
            Ok(ControlRpcReply::AgentLogs(answer)) => answer,
            Ok(_) => Err(AgentLogsError::Failed(
                "unexpected answer from a control member".to_owned(),
            )),
            Err(error) => Err(AgentLogsError::Failed(format!(
                "control node {holder:016x}, which holds the agent's link: {error}"
            ))),
        }
    }

    /// Asks `node`'s agent over this node's connection to it.
    ///
    /// # Errors
    /// [`AgentLogsError::NotHere`] without such a connection; the others as
    /// [`Control::agent_logs`].
    pub async fn agent_logs_here(
        &self,
        node: NodeId,
        request: &AgentLogRequest,
    ) -> Result<AgentLogReply, AgentLogsError> {
        let conn = self
            .agent_connections()
            .get(node)
            .ok_or(AgentLogsError::NotHere)?;
        let answer = match tokio::time::timeout(AGENT_LOGS_TIMEOUT, ask(&conn, request)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(AgentLogsError::Failed(error)),
            Err(_) => Err(AgentLogsError::Timeout(AGENT_LOGS_TIMEOUT)),
        };
        let result = match &answer {
            Ok(_) => "ok",
            Err(AgentLogsError::Timeout(_)) => "timeout",
            Err(_) => "failed",
        };
        self.metrics()
            .agent_log_requests_total
            .with_label_values(&[result])
            .inc();
        answer
    }
}
