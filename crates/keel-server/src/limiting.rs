//! Limits on the request path: what a request may consume, admitting it
//! against every rule that covers it, the `x-ratelimit-*` headers, and
//! settling after the call.
//!
//! A chat request may consume its prompt (counted with the model's
//! tokenizer) plus its completion limit: `max_tokens` /
//! `max_completion_tokens`, or, when the client set neither,
//! `limits.default_max_tokens`. When a budget covers such a request keel
//! sends that default upstream as `max_completion_tokens`, so the hold really
//! is the worst case. Cost is priced at the dearest deployment that may serve
//! the call (fallbacks included).

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use keel_core::chat::ChatRequest;
use keel_core::embeddings::{EmbeddingInput, EmbeddingRequest};
use keel_core::{Cost, Pricing};
use keel_gateway::Gateway;
use keel_limits::{Admission, Attrs, Charge, Limits, Quota, Quotas, RateKind, Refusal, Tokenizer};

use crate::accounting::RequestContext;
use crate::error::ApiError;
use crate::state::AppState;

/// Completion tokens held for requests that set no limit, by default.
pub const DEFAULT_MAX_TOKENS: u32 = 4_096;

/// What limits need per model alias, worked out once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// How its prompts are counted.
    pub tokenizer: Tokenizer,
    /// The dearest price of any deployment that may serve it.
    pub worst_pricing: Pricing,
}

/// Limits and the per-model facts they need; cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// The rules, blocks and counters.
    pub limits: Limits,
    /// Per model alias.
    pub models: Arc<HashMap<String, ModelLimits>>,
    /// Completion tokens held when a request sets no limit.
    pub default_max_tokens: u32,
}

impl RequestLimits {
    /// Works out every model's tokenizer (configured, or implied by its
    /// first deployment's upstream model) and worst-case price, and loads
    /// the tokenizers so the first request does not pay for it.
    pub fn new(
        limits: Limits,
        gateway: &Gateway,
        tokenizers: &HashMap<String, Tokenizer>,
        default_max_tokens: u32,
    ) -> RequestLimits {
        let mut models = HashMap::new();
        for info in gateway.models() {
            let Some(profile) = gateway.limit_profile(&info.id) else {
                continue;
            };
            let tokenizer = tokenizers
                .get(&info.id)
                .copied()
                .unwrap_or_else(|| Tokenizer::for_model(&profile.upstream_model));
            models.insert(
                info.id,
                ModelLimits {
                    tokenizer,
                    worst_pricing: profile.worst_pricing,
                },
            );
        }
        let used: std::collections::HashSet<Tokenizer> =
            models.values().map(|m| m.tokenizer).collect();
        for tokenizer in used {
            tokenizer.warm_up();
        }
        RequestLimits {
            limits,
            models: Arc::new(models),
            default_max_tokens,
        }
    }
}

/// The request as limit rules see it.
pub(crate) fn attrs<'a>(ctx: &'a RequestContext, model: &'a str) -> Attrs<'a> {
    Attrs {
        tenant: ctx.caller.tenant_id.as_str(),
        user: ctx.caller.user_id.as_ref().map(|u| u.as_str()),
        key: Some(ctx.caller.key_id.as_str()),
        workflow: ctx.workflow.as_deref(),
        session: ctx.session.as_deref(),
        model,
    }
}

/// An admitted chat request: its admission, its model's facts, and the
/// prompt tokens counted for it (0 when no rule needed them).
#[derive(Debug)]
pub(crate) struct Limited {
    pub admission: Admission,
    pub model: ModelLimits,
    pub prompt_tokens: u64,
}

/// Admits a chat request, capping its completion when a budget covers it
/// and it set no limit. Prompt tokens are counted only when a token rate or
/// budget covers the request. `None` for models keel does not serve (the
/// gateway refuses those).
pub(crate) async fn admit_chat(
    state: &AppState,
    ctx: &RequestContext,
    request: &mut ChatRequest,
) -> Result<Option<Limited>, ApiError> {
    let Some(model) = state.limits.models.get(&request.model).copied() else {
        return Ok(None);
    };
    let plan = state.limits.limits.plan(&attrs(ctx, &request.model));
    let (charge, prompt_tokens) = if plan.counts_tokens {
        let prompt = model.tokenizer.count_chat(request);
        let completion = match request.max_output_tokens() {
            Some(n) => n,
            None => {
                let n = state.limits.default_max_tokens;
                if plan.budgeted {
                    request.max_completion_tokens = Some(n);
                }
                n
            }
        };
        let charge = Charge {
            tokens: prompt + u64::from(completion),
            cost: model.worst_pricing.cost(prompt, u64::from(completion)),
        };
        (charge, prompt)
    } else {
        (Charge::default(), 0)
    };
    let admission = admit(state, ctx, &request.model, charge).await?;
    Ok(Some(Limited {
        admission,
        model,
        prompt_tokens,
    }))
}

/// Admits an embeddings request: its input is the whole cost.
pub(crate) async fn admit_embeddings(
    state: &AppState,
    ctx: &RequestContext,
    request: &EmbeddingRequest,
) -> Result<Option<Admission>, ApiError> {
    let Some(model) = state.limits.models.get(&request.model).copied() else {
        return Ok(None);
    };
    if !state
        .limits
        .limits
        .plan(&attrs(ctx, &request.model))
        .counts_tokens
    {
        return admit(state, ctx, &request.model, Charge::default())
            .await
            .map(Some);
    }
    let tokens: u64 = match &request.input {
        EmbeddingInput::Text(text) => model.tokenizer.count(text),
        EmbeddingInput::Texts(texts) => texts.iter().map(|t| model.tokenizer.count(t)).sum(),
        EmbeddingInput::Tokens(tokens) => tokens.len() as u64,
        EmbeddingInput::TokenBatches(batches) => batches.iter().map(|b| b.len() as u64).sum(),
    };
    let charge = Charge {
        tokens,
        cost: model.worst_pricing.cost(tokens, 0),
    };
    admit(state, ctx, &request.model, charge).await.map(Some)
}

/// Admits a request keel serves itself at no cost (a local embedder):
/// request and token limits apply.
pub(crate) async fn admit_free(
    state: &AppState,
    ctx: &RequestContext,
    model: &str,
    tokens: u64,
) -> Result<Option<Admission>, ApiError> {
    let plan = state.limits.limits.plan(&attrs(ctx, model));
    let tokens = if plan.counts_tokens { tokens } else { 0 };
    let charge = Charge {
        tokens,
        cost: Cost::ZERO,
    };
    admit(state, ctx, model, charge).await.map(Some)
}

async fn admit(
    state: &AppState,
    ctx: &RequestContext,
    model: &str,
    charge: Charge,
) -> Result<Admission, ApiError> {
    state
        .limits
        .limits
        .admit(&attrs(ctx, model), charge, ctx.request_id.as_str())
        .await
        .map_err(|refusal| refusal_error(&refusal, state.limits.limits.clock().now_ms()))
}

/// A refusal as the client sees it: 429, 402, 403 or 503 in OpenAI's
/// shape, with `retry-after` and, for rates, `x-ratelimit-*` at zero.
pub(crate) fn refusal_error(refusal: &Refusal, now_ms: i64) -> ApiError {
    let mut error = ApiError::new(refusal.code(), refusal.to_string());
    error.retry_after = refusal.retry_after(now_ms);
    if let Refusal::Rate {
        kind,
        limit,
        retry_after,
        per,
        ..
    } = refusal
    {
        let quota = Quota {
            limit: *limit,
            remaining: 0,
            reset: retry_after.unwrap_or(*per),
        };
        let mut quotas = Quotas::default();
        match kind {
            RateKind::Requests => quotas.requests = Some(quota),
            RateKind::Tokens => quotas.tokens = Some(quota),
        }
        error.headers = quota_headers(quotas);
    }
    error
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, as OpenAI
/// names them.
pub(crate) fn quota_headers(quotas: Quotas) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    for (kind, quota) in [("requests", quotas.requests), ("tokens", quotas.tokens)] {
        let Some(quota) = quota else {
            continue;
        };
        for (name, value) in [
            ("limit", quota.limit.to_string()),
            ("remaining", quota.remaining.to_string()),
            ("reset", keel_limits::fmt_interval(quota.reset)),
        ] {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(format!("x-ratelimit-{name}-{kind}")),
                HeaderValue::from_str(&value),
            ) {
                headers.push((name, value));
            }
        }
    }
    headers
}

/// Adds the quota headers to a response's headers.
pub(crate) fn add_quota_headers(headers: &mut HeaderMap, quotas: Quotas) {
    for (name, value) in quota_headers(quotas) {
        headers.insert(name, value);
    }
}

/// Settles an admission with what the call used. In process this is a few
/// map updates; with Redis it is a round trip, so it runs after the
/// response instead of before.
pub(crate) async fn settle(state: &AppState, admission: Admission, tokens: u64, cost: Cost) {
    let used = Charge { tokens, cost };
    if state.limits.limits.is_shared() {
        tokio::spawn(async move {
            admission.settle(used).await;
        });
    } else {
        admission.settle(used).await;
    }
}

/// How limits are set up at start.
#[derive(Debug, Clone)]
pub struct LimitsSetup {
    /// Rules from config, Redis, lease.
    pub config: keel_limits::LimitsConfig,
    /// Completion tokens held when a request sets no limit.
    pub default_max_tokens: u32,
    /// Tokenizers configured per model alias (others are implied by the
    /// upstream model name).
    pub tokenizers: HashMap<String, Tokenizer>,
}

impl Default for LimitsSetup {
    fn default() -> LimitsSetup {
        LimitsSetup {
            config: keel_limits::LimitsConfig::default(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
            tokenizers: HashMap::new(),
        }
    }
}

/// Loads the admin API's rules and the kill switch from the store. A
/// stored rule this version cannot read is skipped with an error log
/// rather than taking every other rule down with it.
pub async fn reload(
    store: &keel_store::Store,
    limits: &Limits,
) -> Result<(), keel_store::StoreError> {
    let stored = store.limit_rules().await?;
    let mut rules = Vec::with_capacity(stored.len());
    for row in stored {
        let checked = serde_json::from_str::<keel_limits::RuleSpec>(&row.spec)
            .map_err(|e| e.to_string())
            .and_then(|spec| spec.check().map_err(|e| e.to_string()));
        match checked {
            Ok(rule) if !limits.is_config_rule(&rule.id) => rules.push(rule),
            Ok(rule) => {
                tracing::error!(rule = %rule.id, "Stored rule shadows a config rule; ignored")
            }
            Err(e) => {
                tracing::error!(rule = %row.id, error = %e, "Stored rule is invalid; ignored")
            }
        }
    }
    if let Err(e) = limits.set_api_rules(rules) {
        tracing::error!(error = %e, "Stored rules refused");
    }
    let blocks = store
        .blocks()
        .await?
        .into_iter()
        .filter_map(|b| match keel_limits::Selector::parse(&b.scope) {
            Ok(scope) => Some(keel_limits::Block {
                scope,
                reason: b.reason,
                created_ms: b.created_ms,
            }),
            Err(e) => {
                tracing::error!(scope = %b.scope, error = %e, "Stored block is invalid; ignored");
                None
            }
        })
        .collect();
    limits.set_blocks(blocks);
    Ok(())
}
