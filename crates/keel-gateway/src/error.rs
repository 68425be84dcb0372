//! Errors of one upstream attempt and of a whole gateway call.
//!
//! An [`AttemptError`] says what went wrong with one deployment and what the
//! router should do next (fail over, count it against the breaker, wait for
//! `Retry-After`). A [`GatewayError`] is what the client finally sees when no
//! attempt succeeded.

use std::time::Duration;

use keel_core::ErrorCode;

/// What went wrong with one upstream attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AttemptError {
    /// The error code it maps to.
    pub code: ErrorCode,
    /// What happened, safe to show a client (no upstream secrets).
    pub message: String,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    /// How long the upstream asked us to wait.
    pub retry_after: Option<Duration>,
}

impl AttemptError {
    /// An attempt error with no status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> AttemptError {
        AttemptError {
            code,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    /// Classifies an upstream's non-success status.
    pub fn from_status(status: u16, detail: &str, retry_after: Option<Duration>) -> AttemptError {
        let (code, what) = match status {
            429 => (ErrorCode::UpstreamRateLimited, "rate limited keel"),
            401 | 403 => (ErrorCode::UpstreamUnavailable, "refused keel's credentials"),
            404 => (
                ErrorCode::UpstreamBadResponse,
                "does not know the configured model",
            ),
            408 | 500..=599 => (ErrorCode::UpstreamUnavailable, "failed"),
            400..=499 => (ErrorCode::UpstreamRejected, "rejected the request"),
            _ => (
                ErrorCode::UpstreamBadResponse,
                "answered with an unexpected status",
            ),
        };
        let detail = truncate(detail, 300);
        let message = if detail.is_empty() {
            format!("upstream {what} (HTTP {status})")
        } else {
            format!("upstream {what} (HTTP {status}): {detail}")
        };
        AttemptError {
            code,
            message,
            status: Some(status),
            retry_after,
        }
    }

    /// Whether the next deployment might succeed where this one failed. A
    /// request the upstream called invalid would be invalid anywhere.
    pub fn should_fail_over(&self) -> bool {
        self.code != ErrorCode::UpstreamRejected
    }

    /// Whether this failure says the deployment is unhealthy.
    pub fn counts_against_deployment(&self) -> bool {
        self.code != ErrorCode::UpstreamRejected
    }
}

/// The final failure of a gateway call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    /// The error code.
    pub code: ErrorCode,
    /// What happened and what to do, for the client.
    pub message: String,
    /// When the client may try again.
    pub retry_after: Option<Duration>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The field at fault, for caller errors.
    pub param: Option<String>,
}

impl GatewayError {
    /// A caller error naming a field.
    pub fn caller(code: ErrorCode, param: &str, message: impl Into<String>) -> GatewayError {
        GatewayError {
            code,
            message: message.into(),
            retry_after: None,
            attempts: 0,
            param: Some(param.to_owned()),
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        assert_eq!(
            AttemptError::from_status(429, "", None).code,
            ErrorCode::UpstreamRateLimited
        );
        assert_eq!(
            AttemptError::from_status(503, "", None).code,
            ErrorCode::UpstreamUnavailable
        );
        let rejected = AttemptError::from_status(400, "bad tool schema", None);
        assert_eq!(rejected.code, ErrorCode::UpstreamRejected);
        assert!(!rejected.should_fail_over());
        assert!(rejected.message.contains("bad tool schema"));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
