//! A scripted stand-in for the gateway, collections and HTTP tools, and an
//! engine over a fresh in-memory store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use keel_core::Cost;
use keel_flow::{
    CallError, ChatCall, ChatReply, Engine, EngineConfig, Estimate, HttpCall, RetrieveCall,
    RunView, Services,
};
use keel_store::Store;
use keel_store::flow::{RunStatus, StepStatus};
use serde_json::{Value, json};

/// Answers by step key: scripted replies first, then `ok <step>`.
#[derive(Default)]
pub struct Scripted {
    replies: Mutex<HashMap<String, VecDeque<Result<String, CallError>>>>,
    pub calls: Mutex<Vec<ChatCall>>,
    pub retrievals: Mutex<Vec<RetrieveCall>>,
    pub requests: Mutex<Vec<HttpCall>>,
}

impl Scripted {
    /// Queues a model reply (or error) for a step.
    pub fn reply(&self, step: &str, reply: Result<&str, CallError>) {
        let mut replies = self.replies.lock().unwrap();
        replies
            .entry(step.to_owned())
            .or_default()
            .push_back(reply.map(str::to_owned));
    }

    /// The models called for a step, in order.
    pub fn models(&self, step: &str) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.step == step)
            .map(|c| c.model.clone())
            .collect()
    }
}

impl Services for Scripted {
    fn estimate(&self, call: &ChatCall) -> Estimate {
        // Replies use 10 prompt and 5 completion tokens and cost 100.
        let max_tokens = call.max_tokens.unwrap_or(5);
        Estimate {
            tokens: 10 + u64::from(max_tokens),
            cost: Cost(100),
            max_tokens,
        }
    }

    fn chat(&self, call: ChatCall) -> BoxFuture<'_, Result<ChatReply, CallError>> {
        let scripted = self
            .replies
            .lock()
            .unwrap()
            .get_mut(&call.step)
            .and_then(VecDeque::pop_front);
        let reply = scripted.unwrap_or_else(|| Ok(format!("ok {}", call.step)));
        let model = call.model.clone();
        self.calls.lock().unwrap().push(call);
        Box::pin(async move {
            reply.map(|text| ChatReply {
                text,
                model,
                prompt_tokens: 10,
                completion_tokens: 5,
                cost: Cost(100),
            })
        })
    }

    fn retrieve(&self, call: RetrieveCall) -> BoxFuture<'_, Result<Value, CallError>> {
        let results = json!([{"text": format!("article about {}", call.query), "score": 0.9}]);
        self.retrievals.lock().unwrap().push(call);
        Box::pin(async move { Ok(results) })
    }

    fn http(&self, call: HttpCall) -> BoxFuture<'_, Result<Value, CallError>> {
        let echo = json!({"url": call.url, "body": call.body});
        self.requests.lock().unwrap().push(call);
        Box::pin(async move { Ok(echo) })
    }
}

/// An engine and its script, over a fresh in-memory store.
pub struct Harness {
    pub engine: Arc<Engine>,
    pub script: Arc<Scripted>,
}

pub const TENANT: &str = "acme";

impl Harness {
    pub async fn new() -> Result<Harness> {
        let store = Store::connect("sqlite::memory:").await?;
        store.migrate().await?;
        let script = Arc::new(Scripted::default());
        let services: Arc<dyn Services> = script.clone();
        let engine = Arc::new(Engine::new(store, services, EngineConfig::default()));
        Ok(Harness { engine, script })
    }

    /// Registers `definition` and starts a run of it with `input`.
    pub async fn start(&self, definition: &str, input: Value) -> Result<String> {
        let stored = self.engine.register(TENANT, definition).await?;
        let (run, created) = self
            .engine
            .start(TENANT, &stored.name, None, input, None)
            .await?;
        anyhow::ensure!(created);
        Ok(run.id)
    }

    /// Runs steps until none is due; returns how many ran.
    pub async fn settle(&self) -> Result<usize> {
        let mut total = 0;
        for _ in 0..200 {
            let ran = self.engine.tick().await?;
            if ran == 0 {
                return Ok(total);
            }
            total += ran;
        }
        anyhow::bail!("the run did not settle in 200 ticks")
    }

    pub async fn view(&self, run: &str) -> Result<RunView> {
        Ok(self.engine.run(TENANT, run).await?)
    }

    pub async fn status(&self, run: &str) -> Result<RunStatus> {
        Ok(self.view(run).await?.run.status)
    }

    pub async fn step(&self, run: &str, key: &str) -> Result<keel_store::flow::StepRecord> {
        self.view(run)
            .await?
            .steps
            .into_iter()
            .find(|s| s.key == key)
            .with_context(|| format!("no step {key}"))
    }

    pub async fn step_status(&self, run: &str, key: &str) -> Result<StepStatus> {
        Ok(self.step(run, key).await?.status)
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.engine.clock().advance(by);
    }
}
