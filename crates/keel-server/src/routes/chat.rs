//! `POST /v1/chat/completions`: authenticate, parse, route, account.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use keel_core::chat::ChatRequest;

use crate::accounting::{CacheUse, Outcome, RequestContext, estimate_tokens};
use crate::caching::{self, CacheControl, Pass};
use crate::error::ApiError;
use crate::limiting::{self, Limited};
use crate::relay;
use crate::routes::{admit, gateway_headers, refuse};
use crate::state::AppState;

/// What a plain completion cost, in micro-dollars (absent on cache hits,
/// which cost nothing).
pub const COST_HEADER: &str = "x-keel-cost-micros";

/// Serves one chat completion, plain or streamed.
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (ctx, mut request): (_, ChatRequest) = admit(&state, &headers, body, "chat").await?;
    // The cache sees the request as the client sent it, before limits cap
    // its completion.
    let probe = caching::probe(&state, &ctx, &request);
    let limited = match limiting::admit_chat(&state, &ctx, &mut request).await {
        Ok(limited) => limited,
        Err(e) => return Err(refuse(&state, &ctx, request.model.clone(), e).await),
    };
    let pass = match caching::lookup(&state, &ctx, probe, CacheControl::of(&headers)).await {
        Ok(hit) => return Ok(caching::respond(&state, &ctx, &request, hit, limited).await),
        Err(pass) => pass,
    };
    if request.is_stream() {
        return stream(state, ctx, request, limited, pass).await;
    }

    match state.gateway.chat(&request).await {
        Ok((completion, served)) => {
            let (prompt_tokens, completion_tokens) = match &completion.usage {
                Some(u) => (u.prompt_tokens, u.completion_tokens),
                None => {
                    let text: String = completion
                        .choices
                        .iter()
                        .map(|c| c.message.content_text())
                        .collect();
                    estimate_usage(&request, &text)
                }
            };
            let outcome = Outcome {
                model: request.model.clone(),
                served: Some(served.clone()),
                prompt_tokens,
                completion_tokens,
                status: 200,
                cache: pass.as_ref().map(|_| CacheUse::miss()),
                ..Outcome::default()
            };
            let (cost, overhead) = ctx.finish(&state, outcome).await;
            let cached = pass.is_some();
            caching::fill(
                &state,
                pass,
                &completion,
                cost,
                (prompt_tokens, completion_tokens),
            );
            let mut response = Json(completion).into_response();
            gateway_headers(response.headers_mut(), &ctx, Some(&served), Some(overhead));
            if let Ok(value) = http::HeaderValue::from_str(&cost.micros().to_string()) {
                response.headers_mut().insert(COST_HEADER, value);
            }
            if cached {
                caching::miss_header(response.headers_mut());
            }
            if let Some(limited) = limited {
                let admission = limited.admission;
                limiting::add_quota_headers(response.headers_mut(), admission.quotas());
                limiting::settle(&state, admission, prompt_tokens + completion_tokens, cost).await;
            }
            Ok(response)
        }
        Err(e) => failed(state, ctx, request, limited, pass, ApiError::from(e)).await,
    }
}

/// Answers a request no upstream could serve: with a stale cached answer
/// when its model allows one, or with the error.
async fn failed(
    state: AppState,
    ctx: RequestContext,
    request: ChatRequest,
    limited: Option<Limited>,
    pass: Option<Pass>,
    mut error: ApiError,
) -> Result<Response, ApiError> {
    if let Some(hit) = caching::stale(&state, &ctx, pass, &request.model, error.code).await {
        return Ok(caching::respond(&state, &ctx, &request, hit, limited).await);
    }
    if let Some(limited) = &limited {
        error.headers = limiting::quota_headers(limited.admission.quotas());
    }
    // Dropping the admission releases its holds: nothing was spent.
    drop(limited);
    Err(refuse(&state, &ctx, request.model.clone(), error).await)
}

/// Starts a stream: failures before the first chunk are plain errors.
async fn stream(
    state: AppState,
    ctx: RequestContext,
    request: ChatRequest,
    limited: Option<Limited>,
    pass: Option<Pass>,
) -> Result<Response, ApiError> {
    match state.gateway.chat_stream(&request).await {
        Ok(stream) => {
            let served = stream.served.clone();
            let quotas = limited.as_ref().map(|l| l.admission.quotas());
            let cached = pass.is_some();
            let mut response =
                relay::sse_response(state, ctx.clone(), request, stream, limited, pass);
            gateway_headers(response.headers_mut(), &ctx, Some(&served), None);
            if cached {
                caching::miss_header(response.headers_mut());
            }
            if let Some(quotas) = quotas {
                limiting::add_quota_headers(response.headers_mut(), quotas);
            }
            Ok(response)
        }
        Err(e) => failed(state, ctx, request, limited, pass, ApiError::from(e)).await,
    }
}

/// Token counts estimated from text, for upstreams that report none.
pub(crate) fn estimate_usage(request: &ChatRequest, completion: &str) -> (u64, u64) {
    let prompt: u64 = request
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content_text()) + 3)
        .sum();
    (prompt, estimate_tokens(completion))
}
