//! Checked gateway configuration: providers, deployments and model routes.
//!
//! The binary parses the TOML file into its raw types and converts them into
//! these; by the time a value reaches this crate every reference resolves and
//! every number is in range, so the request path never re-validates.

use std::sync::Arc;
use std::time::Duration;

use keel_core::Pricing;

/// The API dialect an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI's `/v1/chat/completions` and `/v1/embeddings` (OpenAI, vLLM,
    /// llama.cpp server, Ollama, keel sim, …).
    OpenAi,
    /// Anthropic's Messages API, translated to and from the OpenAI shape.
    Anthropic,
}

impl ProviderKind {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// One upstream account: where it is and how to authenticate.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The name deployments refer to.
    pub name: String,
    /// The dialect it speaks.
    pub kind: ProviderKind,
    /// Base URL up to and including the version segment, e.g.
    /// `https://api.openai.com/v1`.
    pub base_url: String,
    /// The API key, read from the environment; never logged.
    pub api_key: Option<String>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// One place a model alias can be served: a provider plus its model name.
#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    /// A unique name, used in headers, metrics and the ledger.
    pub name: Arc<str>,
    /// The provider's name.
    pub provider: String,
    /// The model name the upstream expects.
    pub upstream_model: String,
    /// Lower is tried first; equal priorities share traffic by weight.
    pub priority: u32,
    /// Share of traffic among deployments of the same priority.
    pub weight: u32,
    /// What a call costs.
    pub pricing: Pricing,
}

/// Whether a model alias serves chat completions or embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/embeddings`.
    Embedding,
}

/// Time limits for one upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Until response headers (and, for streams, the first event) arrive.
    pub first_byte: Duration,
    /// Until the whole response has arrived (streams: the whole stream).
    pub total: Duration,
    /// Longest silence between two stream events.
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_byte: Duration::from_secs(30),
            total: Duration::from_secs(600),
            stream_idle: Duration::from_secs(60),
        }
    }
}

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most upstream attempts for one client request, over all deployments.
    pub max_attempts: u32,
    /// First backoff delay between rounds.
    pub initial_backoff: Duration,
    /// Longest backoff delay.
    pub max_backoff: Duration,
    /// Longest `Retry-After` keel waits for inside a request; a longer one
    /// is returned to the client instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

/// When a deployment's circuit breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probe requests allowed at once while half-open.
    pub half_open_probes: u32,
    /// Successful probes needed to close again.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
            success_threshold: 1,
        }
    }
}

/// A model alias clients ask for, and how it is served.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The alias.
    pub name: String,
    /// Chat or embeddings.
    pub kind: ModelKind,
    /// Where it can be served.
    pub deployments: Vec<DeploymentConfig>,
    /// Other aliases to try, in order, when every deployment fails.
    pub fallbacks: Vec<String>,
    /// Time limits per attempt.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: RetryPolicy,
    /// Circuit breaker settings for each of its deployments.
    pub breaker: BreakerConfig,
}

/// Everything the gateway needs.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// Upstream accounts.
    pub providers: Vec<ProviderConfig>,
    /// Model aliases.
    pub models: Vec<ModelConfig>,
}
