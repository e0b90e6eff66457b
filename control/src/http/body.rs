//! Request bodies: JSON read within `MAX_BODY_BYTES`; an oversized body is drained (bounded)
//! so that the client gets its 413.

use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use warren_api::rest::MAX_BODY_BYTES;

use super::ApiError;

/// Up to this much of an oversized body is read and discarded before answering 413, so a
/// client still sending gets the answer instead of a broken pipe. Larger bodies are cut off.
const MAX_DRAIN_BYTES: u64 = 4 * MAX_BODY_BYTES as u64;

/// The request body as JSON `T`, refused past `MAX_BODY_BYTES`.
pub(super) async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = request.into_body();
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        if declared.is_some_and(|len| len <= MAX_DRAIN_BYTES) {
            drain(&mut body).await;
        }
        return Err(ApiError::TooLarge);
    }
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Invalid(format!("cannot read body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > MAX_BODY_BYTES {
                drain(&mut body).await;
                return Err(ApiError::TooLarge);
            }
            collected.extend_from_slice(data);
        }
    }
    serde_json::from_slice(&collected).map_err(|e| ApiError::Invalid(format!("body: {e}")))
}

/// Reads and discards the rest of a body, bounded in bytes and time.
async fn drain(body: &mut Incoming) {
    let mut seen = 0u64;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > MAX_DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), discard).await;
}
