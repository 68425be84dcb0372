//! keel's side of `bench/cache_lookup.sh`: how long a cache lookup takes
//! with 10k and 100k entries stored, without embedding (each question's
//! vector is given, as the benchmark's subject is the store, the filter on
//! the conversation's context, and the guard).
//!
//! Entries are 384-dimensional unit vectors (MiniLM's size) spread over
//! `contexts` conversation contexts (system prompts): with one context a
//! semantic lookup searches every entry; with many, only its context's.
//! Three kinds of lookup are timed one at a time, each `--queries` times:
//! an exact hit (a stored request again), a semantic hit (a paraphrase: a
//! vector at cosine ≈ 0.9 from a stored one, other words, the guard run),
//! and a miss (a new question: exact get, semantic search, nothing close).
//!
//! Prints one JSON line per (entries, contexts) with p50/p99 in µs and
//! the hit rates, for `bench/cache_lookup.sh`.
//!
//! `cargo run --release -p keel-cache --example cache_lookup -- [--entries 10000,100000] [--contexts 1,1000] [--queries 2000]`

#![expect(clippy::print_stdout, reason = "a benchmark prints its results")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on setup errors"
)]

use std::sync::Arc;
use std::time::Instant;

use keel_cache::{CacheSettings, HitKind, ResponseCache, Scope};
use keel_core::chat::{ChatCompletion, ChatRequest};
use keel_embed::HashingEmbedder;
use keel_limits::Clock;
use keel_vector::{EmbeddedOptions, EmbeddedStore, VectorStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const DIM: usize = 384;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn list(name: &str, default: &str) -> Vec<usize> {
    arg(name)
        .unwrap_or_else(|| default.to_owned())
        .split(',')
        .map(|n| n.trim().parse().expect("a number"))
        .collect()
}

fn unit(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
}

fn random_unit(rng: &mut StdRng) -> Vec<f32> {
    // Sums of uniforms are close enough to Gaussian for random directions.
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| (0..4).map(|_| rng.r#gen::<f32>() - 0.5).sum())
        .collect();
    unit(&mut v);
    v
}

/// A vector at cosine ≈ 0.9 from `v`.
fn near(v: &[f32], rng: &mut StdRng) -> Vec<f32> {
    let noise = random_unit(rng);
    let mut out: Vec<f32> = v.iter().zip(&noise).map(|(a, b)| a + 0.48 * b).collect();
    unit(&mut out);
    out
}

fn request(context: usize, question: &str) -> ChatRequest {
    serde_json::from_value(json!({"model": "m", "temperature": 0, "messages": [
        {"role": "system", "content": format!("You are support agent number {context} for Acme.")},
        {"role": "user", "content": question},
    ]}))
    .unwrap()
}

fn answer() -> ChatCompletion {
    serde_json::from_value(json!({
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Open Settings, then Billing."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48}
    }))
    .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let queries = list("--queries", "2000")[0];
    for entries in list("--entries", "10000,100000") {
        for contexts in list("--contexts", "1,1000") {
            run(entries, contexts, queries).await;
        }
    }
}

async fn run(entries: usize, contexts: usize, queries: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = EmbeddedOptions::new(dir.path());
    options.fsync = false;
    let store = VectorStore::Embedded(EmbeddedStore::open(options).await.unwrap());
    let cache = ResponseCache::new(
        CacheSettings::default(),
        store,
        // Declares the dimension; every probe brings its own vector.
        Some(Arc::new(HashingEmbedder::new(DIM))),
        Clock::system(),
    );
    let scope = Scope {
        tenant: "bench".into(),
        user: None,
    };
    let mut rng = StdRng::seed_from_u64(7);
    let question = |i: usize| format!("How do I configure item {i} in my workspace?");
    let paraphrase = |i: usize| format!("how can i set up item {i} in my workspace");

    let started = Instant::now();
    let mut vectors = Vec::with_capacity(entries);
    for i in 0..entries {
        let v = random_unit(&mut rng);
        let mut probe = cache
            .probe(&request(i % contexts, &question(i)), &scope)
            .unwrap()
            .with_vector(v.clone());
        cache
            .fill(&mut probe, &answer(), 48, (40, 8))
            .await
            .unwrap()
            .unwrap();
        vectors.push(v);
    }
    let fill_s = started.elapsed().as_secs_f64();

    let mut results = serde_json::Map::new();
    for kind in ["exact", "semantic", "miss"] {
        let mut times = Vec::with_capacity(queries);
        let mut hits = 0usize;
        for _ in 0..queries {
            let i = rng.gen_range(0..entries);
            let (req, vector, want) = match kind {
                "exact" => (
                    request(i % contexts, &question(i)),
                    vectors[i].clone(),
                    Some(HitKind::Exact),
                ),
                "semantic" => (
                    request(i % contexts, &paraphrase(i)),
                    near(&vectors[i], &mut rng),
                    Some(HitKind::Semantic),
                ),
                _ => (
                    request(i % contexts, &format!("What is new in release {i}?")),
                    random_unit(&mut rng),
                    None,
                ),
            };
            let mut probe = cache.probe(&req, &scope).unwrap().with_vector(vector);
            let t = Instant::now();
            let hit = cache.lookup(&mut probe).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
            hits += usize::from(hit.map(|h| h.kind) == want && want.is_some());
        }
        times.sort_by(f64::total_cmp);
        results.insert(
            kind.to_owned(),
            json!({"p50_us": percentile(&times, 0.5), "p99_us": percentile(&times, 0.99),
                   "hit_rate": hits as f64 / queries as f64}),
        );
    }
    println!(
        "{}",
        json!({"system": "keel", "entries": entries, "contexts": contexts,
               "fill_per_s": entries as f64 / fill_s, "lookups": results})
    );
}
