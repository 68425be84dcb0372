//! Local model speed on this CPU: latency of one short text, and texts per
//! second at batch sizes 1, 8 and 32, for keel's candle implementation. The
//! reference in the same run is `bench/embed_reference.py` (the NumPy
//! forward pass the correctness test compares against, in float32), started
//! by `bench/embed_throughput.sh`.
//!
//! `cargo run --release -p keel-embed --example embed_throughput [MODEL_DIR]`

#![expect(clippy::print_stdout, reason = "a benchmark prints its results")]
#![expect(
    clippy::unwrap_used,
    reason = "a benchmark fails loudly on setup errors"
)]

use std::path::PathBuf;
use std::time::Instant;

use keel_embed::LocalEmbedder;

/// About 12 tokens, like a search query or a cache key.
const SHORT: &str = "How do I reset my password on the billing portal?";
/// About 110 tokens, like a retrieval chunk.
const CHUNK: &str = "Kubernetes pods are restarting with CrashLoopBackOff after the upgrade. \
The liveness probe times out because the database migration runs at startup and holds a \
lock for several minutes. Moving the migration into an init container, or raising the \
probe's initial delay, stops the restarts. The readiness probe should keep failing until \
the migration is done so that no traffic reaches a pod that cannot serve it yet, and the \
deployment's progress deadline must allow for the longest migration seen in production.";

fn main() {
    let dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.keel/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    let model = LocalEmbedder::load(&dir).unwrap();
    let one = vec![SHORT.to_owned()];
    for _ in 0..20 {
        model.embed_blocking(&one).unwrap();
    }
    let mut latencies: Vec<f64> = (0..200)
        .map(|_| {
            let start = Instant::now();
            model.embed_blocking(&one).unwrap();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "keel (candle): one short text: p50 {:.2} ms, p90 {:.2} ms",
        latencies[100], latencies[180]
    );
    for batch in [1usize, 8, 32] {
        let texts = vec![CHUNK.to_owned(); batch];
        model.embed_blocking(&texts).unwrap();
        let rounds = (256 / batch).max(4);
        let start = Instant::now();
        for _ in 0..rounds {
            model.embed_blocking(&texts).unwrap();
        }
        let rate = (rounds * batch) as f64 / start.elapsed().as_secs_f64();
        println!("keel (candle): ~110-token chunks, batch {batch:>2}: {rate:.1} texts/s");
    }
}
