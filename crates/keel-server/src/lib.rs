//! keel's HTTP surface: the OpenAI-compatible routes, the admin API,
//! health checks and metrics.
//!
//! Handlers are thin; the work happens in keel-gateway (routing), keel-store
//! (keys, ledger) and keel-telemetry (metrics). [`serve`] runs the router
//! until shutdown is signalled, then drains in-flight requests and flushes
//! the usage ledger.

pub mod accounting;
pub mod app;
pub mod auth;
mod body;
mod caching;
pub mod error;
pub mod flow;
pub mod limiting;
mod relay;
pub mod retrieval;
pub mod routes;
pub mod state;
mod unread_body;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post, put};
use keel_core::ErrorCode;

pub use app::{App, AppConfig, StartError};
pub use auth::{Caller, KeyTable};
pub use caching::{CacheControl, CacheSetup, RequestCache};
pub use error::ApiError;
pub use flow::FlowSetup;
pub use retrieval::{EmbedderKind, EmbedderSpec, RetrievalSetup};
pub use state::{AppState, ServerSettings};

/// Every route keel serves.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route(
            "/tenants",
            get(routes::admin::tenants).post(routes::admin::create_tenant),
        )
        .route(
            "/tenants/{tenant}/users",
            get(routes::admin::users).post(routes::admin::create_user),
        )
        .route(
            "/keys",
            get(routes::admin::keys).post(routes::admin::create_key),
        )
        .route("/keys/{id}", delete(routes::admin::revoke_key))
        .route("/breakers", get(routes::admin::breakers))
        .route(
            "/breakers/{deployment}/reset",
            post(routes::admin::reset_breaker),
        )
        .route("/usage", get(routes::admin::usage))
        .route("/cache/invalidate", post(routes::cache::invalidate))
        .route(
            "/limits/rules",
            get(routes::limits::rules).post(routes::limits::create_rule),
        )
        .route(
            "/limits/rules/{id}",
            put(routes::limits::put_rule).delete(routes::limits::delete_rule),
        )
        .route("/limits/accounts", get(routes::limits::account))
        .route("/limits/events", get(routes::limits::events))
        .route(
            "/blocks",
            get(routes::limits::blocks).post(routes::limits::create_block),
        )
        .route("/blocks/{scope}", delete(routes::limits::delete_block))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::admin::require_admin,
        ));

    Router::new()
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/embeddings", post(routes::embeddings::embeddings))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/usage", get(routes::usage::trend))
        .route(
            "/v1/collections",
            get(routes::collections::list).post(routes::collections::create),
        )
        .route(
            "/v1/collections/{name}",
            get(routes::collections::info).delete(routes::collections::delete_collection),
        )
        .route(
            "/v1/collections/{name}/points",
            post(routes::collections::upsert),
        )
        .route(
            "/v1/collections/{name}/points/get",
            post(routes::collections::get_points),
        )
        .route(
            "/v1/collections/{name}/points/delete",
            post(routes::collections::delete_points),
        )
        .route(
            "/v1/collections/{name}/count",
            post(routes::collections::count),
        )
        .route(
            "/v1/collections/{name}/query",
            post(routes::collections::query),
        )
        .route(
            "/v1/collections/{name}/documents",
            post(routes::collections::documents),
        )
        .route(
            "/v1/workflows",
            get(routes::flow::list_workflows).post(routes::flow::register),
        )
        .route("/v1/workflows/{name}", get(routes::flow::workflow))
        .route(
            "/v1/runs",
            get(routes::flow::list_runs).post(routes::flow::start),
        )
        .route("/v1/runs/{id}", get(routes::flow::run))
        .route("/v1/runs/{id}/signal", post(routes::flow::signal))
        .route("/v1/runs/{id}/cancel", post(routes::flow::cancel))
        .route("/v1/tasks/claim", post(routes::tasks::claim))
        .route(
            "/v1/tasks/{run}/{step}/{action}",
            post(routes::tasks::report),
        )
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .nest("/admin/v1", admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(unread_body::close_if_body_unread))
        .with_state(state)
}

async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRequest,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Serves until `shutdown` completes, then stops accepting, waits for
/// in-flight requests (streams included), and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let refresher = tokio::spawn(refresh_keys(state.clone()));
    let limits_refresher = tokio::spawn(refresh_limits(state.clone()));
    let sweeper = state.cache.clone().map(|c| tokio::spawn(sweep_cache(c)));
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    refresher.abort();
    limits_refresher.abort();
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    result
}

/// Deletes expired cache entries and each tenant's oldest beyond its
/// bound, every tenant in turn, off the request path.
async fn sweep_cache(cache: caching::RequestCache) {
    let mut tick = tokio::time::interval(cache.sweep_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let tenants = match cache.cache.tenants().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "Cache sweep could not list tenants");
                continue;
            }
        };
        for tenant in tenants {
            match cache.cache.sweep(&tenant).await {
                Ok(0) => {}
                Ok(gone) => tracing::debug!(tenant, gone, "Swept cache entries"),
                Err(e) => tracing::warn!(tenant, error = %e, "Cache sweep failed"),
            }
        }
    }
}

/// Reloads the key table so keys created or revoked through another replica
/// take effect here within a few seconds.
async fn refresh_keys(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.keys.reload(&state.store).await {
            tracing::warn!(error = %e, "Key table refresh failed; keeping the current keys");
        }
    }
}

/// Rereads the admin API's rules and blocks every second, so a rule or a
/// kill switch set through any replica holds everywhere at once, and sweeps
/// idle in-process counters every half minute.
async fn refresh_limits(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if let Err(e) = limiting::reload(&state.store, &state.limits.limits).await {
            tracing::warn!(error = %e, "Limit rules refresh failed; keeping the current rules");
        }
        if ticks.is_multiple_of(30) {
            let swept = state.limits.limits.sweep();
            tracing::debug!(swept, "Swept idle limit counters");
        }
    }
}
