//! The closed vocabulary of errors keel reports.
//!
//! Every failure keel shows a client, writes to the ledger or counts in a
//! metric is one [`ErrorCode`]. Each code belongs to one [`ErrorClass`] (whose
//! fault it was), maps to one HTTP status, and has stable `type` and `code`
//! strings for OpenAI-style error bodies, so dashboards and clients can match
//! on them without parsing messages.

use serde::{Deserialize, Serialize};

/// Whose fault a failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The request was wrong: fix it before retrying.
    Caller,
    /// A limit, budget or block refused the request.
    Policy,
    /// Every upstream that could serve it failed.
    Upstream,
    /// keel itself failed.
    Internal,
}

impl ErrorClass {
    /// The stable lowercase name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Caller => "caller",
            ErrorClass::Policy => "policy",
            ErrorClass::Upstream => "upstream",
            ErrorClass::Internal => "internal",
        }
    }
}

/// One kind of failure. The list is closed on purpose: adding a variant is a
/// change to keel's public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is JSON, but a field is missing, of the wrong type, or has
    /// a bad value (`param` names it).
    InvalidRequest,
    /// The body is not valid JSON at all.
    InvalidJson,
    /// No API key, or one keel does not know.
    InvalidApiKey,
    /// The key is valid but its tenant, user or key is blocked.
    Forbidden,
    /// The path or resource does not exist.
    NotFound,
    /// The model name is not configured.
    ModelNotFound,
    /// The resource already exists.
    Conflict,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// A rate limit refused the request.
    RateLimited,
    /// A spending cap refused the request.
    BudgetExceeded,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// No upstream could be reached (all failed or all breakers are open).
    UpstreamUnavailable,
    /// The upstream refused with 429.
    UpstreamRateLimited,
    /// The upstream answered with something keel could not use.
    UpstreamBadResponse,
    /// The upstream refused the request as invalid (a 4xx other than 429).
    UpstreamRejected,
    /// The shared limits backend (Redis) is unreachable and a rule that
    /// fails closed covers the request.
    LimitsUnavailable,
    /// keel itself failed.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidApiKey,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::ModelNotFound,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::BudgetExceeded,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamRateLimited,
        ErrorCode::UpstreamBadResponse,
        ErrorCode::UpstreamRejected,
        ErrorCode::LimitsUnavailable,
        ErrorCode::Internal,
    ];

    /// Whose fault this kind of failure is.
    pub fn class(self) -> ErrorClass {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidJson | InvalidApiKey | NotFound | ModelNotFound | Conflict
            | PayloadTooLarge | UnsupportedMediaType => ErrorClass::Caller,
            Forbidden | RateLimited | BudgetExceeded | LimitsUnavailable => ErrorClass::Policy,
            UpstreamTimeout | UpstreamUnavailable | UpstreamRateLimited | UpstreamBadResponse
            | UpstreamRejected => ErrorClass::Upstream,
            Internal => ErrorClass::Internal,
        }
    }

    /// The HTTP status a client sees.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidJson | UpstreamRejected => 400,
            InvalidApiKey => 401,
            BudgetExceeded => 402,
            Forbidden => 403,
            NotFound | ModelNotFound => 404,
            Conflict => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimited | UpstreamRateLimited => 429,
            Internal => 500,
            UpstreamBadResponse => 502,
            UpstreamUnavailable | LimitsUnavailable => 503,
            UpstreamTimeout => 504,
        }
    }

    /// The OpenAI-style `error.type` string.
    pub fn error_type(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidJson | NotFound | ModelNotFound | Conflict
            | PayloadTooLarge | UnsupportedMediaType => "invalid_request_error",
            InvalidApiKey => "authentication_error",
            Forbidden => "permission_error",
            RateLimited => "rate_limit_error",
            BudgetExceeded => "insufficient_quota",
            UpstreamTimeout | UpstreamUnavailable | UpstreamRateLimited | UpstreamBadResponse
            | UpstreamRejected => "upstream_error",
            LimitsUnavailable | Internal => "internal_error",
        }
    }

    /// The stable `error.code` string, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            InvalidJson => "invalid_json",
            InvalidApiKey => "invalid_api_key",
            Forbidden => "forbidden",
            NotFound => "not_found",
            ModelNotFound => "model_not_found",
            Conflict => "conflict",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limit_exceeded",
            BudgetExceeded => "budget_exceeded",
            UpstreamTimeout => "upstream_timeout",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamRateLimited => "upstream_rate_limited",
            UpstreamBadResponse => "upstream_bad_response",
            UpstreamRejected => "upstream_rejected",
            LimitsUnavailable => "limits_unavailable",
            Internal => "internal_error",
        }
    }

    /// Whether a client may succeed by sending the same request again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::UpstreamTimeout
                | ErrorCode::UpstreamUnavailable
                | ErrorCode::UpstreamRateLimited
                | ErrorCode::UpstreamBadResponse
                | ErrorCode::LimitsUnavailable
                | ErrorCode::Internal
        )
    }
}

/// The body of an OpenAI-style error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The fields inside an OpenAI-style error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// What went wrong and how to fix it, for humans.
    pub message: String,
    /// The OpenAI-style error type (see [`ErrorCode::error_type`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The stable code (see [`ErrorCode::as_str`]).
    pub code: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
}

impl ErrorBody {
    /// Builds the body for `code` with a message and optional field name.
    pub fn new(code: ErrorCode, message: impl Into<String>, param: Option<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: code.error_type().to_owned(),
                code: code.as_str().to_owned(),
                param,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_distinct_stable_strings() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(
                seen.insert(code.as_str()),
                "duplicate code {}",
                code.as_str()
            );
            assert!((400..600).contains(&code.http_status()));
        }
    }

    #[test]
    fn classes_match_statuses() {
        for code in ErrorCode::ALL {
            match code.class() {
                ErrorClass::Caller => {
                    assert!(code.http_status() < 500 && code.http_status() != 429)
                }
                ErrorClass::Internal => assert_eq!(code.http_status(), 500),
                _ => {}
            }
        }
    }

    #[test]
    fn body_has_openai_shape() {
        let body = ErrorBody::new(
            ErrorCode::ModelNotFound,
            "no such model",
            Some("model".into()),
        );
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["code"], "model_not_found");
        assert_eq!(json["error"]["param"], "model");
    }
}
