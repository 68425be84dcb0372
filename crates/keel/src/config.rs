//! The configuration file: raw TOML types, environment overrides, and the
//! conversion into checked settings.
//!
//! The file is read with figment, so any key can be overridden by an
//! environment variable `KEEL__SECTION__KEY` (for example
//! `KEEL__SERVER__LISTEN=0.0.0.0:8080`). Unknown keys are refused. Values
//! are then checked, and every refusal names the key at fault and says what
//! would be valid. Secrets come only from the environment: the file names the
//! variable (`api_key_env`, `admin_token_env`), never the secret — except dev
//! keys, which may be written inline for local use.

mod cache;
mod flow;
mod gateway;
mod limits;
mod retrieval;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use keel_core::{TenantId, UserId};
use keel_server::{AppConfig, ServerSettings};

use self::cache::{RawCache, check_cache};
use self::flow::{RawFlow, check_flow};
use self::gateway::{RawModel, RawProvider, check_gateway};
use self::limits::{RawLimits, check_limits};
use self::retrieval::{RawEmbedder, RawVectors, check_retrieval};
use keel_store::{LedgerConfig, NewKey};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    vectors: RawVectors,
    #[serde(default)]
    embedders: Vec<RawEmbedder>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    flow: RawFlow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    worker_threads: usize,
    max_body_bytes: u64,
    admin_token_env: String,
    shutdown_grace_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            worker_threads: 0,
            max_body_bytes: 4 * 1024 * 1024,
            admin_token_env: "KEEL_ADMIN_TOKEN".into(),
            shutdown_grace_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    data_dir: String,
    url: Option<String>,
    redis_url: Option<String>,
    redis_prefix: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            data_dir: ".keel".into(),
            url: None,
            redis_url: None,
            redis_prefix: "keel".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLedger {
    capacity: usize,
    max_batch: usize,
    flush_interval_ms: u64,
}

impl Default for RawLedger {
    fn default() -> Self {
        let d = LedgerConfig::default();
        RawLedger {
            capacity: d.capacity,
            max_batch: d.max_batch,
            flush_interval_ms: d.flush_interval.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_env: Option<String>,
}

/// Checked configuration for every command.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `keel serve` listens.
    pub listen: SocketAddr,
    /// Runtime worker threads; `None` means one per CPU core.
    pub worker_threads: Option<usize>,
    /// Everything the server needs.
    pub app: AppConfig,
}

/// Reads `path` (if given) plus `KEEL__…` environment overrides.
pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.is_file() {
            bail!("config file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed("KEEL__").split("__"));
    let raw: RawConfig = figment.extract().map_err(|e| {
        let errors: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
        anyhow::anyhow!("invalid configuration:\n  {}", errors.join("\n  "))
    })?;
    check(raw, &|name| std::env::var(name).ok())
}

/// Reads configuration from TOML text (no environment overrides).
pub fn load_str(text: &str) -> anyhow::Result<Config> {
    let raw: RawConfig = Figment::from(Toml::string(text)).extract().map_err(|e| {
        let errors: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
        anyhow::anyhow!("invalid configuration:\n  {}", errors.join("\n  "))
    })?;
    check(raw, &|name| std::env::var(name).ok())
}

/// One figment error as "key `a.b`: problem".
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    if key.is_empty() {
        e.kind.to_string()
    } else {
        format!("key `{key}`: {}", e.kind)
    }
}

/// Converts raw values into checked ones; `env` reads secrets.
pub fn check(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
        anyhow::anyhow!(
            "key `server.listen`: {:?} is not an address; use HOST:PORT such as 127.0.0.1:8080",
            raw.server.listen
        )
    })?;
    if raw.server.worker_threads > 1024 {
        bail!(
            "key `server.worker_threads`: must be 0 (one per core) to 1024, got {}",
            raw.server.worker_threads
        );
    }
    if raw.server.max_body_bytes < 1024 {
        bail!(
            "key `server.max_body_bytes`: must be at least 1024, got {}",
            raw.server.max_body_bytes
        );
    }
    let data_dir = PathBuf::from(&raw.store.data_dir);
    let store_url = match raw.store.url.clone() {
        Some(url) if url.trim().is_empty() => bail!("key `store.url`: must not be empty"),
        Some(url) => url,
        None => format!("sqlite://{}", data_dir.join("keel.db").display()),
    };
    let ledger = check_ledger(&raw.ledger)?;
    let gateway = check_gateway(&raw.providers, &raw.models, env)?;
    let limits = check_limits(&raw.store, &raw.limits, &raw.models)?;
    let retrieval = check_retrieval(&data_dir, &raw.vectors, &raw.embedders, &raw.models)?;
    let cache = check_cache(&raw.cache, &retrieval, &raw.models)?;
    let flow = check_flow(&raw.flow)?;
    let (tenants, keys) = check_tenants_and_keys(&raw.tenants, &raw.keys, env)?;
    let server = ServerSettings {
        max_body_bytes: usize::try_from(raw.server.max_body_bytes).unwrap_or(usize::MAX),
        admin_token: env(&raw.server.admin_token_env).filter(|t| !t.is_empty()),
    };
    Ok(Config {
        listen,
        worker_threads: (raw.server.worker_threads > 0).then_some(raw.server.worker_threads),
        app: AppConfig {
            server,
            store_url,
            ledger,
            gateway,
            tenants,
            keys,
            shutdown_grace: Duration::from_millis(raw.server.shutdown_grace_ms),
            limits,
            retrieval,
            cache,
            flow,
        },
    })
}

fn check_ledger(raw: &RawLedger) -> anyhow::Result<LedgerConfig> {
    if raw.capacity == 0 {
        bail!("key `ledger.capacity`: must be at least 1");
    }
    if raw.max_batch == 0 || raw.max_batch > raw.capacity {
        bail!(
            "key `ledger.max_batch`: must be 1 to ledger.capacity ({}), got {}",
            raw.capacity,
            raw.max_batch
        );
    }
    if raw.flush_interval_ms == 0 {
        bail!("key `ledger.flush_interval_ms`: must be at least 1");
    }
    Ok(LedgerConfig {
        capacity: raw.capacity,
        max_batch: raw.max_batch,
        flush_interval: Duration::from_millis(raw.flush_interval_ms),
    })
}

type Seeds = (Vec<(TenantId, String)>, Vec<(NewKey, String)>);

fn check_tenants_and_keys(
    tenants: &[RawTenant],
    keys: &[RawKey],
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Seeds> {
    let mut seeded = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let id = TenantId::new(t.id.clone())
            .map_err(|e| anyhow::anyhow!("key `tenants[{i}].id`: {e}"))?;
        seeded.push((id.clone(), t.name.clone().unwrap_or_else(|| id.to_string())));
    }
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        let tenant_id = TenantId::new(k.tenant.clone())
            .map_err(|e| anyhow::anyhow!("key `{at}.tenant`: {e}"))?;
        if !seeded.iter().any(|(t, _)| t == &tenant_id) {
            bail!("key `{at}.tenant`: tenant {tenant_id:?} is not listed under [[tenants]]");
        }
        let user_id = k
            .user
            .clone()
            .map(UserId::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("key `{at}.user`: {e}"))?;
        let secret = match (&k.secret, &k.secret_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => env(var).with_context(|| {
                format!("key `{at}.secret_env`: environment variable {var} is not set")
            })?,
            _ => bail!("key `{at}`: set exactly one of `secret` (dev only) or `secret_env`"),
        };
        if secret.len() < 8 {
            bail!("key `{at}.secret`: must be at least 8 characters");
        }
        out.push((
            NewKey {
                tenant_id,
                user_id,
                name: k.name.clone().unwrap_or_default(),
            },
            secret,
        ));
    }
    Ok((seeded, out))
}

/// The effective configuration with secrets redacted, for the startup log.
pub fn summary(config: &Config) -> String {
    let gateway = &config.app.gateway;
    let providers: Vec<String> = gateway
        .providers
        .iter()
        .map(|p| {
            format!(
                "{}({} {} key={})",
                p.name,
                p.kind.as_str(),
                p.base_url,
                if p.api_key.is_some() { "set" } else { "none" }
            )
        })
        .collect();
    let models: Vec<String> = gateway
        .models
        .iter()
        .map(|m| {
            let deps: Vec<&str> = m.deployments.iter().map(|d| &*d.name).collect();
            format!("{}→[{}]", m.name, deps.join(","))
        })
        .collect();
    let limits = &config.app.limits.config;
    let rules: Vec<String> = limits.rules.iter().map(ToString::to_string).collect();
    let redis = limits
        .redis
        .as_ref()
        .map_or_else(|| "none".to_owned(), |r| redact_url(&r.url));
    let embedders: Vec<&str> = config
        .app
        .retrieval
        .embedders
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let cache = match &config.app.cache {
        None => "off".to_owned(),
        Some(c) => match (&c.embedder, c.settings.exact) {
            (Some(e), _) => format!(
                "semantic({e}>={}{})",
                c.settings.threshold,
                if c.settings.guard { "+guard" } else { "" }
            ),
            (None, true) => "exact".to_owned(),
            (None, false) => "off".to_owned(),
        },
    };
    let flow = match &config.app.flow {
        None => "off".to_owned(),
        Some(f) => format!("on(workflows={})", f.workflows.len()),
    };
    format!(
        "listen={} store={} admin_api={} providers=[{}] models=[{}] tenants={} keys={} \
         limits=[{}] redis={redis} embedders=[{}] vectors={} cache={cache} flow={flow}",
        config.listen,
        redact_url(&config.app.store_url),
        if config.app.server.admin_token.is_some() {
            "on"
        } else {
            "off"
        },
        providers.join(" "),
        models.join(" "),
        config.app.tenants.len(),
        config.app.keys.len(),
        rules.join(", "),
        embedders.join(","),
        config.app.retrieval.vectors_dir.display(),
    )
}

/// Hides the password of a `scheme://user:password@host` URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let raw: RawConfig = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| anyhow::anyhow!(describe(&e)))?;
        check(raw, &|name| {
            (name == "SET").then(|| "secret-value".to_owned())
        })
    }

    const GOOD: &str = r#"
        [[providers]]
        name = "sim"
        base_url = "http://127.0.0.1:9000/v1"
        [[models]]
        name = "fast"
        [[models.deployments]]
        provider = "sim"
        model = "m1"
        input_per_mtok = 0.15
        [[tenants]]
        id = "demo"
        [[keys]]
        tenant = "demo"
        secret = "sk-keel-demo"
    "#;

    #[test]
    fn accepts_a_minimal_file_with_defaults() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.app.gateway.models[0].deployments[0].name.as_ref(),
            "sim/m1"
        );
        assert!(config.app.store_url.starts_with("sqlite://"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("provider = \"sim\"", "provider = \"nope\""),
                "models[0].deployments[0].provider",
            ),
            (
                GOOD.replace("input_per_mtok = 0.15", "input_per_mtok = -1.0"),
                "models[0].deployments[0]",
            ),
            (
                format!("[server]\nlisten = \"nowhere\"\n{GOOD}"),
                "server.listen",
            ),
            (
                GOOD.replace("tenant = \"demo\"", "tenant = \"ghost\""),
                "keys[0].tenant",
            ),
            (
                format!(
                    "{GOOD}\n[[models]]\nname = \"x\"\nfallbacks = [\"zzz\"]\n[[models.deployments]]\nprovider = \"sim\"\nmodel = \"y\""
                ),
                "models[1].fallbacks[0]",
            ),
            (GOOD.replace("base_url", "base_ur1"), "base_ur1"),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "expected {key} in: {err}");
        }
    }

    #[test]
    fn the_cache_is_on_and_semantic_with_a_local_embedder() {
        let exact_only = parse(GOOD).unwrap().app.cache.unwrap();
        assert_eq!(exact_only.embedder, None);
        assert!(!exact_only.settings.semantic && exact_only.settings.exact);

        let local = format!("{GOOD}\n[[embedders]]\nname = \"mini\"\nkind = \"local\"");
        let semantic = parse(&local).unwrap().app.cache.unwrap();
        assert_eq!(semantic.embedder.as_deref(), Some("mini"));
        assert!(semantic.settings.semantic);
        assert_eq!(semantic.settings.threshold, keel_cache::DEFAULT_THRESHOLD);

        let tuned = format!(
            "{local}\n[cache]\nthreshold = 0.9\nttl_secs = 60\nstale_models = [\"fast\"]\nper_user = true"
        );
        let tuned = parse(&tuned).unwrap().app.cache.unwrap();
        assert_eq!(tuned.settings.threshold, 0.9);
        assert_eq!(tuned.settings.ttl, Duration::from_secs(60));
        assert_eq!(tuned.stale_models, ["fast"]);
        assert!(tuned.settings.per_user);

        let off = format!("{local}\n[cache]\nenabled = false");
        assert!(parse(&off).unwrap().app.cache.is_none());
    }

    #[test]
    fn cache_errors_name_the_key() {
        let cache = |body: &str| format!("{GOOD}\n[cache]\n{body}");
        let cases = [
            (cache("threshold = 1.5"), "cache.threshold"),
            (cache("threshold = 0"), "cache.threshold"),
            (cache("embedder = \"nope\""), "cache.embedder"),
            (cache("semantic = true"), "cache.semantic"),
            (
                cache("stale_models = [\"fast\", \"ghost\"]"),
                "cache.stale_models[1]",
            ),
            (cache("ttl_secs = 0"), "cache.ttl_secs"),
            (cache("max_entries = 0"), "cache.max_entries"),
            (cache("max_temperature = -1.0"), "cache.max_temperature"),
            (cache("candidates = 0"), "cache.candidates"),
            (cache("ttl = 5"), "ttl"),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "expected {key} in: {err}");
        }
    }

    #[test]
    fn limit_errors_name_the_key() {
        let rule = |body: &str| format!("{GOOD}\n[[limits.rules]]\nid = \"r\"\n{body}");
        let cases = [
            (
                rule("scope = \"tenant=*\"\nrequests = 5\nper = \"1 fortnight\""),
                "limits.rules[0].per",
            ),
            (
                rule("scope = \"org=a\"\nrequests = 5\nper = \"1m\""),
                "limits.rules[0].scope",
            ),
            (
                rule("scope = \"tenant=*\"\nrequests = -5\nper = \"1m\""),
                "limits.rules",
            ),
            (
                rule("scope = \"tenant=*\"\nbudget_usd = 5.0\nperiod = \"year\""),
                "limits.rules[0].period",
            ),
            (
                rule("scope = \"tenant=*\"\nbudget_usd = 0.0\nperiod = \"day\""),
                "limits.rules[0].budget_usd",
            ),
            (rule("scope = \"tenant=*\"\nrpm = 5"), "rpm"),
            (
                format!(
                    "{GOOD}\n[[limits.rules]]\nid = \"a\"\nscope = \"tenant=*\"\nconcurrency = 1\n[[limits.rules]]\nid = \"a\"\nscope = \"tenant=*\"\nconcurrency = 2"
                ),
                "limits.rules[1].id",
            ),
            (
                format!("[store]\nredis_url = \"http://x\"\n{GOOD}"),
                "store.redis_url",
            ),
            (
                format!("[limits]\nlease_secs = 0\n{GOOD}"),
                "limits.lease_secs",
            ),
            (
                GOOD.replace("name = \"fast\"", "name = \"fast\"\ntokenizer = \"bpe9\""),
                "models[0].tokenizer",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "expected {key} in: {err}");
        }
    }

    #[test]
    fn limits_are_read_from_the_file() {
        let text = format!(
            "[store]\nredis_url = \"redis://127.0.0.1:6379/2\"\n[limits]\ndefault_max_tokens = 512\n{GOOD}\n\
             [[limits.rules]]\nid = \"b\"\nscope = \"tenant=demo\"\nbudget_usd = 2.5\nperiod = \"week\""
        );
        let config = parse(&text).unwrap();
        let limits = &config.app.limits;
        assert_eq!(limits.default_max_tokens, 512);
        assert_eq!(limits.config.rules[0].limit.kind(), "budget");
        assert_eq!(limits.config.redis.as_ref().unwrap().prefix, "keel");
    }

    #[test]
    fn missing_secret_env_is_named() {
        let text = GOOD.replace(
            "base_url = \"http://127.0.0.1:9000/v1\"",
            "base_url = \"http://x/v1\"\napi_key_env = \"UNSET_VAR\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("providers[0].api_key_env") && err.contains("UNSET_VAR"),
            "{err}"
        );
    }

    #[test]
    fn example_config_is_valid() {
        let config = load_str(include_str!("../../../examples/keel.toml")).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        let models: Vec<&str> = config
            .app
            .gateway
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert!(models.contains(&"text-embedding-3-small"));
        assert!(config.app.gateway.models[0].deployments.len() >= 2);
        assert_eq!(config.app.keys[0].1, "sk-keel-demo");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
