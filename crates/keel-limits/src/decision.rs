//! What a limit decision says: the quotas left, or why a request was
//! refused.

use std::sync::Arc;
use std::time::Duration;

use keel_core::{Cost, ErrorCode};

use crate::rule::Rule;

/// A rule that applies to a request, and the account it charges
/// (`tenant=acme,user=alice`).
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub rule: Arc<Rule>,
    pub scope: String,
}

impl Hit {
    /// The account's storage key: rule id and scope.
    pub fn key(&self) -> (String, String) {
        (self.rule.id.clone(), self.scope.clone())
    }
}

/// What a request may consume (held before the call) or did consume
/// (settled after it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    /// Prompt plus completion tokens.
    pub tokens: u64,
    /// Money.
    pub cost: Cost,
}

/// What is left of the tightest rate limit of one kind, for
/// `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The limit per interval.
    pub limit: u64,
    /// What may still be used now.
    pub remaining: u64,
    /// Time until the full limit is available again.
    pub reset: Duration,
}

/// The tightest request and token quotas a request falls under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Requests.
    pub requests: Option<Quota>,
    /// Tokens.
    pub tokens: Option<Quota>,
}

impl Quotas {
    /// Keeps the quota with the least remaining of each kind.
    pub(crate) fn merge(&mut self, kind: RateKind, quota: Quota) {
        let slot = match kind {
            RateKind::Requests => &mut self.requests,
            RateKind::Tokens => &mut self.tokens,
        };
        if slot.is_none_or(|q| quota.remaining < q.remaining) {
            *slot = Some(quota);
        }
    }
}

/// Which rate a rate rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// Requests.
    Requests,
    /// Tokens.
    Tokens,
}

impl RateKind {
    /// `requests` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
        }
    }
}

/// A request refused because a budget cannot cover its worst case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "budget `{rule}` for {scope} cannot cover this request: cap {cap}, spent {spent}, \
     held by requests in flight {reserved}, this request may cost up to {requested}"
)]
pub struct BudgetExceeded {
    /// The budget's id.
    pub rule: String,
    /// The account within it (`tenant=acme,user=alice`).
    pub scope: String,
    /// The cap.
    pub cap: Cost,
    /// Spent in the current window.
    pub spent: Cost,
    /// Held by requests in flight.
    pub reserved: Cost,
    /// What this request would have held.
    pub requested: Cost,
    /// When the window resets (Unix milliseconds).
    pub resets_at_ms: i64,
}

/// A soft threshold a settlement crossed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThresholdCrossed {
    /// The budget's id.
    pub rule: String,
    /// The account within it.
    pub scope: String,
    /// The threshold, in percent of the cap.
    pub percent: u8,
    /// Spent after the settlement.
    pub spent: Cost,
    /// The cap.
    pub cap: Cost,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The kill switch blocks it.
    #[error("{scope} is blocked by an administrator: {reason}")]
    Blocked {
        /// The blocked scope (`tenant=acme`).
        scope: String,
        /// Why, as the administrator wrote it.
        reason: String,
    },
    /// A request or token rate limit.
    #[error(
        "rate limit `{rule}` for {scope}: {limit} {} per {}; {}",
        kind.as_str(), fmt_interval(*per), rate_advice(*kind, *requested, *limit, *retry_after)
    )]
    Rate {
        /// The rule's id.
        rule: String,
        /// The account.
        scope: String,
        /// Requests or tokens.
        kind: RateKind,
        /// The limit per interval.
        limit: u64,
        /// The interval.
        per: Duration,
        /// What this request asked for.
        requested: u64,
        /// When it would fit; `None` if it never can (asks for more than the
        /// whole limit).
        retry_after: Option<Duration>,
    },
    /// Too many requests in flight.
    #[error(
        "concurrency limit `{rule}` for {scope}: at most {limit} requests in flight; \
         retry when one finishes"
    )]
    Concurrency {
        /// The rule's id.
        rule: String,
        /// The account.
        scope: String,
        /// Requests allowed in flight.
        limit: u64,
    },
    /// A spending cap.
    #[error("{0}")]
    Budget(BudgetExceeded),
    /// The shared backend is unreachable and a fail-closed rule covers the
    /// request.
    #[error("limits backend unavailable and rule `{rule}` fails closed; retry shortly ({error})")]
    Unavailable {
        /// The fail-closed rule.
        rule: String,
        /// What went wrong reaching the backend.
        error: String,
    },
}

/// How long clients are told to wait when the backend is down.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// How long clients are told to wait for a concurrency slot.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

impl Refusal {
    /// The error code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Blocked { .. } => ErrorCode::Forbidden,
            Refusal::Rate { .. } | Refusal::Concurrency { .. } => ErrorCode::RateLimited,
            Refusal::Budget(_) => ErrorCode::BudgetExceeded,
            Refusal::Unavailable { .. } => ErrorCode::LimitsUnavailable,
        }
    }

    /// When to retry, given the current time; `None` when retrying cannot
    /// help (blocked, or asking for more than a whole limit).
    pub fn retry_after(&self, now_ms: i64) -> Option<Duration> {
        match self {
            Refusal::Blocked { .. } => None,
            Refusal::Rate { retry_after, .. } => *retry_after,
            Refusal::Concurrency { .. } => Some(CONCURRENCY_RETRY),
            Refusal::Budget(b) => Some(crate::clock::ms(b.resets_at_ms.saturating_sub(now_ms))),
            Refusal::Unavailable { .. } => Some(UNAVAILABLE_RETRY),
        }
    }

    /// The rule's id, for metrics.
    pub fn rule(&self) -> &str {
        match self {
            Refusal::Blocked { .. } => "_blocked",
            Refusal::Rate { rule, .. }
            | Refusal::Concurrency { rule, .. }
            | Refusal::Unavailable { rule, .. } => rule,
            Refusal::Budget(b) => &b.rule,
        }
    }

    /// The kind of refusal, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Blocked { .. } => "blocked",
            Refusal::Rate { kind, .. } => kind.as_str(),
            Refusal::Concurrency { .. } => "concurrency",
            Refusal::Budget(_) => "budget",
            Refusal::Unavailable { .. } => "unavailable",
        }
    }
}

fn rate_advice(kind: RateKind, requested: u64, limit: u64, retry: Option<Duration>) -> String {
    match retry {
        Some(wait) => format!("retry in {:.1}s", wait.as_secs_f64()),
        None => format!(
            "this request needs {requested} {}, more than the whole limit{}",
            kind.as_str(),
            if kind == RateKind::Tokens {
                format!(" of {limit}; lower max_tokens or shorten the prompt")
            } else {
                String::new()
            }
        ),
    }
}

/// `90s` → `1m30s`, as OpenAI writes reset times.
pub fn fmt_interval(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let (h, m) = ((secs / 3600.0).floor(), ((secs % 3600.0) / 60.0).floor());
    let s = secs % 60.0;
    let mut out = String::new();
    if h > 0.0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0.0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0.0 || out.is_empty() {
        if s.fract() == 0.0 {
            out.push_str(&format!("{s}s"));
        } else {
            out.push_str(&format!("{s:.3}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_like_openai_resets() {
        assert_eq!(fmt_interval(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_interval(Duration::from_secs(60)), "1m");
        assert_eq!(fmt_interval(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_interval(Duration::from_millis(6_500)), "6.500s");
        assert_eq!(fmt_interval(Duration::from_secs(3_600 * 24)), "24h");
    }
}
