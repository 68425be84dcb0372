//! What one limit decision costs: admit + settle against four rules (a
//! request rate, a token rate, a concurrency limit and a budget), in process
//! and in Redis, with references measured in the same run: a decision with
//! no rules (the floor), and a Redis PING on the same connection (one round
//! trip, the least a shared decision can cost). Also the prompt-counting
//! step that precedes every decision.
//!
//! `cargo run --release -p keel-limits --example decision_cost [-- --redis redis://127.0.0.1:6379]`
//! Results and method: bench/RESULTS.md.

#![expect(clippy::print_stdout, reason = "a benchmark prints its results")]
#![expect(
    clippy::unwrap_used,
    reason = "a benchmark fails loudly on setup errors"
)]

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keel_core::Cost;
use keel_core::chat::ChatRequest;
use keel_limits::{Attrs, Charge, Limits, LimitsConfig, RedisSettings, Rule, RuleSpec, Tokenizer};
use keel_telemetry::Metrics;

const RULES: [&str; 4] = [
    r#"{"id":"rpm","scope":"tenant=*,user=*","requests":100000000,"per":"1m"}"#,
    r#"{"id":"tpm","scope":"tenant=*","tokens":4000000000,"per":"1m"}"#,
    r#"{"id":"conc","scope":"tenant=*","concurrency":100000}"#,
    r#"{"id":"budget","scope":"tenant=*","budget_usd":100000000.0,"period":"month"}"#,
];

fn rules() -> Vec<Rule> {
    RULES
        .iter()
        .map(|r| {
            serde_json::from_str::<RuleSpec>(r)
                .unwrap()
                .check()
                .unwrap()
        })
        .collect()
}

fn limits(rules: Vec<Rule>, redis: Option<&str>) -> Limits {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let config = LimitsConfig {
        rules,
        redis: redis.map(|url| RedisSettings {
            url: url.to_owned(),
            prefix: format!("keel-bench:{nanos}"),
            timeout: Duration::from_secs(2),
        }),
        ..LimitsConfig::default()
    };
    Limits::new(config, Metrics::new()).unwrap()
}

fn attrs(user: &str) -> Attrs<'_> {
    Attrs {
        tenant: "bench",
        user: Some(user),
        key: Some("k1"),
        model: "gpt-4o-mini",
        ..Attrs::default()
    }
}

const CHARGE: Charge = Charge {
    tokens: 600,
    cost: Cost(900),
};

async fn decide(limits: &Limits, i: usize) {
    let user = format!("u{}", i % 64);
    let admission = limits
        .admit(&attrs(&user), CHARGE, &format!("r{i}"))
        .await
        .unwrap();
    admission
        .settle(Charge {
            tokens: 300,
            cost: Cost(400),
        })
        .await;
}

/// Latency of `n` sequential calls, in nanoseconds.
async fn sequential<F, Fut>(n: usize, mut f: F) -> Histogram<u64>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut h = Histogram::<u64>::new(3).unwrap();
    for i in 0..n / 10 {
        f(i).await; // warm up
    }
    for i in 0..n {
        let start = Instant::now();
        f(i).await;
        h.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    h
}

/// Decisions per second with `tasks` concurrent tasks making `each` each.
async fn throughput(limits: &Limits, tasks: usize, each: usize) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let limits = limits.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    decide(&limits, t * each + i).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (tasks * each) as f64 / start.elapsed().as_secs_f64()
}

fn row(name: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
        us(0.5),
        us(0.9),
        us(0.99),
        h.mean() / 1000.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut redis = Some("redis://127.0.0.1:6379".to_owned());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--redis" => redis = args.next(),
            "--no-redis" => redis = None,
            other => {
                println!("unknown argument {other}; use --redis URL or --no-redis");
                std::process::exit(2);
            }
        }
    }

    println!("| decision (admit + settle) | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("|---|---|---|---|---|");
    let none = limits(Vec::new(), None);
    row(
        "no rules (floor)",
        &sequential(200_000, |i| decide(&none, i)).await,
    );
    let local = limits(rules(), None);
    row(
        "4 rules, in process",
        &sequential(200_000, |i| decide(&local, i)).await,
    );
    let shared = redis.as_deref().map(|url| limits(rules(), Some(url)));
    if let Some(shared) = &shared {
        shared.ping().await.unwrap();
        row(
            "Redis PING, same connection (reference)",
            &sequential(20_000, |_| async {
                shared.ping().await.unwrap();
            })
            .await,
        );
        row(
            "4 rules, Redis (one Lua script each way)",
            &sequential(20_000, |i| decide(shared, i)).await,
        );
    }

    println!("\n| throughput, 32 tasks on 2 threads | decisions/s |");
    println!("|---|---|");
    println!(
        "| 4 rules, in process | {:.0} |",
        throughput(&local, 32, 20_000).await
    );
    if let Some(shared) = &shared {
        println!(
            "| 4 rules, Redis | {:.0} |",
            throughput(shared, 32, 500).await
        );
    }

    println!("\n| prompt counting | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("|---|---|---|---|---|");
    let words = "The quick brown fox jumps over the lazy dog while the agent plans its next step. ";
    for (label, repeat) in [("~100 tokens", 6), ("~2,000 tokens", 120)] {
        let request: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": words.repeat(repeat)},
            ],
        }))
        .unwrap();
        for tokenizer in [Tokenizer::O200kBase, Tokenizer::Estimate] {
            tokenizer.warm_up();
            let h = sequential(20_000, |_| {
                let n = tokenizer.count_chat(&request);
                std::hint::black_box(n);
                async {}
            })
            .await;
            row(&format!("{label}, {}", tokenizer.as_str()), &h);
        }
    }
}
