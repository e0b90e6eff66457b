//! [`ApiError`]: what can go wrong answering a request, and the one place it becomes an HTTP
//! status.

use hyper::StatusCode;
use warren_api::rest::MAX_BODY_BYTES;

use crate::command::{Rejection, RejectionCode};
use crate::rpc::ProposeError;

/// An API failure; [`ApiError::status`] is the one place errors become HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such object or route.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with current state.
    #[error("{0}")]
    Conflict(String),
    /// Body over the limit.
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// No quorum reachable.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Method not allowed on the route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The client's certificate is revoked, or is not one the cluster recorded.
    #[error("{0}")]
    Forbidden(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and the machine-readable code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(error: ProposeError) -> Self {
        match error {
            ProposeError::Membership(m) => Self::Conflict(m),
            busy @ ProposeError::MembershipBusy(_) => Self::Conflict(busy.to_string()),
            ProposeError::ShuttingDown => {
                Self::NoQuorum("this control node is shutting down".into())
            }
            other => Self::NoQuorum(
                other
                    .to_string()
                    .trim_start_matches("no quorum: ")
                    .to_owned(),
            ),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection.code {
            RejectionCode::NotFound => Self::NotFound(rejection.message),
            RejectionCode::Conflict => Self::Conflict(rejection.message),
            RejectionCode::Invalid | RejectionCode::TokenRefused => {
                Self::Invalid(rejection.message)
            }
        }
    }
}
