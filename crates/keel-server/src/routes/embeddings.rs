//! `POST /v1/embeddings`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use keel_core::embeddings::EmbeddingRequest;

use crate::accounting::Outcome;
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
