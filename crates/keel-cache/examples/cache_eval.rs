//! keel's side of `bench/cache_eval.sh`: how the semantic cache decides on
//! labeled question pairs (`bench/cache/pairs_*.jsonl`). Each pair's two
//! questions are embedded with the local all-MiniLM-L6-v2, their cosine
//! similarity taken, and the guard run on them, exactly as a lookup would
//! with one entry stored for `a` and `b` asked.
//!
//! Prints hit rates on paraphrases and false hits on near-misses at a
//! threshold sweep, with and without the guard, per category, and writes
//! one JSON record per pair for the comparison script.
//!
//! `cargo run --release -p keel-cache --example cache_eval -- --pairs FILE [--model DIR] [--out FILE] [--threshold T]`

#![expect(clippy::print_stdout, reason = "a benchmark prints its results")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on setup errors"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use keel_cache::guard;
use keel_embed::LocalEmbedder;
use serde_json::{Value, json};

struct Pair {
    id: String,
    label: String,
    category: String,
    domain: String,
    a: String,
    b: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let pairs_path = PathBuf::from(arg("--pairs").expect("--pairs FILE"));
    let model =
        PathBuf::from(arg("--model").unwrap_or_else(|| ".keel/models/all-MiniLM-L6-v2".into()));
    let default_threshold: f32 =
        arg("--threshold").map_or(keel_cache::DEFAULT_THRESHOLD, |t| t.parse().unwrap());

    let pairs: Vec<Pair> = std::fs::read_to_string(&pairs_path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            Pair {
                id: s("id"),
                label: s("label"),
                category: s("category"),
                domain: s("domain"),
                a: s("a"),
                b: s("b"),
            }
        })
        .collect();

    let embedder = LocalEmbedder::load(&model).unwrap();
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .map(|t| keel_cache::key::normalize_text(&t))
        .collect();
    let vectors = embedder.embed_blocking(&texts).unwrap();

    let mut records = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let (va, vb) = (&vectors[2 * i], &vectors[2 * i + 1]);
        let similarity: f32 = va.iter().zip(vb).map(|(x, y)| x * y).sum();
        let veto = guard::check(&texts[2 * i + 1], &texts[2 * i]).err();
        records.push((p, similarity, veto));
    }

    println!("pairs: {} ({})", pairs.len(), pairs_path.display());
    println!(
        "threshold  paraphrase hits (no guard / guard)  near-miss false hits (no guard / guard)"
    );
    for t in [0.70f32, 0.75, 0.80, 0.82, 0.85, 0.88, 0.90, 0.92, 0.95] {
        let rate = |label: &str, guarded: bool| {
            let of: Vec<_> = records.iter().filter(|r| r.0.label == label).collect();
            let hits = of
                .iter()
                .filter(|r| r.1 >= t && (!guarded || r.2.is_none()))
                .count();
            hits as f64 / of.len().max(1) as f64
        };
        println!(
            "  {t:.2}      {:>6.1} % / {:>6.1} %                    {:>6.1} % / {:>6.1} %",
            100.0 * rate("paraphrase", false),
            100.0 * rate("paraphrase", true),
            100.0 * rate("near_miss", false),
            100.0 * rate("near_miss", true),
        );
    }

    let t = default_threshold;
    println!("\nat the default threshold {t:.2}, per category (hit with guard / without):");
    let mut by: BTreeMap<(String, String), (usize, usize, usize)> = BTreeMap::new();
    for (p, s, veto) in &records {
        let e = by.entry((p.label.clone(), p.category.clone())).or_default();
        e.0 += 1;
        if *s >= t {
            e.1 += 1;
            if veto.is_none() {
                e.2 += 1;
            }
        }
    }
    for ((label, category), (n, raw, guarded)) in &by {
        println!("  {label:>10} {category:>10}: {guarded:>3} / {raw:>3} of {n}");
    }

    println!("\nnear-misses served at {t:.2} with the guard:");
    for (p, s, veto) in &records {
        if p.label == "near_miss" && *s >= t && veto.is_none() {
            println!("  {} {:.3} [{}] {:?} / {:?}", p.id, s, p.category, p.a, p.b);
        }
    }
    println!("\nparaphrases vetoed by the guard at {t:.2}:");
    for (p, s, veto) in &records {
        if p.label == "paraphrase"
            && *s >= t
            && let Some(v) = veto
        {
            println!("  {} {:.3} [{}] {:?} / {:?}", p.id, s, v.name(), p.a, p.b);
        }
    }

    if let Some(out) = arg("--out") {
        let lines: Vec<String> = records
            .iter()
            .map(|(p, s, veto)| {
                json!({"id": p.id, "label": p.label, "category": p.category, "domain": p.domain,
                       "similarity": s, "veto": veto.as_ref().map(|v| v.name())})
                .to_string()
            })
            .collect();
        std::fs::write(out, lines.join("\n") + "\n").unwrap();
    }
}
