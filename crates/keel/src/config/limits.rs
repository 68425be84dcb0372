//! The `[limits]` section (and the Redis keys of `[store]`): raw types and
//! checks.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use keel_server::limiting::LimitsSetup;
use serde::Deserialize;

use super::gateway::RawModel;
use super::{RawStore, redact_url};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    default_max_tokens: u32,
    lease_secs: u64,
    redis_timeout_ms: u64,
    rules: Vec<keel_limits::RuleSpec>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            default_max_tokens: keel_server::limiting::DEFAULT_MAX_TOKENS,
            lease_secs: 900,
            redis_timeout_ms: 100,
            rules: Vec::new(),
        }
    }
}

pub(super) fn check_limits(
    store: &RawStore,
    raw: &RawLimits,
    models: &[RawModel],
) -> anyhow::Result<LimitsSetup> {
    if raw.default_max_tokens == 0 {
        bail!("key `limits.default_max_tokens`: must be at least 1");
    }
    if !(1..=86_400).contains(&raw.lease_secs) {
        bail!(
            "key `limits.lease_secs`: must be 1 to 86400 seconds, got {}",
            raw.lease_secs
        );
    }
    if !(1..=60_000).contains(&raw.redis_timeout_ms) {
        bail!(
            "key `limits.redis_timeout_ms`: must be 1 to 60000, got {}",
            raw.redis_timeout_ms
        );
    }
    let mut rules = Vec::with_capacity(raw.rules.len());
    let mut ids = HashSet::new();
    for (i, spec) in raw.rules.iter().enumerate() {
        let rule = spec
            .check()
            .map_err(|e| anyhow::anyhow!("key `limits.rules[{i}].{}`: {}", e.field, e.message))?;
        if !ids.insert(rule.id.clone()) {
            bail!(
                "key `limits.rules[{i}].id`: {:?} is used by another rule",
                rule.id
            );
        }
        rules.push(rule);
    }
    let redis = match &store.redis_url {
        Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => bail!(
            "key `store.redis_url`: {:?} must start with redis:// or rediss://",
            redact_url(url)
        ),
        Some(url) => {
            if store.redis_prefix.is_empty() || store.redis_prefix.contains(char::is_whitespace) {
                bail!("key `store.redis_prefix`: must be non-empty without spaces");
            }
            Some(keel_limits::RedisSettings {
                url: url.clone(),
                prefix: store.redis_prefix.clone(),
                timeout: Duration::from_millis(raw.redis_timeout_ms),
            })
        }
        None => None,
    };
    let mut tokenizers = std::collections::HashMap::new();
    for (i, m) in models.iter().enumerate() {
        if let Some(name) = &m.tokenizer {
            let tokenizer = keel_limits::Tokenizer::parse(name).with_context(|| {
                format!(
                    "key `models[{i}].tokenizer`: unknown tokenizer {name:?}; \
                     use o200k_base, cl100k_base or estimate"
                )
            })?;
            tokenizers.insert(m.name.clone(), tokenizer);
        }
    }
    Ok(LimitsSetup {
        config: keel_limits::LimitsConfig {
            rules,
            redis,
            lease: Duration::from_secs(raw.lease_secs),
            clock: keel_limits::Clock::system(),
        },
        default_max_tokens: raw.default_max_tokens,
        tokenizers,
    })
}
