//! The gateway: routes a request to a deployment and tries until one answers.
//!
//! For each request the router lists candidate deployments (the model's own
//! by priority and weight, then its fallbacks'), skips those whose breaker is
//! open, and tries them in turn. A failed attempt moves on to the next
//! candidate at once; when a whole round fails, the next round waits an
//! exponential backoff with jitter (at least the upstream's `Retry-After`).
//! A request the upstream called invalid is returned immediately: another
//! deployment would refuse it too.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use keel_core::chat::{ChatChunk, ChatCompletion, ChatRequest};
use keel_core::embeddings::{EmbeddingRequest, EmbeddingResponse, ModelInfo};
use keel_core::{ErrorCode, Pricing};
use keel_telemetry::Metrics;
use keel_telemetry::metrics::{ModelLabels, UpstreamLabels};
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerSnapshot};
use crate::config::{DeploymentConfig, GatewayConfig, ModelConfig, ModelKind, Timeouts};
use crate::error::{AttemptError, GatewayError};
use crate::provider::{ChunkStream, Upstream};
use crate::route::weighted_order;

/// Why a gateway could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A deployment names a provider that is not configured.
    #[error("deployment {deployment:?} names unknown provider {provider:?}")]
    UnknownProvider {
        /// The deployment.
        deployment: String,
        /// The missing provider.
        provider: String,
    },
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client for provider {provider:?}: {source}")]
    Client {
        /// The provider.
        provider: String,
        /// The cause.
        source: crate::provider::ClientError,
    },
}

/// One deployment with its client and breaker.
#[derive(Debug)]
struct Deployment {
    config: DeploymentConfig,
    upstream: Arc<Upstream>,
    breaker: Arc<Breaker>,
}

#[derive(Debug)]
struct Model {
    config: ModelConfig,
    deployments: Vec<Arc<Deployment>>,
}

/// Which deployment served a request, and what it took.
#[derive(Debug, Clone)]
pub struct Served {
    /// The model alias that served it (a fallback's, after fallback).
    pub model: String,
    /// The deployment's name.
    pub deployment: Arc<str>,
    /// The provider's name.
    pub provider: String,
    /// Upstream attempts made, including the successful one.
    pub attempts: u32,
    /// Time spent waiting on upstreams (for streams: until the first chunk).
    pub upstream_time: Duration,
    /// The serving deployment's price.
    pub pricing: Pricing,
    /// Whether a candidate other than the first served it.
    pub failed_over: bool,
}

/// What limits need to know of a model alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitProfile {
    /// The dearest input and output prices of any deployment that may serve
    /// it, fallbacks included.
    pub worst_pricing: Pricing,
    /// The upstream model name of its first deployment.
    pub upstream_model: String,
}

/// A stream that has produced its first chunk.
pub struct ChatStream {
    /// Who is serving it.
    pub served: Served,
    /// The remaining chunks, starting with the first.
    pub chunks: ChunkStream,
}

/// The gateway, cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    models: Arc<HashMap<String, Arc<Model>>>,
    order: Arc<Vec<String>>,
    metrics: Metrics,
}

impl Gateway {
    /// Builds clients and breakers for a checked config.
    pub fn new(config: GatewayConfig, metrics: Metrics) -> Result<Gateway, BuildError> {
        let mut upstreams = HashMap::new();
        for provider in config.providers {
            let name = provider.name.clone();
            let upstream = Upstream::new(provider).map_err(|source| BuildError::Client {
                provider: name.clone(),
                source,
            })?;
            upstreams.insert(name, Arc::new(upstream));
        }
        let mut models = HashMap::new();
        let mut order = Vec::new();
        for model in config.models {
            let mut deployments = Vec::new();
            for d in &model.deployments {
                let upstream =
                    upstreams
                        .get(&d.provider)
                        .ok_or_else(|| BuildError::UnknownProvider {
                            deployment: d.name.to_string(),
                            provider: d.provider.clone(),
                        })?;
                let breaker = Breaker::new(d.name.to_string(), model.breaker, metrics.clone());
                deployments.push(Arc::new(Deployment {
                    config: d.clone(),
                    upstream: Arc::clone(upstream),
                    breaker: Arc::new(breaker),
                }));
            }
            order.push(model.name.clone());
            models.insert(
                model.name.clone(),
                Arc::new(Model {
                    config: model,
                    deployments,
                }),
            );
        }
        Ok(Gateway {
            models: Arc::new(models),
            order: Arc::new(order),
            metrics,
        })
    }

    /// The configured model aliases, in config order.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.order
            .iter()
            .map(|name| ModelInfo {
                id: name.clone(),
                object: "model".into(),
                created: 0,
                owned_by: "keel".into(),
            })
            .collect()
    }

    /// Whether `model` is a configured alias, and of which kind.
    pub fn model_kind(&self, model: &str) -> Option<ModelKind> {
        self.models.get(model).map(|m| m.config.kind)
    }

    /// The dearest price among every deployment that could serve `model`
    /// (its own and its fallbacks'), for worst-case budget holds, and the
    /// upstream model name of its first deployment (which picks the
    /// tokenizer). `None` for unknown aliases.
    pub fn limit_profile(&self, model: &str) -> Option<LimitProfile> {
        let m = self.models.get(model)?;
        let chain = std::iter::once(model).chain(m.config.fallbacks.iter().map(String::as_str));
        let mut worst = Pricing::default();
        for d in chain
            .filter_map(|alias| self.models.get(alias))
            .flat_map(|m| &m.deployments)
        {
            worst.input_per_mtok_micros = worst
                .input_per_mtok_micros
                .max(d.config.pricing.input_per_mtok_micros);
            worst.output_per_mtok_micros = worst
                .output_per_mtok_micros
                .max(d.config.pricing.output_per_mtok_micros);
        }
        Some(LimitProfile {
            worst_pricing: worst,
            upstream_model: m
                .deployments
                .first()
                .map(|d| d.config.upstream_model.clone())
                .unwrap_or_default(),
        })
    }

    /// Every deployment's breaker state.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        self.all_deployments()
            .map(|d| d.breaker.snapshot())
            .collect()
    }

    /// Closes a deployment's breaker; false if no deployment has that name.
    pub fn reset_breaker(&self, deployment: &str) -> bool {
        let found: Vec<_> = self
            .all_deployments()
            .filter(|d| &*d.config.name == deployment)
            .collect();
        found.iter().for_each(|d| d.breaker.reset());
        !found.is_empty()
    }

    /// A non-streaming chat completion.
    pub async fn chat(
        &self,
        request: &ChatRequest,
    ) -> Result<(ChatCompletion, Served), GatewayError> {
        self.check_kind(&request.model, ModelKind::Chat)?;
        self.attempt(&request.model, |d, t| {
            let (upstream, model) = (Arc::clone(&d.upstream), d.config.upstream_model.clone());
            async move { upstream.chat(&model, request, &t).await }
        })
        .await
        .map(|(completion, served, _)| (completion, served))
    }

    /// A streaming chat completion. Fails over only until a first chunk has
    /// arrived; after that, a failure ends the stream with an error item.
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, GatewayError> {
        self.check_kind(&request.model, ModelKind::Chat)?;
        let (first, served, deployment) = self
            .attempt(&request.model, |d, t| {
                let (upstream, model) = (Arc::clone(&d.upstream), d.config.upstream_model.clone());
                async move {
                    let mut chunks = upstream.chat_stream(&model, request, &t).await?;
                    match chunks.next().await {
                        Some(Ok(first)) => Ok((first, chunks)),
                        Some(Err(e)) => Err(e),
                        None => Err(AttemptError::new(
                            ErrorCode::UpstreamBadResponse,
                            "upstream stream ended before its first event",
                        )),
                    }
                }
            })
            .await?;
        let (first, rest): (ChatChunk, ChunkStream) = first;
        let breaker = Arc::clone(&deployment.breaker);
        let rest = rest.inspect(move |item| {
            if item
                .as_ref()
                .is_err_and(AttemptError::counts_against_deployment)
            {
                breaker.record_late_failure();
            }
        });
        let chunks = Box::pin(futures::stream::once(async { Ok(first) }).chain(rest));
        Ok(ChatStream { served, chunks })
    }

    /// An embeddings call.
    pub async fn embed(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<(EmbeddingResponse, Served), GatewayError> {
        self.check_kind(&request.model, ModelKind::Embedding)?;
        self.attempt(&request.model, |d, t| {
            let (upstream, model) = (Arc::clone(&d.upstream), d.config.upstream_model.clone());
            async move { upstream.embed(&model, request, &t).await }
        })
        .await
        .map(|(response, served, _)| (response, served))
    }

    fn check_kind(&self, model: &str, want: ModelKind) -> Result<(), GatewayError> {
        match self.model_kind(model) {
            None => Err(GatewayError::caller(
                ErrorCode::ModelNotFound,
                "model",
                format!(
                    "model {model:?} does not exist; GET /v1/models lists the models you can use"
                ),
            )),
            Some(kind) if kind != want => {
                let what = match kind {
                    ModelKind::Chat => "a chat model; use /v1/chat/completions",
                    ModelKind::Embedding => "an embedding model; use /v1/embeddings",
                };
                Err(GatewayError::caller(
                    ErrorCode::InvalidRequest,
                    "model",
                    format!("model {model:?} is {what}"),
                ))
            }
            Some(_) => Ok(()),
        }
    }

    fn all_deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.order
            .iter()
            .filter_map(|n| self.models.get(n))
            .flat_map(|m| &m.deployments)
    }

    /// The model's deployments, then its fallbacks', each in routing order.
    fn candidates(&self, model: &Model) -> Vec<(Arc<Model>, Arc<Deployment>)> {
        let mut rng = rand::thread_rng();
        let mut out = Vec::new();
        let chain = std::iter::once(model.config.name.as_str())
            .chain(model.config.fallbacks.iter().map(String::as_str));
        for alias in chain {
            let Some(m) = self.models.get(alias) else {
                continue;
            };
            let order = weighted_order(
                &m.deployments,
                |d| d.config.priority,
                |d| d.config.weight,
                &mut rng,
            );
            out.extend(
                order
                    .into_iter()
                    .map(|i| (Arc::clone(m), Arc::clone(&m.deployments[i]))),
            );
        }
        out
    }

    /// Tries candidates until one succeeds or the retry policy gives up.
    async fn attempt<T, F, Fut>(
        &self,
        alias: &str,
        mut call: F,
    ) -> Result<(T, Served, Arc<Deployment>), GatewayError>
    where
        F: FnMut(&Deployment, Timeouts) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let model = self.models.get(alias).ok_or_else(|| {
            GatewayError::caller(
                ErrorCode::ModelNotFound,
                "model",
                format!("unknown model {alias:?}"),
            )
        })?;
        let policy = model.config.retry;
        let candidates = self.candidates(model);
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(policy.initial_backoff)
            .with_max_delay(policy.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0u32;
        let mut upstream_time = Duration::ZERO;
        let mut last_error: Option<AttemptError> = None;
        let mut longest_retry_after = Duration::ZERO;

        loop {
            let mut tried_this_round = false;
            for (index, (owner, deployment)) in candidates.iter().enumerate() {
                if attempts >= policy.max_attempts {
                    break;
                }
                let Some(permit) = deployment.breaker.try_acquire() else {
                    continue;
                };
                tried_this_round = true;
                attempts += 1;

                let started = Instant::now();
                let result = call(deployment, owner.config.timeouts).await;
                let took = started.elapsed();
                upstream_time += took;
                let outcome = result.as_ref().err().map_or("ok", |e| e.code.as_str());
                self.metrics
                    .upstream_duration
                    .get_or_create(&UpstreamLabels {
                        deployment: deployment.config.name.to_string(),
                        outcome,
                    })
                    .observe(took.as_secs_f64());

                match result {
                    Ok(value) => {
                        permit.success();
                        let failed_over = index > 0 || attempts > 1;
                        if failed_over {
                            let labels = ModelLabels {
                                model: alias.to_owned(),
                            };
                            self.metrics.failovers.get_or_create(&labels).inc();
                        }
                        let served = Served {
                            model: owner.config.name.clone(),
                            deployment: Arc::clone(&deployment.config.name),
                            provider: deployment.upstream.name().to_owned(),
                            attempts,
                            upstream_time,
                            pricing: deployment.config.pricing,
                            failed_over,
                        };
                        return Ok((value, served, Arc::clone(deployment)));
                    }
                    Err(error) => {
                        if error.counts_against_deployment() {
                            permit.failure();
                        } else {
                            drop(permit);
                        }
                        tracing::debug!(
                            deployment = %deployment.config.name,
                            code = error.code.as_str(),
                            attempt = attempts,
                            error = %error.message,
                            "Upstream attempt failed"
                        );
                        if !error.should_fail_over() {
                            return Err(final_error(alias, attempts, Some(error), None));
                        }
                        if let Some(wait) = error.retry_after {
                            longest_retry_after = longest_retry_after.max(wait);
                        }
                        last_error = Some(error);
                    }
                }
            }

            // Stop when nothing could be tried, the attempt budget is spent,
            // or the upstream asked for a longer wait than we hold a client.
            let wait = backoff
                .next()
                .unwrap_or(policy.max_backoff)
                .max(longest_retry_after);
            if !tried_this_round
                || attempts >= policy.max_attempts
                || longest_retry_after > policy.max_retry_after
            {
                let reopen = self.soonest_reopen(&candidates);
                return Err(final_error(
                    alias,
                    attempts,
                    last_error,
                    reopen.or(Some(wait)),
                ));
            }
            tokio::time::sleep(wait).await;
            longest_retry_after = Duration::ZERO;
        }
    }

    fn soonest_reopen(&self, candidates: &[(Arc<Model>, Arc<Deployment>)]) -> Option<Duration> {
        candidates
            .iter()
            .filter_map(|(_, d)| d.breaker.snapshot().reopens_in_ms)
            .min()
            .map(Duration::from_millis)
    }
}

/// The client-facing error after every attempt failed.
fn final_error(
    alias: &str,
    attempts: u32,
    last: Option<AttemptError>,
    wait: Option<Duration>,
) -> GatewayError {
    let Some(last) = last else {
        return GatewayError {
            code: ErrorCode::UpstreamUnavailable,
            message: format!(
                "every deployment of model {alias:?} is unavailable (circuit breakers open); \
                 retry after the retry-after interval"
            ),
            retry_after: Some(
                wait.unwrap_or(Duration::from_secs(1))
                    .max(Duration::from_secs(1)),
            ),
            attempts,
            param: None,
        };
    };
    if last.code == ErrorCode::UpstreamRejected {
        return GatewayError {
            code: last.code,
            message: last.message,
            retry_after: None,
            attempts,
            param: None,
        };
    }
    let retry_after = last
        .retry_after
        .into_iter()
        .chain(wait)
        .max()
        .unwrap_or_default();
    GatewayError {
        code: last.code,
        message: format!(
            "model {alias:?} failed after {attempts} upstream attempt(s); last error: {}; \
             the request is safe to retry",
            last.message
        ),
        retry_after: Some(retry_after.max(Duration::from_secs(1))),
        attempts,
        param: None,
    }
}
