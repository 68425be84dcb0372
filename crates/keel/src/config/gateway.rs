//! The `[[providers]]` and `[[models]]` sections: raw types and checks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use keel_core::Pricing;
use keel_gateway::{
    BreakerConfig, DeploymentConfig, GatewayConfig, ModelConfig, ModelKind, ProviderConfig,
    ProviderKind, RetryPolicy, Timeouts,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    name: String,
    #[serde(default = "default_kind")]
    kind: String,
    base_url: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_idle")]
    max_idle_per_host: usize,
}

fn default_kind() -> String {
    "openai".into()
}
fn default_connect_ms() -> u64 {
    5_000
}
fn default_idle() -> usize {
    256
}
fn default_one() -> u32 {
    1
}
fn default_chat() -> String {
    "chat".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) name: String,
    #[serde(default = "default_chat")]
    kind: String,
    #[serde(default)]
    fallbacks: Vec<String>,
    deployments: Vec<RawDeployment>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    pub(super) tokenizer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeployment {
    #[serde(default)]
    name: Option<String>,
    provider: String,
    model: String,
    #[serde(default)]
    priority: u32,
    #[serde(default = "default_one")]
    weight: u32,
    #[serde(default)]
    input_per_mtok: f64,
    #[serde(default)]
    output_per_mtok: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTimeouts {
    first_byte_ms: u64,
    total_ms: u64,
    stream_idle_ms: u64,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        let d = Timeouts::default();
        RawTimeouts {
            first_byte_ms: d.first_byte.as_millis() as u64,
            total_ms: d.total.as_millis() as u64,
            stream_idle_ms: d.stream_idle.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetry {
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    max_retry_after_ms: u64,
}

impl Default for RawRetry {
    fn default() -> Self {
        let d = RetryPolicy::default();
        RawRetry {
            max_attempts: d.max_attempts,
            initial_backoff_ms: d.initial_backoff.as_millis() as u64,
            max_backoff_ms: d.max_backoff.as_millis() as u64,
            max_retry_after_ms: d.max_retry_after.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBreaker {
    failure_threshold: u32,
    open_ms: u64,
    half_open_probes: u32,
    success_threshold: u32,
}

impl Default for RawBreaker {
    fn default() -> Self {
        let d = BreakerConfig::default();
        RawBreaker {
            failure_threshold: d.failure_threshold,
            open_ms: d.open_for.as_millis() as u64,
            half_open_probes: d.half_open_probes,
            success_threshold: d.success_threshold,
        }
    }
}

pub(super) fn check_gateway(
    providers: &[RawProvider],
    models: &[RawModel],
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<GatewayConfig> {
    let mut out = GatewayConfig::default();
    let mut kinds = std::collections::HashMap::new();
    for (i, p) in providers.iter().enumerate() {
        let at = format!("providers[{i}]");
        let kind = match p.kind.as_str() {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            other => bail!(
                "key `{at}.kind`: unknown provider kind {other:?}; use \"openai\" or \"anthropic\""
            ),
        };
        if p.name.is_empty() || kinds.insert(p.name.clone(), kind).is_some() {
            bail!(
                "key `{at}.name`: {:?} is empty or used twice; provider names must be unique",
                p.name
            );
        }
        if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
            bail!(
                "key `{at}.base_url`: {:?} must start with http:// or https://",
                p.base_url
            );
        }
        let api_key = match &p.api_key_env {
            Some(var) => Some(env(var).with_context(|| {
                format!("key `{at}.api_key_env`: environment variable {var} is not set")
            })?),
            None => None,
        };
        out.providers.push(ProviderConfig {
            name: p.name.clone(),
            kind,
            base_url: p.base_url.clone(),
            api_key,
            connect_timeout: Duration::from_millis(p.connect_timeout_ms.max(1)),
            max_idle_per_host: p.max_idle_per_host,
        });
    }

    let names: HashSet<&str> = models.iter().map(|m| m.name.as_str()).collect();
    let mut deployment_names = HashSet::new();
    for (i, m) in models.iter().enumerate() {
        let at = format!("models[{i}]");
        if m.name.is_empty() {
            bail!("key `{at}.name`: must not be empty");
        }
        if models.iter().filter(|o| o.name == m.name).count() > 1 {
            bail!("key `{at}.name`: model {:?} is defined twice", m.name);
        }
        let kind = match m.kind.as_str() {
            "chat" => ModelKind::Chat,
            "embedding" => ModelKind::Embedding,
            other => bail!(
                "key `{at}.kind`: unknown model kind {other:?}; use \"chat\" or \"embedding\""
            ),
        };
        if m.deployments.is_empty() {
            bail!(
                "key `{at}.deployments`: model {:?} needs at least one deployment",
                m.name
            );
        }
        for (j, f) in m.fallbacks.iter().enumerate() {
            if !names.contains(f.as_str()) || f == &m.name {
                bail!("key `{at}.fallbacks[{j}]`: {f:?} is not another configured model");
            }
        }
        let mut deployments = Vec::new();
        for (j, d) in m.deployments.iter().enumerate() {
            let at = format!("{at}.deployments[{j}]");
            let Some(provider_kind) = kinds.get(&d.provider) else {
                let known: Vec<&String> = kinds.keys().collect();
                bail!(
                    "key `{at}.provider`: unknown provider {:?}; configured providers: {known:?}",
                    d.provider
                );
            };
            if kind == ModelKind::Embedding && *provider_kind == ProviderKind::Anthropic {
                bail!("key `{at}.provider`: anthropic providers do not serve embeddings");
            }
            let name = d
                .name
                .clone()
                .unwrap_or_else(|| format!("{}/{}", d.provider, d.model));
            if !deployment_names.insert(name.clone()) {
                bail!(
                    "key `{at}.name`: deployment name {name:?} is used twice; give each a unique name"
                );
            }
            if d.weight == 0 {
                bail!("key `{at}.weight`: must be at least 1");
            }
            let pricing = Pricing::from_dollars_per_mtok(d.input_per_mtok, d.output_per_mtok)
                .with_context(|| format!("key `{at}`: input_per_mtok and output_per_mtok must be non-negative dollars per million tokens"))?;
            deployments.push(DeploymentConfig {
                name: Arc::from(name),
                provider: d.provider.clone(),
                upstream_model: d.model.clone(),
                priority: d.priority,
                weight: d.weight,
                pricing,
            });
        }
        out.models.push(ModelConfig {
            name: m.name.clone(),
            kind,
            deployments,
            fallbacks: m.fallbacks.clone(),
            timeouts: check_timeouts(&at, &m.timeouts)?,
            retry: check_retry(&at, &m.retry)?,
            breaker: check_breaker(&at, &m.breaker)?,
        });
    }
    Ok(out)
}

fn check_timeouts(at: &str, t: &RawTimeouts) -> anyhow::Result<Timeouts> {
    for (key, value) in [
        ("first_byte_ms", t.first_byte_ms),
        ("total_ms", t.total_ms),
        ("stream_idle_ms", t.stream_idle_ms),
    ] {
        if value == 0 {
            bail!("key `{at}.timeouts.{key}`: must be at least 1");
        }
    }
    if t.first_byte_ms > t.total_ms {
        bail!(
            "key `{at}.timeouts.first_byte_ms`: {} exceeds total_ms {}",
            t.first_byte_ms,
            t.total_ms
        );
    }
    Ok(Timeouts {
        first_byte: Duration::from_millis(t.first_byte_ms),
        total: Duration::from_millis(t.total_ms),
        stream_idle: Duration::from_millis(t.stream_idle_ms),
    })
}

fn check_retry(at: &str, r: &RawRetry) -> anyhow::Result<RetryPolicy> {
    if !(1..=20).contains(&r.max_attempts) {
        bail!(
            "key `{at}.retry.max_attempts`: must be 1 to 20, got {}",
            r.max_attempts
        );
    }
    if r.initial_backoff_ms > r.max_backoff_ms {
        bail!(
            "key `{at}.retry.initial_backoff_ms`: {} exceeds max_backoff_ms {}",
            r.initial_backoff_ms,
            r.max_backoff_ms
        );
    }
    Ok(RetryPolicy {
        max_attempts: r.max_attempts,
        initial_backoff: Duration::from_millis(r.initial_backoff_ms),
        max_backoff: Duration::from_millis(r.max_backoff_ms),
        max_retry_after: Duration::from_millis(r.max_retry_after_ms),
    })
}

fn check_breaker(at: &str, b: &RawBreaker) -> anyhow::Result<BreakerConfig> {
    for (key, value) in [
        ("failure_threshold", b.failure_threshold),
        ("half_open_probes", b.half_open_probes),
        ("success_threshold", b.success_threshold),
    ] {
        if value == 0 {
            bail!("key `{at}.breaker.{key}`: must be at least 1");
        }
    }
    if b.open_ms == 0 {
        bail!("key `{at}.breaker.open_ms`: must be at least 1");
    }
    Ok(BreakerConfig {
        failure_threshold: b.failure_threshold,
        open_for: Duration::from_millis(b.open_ms),
        half_open_probes: b.half_open_probes,
        success_threshold: b.success_threshold,
    })
}
