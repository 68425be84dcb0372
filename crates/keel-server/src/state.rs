//! What every handler shares: the gateway, the key table, the store, the
//! usage ledger, metrics, limits and server settings.

use std::sync::Arc;

use keel_gateway::Gateway;
use keel_store::{Ledger, Store};
use keel_telemetry::Metrics;

use crate::auth::KeyTable;
use crate::caching::RequestCache;
use crate::limiting::RequestLimits;
use crate::retrieval::Retrieval;

/// Settings of the HTTP surface.
#[derive(Clone)]
pub struct ServerSettings {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The admin API token; the admin API is off without one.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("max_body_bytes", &self.max_body_bytes)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_body_bytes: 4 * 1024 * 1024,
            admin_token: None,
        }
    }
}

/// Shared state, cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Routes requests to upstreams.
    pub gateway: Gateway,
    /// API keys, in memory.
    pub keys: KeyTable,
    /// The repository.
    pub store: Store,
    /// The batched usage writer.
    pub ledger: Ledger,
    /// Metric instruments.
    pub metrics: Metrics,
    /// Rate limits, budgets and blocks.
    pub limits: RequestLimits,
    /// Embedders and the vector store.
    pub retrieval: Retrieval,
    /// The response cache, when it is on.
    pub cache: Option<RequestCache>,
    /// The workflow engine, when workflows are on.
    pub flow: Option<Arc<keel_flow::Engine>>,
    /// Server settings.
    pub settings: Arc<ServerSettings>,
}
