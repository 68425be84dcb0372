//! Reading JSON request bodies under the configured size limit.

use axum::body::Body;
use keel_core::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reads the whole body (refusing more than `limit` bytes with 413) and
/// parses it, naming the first bad field.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than the {limit}-byte limit"),
            )
        } else {
            ApiError::new(ErrorCode::InvalidRequest, "request body could not be read")
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "request body is empty; send a JSON object",
        ));
    }
    Ok(keel_core::parse_json(&bytes)?)
}
