//! What a collection is: its vector shape, metric, embedder, indexed payload
//! fields, partition key and HNSW parameters.
//!
//! A [`CollectionSpec`] arrives as JSON from a client, is checked by
//! [`CollectionSpec::validate`] (every refusal names the field), and is
//! stored beside the collection's data so a restart needs nothing else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, VectorError};

/// The largest dimension a collection may have.
pub const MAX_DIMENSION: usize = 8192;

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity: vectors are scaled to unit length on the way in;
    /// `score` is the similarity (higher is closer).
    #[default]
    Cosine,
    /// Inner product as given; `score` is the product (higher is closer).
    Dot,
    /// Euclidean distance; `score` is the distance (lower is closer).
    L2,
}

impl Metric {
    /// Whether a higher score means closer.
    pub fn higher_is_closer(self) -> bool {
        !matches!(self, Metric::L2)
    }
}

/// The type of an indexed payload field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Exact strings (a string or an array of strings per point).
    Keyword,
    /// Whole numbers (one or an array).
    Integer,
    /// Numbers.
    Float,
    /// RFC 3339 timestamps, compared in time order.
    Datetime,
    /// `true` or `false`.
    Bool,
}

impl FieldType {
    /// Whether range conditions apply.
    pub fn is_ordered(self) -> bool {
        matches!(
            self,
            FieldType::Integer | FieldType::Float | FieldType::Datetime
        )
    }
}

/// How the graph stores its copy of the vectors. The store keeps every
/// vector in full precision beside the graph and re-ranks the graph's
/// candidates with it, so a smaller graph copy trades little recall for
/// much less memory traffic per query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// `i8` for cosine, `f16` otherwise.
    #[default]
    Auto,
    /// Full precision.
    F32,
    /// Half precision.
    F16,
    /// 8-bit integers; cosine only (vectors have unit length).
    I8,
}

/// HNSW graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HnswParams {
    /// Links per node (`M`); more links, better recall, more memory.
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching.
    pub ef_search: usize,
    /// The graph's copy of the vectors (the embedded store only).
    pub quantization: Quantization,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 128,
            ef_search: 64,
            quantization: Quantization::Auto,
        }
    }
}

/// A collection's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    /// The name, unique per tenant: letters, digits, `-` and `_`, at most
    /// 64 characters.
    pub name: String,
    /// The vector length; may be left out when `embedder` fixes it.
    #[serde(default)]
    pub dimension: usize,
    /// How vectors are compared.
    #[serde(default)]
    pub metric: Metric,
    /// The embedder that turns text into this collection's vectors, if
    /// points or queries may be given as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<String>,
    /// Payload fields that filters may use, with their types.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldType>,
    /// A keyword field whose value puts each point in its own index;
    /// queries then name the partition they search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Graph parameters.
    #[serde(default)]
    pub hnsw: HnswParams,
}

impl CollectionSpec {
    /// Checks every value, naming the field at fault. The partition key is
    /// added to `fields` as a keyword when it is not listed.
    pub fn validate(&mut self) -> Result<()> {
        check_name("name", &self.name)?;
        if self.dimension == 0 || self.dimension > MAX_DIMENSION {
            return Err(VectorError::invalid(
                "dimension",
                format!(
                    "must be between 1 and {MAX_DIMENSION} (or left out when `embedder` is set), got {}",
                    self.dimension
                ),
            ));
        }
        for name in self.fields.keys() {
            check_field_name(&format!("fields.{name}"), name)?;
        }
        if let Some(key) = &self.partition_key {
            check_field_name("partition_key", key)?;
            match self.fields.get(key) {
                None => {
                    self.fields.insert(key.clone(), FieldType::Keyword);
                }
                Some(FieldType::Keyword) => {}
                Some(other) => {
                    return Err(VectorError::invalid(
                        "partition_key",
                        format!("field {key:?} is {other:?}; a partition key must be a keyword"),
                    ));
                }
            }
        }
        let h = self.hnsw;
        if !(2..=128).contains(&h.m) {
            return Err(VectorError::invalid("hnsw.m", "must be between 2 and 128"));
        }
        if !(1..=4096).contains(&h.ef_construction) {
            return Err(VectorError::invalid(
                "hnsw.ef_construction",
                "must be between 1 and 4096",
            ));
        }
        if !(1..=4096).contains(&h.ef_search) {
            return Err(VectorError::invalid(
                "hnsw.ef_search",
                "must be between 1 and 4096",
            ));
        }
        if h.quantization == Quantization::I8 && self.metric != Metric::Cosine {
            return Err(VectorError::invalid(
                "hnsw.quantization",
                "i8 needs unit-length vectors: use it with metric cosine, or choose f16 or f32",
            ));
        }
        Ok(())
    }
}

/// Checks a collection name: it becomes a directory name, so it is kept to
/// a safe alphabet.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(VectorError::invalid(
            field,
            format!("{name:?} is not a valid name: use 1 to 64 letters, digits, `-` or `_`"),
        ))
    }
}

fn check_field_name(field: &str, name: &str) -> Result<()> {
    // Field names reach SQL text in the PostgreSQL backend (an expression
    // index only matches a literal), so they keep to a safe alphabet.
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VectorError::invalid(
            field,
            format!(
                "{name:?} is not a valid field name: use 1 to 64 letters, digits, `_`, `-` or `.`"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<CollectionSpec> {
        let mut spec: CollectionSpec = serde_json::from_value(json)
            .map_err(|e| VectorError::invalid("body", e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn defaults_are_cosine_and_m16() {
        let s = spec(serde_json::json!({"name": "docs", "dimension": 4})).unwrap();
        assert_eq!(s.metric, Metric::Cosine);
        assert_eq!(s.hnsw, HnswParams::default());
    }

    #[test]
    fn partition_key_becomes_a_keyword_field() {
        let s = spec(serde_json::json!({"name": "d", "dimension": 4, "partition_key": "customer"}))
            .unwrap();
        assert_eq!(s.fields["customer"], FieldType::Keyword);
    }

    #[test]
    fn refuses_bad_values_naming_the_field() {
        let bad = [
            (serde_json::json!({"name": "a/b", "dimension": 4}), "name"),
            (
                serde_json::json!({"name": "a", "dimension": 0}),
                "dimension",
            ),
            (
                serde_json::json!({"name": "a", "dimension": 4, "hnsw": {"m": 1}}),
                "hnsw.m",
            ),
            (
                serde_json::json!({"name": "a", "dimension": 4, "metric": "l2", "hnsw": {"quantization": "i8"}}),
                "hnsw.quantization",
            ),
            (
                serde_json::json!({"name": "a", "dimension": 4, "fields": {"p": "float"}, "partition_key": "p"}),
                "partition_key",
            ),
        ];
        for (json, field) in bad {
            match spec(json) {
                Err(VectorError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
    }
}
