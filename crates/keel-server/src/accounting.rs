//! Attribution and accounting of each request: who made it, what it cost,
//! and the metrics and ledger row it leaves behind.
//!
//! A request is attributed when it is authenticated (tenant, user, key) and
//! from its headers (`x-keel-session`, `x-keel-workflow`). When it finishes,
//! [`RequestContext::finish`] records metrics and hands a usage row to the
//! ledger, whose bounded queue writes it off the hot path.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use keel_core::{Cost, ErrorCode, RequestId};
use keel_gateway::Served;
use keel_store::UsageRecord;
use keel_telemetry::InFlight;
use keel_telemetry::metrics::{ErrorLabels, ModelLabels, RequestLabels, SpendLabels, TokenLabels};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest accepted value of an attribution header.
const MAX_TAG_LEN: usize = 128;

/// Everything known about a request while it is served.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request's id, echoed as `x-request-id`.
    pub request_id: RequestId,
    /// When it arrived.
    pub started: Instant,
    /// Who sent it.
    pub caller: Caller,
    /// `x-keel-session`.
    pub session: Option<String>,
    /// `x-keel-workflow`.
    pub workflow: Option<String>,
    /// `chat` or `embeddings`.
    pub route: &'static str,
    /// Counts the request in `keel_in_flight_requests` until the last copy
    /// of this context (a stream's, for streams) is dropped.
    _in_flight: Arc<InFlight>,
}

/// How a request ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The model alias asked for ("" if the body did not parse).
    pub model: String,
    /// Who served it.
    pub served: Option<Served>,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// The HTTP status sent (200 for streams that later failed).
    pub status: u16,
    /// The error, if it failed.
    pub error: Option<ErrorCode>,
    /// Whether it was streamed.
    pub stream: bool,
    /// Time to the first streamed content.
    pub ttft: Option<Duration>,
    /// What the response cache did, when it saw the request.
    pub cache: Option<CacheUse>,
}

/// What the response cache did for a request: its outcome, and for hits
/// the tokens and cost the stored answer saved.
#[derive(Debug, Clone, Default)]
pub struct CacheUse {
    /// `miss`, `exact`, `semantic` or `stale`.
    pub kind: &'static str,
    /// Prompt tokens not sent upstream.
    pub saved_prompt_tokens: u64,
    /// Completion tokens not generated.
    pub saved_completion_tokens: u64,
    /// What generating the answer cost when it was stored.
    pub saved_cost: Cost,
}

impl CacheUse {
    /// A miss.
    pub fn miss() -> CacheUse {
        CacheUse {
            kind: "miss",
            ..CacheUse::default()
        }
    }

    /// A hit on `entry`.
    pub fn hit(kind: keel_cache::HitKind, entry: &keel_cache::Entry) -> CacheUse {
        CacheUse {
            kind: kind.as_str(),
            saved_prompt_tokens: entry.prompt_tokens,
            saved_completion_tokens: entry.completion_tokens,
            saved_cost: Cost(u64::try_from(entry.cost_micros).unwrap_or(0)),
        }
    }
}

impl RequestContext {
    /// Attributes a request from its caller and headers.
    pub fn new(
        state: &AppState,
        caller: Caller,
        headers: &HeaderMap,
        route: &'static str,
        started: Instant,
    ) -> Result<RequestContext, ApiError> {
        Ok(RequestContext {
            _in_flight: Arc::new(state.metrics.enter_request()),
            request_id: RequestId::generate(),
            started,
            caller,
            session: tag(headers, "x-keel-session")?,
            workflow: tag(headers, "x-keel-workflow")?,
            route,
        })
    }

    /// Records metrics and the ledger row; returns the call's cost and the
    /// gateway's own overhead.
    pub async fn finish(&self, state: &AppState, outcome: Outcome) -> (Cost, Duration) {
        let elapsed = self.started.elapsed();
        let upstream = outcome
            .served
            .as_ref()
            .map_or(Duration::ZERO, |s| s.upstream_time);
        // For streams, overhead is measured to the first token: the stream's
        // length after that is the upstream's pace, not keel's.
        let overhead = match (outcome.ttft, &outcome.served) {
            (Some(ttft), Some(_)) => ttft.saturating_sub(upstream),
            _ => elapsed.saturating_sub(upstream),
        };
        let cost = outcome.served.as_ref().map_or(Cost::ZERO, |s| {
            s.pricing
                .cost(outcome.prompt_tokens, outcome.completion_tokens)
        });
        self.record_metrics(state, &outcome, elapsed, overhead, cost);

        let row = UsageRecord {
            request_id: self.request_id.to_string(),
            ts_ms: keel_core::now_unix_ms(),
            tenant_id: self.caller.tenant_id.to_string(),
            user_id: self.caller.user_id.as_ref().map(ToString::to_string),
            key_id: Some(self.caller.key_id.to_string()),
            session: self.session.clone(),
            workflow: self.workflow.clone(),
            model: outcome.model.clone(),
            deployment: outcome.served.as_ref().map(|s| s.deployment.to_string()),
            provider: outcome.served.as_ref().map(|s| s.provider.clone()),
            prompt_tokens: to_i64(outcome.prompt_tokens),
            completion_tokens: to_i64(outcome.completion_tokens),
            cost_micros: to_i64(cost.micros()),
            latency_us: micros(elapsed),
            overhead_us: micros(overhead),
            ttft_us: outcome.ttft.map(micros),
            status: i64::from(outcome.status),
            error_code: outcome.error.map(|c| c.as_str().to_owned()),
            stream: outcome.stream,
            attempts: outcome.served.as_ref().map_or(0, |s| i64::from(s.attempts)),
            cache: outcome.cache.as_ref().map(|c| c.kind.to_owned()),
            saved_prompt_tokens: outcome
                .cache
                .as_ref()
                .map_or(0, |c| to_i64(c.saved_prompt_tokens)),
            saved_completion_tokens: outcome
                .cache
                .as_ref()
                .map_or(0, |c| to_i64(c.saved_completion_tokens)),
            saved_cost_micros: outcome
                .cache
                .as_ref()
                .map_or(0, |c| to_i64(c.saved_cost.micros())),
        };
        if state.ledger.record(row).await.is_err() {
            // Only during shutdown, after intake closed: the row cannot be
            // stored, and saying so is better than pretending.
            tracing::error!(request_id = %self.request_id, "Usage ledger closed; row not recorded");
        }
        state
            .metrics
            .ledger_pending
            .set(i64::try_from(state.ledger.pending()).unwrap_or(i64::MAX));
        (cost, overhead)
    }

    fn record_metrics(
        &self,
        state: &AppState,
        outcome: &Outcome,
        elapsed: Duration,
        overhead: Duration,
        cost: Cost,
    ) {
        let m = &state.metrics;
        // Unknown model names never become label values.
        let model = if state.gateway.model_kind(&outcome.model).is_some() {
            outcome.model.clone()
        } else {
            "_unknown".to_owned()
        };
        let labels = RequestLabels {
            route: self.route,
            model: model.clone(),
            outcome: outcome.error.map_or("ok", ErrorCode::as_str),
        };
        m.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(code) = outcome.error {
            let labels = ErrorLabels {
                class: code.class().as_str(),
                code: code.as_str(),
            };
            m.errors.get_or_create(&labels).inc();
        }
        let tenant = self.caller.tenant_id.to_string();
        if let Some(cache) = outcome.cache.as_ref().filter(|c| c.kind != "miss") {
            for (direction, n) in [
                ("prompt", cache.saved_prompt_tokens),
                ("completion", cache.saved_completion_tokens),
            ] {
                let labels = TokenLabels {
                    tenant: tenant.clone(),
                    model: model.clone(),
                    direction,
                };
                m.cache_saved_tokens.get_or_create(&labels).inc_by(n);
            }
            let labels = SpendLabels {
                tenant: tenant.clone(),
                model: model.clone(),
            };
            m.cache_saved_micros
                .get_or_create(&labels)
                .inc_by(cache.saved_cost.micros());
        }
        if outcome.served.is_none() {
            return;
        }
        let by_model = ModelLabels {
            model: model.clone(),
        };
        m.gateway_overhead
            .get_or_create(&by_model)
            .observe(overhead.as_secs_f64());
        if let Some(ttft) = outcome.ttft {
            m.time_to_first_token
                .get_or_create(&by_model)
                .observe(ttft.as_secs_f64());
        }
        for (direction, n) in [
            ("prompt", outcome.prompt_tokens),
            ("completion", outcome.completion_tokens),
        ] {
            let labels = TokenLabels {
                tenant: tenant.clone(),
                model: model.clone(),
                direction,
            };
            m.tokens.get_or_create(&labels).inc_by(n);
        }
        m.cost_micros
            .get_or_create(&SpendLabels { tenant, model })
            .inc_by(cost.micros());
    }
}

/// Reads an optional attribution header, refusing unusable values.
fn tag(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text =
        value.to_str().ok().map(str::trim).filter(|t| {
            !t.is_empty() && t.len() <= MAX_TAG_LEN && t.chars().all(|c| !c.is_control())
        });
    match text {
        Some(t) => Ok(Some(t.to_owned())),
        None => Err(ApiError::field(
            ErrorCode::InvalidRequest,
            name,
            format!("header `{name}` must be 1 to {MAX_TAG_LEN} printable characters"),
        )),
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A rough token count for text an upstream did not count for us: about
/// four characters a token for English, never zero for non-empty text.
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribution_headers_are_checked() {
        let mut h = HeaderMap::new();
        h.insert("x-keel-session", "s-1".parse().unwrap());
        assert_eq!(tag(&h, "x-keel-session").unwrap().as_deref(), Some("s-1"));
        h.insert("x-keel-workflow", "x".repeat(200).parse().unwrap());
        assert_eq!(
            tag(&h, "x-keel-workflow").unwrap_err().param.as_deref(),
            Some("x-keel-workflow")
        );
        assert_eq!(tag(&h, "absent").unwrap(), None);
    }

    #[test]
    fn estimates_are_never_zero_for_text() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("hi"), 1);
        assert_eq!(estimate_tokens("12345678"), 2);
    }
}
