//! The answers: JSON bodies, errors as [`ErrorBody`], and what a write answers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;
use warren_api::rest::{ErrorBody, WriteResult};

use super::ApiError;
use crate::command::{Effect, Outcome};

/// A handler's answer; an error becomes its status and an [`ErrorBody`].
pub(super) type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

/// `value` as pretty JSON with `status`.
pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).expect("API types serialize to JSON");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

pub(super) fn ok<T: Serialize>(value: &T) -> ApiResult {
    Ok(json(StatusCode::OK, value))
}

/// What a write answers: its revision and effect, 201 when it created the object.
pub(super) fn written(outcome: Outcome) -> ApiResult {
    let revision = outcome.revision.0;
    let result = match outcome.result? {
        Effect::Service {
            version,
            changed,
            created,
        } => WriteResult {
            revision,
            changed,
            created,
            version: Some(version),
        },
        Effect::None => WriteResult {
            revision,
            changed: false,
            created: false,
            version: None,
        },
        Effect::Node(_) | Effect::Done => WriteResult {
            revision,
            changed: true,
            created: false,
            version: None,
        },
    };
    let status = if result.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &result))
}

/// The answer to a failed request: the error's status and an [`ErrorBody`].
pub(super) fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    let (status, code) = error.status();
    json(
        status,
        &ErrorBody {
            error: error.to_string(),
            code: code.to_owned(),
        },
    )
}
