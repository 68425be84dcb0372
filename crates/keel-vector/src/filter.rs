//! Query-time filters on payload fields, and their resolution to the set of
//! points they keep.
//!
//! The JSON shape:
//!
//! ```json
//! {"must":     [{"key": "lang", "match": {"value": "en"}},
//!               {"key": "tags", "match": {"any": ["billing", "refund"]}},
//!               {"key": "price", "range": {"gte": 10, "lt": 20}},
//!               {"key": "at", "range": {"gte": "2024-05-01T00:00:00Z"}},
//!               {"exists": "author"}],
//!  "should":   [...],   // at least one, when given
//!  "must_not": [...]}   // none
//! ```
//!
//! A condition may itself be a filter, to nest. Only indexed fields may be
//! filtered on, so every filter resolves through payload indexes
//! ([`crate::payload`]) to an exact bitmap; nothing scans points.

use std::collections::BTreeMap;
use std::ops::Bound;

use roaring::RoaringBitmap;
use serde_json::Value;

use crate::error::{Result, VectorError};
use crate::payload::{IndexValue, PayloadIndex, scalar};
use crate::spec::FieldType;

/// The deepest nesting accepted.
const MAX_DEPTH: usize = 8;

/// A checked filter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// Every one must hold.
    pub must: Vec<Condition>,
    /// At least one must hold (when not empty).
    pub should: Vec<Condition>,
    /// None may hold.
    pub must_not: Vec<Condition>,
}

/// One checked condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The field holds this value.
    Match {
        /// The field.
        key: String,
        /// The value.
        value: IndexValue,
    },
    /// The field holds one of these values.
    Any {
        /// The field.
        key: String,
        /// The values.
        values: Vec<IndexValue>,
    },
    /// The field holds a value in this range.
    Range {
        /// The field.
        key: String,
        /// The lower bound.
        lower: Bound<f64>,
        /// The upper bound.
        upper: Bound<f64>,
    },
    /// The field has a value.
    Exists {
        /// The field.
        key: String,
    },
    /// A nested filter.
    Nested(Box<Filter>),
}

impl Filter {
    /// Parses and checks `json` against the indexed `fields`; errors name
    /// the path under `path` (`filter.must[1].range.gte`).
    pub fn parse(json: &Value, fields: &BTreeMap<String, FieldType>, path: &str) -> Result<Filter> {
        parse_filter(json, fields, path, 0)
    }

    /// The set of points in `all` the filter keeps.
    pub(crate) fn resolve(&self, index: &PayloadIndex, all: &RoaringBitmap) -> RoaringBitmap {
        let mut keep = all.clone();
        for c in &self.must {
            keep &= c.resolve(index, all);
        }
        if !self.should.is_empty() {
            let mut any = RoaringBitmap::new();
            for c in &self.should {
                any |= c.resolve(index, all);
            }
            keep &= any;
        }
        for c in &self.must_not {
            keep -= c.resolve(index, all);
        }
        keep
    }
}

impl Condition {
    fn resolve(&self, index: &PayloadIndex, all: &RoaringBitmap) -> RoaringBitmap {
        let field = |key: &str| index.fields.get(key);
        let set = match self {
            Condition::Match { key, value } => field(key).map(|f| f.matching(value)),
            Condition::Any { key, values } => field(key).map(|f| {
                let mut out = RoaringBitmap::new();
                values.iter().for_each(|v| out |= f.matching(v));
                out
            }),
            Condition::Range { key, lower, upper } => field(key).map(|f| f.range(*lower, *upper)),
            Condition::Exists { key } => field(key).map(|f| f.present.clone()),
            Condition::Nested(filter) => Some(filter.resolve(index, all)),
        };
        set.unwrap_or_default()
    }
}

fn parse_filter(
    json: &Value,
    fields: &BTreeMap<String, FieldType>,
    path: &str,
    depth: usize,
) -> Result<Filter> {
    if depth > MAX_DEPTH {
        return Err(VectorError::invalid(
            path,
            format!("filters nest at most {MAX_DEPTH} levels deep"),
        ));
    }
    let object = json.as_object().ok_or_else(|| {
        VectorError::invalid(
            path,
            "a filter must be an object with must, should or must_not",
        )
    })?;
    let mut filter = Filter::default();
    for (clause, items) in object {
        let target = match clause.as_str() {
            "must" => &mut filter.must,
            "should" => &mut filter.should,
            "must_not" => &mut filter.must_not,
            other => {
                return Err(VectorError::invalid(
                    format!("{path}.{other}"),
                    "unknown clause; use must, should or must_not",
                ));
            }
        };
        let path = format!("{path}.{clause}");
        let items = items
            .as_array()
            .ok_or_else(|| VectorError::invalid(&path, "must be an array of conditions"))?;
        for (i, item) in items.iter().enumerate() {
            target.push(parse_condition(
                item,
                fields,
                &format!("{path}[{i}]"),
                depth,
            )?);
        }
    }
    Ok(filter)
}

fn parse_condition(
    json: &Value,
    fields: &BTreeMap<String, FieldType>,
    path: &str,
    depth: usize,
) -> Result<Condition> {
    let object = json
        .as_object()
        .ok_or_else(|| VectorError::invalid(path, "a condition must be an object"))?;
    if ["must", "should", "must_not"]
        .iter()
        .any(|k| object.contains_key(*k))
    {
        return Ok(Condition::Nested(Box::new(parse_filter(
            json,
            fields,
            path,
            depth + 1,
        )?)));
    }
    if let Some(key) = object.get("exists") {
        let key = key.as_str().ok_or_else(|| {
            VectorError::invalid(format!("{path}.exists"), "must be a field name")
        })?;
        field_type(fields, key, &format!("{path}.exists"))?;
        return Ok(Condition::Exists {
            key: key.to_owned(),
        });
    }
    let key = object.get("key").and_then(Value::as_str).ok_or_else(|| {
        VectorError::invalid(
            path,
            "a condition needs `key` with `match` or `range`, `exists`, or a nested filter",
        )
    })?;
    let ty = field_type(fields, key, &format!("{path}.key"))?;
    if let Some(m) = object.get("match") {
        return parse_match(key, ty, m, &format!("{path}.match"));
    }
    if let Some(r) = object.get("range") {
        return parse_range(key, ty, r, &format!("{path}.range"));
    }
    Err(VectorError::invalid(
        path,
        "a condition on `key` needs `match` or `range`",
    ))
}

fn field_type(fields: &BTreeMap<String, FieldType>, key: &str, path: &str) -> Result<FieldType> {
    fields.get(key).copied().ok_or_else(|| {
        let known: Vec<&str> = fields.keys().map(String::as_str).collect();
        VectorError::invalid(
            path,
            format!(
                "field {key:?} is not indexed in this collection; indexed fields: [{}]",
                known.join(", ")
            ),
        )
    })
}

fn parse_match(key: &str, ty: FieldType, json: &Value, path: &str) -> Result<Condition> {
    if let Some(value) = json.get("value") {
        let value = scalar(ty, value, &format!("{path}.value"))?;
        return Ok(Condition::Match {
            key: key.to_owned(),
            value,
        });
    }
    if let Some(any) = json.get("any") {
        let path = format!("{path}.any");
        let items = any
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| VectorError::invalid(&path, "must be a non-empty array of values"))?;
        let values = items
            .iter()
            .enumerate()
            .map(|(i, v)| scalar(ty, v, &format!("{path}[{i}]")))
            .collect::<Result<_>>()?;
        return Ok(Condition::Any {
            key: key.to_owned(),
            values,
        });
    }
    Err(VectorError::invalid(
        path,
        "must be {\"value\": …} or {\"any\": […]}",
    ))
}

fn parse_range(key: &str, ty: FieldType, json: &Value, path: &str) -> Result<Condition> {
    if !ty.is_ordered() {
        return Err(VectorError::invalid(
            path,
            format!("field {key:?} is {ty:?}; ranges apply to integer, float and datetime fields")
                .to_lowercase(),
        ));
    }
    let object = json
        .as_object()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| VectorError::invalid(path, "must be an object with gt, gte, lt or lte"))?;
    let (mut lower, mut upper) = (Bound::Unbounded, Bound::Unbounded);
    for (op, value) in object {
        let bound_path = format!("{path}.{op}");
        // A bound on an integer field may be fractional (`lt: 2.5`).
        let bound_ty = if ty == FieldType::Integer {
            FieldType::Float
        } else {
            ty
        };
        let IndexValue::Num(n) = scalar(bound_ty, value, &bound_path)? else {
            return Err(VectorError::invalid(bound_path, "must be a number"));
        };
        match op.as_str() {
            "gt" => lower = Bound::Excluded(n),
            "gte" => lower = Bound::Included(n),
            "lt" => upper = Bound::Excluded(n),
            "lte" => upper = Bound::Included(n),
            _ => {
                return Err(VectorError::invalid(
                    bound_path,
                    "unknown bound; use gt, gte, lt or lte",
                ));
            }
        }
    }
    Ok(Condition::Range {
        key: key.to_owned(),
        lower,
        upper,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields() -> BTreeMap<String, FieldType> {
        [
            ("lang", FieldType::Keyword),
            ("n", FieldType::Integer),
            ("at", FieldType::Datetime),
            ("ok", FieldType::Bool),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), t))
        .collect()
    }

    fn error_field(json: Value) -> String {
        match Filter::parse(&json, &fields(), "filter") {
            Err(VectorError::Invalid { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_filters_name_the_path() {
        assert_eq!(error_field(json!([])), "filter");
        assert_eq!(error_field(json!({"must": {}})), "filter.must");
        assert_eq!(error_field(json!({"nope": []})), "filter.nope");
        assert_eq!(
            error_field(json!({"must": [{"key": "zz", "match": {"value": 1}}]})),
            "filter.must[0].key"
        );
        assert_eq!(
            error_field(json!({"must": [{"key": "n", "match": {"value": "x"}}]})),
            "filter.must[0].match.value"
        );
        assert_eq!(
            error_field(json!({"must": [{"key": "lang", "range": {"gt": 1}}]})),
            "filter.must[0].range"
        );
        assert_eq!(
            error_field(json!({"should": [{"key": "n", "range": {"between": 1}}]})),
            "filter.should[0].range.between"
        );
        assert_eq!(
            error_field(json!({"must_not": [{"must": [{"exists": "q"}]}]})),
            "filter.must_not[0].must[0].exists"
        );
        assert_eq!(
            error_field(json!({"must": [{"key": "at", "range": {"gte": "yesterday"}}]})),
            "filter.must[0].range.gte"
        );
    }

    #[test]
    fn resolves_must_should_and_must_not() {
        let mut index = PayloadIndex::default();
        let key = |s: &str| IndexValue::Key(s.to_owned());
        index.insert(
            1,
            &[
                ("lang".into(), vec![key("en")]),
                ("n".into(), vec![IndexValue::Num(1.0)]),
            ],
        );
        index.insert(
            2,
            &[
                ("lang".into(), vec![key("de")]),
                ("n".into(), vec![IndexValue::Num(2.0)]),
            ],
        );
        index.insert(3, &[("lang".into(), vec![key("en")])]);
        let all: RoaringBitmap = [1, 2, 3].into_iter().collect();
        let keep = |json: Value| -> Vec<u32> {
            Filter::parse(&json, &fields(), "f")
                .unwrap()
                .resolve(&index, &all)
                .iter()
                .collect()
        };
        assert_eq!(keep(json!({})), vec![1, 2, 3]);
        assert_eq!(
            keep(json!({"must": [{"key": "lang", "match": {"value": "en"}}]})),
            vec![1, 3]
        );
        assert_eq!(keep(json!({"must": [{"exists": "n"}]})), vec![1, 2]);
        assert_eq!(keep(json!({"must_not": [{"exists": "n"}]})), vec![3]);
        assert_eq!(
            keep(
                json!({"should": [{"key": "n", "range": {"gte": 2}}, {"key": "lang", "match": {"any": ["xx", "en"]}}]})
            ),
            vec![1, 2, 3]
        );
        assert_eq!(
            keep(
                json!({"must": [{"should": [{"key": "n", "range": {"lt": 1.5}}]}], "must_not": [{"key": "lang", "match": {"value": "de"}}]})
            ),
            vec![1]
        );
    }
}
