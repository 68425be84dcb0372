//! `POST /v1/embeddings`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use keel_core::embeddings::EmbeddingRequest;
use tokio::time::Instant;

use crate::accounting::{Outcome, RequestContext};
use crate::body::read_json;
use crate::error::ApiError;
use crate::routes::{gateway_headers, refuse};
use crate::state::AppState;

/// Serves one embeddings call.
pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let caller = state.keys.authenticate(&headers)?;
    let ctx = RequestContext::new(caller, &headers, "embeddings", started)?;
    let request: EmbeddingRequest = match read_json(body, state.settings.max_body_bytes).await {
        Ok(request) => request,
        Err(e) => return Err(refuse(&state, &ctx, String::new(), e).await),
    };
    if let Err(e) = request.validate() {
        return Err(refuse(&state, &ctx, request.model.clone(), e.into()).await);
    }
    match state.gateway.embed(&request).await {
        Ok((response, served)) => {
            let outcome = Outcome {
                model: request.model.clone(),
                served: Some(served.clone()),
                prompt_tokens: response.usage.prompt_tokens,
                status: 200,
                ..Outcome::default()
            };
            let (_, overhead) = ctx.finish(&state, outcome).await;
            let mut http = Json(response).into_response();
            gateway_headers(http.headers_mut(), &ctx, Some(&served), Some(overhead));
            Ok(http)
        }
        Err(e) => Err(refuse(&state, &ctx, request.model.clone(), e.into()).await),
    }
}
