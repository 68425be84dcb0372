//! The admin API under `/admin/v1`: tenants, users, API keys, breakers and
//! usage. Every route needs the admin token (checked by [`require_admin`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::Uri;
use keel_core::{ErrorCode, KeyId, TenantId, UserId};
use keel_store::{NewKey, StoreError, UsageQuery};
use serde::Deserialize;
use serde_json::json;

use crate::body::read_json;
use crate::error::ApiError;
use crate::state::AppState;

/// Refuses requests without the admin token.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match crate::auth::check_admin(request.headers(), state.settings.admin_token.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Maps store failures: conflicts and missing records are the caller's.
pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } | StoreError::KeyTenantMismatch { .. } => {
            ApiError::new(ErrorCode::Conflict, e.to_string())
        }
        StoreError::EmptySecret => ApiError::new(ErrorCode::InvalidRequest, e.to_string()),
        StoreError::NotFound { .. } => ApiError::new(ErrorCode::NotFound, e.to_string()),
        other => ApiError::internal("access the store", &other),
    }
}

fn parse_id<T>(
    field: &str,
    value: String,
    parse: fn(String) -> Result<T, keel_core::InvalidId>,
) -> Result<T, ApiError> {
    parse(value).map_err(|e| ApiError::field(ErrorCode::InvalidRequest, field, e.to_string()))
}

/// Parses the query string, refusing unknown or malformed parameters.
pub(crate) fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
}

/// Body of `POST /admin/v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenantBody {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

/// `GET /admin/v1/tenants`.
pub async fn tenants(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tenants = state.store.tenants().await.map_err(store_error)?;
    Ok(Json(json!({"object": "list", "data": tenants})).into_response())
}

/// `POST /admin/v1/tenants`.
pub async fn create_tenant(
    State(state): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: NewTenantBody = read_json(body, state.settings.max_body_bytes).await?;
    let id = parse_id("id", body.id, TenantId::new)?;
    let name = body.name.unwrap_or_else(|| id.to_string());
    let tenant = state
        .store
        .create_tenant(&id, &name)
        .await
        .map_err(store_error)?;
    tracing::info!(tenant = %id, "Tenant created");
    Ok((StatusCode::CREATED, Json(tenant)).into_response())
}

/// Body of `POST /admin/v1/tenants/{tenant}/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

/// `GET /admin/v1/tenants/{tenant}/users`.
pub async fn users(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = parse_id("tenant", tenant, TenantId::new)?;
    let users = state.store.users(&tenant).await.map_err(store_error)?;
    Ok(Json(json!({"object": "list", "data": users})).into_response())
}

/// `POST /admin/v1/tenants/{tenant}/users`.
pub async fn create_user(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = parse_id("tenant", tenant, TenantId::new)?;
    let body: NewUserBody = read_json(body, state.settings.max_body_bytes).await?;
    let id = parse_id("id", body.id, UserId::new)?;
    let name = body.name.unwrap_or_else(|| id.to_string());
    let user = state
        .store
        .create_user(&tenant, &id, &name)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// Body of `POST /admin/v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Query of `GET /admin/v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    tenant: Option<String>,
}

/// `GET /admin/v1/keys[?tenant=]`.
pub async fn keys(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let q: KeysQuery = query(&uri)?;
    let tenant = q
        .tenant
        .map(|t| parse_id("tenant", t, TenantId::new))
        .transpose()?;
    let keys = state
        .store
        .keys(tenant.as_ref())
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"object": "list", "data": keys})).into_response())
}

/// `POST /admin/v1/keys`: the secret is in this response and nowhere else.
pub async fn create_key(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body: NewKeyBody = read_json(body, state.settings.max_body_bytes).await?;
    let tenant_id = parse_id("tenant", body.tenant, TenantId::new)?;
    let user_id = body
        .user
        .map(|u| parse_id("user", u, UserId::new))
        .transpose()?;
    let name = body.name.unwrap_or_default();
    let created = state
        .store
        .create_key(NewKey {
            tenant_id,
            user_id,
            name,
        })
        .await
        .map_err(store_error)?;
    state.keys.insert(&created.key);
    tracing::info!(key = %created.key.id, tenant = %created.key.tenant_id, "API key created");
    let mut body = serde_json::to_value(&created.key).unwrap_or_default();
    body["secret"] = json!(created.secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /admin/v1/keys/{id}`.
pub async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id("id", id, KeyId::new)?;
    if !state.store.revoke_key(&id).await.map_err(store_error)? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no active key {id}"),
        ));
    }
    state.keys.remove(&id);
    tracing::info!(key = %id, "API key revoked");
    Ok(Json(json!({"id": id, "revoked": true})).into_response())
}

/// `GET /admin/v1/breakers`.
pub async fn breakers(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": state.gateway.breakers()}))
}

/// `POST /admin/v1/breakers/{deployment}/reset`.
pub async fn reset_breaker(
    State(state): State<AppState>,
    Path(deployment): Path<String>,
) -> Result<Response, ApiError> {
    if state.gateway.reset_breaker(&deployment) {
        Ok(Json(json!({"deployment": deployment, "state": "closed"})).into_response())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no deployment named {deployment:?}"),
        ))
    }
}

/// Query of `GET /admin/v1/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    tenant: Option<String>,
    user: Option<String>,
    key: Option<String>,
    session: Option<String>,
    workflow: Option<String>,
    model: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    limit: Option<u32>,
}

/// `GET /admin/v1/usage`: matching ledger rows (newest first) and totals.
pub async fn usage(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let p: UsageParams = query(&uri)?;
    if let Some(limit) = p.limit
        && !(1..=10_000).contains(&limit)
    {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "limit",
            "`limit` must be 1 to 10000",
        ));
    }
    let query = UsageQuery {
        tenant_id: p.tenant,
        user_id: p.user,
        key_id: p.key,
        session: p.session,
        workflow: p.workflow,
        model: p.model,
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        limit: p.limit,
    };
    let totals = state
        .store
        .usage_totals(&query)
        .await
        .map_err(store_error)?;
    let rows = state.store.usage(&query).await.map_err(store_error)?;
    Ok(Json(json!({"object": "list", "totals": totals, "data": rows})).into_response())
}
