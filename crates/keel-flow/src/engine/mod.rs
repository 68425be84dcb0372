//! The engine: registers workflows, starts runs, and runs their steps.
//!
//! Any number of engines may share one store. Each claims ready steps in
//! batches under a lease ([`keel_store::flow`]), runs them (renewing the
//! lease while a call is slow), and records what became of each with the
//! lease's token, so a step whose engine died is picked up by another once
//! the lease expires, and an engine that lost a lease cannot overwrite the
//! step's result.

mod clock;
mod context;
mod conversation;
mod execute;
mod failure;
mod kinds;
pub(crate) mod plan;
mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_store::Store;
use keel_store::flow::{
    AttemptRecord, ClaimRequest, Claimed, NewRun, RunRecord, StepRecord, StoredWorkflow,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, warn};

pub use clock::Clock;
pub use tasks::{Task, TaskReport};

use crate::definition::{self, Workflow};
use crate::error::FlowError;
use crate::services::Services;

/// How an engine claims and runs steps.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This engine's name in leases and traces (a process id).
    pub owner: String,
    /// How long a claimed step is held before others may take it over; a
    /// running step's lease is renewed every third of this.
    pub lease: Duration,
    /// The most steps claimed at once.
    pub batch: u32,
    /// The most steps claimed from one tenant at once.
    pub per_tenant: u32,
    /// The most steps of one tenant running at once.
    pub tenant_concurrency: Option<u32>,
    /// How often an idle engine looks for work it was not told about.
    pub poll_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            owner: format!("keel-{}", std::process::id()),
            lease: Duration::from_secs(30),
            batch: 64,
            per_tenant: 16,
            tenant_concurrency: None,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// A run with everything that happened in it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// The run.
    #[serde(flatten)]
    pub run: RunRecord,
    /// Its steps, by key.
    pub steps: Vec<StepRecord>,
    /// Every attempt of every step, in order: the trace.
    pub attempts: Vec<AttemptRecord>,
}

/// The orchestrator.
pub struct Engine {
    store: Store,
    services: Arc<dyn Services>,
    config: EngineConfig,
    clock: Clock,
    /// Parsed definitions by (tenant, name, version); a version never
    /// changes once stored, so entries never go stale.
    workflows: Mutex<HashMap<(String, String, i64), Arc<Workflow>>>,
    /// Woken when this engine made work ready, so it need not wait a poll.
    wake: Notify,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `store`, calling out through `services`.
    pub fn new(store: Store, services: Arc<dyn Services>, config: EngineConfig) -> Engine {
        let clock = Clock::new();
        let ticking = clock.clone();
        Engine {
            store: store.with_clock(Arc::new(move || ticking.now_ms())),
            services,
            config,
            clock,
            workflows: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    /// The clock due times, leases and deadlines follow.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The store this engine works on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks a definition and stores it as the newest version of its name.
    pub async fn register(&self, tenant: &str, text: &str) -> Result<StoredWorkflow, FlowError> {
        let workflow = definition::parse(text)?;
        let stored = self
            .store
            .save_workflow(tenant, &workflow.name, text)
            .await?;
        self.remember(tenant, &stored.name, stored.version, Arc::new(workflow));
        Ok(stored)
    }

    /// Starts a run of a registered workflow (its latest version unless
    /// `version` says). With an idempotency key the tenant used before,
    /// returns that run instead; the flag says whether the run is new.
    pub async fn start(
        &self,
        tenant: &str,
        workflow: &str,
        version: Option<i64>,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<(RunRecord, bool), FlowError> {
        if !input.is_object() {
            return Err(FlowError::InvalidInput {
                reason: "the input must be a JSON object".to_owned(),
            });
        }
        let (version, definition) = self.definition(tenant, workflow, version).await?;
        let run = NewRun {
            tenant_id: tenant.to_owned(),
            workflow: workflow.to_owned(),
            version,
            input,
            idempotency_key,
            max_steps: u64::from(definition.limits.max_steps),
            max_tokens: definition.limits.max_tokens,
            max_cost: definition.limits.max_cost,
            steps: plan::steps(&definition),
        };
        let (record, created) = self.store.start_run(&run).await?;
        if created {
            debug!(tenant, run = %record.id, workflow, "Run started");
            self.wake.notify_one();
        }
        Ok((record, created))
    }

    /// A run with its steps and attempts.
    pub async fn run(&self, tenant: &str, id: &str) -> Result<RunView, FlowError> {
        let run = self
            .store
            .run(tenant, id)
            .await?
            .ok_or_else(|| FlowError::UnknownRun { id: id.to_owned() })?;
        let steps = self.store.run_steps(id).await?;
        let attempts = self.store.run_attempts(id).await?;
        Ok(RunView {
            run,
            steps,
            attempts,
        })
    }

    /// Answers a step waiting for a person.
    pub async fn signal(
        &self,
        tenant: &str,
        run_id: &str,
        step: &str,
        output: &Value,
    ) -> Result<(), FlowError> {
        self.store.signal_step(tenant, run_id, step, output).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Cancels a running run; false if it was not running.
    pub async fn cancel(&self, tenant: &str, run_id: &str) -> Result<bool, FlowError> {
        Ok(self.store.cancel_run(tenant, run_id).await?)
    }

    /// Claims one batch of due steps and runs them all; returns how many
    /// it ran. Tests drive engines with this; [`Engine::serve`] loops it.
    pub async fn tick(self: &Arc<Self>) -> Result<usize, FlowError> {
        let claimed = self.claim(self.config.batch).await?;
        let count = claimed.len();
        let mut running = JoinSet::new();
        for step in claimed {
            self.spawn_step(&mut running, step);
        }
        while let Some(done) = running.join_next().await {
            report(done);
        }
        Ok(count)
    }

    /// Runs steps until `shutdown` resolves, up to `batch` at once: claims
    /// more whenever a step ends, when this engine made work ready, when
    /// another process says it did (PostgreSQL's LISTEN/NOTIFY), and every
    /// poll interval in any case. A slow step holds only its own slot.
    pub async fn serve(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut listener = match self.store.listen_flow().await {
            Ok(listener) => listener,
            Err(e) => {
                warn!(error = %e, "Cannot listen for other processes' work; polling only");
                None
            }
        };
        let mut running = JoinSet::new();
        loop {
            let room = self
                .config
                .batch
                .saturating_sub(u32::try_from(running.len()).unwrap_or(u32::MAX));
            // Claim in batches: when idle, or once a quarter of the slots
            // are free, not for every step that ends.
            if room > 0 && (running.is_empty() || room >= (self.config.batch / 4).max(1)) {
                // Whatever is claimed, the next claim comes when a slot
                // frees or someone says there is more.
                match self.claim(room).await {
                    Ok(claimed) => {
                        for step in claimed {
                            self.spawn_step(&mut running, step);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "Claiming steps failed; retrying after the poll interval")
                    }
                }
            }
            let notice = async {
                match listener.as_mut() {
                    Some(listener) => listener.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => {
                    running.abort_all();
                    return;
                }
                Some(done) = running.join_next(), if !running.is_empty() => report(done),
                () = self.wake.notified() => {}
                heard = notice => {
                    if let Err(e) = heard {
                        warn!(error = %e, "Listening for other processes' work failed; polling only");
                        listener = None;
                    }
                }
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Claims up to `max` due steps of keel's own queue.
    async fn claim(&self, max: u32) -> Result<Vec<Claimed>, FlowError> {
        let request = ClaimRequest {
            queue: String::new(),
            owner: self.config.owner.clone(),
            lease_ms: millis(self.config.lease),
            batch: max,
            per_tenant: self.config.per_tenant,
            tenant_concurrency: self.config.tenant_concurrency,
            tenant: None,
        };
        Ok(self.store.claim_steps(&request).await?)
    }

    fn spawn_step(self: &Arc<Self>, running: &mut JoinSet<Result<(), FlowError>>, step: Claimed) {
        let engine = Arc::clone(self);
        running.spawn(async move { engine.execute(step).await });
    }

    /// The parsed definition of a workflow version (the latest if `None`).
    async fn definition(
        &self,
        tenant: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<(i64, Arc<Workflow>), FlowError> {
        if let Some(version) = version
            && let Some(known) = self.remembered(tenant, name, version)
        {
            return Ok((version, known));
        }
        let stored = self
            .store
            .workflow(tenant, name, version)
            .await?
            .ok_or_else(|| FlowError::UnknownWorkflow {
                name: name.to_owned(),
            })?;
        if let Some(known) = self.remembered(tenant, name, stored.version) {
            return Ok((stored.version, known));
        }
        let workflow = Arc::new(definition::parse(&stored.definition)?);
        self.remember(tenant, name, stored.version, Arc::clone(&workflow));
        Ok((stored.version, workflow))
    }

    fn remembered(&self, tenant: &str, name: &str, version: i64) -> Option<Arc<Workflow>> {
        let key = (tenant.to_owned(), name.to_owned(), version);
        self.lock_workflows().get(&key).cloned()
    }

    fn remember(&self, tenant: &str, name: &str, version: i64, workflow: Arc<Workflow>) {
        let key = (tenant.to_owned(), name.to_owned(), version);
        self.lock_workflows().insert(key, workflow);
    }

    fn lock_workflows(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String, i64), Arc<Workflow>>> {
        self.workflows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Logs a step task that could not record its outcome; its lease will
/// expire and another attempt will follow.
fn report(done: Result<Result<(), FlowError>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "A step could not be recorded; its lease will expire"),
        Err(e) => warn!(error = %e, "A step's task ended abnormally"),
    }
}

/// A duration in whole milliseconds, as the store counts.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
