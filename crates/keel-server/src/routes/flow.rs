//! `/v1/workflows` and `/v1/runs`: register workflow definitions, start
//! runs, read them with every step and attempt, answer waiting steps, and
//! cancel.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use keel_core::ErrorCode;
use keel_flow::{Engine, FlowError};
use keel_store::StoreError;
use keel_store::flow::RunStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::body::read_json;
use crate::error::ApiError;
use crate::state::AppState;

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> ApiError {
        match e {
            FlowError::Definition(ref definition) => {
                let param = definition.problems.first().map_or("", |p| p.path.as_str());
                ApiError::field(ErrorCode::InvalidRequest, param, e.to_string())
            }
            FlowError::UnknownWorkflow { .. } => {
                ApiError::field(ErrorCode::NotFound, "workflow", e.to_string())
            }
            FlowError::UnknownRun { .. } => ApiError::new(ErrorCode::NotFound, e.to_string()),
            FlowError::InvalidInput { .. } => {
                ApiError::field(ErrorCode::InvalidRequest, "input", e.to_string())
            }
            FlowError::Store(StoreError::NotWaiting { .. }) => {
                ApiError::field(ErrorCode::Conflict, "step", e.to_string())
            }
            FlowError::Store(StoreError::NotFound { .. }) => {
                ApiError::new(ErrorCode::NotFound, e.to_string())
            }
            FlowError::Store(other) => ApiError::internal("use the workflow store", &other),
        }
    }
}

/// The caller and the engine, or why the request cannot go on.
pub(crate) fn engine(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Caller, Arc<Engine>), ApiError> {
    let caller = state.keys.authenticate(headers)?;
    let engine = state.flow.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "workflows are turned off on this server ([flow] enabled = false)",
        )
    })?;
    Ok((caller, engine))
}

/// `POST /v1/workflows`: the body is the definition, YAML or JSON.
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let bytes = axum::body::to_bytes(body, state.settings.max_body_bytes)
        .await
        .map_err(|_| ApiError::new(ErrorCode::PayloadTooLarge, "the definition is too large"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the definition must be UTF-8 text",
        )
    })?;
    let stored = engine.register(caller.tenant_id.as_str(), text).await?;
    let body = json!({
        "object": "workflow",
        "name": stored.name,
        "version": stored.version,
        "created_ms": stored.created_ms,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/workflows`: the latest version of each.
pub async fn list_workflows(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let workflows = engine
        .store()
        .workflows(caller.tenant_id.as_str())
        .await
        .map_err(FlowError::from)?;
    let data: Vec<Value> = workflows
        .iter()
        .map(|w| json!({"object": "workflow", "name": w.name, "version": w.version, "created_ms": w.created_ms}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/workflows/{name}`: the latest definition.
pub async fn workflow(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let stored = engine
        .store()
        .workflow(caller.tenant_id.as_str(), &name, None)
        .await
        .map_err(FlowError::from)?
        .ok_or(FlowError::UnknownWorkflow { name })?;
    Ok(Json(json!({
        "object": "workflow",
        "name": stored.name,
        "version": stored.version,
        "created_ms": stored.created_ms,
        "definition": stored.definition,
    })))
}

/// Body of `POST /v1/runs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    workflow: String,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default = "empty_object")]
    input: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// `POST /v1/runs`: 201 with a new run, 200 with the run an idempotency key
/// (body field or `Idempotency-Key` header) already started.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let body: StartBody = read_json(body, state.settings.max_body_bytes).await?;
    let key = body.idempotency_key.or_else(|| {
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "idempotency_key",
            "the idempotency key must be 1 to 200 characters",
        ));
    }
    let (run, created) = engine
        .start(
            caller.tenant_id.as_str(),
            &body.workflow,
            body.version,
            body.input,
            key,
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut run = serde_json::to_value(&run).unwrap_or(Value::Null);
    run["object"] = json!("run");
    Ok((status, Json(run)).into_response())
}

/// Query of `GET /v1/runs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /v1/runs[?status=&limit=]`: newest first.
pub async fn list_runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(name) => Some(RunStatus::parse(name).ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidRequest,
                "status",
                format!(
                    "unknown status {name:?}: use running, succeeded, partial, failed or cancelled"
                ),
            )
        })?),
    };
    let runs = engine
        .store()
        .runs(
            caller.tenant_id.as_str(),
            status,
            query.limit.unwrap_or(100),
        )
        .await
        .map_err(FlowError::from)?;
    Ok(Json(json!({"object": "list", "data": runs})))
}

/// `GET /v1/runs/{id}`: the run, every step and every attempt.
pub async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let view = engine.run(caller.tenant_id.as_str(), &id).await?;
    let mut body = serde_json::to_value(&view).unwrap_or(Value::Null);
    body["object"] = json!("run");
    Ok(Json(body))
}

/// Body of `POST /v1/runs/{id}/signal`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    step: String,
    #[serde(default)]
    output: Value,
}

/// `POST /v1/runs/{id}/signal`: answers a step waiting for a person.
pub async fn signal(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let body: SignalBody = read_json(body, state.settings.max_body_bytes).await?;
    engine
        .signal(caller.tenant_id.as_str(), &id, &body.step, &body.output)
        .await?;
    Ok(Json(
        json!({"object": "run.signal", "run": id, "step": body.step, "accepted": true}),
    ))
}

/// `POST /v1/runs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let tenant = caller.tenant_id.as_str();
    if !engine.cancel(tenant, &id).await? {
        let view = engine.run(tenant, &id).await?;
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("run {id} has already ended ({})", view.run.status.as_str()),
        ));
    }
    Ok(Json(
        json!({"object": "run", "id": id, "status": "cancelled"}),
    ))
}
