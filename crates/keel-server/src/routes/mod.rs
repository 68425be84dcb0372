//! HTTP handlers, one module per area. Handlers stay thin: they parse,
//! call the gateway or store, and shape the response.

pub mod admin;
pub mod cache;
pub mod chat;
pub mod collections;
pub mod embeddings;
pub mod flow;
pub mod health;
pub mod limits;
pub mod models;
pub mod tasks;
pub mod usage;

use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, HeaderValue};
use keel_core::RequestError;
use keel_core::chat::ChatRequest;
use keel_core::embeddings::EmbeddingRequest;
use keel_gateway::Served;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::accounting::{Outcome, RequestContext};
use crate::body::read_json;
use crate::error::ApiError;
use crate::state::AppState;

/// A request body the gateway serves: it names a model and can check its
/// own values.
pub(crate) trait ModelRequest: DeserializeOwned {
    fn model(&self) -> &str;
    fn validate(&self) -> Result<(), RequestError>;
}

impl ModelRequest for ChatRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn validate(&self) -> Result<(), RequestError> {
        ChatRequest::validate(self)
    }
}

impl ModelRequest for EmbeddingRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn validate(&self) -> Result<(), RequestError> {
        EmbeddingRequest::validate(self)
    }
}

/// The common start of every model route: authenticate, attribute, read and
/// check the body. A refusal after authentication is accounted to the caller.
pub(crate) async fn admit<T: ModelRequest>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    route: &'static str,
) -> Result<(RequestContext, T), ApiError> {
    let started = Instant::now();
    let caller = state.keys.authenticate(headers)?;
    let ctx = RequestContext::new(state, caller, headers, route, started)?;
    let request: T = match read_json(body, state.settings.max_body_bytes).await {
        Ok(request) => request,
        Err(e) => return Err(refuse(state, &ctx, String::new(), e).await),
    };
    if let Err(e) = request.validate() {
        return Err(refuse(state, &ctx, request.model().to_owned(), e.into()).await);
    }
    Ok((ctx, request))
}

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
