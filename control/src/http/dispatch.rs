//! One request: the route it takes (`warren_api::routes`), the handler that answers it, the
//! members header, and the request metrics by route label.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::debug;
use warren_api::Availability;
use warren_api::rest::{IF_VERSION_PARAM, MEMBERS_HEADER, PREFIX};
use warren_api::routes::{Route, Unrouted};
use warren_transport::PeerIdentity;

use super::body::read_json;
use super::respond::{ApiResult, error_response};
use super::{Api, ApiError};
use crate::state::ClusterState;

/// The value of `?key=N` in `request`'s query; `None` when absent.
fn query_u64<B>(request: &Request<B>, key: &str) -> Result<Option<u64>, ApiError> {
    let Some(query) = request.uri().query() else {
        return Ok(None);
    };
    let Some(value) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| ApiError::Invalid(format!("{key}: expected a version number, got {value:?}")))
}

impl Api {
    /// Answers one request, counting it by route and status.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let stale = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "stale=true" || kv == "stale=1"));
        let route = Route::recognise_path(request.method().as_str(), &path);
        let label = route.as_ref().map_or("other", Route::label);
        let mut response = match self.route(request, route, &path, stale).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        };
        self.add_members_header(&mut response);
        self.metrics
            .observe_request(label, response.status().as_u16(), started.elapsed());
        response
    }

    /// Tells the client who the control members are, so that it can fail over to them later.
    /// Read after the answer was made: a linearizable read has just caught this node up.
    fn add_members_header(&self, response: &mut Response<Full<Bytes>>) {
        let addrs = crate::members::api_addrs(&self.control).join(",");
        if addrs.is_empty() {
            return;
        }
        match hyper::header::HeaderValue::from_str(&addrs) {
            Ok(value) => {
                response.headers_mut().insert(MEMBERS_HEADER, value);
            }
            Err(_) => debug!(addrs = %addrs, "member addresses do not fit a header; left out"),
        }
    }

    /// The state, after the read barrier unless `stale`.
    pub(super) async fn read(
        &self,
        stale: bool,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ClusterState>, ApiError> {
        if stale {
            Ok(self.control.read_stale().await)
        } else {
            Ok(self.control.read_linearizable().await?)
        }
    }

    /// Answers a request for `route` (`path` only names an unknown route in the error).
    async fn route(
        &self,
        request: Request<Incoming>,
        route: Result<Route<'_>, Unrouted>,
        path: &str,
        stale: bool,
    ) -> ApiResult {
        let route = match route {
            Ok(route) => route,
            Err(Unrouted::MethodNotAllowed) => return Err(ApiError::MethodNotAllowed),
            Err(Unrouted::NotFound) => {
                return Err(ApiError::NotFound(format!(
                    "no such route: {} {PREFIX}/{}",
                    request.method(),
                    warren_api::routes::segments(path).join("/")
                )));
            }
        };
        match route {
            Route::ClusterStatus => self.cluster_status(stale).await,
            Route::RotateKeys => self.rotate_keys().await,
            Route::ListTokens => self.list_tokens(stale).await,
            Route::CreateToken => {
                let caller = request.extensions().get::<Arc<PeerIdentity>>().cloned();
                self.create_token(caller, read_json(request).await?).await
            }
            Route::RevokeToken { token_id } => self.revoke_token(token_id).await,
            Route::ListAdmins => self.list_admins(stale).await,
            Route::CreateAdmin => self.create_admin(read_json(request).await?).await,
            Route::RenewAdmin => {
                let caller = request.extensions().get::<Arc<PeerIdentity>>().cloned();
                self.renew_admin(caller, read_json(request).await?).await
            }
            Route::RevokeAdmin { admin } => self.revoke_admin(admin).await,
            Route::ListNodes => self.list_nodes(stale).await,
            Route::GetNode { node } => self.get_node(node, stale).await,
            Route::DrainNode { node } => self.set_availability(node, Availability::Drain).await,
            Route::ActivateNode { node } => self.set_availability(node, Availability::Active).await,
            Route::RotateNodeKey { node } => self.rotate_node_key(node).await,
            Route::RemoveNode { node } => self.remove_node(node).await,
            Route::ListServices => self.list_services(stale).await,
            Route::CreateService => self.create_service(read_json(request).await?).await,
            Route::PutService { service } => {
                let if_version = query_u64(&request, IF_VERSION_PARAM)?;
                self.put_service(service, read_json(request).await?, if_version)
                    .await
            }
            Route::GetService { service } => self.get_service(service, stale).await,
            Route::ServiceReplicas { service } => self.service_replicas(service, stale).await,
            Route::ServiceLogs { service } => {
                self.service_logs(service, read_json(request).await?).await
            }
            Route::ScaleService { service } => {
                self.scale_service(service, read_json(request).await?).await
            }
            Route::RollbackService { service } => self.rollback_service(service).await,
            Route::RemoveService { service } => self.remove_service(service).await,
            Route::ListSecrets => self.list_secrets(stale).await,
            Route::CreateSecret => self.create_secret(read_json(request).await?).await,
            Route::RemoveSecret { secret } => self.remove_secret(secret).await,
            Route::ListVolumes => self.list_volumes(stale).await,
            Route::VolumeUsage => self.volume_usage(stale).await,
            Route::GetVolume { volume } => self.get_volume(volume, stale).await,
            Route::PutVolume { volume } => self.put_volume(volume, read_json(request).await?).await,
            Route::RemoveVolume { volume } => self.remove_volume(volume).await,
            Route::Discovery { kind } => self.discovery(kind, request.uri().query(), stale).await,
        }
    }
}
