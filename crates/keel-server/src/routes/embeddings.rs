//! `POST /v1/embeddings`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use keel_core::embeddings::EmbeddingRequest;

use crate::accounting::Outcome;
use crate::error::ApiError;
use crate::routes::{admit, gateway_headers, refuse};
use crate::state::AppState;

/// Serves one embeddings call.
pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (ctx, request): (_, EmbeddingRequest) = admit(&state, &headers, body, "embeddings").await?;
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
