//! Points going in and results coming out.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, VectorError};
use crate::filter::Filter;

/// The longest point id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// A point to store: an id unique in its collection, a vector, and a JSON
/// payload (indexed fields are typed; the rest is kept as given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The point's id.
    pub id: String,
    /// The vector.
    pub vector: Vec<f32>,
    /// The payload.
    #[serde(default)]
    pub payload: Map<String, Value>,
}

/// A stored point as returned by `get`.
pub type StoredPoint = Point;

/// One query answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredPoint {
    /// The point's id.
    pub id: String,
    /// Similarity for cosine and dot (higher is closer), distance for l2
    /// (lower is closer).
    pub score: f32,
    /// The payload, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Map<String, Value>>,
    /// The vector, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// A nearest-neighbour query.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The query vector.
    pub vector: Vec<f32>,
    /// How many answers.
    pub k: usize,
    /// Which points may answer.
    pub filter: Option<Filter>,
    /// The partition to search, for a partitioned collection.
    pub partition: Option<String>,
    /// Return payloads.
    pub with_payload: bool,
    /// Return vectors.
    pub with_vector: bool,
    /// Overrides the store's planner (benchmarks and diagnostics).
    pub planner: Option<crate::partition::Planner>,
}

/// How a query was answered, for tests and the `x-keel-plan` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The graph, unfiltered.
    Graph,
    /// The graph, skipping points the filter drops.
    FilteredGraph,
    /// Every matching point compared with the query.
    Exact,
    /// Nothing to search (empty partition or nothing matched).
    Empty,
    /// PostgreSQL's planner chose (HNSW index scan or exact scan).
    Database,
}

/// A query's answers and how they were found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    /// The answers, closest first.
    pub points: Vec<ScoredPoint>,
    /// How they were found.
    pub strategy: Strategy,
    /// How many points the filter kept (all points when unfiltered).
    pub candidates: u64,
}

/// Checks a point id.
pub fn check_id(id: &str, path: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(VectorError::invalid(
            path,
            format!("an id must have 1 to {MAX_ID_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a vector's length and values.
pub fn check_vector(vector: &[f32], dimension: usize, path: &str) -> Result<()> {
    if vector.len() != dimension {
        return Err(VectorError::Dimension {
            field: path.to_owned(),
            expected: dimension,
            got: vector.len(),
        });
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(VectorError::invalid(
            format!("{path}[{i}]"),
            "vectors must hold finite numbers (no NaN or infinity)",
        ));
    }
    Ok(())
}
