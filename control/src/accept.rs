//! Incoming QUIC connections, each handed by its ALPN to the module that serves it: Raft and
//! control RPCs from members ([`crate::rpc`]), joins (`warren_transport::join`), agents'
//! desired-state streams ([`crate::push`]) and certificate renewals
//! (`warren_transport::renew`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_transport::join::serve_join;
use warren_transport::{Alpn, Endpoint, PeerConnection, TransportMetrics};

use crate::control::Control;
use crate::rpc::ControlRpc;

/// Accepts connections on `endpoint` until `cancel` fires, each served in a task of `tasks`
/// and closed when `cancel` fires.
pub fn spawn(
    endpoint: Arc<Endpoint>,
    control: Arc<Control>,
    metrics: TransportMetrics,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    tasks.clone().spawn(async move {
        loop {
            let incoming = tokio::select! {
                () = cancel.cancelled() => return,
                incoming = endpoint.accept() => match incoming { Some(i) => i, None => return },
            };
            let control = control.clone();
            let metrics = metrics.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let Ok(conn) = incoming.admit().await else {
                    return;
                };
                tokio::select! {
                    () = cancel.cancelled() => conn.close("shutting down"),
                    () = serve(conn.clone(), control, &metrics) => {}
                }
            });
        }
    });
}

/// Serves one admitted connection by what its ALPN says it is for.
async fn serve(conn: PeerConnection, control: Arc<Control>, metrics: &TransportMetrics) {
    match conn.alpn() {
        Alpn::Raft => serve_member(conn, control).await,
        Alpn::Join => serve_join(conn, control.as_ref(), metrics).await,
        Alpn::Agent => {
            crate::push::serve_agent(conn, control).await;
        }
        Alpn::Renew => warren_transport::renew::serve_renewals(conn, control).await,
    }
}

/// Answers a control member's Raft and control RPCs.
async fn serve_member(conn: PeerConnection, control: Arc<Control>) {
    let handler = move |rpc: ControlRpc, conn: PeerConnection| {
        let control = control.clone();
        // Any RPC from a member shows it is alive.
        if let Some(peer) = conn.peer().and_then(|p| p.node_id) {
            control.peers().heard_from(peer.0);
        }
        async move { control.handle_rpc(rpc).await }
    };
    warren_transport::serve_requests(conn, handler).await;
}
