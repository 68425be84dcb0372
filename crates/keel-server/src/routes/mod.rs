//! HTTP handlers, one module per area. Handlers stay thin: they parse,
//! call the gateway or store, and shape the response.

pub mod admin;
pub mod chat;
pub mod embeddings;
pub mod health;
pub mod models;

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use keel_gateway::Served;

use crate::accounting::{Outcome, RequestContext};
use crate::error::ApiError;
use crate::state::AppState;

/// Accounts for a refused or failed request and passes its error on.
pub(crate) async fn refuse(
    state: &AppState,
    ctx: &RequestContext,
    model: String,
    error: ApiError,
) -> ApiError {
    let outcome = Outcome {
        model,
        status: error.code.http_status(),
        error: Some(error.code),
        ..Outcome::default()
    };
    ctx.finish(state, outcome).await;
    error
}

/// Adds `x-request-id`, `x-keel-deployment` and `x-keel-overhead-ms`.
pub(crate) fn gateway_headers(
    headers: &mut HeaderMap,
    ctx: &RequestContext,
    served: Option<&Served>,
    overhead: Option<Duration>,
) {
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    put("x-request-id", ctx.request_id.as_str());
    if let Some(served) = served {
        put("x-keel-deployment", &served.deployment);
        put("x-keel-model", &served.model);
        put("x-keel-attempts", &served.attempts.to_string());
    }
    if let Some(overhead) = overhead {
        put(
            "x-keel-overhead-ms",
            &format!("{:.3}", overhead.as_secs_f64() * 1000.0),
        );
    }
}
