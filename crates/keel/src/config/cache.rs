//! The `[cache]` section: raw types and checks.

use std::time::Duration;

use anyhow::bail;
use keel_cache::CacheSettings;
use keel_server::{CacheSetup, EmbedderKind, RetrievalSetup};
use serde::Deserialize;

use super::gateway::RawModel;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    enabled: bool,
    exact: bool,
    semantic: Option<bool>,
    embedder: Option<String>,
    threshold: f32,
    guard: bool,
    ttl_secs: u64,
    stale_ttl_secs: u64,
    stale_models: Vec<String>,
    max_entries: u64,
    max_temperature: f64,
    tool_calls: bool,
    per_user: bool,
    candidates: usize,
    follow_secs: u64,
    sweep_secs: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        let s = CacheSettings::default();
        let setup = CacheSetup::default();
        RawCache {
            enabled: true,
            exact: s.exact,
            semantic: None,
            embedder: None,
            threshold: s.threshold,
            guard: s.guard,
            ttl_secs: s.ttl.as_secs(),
            stale_ttl_secs: s.stale_ttl.as_secs(),
            stale_models: Vec::new(),
            max_entries: s.max_entries,
            max_temperature: s.max_temperature,
            tool_calls: s.tool_calls,
            per_user: s.per_user,
            candidates: s.candidates,
            follow_secs: setup.follow.as_secs(),
            sweep_secs: setup.sweep_every.as_secs(),
        }
    }
}

/// Checks `[cache]`. The embedder defaults to the first local one under
/// `[[embedders]]`; without one, only exact hits are served unless
/// `semantic = true` asks for more, which is then an error.
pub(super) fn check_cache(
    raw: &RawCache,
    retrieval: &RetrievalSetup,
    models: &[RawModel],
) -> anyhow::Result<Option<CacheSetup>> {
    if !raw.enabled {
        return Ok(None);
    }
    if !(raw.threshold > 0.0 && raw.threshold <= 1.0) {
        bail!(
            "key `cache.threshold`: must be above 0 and at most 1 (cosine similarity), got {}",
            raw.threshold
        );
    }
    if raw.ttl_secs == 0 {
        bail!("key `cache.ttl_secs`: must be at least 1");
    }
    if raw.max_entries == 0 {
        bail!("key `cache.max_entries`: must be at least 1");
    }
    if !raw.max_temperature.is_finite() || raw.max_temperature < 0.0 {
        bail!(
            "key `cache.max_temperature`: must be a number of at least 0, got {}",
            raw.max_temperature
        );
    }
    if !(1..=64).contains(&raw.candidates) {
        bail!(
            "key `cache.candidates`: must be 1 to 64, got {}",
            raw.candidates
        );
    }
    if raw.sweep_secs == 0 {
        bail!("key `cache.sweep_secs`: must be at least 1");
    }
    for (i, model) in raw.stale_models.iter().enumerate() {
        if !models.iter().any(|m| &m.name == model) {
            bail!("key `cache.stale_models[{i}]`: {model:?} is not listed under [[models]]");
        }
    }
    let embedder = match &raw.embedder {
        Some(name) if retrieval.embedders.iter().any(|e| &e.name == name) => Some(name.clone()),
        Some(name) => bail!("key `cache.embedder`: {name:?} is not listed under [[embedders]]"),
        None => retrieval
            .embedders
            .iter()
            .find(|e| matches!(e.kind, EmbedderKind::Local { .. }))
            .map(|e| e.name.clone()),
    };
    let semantic = raw.semantic.unwrap_or(embedder.is_some());
    if semantic && embedder.is_none() {
        bail!(
            "key `cache.semantic`: semantic lookups need an embedder; name one in `cache.embedder` or add a local one under [[embedders]]"
        );
    }
    let settings = CacheSettings {
        exact: raw.exact,
        semantic,
        threshold: raw.threshold,
        guard: raw.guard,
        ttl: Duration::from_secs(raw.ttl_secs),
        stale_ttl: Duration::from_secs(raw.stale_ttl_secs),
        max_entries: raw.max_entries,
        max_temperature: raw.max_temperature,
        tool_calls: raw.tool_calls,
        per_user: raw.per_user,
        candidates: raw.candidates,
    };
    Ok(Some(CacheSetup {
        settings,
        embedder: embedder.filter(|_| semantic),
        stale_models: raw.stale_models.clone(),
        follow: Duration::from_secs(raw.follow_secs),
        sweep_every: Duration::from_secs(raw.sweep_secs),
        ..CacheSetup::default()
    }))
}
