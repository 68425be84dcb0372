//! What every module's tests start from: keel on a fresh SQLite store in a
//! temporary directory, one chat model `m` served by a simulator, tenant
//! `t1` with the key [`KEY`], and the admin token [`ADMIN`].

use std::sync::Arc;
use std::time::Duration;

use keel_core::{Pricing, TenantId};
use keel_gateway::{
    DeploymentConfig, GatewayConfig, ModelConfig, ModelKind, ProviderConfig, ProviderKind,
};
use keel_server::{App, AppConfig, RetrievalSetup, ServerSettings};
use keel_sim::{SimConfig, SpawnedSim};
use keel_store::{LedgerConfig, NewKey};

/// t1's key (no user).
pub const KEY: &str = "sk-keel-test-key";
/// The admin API token.
pub const ADMIN: &str = "adm";

/// A key of `tenant` (no user) with its secret, for `AppConfig::keys`.
pub fn key(tenant: &TenantId, secret: &str) -> (NewKey, String) {
    (
        NewKey {
            tenant_id: tenant.clone(),
            user_id: None,
            name: "k".into(),
        },
        secret.to_owned(),
    )
}

/// The base config: model `m` on deployment `d` (upstream model
/// `gpt-4o-mini`, $1 in / $2 out per million tokens), tenant t1 and
/// [`KEY`], no limit rules, no embedders, no cache, vectors under
/// `vectors_dir`.
pub fn config(sim: &SpawnedSim, store_url: String, vectors_dir: std::path::PathBuf) -> AppConfig {
    let provider = ProviderConfig {
        name: "sim".into(),
        kind: ProviderKind::OpenAi,
        base_url: sim.base_url(),
        api_key: None,
        connect_timeout: Duration::from_secs(2),
        max_idle_per_host: 64,
    };
    let model = ModelConfig {
        name: "m".into(),
        kind: ModelKind::Chat,
        deployments: vec![DeploymentConfig {
            name: Arc::from("d"),
            provider: "sim".into(),
            upstream_model: "gpt-4o-mini".into(),
            priority: 0,
            weight: 1,
            pricing: Pricing::from_dollars_per_mtok(1.0, 2.0).unwrap(),
        }],
        fallbacks: Vec::new(),
        timeouts: Default::default(),
        retry: Default::default(),
        breaker: Default::default(),
    };
    let t1 = TenantId::new("t1").unwrap();
    AppConfig {
        server: ServerSettings {
            max_body_bytes: 64 * 1024,
            admin_token: Some(ADMIN.into()),
        },
        store_url,
        ledger: LedgerConfig::default(),
        gateway: GatewayConfig {
            providers: vec![provider],
            models: vec![model],
        },
        keys: vec![key(&t1, KEY)],
        tenants: vec![(t1, "T1".into())],
        shutdown_grace: Duration::from_secs(10),
        limits: Default::default(),
        retrieval: RetrievalSetup::new(vectors_dir),
        cache: None,
        flow: Some(Default::default()),
    }
}

/// A running keel, its simulator and store.
pub struct Running {
    /// The server.
    pub app: App,
    /// Its store, to read the ledger.
    pub store_url: String,
    /// A client for it.
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
    /// The simulator keel calls.
    pub sim: SpawnedSim,
}

/// Starts a simulator with `sim` and keel on the base config changed by
/// `adjust`.
pub async fn start(sim: SimConfig, adjust: impl FnOnce(&mut AppConfig)) -> Running {
    let sim = keel_sim::spawn(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let mut config = config(&sim, store_url.clone(), dir.path().join("vectors"));
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::start(config, listener).await.unwrap();
    Running {
        app,
        store_url,
        client: reqwest::Client::new(),
        _dir: dir,
        sim,
    }
}

/// A new, empty database on the pgvector server (`KEEL_TEST_PGVECTOR_URL`,
/// default the one `scripts/pgvector.sh` starts on port 5433).
pub async fn pgvector_database() -> String {
    keel_vector::testing::scratch_database("keel_server_test")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
