//! The limits a server enforces: rules from config and the admin API, the
//! kill switch, and the backend that keeps the counters.
//!
//! # The budget bound
//!
//! Before a call, [`Limits::admit`] holds the request's worst-case cost in
//! every budget that covers it, all or nothing; a request is admitted only if
//! `spent + held + worst case <= cap` in each. After the call,
//! [`Admission::settle`] replaces the hold with the real cost. The worst case
//! is the prompt (counted with the model's tokenizer, images at their most)
//! plus the completion limit (`max_tokens`, or the configured default, which
//! keel then sends upstream) at the dearest price of any deployment that may
//! serve the call. A stream whose running cost would pass its hold must
//! extend it first, or is cut. So spend never exceeds a cap, however many
//! requests race — provided upstreams bill no more tokens than keel held,
//! which holds for OpenAI models (counted exactly) and, with its generous
//! estimate, for others.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use keel_core::Cost;
use keel_telemetry::Metrics;
use keel_telemetry::metrics::{BackendLabels, LimitLabels, ThresholdLabels};
use serde::Serialize;

use crate::clock::Clock;
use crate::decision::{Charge, Hit, Quotas, Refusal, ThresholdCrossed};
use crate::local::Local;
use crate::rule::{FailMode, Limit, Rule};
use crate::scope::{Attrs, Selector};
use crate::shared::{BackendError, RedisSettings, Shared};

/// Recent threshold events kept for the admin API.
const EVENTS_KEPT: usize = 1_000;

/// Least time between two warnings about an unreachable backend.
const WARN_EVERY_MS: i64 = 10_000;

/// How limits are set up.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Rules from the config file.
    pub rules: Vec<Rule>,
    /// Redis, for limits shared by several processes.
    pub redis: Option<RedisSettings>,
    /// How long a concurrency slot or budget hold outlives a process that
    /// died holding it.
    pub lease: Duration,
    /// The time source.
    pub clock: Clock,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            rules: Vec::new(),
            redis: None,
            lease: Duration::from_secs(900),
            clock: Clock::system(),
        }
    }
}

/// A kill-switch entry: every request in `scope` is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    /// What is blocked (`tenant=acme`, `tenant=acme,user=bob`, `key=k_1`).
    #[serde(serialize_with = "display")]
    pub scope: Selector,
    /// Why, shown to refused clients.
    pub reason: String,
    /// When it was set (Unix ms).
    pub created_ms: i64,
}

fn display<S: serde::Serializer>(value: &Selector, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// What the rules covering a request need (see [`Limits::plan`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// A token rate or a budget covers it: its tokens must be counted.
    pub counts_tokens: bool,
    /// A budget covers it: its completion must be capped.
    pub budgeted: bool,
}

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// The config file (changed by editing it and restarting).
    Config,
    /// The admin API (changed at runtime).
    Api,
}

/// A soft budget threshold crossed, as kept for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitEvent {
    /// When (Unix ms).
    pub at_ms: i64,
    /// What.
    #[serde(flatten)]
    pub crossed: ThresholdCrossed,
}

/// Refused configuration of limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// Two rules share an id.
    #[error("rule id {0:?} is used twice")]
    DuplicateId(String),
    /// An API rule would replace a config rule.
    #[error("rule {0:?} is defined in the config file; change it there")]
    ConfigRule(String),
    /// The Redis URL is unusable.
    #[error("store.redis_url: {0}")]
    Redis(String),
}

/// Every rule in force, with where it came from.
type RuleTable = Vec<(Arc<Rule>, RuleSource)>;

#[derive(Debug)]
struct Inner {
    config_rules: Vec<Arc<Rule>>,
    rules: RwLock<Arc<RuleTable>>,
    blocks: RwLock<Arc<Vec<Block>>>,
    local: Local,
    shared: Option<Shared>,
    lease: Duration,
    clock: Clock,
    metrics: Metrics,
    events: Mutex<VecDeque<LimitEvent>>,
    last_warning_ms: AtomicI64,
}

/// Rate limits, budgets and blocks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

/// Which backend holds an admission's charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Local,
    Shared,
}

/// A request's charges in every rule that covers it. Settle it with what
/// the call used; dropping it unsettled releases everything but the
/// request count (the call failed or was cancelled).
#[must_use = "settle the admission with what the call used, or drop it to release it"]
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    member: String,
    hits: Vec<Hit>,
    via: Via,
    held: Charge,
    quotas: Quotas,
    open: bool,
}

impl Limits {
    /// Limits enforcing the config's rules, in process or in Redis.
    pub fn new(config: LimitsConfig, metrics: Metrics) -> Result<Limits, LimitsError> {
        let mut seen = HashSet::new();
        for rule in &config.rules {
            if !seen.insert(rule.id.clone()) {
                return Err(LimitsError::DuplicateId(rule.id.clone()));
            }
        }
        let shared = match &config.redis {
            Some(settings) => {
                Some(Shared::new(settings).map_err(|e| LimitsError::Redis(e.to_string()))?)
            }
            None => None,
        };
        let config_rules: Vec<Arc<Rule>> = config.rules.into_iter().map(Arc::new).collect();
        let rules = config_rules
            .iter()
            .map(|r| (Arc::clone(r), RuleSource::Config))
            .collect();
        Ok(Limits {
            inner: Arc::new(Inner {
                config_rules,
                rules: RwLock::new(Arc::new(rules)),
                blocks: RwLock::new(Arc::new(Vec::new())),
                local: Local::default(),
                shared,
                lease: config.lease,
                clock: config.clock,
                metrics,
                events: Mutex::new(VecDeque::new()),
                last_warning_ms: AtomicI64::new(i64::MIN),
            }),
        })
    }

    /// The time source.
    pub fn clock(&self) -> Clock {
        self.inner.clock.clone()
    }

    /// Whether counters live in Redis.
    pub fn is_shared(&self) -> bool {
        self.inner.shared.is_some()
    }

    /// Every rule with its source, config rules first.
    pub fn rules(&self) -> Vec<(Arc<Rule>, RuleSource)> {
        self.inner
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .to_vec()
    }

    /// Whether `id` names a config rule.
    pub fn is_config_rule(&self, id: &str) -> bool {
        self.inner.config_rules.iter().any(|r| r.id == id)
    }

    /// Replaces the rules from the admin API. Counters and spend recorded
    /// under a rule id are kept, so changing a limit forgives nothing.
    pub fn set_api_rules(&self, api_rules: Vec<Rule>) -> Result<(), LimitsError> {
        let mut seen: HashSet<String> = HashSet::new();
        for rule in &api_rules {
            if self.is_config_rule(&rule.id) {
                return Err(LimitsError::ConfigRule(rule.id.clone()));
            }
            if !seen.insert(rule.id.clone()) {
                return Err(LimitsError::DuplicateId(rule.id.clone()));
            }
        }
        let rules: Vec<_> = self
            .inner
            .config_rules
            .iter()
            .map(|r| (Arc::clone(r), RuleSource::Config))
            .chain(
                api_rules
                    .into_iter()
                    .map(|r| (Arc::new(r), RuleSource::Api)),
            )
            .collect();
        *self
            .inner
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        Ok(())
    }

    /// Replaces the kill-switch entries.
    pub fn set_blocks(&self, blocks: Vec<Block>) {
        *self
            .inner
            .blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(blocks);
    }

    /// The kill-switch entries.
    pub fn blocks(&self) -> Vec<Block> {
        self.inner
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .to_vec()
    }

    /// Recent budget threshold crossings, oldest first.
    pub fn events(&self) -> Vec<LimitEvent> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// What the rules covering a request need to know before admitting
    /// it, so callers count tokens only when a rule uses them.
    pub fn plan(&self, attrs: &Attrs<'_>) -> Plan {
        let rules = self
            .inner
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut plan = Plan::default();
        for (rule, _) in rules.iter().filter(|(r, _)| r.selector.matches(attrs)) {
            match rule.limit {
                Limit::Tokens { .. } => plan.counts_tokens = true,
                Limit::Budget { .. } => {
                    plan.counts_tokens = true;
                    plan.budgeted = true;
                }
                Limit::Requests { .. } | Limit::Concurrency { .. } => {}
            }
        }
        plan
    }

    fn hits(&self, attrs: &Attrs<'_>) -> Vec<Hit> {
        let rules = Arc::clone(
            &self
                .inner
                .rules
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        rules
            .iter()
            .filter_map(|(rule, _)| {
                rule.selector.partition(attrs).map(|scope| Hit {
                    rule: Arc::clone(rule),
                    scope,
                })
            })
            .collect()
    }

    fn blocked(&self, attrs: &Attrs<'_>) -> Option<Refusal> {
        let blocks = Arc::clone(
            &self
                .inner
                .blocks
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        blocks
            .iter()
            .find(|b| b.scope.partition(attrs).is_some())
            .map(|b| Refusal::Blocked {
                scope: b.scope.to_string(),
                reason: b.reason.clone(),
            })
    }

    /// Admits a request that may consume `charge` (prompt plus the most the
    /// completion may use, and the worst-case cost), charging every rule
    /// that covers it, or refuses it naming the rule. `member` identifies
    /// the request in shared holds (its request id).
    pub async fn admit(
        &self,
        attrs: &Attrs<'_>,
        charge: Charge,
        member: &str,
    ) -> Result<Admission, Refusal> {
        let result = self.decide(attrs, charge, member).await;
        if let Err(refusal) = &result {
            self.inner
                .metrics
                .limit_refusals
                .get_or_create(&LimitLabels {
                    rule: refusal.rule().to_owned(),
                    kind: refusal.kind(),
                })
                .inc();
        }
        result
    }

    async fn decide(
        &self,
        attrs: &Attrs<'_>,
        charge: Charge,
        member: &str,
    ) -> Result<Admission, Refusal> {
        if let Some(refusal) = self.blocked(attrs) {
            return Err(refusal);
        }
        let hits = self.hits(attrs);
        let mut admission = Admission {
            limits: self.clone(),
            member: member.to_owned(),
            hits: Vec::new(),
            via: Via::Local,
            held: charge,
            quotas: Quotas::default(),
            open: false,
        };
        if hits.is_empty() {
            return Ok(admission);
        }
        let now_ms = self.inner.clock.now_ms();
        if let Some(shared) = &self.inner.shared {
            match shared
                .admit(&hits, member, charge, self.inner.lease, now_ms)
                .await
            {
                Ok(decision) => {
                    admission.quotas = decision?;
                    admission.hits = hits;
                    admission.via = Via::Shared;
                    admission.open = true;
                    return Ok(admission);
                }
                Err(e) => {
                    self.backend_failed("admit", &e);
                    if let Some(closed) = hits
                        .iter()
                        .find(|h| h.rule.on_redis_error == FailMode::Closed)
                    {
                        return Err(Refusal::Unavailable {
                            rule: closed.rule.id.clone(),
                            error: e.0,
                        });
                    }
                    // Every rule fails open: enforce them in this process
                    // until Redis is back.
                }
            }
        }
        admission.quotas =
            self.inner
                .local
                .admit(&hits, charge, now_ms, self.inner.clock.instant())?;
        admission.hits = hits;
        admission.open = true;
        Ok(admission)
    }

    fn backend_failed(&self, operation: &'static str, error: &BackendError) {
        self.inner
            .metrics
            .limits_backend_errors
            .get_or_create(&BackendLabels { operation })
            .inc();
        let now = self.inner.clock.now_ms();
        let last = self.inner.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .inner
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                operation,
                error = %error,
                "Limits backend (Redis) failed; fail-open rules are enforced per process, \
                 fail-closed rules refuse requests"
            );
        }
    }

    fn record_crossings(&self, crossed: &[ThresholdCrossed]) {
        if crossed.is_empty() {
            return;
        }
        let at_ms = self.inner.clock.now_ms();
        let mut events = self
            .inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for c in crossed {
            tracing::warn!(
                rule = %c.rule, scope = %c.scope, percent = c.percent,
                spent = %c.spent, cap = %c.cap,
                "Budget threshold crossed"
            );
            self.inner
                .metrics
                .budget_thresholds
                .get_or_create(&ThresholdLabels {
                    rule: c.rule.clone(),
                    percent: c.percent,
                })
                .inc();
            if events.len() == EVENTS_KEPT {
                events.pop_front();
            }
            events.push_back(LimitEvent {
                at_ms,
                crossed: c.clone(),
            });
        }
    }

    /// Spent and held in one budget account now, if the rule exists.
    pub async fn account(&self, rule_id: &str, scope: &str) -> Option<(Cost, Cost)> {
        let rule = self
            .rules()
            .into_iter()
            .find(|(r, _)| r.id == rule_id)
            .map(|(r, _)| r)?;
        let now_ms = self.inner.clock.now_ms();
        match &self.inner.shared {
            Some(shared) => {
                let hit = Hit {
                    rule,
                    scope: scope.to_owned(),
                };
                shared.account(&hit, now_ms).await.ok()
            }
            None => Some(
                self.inner
                    .local
                    .account(rule_id, scope, now_ms)
                    .unwrap_or((Cost::ZERO, Cost::ZERO)),
            ),
        }
    }

    /// Checks the shared backend answers (always true in process).
    pub async fn ping(&self) -> Result<(), String> {
        match &self.inner.shared {
            Some(shared) => shared.ping().await.map_err(|e| e.0),
            None => Ok(()),
        }
    }

    /// Drops in-process state nothing depends on any more; returns how
    /// many entries went.
    pub fn sweep(&self) -> usize {
        self.inner
            .local
            .sweep(self.inner.clock.now_ms(), self.inner.clock.instant())
    }
}

impl Admission {
    /// The tightest request and token quotas left, for response headers.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// What is held: tokens and worst-case cost.
    pub fn held(&self) -> Charge {
        self.held
    }

    /// Whether a budget covers the request.
    pub fn has_budget(&self) -> bool {
        self.hits
            .iter()
            .any(|h| matches!(h.rule.limit, Limit::Budget { .. }))
    }

    /// Holds `extra` more in every budget (a stream running past its
    /// hold), or refuses without changing anything.
    pub async fn extend(&mut self, extra: Cost) -> Result<(), Refusal> {
        if !self.open || !self.has_budget() {
            self.held.cost = self.held.cost.saturating_add(extra);
            return Ok(());
        }
        let limits = &self.limits.inner;
        let now_ms = limits.clock.now_ms();
        let result = match (self.via, &limits.shared) {
            (Via::Shared, Some(shared)) => {
                match shared
                    .extend(&self.hits, &self.member, extra, limits.lease, now_ms)
                    .await
                {
                    Ok(decision) => decision,
                    Err(e) => {
                        self.limits.backend_failed("extend", &e);
                        let closed = self.hits.iter().find(|h| {
                            matches!(h.rule.limit, Limit::Budget { .. })
                                && h.rule.on_redis_error == FailMode::Closed
                        });
                        match closed {
                            Some(h) => Err(Refusal::Unavailable {
                                rule: h.rule.id.clone(),
                                error: e.0,
                            }),
                            None => Ok(()),
                        }
                    }
                }
            }
            _ => limits.local.extend(&self.hits, extra, now_ms),
        };
        if result.is_ok() {
            self.held.cost = self.held.cost.saturating_add(extra);
        }
        result
    }

    /// Replaces the holds with what the call used; returns the soft budget
    /// thresholds this crossed (also logged, counted and kept as events).
    pub async fn settle(mut self, used: Charge) -> Vec<ThresholdCrossed> {
        let crossed = self.finish(used).await;
        self.limits.record_crossings(&crossed);
        crossed
    }

    async fn finish(&mut self, used: Charge) -> Vec<ThresholdCrossed> {
        if !self.open {
            return Vec::new();
        }
        self.open = false;
        let hits = std::mem::take(&mut self.hits);
        self.limits
            .release(self.via, &hits, &self.member, self.held, used)
            .await
    }
}

impl Limits {
    /// Replaces `held` with `used` in every hit, on the backend that holds
    /// them.
    async fn release(
        &self,
        via: Via,
        hits: &[Hit],
        member: &str,
        held: Charge,
        used: Charge,
    ) -> Vec<ThresholdCrossed> {
        let limits = &self.inner;
        let now_ms = limits.clock.now_ms();
        match (via, &limits.shared) {
            (Via::Shared, Some(shared)) => {
                match shared.settle(hits, member, held, used, now_ms).await {
                    Ok(crossed) => crossed,
                    Err(e) => {
                        // The holds expire with their lease; spend is still
                        // in the ledger.
                        self.backend_failed("settle", &e);
                        Vec::new()
                    }
                }
            }
            _ => limits
                .local
                .settle(hits, held, used, now_ms, limits.clock.instant()),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        match self.via {
            Via::Local => {
                let limits = &self.limits.inner;
                limits.local.settle(
                    &self.hits,
                    self.held,
                    Charge::default(),
                    limits.clock.now_ms(),
                    limits.clock.instant(),
                );
                self.open = false;
            }
            Via::Shared => {
                self.open = false;
                let limits = self.limits.clone();
                let hits = std::mem::take(&mut self.hits);
                let member = std::mem::take(&mut self.member);
                let held = self.held;
                // Without a runtime (shutting down), the lease frees the
                // holds instead.
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        limits
                            .release(Via::Shared, &hits, &member, held, Charge::default())
                            .await;
                    });
                }
            }
        }
    }
}
