//! Durable step throughput and enqueue-to-start latency of keel's
//! orchestrator, on SQLite or PostgreSQL, with steps that do nothing but
//! be recorded (a model that answers at once), so what is measured is the
//! orchestration: claiming, recording, releasing.
//!
//! ```sh
//! cargo run --release -p keel-flow --example flow_bench -- throughput STORE_URL RUNS STEPS ENGINES
//! cargo run --release -p keel-flow --example flow_bench -- latency STORE_URL RATE SECONDS ENGINES
//! ```
//!
//! `bench/flow_bench.sh` runs both on both stores beside DBOS.

#![expect(
    clippy::print_stdout,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use keel_core::Cost;
use keel_flow::{
    CallError, ChatCall, ChatReply, Engine, EngineConfig, Estimate, HttpCall, RetrieveCall,
    Services,
};
use keel_store::Store;
use keel_store::flow::RunStatus;
use serde_json::{Value, json};

/// Answers at once; records when each run's first call came.
#[derive(Default)]
struct Instant0 {
    started: Mutex<HashMap<u64, Instant>>,
}

impl Services for Instant0 {
    fn estimate(&self, _: &ChatCall) -> Estimate {
        Estimate {
            tokens: 0,
            cost: Cost::ZERO,
            max_tokens: 1,
        }
    }

    fn chat(&self, call: ChatCall) -> BoxFuture<'_, Result<ChatReply, CallError>> {
        let now = Instant::now();
        let n = call
            .messages
            .last()
            .and_then(|m| m.content.strip_prefix("n="))
            .and_then(|n| n.parse().ok());
        if let Some(n) = n {
            self.started.lock().unwrap().entry(n).or_insert(now);
        }
        Box::pin(async move {
            Ok(ChatReply {
                text: "ok".into(),
                model: call.model,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost: Cost::ZERO,
            })
        })
    }

    fn retrieve(&self, _: RetrieveCall) -> BoxFuture<'_, Result<Value, CallError>> {
        Box::pin(async { Ok(Value::Null) })
    }

    fn http(&self, _: HttpCall) -> BoxFuture<'_, Result<Value, CallError>> {
        Box::pin(async { Ok(Value::Null) })
    }
}

fn definition(steps: usize) -> String {
    let mut text = String::from(
        "name: bench\nlimits: {max_steps: 100000}\nagents:\n  a: {model: m}\nsteps:\n",
    );
    for i in 0..steps {
        let prompt = if i == 0 {
            "'n={{ input.n }}'".to_owned()
        } else {
            "step".to_owned()
        };
        text.push_str(&format!(
            "  - {{id: s{i}, kind: llm, agent: a, prompt: {prompt}"
        ));
        if i > 0 {
            text.push_str(&format!(", depends_on: [s{}]", i - 1));
        }
        text.push_str("}\n");
    }
    text
}

async fn engines(url: &str, n: usize) -> (Vec<Arc<Engine>>, Arc<Instant0>) {
    let services = Arc::new(Instant0::default());
    let mut engines = Vec::new();
    for i in 0..n {
        let store = Store::connect(url).await.expect("store");
        if i == 0 {
            store.migrate().await.expect("migrate");
        }
        let config = EngineConfig {
            owner: format!("bench-{i}"),
            poll_interval: Duration::from_millis(200),
            ..EngineConfig::default()
        };
        let dyn_services: Arc<dyn Services> = services.clone();
        engines.push(Arc::new(Engine::new(store, dyn_services, config)));
    }
    (engines, services)
}

fn serve(engines: &[Arc<Engine>]) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for engine in engines {
        let mut stopped = stopped.clone();
        tokio::spawn(Arc::clone(engine).serve(async move {
            _ = stopped.wait_for(|s| *s).await;
        }));
    }
    stop
}

async fn wait_all(engine: &Engine, runs: usize) {
    loop {
        let done = engine
            .store()
            .runs("bench", Some(RunStatus::Succeeded), 100_000)
            .await
            .unwrap()
            .len();
        if done >= runs {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn throughput(url: &str, runs: usize, steps: usize, n: usize) {
    let (engines, _) = engines(url, n).await;
    engines[0]
        .register("bench", &definition(steps))
        .await
        .unwrap();
    for i in 0..runs {
        engines[0]
            .start("bench", "bench", None, json!({"n": i}), None)
            .await
            .unwrap();
    }
    let started = Instant::now();
    let stop = serve(&engines);
    wait_all(&engines[0], runs).await;
    let elapsed = started.elapsed().as_secs_f64();
    _ = stop.send(true);
    let total = runs * steps;
    println!(
        "{{\"mode\": \"throughput\", \"system\": \"keel\", \"runs\": {runs}, \"steps_per_run\": {steps}, \"engines\": {n}, \"seconds\": {elapsed:.3}, \"steps_per_sec\": {:.1}}}",
        total as f64 / elapsed
    );
}

async fn latency(url: &str, rate: f64, seconds: f64, n: usize) {
    let (engines, services) = engines(url, n).await;
    engines[0].register("bench", &definition(1)).await.unwrap();
    let stop = serve(&engines);
    let total = (rate * seconds) as u64;
    let mut enqueued = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let engine = Arc::clone(&engines[(i as usize) % n]);
        enqueued.insert(i, Instant::now());
        tokio::spawn(async move {
            engine
                .start("bench", "bench", None, json!({"n": i}), None)
                .await
                .unwrap()
        });
    }
    wait_all(&engines[0], total as usize).await;
    _ = stop.send(true);
    let started = services.started.lock().unwrap();
    let mut waits: Vec<f64> = enqueued
        .iter()
        .filter_map(|(i, t0)| {
            started
                .get(i)
                .map(|t| t.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    println!(
        "{{\"mode\": \"latency\", \"system\": \"keel\", \"rate\": {rate}, \"runs\": {}, \"engines\": {n}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        waits.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).expect("usage: see the file's docs").clone();
    match arg(1).as_str() {
        "throughput" => {
            throughput(
                &arg(2),
                arg(3).parse().unwrap(),
                arg(4).parse().unwrap(),
                arg(5).parse().unwrap(),
            )
            .await
        }
        "latency" => {
            latency(
                &arg(2),
                arg(3).parse().unwrap(),
                arg(4).parse().unwrap(),
                arg(5).parse().unwrap(),
            )
            .await
        }
        other => panic!("unknown mode {other}"),
    }
}
