//! One cached answer as the vector store keeps it: a point whose id is the
//! request's exact key, whose vector is the final user turn's embedding,
//! and whose payload carries the request's context digest and the
//! response, with what it cost and when it expires.
//!
//! Contexts are a filtered field, not partitions: most contexts hold a few
//! entries (each conversation has its own), which the store compares
//! exactly through the field's index, while one busy context (a shared
//! system prompt) may hold most of a tenant's entries and gets the
//! filtered graph walk.

use keel_core::chat::ChatCompletion;
use keel_vector::{CollectionSpec, FieldType, HnswParams, Metric, Point};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The collection holding a tenant's entries.
pub const COLLECTION: &str = "responses";

/// The context of entries that answer exact lookups only (their request
/// did not end with a plain-text user turn); no digest equals it.
pub const EXACT_ONLY: &str = "-";

/// What a hit knows of the answer it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The request's context digest.
    pub context: String,
    /// The final user turn the answer was for, when there was one.
    pub question: Option<String>,
    /// The model alias asked for.
    pub model: String,
    /// The stored response.
    pub response: ChatCompletion,
    /// What producing it cost, in micro-dollars.
    pub cost_micros: i64,
    /// Prompt tokens it took.
    pub prompt_tokens: u64,
    /// Completion tokens it took.
    pub completion_tokens: u64,
    /// When it was stored (Unix ms).
    pub created_ms: i64,
    /// Served until then (Unix ms).
    pub fresh_until_ms: i64,
    /// Kept, and served stale when allowed, until then (Unix ms).
    pub keep_until_ms: i64,
}

impl Entry {
    /// The entry as a point of the cache collection.
    pub fn into_point(self, id: String, vector: Vec<f32>) -> Point {
        let payload = match serde_json::to_value(&self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Point {
            id,
            vector,
            payload,
        }
    }

    /// The entry a stored payload holds, if it is one.
    pub fn from_payload(payload: Map<String, Value>) -> Option<Entry> {
        serde_json::from_value(Value::Object(payload)).ok()
    }

    /// Seconds since it was stored.
    pub fn age_secs(&self, now_ms: i64) -> u64 {
        u64::try_from((now_ms - self.created_ms).max(0) / 1000).unwrap_or(0)
    }
}

/// How wide a semantic lookup's graph walk is: a paraphrase's entry must be
/// found among every entry of a busy context, and a missed one is a
/// generation paid for (`bench/RESULTS.md`, lookup latency).
const EF_SEARCH: usize = 128;

/// The cache collection's spec for vectors of `dimension`, with the
/// fields lookups, eviction and invalidation filter on.
pub fn spec(dimension: usize) -> CollectionSpec {
    let fields = [
        ("context", FieldType::Keyword),
        ("model", FieldType::Keyword),
        ("created_ms", FieldType::Integer),
        ("fresh_until_ms", FieldType::Integer),
        ("keep_until_ms", FieldType::Integer),
    ];
    CollectionSpec {
        name: COLLECTION.to_owned(),
        dimension,
        metric: Metric::Cosine,
        embedder: None,
        fields: fields
            .into_iter()
            .map(|(field, kind)| (field.to_owned(), kind))
            .collect(),
        partition_key: None,
        hnsw: HnswParams {
            ef_search: EF_SEARCH,
            ..HnswParams::default()
        },
    }
}
