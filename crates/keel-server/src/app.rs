//! Building and running a whole keel server from checked settings.
//!
//! [`App::start`] opens and migrates the store, seeds configured tenants and
//! keys, builds the gateway, starts the usage ledger, and serves on a
//! listener. The binary, the demo and the integration tests all start keel
//! this way, so they run the same code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_core::TenantId;
use keel_gateway::{Gateway, GatewayConfig};
use keel_limits::Limits;
use keel_store::{Ledger, LedgerConfig, LedgerTask, NewKey, Store};
use keel_telemetry::Metrics;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::caching::{CacheSetup, RequestCache};
use crate::flow::FlowSetup;
use crate::limiting::{LimitsSetup, RequestLimits};
use crate::retrieval::{Retrieval, RetrievalError, RetrievalSetup};
use crate::{AppState, KeyTable, ServerSettings};

/// Everything needed to start keel.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// HTTP settings.
    pub server: ServerSettings,
    /// `sqlite://…` or `postgres://…`.
    pub store_url: String,
    /// Usage ledger batching.
    pub ledger: LedgerConfig,
    /// Providers and models.
    pub gateway: GatewayConfig,
    /// Tenants to create if missing: id and display name.
    pub tenants: Vec<(TenantId, String)>,
    /// Keys to import if missing, with their secrets.
    pub keys: Vec<(NewKey, String)>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Rate limits and budgets.
    pub limits: LimitsSetup,
    /// Embedders and the vector store.
    pub retrieval: RetrievalSetup,
    /// The response cache; `None` turns it off.
    pub cache: Option<CacheSetup>,
    /// Workflows; `None` turns them off.
    pub flow: Option<FlowSetup>,
}

/// Why keel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed to open, migrate or seed.
    #[error("store: {0}")]
    Store(#[from] keel_store::StoreError),
    /// The gateway could not be built.
    #[error("gateway: {0}")]
    Gateway(#[from] keel_gateway::BuildError),
    /// The limits could not be set up.
    #[error("limits: {0}")]
    Limits(#[from] keel_limits::LimitsError),
    /// An embedder or the vector store could not start.
    #[error("retrieval: {0}")]
    Retrieval(#[from] RetrievalError),
    /// The cache names an embedder that is not configured.
    #[error("cache: embedder {0:?} is not configured under [[embedders]]")]
    CacheEmbedder(String),
    /// A configured workflow definition was refused.
    #[error("workflow for tenant {tenant:?}: {reason}")]
    Workflow {
        /// The tenant it was registered for.
        tenant: String,
        /// Why it was refused (every problem, with its line).
        reason: String,
    },
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// The response cache over the retrieval store and the named embedder.
fn start_cache(setup: &CacheSetup, retrieval: &Retrieval) -> Result<RequestCache, StartError> {
    let embedder = match &setup.embedder {
        Some(name) => Some(
            retrieval
                .embedder(name)
                .ok_or_else(|| StartError::CacheEmbedder(name.clone()))?,
        ),
        None => None,
    };
    let cache = keel_cache::ResponseCache::new(
        setup.settings.clone(),
        retrieval.vectors.clone(),
        embedder,
        setup.clock.clone(),
    );
    tracing::info!(
        semantic = setup.settings.semantic && setup.embedder.is_some(),
        embedder = setup.embedder.as_deref().unwrap_or("-"),
        threshold = setup.settings.threshold,
        "Response cache on"
    );
    Ok(RequestCache::new(cache, setup))
}

/// A running keel server.
pub struct App {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its shared state (for tests and the demo to inspect).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    ledger_task: LedgerTask,
    /// The engine's loop and the retention pruner.
    flow_tasks: Vec<JoinHandle<()>>,
    stop_flow: tokio::sync::watch::Sender<bool>,
    grace: Duration,
}

impl App {
    /// Starts keel on `listener`.
    pub async fn start(
        config: AppConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<App, StartError> {
        let store = Store::connect(&config.store_url).await?;
        store.migrate().await?;
        for (id, name) in &config.tenants {
            store.ensure_tenant(id, name).await?;
        }
        for (key, secret) in &config.keys {
            store.import_key(key.clone(), secret).await?;
        }

        let metrics = Metrics::new();
        let gateway = Gateway::new(config.gateway, metrics.clone())?;
        let limits = Limits::new(config.limits.config, metrics.clone())?;
        crate::limiting::reload(&store, &limits).await?;
        let limits = RequestLimits::new(
            limits,
            &gateway,
            &config.limits.tokenizers,
            config.limits.default_max_tokens,
        );
        let retrieval = Retrieval::start(config.retrieval, &gateway).await?;
        let cache = match &config.cache {
            Some(setup) => Some(start_cache(setup, &retrieval)?),
            None => None,
        };
        let (ledger, ledger_task) = Ledger::spawn(store.clone(), config.ledger);
        let keys = KeyTable::default();
        let loaded = keys.reload(&store).await?;
        let mut state = AppState {
            gateway,
            keys,
            store,
            ledger,
            metrics,
            limits,
            retrieval,
            cache,
            flow: None,
            settings: Arc::new(config.server),
        };
        let mut flow_tasks = Vec::new();
        let (stop_flow, flow_stopped) = tokio::sync::watch::channel(false);
        if let Some(setup) = &config.flow {
            // Steps call the routes of a state without the engine, so the
            // engine does not hold itself.
            let services_router = crate::router(state.clone());
            let engine = crate::flow::engine(
                state.store.clone(),
                services_router,
                state.keys.clone(),
                state.limits.clone(),
                setup,
            );
            for (tenant, definition) in &setup.workflows {
                let stored = engine
                    .register(tenant.as_str(), definition)
                    .await
                    .map_err(|e| StartError::Workflow {
                        tenant: tenant.to_string(),
                        reason: e.to_string(),
                    })?;
                tracing::info!(tenant = %tenant, workflow = %stored.name, version = stored.version, "Registered workflow");
            }
            let mut stopped = flow_stopped.clone();
            flow_tasks.push(tokio::spawn(Arc::clone(&engine).serve(async move {
                _ = stopped.wait_for(|stop| *stop).await;
            })));
            flow_tasks.push(tokio::spawn(crate::flow::prune(
                Arc::clone(&engine),
                setup.retention,
            )));
            state.flow = Some(engine);
        }

        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve(listener, state.clone(), async {
            _ = stopped.await;
        }));
        tracing::info!(%addr, backend = state.store.backend().as_str(), keys = loaded, "keel listening");
        Ok(App {
            addr,
            state,
            stop: Some(stop),
            server,
            ledger_task,
            flow_tasks,
            stop_flow,
            grace: config.shutdown_grace,
        })
    }

    /// The base URL of the OpenAI-compatible API, e.g.
    /// `http://127.0.0.1:8080/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops accepting, drains in-flight requests for up to the grace period,
    /// then flushes the ledger and closes the store.
    pub async fn shutdown(mut self) {
        tracing::info!("Shutting down: draining in-flight requests");
        if let Some(stop) = self.stop.take() {
            _ = stop.send(());
        }
        match tokio::time::timeout(self.grace, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "Server stopped with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "Server task failed"),
            Err(_) => {
                tracing::warn!(
                    grace_ms = self.grace.as_millis() as u64,
                    "Grace period over; aborting requests still running"
                );
                self.server.abort();
            }
        }
        // Steps still running are dropped; their leases expire and another
        // engine (or the next start) takes them over.
        _ = self.stop_flow.send(true);
        for task in self.flow_tasks.drain(..) {
            task.abort();
        }
        self.ledger_task.shutdown().await;
        // The next start then loads graphs instead of replaying logs.
        if let Err(e) = self.state.retrieval.vectors.snapshot_all().await {
            tracing::warn!(error = %e, "Vector snapshot at shutdown failed; the next start replays the log");
        }
        self.state.store.close().await;
        tracing::info!("Shutdown complete");
    }
}
