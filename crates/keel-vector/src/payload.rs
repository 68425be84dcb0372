//! Payload indexes: for every indexed field, which points hold which value.
//!
//! Keywords and booleans map each value to a bitmap of point keys; numbers
//! and timestamps keep an ordered map so a range is a walk over the keys in
//! range. Every field also keeps a bitmap of the points that have it, for
//! `exists`. Filters are resolved against these bitmaps
//! ([`crate::filter`]), so the planner knows exactly how many points a
//! filter keeps before it picks a search strategy.

use std::collections::{BTreeMap, HashMap};

use roaring::MultiOps;

use roaring::RoaringBitmap;
use serde_json::{Map, Value};

use crate::error::{Result, VectorError};
use crate::spec::FieldType;

/// The largest integer a payload may carry exactly (2^53).
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// One indexed value of a field.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// A keyword, or `"true"`/`"false"` for a bool.
    Key(String),
    /// A number, or milliseconds since the epoch for a timestamp.
    Num(f64),
}

/// An `f64` with a total order (NaN never gets in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ordered(pub f64);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Reads one scalar of a field of type `ty`, naming `path` on a mismatch.
pub fn scalar(ty: FieldType, value: &Value, path: &str) -> Result<IndexValue> {
    let wrong = |expected: &str| {
        VectorError::invalid(
            path,
            format!("expected {expected} for {ty:?} field, got {value}").to_lowercase(),
        )
    };
    match ty {
        FieldType::Keyword => value
            .as_str()
            .map(|s| IndexValue::Key(s.to_owned()))
            .ok_or_else(|| wrong("a string")),
        FieldType::Bool => value
            .as_bool()
            .map(|b| IndexValue::Key(b.to_string()))
            .ok_or_else(|| wrong("true or false")),
        FieldType::Integer => match value.as_i64().map(|i| i as f64) {
            Some(n) if n.abs() <= MAX_EXACT_INT => Ok(IndexValue::Num(n)),
            Some(_) => Err(wrong("an integer within ±2^53")),
            None => Err(wrong("an integer")),
        },
        FieldType::Float => value
            .as_f64()
            .filter(|n| n.is_finite())
            .map(IndexValue::Num)
            .ok_or_else(|| wrong("a finite number")),
        FieldType::Datetime => value
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| IndexValue::Num(t.timestamp_millis() as f64))
            .ok_or_else(|| wrong("an RFC 3339 timestamp like \"2024-05-01T12:00:00Z\"")),
    }
}

/// Reads every value of a field: a scalar, `null` (no value), or for a
/// keyword field an array of strings (tags). Numbers, timestamps and
/// booleans hold one value, so a range means the same on every backend.
pub fn values(ty: FieldType, value: &Value, path: &str) -> Result<Vec<IndexValue>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(_) if ty != FieldType::Keyword => Err(VectorError::invalid(
            path,
            format!("{ty:?} fields hold one value; only keyword fields hold arrays").to_lowercase(),
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| scalar(ty, v, &format!("{path}[{i}]")))
            .collect(),
        v => Ok(vec![scalar(ty, v, path)?]),
    }
}

/// The index of one field.
#[derive(Debug, Default)]
pub(crate) struct FieldIndex {
    keys: HashMap<String, RoaringBitmap>,
    nums: BTreeMap<Ordered, RoaringBitmap>,
    /// Points that have at least one value.
    pub present: RoaringBitmap,
}

impl FieldIndex {
    fn insert(&mut self, point: u32, value: &IndexValue) {
        match value {
            IndexValue::Key(k) => self.keys.entry(k.clone()).or_default().insert(point),
            IndexValue::Num(n) => self.nums.entry(Ordered(*n)).or_default().insert(point),
        };
        self.present.insert(point);
    }

    fn remove(&mut self, point: u32, value: &IndexValue) {
        match value {
            IndexValue::Key(k) => {
                if let Some(set) = self.keys.get_mut(k) {
                    set.remove(point);
                    if set.is_empty() {
                        self.keys.remove(k);
                    }
                }
            }
            IndexValue::Num(n) => {
                if let Some(set) = self.nums.get_mut(&Ordered(*n)) {
                    set.remove(point);
                    if set.is_empty() {
                        self.nums.remove(&Ordered(*n));
                    }
                }
            }
        }
        self.present.remove(point);
    }

    /// Points holding `value`.
    pub fn matching(&self, value: &IndexValue) -> RoaringBitmap {
        match value {
            IndexValue::Key(k) => self.keys.get(k).cloned().unwrap_or_default(),
            IndexValue::Num(n) => self.nums.get(&Ordered(*n)).cloned().unwrap_or_default(),
        }
    }

    /// Points with a value in the range.
    pub fn range(&self, lower: std::ops::Bound<f64>, upper: std::ops::Bound<f64>) -> RoaringBitmap {
        use std::ops::Bound::*;
        let map = |b: std::ops::Bound<f64>| match b {
            Included(x) => Included(Ordered(x)),
            Excluded(x) => Excluded(Ordered(x)),
            Unbounded => Unbounded,
        };
        let (lower, upper) = (map(lower), map(upper));
        // BTreeMap::range panics on an inverted range; that range is empty.
        let inverted = match (&lower, &upper) {
            (Included(a) | Excluded(a), Included(b) | Excluded(b)) => {
                a > b || (a == b && !(matches!(lower, Included(_)) && matches!(upper, Included(_))))
            }
            _ => false,
        };
        if inverted {
            return RoaringBitmap::new();
        }
        // One union over every set in range: far cheaper than folding them
        // in one by one when the field holds many distinct values
        // (timestamps).
        self.nums.range((lower, upper)).map(|(_, s)| s).union()
    }
}

/// Every indexed field of one partition.
#[derive(Debug, Default)]
pub(crate) struct PayloadIndex {
    pub fields: HashMap<String, FieldIndex>,
}

impl PayloadIndex {
    /// Indexes a point's payload (values already checked at the edge).
    pub fn insert(&mut self, point: u32, extracted: &[(String, Vec<IndexValue>)]) {
        for (field, values) in extracted {
            let index = self.fields.entry(field.clone()).or_default();
            values.iter().for_each(|v| index.insert(point, v));
        }
    }

    /// Removes a point's values.
    pub fn remove(&mut self, point: u32, extracted: &[(String, Vec<IndexValue>)]) {
        for (field, values) in extracted {
            if let Some(index) = self.fields.get_mut(field) {
                values.iter().for_each(|v| index.remove(point, v));
            }
        }
    }
}

/// Reads the indexed fields out of a payload, checking their types.
pub fn extract(
    fields: &std::collections::BTreeMap<String, FieldType>,
    payload: &Map<String, Value>,
    path: &str,
) -> Result<Vec<(String, Vec<IndexValue>)>> {
    let mut out = Vec::new();
    for (name, ty) in fields {
        if let Some(value) = payload.get(name) {
            let values = values(*ty, value, &format!("{path}.{name}"))?;
            if !values.is_empty() {
                out.push((name.clone(), values));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::ops::Bound::*;

    use super::*;

    #[test]
    fn ranges_walk_only_the_keys_in_range() {
        let mut index = FieldIndex::default();
        for (point, n) in [(1, 1.0), (2, 2.0), (3, 3.0), (4, 3.0)] {
            index.insert(point, &IndexValue::Num(n));
        }
        let got: Vec<u32> = index.range(Included(2.0), Excluded(3.0)).iter().collect();
        assert_eq!(got, vec![2]);
        let got: Vec<u32> = index.range(Excluded(1.0), Unbounded).iter().collect();
        assert_eq!(got, vec![2, 3, 4]);
        assert!(index.range(Included(3.0), Included(1.0)).is_empty());
        assert!(index.range(Excluded(2.0), Excluded(2.0)).is_empty());
    }

    #[test]
    fn removing_a_value_updates_presence() {
        let mut index = FieldIndex::default();
        index.insert(7, &IndexValue::Key("a".into()));
        index.remove(7, &IndexValue::Key("a".into()));
        assert!(index.present.is_empty());
        assert!(index.matching(&IndexValue::Key("a".into())).is_empty());
    }

    #[test]
    fn values_are_checked_against_the_field_type() {
        let json = serde_json::json!("2024-05-01T00:00:00Z");
        assert!(matches!(
            scalar(FieldType::Datetime, &json, "p").unwrap(),
            IndexValue::Num(n) if n == 1_714_521_600_000.0
        ));
        let err = scalar(FieldType::Integer, &serde_json::json!(1.5), "payload.n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("payload.n: expected an integer"),
            "{err}"
        );
        assert_eq!(
            values(FieldType::Keyword, &serde_json::json!(["a", "b"]), "t")
                .unwrap()
                .len(),
            2
        );
        assert!(values(FieldType::Float, &serde_json::json!([1.0, 2.0]), "t").is_err());
    }
}
