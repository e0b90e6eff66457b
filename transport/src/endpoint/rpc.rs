//! One request per stream: the client's [`PeerConnection::request`] and the server's
//! [`serve_requests`] loop, which answers each stream in a task of its own.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::PeerConnection;
use super::error::RpcError;

impl PeerConnection {
    /// Sends one request on a new stream and waits for its response, within the request
    /// timeout.
    ///
    /// # Errors
    /// [`RpcError`].
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
    ) -> Result<Resp, RpcError> {
        let timeout = self.shared.config.request_timeout;
        tokio::time::timeout(timeout, async {
            let (mut send, mut recv) = self.open_stream().await?;
            send.send(request).await?;
            send.finish();
            Ok(recv.recv().await?)
        })
        .await
        .unwrap_or(Err(RpcError::Timeout(timeout)))
    }
}

/// Answers requests on `conn` until it closes: each stream carries one request and one
/// response, and each is handled in a task of its own. Returns when the connection closes.
pub async fn serve_requests<Req, Resp, F, Fut>(conn: PeerConnection, handler: F)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + Sync + 'static,
    F: Fn(Req, PeerConnection) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    let tasks = tokio_util::task::TaskTracker::new();
    while let Ok((mut send, mut recv)) = conn.accept_stream().await {
        let handler = handler.clone();
        let conn = conn.clone();
        tasks.spawn(async move {
            let request = match recv.recv::<Req>().await {
                Ok(request) => request,
                Err(error) => {
                    debug!(peer = %conn.remote_address(), error = %error, "bad request frame");
                    return;
                }
            };
            let response = handler(request, conn.clone()).await;
            if let Err(error) = send.send(&response).await {
                debug!(peer = %conn.remote_address(), error = %error, "response not delivered");
            }
            send.finish();
        });
    }
    tasks.close();
    tasks.wait().await;
}
