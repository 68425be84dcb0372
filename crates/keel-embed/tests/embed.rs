//! The local model against reference vectors from an independent NumPy
//! forward pass (`scripts/reference_embeddings.py`), and the batcher.
//!
//! The model comes from `scripts/model.sh` (run by `scripts/test.sh`), in
//! `KEEL_MODEL_DIR` or `.keel/models/all-MiniLM-L6-v2` at the workspace root.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests fail on broken fixtures"
)]

use std::path::PathBuf;
use std::sync::Arc;

use keel_embed::{Batcher, EmbedError, Embedder, HashingEmbedder, LocalEmbedder};
use serde_json::Value;

fn model_dir() -> PathBuf {
    std::env::var_os("KEEL_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.keel/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    )
}

fn local() -> LocalEmbedder {
    LocalEmbedder::load(&model_dir()).unwrap_or_else(|e| panic!("{e} (run scripts/model.sh first)"))
}

fn reference() -> Vec<(String, Vec<f32>)> {
    let text = include_str!("data/minilm_reference.json");
    let json: Value = serde_json::from_str(text).unwrap();
    json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let vector = t["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (t["text"].as_str().unwrap().to_owned(), vector)
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_model_matches_an_independent_implementation() {
    let embedder = local();
    assert_eq!(embedder.dimension(), 384);
    assert_eq!(embedder.id(), "local:all-MiniLM-L6-v2");
    let reference = reference();
    let texts: Vec<String> = reference.iter().map(|(t, _)| t.clone()).collect();
    // All at once (padded to the longest) and one by one (no padding): both
    // must match, which checks that padding is masked out of the mean.
    let batched = embedder.embed(&texts).await.unwrap();
    for (i, (text, expected)) in reference.iter().enumerate() {
        let alone = embedder.embed(std::slice::from_ref(text)).await.unwrap();
        for (how, got) in [("batched", &batched[i]), ("alone", &alone[0])] {
            let c = cosine(got, expected);
            assert!(c >= 0.999, "{how} {text:?}: cosine {c}");
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrases_are_closer_than_unrelated_texts() {
    let embedder = local();
    let texts: Vec<String> = [
        "How do I reset my password?",
        "I forgot my login credentials, how can I recover my account?",
        "Quarterly revenue grew 12% driven by enterprise subscriptions.",
    ]
    .map(String::from)
    .to_vec();
    let v = embedder.embed(&texts).await.unwrap();
    assert!(cosine(&v[0], &v[1]) > 0.5, "{}", cosine(&v[0], &v[1]));
    assert!(cosine(&v[0], &v[2]) < 0.2, "{}", cosine(&v[0], &v[2]));
    // The hashing embedder, lexical only, cannot see that paraphrase.
    let h = HashingEmbedder::new(384).embed(&texts).await.unwrap();
    assert!(cosine(&h[0], &h[1]) < cosine(&v[0], &v[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_batches_and_get_their_own_vectors() {
    let batcher = Batcher::spawn(Arc::new(local()), 64);
    let reference = reference();
    let tasks: Vec<_> = reference
        .iter()
        .cloned()
        .map(|(text, expected)| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                let got = batcher.embed(&[text]).await.unwrap();
                cosine(&got[0], &expected)
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap() >= 0.999);
    }
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let err = LocalEmbedder::load(std::path::Path::new("/nonexistent/model")).unwrap_err();
    assert!(matches!(err, EmbedError::Load { .. }));
    assert!(err.to_string().contains("scripts/model.sh"), "{err}");
}
