//! The control plane's HTTP routes, declared once: the server dispatches on [`Route`], labels its
//! metrics with [`Route::label`], and the CLI builds its request paths with [`Route::path`].
//!
//! Each route is one row of [`TABLE`]: a `Route` value and `"METHOD /template"`. A template's
//! `{parameter}` stands for one path segment, carried in the variant's field of the same name.
//! Paths here are below [`PREFIX`]; the client adds it, the server strips it.

use crate::ServiceName;
use crate::rest::PREFIX;

/// The HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`: reads; they take `?stale=true` to skip the read barrier.
    Get,
    /// `POST`: creates and actions.
    Post,
    /// `PUT`: create or replace at a known name.
    Put,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// The method as HTTP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    fn parse(method: &str) -> Option<Self> {
        [Self::Get, Self::Post, Self::Put, Self::Delete]
            .into_iter()
            .find(|m| m.as_str() == method)
    }
}

/// One route of the API with its path parameter. The body and answer types are in
/// [`crate::rest`]; every write answers [`crate::rest::WriteResult`] unless it says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the fields are the path parameters the variants' docs name
pub enum Route<'a> {
    /// → [`crate::rest::ClusterStatus`].
    ClusterStatus,
    /// → [`crate::rest::KeysRotated`].
    RotateKeys,
    /// → `[TokenInfo]`.
    ListTokens,
    /// [`crate::rest::TokenRequest`] → [`crate::rest::TokenResponse`].
    CreateToken,
    /// Revokes the join token `token_id` (16 hex digits).
    RevokeToken { token_id: &'a str },
    /// → `[AdminInfo]`.
    ListAdmins,
    /// [`crate::rest::AdminCreate`] → [`crate::rest::AdminIssued`].
    CreateAdmin,
    /// [`crate::rest::AdminRenew`] → [`crate::rest::AdminIssued`], for the calling admin.
    RenewAdmin,
    /// Revokes the admin certificate `admin` names (serial, or name).
    RevokeAdmin { admin: &'a str },
    /// → `[NodeInfo]`.
    ListNodes,
    /// → [`crate::rest::NodeInfo`] of `node` (id or name).
    GetNode { node: &'a str },
    /// Stops placing replicas on `node` and moves its replicas away.
    DrainNode { node: &'a str },
    /// Undoes a drain.
    ActivateNode { node: &'a str },
    /// Asks `node` to roll its WireGuard key (recorded; the node acts when it next hears).
    RotateNodeKey { node: &'a str },
    /// Removes `node` from the cluster (and from the Raft membership, for a control node).
    RemoveNode { node: &'a str },
    /// → `[ServiceInfo]`.
    ListServices,
    /// [`crate::ServiceSpec`] → 409 if it exists.
    CreateService,
    /// [`crate::ServiceSpec`]: create or update `service`.
    PutService { service: &'a str },
    /// → [`crate::rest::ServiceInfo`].
    GetService { service: &'a str },
    /// → `[ReplicaInfo]`.
    ServiceReplicas { service: &'a str },
    /// [`crate::logs::LogQuery`] → [`crate::logs::LogsReply`]: the logs of `service`'s
    /// replicas. A read, though a POST (the query carries cursors): clients may send it again
    /// to another control node.
    ServiceLogs { service: &'a str },
    /// [`crate::rest::ScaleRequest`].
    ScaleService { service: &'a str },
    /// Back to the previous version of `service`.
    RollbackService { service: &'a str },
    /// Removes `service` and its replicas.
    RemoveService { service: &'a str },
    /// → `[Secret]`: metadata only, never values.
    ListSecrets,
    /// [`crate::rest::SecretCreate`].
    CreateSecret,
    /// Removes `secret`.
    RemoveSecret { secret: &'a str },
    /// → `[Volume]`.
    ListVolumes,
    /// → `[VolumeInfo]`: each volume with the node that holds it and who mounts it.
    VolumeUsage,
    /// → [`crate::rest::VolumeInfo`] of `volume`.
    GetVolume { volume: &'a str },
    /// [`crate::Volume`]: create or update `volume`.
    PutVolume { volume: &'a str },
    /// Removes `volume`.
    RemoveVolume { volume: &'a str },
    /// → `[SdGroup]` ([`crate::scrape::SdGroup`]): Prometheus HTTP service discovery of
    /// `kind` (`nodes` or `workloads`) across the cluster; `?site=` and `?role=` filter.
    Discovery { kind: &'a str },
}

/// Every route: its value (parameters empty) and `"METHOD /template"`, which is also its
/// metric label.
pub const TABLE: &[(Route<'static>, &str)] = &[
    (Route::ClusterStatus, "GET /cluster"),
    (Route::RotateKeys, "POST /cluster/rotate-keys"),
    (Route::ListTokens, "GET /tokens"),
    (Route::CreateToken, "POST /tokens"),
    (
        Route::RevokeToken { token_id: "" },
        "DELETE /tokens/{token_id}",
    ),
    (Route::ListAdmins, "GET /admins"),
    (Route::CreateAdmin, "POST /admins"),
    (Route::RenewAdmin, "POST /admins/renew"),
    (Route::RevokeAdmin { admin: "" }, "DELETE /admins/{admin}"),
    (Route::ListNodes, "GET /nodes"),
    (Route::GetNode { node: "" }, "GET /nodes/{node}"),
    (Route::DrainNode { node: "" }, "POST /nodes/{node}/drain"),
    (
        Route::ActivateNode { node: "" },
        "POST /nodes/{node}/activate",
    ),
    (Route::RemoveNode { node: "" }, "DELETE /nodes/{node}"),
    (
        Route::RotateNodeKey { node: "" },
        "POST /nodes/{node}/rotate-key",
    ),
    (Route::ListServices, "GET /services"),
    (Route::CreateService, "POST /services"),
    (Route::PutService { service: "" }, "PUT /services/{service}"),
    (Route::GetService { service: "" }, "GET /services/{service}"),
    (
        Route::ServiceReplicas { service: "" },
        "GET /services/{service}/replicas",
    ),
    (
        Route::ServiceLogs { service: "" },
        "POST /services/{service}/logs",
    ),
    (
        Route::ScaleService { service: "" },
        "POST /services/{service}/scale",
    ),
    (
        Route::RollbackService { service: "" },
        "POST /services/{service}/rollback",
    ),
    (
        Route::RemoveService { service: "" },
        "DELETE /services/{service}",
    ),
    (Route::ListSecrets, "GET /secrets"),
    (Route::CreateSecret, "POST /secrets"),
    (
        Route::RemoveSecret { secret: "" },
        "DELETE /secrets/{secret}",
    ),
    (Route::ListVolumes, "GET /volumes"),
    (Route::VolumeUsage, "GET /volume-usage"),
    (Route::GetVolume { volume: "" }, "GET /volumes/{volume}"),
    (Route::PutVolume { volume: "" }, "PUT /volumes/{volume}"),
    (
        Route::RemoveVolume { volume: "" },
        "DELETE /volumes/{volume}",
    ),
    (Route::Discovery { kind: "" }, "GET /sd/{kind}"),
];

/// Why a request matched no route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrouted {
    /// The path is under a resource the API has (`/nodes/…`), but no route of it takes this
    /// method and path: 405.
    MethodNotAllowed,
    /// No such resource: 404.
    NotFound,
}

/// A path parameter the CLI cannot put into a URL.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// A node, token, admin, secret or volume name with characters no Warren name has; they
    /// would need percent-encoding, which the server does not undo.
    #[error("invalid {what} {value:?}: expected a name or id (letters, digits, '-', '.')")]
    Segment {
        /// What the parameter names (`node`, `token id`, …).
        what: String,
        /// The value given.
        value: String,
    },
    /// Not a service name.
    #[error("service name: {}", .0.message)]
    ServiceName(#[source] crate::ValidationError),
}

impl<'a> Route<'a> {
    /// `"METHOD /template"`: the metric label, bounded by the table.
    pub fn label(&self) -> &'static str {
        let kind = std::mem::discriminant(self);
        TABLE
            .iter()
            .find(|(route, _)| std::mem::discriminant(route) == kind)
            .map(|(_, label)| *label)
            .expect("TABLE has a row for every route")
    }

    /// Whether the route only reads, so that a client may send it again to another control
    /// node when an answer is lost: every `GET`, and the logs, a `POST` for its body.
    pub fn is_read(&self) -> bool {
        self.method() == Method::Get || matches!(self, Self::ServiceLogs { .. })
    }

    /// The route's method.
    pub fn method(&self) -> Method {
        let (method, _) = split_label(self.label());
        method
    }

    /// The path template below [`PREFIX`], e.g. `/nodes/{node}`.
    pub fn template(&self) -> &'static str {
        let (_, template) = split_label(self.label());
        template
    }

    /// The path parameter, for routes that have one.
    pub fn param(&self) -> Option<&'a str> {
        let mut route = *self;
        route.param_mut().map(|value| *value)
    }

    fn param_mut(&mut self) -> Option<&mut &'a str> {
        match self {
            Self::RevokeToken { token_id: value }
            | Self::RevokeAdmin { admin: value }
            | Self::GetNode { node: value }
            | Self::DrainNode { node: value }
            | Self::ActivateNode { node: value }
            | Self::RotateNodeKey { node: value }
            | Self::RemoveNode { node: value }
            | Self::PutService { service: value }
            | Self::GetService { service: value }
            | Self::ServiceReplicas { service: value }
            | Self::ServiceLogs { service: value }
            | Self::ScaleService { service: value }
            | Self::RollbackService { service: value }
            | Self::RemoveService { service: value }
            | Self::RemoveSecret { secret: value }
            | Self::PutVolume { volume: value }
            | Self::GetVolume { volume: value }
            | Self::RemoveVolume { volume: value }
            | Self::Discovery { kind: value } => Some(value),
            Self::ClusterStatus
            | Self::RotateKeys
            | Self::ListTokens
            | Self::CreateToken
            | Self::ListAdmins
            | Self::CreateAdmin
            | Self::RenewAdmin
            | Self::ListNodes
            | Self::ListServices
            | Self::CreateService
            | Self::ListSecrets
            | Self::CreateSecret
            | Self::ListVolumes
            | Self::VolumeUsage => None,
        }
    }

    /// The request path below [`PREFIX`], with the parameter checked as the CLI always has:
    /// service names by the service-name rules, other names and ids limited to letters,
    /// digits, `-`, `_` and `.`, so that nothing needs percent-encoding.
    ///
    /// # Errors
    /// [`PathError`] naming the parameter that cannot go into a URL.
    pub fn path(&self) -> Result<String, PathError> {
        let mut path = String::new();
        for part in self.template().split('/').skip(1) {
            path.push('/');
            match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => path.push_str(check_param(name, self.param().unwrap_or(""))?),
                None => path.push_str(part),
            }
        }
        Ok(path)
    }

    /// The route a request's method and `segments` (its path below [`PREFIX`], split at `/`,
    /// empty segments dropped) take, with its parameter borrowed from `segments`.
    ///
    /// # Errors
    /// [`Unrouted`]: 405 under a known resource, 404 elsewhere.
    pub fn recognise(method: &str, segments: &[&'a str]) -> Result<Self, Unrouted> {
        let method = Method::parse(method);
        for (route, label) in TABLE {
            let (route_method, template) = split_label(label);
            if Some(route_method) != method {
                continue;
            }
            if let Some(param) = match_template(template, segments) {
                let mut route: Route<'a> = *route;
                if let (Some(slot), Some(value)) = (route.param_mut(), param) {
                    *slot = value;
                }
                return Ok(route);
            }
        }
        let resource = |label: &'static str| split_label(label).1.split('/').nth(1);
        match segments.first() {
            Some(first) if TABLE.iter().any(|(_, l)| resource(l) == Some(first)) => {
                Err(Unrouted::MethodNotAllowed)
            }
            _ => Err(Unrouted::NotFound),
        }
    }

    /// [`Self::recognise`] for a whole request path (`/v1/nodes/a`).
    ///
    /// # Errors
    /// As [`Self::recognise`].
    pub fn recognise_path(method: &str, path: &'a str) -> Result<Self, Unrouted> {
        Self::recognise(method, &segments(path))
    }
}

/// A request path's segments below [`PREFIX`], empty ones dropped.
pub fn segments(path: &str) -> Vec<&str> {
    path.strip_prefix(PREFIX)
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

fn split_label(label: &'static str) -> (Method, &'static str) {
    let (method, template) = label
        .split_once(' ')
        .expect("a TABLE label is METHOD, space, template");
    let method = Method::parse(method).expect("a TABLE label starts with a known method");
    (method, template)
}

/// `Some(parameter)` when `segments` fit `template`; templates have at most one parameter.
fn match_template<'a>(template: &str, segments: &[&'a str]) -> Option<Option<&'a str>> {
    let mut parts = template.split('/').skip(1);
    let mut segments = segments.iter();
    let mut param = None;
    loop {
        match (parts.next(), segments.next()) {
            (None, None) => return Some(param),
            (Some(part), Some(segment)) if part.starts_with('{') => param = Some(*segment),
            (Some(part), Some(segment)) if part == *segment => {}
            _ => return None,
        }
    }
}

fn check_param<'v>(name: &str, value: &'v str) -> Result<&'v str, PathError> {
    if name == "service" {
        ServiceName::new(value).map_err(PathError::ServiceName)?;
        return Ok(value);
    }
    segment(&name.replace('_', " "), value)
}

/// `value` if it can be a path segment as it is: a name or id of letters, digits, `-`, `_`
/// and `.`, as every Warren name is; `what` names it in the error.
///
/// # Errors
/// [`PathError::Segment`] for anything else, which would need percent-encoding.
pub fn segment<'v>(what: &str, value: &'v str) -> Result<&'v str, PathError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(PathError::Segment {
            what: what.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row as a request: its own path, built with a parameter, is recognised as itself.
    #[test]
    fn every_route_round_trips() {
        for (route, label) in TABLE {
            let mut route = *route;
            if let Some(slot) = route.param_mut() {
                *slot = "web-1";
            }
            assert_eq!(route.label(), *label);
            let path = route.path().expect("a valid parameter");
            let full = format!("{PREFIX}{path}");
            assert_eq!(
                Route::recognise_path(route.method().as_str(), &full),
                Ok(route),
                "{label}"
            );
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<&str> = TABLE.iter().map(|(_, l)| *l).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), TABLE.len());
    }

    #[test]
    fn paths_check_their_parameter() {
        assert_eq!(
            Route::GetNode { node: "edge-1" }.path().unwrap(),
            "/nodes/edge-1"
        );
        assert_eq!(
            Route::ScaleService { service: "web" }.path().unwrap(),
            "/services/web/scale"
        );
        let error = Route::RevokeToken { token_id: "a/b" }.path().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid token id \"a/b\": expected a name or id (letters, digits, '-', '.')"
        );
        assert!(matches!(
            Route::GetService { service: "Web_1" }.path(),
            Err(PathError::ServiceName(_))
        ));
    }

    #[test]
    fn unknown_requests_are_405_under_a_resource_and_404_elsewhere() {
        assert_eq!(
            Route::recognise("PATCH", &["nodes", "a"]),
            Err(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            Route::recognise("GET", &["services", "a", "b", "c"]),
            Err(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            Route::recognise("GET", &["metrics"]),
            Err(Unrouted::NotFound)
        );
        assert_eq!(Route::recognise("GET", &[]), Err(Unrouted::NotFound));
    }
}
