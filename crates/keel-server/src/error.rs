//! The server's one error type: every failure a client can see.
//!
//! Each [`ApiError`] carries a keel-core [`ErrorCode`], which fixes its HTTP
//! status, its OpenAI-style `type`/`code` strings and its log level. Messages
//! say what was wrong and how to fix it; internal detail (database errors,
//! upstream credentials) is logged, never sent.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use keel_core::{ErrorBody, ErrorClass, ErrorCode, RequestError};
use keel_gateway::GatewayError;

/// A failed request, ready to be sent.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong, for the client.
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// When the client may retry.
    pub retry_after: Option<Duration>,
    /// Extra response headers (`x-ratelimit-*` on limit refusals).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// An error naming the field at fault.
    pub fn field(code: ErrorCode, param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_owned()),
            ..ApiError::new(code, message)
        }
    }

    /// An internal failure: the detail is logged, the client gets a generic
    /// message.
    pub fn internal(context: &str, detail: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(context, error = %detail, "Internal error");
        ApiError::new(
            ErrorCode::Internal,
            format!("keel failed to {context}; retry later"),
        )
    }

    /// The OpenAI-style body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone(), self.param.clone())
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        ApiError {
            code: e.code,
            message: e.message,
            param: e.param,
            retry_after: None,
            headers: Vec::new(),
        }
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> ApiError {
        ApiError {
            code: e.code,
            message: e.message,
            param: e.param,
            retry_after: e.retry_after,
            headers: Vec::new(),
        }
    }
}

impl From<keel_vector::VectorError> for ApiError {
    fn from(e: keel_vector::VectorError) -> ApiError {
        use keel_vector::VectorError as V;
        match e {
            V::Invalid { ref field, .. } | V::Dimension { ref field, .. } => {
                ApiError::field(ErrorCode::InvalidRequest, &field.clone(), e.to_string())
            }
            V::NotFound { .. } => ApiError::field(ErrorCode::NotFound, "collection", e.to_string()),
            V::AlreadyExists { .. } => ApiError::field(ErrorCode::Conflict, "name", e.to_string()),
            other => ApiError::internal("use the vector store", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.code.class() {
            ErrorClass::Internal => {}
            ErrorClass::Upstream => {
                tracing::warn!(code = self.code.as_str(), message = %self.message, "Upstream failure")
            }
            ErrorClass::Caller | ErrorClass::Policy => {
                tracing::debug!(code = self.code.as_str(), message = %self.message, "Request refused")
            }
        }
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits exactly this
            // long must not arrive early.
            let secs = wait.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let mut e = ApiError::new(ErrorCode::UpstreamUnavailable, "down");
        e.retry_after = Some(Duration::from_millis(1200));
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "2");
    }
}
