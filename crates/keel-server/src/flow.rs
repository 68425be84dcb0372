//! The orchestrator inside the server: workflow steps call keel's own
//! gateway path (so the tenant's limits, budgets, cache, breakers and
//! fallbacks apply to them, and the ledger attributes them to the run),
//! query collections through the collections API, and call HTTP tools.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use keel_core::chat::ChatRequest;
use keel_core::{Cost, TenantId};
use keel_flow::{
    CallError, ChatCall, ChatReply, Engine, EngineConfig, Estimate, HttpCall, RetrieveCall,
    Services,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::KeyTable;
use crate::limiting::RequestLimits;
use crate::routes::chat::COST_HEADER;

/// How the server runs workflows.
#[derive(Debug, Clone)]
pub struct FlowSetup {
    /// Leases, batches and polling.
    pub engine: EngineConfig,
    /// How long finished runs are kept before they are pruned.
    pub retention: Duration,
    /// Workflow definitions registered at start, per tenant: (tenant,
    /// definition text).
    pub workflows: Vec<(TenantId, String)>,
}

impl Default for FlowSetup {
    fn default() -> Self {
        FlowSetup {
            engine: EngineConfig::default(),
            retention: Duration::from_secs(30 * 24 * 3600),
            workflows: Vec::new(),
        }
    }
}

/// Steps' calls, made to this server's own router in process.
pub struct InProcess {
    router: Router,
    keys: KeyTable,
    limits: RequestLimits,
    http: reqwest::Client,
}

impl InProcess {
    /// Services that call `router` (this server's routes, without the
    /// orchestrator) as the run's tenant, estimating calls as `limits`
    /// does.
    pub fn new(router: Router, keys: KeyTable, limits: RequestLimits) -> InProcess {
        InProcess {
            router,
            keys,
            limits,
            http: reqwest::Client::new(),
        }
    }

    /// POSTs `body` to `path` as `tenant`, with extra headers.
    async fn post(
        &self,
        tenant: &str,
        path: &str,
        body: &Value,
        extra: &[(&'static str, &str)],
    ) -> Result<(HeaderMap, Value), CallError> {
        let tenant =
            TenantId::new(tenant).map_err(|e| CallError::permanent(format!("run tenant: {e}")))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .map_err(|e| CallError::permanent(format!("building the request: {e}")))?;
        request
            .headers_mut()
            .extend(self.keys.internal_headers(&tenant));
        for (name, value) in extra {
            if let Ok(value) = HeaderValue::from_str(value) {
                request.headers_mut().insert(*name, value);
            }
        }
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| CallError::retryable(format!("calling {path}: {e}")))?;
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| CallError::retryable(format!("reading the answer of {path}: {e}")))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if parts.status.is_success() {
            return Ok((parts.headers, value));
        }
        Err(api_failure(parts.status, &parts.headers, &value))
    }
}

/// A refusal from keel's own API as a call error: rate limits, budgets and
/// upstream failures may pass; bad requests will not.
fn api_failure(status: StatusCode, headers: &HeaderMap, body: &Value) -> CallError {
    let message = body["error"]["message"]
        .as_str()
        .map_or_else(|| format!("status {status}"), str::to_owned);
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    CallError {
        message: format!(
            "{} ({})",
            message,
            body["error"]["code"].as_str().unwrap_or("error")
        ),
        retryable: status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error(),
        retry_after,
    }
}

impl Services for InProcess {
    /// Counted and priced as the gateway's budgets count and price it: the
    /// model's tokenizer, and the dearest deployment that may serve it.
    fn estimate(&self, call: &ChatCall) -> Estimate {
        let max_tokens = call.max_tokens.unwrap_or(self.limits.default_max_tokens);
        let body = json!({"model": call.model, "messages": call.messages});
        let request = serde_json::from_value::<ChatRequest>(body).ok();
        let model = self.limits.models.get(&call.model);
        let prompt = match (model, &request) {
            (Some(model), Some(request)) => model.tokenizer.count_chat(request),
            // A model keel does not serve is refused by the gateway; hold
            // a generous count anyway.
            _ => call
                .messages
                .iter()
                .map(|m| m.content.len() as u64 / 3 + 4)
                .sum(),
        };
        Estimate {
            tokens: prompt + u64::from(max_tokens),
            cost: model.map_or(Cost::ZERO, |m| {
                m.worst_pricing.cost(prompt, u64::from(max_tokens))
            }),
            max_tokens,
        }
    }

    fn chat(&self, call: ChatCall) -> BoxFuture<'_, Result<ChatReply, CallError>> {
        Box::pin(async move {
            let mut body = json!({"model": call.model, "messages": call.messages});
            if let Some(max_tokens) = call.max_tokens {
                body["max_tokens"] = json!(max_tokens);
            }
            if let Some(temperature) = call.temperature {
                body["temperature"] = json!(temperature);
            }
            if call.json {
                body["response_format"] = json!({"type": "json_object"});
            }
            let extra = [
                ("x-keel-session", call.run_id.as_str()),
                ("x-keel-workflow", call.workflow.as_str()),
            ];
            let (headers, answer) = self
                .post(&call.tenant_id, "/v1/chat/completions", &body, &extra)
                .await?;
            let text = answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let cost = headers
                .get(COST_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map_or(Cost::ZERO, Cost);
            Ok(ChatReply {
                text,
                model: answer["model"].as_str().unwrap_or(&call.model).to_owned(),
                prompt_tokens: answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: answer["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                cost,
            })
        })
    }

    fn retrieve(&self, call: RetrieveCall) -> BoxFuture<'_, Result<Value, CallError>> {
        Box::pin(async move {
            let mut body = json!({"text": call.query, "k": call.top_k});
            if let Some(filter) = call.filter {
                body["filter"] = filter;
            }
            let path = format!("/v1/collections/{}/query", call.collection);
            let (_, answer) = self.post(&call.tenant_id, &path, &body, &[]).await?;
            Ok(answer.get("points").cloned().unwrap_or(answer))
        })
    }

    fn http(&self, call: HttpCall) -> BoxFuture<'_, Result<Value, CallError>> {
        Box::pin(async move {
            let method = Method::from_bytes(call.method.as_bytes())
                .map_err(|_| CallError::permanent(format!("bad method {}", call.method)))?;
            let mut request = self.http.request(method, &call.url);
            for (name, value) in &call.headers {
                request = request.header(name, value);
            }
            if let Some(body) = &call.body {
                request = request.json(body);
            }
            if let Some(timeout) = call.timeout {
                request = request.timeout(timeout);
            }
            let response = request
                .send()
                .await
                .map_err(|e| CallError::retryable(format!("{} {}: {e}", call.method, call.url)))?;
            let status = response.status();
            let headers = response.headers().clone();
            let text = response
                .text()
                .await
                .map_err(|e| CallError::retryable(format!("reading {}: {e}", call.url)))?;
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if status.is_success() {
                return Ok(value);
            }
            let mut error = api_failure(
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                &HeaderMap::new(),
                &value,
            );
            error.retry_after = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs);
            error.message = format!("{} {} answered {status}", call.method, call.url);
            Err(error)
        })
    }
}

/// The engine of a server whose routes (without the orchestrator's own)
/// are `router`.
pub fn engine(
    store: keel_store::Store,
    router: Router,
    keys: KeyTable,
    limits: RequestLimits,
    setup: &FlowSetup,
) -> Arc<Engine> {
    let services: Arc<dyn Services> = Arc::new(InProcess::new(router, keys, limits));
    Arc::new(Engine::new(store, services, setup.engine.clone()))
}

/// Deletes finished runs older than the retention every hour.
pub async fn prune(engine: Arc<Engine>, retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cutoff =
            engine.clock().now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        match engine.store().prune_runs(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "Pruned finished runs past their retention"),
            Err(e) => {
                tracing::warn!(error = %e, "Pruning finished runs failed; retrying in an hour")
            }
        }
    }
}
