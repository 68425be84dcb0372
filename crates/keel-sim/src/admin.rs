//! The control API under `/sim`, which lets chaos tests change faults and
//! latency and read counters while a gateway is running, plus the JSON 404
//! for unknown paths.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::ConfigUpdate;
use crate::error::SimError;
use crate::reply::Dialect;
use crate::sim::Sim;

/// `GET /sim/config`: the running config.
pub(crate) async fn config(State(sim): State<Sim>) -> Response {
    Json(sim.config()).into_response()
}

/// `PUT /sim/config`: applies a [`ConfigUpdate`] and returns the new config.
pub(crate) async fn update_config(State(sim): State<Sim>, body: Bytes) -> Response {
    let update =
        serde_json::from_slice::<ConfigUpdate>(&body).map_err(|err| SimError::InvalidJson {
            reason: err.to_string(),
        });
    match update.and_then(|update| sim.update_config(update)) {
        Ok(config) => {
            tracing::info!(
                faults = config.faults.len(),
                ttft_ms = config.ttft_ms,
                "Config updated"
            );
            Json(config).into_response()
        }
        Err(err) => Dialect::OpenAi.invalid(&err),
    }
}

/// `GET /sim/stats`: the counters.
pub(crate) async fn stats(State(sim): State<Sim>) -> Response {
    Json(sim.stats()).into_response()
}

/// `POST /sim/reset`: zeroes the counters.
pub(crate) async fn reset(State(sim): State<Sim>) -> StatusCode {
    sim.reset_stats();
    StatusCode::NO_CONTENT
}

/// Any other path: a 404 in the OpenAI error shape.
pub(crate) async fn not_found() -> Response {
    let body = json!({"error": {
        "message": "unknown path; keel sim serves /v1/models, /v1/chat/completions, \
                    /v1/messages, /v1/embeddings and /sim/{config,stats,reset}",
        "type": "invalid_request_error",
        "code": "not_found",
        "param": null,
    }});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
