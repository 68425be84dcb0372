//! The response cache on the request path.
//!
//! After limits admit a chat request, [`lookup`] asks the cache (exact,
//! then semantic) unless the client sent `Cache-Control: no-cache`. A hit
//! is answered by [`respond`]: the stored answer (replayed as SSE for a
//! stream), the budget holds settled at zero, and a ledger row that records
//! what the hit saved. A miss joins its exact key's flight: identical
//! requests already being generated are waited for instead of generated
//! twice. A miss's complete answer is shared with its flight at once and
//! stored off the request path by [`fill`], unless the client sent
//! `no-store`. When every upstream fails, [`stale`] may answer with an
//! entry past its TTL, for the models configured to allow it.
//!
//! The cache never fails a request: a lookup that errs is a miss, a fill
//! that errs is dropped, both logged.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use keel_cache::flight::{Leader, Seat};
use keel_cache::{CacheSettings, Entry, Hit, HitKind, Probe, ResponseCache, Scope};
use keel_core::chat::{ChatCompletion, ChatRequest};
use keel_core::{Cost, ErrorCode};
use keel_gateway::ModelKind;

use crate::accounting::{CacheUse, Outcome, RequestContext};
use crate::limiting::{self, Limited};
use crate::relay;
use crate::routes::gateway_headers;
use crate::state::AppState;

/// How the cache is set up at start.
#[derive(Debug, Clone)]
pub struct CacheSetup {
    /// What is cached and how close a semantic hit must be.
    pub settings: CacheSettings,
    /// The `[[embedders]]` entry that embeds questions; `None` limits the
    /// cache to exact hits.
    pub embedder: Option<String>,
    /// Models whose requests may be answered with a stale entry when every
    /// upstream fails.
    pub stale_models: Vec<String>,
    /// How long a request waits for an identical one being generated.
    pub follow: Duration,
    /// How often expired and excess entries are swept.
    pub sweep_every: Duration,
    /// What entries' ages are measured by (tests advance it by hand).
    pub clock: keel_limits::Clock,
}

impl Default for CacheSetup {
    fn default() -> Self {
        CacheSetup {
            settings: CacheSettings::default(),
            embedder: None,
            stale_models: Vec::new(),
            follow: Duration::from_secs(60),
            sweep_every: Duration::from_secs(60),
            clock: keel_limits::Clock::system(),
        }
    }
}

/// The running cache and its serving rules; cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestCache {
    /// The cache.
    pub cache: ResponseCache,
    stale_models: Arc<HashSet<String>>,
    follow: Duration,
    /// How often expired and excess entries are swept.
    pub sweep_every: Duration,
}

impl RequestCache {
    /// Wraps a cache with the setup's serving rules.
    pub fn new(cache: ResponseCache, setup: &CacheSetup) -> RequestCache {
        RequestCache {
            cache,
            stale_models: Arc::new(setup.stale_models.iter().cloned().collect()),
            follow: setup.follow,
            sweep_every: setup.sweep_every,
        }
    }
}

/// The request's `Cache-Control` directives that keel honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-cache`: do not answer from the cache.
    pub no_cache: bool,
    /// `no-store`: do not store the answer.
    pub no_store: bool,
}

impl CacheControl {
    /// Reads every `Cache-Control` header; other directives are ignored.
    pub fn of(headers: &HeaderMap) -> CacheControl {
        let mut control = CacheControl::default();
        let directives = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for directive in directives {
            let name = directive.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("no-cache") {
                control.no_cache = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                control.no_store = true;
            }
        }
        control
    }
}

/// A missed request's way through the cache: its probe, and its flight
/// when it leads one.
#[derive(Debug)]
pub struct Pass {
    probe: Probe,
    leader: Option<Leader>,
    control: CacheControl,
}

/// The probe of a chat request the cache may see: before limits touch it
/// (they may cap its completion), for a chat model keel serves, allowed by
/// the settings. `None` leaves the cache out of the request.
pub fn probe(state: &AppState, ctx: &RequestContext, request: &ChatRequest) -> Option<Probe> {
    let cache = state.cache.as_ref()?;
    if state.gateway.model_kind(&request.model) != Some(ModelKind::Chat) {
        return None;
    }
    let scope = Scope {
        tenant: ctx.caller.tenant_id.to_string(),
        user: ctx.caller.user_id.as_ref().map(ToString::to_string),
    };
    cache.cache.probe(request, &scope).ok()
}

/// Looks the request up: a hit to serve, or the pass a miss carries to
/// [`fill`] and [`stale`].
pub async fn lookup(
    state: &AppState,
    ctx: &RequestContext,
    probe: Option<Probe>,
    control: CacheControl,
) -> Result<Hit, Option<Pass>> {
    let (Some(cache), Some(mut probe)) = (state.cache.as_ref(), probe) else {
        return Err(None);
    };
    let tenant = ctx.caller.tenant_id.as_str();
    let mut leader = None;
    if !control.no_cache {
        let found = cache.cache.lookup(&mut probe).await;
        for veto in probe.vetoes.drain(..) {
            state.metrics.record_cache_veto(veto);
        }
        match found {
            Ok(Some(hit)) => {
                state.metrics.record_cache_lookup(tenant, hit.kind.as_str());
                return Ok(hit);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "Cache lookup failed; treating it as a miss"),
        }
        match cache.cache.flights().join(&probe.key.exact) {
            Seat::Leader(l) => leader = Some(l),
            Seat::Follower(follower) => {
                if let Some(entry) = follower.wait(cache.follow).await {
                    state.metrics.record_cache_lookup(tenant, "exact");
                    return Ok(Hit {
                        kind: HitKind::Exact,
                        entry,
                        similarity: None,
                    });
                }
            }
        }
    }
    state.metrics.record_cache_lookup(tenant, "miss");
    Err(Some(Pass {
        probe,
        leader,
        control,
    }))
}

/// Shares a complete answer with the request's flight and stores it off
/// the request path; an answer that may not be cached (or a `no-store`
/// request's) ends the flight empty.
pub fn fill(
    state: &AppState,
    pass: Option<Pass>,
    response: &ChatCompletion,
    cost: Cost,
    tokens: (u64, u64),
) {
    let (Some(cache), Some(mut pass)) = (state.cache.as_ref(), pass) else {
        return;
    };
    if pass.control.no_store {
        return;
    }
    let cost = i64::try_from(cost.micros()).unwrap_or(i64::MAX);
    let Some(entry) = cache.cache.prepare(&pass.probe, response, cost, tokens) else {
        return;
    };
    if let Some(leader) = &mut pass.leader {
        leader.share(Arc::clone(&entry));
    }
    let cache = cache.cache.clone();
    tokio::spawn(async move {
        if let Err(e) = cache.store(&mut pass.probe, &entry).await {
            tracing::warn!(error = %e, "Cache fill failed; the answer is not stored");
        }
        // Identical requests kept joining the flight until the entry was
        // stored; from here on lookups find it.
        drop(pass.leader.take());
    });
}

/// A stale entry for a request every upstream failed, when its model
/// allows one and the failure was the upstreams' (not the request's).
pub async fn stale(
    state: &AppState,
    ctx: &RequestContext,
    pass: Option<Pass>,
    model: &str,
    error: ErrorCode,
) -> Option<Hit> {
    let cache = state.cache.as_ref()?;
    let mut pass = pass?;
    let upstreams_failed = matches!(
        error,
        ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamRateLimited
            | ErrorCode::UpstreamBadResponse
    );
    if pass.control.no_cache || !upstreams_failed || !cache.stale_models.contains(model) {
        return None;
    }
    match cache.cache.stale(&mut pass.probe).await {
        Ok(Some(hit)) => {
            state
                .metrics
                .record_cache_lookup(ctx.caller.tenant_id.as_str(), hit.kind.as_str());
            tracing::warn!(request_id = %ctx.request_id, model, error = error.as_str(), age_s = hit.entry.age_secs(cache.cache.now_ms()), "Every upstream failed; serving a stale cached answer");
            Some(hit)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "Stale cache lookup failed");
            None
        }
    }
}

/// Answers a request from the cache: the stored answer (as SSE when the
/// request streams), its holds settled at zero, and a ledger row with what
/// the hit saved.
pub async fn respond(
    state: &AppState,
    ctx: &RequestContext,
    request: &ChatRequest,
    hit: Hit,
    limited: Option<Limited>,
) -> Response {
    let entry = &hit.entry;
    let outcome = Outcome {
        model: request.model.clone(),
        status: 200,
        stream: request.is_stream(),
        cache: Some(CacheUse::hit(hit.kind, entry)),
        ..Outcome::default()
    };
    let (_, overhead) = ctx.finish(state, outcome).await;
    let mut response = match request.is_stream() {
        true => replay(request, entry),
        false => Json(&entry.response).into_response(),
    };
    let headers = response.headers_mut();
    gateway_headers(headers, ctx, None, Some(overhead));
    let now_ms = state.cache.as_ref().map_or(0, |c| c.cache.now_ms());
    hit_headers(headers, &hit, now_ms);
    if let Some(limited) = limited {
        limiting::add_quota_headers(headers, limited.admission.quotas());
        limiting::settle(state, limited.admission, 0, Cost::ZERO).await;
    }
    response
}

/// Adds `x-keel-cache: miss` to a response the cache saw but could not
/// answer.
pub fn miss_header(headers: &mut HeaderMap) {
    headers.insert("x-keel-cache", HeaderValue::from_static("miss"));
}

/// Adds `x-keel-cache`, the similarity of a semantic hit, and `age`.
fn hit_headers(headers: &mut HeaderMap, hit: &Hit, now_ms: i64) {
    headers.insert("x-keel-cache", HeaderValue::from_static(hit.kind.as_str()));
    if let Some(similarity) = hit.similarity
        && let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}"))
    {
        headers.insert("x-keel-cache-similarity", v);
    }
    if let Ok(v) = HeaderValue::from_str(&hit.entry.age_secs(now_ms).to_string()) {
        headers.insert(http::header::AGE, v);
    }
}

/// A stored answer as a server-sent event stream.
fn replay(request: &ChatRequest, entry: &Entry) -> Response {
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let usage = include_usage
        .then(|| entry.response.usage.clone())
        .flatten();
    let mut events: Vec<Result<Bytes, Infallible>> =
        keel_cache::replay::chunks(&entry.response, usage)
            .iter()
            .map(|c| Ok(relay::encode(c)))
            .collect();
    events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    relay::event_stream(Body::from_stream(futures::stream::iter(events)))
}
