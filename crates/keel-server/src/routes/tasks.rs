//! `/v1/tasks`: external workers, in any language, take the tasks of a
//! queue (long-polling when there are none), renew their lease while they
//! work, and complete or fail each with its token.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use http::HeaderMap;
use keel_core::ErrorCode;
use keel_flow::{CallError, TaskReport};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::body::read_json;
use crate::error::ApiError;
use crate::routes::flow::engine;
use crate::state::AppState;

/// The longest a claim waits for a task.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting claim looks again.
const POLL: Duration = Duration::from_millis(100);

/// Body of `POST /v1/tasks/claim`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    queue: String,
    #[serde(default = "default_worker")]
    worker: String,
    #[serde(default = "one")]
    max: u32,
    #[serde(default)]
    wait_ms: u64,
}

fn default_worker() -> String {
    "worker".to_owned()
}

fn one() -> u32 {
    1
}

/// `POST /v1/tasks/claim`: up to `max` tasks, waiting up to `wait_ms` for
/// the first.
pub async fn claim(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let body: ClaimBody = read_json(body, state.settings.max_body_bytes).await?;
    if body.queue.is_empty() {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "queue",
            "name the queue to take tasks from",
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(body.wait_ms).min(MAX_WAIT);
    loop {
        let tasks = engine
            .claim_tasks(
                Some(caller.tenant_id.as_str()),
                &body.queue,
                &body.worker,
                body.max,
            )
            .await?;
        if !tasks.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(json!({"object": "list", "data": tasks})));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Body of the heartbeat, complete and fail calls.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    token: String,
    #[serde(default)]
    output: Value,
    #[serde(default)]
    error: Option<String>,
    #[serde(default = "yes")]
    retryable: bool,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// `POST /v1/tasks/{run}/{step}/{action}` with `heartbeat`, `complete` or
/// `fail`; 409 when the token no longer holds the task.
pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((run, step, action)): Path<(String, String, String)>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (caller, engine) = engine(&state, &headers)?;
    let tenant = caller.tenant_id.as_str();
    // The run must be the caller's; the token then proves the lease.
    engine.run(tenant, &run).await?;
    let body: ReportBody = read_json(body, state.settings.max_body_bytes).await?;
    let outcome = match action.as_str() {
        "heartbeat" => engine.heartbeat_task(&run, &step, &body.token).await?,
        "complete" => {
            engine
                .complete_task(&run, &step, &body.token, body.output)
                .await?
        }
        "fail" => {
            let error = CallError {
                message: body
                    .error
                    .unwrap_or_else(|| "the worker failed the task".to_owned()),
                retryable: body.retryable,
                retry_after: body.retry_after_ms.map(Duration::from_millis),
            };
            engine
                .fail_task(tenant, &run, &step, &body.token, error)
                .await?
        }
        other => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no task action {other:?}: use heartbeat, complete or fail"),
            ));
        }
    };
    match outcome {
        TaskReport::Accepted => Ok(Json(
            json!({"object": "task", "run": run, "step": step, "accepted": true}),
        )),
        TaskReport::Stale => Err(ApiError::field(
            ErrorCode::Conflict,
            "token",
            "this token no longer holds the task: its lease expired and it went to another \
             worker, or the run ended; drop the task",
        )),
    }
}
