//! Filters as PostgreSQL: the same [`Filter`] the embedded store resolves
//! through bitmaps becomes a `WHERE` clause over the `fields` column, in
//! which keel keeps each point's indexed values normalized: keywords and
//! booleans as arrays of strings (`{"tags": ["a", "b"]}`), numbers and
//! timestamps as one number (`{"at": 1714521600000}`).
//!
//! Keyword conditions are containment (`fields @> '{"lang": ["en"]}'`),
//! served by a GIN index; ranges compare `(fields->>'price')::float8`,
//! served by one B-tree expression index per numeric field. Values are
//! always bound parameters; field names appear in the SQL text because an
//! expression index only matches a literal, and they are restricted to a
//! safe alphabet when the collection is created.

use std::ops::Bound;

use serde_json::{Map, Value, json};

use crate::filter::{Condition, Filter};
use crate::payload::IndexValue;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    /// Text (JSON documents are cast with `::jsonb`).
    Text(String),
    /// A number.
    Num(f64),
}

/// Builds SQL with numbered placeholders after the ones already used.
#[derive(Debug)]
pub(crate) struct Sql {
    pub binds: Vec<Bind>,
    first: usize,
}

impl Sql {
    /// A builder whose first placeholder is `$first`.
    pub fn new(first: usize) -> Sql {
        Sql {
            binds: Vec::new(),
            first,
        }
    }

    fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.first + self.binds.len() - 1)
    }

    /// The condition for a whole filter.
    pub fn filter(&mut self, f: &Filter) -> String {
        let mut parts = Vec::new();
        for c in &f.must {
            parts.push(self.condition(c));
        }
        if !f.should.is_empty() {
            let any: Vec<String> = f.should.iter().map(|c| self.condition(c)).collect();
            parts.push(format!("({})", any.join(" OR ")));
        }
        for c in &f.must_not {
            parts.push(format!("NOT COALESCE({}, false)", self.condition(c)));
        }
        if parts.is_empty() {
            "TRUE".to_owned()
        } else {
            format!("({})", parts.join(" AND "))
        }
    }

    fn condition(&mut self, c: &Condition) -> String {
        match c {
            Condition::Match { key, value } => self.matches(key, value),
            Condition::Any { key, values } => {
                let any: Vec<String> = values.iter().map(|v| self.matches(key, v)).collect();
                format!("({})", any.join(" OR "))
            }
            Condition::Range { key, lower, upper } => {
                let column = numeric(key);
                let mut parts = Vec::new();
                match lower {
                    Bound::Included(x) => {
                        parts.push(format!("{column} >= {}", self.bind(Bind::Num(*x))))
                    }
                    Bound::Excluded(x) => {
                        parts.push(format!("{column} > {}", self.bind(Bind::Num(*x))))
                    }
                    Bound::Unbounded => {}
                }
                match upper {
                    Bound::Included(x) => {
                        parts.push(format!("{column} <= {}", self.bind(Bind::Num(*x))))
                    }
                    Bound::Excluded(x) => {
                        parts.push(format!("{column} < {}", self.bind(Bind::Num(*x))))
                    }
                    Bound::Unbounded => {}
                }
                if parts.is_empty() {
                    format!("fields ? {}", self.bind(Bind::Text(key.clone())))
                } else {
                    format!("({})", parts.join(" AND "))
                }
            }
            Condition::Exists { key } => format!("fields ? {}", self.bind(Bind::Text(key.clone()))),
            Condition::Nested(f) => self.filter(f),
        }
    }

    fn matches(&mut self, key: &str, value: &IndexValue) -> String {
        match value {
            IndexValue::Key(k) => {
                let doc = json!({ key: [k] }).to_string();
                format!("fields @> {}::jsonb", self.bind(Bind::Text(doc)))
            }
            IndexValue::Num(n) => format!("{} = {}", numeric(key), self.bind(Bind::Num(*n))),
        }
    }
}

/// The expression a numeric field is compared (and indexed) by. `key` is
/// from the collection's checked field names, which cannot hold a quote.
pub(crate) fn numeric(key: &str) -> String {
    format!("((fields->>'{key}')::float8)")
}

/// A point's indexed values in the normalized form the SQL above expects.
pub(crate) fn normalized(extracted: &[(String, Vec<IndexValue>)]) -> Value {
    let mut out = Map::new();
    for (field, values) in extracted {
        let value = match values.as_slice() {
            [IndexValue::Num(n)] => json!(n),
            _ => Value::Array(
                values
                    .iter()
                    .filter_map(|v| match v {
                        IndexValue::Key(k) => Some(Value::String(k.clone())),
                        IndexValue::Num(_) => None,
                    })
                    .collect(),
            ),
        };
        out.insert(field.clone(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::FieldType;

    #[test]
    fn filters_become_bound_sql() {
        let fields: BTreeMap<String, FieldType> = [
            ("lang".to_owned(), FieldType::Keyword),
            ("n".to_owned(), FieldType::Integer),
        ]
        .into();
        let f = Filter::parse(
            &json!({"must": [{"key": "lang", "match": {"any": ["en", "de"]}}],
                    "should": [{"key": "n", "range": {"gte": 1, "lt": 5}}],
                    "must_not": [{"exists": "n"}]}),
            &fields,
            "filter",
        )
        .unwrap();
        let mut sql = Sql::new(3);
        let text = sql.filter(&f);
        assert_eq!(
            text,
            "((fields @> $3::jsonb OR fields @> $4::jsonb) AND ((((fields->>'n')::float8) >= $5 \
             AND ((fields->>'n')::float8) < $6)) AND NOT COALESCE(fields ? $7, false))"
        );
        assert_eq!(sql.binds[0], Bind::Text(r#"{"lang":["en"]}"#.into()));
        assert_eq!(sql.binds[2], Bind::Num(1.0));
        assert_eq!(Sql::new(1).filter(&Filter::default()), "TRUE");
    }
}
