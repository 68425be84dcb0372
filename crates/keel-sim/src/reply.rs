//! Building responses: JSON bodies, error bodies in the OpenAI and Anthropic
//! shapes, and the broken bodies of the `cut` and `malformed` faults.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::error::SimError;
use crate::fault::FaultKind;

/// The body sent by the `malformed` fault on plain requests.
const MALFORMED_BODY: &str = "{not json";

/// Which API family an endpoint speaks, deciding the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error": {"message", "type", "code", "param"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

impl Dialect {
    /// A 400 response for a request the simulator refuses.
    pub(crate) fn invalid(self, err: &SimError) -> Response {
        let message = err.to_string();
        let body = match self {
            Dialect::OpenAi => json!({"error": {
                "message": message,
                "type": "invalid_request_error",
                "code": err.code(),
                "param": err.param(),
            }}),
            Dialect::Anthropic => json!({"type": "error", "error": {
                "type": "invalid_request_error",
                "message": message,
            }}),
        };
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    }

    /// The error response of an injected status fault (429, 500 or 503).
    ///
    /// Other kinds are not statuses; they get a 500 so a misuse is visible.
    pub(crate) fn fault(self, kind: FaultKind) -> Response {
        let (status, openai_type, code, anthropic_type, message) = match kind {
            FaultKind::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "rate_limit_exceeded",
                "rate_limit_error",
                "Rate limit reached (injected by keel sim); retry after 1 second",
            ),
            FaultKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
                "overloaded_error",
                "The server is overloaded (injected by keel sim)",
            ),
            FaultKind::ServerError
            | FaultKind::Hang
            | FaultKind::CutStream
            | FaultKind::Malformed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "api_error",
                "The server had an error (injected by keel sim)",
            ),
        };

        let body = match self {
            Dialect::OpenAi => json!({"error": {
                "message": message, "type": openai_type, "code": code, "param": null,
            }}),
            Dialect::Anthropic => json!({"type": "error", "error": {
                "type": anthropic_type, "message": message,
            }}),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if kind == FaultKind::RateLimited {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Encodes `value` as JSON.
///
/// Encoding only fails if a `Serialize` impl does, which the simulator's
/// borrowed response structs never do; `null` keeps the types simple.
pub(crate) fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|err| {
        tracing::error!(%err, "Failed to encode a response body");
        b"null".to_vec()
    })
}

/// A 200 `application/json` response with an already encoded body.
pub(crate) fn json_body(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The `cut` fault on a plain request: 200 headers, the first half of
/// `body`, then the connection drops.
pub(crate) fn cut_json(mut body: Vec<u8>) -> Response {
    body.truncate(body.len() / 2);
    let chunks = async_stream::stream! {
        yield Ok(Bytes::from(body));
        // Let hyper flush the half body before the error aborts the
        // connection; otherwise the client may see no body at all.
        tokio::task::yield_now().await;
        yield Err(cut_error());
    };
    let headers = [(header::CONTENT_TYPE, "application/json")];
    (headers, Body::from_stream(chunks)).into_response()
}

/// The `malformed` fault on a plain request: 200 with a body that is not
/// JSON.
pub(crate) fn malformed_json() -> Response {
    json_body(MALFORMED_BODY.as_bytes().to_vec())
}

/// The error that makes hyper abort a response mid-body.
pub(crate) fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "stream cut by keel sim fault",
    )
}

/// Seconds since the Unix epoch, for `created` fields.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// How many tokens to answer with and whether the request's own limit cut
/// the answer short.
pub(crate) fn completion_budget(configured: u32, max_tokens: Option<u32>) -> (u32, bool) {
    let configured = configured.clamp(1, crate::config::MAX_COMPLETION_TOKENS);
    match max_tokens {
        Some(limit) if limit < configured => (limit, true),
        _ => (configured, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_capped_by_max_tokens() {
        assert_eq!(completion_budget(16, None), (16, false));
        assert_eq!(completion_budget(16, Some(16)), (16, false));
        assert_eq!(completion_budget(16, Some(100)), (16, false));
        assert_eq!(completion_budget(16, Some(4)), (4, true));
    }

    #[test]
    fn rate_limit_fault_sets_retry_after() {
        let response = Dialect::Anthropic.fault(FaultKind::RateLimited);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn server_faults_have_no_retry_after() {
        let response = Dialect::OpenAi.fault(FaultKind::Unavailable);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
