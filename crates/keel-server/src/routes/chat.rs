//! `POST /v1/chat/completions`: authenticate, parse, route, account.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use keel_core::chat::ChatRequest;

use crate::accounting::{Outcome, RequestContext, estimate_tokens};
use crate::error::ApiError;
use crate::relay;
use crate::routes::{admit, gateway_headers, refuse};
use crate::state::AppState;

/// Serves one chat completion, plain or streamed.
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (ctx, request): (_, ChatRequest) = admit(&state, &headers, body, "chat").await?;
    if request.is_stream() {
        return stream(state, ctx, request).await;
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
                ..Outcome::default()
            };
            let (_, overhead) = ctx.finish(&state, outcome).await;
            let mut response = Json(completion).into_response();
            gateway_headers(response.headers_mut(), &ctx, Some(&served), Some(overhead));
            Ok(response)
        }
        Err(e) => Err(refuse(&state, &ctx, request.model.clone(), e.into()).await),
    }
}

/// Starts a stream: failures before the first chunk are plain errors.
async fn stream(
    state: AppState,
    ctx: RequestContext,
    request: ChatRequest,
) -> Result<Response, ApiError> {
    match state.gateway.chat_stream(&request).await {
        Ok(stream) => {
            let served = stream.served.clone();
            let mut response = relay::sse_response(state, ctx.clone(), request, stream);
            gateway_headers(response.headers_mut(), &ctx, Some(&served), None);
            Ok(response)
        }
        Err(e) => Err(refuse(&state, &ctx, request.model.clone(), e.into()).await),
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
