//! `GET /v1/models`.

use axum::Json;
use axum::extract::State;
use http::HeaderMap;
use keel_core::embeddings::ModelList;

use crate::error::ApiError;
use crate::state::AppState;

/// Lists the model aliases a key may use.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    state.keys.authenticate(&headers)?;
    Ok(Json(ModelList {
        object: "list".into(),
        data: state.gateway.models(),
    }))
}
