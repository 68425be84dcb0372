//! The metric families keel exports at `/metrics`.
//!
//! One [`Metrics`] value is created at startup and shared (it is cheap to
//! clone: every family is reference-counted inside). Recording is lock-free
//! for existing label sets; a new label set takes a short write lock once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Labels of a finished client request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat` or `embeddings`.
    pub route: &'static str,
    /// The model alias the client asked for.
    pub model: String,
    /// `ok`, or the error code (keel-core's vocabulary).
    pub outcome: &'static str,
}

/// Labels of one upstream attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The configured deployment name.
    pub deployment: String,
    /// `ok`, or the error code of the attempt.
    pub outcome: &'static str,
}

/// Labels carrying a model alias.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model alias.
    pub model: String,
}

/// Labels of token and cost counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    /// The tenant id.
    pub tenant: String,
    /// The model alias.
    pub model: String,
}

/// Labels of token counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The tenant id.
    pub tenant: String,
    /// The model alias.
    pub model: String,
    /// `prompt` or `completion`.
    pub direction: &'static str,
}

/// Labels of error counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `caller`, `policy`, `upstream` or `internal`.
    pub class: &'static str,
    /// The error code.
    pub code: &'static str,
}

/// Labels of breaker gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// The configured deployment name.
    pub deployment: String,
}

/// Labels of limit refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The rule's id (`_blocked` for the kill switch, `_backend` for an
    /// unreachable Redis).
    pub rule: String,
    /// `requests`, `tokens`, `concurrency`, `budget`, `blocked` or
    /// `unavailable`.
    pub kind: &'static str,
}

/// Labels of budget threshold crossings.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThresholdLabels {
    /// The budget rule's id.
    pub rule: String,
    /// The threshold, in percent of the cap.
    pub percent: u8,
}

/// Labels of limit backend failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// `admit`, `settle` or `extend`.
    pub operation: &'static str,
}

/// Labels of cache lookups.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// The tenant id.
    pub tenant: String,
    /// `exact`, `semantic`, `stale` or `miss`.
    pub kind: &'static str,
}

/// Labels of cache hit ratios.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HitRatioLabels {
    /// `exact`, `semantic` or `stale`.
    pub kind: &'static str,
}

/// Labels of guard vetoes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VetoLabels {
    /// The check that vetoed (`numbers`, `negation`, `opposite`,
    /// `entities`, `order`, `language`).
    pub reason: &'static str,
}

/// A breaker state as a gauge value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerStateValue {
    /// Traffic flows.
    Closed = 0,
    /// Probe requests are let through.
    HalfOpen = 1,
    /// The deployment is skipped.
    Open = 2,
}

/// Every instrument keel records into, plus the registry that exports them.
/// Cloning is one reference-count increment: handlers clone it per request.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

/// The metric families; reached through [`Metrics`] by `Deref`.
pub struct Families {
    registry: Registry,
    /// Client-visible request duration.
    pub request_duration: HistogramFamily<RequestLabels>,
    /// Request duration minus time spent waiting on upstreams.
    pub gateway_overhead: HistogramFamily<ModelLabels>,
    /// Time from request arrival to the first streamed token.
    pub time_to_first_token: HistogramFamily<ModelLabels>,
    /// Duration of each upstream attempt.
    pub upstream_duration: HistogramFamily<UpstreamLabels>,
    /// Tokens by tenant, model and direction.
    pub tokens: Family<TokenLabels, Counter>,
    /// Cost in micro-dollars by tenant and model.
    pub cost_micros: Family<SpendLabels, Counter>,
    /// Failed requests by class and code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Requests served by another deployment than the first choice.
    pub failovers: Family<ModelLabels, Counter>,
    /// Breaker state per deployment (0 closed, 1 half-open, 2 open).
    pub breaker_state: Family<BreakerLabels, Gauge>,
    /// Times a breaker opened.
    pub breaker_trips: Family<BreakerLabels, Counter>,
    /// Requests being served right now.
    pub in_flight: Gauge,
    /// Usage rows accepted but not yet written.
    pub ledger_pending: Gauge,
    /// Requests refused by a limit, budget or block.
    pub limit_refusals: Family<LimitLabels, Counter>,
    /// Budget soft thresholds crossed.
    pub budget_thresholds: Family<ThresholdLabels, Counter>,
    /// Calls to the shared limits backend (Redis) that failed or timed out.
    pub limits_backend_errors: Family<BackendLabels, Counter>,
    /// Cache lookups by tenant and outcome.
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// Share of all lookups since start answered by each kind of hit.
    pub cache_hit_ratio: Family<HitRatioLabels, Gauge<f64, AtomicU64>>,
    /// Cost the cache avoided, micro-dollars, by tenant and model.
    pub cache_saved_micros: Family<SpendLabels, Counter>,
    /// Tokens the cache avoided by tenant, model and direction.
    pub cache_saved_tokens: Family<TokenLabels, Counter>,
    /// Semantic hits the guard refused, by check.
    pub cache_vetoes: Family<VetoLabels, Counter>,
    /// Lookups since start, and hits of each kind, for the ratios.
    cache_counts: [AtomicU64; 4],
}

/// A request being served; dropping it takes it off the in-flight gauge.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn seconds_buckets() -> Histogram {
    // 1 ms to ~65 s, doubling: model calls span four orders of magnitude.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

fn overhead_buckets() -> Histogram {
    // 25 µs to ~100 ms: gateway overhead should sit in the lowest buckets.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_025, 2.0, 13,
    ))
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keel");
        let m = Families {
            registry: Registry::default(),
            request_duration: Family::new_with_constructor(seconds_buckets),
            gateway_overhead: Family::new_with_constructor(overhead_buckets),
            time_to_first_token: Family::new_with_constructor(seconds_buckets),
            upstream_duration: Family::new_with_constructor(seconds_buckets),
            tokens: Family::default(),
            cost_micros: Family::default(),
            errors: Family::default(),
            failovers: Family::default(),
            breaker_state: Family::default(),
            breaker_trips: Family::default(),
            in_flight: Gauge::default(),
            ledger_pending: Gauge::default(),
            limit_refusals: Family::default(),
            budget_thresholds: Family::default(),
            limits_backend_errors: Family::default(),
            cache_lookups: Family::default(),
            cache_hit_ratio: Family::default(),
            cache_saved_micros: Family::default(),
            cache_saved_tokens: Family::default(),
            cache_vetoes: Family::default(),
            cache_counts: Default::default(),
        };
        let r = &mut registry;
        r.register(
            "request_duration_seconds",
            "Client-visible request duration",
            m.request_duration.clone(),
        );
        r.register(
            "gateway_overhead_seconds",
            "Request duration minus time waiting on upstreams",
            m.gateway_overhead.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Time from request arrival to the first streamed content",
            m.time_to_first_token.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Duration of each upstream attempt",
            m.upstream_duration.clone(),
        );
        r.register(
            "tokens",
            "Tokens by tenant, model and direction",
            m.tokens.clone(),
        );
        r.register(
            "cost_micros",
            "Spend in micro-dollars",
            m.cost_micros.clone(),
        );
        r.register(
            "errors",
            "Failed requests by class and code",
            m.errors.clone(),
        );
        r.register(
            "failovers",
            "Requests served by a later choice",
            m.failovers.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open)",
            m.breaker_state.clone(),
        );
        r.register(
            "breaker_trips",
            "Times a circuit breaker opened",
            m.breaker_trips.clone(),
        );
        r.register(
            "in_flight_requests",
            "Requests being served",
            m.in_flight.clone(),
        );
        r.register(
            "ledger_pending_rows",
            "Usage rows not yet written",
            m.ledger_pending.clone(),
        );
        r.register(
            "limit_refusals",
            "Requests refused by a rate limit, budget or block",
            m.limit_refusals.clone(),
        );
        r.register(
            "budget_threshold_crossings",
            "Budget soft thresholds crossed",
            m.budget_thresholds.clone(),
        );
        r.register(
            "limits_backend_errors",
            "Failed or timed-out calls to the shared limits backend",
            m.limits_backend_errors.clone(),
        );
        r.register(
            "cache_lookups",
            "Response cache lookups by tenant and outcome",
            m.cache_lookups.clone(),
        );
        r.register(
            "cache_hit_ratio",
            "Share of cache lookups since start answered by each kind of hit",
            m.cache_hit_ratio.clone(),
        );
        r.register(
            "cache_saved_cost_micros",
            "Spend the cache avoided, in micro-dollars",
            m.cache_saved_micros.clone(),
        );
        r.register(
            "cache_saved_tokens",
            "Tokens the cache avoided",
            m.cache_saved_tokens.clone(),
        );
        r.register(
            "cache_guard_vetoes",
            "Semantic cache hits the guard refused, by check",
            m.cache_vetoes.clone(),
        );
        Metrics(Arc::new(Families { registry, ..m }))
    }

    /// Sets a deployment's breaker gauge.
    pub fn set_breaker_state(&self, deployment: &str, state: BreakerStateValue) {
        self.breaker_state
            .get_or_create(&BreakerLabels {
                deployment: deployment.to_owned(),
            })
            .set(state as i64);
    }

    /// Counts a semantic hit the guard refused, by the check that refused it.
    pub fn record_cache_veto(&self, reason: &'static str) {
        self.cache_vetoes
            .get_or_create(&VetoLabels { reason })
            .inc();
    }

    /// Counts one cache lookup's outcome (`exact`, `semantic`, `stale` or
    /// `miss`) and refreshes the hit ratios.
    pub fn record_cache_lookup(&self, tenant: &str, kind: &'static str) {
        self.cache_lookups
            .get_or_create(&CacheLabels {
                tenant: tenant.to_owned(),
                kind,
            })
            .inc();
        const KINDS: [&str; 3] = ["exact", "semantic", "stale"];
        let counts = &self.cache_counts;
        let total = counts[3].fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            counts[i].fetch_add(1, Ordering::Relaxed);
        }
        for (i, kind) in KINDS.into_iter().enumerate() {
            let hits = counts[i].load(Ordering::Relaxed);
            self.cache_hit_ratio
                .get_or_create(&HitRatioLabels { kind })
                .set(hits as f64 / total as f64);
        }
    }

    /// Counts a request in `keel_in_flight_requests` until the returned
    /// guard is dropped.
    pub fn enter_request(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail; an error here would be a bug in
        // a metric type, and an empty scrape is the safest answer.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl std::ops::Deref for Metrics {
    type Target = Families;

    fn deref(&self) -> &Families {
        &self.0
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_families_with_labels() {
        let m = Metrics::new();
        m.request_duration
            .get_or_create(&RequestLabels {
                route: "chat",
                model: "fast".into(),
                outcome: "ok",
            })
            .observe(0.02);
        m.set_breaker_state("sim-a", BreakerStateValue::Open);
        let text = m.render();
        assert!(
            text.contains("keel_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(text.contains("model=\"fast\""));
        assert!(text.contains("keel_breaker_state{deployment=\"sim-a\"} 2"));
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let m = Metrics::new();
        let a = m.enter_request();
        let b = m.enter_request();
        assert_eq!(m.in_flight.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(m.in_flight.get(), 0);
    }

    #[test]
    fn overhead_buckets_resolve_sub_millisecond() {
        let m = Metrics::new();
        m.gateway_overhead
            .get_or_create(&ModelLabels { model: "m".into() })
            .observe(0.0003);
        let text = m.render();
        assert!(text.contains("le=\"0.0004\""), "{text}");
    }
}
