//! The simulator handle: shared state, routes and the server loop.
//!
//! A [`Sim`] is a cheap, clonable handle. Every request reads the config
//! once (an `Arc` clone under a read lock), takes a sequence number, counts
//! itself and decides its fault in [`Sim::begin`]; handlers do the rest.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigUpdate, SimConfig};
use crate::error::SimError;
use crate::fault::{self, FaultKind};
use crate::reply::Dialect;
use crate::stats::{Counters, SimStats};
use crate::{admin, anthropic, embeddings, openai};

/// How long the `hang` fault holds a request: long enough that any client
/// timeout fires first.
const HANG: Duration = Duration::from_secs(3600);

/// The largest request body accepted; axum's 2 MiB default is too small for
/// long-context load tests.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// A running or ready-to-run simulator; clones share state.
#[derive(Debug, Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: RwLock<Arc<SimConfig>>,
    counters: Counters,
    /// Numbers requests, for response ids and fault coin flips.
    sequence: AtomicU64,
    /// Flips to true when the server shuts down, releasing hung requests.
    shutting_down: watch::Sender<bool>,
}

/// What a handler needs once a request has been admitted.
pub(crate) struct Turn {
    /// The config as it was when the request arrived.
    pub config: Arc<SimConfig>,
    /// This request's sequence number.
    pub sequence: u64,
    /// A body fault to apply (`cut` or `malformed`); status faults and
    /// `hang` are handled before the handler sees the request.
    pub fault: Option<FaultKind>,
}

impl Sim {
    /// Creates a simulator with `config`; call [`SimConfig::validate`] first
    /// if the config comes from a user.
    pub fn new(config: SimConfig) -> Sim {
        Sim {
            shared: Arc::new(Shared {
                config: RwLock::new(Arc::new(config)),
                counters: Counters::default(),
                sequence: AtomicU64::new(0),
                shutting_down: watch::Sender::new(false),
            }),
        }
    }

    /// Every route of the simulator: the model APIs under `/v1` and the
    /// control API under `/sim`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/models", get(openai::models))
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/v1/messages", post(anthropic::messages))
            .route("/v1/embeddings", post(embeddings::embeddings))
            .route("/sim/config", get(admin::config).put(admin::update_config))
            .route("/sim/stats", get(admin::stats))
            .route("/sim/reset", post(admin::reset))
            .fallback(admin::not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then finishes
    /// in-flight requests (hung ones are released) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "Simulator listening");

        let shared = Arc::clone(&self.shared);
        let signal = async move {
            shutdown.await;
            shared.shutting_down.send_replace(true);
        };
        // Streamed words are small writes; send each at once.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .await?;

        tracing::info!(%addr, "Simulator stopped");
        Ok(())
    }

    /// The counters since start or the last reset.
    pub fn stats(&self) -> SimStats {
        self.shared.counters.snapshot()
    }

    /// Sets every counter back to zero.
    pub fn reset_stats(&self) {
        self.shared.counters.reset();
    }

    /// The current config.
    pub fn config(&self) -> SimConfig {
        SimConfig::clone(&self.current_config())
    }

    /// Applies `update` to the running config and returns the result;
    /// requests already in flight keep the config they started with.
    pub fn update_config(&self, update: ConfigUpdate) -> Result<SimConfig, SimError> {
        let mut config = self
            .shared
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let next = config.updated(update)?;
        *config = Arc::new(next.clone());
        Ok(next)
    }

    /// Releases requests held by the `hang` fault, as on shutdown.
    pub(crate) fn release_hung(&self) {
        self.shared.shutting_down.send_replace(true);
    }

    fn current_config(&self) -> Arc<SimConfig> {
        let config = self
            .shared
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&config)
    }

    /// Counts a request refused as invalid and renders the 400.
    pub(crate) fn reject(&self, dialect: Dialect, err: &SimError) -> Response {
        self.shared.counters.record_invalid();
        tracing::debug!(%err, "Refusing invalid request");
        dialect.invalid(err)
    }

    /// Admits a well-formed request for `model`: counts it, picks its fault
    /// and waits out the time to first byte.
    ///
    /// Returns the finished response for status faults and `hang`, and
    /// otherwise what the handler needs to answer.
    pub(crate) async fn begin(&self, dialect: Dialect, model: &str) -> Result<Turn, Response> {
        let config = self.current_config();
        let sequence = self.shared.sequence.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.record_request(model);

        let fault = fault::pick(&config.faults, model, config.seed, sequence);
        if let Some(kind) = fault {
            self.shared.counters.record_fault(kind);
            tracing::debug!(model, sequence, fault = %kind, "Injecting fault");
        }

        if config.ttft_ms > 0 {
            tokio::time::sleep(Duration::from_millis(config.ttft_ms)).await;
        }

        match fault {
            Some(FaultKind::Hang) => {
                self.hang().await;
                Err(dialect.fault(FaultKind::Unavailable))
            }
            Some(
                kind @ (FaultKind::RateLimited | FaultKind::ServerError | FaultKind::Unavailable),
            ) => Err(dialect.fault(kind)),
            body_fault => Ok(Turn {
                config,
                sequence,
                fault: body_fault,
            }),
        }
    }

    /// Waits for an hour or until the server shuts down.
    async fn hang(&self) {
        let mut shutting_down = self.shared.shutting_down.subscribe();
        tokio::select! {
            () = tokio::time::sleep(HANG) => {}
            _ = shutting_down.wait_for(|down| *down) => {}
        }
    }
}
