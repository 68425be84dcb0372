//! `POST /v1/embeddings`: a local embedder (by its configured name) is
//! served in process, batched with concurrent requests; any other model
//! goes through the gateway.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use http::HeaderMap;
use keel_core::embeddings::{EmbeddingInput, EmbeddingRequest};
use keel_core::{Cost, ErrorCode};
use keel_embed::Embedder;
use serde_json::{Value, json};

use crate::accounting::{Outcome, RequestContext};
use crate::error::ApiError;
use crate::limiting;
use crate::routes::{admit, gateway_headers, refuse};
use crate::state::AppState;

/// Serves one embeddings call.
pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (ctx, request): (_, EmbeddingRequest) = admit(&state, &headers, body, "embeddings").await?;
    if let Some(embedder) = state.retrieval.local_embedder(&request.model) {
        return match embed_locally(&state, &ctx, &request, embedder.as_ref()).await {
            Ok(response) => Ok(response),
            Err(e) => Err(refuse(&state, &ctx, request.model.clone(), e).await),
        };
    }
    let admission = match limiting::admit_embeddings(&state, &ctx, &request).await {
        Ok(admission) => admission,
        Err(e) => return Err(refuse(&state, &ctx, request.model.clone(), e).await),
    };
    match state.gateway.embed(&request).await {
        Ok((response, served)) => {
            let outcome = Outcome {
                model: request.model.clone(),
                served: Some(served.clone()),
                prompt_tokens: response.usage.prompt_tokens,
                status: 200,
                ..Outcome::default()
            };
            let tokens = response.usage.prompt_tokens;
            let (cost, overhead) = ctx.finish(&state, outcome).await;
            let mut http = Json(response).into_response();
            gateway_headers(http.headers_mut(), &ctx, Some(&served), Some(overhead));
            if let Some(admission) = admission {
                limiting::add_quota_headers(http.headers_mut(), admission.quotas());
                limiting::settle(&state, admission, tokens, cost).await;
            }
            Ok(http)
        }
        Err(e) => {
            let mut error = ApiError::from(e);
            if let Some(admission) = &admission {
                error.headers = limiting::quota_headers(admission.quotas());
            }
            drop(admission);
            Err(refuse(&state, &ctx, request.model.clone(), error).await)
        }
    }
}

/// Serves an embeddings request with an in-process embedder. Rate and
/// token limits apply; the cost is zero.
async fn embed_locally(
    state: &AppState,
    ctx: &RequestContext,
    request: &EmbeddingRequest,
    embedder: &dyn Embedder,
) -> Result<Response, ApiError> {
    let texts: Vec<String> = match &request.input {
        EmbeddingInput::Text(t) => vec![t.clone()],
        EmbeddingInput::Texts(t) => t.clone(),
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenBatches(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "input",
                format!("{} embeds text; send strings, not token ids", request.model),
            ));
        }
    };
    if let Some(d) = request.dimensions
        && d as usize != embedder.dimension()
    {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "dimensions",
            format!(
                "{} makes {}-dimensional vectors and cannot shorten them; leave `dimensions` out",
                request.model,
                embedder.dimension()
            ),
        ));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "encoding_format",
                format!("{other:?} is not an encoding; use \"float\" or \"base64\""),
            ));
        }
    };
    let tokens = embedder.count_tokens(&texts);
    let admission = limiting::admit_free(state, ctx, &request.model, tokens).await?;
    let vectors = embedder
        .embed(&texts)
        .await
        .map_err(|e| ApiError::internal("embed", &e))?;

    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(BASE64_STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let outcome = Outcome {
        model: request.model.clone(),
        prompt_tokens: tokens,
        status: 200,
        ..Outcome::default()
    };
    let (_, overhead) = ctx.finish(state, outcome).await;
    let body = json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    let mut http = Json(body).into_response();
    gateway_headers(http.headers_mut(), ctx, None, Some(overhead));
    if let Some(admission) = admission {
        limiting::add_quota_headers(http.headers_mut(), admission.quotas());
        limiting::settle(state, admission, tokens, Cost::ZERO).await;
    }
    Ok(http)
}
