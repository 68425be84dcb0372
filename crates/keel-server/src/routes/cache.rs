//! `POST /admin/v1/cache/invalidate`: drops cached answers of one tenant
//! or of every tenant, optionally of one model only (after a prompt or
//! model change made them wrong).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use keel_core::{ErrorCode, TenantId};
use serde::Deserialize;
use serde_json::json;

use crate::body::read_json;
use crate::error::ApiError;
use crate::state::AppState;

/// Body of `POST /admin/v1/cache/invalidate`: `tenant` or `all`, and
/// optionally `model`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateBody {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    model: Option<String>,
}

/// `POST /admin/v1/cache/invalidate`.
pub async fn invalidate(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body: InvalidateBody = read_json(body, state.settings.max_body_bytes).await?;
    let Some(cache) = &state.cache else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the response cache is off; turn it on with [cache] enabled = true",
        ));
    };
    let tenants = match (&body.tenant, body.all) {
        (Some(tenant), false) => {
            let id = TenantId::new(tenant.clone())
                .map_err(|e| ApiError::field(ErrorCode::InvalidRequest, "tenant", e.to_string()))?;
            vec![id.to_string()]
        }
        (None, true) => cache.cache.tenants().await.map_err(cache_error)?,
        _ => {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "tenant",
                "name one `tenant`, or set `all` to true (not both)",
            ));
        }
    };
    if let Some(model) = &body.model
        && state.gateway.model_kind(model).is_none()
    {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "model",
            format!("{model:?} is not a configured model"),
        ));
    }
    let mut deleted: Option<usize> = Some(0);
    for tenant in &tenants {
        let gone = cache
            .cache
            .invalidate(tenant, body.model.as_deref())
            .await
            .map_err(cache_error)?;
        deleted = deleted.zip(gone).map(|(a, b)| a + b);
    }
    tracing::info!(
        tenants = tenants.len(),
        model = body.model.as_deref().unwrap_or("*"),
        ?deleted,
        "Cache invalidated"
    );
    Ok(Json(json!({
        "object": "cache.invalidation",
        "tenants": tenants,
        "model": body.model,
        // Whole tenants are dropped without counting their entries.
        "deleted": deleted,
    }))
    .into_response())
}

fn cache_error(e: keel_cache::CacheError) -> ApiError {
    ApiError::internal("invalidate the cache", &e)
}
