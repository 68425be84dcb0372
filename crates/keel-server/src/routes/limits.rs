//! The admin API for limits: rules (`/admin/v1/limits/rules`), the kill
//! switch (`/admin/v1/blocks`), budget accounts and threshold events.
//!
//! Changes are written to the store and applied on this replica at once;
//! other replicas reread the store every second.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, Uri};
use keel_core::{Cost, ErrorCode};
use keel_limits::{RuleSpec, Selector};
use serde::Deserialize;
use serde_json::json;

use crate::body::read_json;
use crate::error::ApiError;
use crate::routes::admin::{query, store_error};
use crate::state::AppState;

/// Longest block reason accepted.
const MAX_REASON: usize = 500;

/// Applies what was just stored on this replica.
async fn apply(state: &AppState) -> Result<(), ApiError> {
    crate::limiting::reload(&state.store, &state.limits.limits)
        .await
        .map_err(store_error)
}

/// `GET /admin/v1/limits/rules`: every rule, config rules first.
pub async fn rules(State(state): State<AppState>) -> Response {
    let data: Vec<serde_json::Value> = state
        .limits
        .limits
        .rules()
        .iter()
        .map(|(rule, source)| {
            let mut value = serde_json::to_value(&rule.spec).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert("kind".into(), json!(rule.limit.kind()));
                object.insert("source".into(), json!(source));
                object.insert("on_redis_error".into(), json!(rule.on_redis_error));
            }
            value
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Reads and checks a rule body; a rule's id may come from the path.
async fn read_rule(
    state: &AppState,
    body: Body,
    path_id: Option<&str>,
) -> Result<RuleSpec, ApiError> {
    let mut spec: RuleSpec = read_json(body, state.settings.max_body_bytes).await?;
    if let Some(id) = path_id {
        if spec.id.is_empty() {
            spec.id = id.to_owned();
        } else if spec.id != id {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "id",
                format!("body id {:?} differs from the path's {id:?}", spec.id),
            ));
        }
    }
    spec.check()
        .map_err(|e| ApiError::field(ErrorCode::InvalidRequest, e.field, e.to_string()))?;
    if state.limits.limits.is_config_rule(&spec.id) {
        return Err(ApiError::field(
            ErrorCode::Conflict,
            "id",
            format!(
                "rule {:?} is defined in the config file; change it there",
                spec.id
            ),
        ));
    }
    Ok(spec)
}

async fn store_rule(state: &AppState, spec: &RuleSpec) -> Result<(), ApiError> {
    let text = serde_json::to_string(spec).map_err(|e| ApiError::internal("encode a rule", &e))?;
    state
        .store
        .put_limit_rule(&spec.id, &text)
        .await
        .map_err(store_error)?;
    apply(state).await
}

/// `POST /admin/v1/limits/rules`: adds a rule; 409 if the id is taken.
pub async fn create_rule(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let spec = read_rule(&state, body, None).await?;
    let taken = state
        .limits
        .limits
        .rules()
        .iter()
        .any(|(r, _)| r.id == spec.id);
    if taken {
        return Err(ApiError::field(
            ErrorCode::Conflict,
            "id",
            format!(
                "rule {:?} exists; PUT /admin/v1/limits/rules/{} changes it",
                spec.id, spec.id
            ),
        ));
    }
    store_rule(&state, &spec).await?;
    Ok((StatusCode::CREATED, Json(spec)).into_response())
}

/// `PUT /admin/v1/limits/rules/{id}`: creates or replaces a rule. Counters
/// and spend under the id are kept.
pub async fn put_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let spec = read_rule(&state, body, Some(&id)).await?;
    store_rule(&state, &spec).await?;
    Ok(Json(spec).into_response())
}

/// `DELETE /admin/v1/limits/rules/{id}`.
pub async fn delete_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.limits.limits.is_config_rule(&id) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("rule {id:?} is defined in the config file; remove it there"),
        ));
    }
    state
        .store
        .delete_limit_rule(&id)
        .await
        .map_err(store_error)?;
    apply(&state).await?;
    Ok(Json(json!({"id": id, "deleted": true})).into_response())
}

/// Query of `GET /admin/v1/limits/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountQuery {
    rule: String,
    scope: String,
}

/// `GET /admin/v1/limits/accounts?rule=R&scope=S`: a budget account's spend
/// and holds in its current window.
pub async fn account(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let q: AccountQuery = query(&uri)?;
    let rule = state
        .limits
        .limits
        .rules()
        .into_iter()
        .find(|(r, _)| r.id == q.rule)
        .ok_or_else(|| {
            ApiError::field(ErrorCode::NotFound, "rule", format!("no rule {:?}", q.rule))
        })?;
    let Some((spent, held)) = state.limits.limits.account(&q.rule, &q.scope).await else {
        return Err(ApiError::new(
            ErrorCode::LimitsUnavailable,
            "the limits backend did not answer; retry shortly",
        ));
    };
    let cap = match &rule.0.limit {
        keel_limits::Limit::Budget { cap, .. } => *cap,
        _ => Cost::ZERO,
    };
    Ok(Json(json!({
        "rule": q.rule,
        "scope": q.scope,
        "source": rule.1,
        "cap_usd": cap.dollars_exact(),
        "spent_usd": spent.dollars_exact(),
        "held_usd": held.dollars_exact(),
        "spent_micros": spent.micros(),
        "held_micros": held.micros(),
    }))
    .into_response())
}

/// `GET /admin/v1/limits/events`: recent budget threshold crossings.
pub async fn events(State(state): State<AppState>) -> Response {
    Json(json!({"object": "list", "data": state.limits.limits.events()})).into_response()
}

/// Body of `POST /admin/v1/blocks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBlock {
    scope: String,
    reason: String,
}

/// `GET /admin/v1/blocks`.
pub async fn blocks(State(state): State<AppState>) -> Response {
    Json(json!({"object": "list", "data": state.limits.limits.blocks()})).into_response()
}

/// `POST /admin/v1/blocks`: blocks a tenant, user, key or workflow at once
/// (`{"scope": "tenant=acme,user=bob", "reason": "runaway agent"}`).
pub async fn create_block(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let block: NewBlock = read_json(body, state.settings.max_body_bytes).await?;
    let scope = Selector::parse(&block.scope)
        .map_err(|e| ApiError::field(ErrorCode::InvalidRequest, "scope", e.to_string()))?;
    if !scope.is_exact() {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "scope",
            "a block names exact values (tenant=acme), not `*`",
        ));
    }
    let reason = block.reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "reason",
            format!("say why, in 1 to {MAX_REASON} characters"),
        ));
    }
    let stored = state
        .store
        .put_block(&scope.to_string(), reason)
        .await
        .map_err(store_error)?;
    apply(&state).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// `DELETE /admin/v1/blocks/{scope}` (the scope URL-encoded).
pub async fn delete_block(
    State(state): State<AppState>,
    Path(scope): Path<String>,
) -> Result<Response, ApiError> {
    let normalized = Selector::parse(&scope)
        .map_err(|e| ApiError::field(ErrorCode::InvalidRequest, "scope", e.to_string()))?
        .to_string();
    state
        .store
        .delete_block(&normalized)
        .await
        .map_err(store_error)?;
    apply(&state).await?;
    Ok(Json(json!({"scope": normalized, "deleted": true})).into_response())
}
